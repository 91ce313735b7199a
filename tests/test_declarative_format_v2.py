"""The declarative connector format's second version (issue 19): what the catalogue authors
could not express before. Hooks send any method through the executor's machinery; response
headers reach outputs; list and field-map error bodies; rate-limit reset headers and
conditional retries; next-URL, nested-cursor and offset pages; per-operation auth and hosts;
several auth schemes; OAuth2 token extras and a renamed client id; a credential in the path;
multipart bodies from stored files; a session sign-in. Every request is checked on a local
recording server.
"""

import json
import os
import socket
import sys
import time
import types
from collections.abc import Iterator, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, parse_qsl, urlsplit

import pytest

from flowmaestro_dagster.control import oauth
from flowmaestro_dagster.errors import (
    ConnectionDestinationError,
    ConnectorNotConfiguredError,
    NodeConfigurationError,
    NodeExecutionError,
    TransientNodeError,
)
from flowmaestro_dagster.nodes.connectors import ConnectorRequest
from flowmaestro_dagster.nodes.connectors.declarative import (
    CatalogueError,
    DeclarativeConnector,
    ErrorSpec,
    HookApi,
    PreparedRequest,
    ProviderSpec,
    auth_for,
    catalogue,
    load_provider,
    provider_error,
    render_base_url,
)
from flowmaestro_dagster.nodes.filestore import FileStore
from flowmaestro_dagster.settings import ConnectionSettings, FileSettings, HttpSettings, Settings
from flowmaestro_dagster.store.connections import (
    ConnectionCipher,
    connection_settings,
    read_credentials,
)
from flowmaestro_dagster.store.db import get_engine, session_scope
from flowmaestro_dagster.store.models import User
from flowmaestro_dagster.testing.http_server import EchoRequest
from tests.builders import chain, node
from tests.services import database_from, migrated_template
from tests.test_declarative_connectors import ScriptedServer, _ctx, parse_multipart

TOKEN = "tok-access-0123456789"
LOOPBACK = HttpSettings(allow_loopback=True)
KEY = "kUtHMbBKdf5NTkegfxatmRjlnC1ietqYCwC7HipT7bM="


@pytest.fixture
def server() -> Iterator[ScriptedServer]:
    with ScriptedServer() as running:
        yield running


@pytest.fixture
def other() -> Iterator[ScriptedServer]:
    with ScriptedServer() as running:
        yield running


@pytest.fixture
def files(tmp_path: Path) -> FileStore:
    return FileStore(str(tmp_path / "files"), max_bytes=5 * 1024 * 1024)


def _settings(files: FileStore | None = None, max_file_mb: int = 5) -> Settings:
    if files is None:
        return Settings(http=LOOPBACK)
    return Settings(http=LOOPBACK, files=FileSettings(url=files.url, max_file_mb=max_file_mb))


def _call(
    provider: ProviderSpec | str,
    operation: str,
    parameters: dict[str, Any],
    *,
    settings: Settings | None = None,
    refresh: Any = None,
    **connection: Any,
) -> Any:
    spec = catalogue()[provider] if isinstance(provider, str) else provider
    settings = settings or _settings()
    conn = ConnectionSettings(**connection)
    request = ConnectorRequest(
        spec.id, operation, parameters, conn, spec.id, settings, _ctx(settings), refresh=refresh
    )
    return DeclarativeConnector(spec)(request)


def _fail(field: str, message: str) -> Exception:
    return NodeConfigurationError(message, details={"field": field})


# -- a provider of the tests' own, with hooks ---------------------------------------------------

_FMTEST = """
id: fmtest
name: FM Test
docs: https://example.com/docs
base_url: https://api.example.com/v1
base_urls: {files: "https://files.example.com/v2"}
auth: {scheme: bearer}
headers: {Content-Type: application/json, X-Version: "7"}
operations:
  - id: create
    docs: https://example.com/docs/create
    method: POST
    path: /things
    parameters: [{name: name, required: true}, {name: target}, {name: anonymous, type: boolean}]
    body: {name: "{name}"}
    hook: {request: look_then_create}
  - id: make
    docs: https://example.com/docs/make
    method: POST
    path: /things
    parameters: [{name: name}]
    body: {name: "{name}"}
    output: {path: thing, keep: [id], headers: {location: Location, request: x-request-id}}
    hook: {output: with_headers}
"""


def look_then_create(
    prepared: PreparedRequest, params: Mapping[str, Any], api: HookApi
) -> PreparedRequest:
    """Looks the name up (POST), deletes `target` (a path or a URL), then creates."""
    found = api.request(
        "POST",
        "/lookups",
        json={"name": params["name"]},
        params={"full": True},
        auth=not params.get("anonymous"),
    )
    if params.get("target"):
        api.request("DELETE", str(params["target"]))
    prepared.json = {**(prepared.json or {}), "lookup": found["id"]}
    return prepared


def with_headers(data: Any, params: Mapping[str, Any], headers: Mapping[str, str]) -> Any:
    """An output hook that takes the response headers."""
    return {**data, "thing": {**data["thing"], "seen": headers.get("x-request-id")}}


@pytest.fixture
def fmtest(monkeypatch: pytest.MonkeyPatch) -> ProviderSpec:
    module = types.ModuleType("flowmaestro_dagster.nodes.connectors.hooks.fmtest")
    module.look_then_create = look_then_create  # type: ignore[attr-defined]
    module.with_headers = with_headers  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, module.__name__, module)
    return load_provider(_FMTEST, "fmtest.yaml")


# -- 1. hooks send any method -------------------------------------------------------------------


def test_a_hook_posts_through_the_executor_with_auth_headers_and_errors(
    server: ScriptedServer, fmtest: ProviderSpec
) -> None:
    server.answer(200, {"id": "L1"})
    server.answer(201, {"id": "T1"})
    out = _call(fmtest, "create", {"name": "a"}, base_url=server.url("/v1"), token=TOKEN)
    assert out == {"id": "T1"}
    lookup, created = server.requests
    assert (lookup.method, lookup.path, lookup.query) == ("POST", "/v1/lookups", {"full": ["true"]})
    assert json.loads(lookup.body) == {"name": "a"}
    assert lookup.headers["authorization"] == f"Bearer {TOKEN}"
    assert lookup.headers["x-version"] == "7"
    assert lookup.headers["content-type"] == "application/json"
    assert json.loads(created.body) == {"name": "a", "lookup": "L1"}

    server.requests.clear()
    server.answer(404, {"message": f"no such name (key {TOKEN})", "code": "not_found"})
    with pytest.raises(NodeExecutionError, match="fmtest create failed: HTTP 404 not_found") as c:
        _call(fmtest, "create", {"name": "a"}, base_url=server.url("/v1"), token=TOKEN)
    assert TOKEN not in str(c.value) and not c.value.retryable and len(server.requests) == 1


def test_a_hook_request_goes_only_to_the_providers_hosts(
    server: ScriptedServer, other: ScriptedServer, fmtest: ProviderSpec
) -> None:
    conn: dict[str, Any] = {
        "base_url": server.url("/v1"),
        "files_base_url": other.url("/v2"),
        "token": TOKEN,
    }
    server.answer(200, {"id": "L1"})
    other.answer(204)
    server.answer(201, {"id": "T1"})
    _call(fmtest, "create", {"name": "a", "target": other.url("/v2/old/1")}, **conn)
    assert other.requests[0].method == "DELETE" and other.requests[0].path == "/v2/old/1"
    assert other.requests[0].headers["authorization"] == f"Bearer {TOKEN}"  # a declared host

    server.requests.clear()
    server.answer(200, {"id": "L1"})
    with pytest.raises(ConnectionDestinationError, match="sends its secrets only under"):
        _call(fmtest, "create", {"name": "a", "target": other.url("/elsewhere")}, **conn)
    assert len(other.requests) == 1 and len(server.requests) == 1

    server.requests.clear()
    server.answer(200, {"id": "L1"})
    server.answer(201, {"id": "T1"})
    _call(fmtest, "create", {"name": "a", "anonymous": True}, **conn)
    assert "authorization" not in server.requests[0].headers  # auth=False: a sign-in's way
    assert server.requests[1].headers["authorization"] == f"Bearer {TOKEN}"


def test_twitter_threads_post_through_the_public_hook_api(server: ScriptedServer) -> None:
    server.answer(201, {"data": {"id": "101", "text": "1/"}})
    server.answer(201, {"data": {"id": "102", "text": "2/"}})
    out = _call(
        "twitter",
        "createThread",
        {"tweets": ["1/", "2/"]},
        base_url=server.url("/2"),
        access_token=TOKEN,
    )
    assert out["ids"] == ["101", "102"] and out["url"].endswith("/101")
    assert [r.headers["authorization"] for r in server.requests] == [f"Bearer {TOKEN}"] * 2
    assert json.loads(server.requests[1].body) == {
        "text": "2/",
        "reply": {"in_reply_to_tweet_id": "101"},
    }
    source = (
        Path(__file__).parents[1] / "flowmaestro_dagster/nodes/connectors/hooks/twitter.py"
    ).read_text()
    assert "_send" not in source and "_call" not in source


# -- 2. response headers ------------------------------------------------------------------------


def test_declared_response_headers_are_merged_and_given_to_output_hooks(
    server: ScriptedServer, fmtest: ProviderSpec
) -> None:
    server.answer(
        201,
        {"thing": {"id": "T9", "secret": "x"}},
        Location="/v1/things/T9",
        **{"X-Request-Id": "r-1"},
    )
    out = _call(fmtest, "make", {"name": "a"}, base_url=server.url("/v1"), token=TOKEN)
    assert out == {"id": "T9", "location": "/v1/things/T9", "request": "r-1"}


def test_linkedin_posts_give_their_urn_and_url_to_later_nodes(
    server: ScriptedServer, tmp_path: Path
) -> None:
    from flowmaestro_dagster.testing import run_workflow

    urn = "urn:li:share:7205000000000000000"
    server.answer(200, {"sub": "782bbtaQ"})
    server.answer(201, None, **{"x-restli-id": urn})
    settings = Settings(
        http=LOOPBACK,
        connections={"linkedin": {"base_url": server.url("/"), "access_token": TOKEN}},
    )
    definition = chain(
        node("in", "input", inputName="text"),
        node(
            "post",
            "integration",
            provider="linkedin",
            action="createPost",
            content="{{text}}",
            outputVariable="linkedinResult",
        ),
        node(
            "say",
            "transform",
            operation="passthrough",
            data="posted {{linkedinResult.url}} ({{linkedinResult.id}})",
            outputVariable="msg",
        ),
        react=True,
    )
    result = run_workflow(definition, {"text": "Hello"}, settings=settings)
    url = f"https://www.linkedin.com/feed/update/{urn}"
    assert result.output("post")["linkedinResult"] == {
        "ok": True,
        "status": 201,
        "id": urn,
        "url": url,
    }
    assert f"posted {url} ({urn})" in json.dumps(result.output("say"))


# -- 3. error shapes ----------------------------------------------------------------------------


def test_list_bodies_and_field_maps_are_read() -> None:
    salesforce = catalogue()["salesforce"].errors
    assert provider_error(
        [
            {
                "message": "Required fields are missing: [Name]",
                "errorCode": "REQUIRED_FIELD_MISSING",
                "fields": ["Name"],
            }
        ],
        salesforce,
    ) == ("REQUIRED_FIELD_MISSING", "Required fields are missing: [Name]")
    assert provider_error(["quota exceeded"], ErrorSpec()) == (None, "quota exceeded")
    jira = catalogue()["jira"].errors
    assert provider_error(
        {"errorMessages": [], "errors": {"summary": "Field 'summary' is required"}}, jira
    ) == (None, "summary: Field 'summary' is required")
    assert provider_error(
        {"errorMessages": ["Issue type is invalid"], "errors": {"priority": "bad"}}, jira
    ) == (None, "Issue type is invalid; priority: bad")
    several = ErrorSpec(code=["error.reason", "code"], message=["error.detail", "message"])
    assert provider_error({"code": "E1", "message": "m"}, several) == ("E1", "m")


def test_salesforce_and_jira_errors_name_the_field(server: ScriptedServer) -> None:
    server.answer(
        400,
        [
            {
                "message": "Required fields are missing: [Company]",
                "errorCode": "REQUIRED_FIELD_MISSING",
                "fields": ["Company"],
            }
        ],
    )
    with pytest.raises(
        NodeExecutionError,
        match=r"HTTP 400 REQUIRED_FIELD_MISSING: Required fields are missing: \[Company\]",
    ):
        _call(
            "salesforce",
            "createLead",
            {"data": {"LastName": "Lee"}},
            base_url=server.url("/services/data/v60.0"),
            access_token=TOKEN,
        )
    server.answer(400, {"errorMessages": [], "errors": {"summary": "Field 'summary' is required"}})
    with pytest.raises(NodeExecutionError, match="HTTP 400: summary: Field 'summary' is required"):
        _call(
            "jira",
            "createIssue",
            {"projectKey": "SUP", "summary": " "},
            base_url=server.url("/rest/api/3"),
            username="a@x.io",
            password="t",
        )


# -- 4. rate limits ----------------------------------------------------------------------------


def _github(server: ScriptedServer) -> Any:
    return _call(
        "github",
        "getRepository",
        {"repo": "octo/hello"},
        base_url=server.url("/"),
        access_token=TOKEN,
    )


def test_a_github_403_is_a_rate_limit_only_when_github_says_so(server: ScriptedServer) -> None:
    server.answer(403, {"message": "Resource not accessible by integration"})
    with pytest.raises(NodeExecutionError, match="HTTP 403: Resource not accessible") as denied:
        _github(server)
    assert not denied.value.retryable

    reset = int(time.time()) + 120
    server.answer(
        403,
        {"message": "API rate limit exceeded"},
        **{"x-ratelimit-remaining": "0", "x-ratelimit-reset": str(reset)},
    )
    with pytest.raises(TransientNodeError) as primary:
        _github(server)
    wait = primary.value.retry_after_seconds
    assert wait is not None and 60 < wait <= 120  # until the reset time, not a guess

    server.answer(
        403, {"message": "You have exceeded a secondary rate limit"}, **{"retry-after": "45"}
    )
    with pytest.raises(TransientNodeError) as secondary:
        _github(server)
    assert secondary.value.retry_after_seconds == 45


def test_reset_headers_say_how_long_to_wait(server: ScriptedServer) -> None:
    server.answer(429, {"errors": ["Rate limit exceeded"]}, **{"X-RateLimit-Reset": "12"})
    with pytest.raises(TransientNodeError) as datadog:
        _call(
            "datadog",
            "createEvent",
            {"title": "t", "text": "x"},
            base_url=server.url("/"),
            api_key=TOKEN,
        )
    assert datadog.value.retry_after_seconds == 12  # seconds to wait (and a write op inherits it)

    reset = int(time.time()) + 300
    server.answer(
        429,
        {"title": "Too Many Requests", "detail": "Too Many Requests"},
        **{"x-rate-limit-reset": str(reset)},
    )
    with pytest.raises(TransientNodeError) as twitter:
        _call(
            "twitter", "getUser", {"username": "x"}, base_url=server.url("/2"), access_token=TOKEN
        )
    wait = twitter.value.retry_after_seconds
    assert wait is not None and 240 < wait <= 300

    server.answer(
        429,
        {
            "ok": False,
            "error_code": 429,
            "description": "Too Many Requests: retry after 35",
            "parameters": {"retry_after": 35},
        },
    )
    with pytest.raises(TransientNodeError) as telegram:
        _call(
            "telegram",
            "sendMessage",
            {"chatId": "1", "text": "t"},
            base_url=server.url("/"),
            token=TOKEN,
        )
    assert telegram.value.retry_after_seconds == 35


# -- 5. pagination -----------------------------------------------------------------------------


def test_offset_pages_stop_at_the_total(server: ScriptedServer) -> None:
    for ids in (["a", "b"], ["c", "d"], ["e"]):
        server.answer(200, {"members": [{"id": i} for i in ids], "total_items": 5, "list_id": "L"})
    out = _call(
        "mailchimp", "getMembers", {"listId": "L"}, base_url=server.url("/3.0"), api_key=TOKEN
    )
    assert [m["id"] for m in out["members"]] == ["a", "b", "c", "d", "e"]
    assert [r.query.get("offset") for r in server.requests] == [None, ["2"], ["4"]]

    server.requests.clear()
    server.answer(
        200, {"paging": {"start": 0, "count": 3, "total": 10}, "elements": [{"id": 1}, {"id": 2}]}
    )
    server.answer(
        200, {"paging": {"start": 2, "count": 3, "total": 10}, "elements": [{"id": 3}, {"id": 4}]}
    )
    out = _call(
        "linkedin",
        "getCompanyUpdates",
        {"companyId": "5515715", "count": 3},
        base_url=server.url("/"),
        access_token=TOKEN,
    )
    assert [e["id"] for e in out["elements"]] == [1, 2, 3]  # `count` items, across pages
    assert [(r.query.get("start"), r.query["count"]) for r in server.requests] == [
        (None, ["3"]),
        (["2"], ["3"]),
    ]


def test_nested_cursors_go_inside_the_body(server: ScriptedServer) -> None:
    info = "data.teams.pageInfo"
    server.answer(
        200,
        {
            "data": {
                "teams": {
                    "nodes": [{"id": "t1"}],
                    "pageInfo": {"hasNextPage": True, "endCursor": "c1"},
                }
            }
        },
    )
    server.answer(
        200,
        {
            "data": {
                "teams": {
                    "nodes": [{"id": "t2"}],
                    "pageInfo": {"hasNextPage": False, "endCursor": "c2"},
                }
            }
        },
    )
    out = _call("linear", "listTeams", {}, base_url=server.url("/"), access_token=TOKEN)
    assert [n["id"] for n in out["nodes"]] == ["t1", "t2"] and out["pageInfo"]["endCursor"] == "c2"
    bodies = [json.loads(r.body) for r in server.requests]
    assert "variables" not in bodies[0] and bodies[1]["variables"] == {"after": "c1"}, info

    server.requests.clear()
    server.answer(
        200,
        {
            "type": "conversation.list",
            "conversations": [{"id": "1"}],
            "pages": {"next": {"starting_after": "WzE"}},
        },
    )
    server.answer(200, {"type": "conversation.list", "conversations": [{"id": "2"}], "pages": {}})
    out = _call(
        "intercom",
        "searchConversations",
        {"query": "ann@example.com", "per_page": 1},
        base_url=server.url("/"),
        access_token=TOKEN,
    )
    assert [c["id"] for c in out["conversations"]] == ["1", "2"]
    assert json.loads(server.requests[1].body)["pagination"] == {
        "per_page": 1,
        "starting_after": "WzE",
    }


def test_a_graphql_error_page_is_not_mistaken_for_items(server: ScriptedServer) -> None:
    server.answer(
        200,
        {
            "data": None,
            "errors": [{"message": "Rate limited", "extensions": {"code": "RATELIMITED"}}],
        },
    )
    with pytest.raises(TransientNodeError, match="RATELIMITED: Rate limited"):
        _call("linear", "listTeams", {}, base_url=server.url("/"), access_token=TOKEN)


# -- 6. per-operation auth and hosts -------------------------------------------------------------


def test_operations_on_another_host_get_their_own_base_url(
    server: ScriptedServer, other: ScriptedServer
) -> None:
    spec = catalogue()["amplitude"]
    keys = {"username": "amp-key", "password": "amp-secret"}
    assert (
        render_base_url(spec, ConnectionSettings(**keys), _fail, host="dashboard")
        == "https://amplitude.com"
    )
    conn: dict[str, Any] = {
        "base_url": server.url("/"),
        "dashboard_base_url": other.url("/"),
        **keys,
    }
    server.answer(200, {"code": 200, "events_ingested": 1})
    other.answer(200, {"userData": {}, "events": []})
    _call(spec, "trackEvent", {"event": "e", "userId": "u"}, **conn)
    _call(spec, "getUserActivity", {"user": "356893045"}, **conn)
    assert [r.path for r in server.requests] == ["/2/httpapi"]
    assert [r.path for r in other.requests] == ["/api/2/useractivity"]
    assert other.requests[0].headers["authorization"].startswith("Basic ")
    mixpanel = catalogue()["mixpanel"]
    assert render_base_url(mixpanel, None, _fail, host="query") == "https://mixpanel.com/api"


def test_a_discord_webhook_carries_no_bot_token(server: ScriptedServer) -> None:
    server.answer(200, {"id": "m1"})
    _call(
        "discord",
        "executeWebhook",
        {"content": "hi"},
        base_url=server.url("/api/v10"),
        webhook_id="12",
        webhook_token="wh-tok",
    )
    server.answer(200, {"id": "m2"})
    _call(
        "discord",
        "executeWebhook",
        {"content": "hi", "webhookId": "12", "webhookToken": "wh"},
        base_url=server.url("/api/v10"),
        token=TOKEN,
    )
    assert [r.path for r in server.requests] == [
        "/api/v10/webhooks/12/wh-tok",
        "/api/v10/webhooks/12/wh",
    ]
    assert all("authorization" not in r.headers for r in server.requests)
    server.answer(200, {"id": "m3"})
    _call(
        "discord",
        "sendMessage",
        {"channelId": "1", "content": "hi"},
        base_url=server.url("/api/v10"),
        token=TOKEN,
    )
    assert server.requests[2].headers["authorization"] == f"Bot {TOKEN}"


# -- 7. several auth schemes -------------------------------------------------------------------


def test_jira_takes_basic_on_the_site_or_oauth_on_the_cloud_gateway(server: ScriptedServer) -> None:
    spec = catalogue()["jira"]
    op = spec.operation("getIssue")
    basic = ConnectionSettings(site="acme", username="a@x.io", password="t")
    bearer = ConnectionSettings(access_token=TOKEN, cloudid="11223344-aa")
    assert auth_for(spec, op, basic).scheme == "basic"
    assert auth_for(spec, op, bearer).scheme == "oauth2"
    assert (
        render_base_url(spec, basic, _fail, auth=auth_for(spec, op, basic))
        == "https://acme.atlassian.net/rest/api/3"
    )
    assert (
        render_base_url(spec, bearer, _fail, auth=auth_for(spec, op, bearer))
        == "https://api.atlassian.com/ex/jira/11223344-aa/rest/api/3"
    )
    assert (
        spec.auth.scheme == "oauth2"
        and spec.auth.token_url == "https://auth.atlassian.com/oauth/token"
    )
    server.answer(200, {"id": "1", "key": "SUP-1", "fields": {}})
    _call(
        spec,
        "getIssue",
        {"issueKey": "SUP-1"},
        base_url=server.url("/rest/api/3"),
        access_token=TOKEN,
    )
    assert server.requests[0].headers["authorization"] == f"Bearer {TOKEN}"


def test_linear_takes_an_oauth_token_or_a_bare_personal_key(server: ScriptedServer) -> None:
    page = {"data": {"teams": {"nodes": [], "pageInfo": {"hasNextPage": False}}}}
    server.answer(200, page)
    server.answer(200, page)
    _call("linear", "listTeams", {}, base_url=server.url("/"), api_key="lin_api_123456")
    _call("linear", "listTeams", {}, base_url=server.url("/"), access_token=TOKEN)
    assert [r.headers["authorization"] for r in server.requests] == [
        "lin_api_123456",
        f"Bearer {TOKEN}",
    ]
    settings = Settings(
        oauth={"jira": {"client_id": "c", "client_secret": "s"}}, connections_keys=KEY
    )
    jira = oauth.oauth_provider(settings, "jira")
    assert jira.authorize_url == "https://auth.atlassian.com/authorize"
    assert jira.extra_authorize_params["audience"] == "api.atlassian.com"


def test_a_bad_multi_scheme_file_fails_loudly() -> None:
    text = "id: x\nname: X\ndocs: https://x\nbase_url: https://x\nauth: []\noperations: []"
    with pytest.raises(CatalogueError, match="no scheme"):
        load_provider(text, "bad.yaml")
    text = "id: x\nname: X\ndocs: https://x\nbase_url: https://x\nauth: {scheme: api_key, in: path, name: token}\noperations:\n  - {id: a, docs: https://x, method: GET, path: /a}"
    with pytest.raises(CatalogueError, match=r"has no \{token\} credential"):
        load_provider(text, "bad.yaml")
    text = "id: x\nname: X\ndocs: https://x\nbase_url: https://x\nauth: {scheme: none}\noperations:\n  - {id: a, docs: https://x, method: GET, path: /a, base_url: upload}"
    with pytest.raises(CatalogueError, match="not one of base_urls"):
        load_provider(text, "bad.yaml")


# -- 8. OAuth2 token extras and a renamed client id ---------------------------------------------


@pytest.fixture
def database_url(tmp_path: Path) -> Iterator[str]:
    with (
        migrated_template("sqlite", tmp_path) as made,
        database_from("sqlite", made, tmp_path) as url,
    ):
        yield url


def test_an_oauth_callback_keeps_the_instance_url_and_the_executor_uses_it(
    database_url: str, server: ScriptedServer
) -> None:
    settings = Settings(
        connections_keys=KEY,
        public_api_url="https://fm.example.com",
        oauth={
            "salesforce": {
                "client_id": "sf-client",
                "client_secret": "sf-secret",
                "authorize_url": server.url("/authorize"),
                "token_url": server.url("/token"),
            }
        },
    )
    cipher = ConnectionCipher([KEY])
    server.answer(
        200,
        {
            "access_token": "00D-access",
            "refresh_token": "r1",
            "instance_url": "https://acme.my.salesforce.com",
            "token_type": "Bearer",
        },
    )
    with session_scope(get_engine(database_url)) as session:
        user = User(email="ada@example.com")
        session.add(user)
        session.flush()
        started = oauth.start_authorization(
            session,
            settings=settings,
            cipher=cipher,
            user_id=user.id,
            provider="salesforce",
            name="sf",
        )
        state = dict(parse_qsl(urlsplit(started.authorization_url).query))["state"]
        row = oauth.complete_authorization(
            session, settings=settings, cipher=cipher, code="c1", state=state
        )
        credentials = read_credentials(cipher, row)
        conn = connection_settings(row, credentials)
    assert credentials["instance_url"] == "https://acme.my.salesforce.com"
    spec = catalogue()["salesforce"]
    assert (
        render_base_url(spec, conn, _fail) == "https://acme.my.salesforce.com/services/data/v60.0"
    )
    with pytest.raises(NodeConfigurationError, match="instance_url` must be an absolute"):
        render_base_url(spec, ConnectionSettings(access_token="t", instance_url="acme"), _fail)

    sf = oauth.oauth_provider(settings, "salesforce")
    kept = oauth._credentials({"access_token": "new"}, credentials, sf)
    assert kept["instance_url"] == "https://acme.my.salesforce.com"  # a refresh answer without it


def test_metadata_fields_and_a_renamed_client_id(server: ScriptedServer) -> None:
    settings = Settings(
        connections_keys=KEY,
        oauth={
            "mailchimp": {
                "client_id": "mc",
                "client_secret": "s",
                "token_url": server.url("/token"),
            },
            "tiktok": {
                "client_id": "tt-key",
                "client_secret": "tt-secret",
                "token_url": server.url("/token"),
            },
        },
    )
    mailchimp = replace(
        oauth.oauth_provider(settings, "mailchimp"), metadata_url=server.url("/oauth2/metadata")
    )
    server.answer(
        200,
        {
            "dc": "us21",
            "api_endpoint": "https://us21.api.mailchimp.com",
            "login": {"email": "a@x.io"},
        },
    )
    assert oauth._metadata(mailchimp, "mc-token") == {"dc": "us21"}
    assert server.requests[0].headers["authorization"] == "OAuth mc-token"
    server.answer(200, {"login": {}})
    with pytest.raises(oauth.TokenError, match="without dc"):
        oauth._metadata(mailchimp, "mc-token")
    assert (
        render_base_url(
            catalogue()["mailchimp"], ConnectionSettings(access_token="t", dc="us21"), _fail
        )
        == "https://us21.api.mailchimp.com/3.0"
    )

    tiktok = oauth.oauth_provider(settings, "tiktok")
    assert tiktok.client_id_param == "client_key"
    server.answer(200, {"access_token": "act.1", "refresh_token": "rft.1", "open_id": "o1"})
    oauth._token_request(tiktok, {"grant_type": "authorization_code", "code": "c"})
    form = parse_qs(server.requests[-1].text)
    assert form["client_key"] == ["tt-key"] and "client_id" not in form
    assert form["client_secret"] == ["tt-secret"]


def test_tiktok_authorizes_with_client_key(database_url: str) -> None:
    settings = Settings(
        connections_keys=KEY,
        public_api_url="https://fm.example.com",
        oauth={"tiktok": {"client_id": "tt-key", "client_secret": "s"}},
    )
    with session_scope(get_engine(database_url)) as session:
        user = User(email="bo@example.com")
        session.add(user)
        session.flush()
        started = oauth.start_authorization(
            session,
            settings=settings,
            cipher=ConnectionCipher([KEY]),
            user_id=user.id,
            provider="tiktok",
            name="tt",
        )
    query = parse_qs(urlsplit(started.authorization_url).query)
    assert query["client_key"] == ["tt-key"] and "client_id" not in query


# -- 9. a credential in the path ----------------------------------------------------------------


def test_telegrams_token_goes_in_the_path_and_nowhere_else(server: ScriptedServer) -> None:
    bot = "7000000001:AAH-secret-bot-token_x"
    server.answer(200, {"ok": True, "result": {"message_id": 1, "text": "hi"}})
    out = _call(
        "telegram",
        "sendMessage",
        {"chatId": "42", "text": "hi"},
        base_url=server.url("/"),
        token=bot,
    )
    assert out == {"message_id": 1, "text": "hi"}
    assert server.requests[0].path == f"/bot{bot}/sendMessage"
    assert "authorization" not in server.requests[0].headers

    server.answer(
        400, {"ok": False, "error_code": 400, "description": f"Bad Request: chat not found ({bot})"}
    )
    with pytest.raises(NodeExecutionError, match="HTTP 400: Bad Request: chat not found") as caught:
        _call(
            "telegram",
            "sendMessage",
            {"chatId": "0", "text": "hi"},
            base_url=server.url("/"),
            token=bot,
        )
    shown = str(caught.value) + json.dumps(caught.value.details)
    assert bot not in shown and "/bot***/sendMessage" in caught.value.details["url"]

    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        closed = probe.getsockname()[1]
    with pytest.raises(TransientNodeError) as refused:
        _call("telegram", "getMe", {}, base_url=f"http://127.0.0.1:{closed}", token=bot)
    assert bot not in str(refused.value) and "bot***" in str(refused.value)


# -- 10. multipart bodies from stored files ----------------------------------------------------


def test_box_uploads_a_stored_file_as_multipart(server: ScriptedServer, files: FileStore) -> None:
    data = os.urandom(300_000)
    ref = files.area(None).write("/contracts/signed.pdf", data, media_type="application/pdf")
    settings = _settings(files)
    server.answer(
        201, {"total_count": 1, "entries": [{"type": "file", "id": "77", "name": "Acme.pdf"}]}
    )
    out = _call(
        "box",
        "uploadFile",
        {"file": {"signedDocument": ref.to_value()}, "fileName": "Acme.pdf", "folderId": "9"},
        settings=settings,
        base_url=server.url("/"),
        upload_base_url=server.url("/api/2.0"),
        access_token=TOKEN,
    )
    assert out == {
        "type": "file",
        "id": "77",
        "name": "Acme.pdf",
        "url": "https://app.box.com/file/77",
    }
    got = server.requests[0]
    assert got.path == "/api/2.0/files/content"
    assert got.headers["authorization"] == f"Bearer {TOKEN}"
    assert int(got.headers["content-length"]) == len(got.body)
    attributes, upload = parse_multipart(got.headers["content-type"], got.body)
    assert (attributes["name"], json.loads(attributes["body"])) == (
        "attributes",
        {"name": "Acme.pdf", "parent": {"id": "9"}},
    )
    assert (upload["name"], upload["filename"], upload["content_type"]) == (
        "file",
        "Acme.pdf",
        "application/pdf",
    )
    assert upload["body"] == data

    with pytest.raises(NodeExecutionError, match="larger than 1 MB") as big:
        two_mb = files.area(None).write("/big.bin", b"x" * 2_000_000)
        _call(
            "box",
            "uploadFile",
            {"file": two_mb.to_value()},
            settings=_settings(files, max_file_mb=1),
            base_url=server.url("/"),
            access_token=TOKEN,
        )
    assert not big.value.retryable
    with pytest.raises(NodeExecutionError, match=r"no file '/missing\.pdf'"):
        _call(
            "box",
            "uploadFile",
            {"file": {"type": "file", "path": "/missing.pdf", "name": "m.pdf"}},
            settings=settings,
            base_url=server.url("/"),
            access_token=TOKEN,
        )
    assert len(server.requests) == 1  # neither was sent


def test_text_and_data_urls_upload_too(server: ScriptedServer) -> None:
    server.answer(201, {"total_count": 1, "entries": [{"type": "file", "id": "78"}]})
    _call(
        "box",
        "uploadFile",
        {"file": "data:text/csv;base64,YSxiCjEsMgo=", "fileName": "t.csv"},
        base_url=server.url("/"),
        access_token=TOKEN,
    )
    _, upload = parse_multipart(server.requests[0].headers["content-type"], server.requests[0].body)
    assert (upload["filename"], upload["content_type"], upload["body"]) == (
        "t.csv",
        "text/csv",
        b"a,b\n1,2\n",
    )
    with pytest.raises(NodeConfigurationError, match="fileName is needed"):
        _call(
            "box",
            "uploadFile",
            {"file": "plain text"},
            base_url=server.url("/"),
            access_token=TOKEN,
        )


def test_youtube_uploads_metadata_then_the_video(server: ScriptedServer, files: FileStore) -> None:
    video = b"\x00\x00\x00\x18ftypmp42" + os.urandom(50_000)
    ref = files.area(None).write("/media/clip.mp4", video, media_type="video/mp4")
    server.answer(200, {"kind": "youtube#video", "id": "abc123", "snippet": {"title": "T"}})
    out = _call(
        "youtube",
        "uploadVideo",
        {
            "title": "T",
            "tags": ["a", "b"],
            "privacyStatus": "unlisted",
            "videoFile": ref.to_value(),
        },
        settings=_settings(files),
        base_url=server.url("/"),
        upload_base_url=server.url("/upload/youtube/v3"),
        access_token=TOKEN,
    )
    assert out["url"] == "https://www.youtube.com/watch?v=abc123"
    got = server.requests[0]
    assert got.query == {"uploadType": ["multipart"], "part": ["snippet,status"]}
    assert got.headers["content-type"].startswith("multipart/related; boundary=")
    metadata, media = parse_multipart(got.headers["content-type"], got.body)
    assert json.loads(metadata["body"])["snippet"]["tags"] == ["a", "b"]
    assert json.loads(metadata["body"])["status"]["privacyStatus"] == "unlisted"
    assert (media["name"], media["content_type"], media["body"]) == (None, "video/mp4", video)


# -- 11. a session sign-in ---------------------------------------------------------------------

_TABLEAU: dict[str, Any] = {
    "host": "tableau.example.com",
    "site": "acme",
    "token_name": "fm",
    "token_secret": "pat-secret-123",
}


def _signed_in(server: ScriptedServer, token: str) -> None:
    server.answer(
        200,
        {
            "credentials": {
                "token": token,
                "site": {"id": "site-1", "contentUrl": "acme"},
                "user": {"id": "u-1"},
            }
        },
    )


def test_tableau_signs_in_then_refreshes_and_signs_in_again_after_a_401(
    server: ScriptedServer,
) -> None:
    _signed_in(server, "sess-1")
    server.answer(202, {"job": {"id": "job-1", "type": "RefreshExtract"}})
    out = _call(
        "tableau",
        "refreshDataSource",
        {"datasourceId": "ds-1"},
        base_url=server.url("/api/3.21"),
        **_TABLEAU,
    )
    assert out == {"id": "job-1", "type": "RefreshExtract"}
    signin, refresh = server.requests
    assert json.loads(signin.body) == {
        "credentials": {
            "personalAccessTokenName": "fm",
            "personalAccessTokenSecret": "pat-secret-123",
            "site": {"contentUrl": "acme"},
        }
    }
    assert "x-tableau-auth" not in signin.headers
    assert refresh.path == "/api/3.21/sites/site-1/datasources/ds-1/refresh"
    assert (
        refresh.headers["x-tableau-auth"] == "sess-1"
        and refresh.headers["accept"] == "application/json"
    )

    server.requests.clear()
    _signed_in(server, "sess-2")
    server.answer(
        401, {"error": {"summary": "Signin Error", "detail": "session expired", "code": "401002"}}
    )
    _signed_in(server, "sess-3")
    server.answer(202, {"job": {"id": "job-2"}})
    _call(
        "tableau",
        "refreshDataSource",
        {"datasourceId": "ds-1"},
        base_url=server.url("/api/3.21"),
        **_TABLEAU,
    )
    assert [r.headers.get("x-tableau-auth") for r in server.requests] == [
        None,
        "sess-2",
        None,
        "sess-3",
    ]


def test_tableau_errors_mask_the_session_and_name_missing_secrets(server: ScriptedServer) -> None:
    _signed_in(server, "sess-secret-9")
    server.answer(
        404,
        {
            "error": {
                "summary": "Not Found",
                "detail": "no data source ds-9 for sess-secret-9 / pat-secret-123",
                "code": "404004",
            }
        },
    )
    with pytest.raises(NodeExecutionError, match="HTTP 404 404004: no data source ds-9") as caught:
        _call(
            "tableau",
            "getDataSource",
            {"datasourceId": "ds-9"},
            base_url=server.url("/api/3.21"),
            **_TABLEAU,
        )
    assert "sess-secret-9" not in str(caught.value) and "pat-secret-123" not in str(caught.value)
    with pytest.raises(ConnectorNotConfiguredError, match="needs token_secret"):
        _call(
            "tableau",
            "getDataSource",
            {"datasourceId": "ds-9"},
            base_url=server.url("/api/3.21"),
            host="h",
            token_name="fm",
        )


def test_looker_logs_in_with_an_api_key_or_sends_a_current_token(server: ScriptedServer) -> None:
    server.answer(200, {"access_token": "lk-session-1", "token_type": "Bearer", "expires_in": 3600})
    server.answer(200, [{"id": 1}])
    _call(
        "looker",
        "runQuery",
        {"queryId": "42"},
        base_url=server.url("/api/4.0"),
        client_id="cid",
        client_secret="csecret",
    )
    login, query = server.requests
    assert (login.path, parse_qs(login.text)) == (
        "/api/4.0/login",
        {"client_id": ["cid"], "client_secret": ["csecret"]},
    )
    assert query.headers["authorization"] == "token lk-session-1"
    server.answer(200, [{"id": 1}])
    _call(
        "looker", "runQuery", {"queryId": "42"}, base_url=server.url("/api/4.0"), access_token=TOKEN
    )
    assert server.requests[2].headers["authorization"] == f"token {TOKEN}"


# -- the authors' other notes, now hooks may POST -----------------------------------------------


def _graphql(request: EchoRequest) -> dict[str, Any]:
    body: dict[str, Any] = json.loads(request.body)
    return body


def test_intercom_finds_the_contact_for_an_email(server: ScriptedServer) -> None:
    server.answer(200, {"type": "list", "data": [{"type": "contact", "id": "c-9", "role": "lead"}]})
    server.answer(200, {"type": "user_message", "id": "m-1", "conversation_id": "500"})
    _call(
        "intercom",
        "createConversation",
        {"userId": "ann@example.com", "message": "hi"},
        base_url=server.url("/"),
        access_token=TOKEN,
    )
    search, create = server.requests
    assert json.loads(search.body)["query"] == {
        "field": "email",
        "operator": "=",
        "value": "ann@example.com",
    }
    assert json.loads(create.body)["from"] == {"type": "lead", "id": "c-9"}


def test_linear_label_names_become_ids(server: ScriptedServer) -> None:
    server.answer(
        200,
        {
            "data": {
                "issueLabels": {
                    "nodes": [
                        {"id": "l-ws", "name": "Bug", "team": None},
                        {"id": "l-team", "name": "bug", "team": {"id": "t1"}},
                        {"id": "l-other", "name": "docs", "team": {"id": "t2"}},
                    ]
                }
            }
        },
    )
    server.answer(200, {"data": {"issueCreate": {"success": True, "issue": {"id": "i1"}}}})
    _call(
        "linear",
        "createIssue",
        {"teamId": "t1", "title": "T", "labels": ["bug", "docs"]},
        base_url=server.url("/"),
        access_token=TOKEN,
    )
    lookup, create = (_graphql(r) for r in server.requests)
    assert lookup["variables"]["filter"] == {
        "or": [{"name": {"eqIgnoreCase": "bug"}}, {"name": {"eqIgnoreCase": "docs"}}]
    }
    assert create["variables"]["input"]["labelIds"] == ["l-team"]  # another team's `docs` is not


def test_monday_updates_the_item_of_that_name(server: ScriptedServer) -> None:
    server.answer(
        200, {"data": {"items_page_by_column_values": {"items": [{"id": "555", "name": "Q3"}]}}}
    )
    server.answer(200, {"data": {"change_multiple_column_values": {"id": "555", "name": "Q3"}}})
    out = _call(
        "monday",
        "createOrUpdateItem",
        {"boardId": "1", "itemName": "Q3", "columnValues": {"status": "Done"}},
        base_url=server.url("/"),
        token=TOKEN,
    )
    assert out == {"id": "555", "name": "Q3"}
    update = _graphql(server.requests[1])
    assert update["variables"]["itemId"] == "555"
    assert json.loads(update["variables"]["columnValues"]) == {"status": "Done", "name": "Q3"}
