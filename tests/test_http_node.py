"""The http node against a real local HTTP server (loopback allowed explicitly)."""

import socket
import time
from typing import Any

import pytest

from flowmaestro_dagster.errors import (
    NodeConfigurationError,
    NodeExecutionError,
    TransientNodeError,
)
from flowmaestro_dagster.nodes import NodeResult
from flowmaestro_dagster.settings import HttpSettings, Settings
from flowmaestro_dagster.testing import EchoServer, run_workflow
from tests.builders import chain, node
from tests.test_llm import run_node

INPUTS = {"id": 7, "name": 'Ann "the" Admin', "tags": ["a", "b"], "user": {"id": 7, "vip": True}}


def settings(**http: Any) -> Settings:
    values: dict[str, Any] = {"allow_loopback": True, **http}
    return Settings().model_copy(update={"http": HttpSettings(**values)})


def http(raw: dict[str, Any], config: Settings | None = None) -> NodeResult:
    return run_node("http", raw, config or settings(), INPUTS)


def echoed(raw: dict[str, Any], config: Settings | None = None) -> dict[str, Any]:
    """What the echo server saw of the request the node sent."""
    output = http(raw, config).output
    assert output["status"] == 200, output
    data: dict[str, Any] = output["data"]
    return data


# -- request ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "get"])
def test_methods(echo: EchoServer, method: str) -> None:
    assert echoed({"method": method, "url": echo.url("/m")})["method"] == method.upper()


def test_head_has_no_body(echo: EchoServer) -> None:
    output = http({"method": "HEAD", "url": echo.url("/h")}).output
    assert output["status"] == 200
    assert output["data"] == ""
    assert echo.requests[0].method == "HEAD"


def test_output_shape_and_output_variable(echo: EchoServer) -> None:
    output = http({"url": echo.url("/shape"), "outputVariable": "resp"}).output
    assert set(output) == {"resp"}
    resp = output["resp"]
    assert set(resp) == {"status", "headers", "data", "responseTime"}
    assert resp["status"] == 200
    assert resp["headers"]["content-type"] == "application/json"
    assert resp["data"]["path"] == "/shape"
    assert isinstance(resp["responseTime"], int)
    assert resp["responseTime"] >= 0


def test_text_response_is_text(echo: EchoServer) -> None:
    assert http({"url": echo.url("/text?body=plain words")}).output["data"] == "plain words"


def test_url_is_interpolated(echo: EchoServer) -> None:
    url = echo.url("/users/{{user.id}}/orders")
    assert echoed({"url": url})["path"] == "/users/7/orders"


@pytest.mark.parametrize(
    "headers",
    [
        [{"key": "X-Name", "value": "{{name}}"}, {"key": "X-Id", "value": "{{id}}"}],
        {"X-Name": "{{name}}", "X-Id": "{{id}}"},
        '{"X-Name": "{{name}}", "X-Id": "{{id}}"}',
        "X-Name: {{name}}\nX-Id: {{id}}",
    ],
)
def test_headers_in_every_spelling(echo: EchoServer, headers: Any) -> None:
    seen = echoed({"url": echo.url("/h"), "headers": headers})["headers"]
    assert seen["x-name"] == INPUTS["name"]
    assert seen["x-id"] == "7"


def test_header_with_a_line_break_is_refused(echo: EchoServer) -> None:
    with pytest.raises(NodeConfigurationError, match="line break"):
        http({"url": echo.url("/h"), "headers": {"X-Evil": "a\r\nInjected: 1"}})


def test_query_params_merge_with_the_url_and_repeat_lists(echo: EchoServer) -> None:
    raw = {
        "url": echo.url("/q?fixed=1"),
        "queryParams": [
            {"key": "id", "value": "{{id}}"},
            {"key": "tag", "value": "{{tags}}"},
            {"key": "empty", "value": None},
        ],
    }
    assert echoed(raw)["query"] == {"fixed": "1", "id": "7", "tag": ["a", "b"]}
    assert echoed({"url": echo.url("/q"), "queryParams": "a={{id}}&b=x y"})["query"] == {
        "a": "7",
        "b": "x y",
    }


# -- auth ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("credentials", [{"username": "ann", "password": "{{id}}-pw"}, "ann:7-pw"])
def test_basic_auth(echo: EchoServer, credentials: Any) -> None:
    seen = echoed({"url": echo.url("/a"), "authType": "basic", "authCredentials": credentials})
    assert seen["headers"]["authorization"] == "Basic YW5uOjctcHc="  # ann:7-pw


@pytest.mark.parametrize("credentials", [{"token": "t-{{id}}"}, "t-{{id}}"])
def test_bearer_auth(echo: EchoServer, credentials: Any) -> None:
    seen = echoed({"url": echo.url("/a"), "authType": "bearer", "authCredentials": credentials})
    assert seen["headers"]["authorization"] == "Bearer t-7"


def test_api_key_in_a_header(echo: EchoServer) -> None:
    default = echoed({"url": echo.url("/a"), "authType": "apiKey", "authCredentials": "k1"})
    assert default["headers"]["x-api-key"] == "k1"
    custom = {"key": "X-Token", "value": "k2", "in": "header"}
    seen = echoed({"url": echo.url("/a"), "authType": "api_key", "authCredentials": custom})
    assert seen["headers"]["x-token"] == "k2"


def test_api_key_in_the_query_is_masked_in_errors(echo: EchoServer) -> None:
    creds = {"key": "api_key", "value": "sekret", "addTo": "query"}
    seen = echoed({"url": echo.url("/a"), "authType": "apiKey", "authCredentials": creds})
    assert seen["query"] == {"api_key": "sekret"}
    raw = {
        "url": echo.url("/status/404"),
        "authType": "apiKey",
        "authCredentials": creds,
        "failOnError": True,
    }
    with pytest.raises(NodeExecutionError) as info:
        http(raw)
    assert "sekret" not in str(info.value)
    assert "api_key=REDACTED" in str(info.value)


@pytest.mark.parametrize(
    ("auth_type", "credentials", "message"),
    [
        ("basic", None, "basic auth needs"),
        ("bearer", {}, "bearer auth needs"),
        ("apiKey", {"key": "X-Key"}, "apiKey auth needs"),
        ("kerberos", "x", "authType 'kerberos'"),
    ],
)
def test_bad_auth_settings_are_configuration_errors(
    echo: EchoServer, auth_type: str, credentials: Any, message: str
) -> None:
    raw = {"url": echo.url("/a"), "authType": auth_type, "authCredentials": credentials}
    with pytest.raises(NodeConfigurationError, match=message):
        http(raw)
    assert echo.requests == []


# -- bodies ----------------------------------------------------------------------------------------


def test_json_body_keeps_types_and_escapes_inserted_text(echo: EchoServer) -> None:
    body = {"id": "{{id}}", "name": "{{name}}", "user": "{{user}}", "note": "hi {{name}}"}
    seen = echoed({"method": "POST", "url": echo.url("/j"), "bodyType": "json", "body": body})
    assert seen["headers"]["content-type"] == "application/json"
    assert seen["json"] == {
        "id": 7,
        "name": INPUTS["name"],
        "user": INPUTS["user"],
        "note": f"hi {INPUTS['name']}",
    }


def test_json_text_body_is_rendered_value_by_value(echo: EchoServer) -> None:
    body = '{"name": "{{name}}", "tags": "{{tags}}"}'  # quotes in the name stay valid JSON
    seen = echoed({"method": "POST", "url": echo.url("/j"), "bodyType": "json", "body": body})
    assert seen["json"] == {"name": INPUTS["name"], "tags": ["a", "b"]}


def test_json_body_that_is_not_json_is_a_configuration_error(echo: EchoServer) -> None:
    raw = {"method": "POST", "url": echo.url("/j"), "bodyType": "json", "body": "not json"}
    with pytest.raises(NodeConfigurationError, match="not valid JSON"):
        http(raw)


@pytest.mark.parametrize(
    "body",
    [
        {"id": "{{id}}", "tag": "{{tags}}"},
        [{"key": "id", "value": "{{id}}"}, {"key": "tag", "value": "{{tags}}"}],
        "id={{id}}&tag=a&tag=b",
    ],
)
def test_form_body(echo: EchoServer, body: Any) -> None:
    raw = {"method": "POST", "url": echo.url("/f"), "bodyType": "form", "body": body}
    seen = echoed(raw)
    assert seen["headers"]["content-type"] == "application/x-www-form-urlencoded"
    assert seen["form"] == {"id": "7", "tag": ["a", "b"]}


def test_multipart_form_data_body(echo: EchoServer) -> None:
    raw = {"method": "POST", "url": echo.url("/f"), "bodyType": "form-data", "body": {"id": 7}}
    seen = echoed(raw)
    assert seen["headers"]["content-type"].startswith("multipart/form-data; boundary=")
    assert 'name="id"' in seen["body"]


def test_raw_and_xml_bodies(echo: EchoServer) -> None:
    raw = {"method": "POST", "url": echo.url("/r"), "bodyType": "raw", "body": "hello {{name}}"}
    seen = echoed(raw)
    assert seen["body"] == f"hello {INPUTS['name']}"
    assert seen["headers"]["content-type"] == "text/plain; charset=utf-8"
    xml = {
        "method": "POST",
        "url": echo.url("/r"),
        "bodyType": "xml",
        "body": "<id>{{id}}</id>",
        "headers": {"Content-Type": "text/xml"},
    }
    seen = echoed(xml)
    assert seen["body"] == "<id>7</id>"
    assert seen["headers"]["content-type"] == "text/xml"


@pytest.mark.parametrize(
    ("body", "content_type", "expected"),
    [
        ({"a": "{{id}}"}, "application/json", {"a": 7}),
        ("{{user}}", "application/json", INPUTS["user"]),
        ('{"a": "{{name}}"}', "application/json", {"a": INPUTS["name"]}),
        ("just text {{id}}", "text/plain; charset=utf-8", None),
    ],
)
def test_body_without_body_type_is_inferred(
    echo: EchoServer, body: Any, content_type: str, expected: Any
) -> None:
    seen = echoed({"method": "POST", "url": echo.url("/i"), "body": body})
    assert seen["headers"]["content-type"] == content_type
    if expected is None:
        assert seen["body"] == "just text 7"
    else:
        assert seen["json"] == expected


# -- statuses and errors ---------------------------------------------------------------------------


def test_non_2xx_is_an_output_not_a_failure(echo: EchoServer) -> None:
    output = http({"url": echo.url("/status/404")}).output
    assert output["status"] == 404
    assert output["data"]["path"] == "/status/404"


@pytest.mark.parametrize("option", ["failOnError", "failOnNon2xx"])
def test_fail_on_error_makes_non_2xx_fail_permanently(echo: EchoServer, option: str) -> None:
    with pytest.raises(NodeExecutionError, match="HTTP 404") as info:
        http({"url": echo.url("/status/404"), option: True})
    assert not info.value.retryable
    assert info.value.details["status"] == 404


def test_429_is_transient_with_retry_after(echo: EchoServer) -> None:
    with pytest.raises(TransientNodeError, match="HTTP 429") as info:
        http({"url": echo.url("/status/429?retry_after=3")})
    assert info.value.retry_after_seconds == 3.0


@pytest.mark.parametrize("status", [500, 502, 503, 504])
def test_5xx_is_transient_even_without_fail_on_error(echo: EchoServer, status: int) -> None:
    with pytest.raises(TransientNodeError, match=f"HTTP {status}") as info:
        http({"url": echo.url(f"/status/{status}")})
    assert info.value.retry_after_seconds is None


def test_a_timeout_is_transient(echo: EchoServer) -> None:
    started = time.monotonic()
    with pytest.raises(TransientNodeError, match=r"timed out after 0\.3s"):
        http({"url": echo.url("/delay/5"), "timeout": 0.3})
    assert time.monotonic() - started < 3


def test_the_settings_cap_a_nodes_timeout(echo: EchoServer) -> None:
    with pytest.raises(TransientNodeError, match=r"timed out after 0\.2s"):
        http({"url": echo.url("/delay/5"), "timeout": 600}, settings(max_timeout_s=0.2))


def test_the_timeout_bounds_the_whole_response_not_each_read(echo: EchoServer) -> None:
    started = time.monotonic()
    with pytest.raises(TransientNodeError, match="timed out"):
        http({"url": echo.url("/drip/50"), "timeout": 0.5})  # 5 s of bytes, 0.1 s apart
    assert time.monotonic() - started < 3


def test_a_refused_connection_is_transient() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(TransientNodeError, match="failed"):
        http({"url": f"http://127.0.0.1:{port}/"})


def test_response_size_is_capped(echo: EchoServer) -> None:
    assert len(http({"url": echo.url("/bytes/1000")}).output["data"]) == 1000
    with pytest.raises(NodeExecutionError, match="larger than 1000 bytes") as info:
        http({"url": echo.url("/bytes/1001")}, settings(max_response_bytes=1000))
    assert not info.value.retryable


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"url": ""}, "no url"),
        ({"url": "ftp://example.com/x"}, "http:// or https://"),
        ({"url": "/relative/path"}, "http:// or https://"),
        ({"url": "http://example.com", "method": "BREW"}, "method 'BREW'"),
        ({"url": "http://example.com", "bodyType": "yaml", "body": "x"}, "bodyType 'yaml'"),
    ],
)
def test_configuration_errors(raw: dict[str, Any], message: str) -> None:
    with pytest.raises(NodeConfigurationError, match=message):
        http(raw)


# -- redirects -------------------------------------------------------------------------------------


def test_redirects_are_followed(echo: EchoServer) -> None:
    output = http({"url": echo.url("/redirect?to=/landed")}).output
    assert output["status"] == 200
    assert output["data"]["path"] == "/landed"


def test_redirect_is_returned_when_following_is_off(echo: EchoServer) -> None:
    output = http({"url": echo.url("/redirect?to=/landed"), "followRedirects": False}).output
    assert output["status"] == 302
    assert output["headers"]["location"] == "/landed"


def test_credentials_do_not_follow_a_redirect_to_another_origin(echo: EchoServer) -> None:
    other = echo.url("/landed", host="localhost")  # another origin, same server
    raw = {
        "url": echo.url(f"/redirect?to={other}&status=307"),
        "authType": "apiKey",
        "authCredentials": {"key": "X-Custom-Key", "value": "k"},
        "headers": {"X-Trace": "t1", "Authorization": "Bearer b"},
    }
    seen = http(raw).output["data"]
    assert seen["path"] == "/landed"
    assert "x-custom-key" not in seen["headers"]
    assert "authorization" not in seen["headers"]
    assert seen["headers"]["x-trace"] == "t1"
    first = echo.requests[0].headers
    assert first["x-custom-key"] == "k"


# -- the SSRF guard through the node ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "category"),
    [
        ("http://127.0.0.1:{port}/x", "loopback"),
        ("http://localhost:{port}/x", "loopback"),  # a hostname resolving to loopback
        ("http://10.0.0.1/x", "private"),
        ("http://192.168.1.10:8080/x", "private"),
        ("http://169.254.169.254/latest/meta-data/", "metadata"),
        ("http://[::1]:{port}/x", "loopback"),
        ("http://metadata.google.internal/computeMetadata/v1/", "metadata"),
        ("http://0.0.0.0:{port}/x", "unspecified"),
    ],
)
def test_ssrf_refusals_without_allowances(echo: EchoServer, url: str, category: str) -> None:
    closed = Settings().model_copy(update={"http": HttpSettings()})
    with pytest.raises(NodeConfigurationError, match="refused") as info:
        http({"url": url.format(port=echo.port)}, closed)
    assert category in str(info.value)
    assert not info.value.retryable
    assert echo.requests == []


@pytest.mark.parametrize(
    "target",
    ["http://10.0.0.1/internal", "http://169.254.169.254/latest/", "http://127.0.0.2:1/"],
)
def test_a_redirect_to_a_refused_address_is_refused(echo: EchoServer, target: str) -> None:
    only_this_server = settings(allow_loopback=False, allowed_hosts=["127.0.0.1"])
    with pytest.raises(NodeConfigurationError, match="refused"):
        http({"url": echo.url(f"/redirect?to={target}")}, only_this_server)
    assert [r.path for r in echo.requests] == ["/redirect"]


# -- through a compiled job ------------------------------------------------------------------------


def api_flow(url: str, **http_options: Any) -> dict[str, Any]:
    return chain(
        node("user", "input", inputName="user"),
        node("call", "http", method="POST", url=url, headers=[{"key": "X-User", "value": "{{user.id}}"}], body={"user": "{{user}}"}, outputVariable="response", retry={"maxAttempts": 2, "minDelayMs": 0}, **http_options),
        node("out", "output", outputName="result", value="{{response.status}} {{response.data.json.user.id}}"),
        react=True,
    )  # fmt: skip


def test_http_in_a_compiled_job(echo: EchoServer) -> None:
    result = run_workflow(api_flow(echo.url("/api/{{user.id}}")), INPUTS, settings=settings())
    assert result.status == "succeeded", result.nodes
    assert result.outputs == {"result": "200 7"}
    assert echo.requests[0].path == "/api/7"
    assert echo.requests[0].headers["x-user"] == "7"


def test_a_404_does_not_fail_the_run_but_fail_on_error_does(echo: EchoServer) -> None:
    result = run_workflow(api_flow(echo.url("/status/404")), INPUTS, settings=settings())
    assert result.status == "succeeded"
    assert result.nodes["call"].output["response"]["status"] == 404
    failing = api_flow(echo.url("/status/404"), failOnError=True)
    result = run_workflow(failing, INPUTS, settings=settings())
    assert result.status == "failed"
    assert result.nodes["call"].attempts == 1


def test_a_503_is_retried_then_fails_the_run(echo: EchoServer) -> None:
    result = run_workflow(api_flow(echo.url("/status/503")), INPUTS, settings=settings())
    assert result.status == "failed"
    assert result.nodes["call"].attempts == 2
    assert len(echo.requests) == 2


def test_an_ssrf_refusal_fails_the_run_without_retrying(echo: EchoServer) -> None:
    closed = Settings().model_copy(update={"http": HttpSettings()})
    result = run_workflow(api_flow(echo.url("/api")), INPUTS, settings=closed)
    assert result.status == "failed"
    node = result.nodes["call"]
    assert node.attempts == 1
    assert "loopback" in (node.error or "")
    assert echo.requests == []
