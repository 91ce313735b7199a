"""A connection's secrets go only to that connection's service (issue 15, row 7).

Workflow authors are not trusted with a connection's secrets; operators, who configure
connections, are. So a connection's secret headers and the HMAC signature made with its signing
secret go to its own `url`, or to a URL the node supplies only when it lies under the
connection's `base_url` (scheme, host, port, path prefix). Each test runs real HTTP servers on
127.0.0.1 and checks what the *other* server received, not only the error.
"""

from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import quote

import pytest
from pydantic import ValidationError

from flowmaestro_dagster.errors import ConnectionDestinationError, NodeConfigurationError
from flowmaestro_dagster.lang.state import ExecutionState
from flowmaestro_dagster.nodes import get_executor
from flowmaestro_dagster.nodes.base import NodeContext
from flowmaestro_dagster.nodes.integration import execute_integration
from flowmaestro_dagster.nodes.net import under_base_url
from flowmaestro_dagster.settings import HttpSettings, Settings
from flowmaestro_dagster.spec.configs import IntegrationConfig, normalise_config
from flowmaestro_dagster.testing import EchoServer, FakeLLMServer, run_workflow
from flowmaestro_dagster.testing.fake_llm import API_KEY
from tests.builders import flow, node

API_KEY_HEADER = "x-api-key"
PARTNER_KEY = "partner-key-4711"
SIGNING_SECRET = "partner-signing-secret-42"
SECRET_HEADERS = (API_KEY_HEADER, "x-flowmaestro-signature", "x-flowmaestro-timestamp")


@pytest.fixture
def other() -> Iterator[EchoServer]:
    """A second server: another origin than `echo` (the partner's service)."""
    with EchoServer() as server:
        yield server


def _settings(**connection: Any) -> Settings:
    return Settings(
        http=HttpSettings(allow_loopback=True),
        connections={"partner": {"connector": "webhook", **connection}},
    )


def _partner(echo: EchoServer, base_path: str | None = "/api", **extra: Any) -> Settings:
    """The partner connection: an API key header and a signing secret, under `base_path`."""
    connection: dict[str, Any] = {
        "headers": {"X-Api-Key": PARTNER_KEY},
        "signing_secret": SIGNING_SECRET,
        **extra,
    }
    if base_path is not None:
        connection["base_url"] = echo.url(base_path)
    return _settings(**connection)


def _call(settings: Settings, **parameters: Any) -> dict[str, Any]:
    ctx = NodeContext(
        node_id="post",
        node_type="integration",
        label="Post",
        config=IntegrationConfig(
            provider="partner",
            operation="send",
            connection_id="partner",
            parameters={"body": {"lead": "Ann"}, **parameters},
        ),
        state=ExecutionState.start({}),
        services={"settings": settings},
    )
    output: dict[str, Any] = execute_integration(ctx).output
    return output


def _saw_a_secret(server: EchoServer) -> bool:
    return any(
        name in request.headers or PARTNER_KEY in request.text
        for request in server.requests
        for name in SECRET_HEADERS
    )


# -- another host ----------------------------------------------------------------------------------

ElsewhereUrl = Callable[[EchoServer, EchoServer], str]
ELSEWHERE: dict[str, ElsewhereUrl] = {
    "another port": lambda partner, other: other.url("/api/steal"),
    "another host name": lambda partner, other: partner.url("/api/steal", host="localhost"),
    "userinfo that looks like the host": lambda partner, other: (
        f"http://127.0.0.1:{partner.port}@127.0.0.1:{other.port}/api/steal"
    ),
    "https instead of http": lambda partner, other: f"https://127.0.0.1:{partner.port}/api/x",
}


@pytest.mark.parametrize("make_url", ELSEWHERE.values(), ids=ELSEWHERE.keys())
def test_node_url_on_another_host_fails_and_nothing_is_sent(
    echo: EchoServer, other: EchoServer, make_url: ElsewhereUrl
) -> None:
    url = make_url(echo, other)
    with pytest.raises(ConnectionDestinationError, match="connection 'partner'") as caught:
        _call(_partner(echo), url=url)
    assert "127.0.0.1" in str(caught.value) or "localhost" in str(caught.value)
    assert caught.value.details["connection"] == "partner"
    assert PARTNER_KEY not in str(caught.value) and SIGNING_SECRET not in str(caught.value)
    assert other.requests == [] and echo.requests == []


def test_error_names_the_connection_and_the_host(echo: EchoServer, other: EchoServer) -> None:
    with pytest.raises(ConnectionDestinationError) as caught:
        _call(_partner(echo), url=other.url("/steal"))
    message = str(caught.value)
    assert f"127.0.0.1:{other.port}" in message and echo.url("/api") in message
    assert caught.value.details["host"] == "127.0.0.1"


def test_the_signature_alone_is_a_secret(echo: EchoServer, other: EchoServer) -> None:
    """A signing oracle is a leak: the attacker could replay signed bodies to the partner."""
    settings = _settings(base_url=echo.url("/"), signing_secret=SIGNING_SECRET)
    with pytest.raises(ConnectionDestinationError):
        _call(settings, url=other.url("/steal"))
    assert other.requests == []


def test_a_refused_node_fails_for_good_in_a_run(echo: EchoServer, other: EchoServer) -> None:
    definition = flow(
        [
            node("in", "input", inputName="target"),
            node("post", "integration", provider="partner", operation="send",
                 connectionId="partner", parameters={"url": "{{target}}", "body": {"x": 1}}),
        ],
        [("in", "post")],
    )  # fmt: skip
    result = run_workflow(definition, {"target": other.url("/steal")}, settings=_partner(echo))
    assert result.status == "failed"
    assert result.nodes["post"].attempts == 1  # a configuration error: not retried
    assert "connection 'partner'" in (result.nodes["post"].error or "")
    assert other.requests == []


# -- the connection's own service ------------------------------------------------------------------


def test_node_url_under_base_url_gets_the_secrets(echo: EchoServer) -> None:
    output = _call(_partner(echo), url=echo.url("/api/leads?src=flow"))
    assert output["status"] == 200
    [request] = echo.requests
    assert request.path == "/api/leads"
    assert request.headers[API_KEY_HEADER] == PARTNER_KEY
    assert request.headers["x-flowmaestro-signature"].startswith("sha256=")


def test_relative_node_url_is_appended_to_base_url(echo: EchoServer) -> None:
    _call(_partner(echo), url="/leads")
    [request] = echo.requests
    assert request.path == "/api/leads" and request.headers[API_KEY_HEADER] == PARTNER_KEY


def test_no_node_url_uses_the_connection_url_else_its_base_url(echo: EchoServer) -> None:
    _call(_partner(echo, url=echo.url("/hooks/in")))
    _call(_partner(echo))
    assert [r.path for r in echo.requests] == ["/hooks/in", "/api"]
    assert all(r.headers[API_KEY_HEADER] == PARTNER_KEY for r in echo.requests)


@pytest.mark.parametrize(
    "path",
    ["/apix", "/admin", "/", "/api/../admin", "/api/%2e%2e/admin", "/api/..%2fadmin", "../admin"],
)
def test_path_prefix_of_base_url_is_respected(echo: EchoServer, path: str) -> None:
    url = path if path.startswith("..") else echo.url(path)
    with pytest.raises(ConnectionDestinationError, match=r"only under"):
        _call(_partner(echo), url=url)
    assert echo.requests == []


def test_base_url_path_prefix_matches_whole_segments() -> None:
    assert under_base_url("https://api.x.com/v1", "https://api.x.com/v1/")
    assert under_base_url("https://API.x.com:443/v1/a/b?q=1", "https://api.x.com/v1")
    assert under_base_url("https://api.x.com/anything", "https://api.x.com")
    assert not under_base_url("https://api.x.com/v10", "https://api.x.com/v1")
    assert not under_base_url("https://api.x.com:8443/v1", "https://api.x.com/v1")
    assert not under_base_url("http://api.x.com/v1", "https://api.x.com/v1")
    assert not under_base_url("https://api.x.com.evil.io/v1", "https://api.x.com/v1")


# -- redirects ---------------------------------------------------------------------------------


@pytest.mark.parametrize("status", [301, 302, 307, 308])
def test_a_redirect_to_another_host_never_carries_the_secrets(
    echo: EchoServer, other: EchoServer, status: int
) -> None:
    """The connection's own host answers a redirect to another host: not followed."""
    hop = echo.url(f"/redirect?status={status}&to={quote(other.url('/steal'), safe='')}")
    output = _call(_partner(echo, base_path="/"), url=hop)
    assert output["status"] == status
    assert len(echo.requests) == 1 and echo.requests[0].headers[API_KEY_HEADER] == PARTNER_KEY
    assert other.requests == [] and not _saw_a_secret(other)


def test_a_redirect_from_the_connection_url_is_not_followed(
    echo: EchoServer, other: EchoServer
) -> None:
    own = echo.url(f"/redirect?status=307&to={quote(other.url('/steal'), safe='')}")
    _call(_partner(echo, base_path=None, url=own))
    assert len(echo.requests) == 1 and other.requests == []


# -- connections without a declared destination ---------------------------------------------


def test_connection_without_base_url_sends_no_secret_to_a_node_url(
    echo: EchoServer, other: EchoServer
) -> None:
    settings = _partner(echo, base_path=None, url=echo.url("/hooks/in"))
    with pytest.raises(ConnectionDestinationError, match="declares no base_url") as caught:
        _call(settings, url=other.url("/steal"))
    assert "FLOWMAESTRO_CONNECTIONS__PARTNER__BASE_URL" in str(caught.value)
    # Not even to the connection's own host: without base_url only its own url is trusted.
    with pytest.raises(ConnectionDestinationError, match="declares no base_url"):
        _call(settings, url=echo.url("/hooks/other"))
    assert other.requests == [] and echo.requests == []
    _call(settings)  # the node names no url: the connection's own, with its secrets
    [request] = echo.requests
    assert request.path == "/hooks/in" and request.headers[API_KEY_HEADER] == PARTNER_KEY


def test_connection_without_secrets_posts_anywhere(other: EchoServer) -> None:
    """Nothing secret to protect: a connector alias with a timeout keeps working."""
    settings = _settings(timeout_s=5)
    assert _call(settings, url=other.url("/open"))["status"] == 200
    assert len(other.requests) == 1


def test_relative_url_without_base_url_is_a_configuration_error() -> None:
    with pytest.raises(NodeConfigurationError, match="not absolute"):
        _call(_settings(timeout_s=5), url="/leads")


@pytest.mark.parametrize(
    "base_url",
    [
        "api.partner.com",
        "ftp://api.partner.com",
        "https://u:p@api.partner.com",
        "https://api.partner.com/?k=v",
    ],
)
def test_base_url_must_be_a_plain_absolute_http_url(base_url: str) -> None:
    with pytest.raises(ValidationError, match="base_url"):
        Settings(connections={"partner": {"base_url": base_url}})


# -- the LLM node: the endpoint is the operator's, never the node's --------------------------------


def test_llm_node_cannot_point_the_api_key_elsewhere(llm: FakeLLMServer, other: EchoServer) -> None:
    """LLM nodes name a provider; endpoint-like keys of the node are ignored, not followed."""
    llm.enqueue("hi")
    endpoint_keys = ("baseUrl", "base_url", "baseURL", "endpoint", "apiBase", "url")
    raw = {
        "provider": "openai",
        "model": "gpt-4o",
        "prompt": "hello",
        **dict.fromkeys(endpoint_keys, other.url("/v1")),
    }
    config, _ = normalise_config("llm", raw, node_id="n")
    ctx = NodeContext(
        node_id="n",
        node_type="llm",
        label="n",
        config=config,
        state=ExecutionState.start({}),
        services={"settings": llm.settings()},
    )
    assert get_executor("llm")(ctx).output["text"] == "hi"
    [request] = llm.chat_requests
    assert request.headers["authorization"] == f"Bearer {API_KEY}"
    assert other.requests == []
