"""Declarative connectors: the catalogue loads, every operation keeps its documented contract
against a local recording server, and the generic executor's pagination, token refresh, rate
limits, provider errors, size cap, redaction and deploy-time checks behave.
"""

import json
import re
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from flowmaestro_dagster.compile.validation import validate
from flowmaestro_dagster.errors import (
    ConnectionDestinationError,
    ConnectorNotConfiguredError,
    NodeConfigurationError,
    NodeExecutionError,
    TransientNodeError,
)
from flowmaestro_dagster.lang.state import ExecutionState
from flowmaestro_dagster.nodes.base import NodeContext
from flowmaestro_dagster.nodes.connectors import (
    ConnectorRegistry,
    ConnectorRequest,
    builtin_registry,
    load_entry_points,
)
from flowmaestro_dagster.nodes.connectors.declarative import (
    AuthSpec,
    CatalogueError,
    DeclarativeConnector,
    ExampleRequest,
    OperationSpec,
    ProviderSpec,
    auth_for,
    catalogue,
    load_provider,
)
from flowmaestro_dagster.nodes.filestore import FileStore
from flowmaestro_dagster.nodes.integration import execute_integration
from flowmaestro_dagster.settings import ConnectionSettings, HttpSettings, Settings
from flowmaestro_dagster.spec.configs import IntegrationConfig
from flowmaestro_dagster.spec.parse import parse_workflow
from flowmaestro_dagster.testing.http_server import EchoRequest, EchoServer
from tests.builders import flow, node
from tests.conftest import corpus_files

LOOPBACK = HttpSettings(allow_loopback=True)
TOKEN = "tok-access-0123456789"

# The upstream builder's operation ids for the catalogued providers
# (flowmaestro-operations.json, nbaghiro/flowmaestro @7a063de7; hubspot has none there).
UPSTREAM_OPERATIONS: dict[str, list[str]] = {
    "notion": ["createPage", "getPage", "queryDatabase", "search", "updatePage"],
    "airtable": [
        "batchCreateRecords", "batchDeleteRecords", "batchUpdateRecords", "createComment",
        "createRecord", "deleteRecord", "getBaseSchema", "getRecord", "listBases",
        "listComments", "listRecords", "listTables", "updateComment", "updateRecord",
    ],
    "google-sheets": [
        "addSheet", "appendValues", "autoResize", "batchClearValues", "batchGetValues",
        "batchUpdateSpreadsheet", "batchUpdateValues", "clearValues", "copySheet",
        "createSpreadsheet", "deleteSheet", "formatCells", "getSpreadsheet", "getValues",
        "mergeCells", "unmergeCells", "updateSheetProperties", "updateValues",
    ],
    "gmail": [
        "createLabel", "deleteLabel", "forwardMessage", "getAttachment", "getMessage",
        "getThread", "listLabels", "listMessages", "listThreads", "modifyMessage",
        "modifyThread", "replyToMessage", "sendMessage", "trashMessage", "trashThread",
        "untrashMessage", "updateLabel",
    ],
    # group comms (slack's sendMessage is served by the hand-written connector, see below)
    "slack": ["listChannels", "sendMessage"],
    "microsoft-teams": [
        "createChannel", "getChannel", "getTeam", "listChannelMessages", "listChannels",
        "listChatMembers", "listChatMessages", "listChats", "listJoinedTeams",
        "replyToChannelMessage", "sendChannelMessage", "sendChatMessage",
    ],
    "google-calendar": [
        "createCalendar", "createEvent", "deleteEvent", "getCalendar", "getEvent",
        "getFreeBusy", "listCalendars", "listEvents", "quickAdd", "updateEvent",
    ],
    "google-drive": [
        "copyFile", "createFolder", "deleteFile", "downloadFile", "exportDocument", "getFile",
        "listFiles", "listPermissions", "moveFile", "revokePermission", "shareFile",
        "trashFile", "updateFile", "uploadFile",
    ],
    "calendly": [
        "cancelEvent", "getAvailability", "getCurrentUser", "getEventType",
        "getScheduledEvent", "listEventInvitees", "listEventTypes", "listScheduledEvents",
    ],
}  # fmt: skip


class ScriptedServer(EchoServer):
    """Records every request and answers the queued (status, headers, body) in order."""

    name = "scripted provider"

    def __init__(self) -> None:
        super().__init__()
        self.script: list[tuple[int, dict[str, str], Any]] = []

    def answer(self, status: int = 200, body: Any = None, **headers: str) -> None:
        self.script.append((status, headers, body))

    def respond(self, request: EchoRequest) -> tuple[int, dict[str, str], bytes]:
        if not self.script:
            return 599, {}, b"unexpected request"
        status, headers, body = self.script.pop(0)
        if isinstance(body, bytes):
            return status, {"Content-Type": "application/octet-stream", **headers}, body
        if body is None:
            return status, headers, b""
        return status, {"Content-Type": "application/json", **headers}, json.dumps(body).encode()


@pytest.fixture
def server() -> Iterator[ScriptedServer]:
    with ScriptedServer() as running:
        yield running


def _ctx(settings: Settings, **config: Any) -> NodeContext:
    return NodeContext(
        node_id="int-1",
        node_type="integration",
        label="Integration",
        config=IntegrationConfig(**config),
        state=ExecutionState.start({}),
        services={"settings": settings},
    )


def _base_path(provider: ProviderSpec, url: str | None = None) -> str:
    return httpx.URL((url or provider.base_url).replace("{", "").replace("}", "")).path.rstrip("/")


def _settings(provider: str, connection: dict[str, Any], **http: Any) -> Settings:
    return Settings(
        http=HttpSettings(allow_loopback=True, **http), connections={provider: connection}
    )


def _connection(server: ScriptedServer, spec: ProviderSpec, **conn: Any) -> dict[str, Any]:
    """A connection whose base URLs (the provider's, and each of its other hosts') are the
    recording server's, at the same paths."""
    hosts = {
        f"{name}_base_url": server.url(_base_path(spec, url))
        for name, url in spec.base_urls.items()
    }
    return {"base_url": server.url(_base_path(spec)), "access_token": TOKEN, **hosts, **conn}


def _run(
    server: ScriptedServer, provider: str, operation: str, parameters: dict[str, Any], **conn: Any
) -> Any:
    spec = catalogue()[provider]
    connection = _connection(server, spec, **conn)
    ctx = _ctx(
        _settings(provider, connection),
        provider=provider,
        operation=operation,
        parameters=parameters,
        output_variable="out",
    )
    return execute_integration(ctx).output["out"]


# -- the catalogue -----------------------------------------------------------------------------


def test_every_catalogue_file_loads_with_documented_operations() -> None:
    providers = catalogue()
    assert {"notion", "hubspot", "airtable", "google-sheets", "gmail"} <= set(providers)
    for spec in providers.values():
        assert spec.docs.startswith("https://")
        for op in spec.operations:
            assert op.docs.startswith("https://"), (spec.id, op.id)
            assert op.example is not None, f"{spec.id} {op.id} has no example"


def test_oauth_settings_for_the_connections_store() -> None:
    google = catalogue()["google-sheets"].auth
    assert google.scheme == "oauth2"
    assert google.authorize_url == "https://accounts.google.com/o/oauth2/v2/auth"
    assert google.token_url == "https://oauth2.googleapis.com/token"
    assert google.revoke_url == "https://oauth2.googleapis.com/revoke"
    assert google.scopes == ["https://www.googleapis.com/auth/spreadsheets"]
    assert google.extra_authorize_params["access_type"] == "offline"
    assert catalogue()["notion"].auth.revoke_url is None


def test_upstream_operations_and_corpus_aliases_are_all_catalogued() -> None:
    providers = catalogue()
    registry = builtin_registry()

    def served(provider: str, operation: str) -> bool:
        """Catalogued, or kept by a hand-written connector: Slack's webhook ids (`sendMessage`,
        `postMessage`), which send through the catalogue's `chatPostMessage` for a bot token."""
        if providers[provider].operation(operation) is not None:
            return True
        found = registry.find(provider, operation)
        return found is not None and not isinstance(found.run, DeclarativeConnector)

    for provider, operations in UPSTREAM_OPERATIONS.items():
        missing = [op for op in operations if not served(provider, op)]
        assert not missing, (provider, missing)
    used: set[tuple[str, str]] = set()
    for path in corpus_files():
        spec, _ = parse_workflow(path.read_bytes())
        if spec is None:
            continue
        for item in spec.nodes.values():
            named = getattr(item.config, "provider", None)
            operation = getattr(item.config, "operation", None)
            if (
                item.type == "integration"
                and isinstance(named, str)
                and named in providers
                and operation
            ):
                used.add((named, operation))
    assert len(used) >= 30
    unserved = sorted(p for p in used if not served(*p))
    assert not unserved


@pytest.mark.parametrize(
    ("text", "complaint"),
    [
        (
            "id: x\nname: X\ndocs: https://x\nbase_url: https://x\nauth: {scheme: oauth2}\noperations: []",
            "authorize_url",
        ),
        (
            "id: x\nname: X\ndocs: https://x\nbase_url: https://x\nauth: {scheme: none}\noperations:\n  - {id: a, docs: https://x, method: GET, path: '/a/{b}'}",
            "undeclared parameters ['b']",
        ),
        (
            "id: x\nname: X\ndocs: https://x\nbase_url: https://x\nauth: {scheme: none}\noperations:\n  - {id: a, docs: https://x, method: GET, path: /a}\n  - {id: b, aliases: [A], docs: https://x, method: GET, path: /b}",
            "used by a and b",
        ),
        (
            "id: notion\nname: X\ndocs: https://x\nbase_url: https://x\nauth: {scheme: none}\noperations:\n  - {id: a, docs: https://x, method: GET, path: /a, hook: {request: nope}}",
            "request hook 'nope'",
        ),
        (
            "id: x\nname: X\ndocs: https://x\nbase_url: https://x\nauth: {scheme: none}\noperations:\n  - {id: a, docs: https://x, method: GET, path: /a, colour: red}",
            "colour",
        ),
    ],
)
def test_a_bad_catalogue_file_fails_loudly(text: str, complaint: str) -> None:
    with pytest.raises(CatalogueError, match=r"bad\.yaml") as caught:
        load_provider(text, "bad.yaml")
    assert complaint in str(caught.value)


# -- the contract of every operation -------------------------------------------------------------


def _operations() -> list[tuple[ProviderSpec, OperationSpec]]:
    return [(spec, op) for spec in catalogue().values() for op in spec.operations]


def parse_multipart(content_type: str, body: bytes) -> list[dict[str, Any]]:
    """A multipart body's parts: {name, filename, content_type, body (bytes)}."""
    boundary = content_type.split("boundary=", 1)[1].strip().strip('"').encode()
    assert body.endswith(b"--" + boundary + b"--\r\n"), "the body does not close its parts"
    parts = []
    for chunk in body.split(b"--" + boundary)[1:-1]:
        assert chunk.startswith(b"\r\n") and chunk.endswith(b"\r\n")
        head, _, data = chunk[2:-2].partition(b"\r\n\r\n")
        headers = dict(
            (k.strip().lower(), v.strip())
            for k, _, v in (line.partition(":") for line in head.decode().split("\r\n") if line)
        )
        disposition = headers.get("content-disposition", "")
        fields = dict(re.findall(r'(\w+)="([^"]*)"', disposition))
        parts.append(
            {
                "name": fields.get("name"),
                "filename": fields.get("filename"),
                "content_type": headers.get("content-type"),
                "body": data,
            }
        )
    return parts


def _expect_parts(expected: ExampleRequest, got: EchoRequest, where: str) -> None:
    content_type = got.headers.get("content-type", "")
    assert content_type.startswith(f"multipart/{expected.multipart or 'form-data'};"), where
    assert int(got.headers["content-length"]) == len(got.body), where
    parts = parse_multipart(content_type, got.body)
    assert len(parts) == len(expected.parts or []), where
    for want, part in zip(expected.parts or [], parts, strict=True):
        assert (part["name"], part["filename"]) == (want.name, want.filename), where
        if want.content_type is not None:
            assert part["content_type"] == want.content_type, where
        if isinstance(want.body, dict | list):
            assert json.loads(part["body"]) == want.body, where
        else:
            assert part["body"].decode() == str(want.body), where


def _expect_request(
    provider: ProviderSpec,
    expected: ExampleRequest,
    got: EchoRequest,
    where: str,
    auth: AuthSpec | None = None,
) -> None:
    auth = auth or provider.auth
    assert got.method == expected.method, where
    if auth.location == "path":  # a credential in the path: `/bot{token}/sendMessage`
        assert got.path == expected.path.replace("{" + auth.param_name + "}", TOKEN), where
    else:
        assert got.path == expected.path, where
    query = {k: v for k, v in got.query.items()}
    if auth.location == "query" and auth.scheme not in ("basic", "none"):
        assert query.pop(auth.param_name) == [TOKEN], where
    elif auth.scheme in ("oauth2", "bearer", "api_key") and auth.location == "header":
        assert got.headers[auth.param_name.lower()] == auth.value_prefix + TOKEN, where
    elif auth.scheme == "none":  # an operation without the provider's credential
        assert provider.auth.param_name.lower() not in got.headers, where
    wanted = {
        k: [str(i) for i in v] if isinstance(v, list) else [str(v)]
        for k, v in expected.query.items()
    }
    assert query == wanted, where
    for name, value in expected.headers.items():
        assert got.headers.get(name.lower()) == value, where
    if expected.parts is not None:
        _expect_parts(expected, got, where)
    elif expected.form is not None:
        from urllib.parse import parse_qs

        assert parse_qs(got.text) == {k: [str(v)] for k, v in expected.form.items()}, where
    elif isinstance(expected.body, str) and not got.headers.get("content-type", "").startswith(
        "application/json"
    ):
        assert got.text == expected.body, where  # a raw body: multipart (Drive's upload), text
    elif expected.body is not None:
        assert got.headers.get("content-type", "").startswith("application/json"), where
        assert json.loads(got.body) == expected.body, where
    else:
        assert got.body in (b"", b"null"), where


@pytest.mark.parametrize(
    ("provider", "op"), _operations(), ids=[f"{s.id}.{o.id}" for s, o in _operations()]
)
def test_operation_contract(
    server: ScriptedServer,
    provider: ProviderSpec,
    op: OperationSpec,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The executor sends the documented request and maps the documented answer."""
    example = op.example
    assert example is not None
    for exchange in example.before:
        server.answer(exchange.response.status, exchange.response.body, **exchange.response.headers)
    server.answer(example.response.status, example.response.body, **example.response.headers)
    if example.files:  # files the node's parameters refer to, in the workflow's file area
        monkeypatch.setenv("FLOWMAESTRO_FILES__URL", str(tmp_path / "files"))
        area = FileStore.from_settings(Settings()).area(None)
        for path, text in example.files.items():
            area.write(path, text.encode())
    output = _run(server, provider.id, op.id, example.parameters, **example.connection)
    connection = ConnectionSettings(**_connection(server, provider, **example.connection))
    auth = auth_for(provider, op, connection)
    expected = [*(e.request for e in example.before), example.request]
    assert len(server.requests) == len(expected)
    for index, (want, got) in enumerate(zip(expected, server.requests, strict=True)):
        _expect_request(provider, want, got, f"{provider.id}.{op.id} request {index}", auth)
    assert output == example.output


def test_aliases_reach_the_same_operation(server: ScriptedServer) -> None:
    server.answer(200, {"id": "rec1", "fields": {}})
    _run(
        server, "airtable", "createRecords", {"baseId": "app1", "table": "T", "records": [{"A": 1}]}
    )
    server.answer(200, {"object": "list", "results": [], "has_more": False, "next_cursor": None})
    _run(server, "notion", "SEARCHPAGES", {"query": "kb"})
    assert [r.path for r in server.requests] == ["/v0/app1/T", "/v1/search"]
    assert json.loads(server.requests[1].body) == {"query": "kb"}


# -- pagination ----------------------------------------------------------------------------------


def _page(ids: list[str], cursor: str | None) -> dict[str, Any]:
    return {
        "object": "list",
        "results": [{"id": i} for i in ids],
        "next_cursor": cursor,
        "has_more": cursor is not None,
    }


def test_cursor_pagination_follows_pages_up_to_the_cap(server: ScriptedServer) -> None:
    server.answer(200, _page(["a", "b"], "c1"))
    server.answer(200, _page(["c", "d"], "c2"))
    server.answer(200, _page(["e"], None))
    output = _run(server, "notion", "queryDatabase", {"database": "db1", "filter": {"x": 1}})
    assert [r["id"] for r in output["results"]] == ["a", "b", "c", "d", "e"]
    assert output["has_more"] is False
    bodies = [json.loads(r.body) for r in server.requests]
    assert bodies == [
        {"filter": {"x": 1}},
        {"filter": {"x": 1}, "start_cursor": "c1"},
        {"filter": {"x": 1}, "start_cursor": "c2"},
    ]

    server.requests.clear()
    for n in range(3):
        server.answer(200, _page([f"p{n}"], f"next{n}"))
    capped = _run(server, "notion", "queryDatabase", {"databaseId": "db1", "maxPages": 2})
    assert len(server.requests) == 2
    assert [r["id"] for r in capped["results"]] == ["p0", "p1"]
    assert capped["next_cursor"] == "next1"  # where a later run can continue
    server.script.clear()


def test_the_limit_parameter_stops_and_trims(server: ScriptedServer) -> None:
    server.answer(200, {"messages": [{"id": "1"}, {"id": "2"}], "nextPageToken": "t1"})
    server.answer(200, {"messages": [{"id": "3"}, {"id": "4"}], "nextPageToken": "t2"})
    output = _run(server, "gmail", "listMessages", {"maxResults": 3})
    assert [m["id"] for m in output["messages"]] == ["1", "2", "3"]
    assert [r.query.get("pageToken") for r in server.requests] == [None, ["t1"]]


_LINKED = """
id: linked
name: Linked
docs: https://example.com/docs
base_url: https://api.example.com/v2
auth: {scheme: api_key, in: query, name: api_key}
errors: {code: error_code}
operations:
  - id: listItems
    docs: https://example.com/docs/items
    method: GET
    path: /items
    parameters: [{name: perPage, type: integer}]
    query: {per_page: "{perPage}"}
    pagination: {style: link, items: items, max_pages: 5}
  - id: post
    docs: https://example.com/docs/post
    method: POST
    path: /rooms/{room}/post
    parameters: [{name: room, required: true}, {name: text, required: true}]
    body: {text: "{text}"}
"""


def _linked_call(
    server: ScriptedServer, operation: str, parameters: dict[str, Any], **connection: Any
) -> Any:
    spec = load_provider(_LINKED, "linked.yaml")
    conn = ConnectionSettings(base_url=server.url("/v2"), api_key=TOKEN, **connection)
    settings = Settings(http=LOOPBACK)
    request = ConnectorRequest(
        "linked", operation, parameters, conn, "linked", settings, _ctx(settings)
    )
    return DeclarativeConnector(spec)(request)


def test_link_header_pagination_stays_under_the_base_url(server: ScriptedServer) -> None:
    next_url = server.url("/v2/items?per_page=2&page=2")
    server.answer(
        200, {"items": [1, 2]}, Link=f'<{next_url}>; rel="next", <{next_url}>; rel="last"'
    )
    server.answer(200, {"items": [3]})
    output = _linked_call(server, "listItems", {"perPage": 2})
    assert output == {"items": [1, 2, 3]}
    assert server.requests[1].query == {"per_page": ["2"], "page": ["2"], "api_key": [TOKEN]}

    server.requests.clear()
    server.answer(200, {"items": [1]}, Link='<https://elsewhere.example/steal>; rel="next"')
    with pytest.raises(ConnectionDestinationError, match="sends its secrets only under"):
        _linked_call(server, "listItems", {})
    assert len(server.requests) == 1


# -- auth, refresh, errors -----------------------------------------------------------------------


def test_a_401_refreshes_the_token_once_and_retries(server: ScriptedServer) -> None:
    spec = catalogue()["notion"]
    base = server.url("/v1")
    settings = Settings(http=LOOPBACK)
    refreshed: list[int] = []

    def refresh() -> ConnectionSettings:
        refreshed.append(1)
        return ConnectionSettings(base_url=base, access_token="tok-fresh-987654")

    request = ConnectorRequest(
        "notion", "getPage", {"pageId": "p1"}, ConnectionSettings(base_url=base, access_token=TOKEN),
        "notion", settings, _ctx(settings), refresh=refresh,
    )  # fmt: skip
    server.answer(
        401,
        {
            "object": "error",
            "status": 401,
            "code": "unauthorized",
            "message": "API token is invalid.",
        },
    )
    server.answer(200, {"object": "page", "id": "p1"})
    assert DeclarativeConnector(spec)(request) == {"object": "page", "id": "p1"}
    assert [r.headers["authorization"] for r in server.requests] == [
        f"Bearer {TOKEN}",
        "Bearer tok-fresh-987654",
    ]

    server.requests.clear()
    server.answer(
        401, {"object": "error", "code": "unauthorized", "message": "API token is invalid."}
    )
    server.answer(
        401, {"object": "error", "code": "unauthorized", "message": "API token is invalid."}
    )
    with pytest.raises(NodeExecutionError, match="unauthorized: API token is invalid") as caught:
        DeclarativeConnector(spec)(request)
    assert not caught.value.retryable and len(server.requests) == 2 and len(refreshed) == 2


def test_rate_limit_and_server_errors_are_transient_with_retry_after(
    server: ScriptedServer,
) -> None:
    server.answer(
        429,
        {"object": "error", "code": "rate_limited", "message": "slow down"},
        **{"Retry-After": "17"},
    )
    with pytest.raises(TransientNodeError, match="HTTP 429 rate_limited: slow down") as caught:
        _run(server, "notion", "getPage", {"pageId": "p1"})
    assert caught.value.retry_after_seconds == 17
    assert caught.value.details["code"] == "rate_limited"
    server.answer(503, "upstream unavailable")
    with pytest.raises(TransientNodeError, match="HTTP 503") as caught:
        _run(server, "hubspot", "getDeal", {"dealId": "1"})
    assert caught.value.retry_after_seconds is None


def test_provider_4xx_carries_its_code_and_message_and_is_not_retried(
    server: ScriptedServer,
) -> None:
    server.answer(
        400,
        {
            "object": "error",
            "status": 400,
            "code": "validation_error",
            "message": "body.parent should be defined",
        },
    )
    with pytest.raises(NodeExecutionError) as caught:
        _run(server, "notion", "createPage", {"parentId": "db1"})
    error = caught.value
    assert not error.retryable and not isinstance(error, TransientNodeError)
    assert (
        "notion createPage failed: HTTP 400 validation_error: body.parent should be defined"
        in str(error)
    )
    assert error.details["code"] == "validation_error" and error.details["status"] == 400
    server.answer(
        422,
        {
            "error": {
                "type": "INVALID_VALUE_FOR_COLUMN",
                "message": "Field Votes cannot accept text",
            }
        },
    )
    with pytest.raises(
        NodeExecutionError, match="INVALID_VALUE_FOR_COLUMN: Field Votes cannot accept text"
    ):
        _run(
            server,
            "airtable",
            "createRecord",
            {"baseId": "app1", "tableId": "T", "fields": {"Votes": "x"}},
        )
    server.answer(
        404,
        {
            "error": {
                "code": 404,
                "message": "Requested entity was not found.",
                "status": "NOT_FOUND",
            }
        },
    )
    with pytest.raises(NodeExecutionError, match="NOT_FOUND: Requested entity was not found"):
        _run(server, "google-sheets", "getValues", {"spreadsheetId": "s", "range": "A1"})


def test_an_ok_false_answer_with_200_is_an_error(server: ScriptedServer) -> None:
    server.answer(200, {"ok": False, "error": "channel_not_found"})
    with pytest.raises(NodeExecutionError, match="HTTP 200 channel_not_found") as caught:
        _linked_call(server, "post", {"room": "general", "text": "hi"})
    assert not caught.value.retryable


def test_an_oversize_answer_is_an_error_not_an_unbounded_read(server: ScriptedServer) -> None:
    server.answer(200, b"x" * 5000)
    spec = catalogue()["notion"]
    connection = {"base_url": server.url(_base_path(spec)), "access_token": TOKEN}
    ctx = _ctx(
        _settings("notion", connection, max_response_bytes=1000),
        provider="notion", operation="getPage", parameters={"pageId": "p"},
    )  # fmt: skip
    with pytest.raises(NodeExecutionError, match="larger than 1000 bytes") as caught:
        execute_integration(ctx)
    assert not caught.value.retryable


def test_secrets_never_show_in_errors(server: ScriptedServer) -> None:
    server.answer(400, {"message": f"bad key {TOKEN}", "code": f"key_{TOKEN}"})
    with pytest.raises(NodeExecutionError) as caught:
        _linked_call(server, "post", {"room": "r", "text": "t"})
    text = str(caught.value) + json.dumps(caught.value.details)
    assert TOKEN not in text and "bad key ***" in text
    assert server.requests[0].query["api_key"] == [TOKEN]  # the key went where the scheme says


def test_a_missing_connection_names_the_provider_and_how_to_add_one() -> None:
    ctx = _ctx(
        Settings(http=LOOPBACK), provider="hubspot", operation="getDeal", parameters={"dealId": "1"}
    )
    with pytest.raises(ConnectorNotConfiguredError) as caught:
        execute_integration(ctx)
    message = str(caught.value)
    assert "provider hubspot (operation getDeal)" in message
    assert "POST /connections" in message and "FLOWMAESTRO_CONNECTIONS__HUBSPOT__" in message


def test_run_time_parameter_errors_name_the_field(server: ScriptedServer) -> None:
    with pytest.raises(
        NodeConfigurationError, match=r"parameters\.pageId|parameters\.page_id"
    ) as caught:
        _run(server, "notion", "getPage", {})
    assert caught.value.details["field"] == "parameters.page_id"
    with pytest.raises(NodeConfigurationError, match=r"parameters\.maxRecords must be an integer"):
        _run(
            server, "airtable", "listRecords", {"baseId": "a", "tableId": "t", "maxRecords": "lots"}
        )
    assert server.requests == []


def test_path_values_are_one_encoded_segment(server: ScriptedServer) -> None:
    server.answer(200, {"id": "x"})
    _run(
        server,
        "airtable",
        "getRecord",
        {"tableId": "Tasks & more", "recordId": "r 1"},
        base_id="appFromConnection",
    )
    assert server.requests[0].path == "/v0/appFromConnection/Tasks%20%26%20more/r%201"
    for value in ("..", "Tasks/../../x", "a\\b"):
        with pytest.raises(NodeConfigurationError, match="one path segment") as caught:
            _run(
                server, "airtable", "getRecord", {"baseId": "a", "tableId": value, "recordId": "r"}
            )
        assert caught.value.details["field"] == "parameters.tableId"
    assert len(server.requests) == 1


def test_base_url_placeholders_come_from_the_connection(server: ScriptedServer) -> None:
    spec = load_provider(
        _LINKED.replace("https://api.example.com/v2", "https://{subdomain}.example.com/v2")
    )
    settings = Settings(http=LOOPBACK)
    conn = ConnectionSettings(api_key=TOKEN, subdomain="evil.com/x#")
    request = ConnectorRequest("linked", "listItems", {}, conn, "linked", settings, _ctx(settings))
    with pytest.raises(NodeConfigurationError, match="needs a valid `subdomain`"):
        DeclarativeConnector(spec)(request)


_SCHEMES = """
id: schemes
name: Schemes
docs: https://example.com/docs
base_url: https://api.example.com
auth: AUTH
headers: {Content-Type: application/json}
operations:
  - id: submit
    docs: https://example.com/docs/submit
    method: POST
    path: /forms/{form}
    body_type: form
    parameters: [{name: form, required: true}, {name: name}, {name: tags, type: array}]
    body: {name: "{name}", tags: "{tags}", source: flowmaestro}
"""


@pytest.mark.parametrize(
    ("auth", "connection", "header", "value"),
    [
        ("{scheme: bearer}", {"token": TOKEN}, "authorization", f"Bearer {TOKEN}"),
        ("{scheme: api_key, name: X-Api-Key}", {"api_key": TOKEN}, "x-api-key", TOKEN),
        (
            "{scheme: api_key, name: Authorization, prefix: 'Token token='}",
            {"api_key": TOKEN},
            "authorization",
            f"Token token={TOKEN}",
        ),
        (
            "{scheme: basic}",
            {"username": "ann", "password": TOKEN},
            "authorization",
            "Basic YW5uOnRvay1hY2Nlc3MtMDEyMzQ1Njc4OQ==",
        ),
        ("{scheme: none}", {}, "authorization", None),
    ],
)
def test_auth_schemes_and_form_bodies(
    server: ScriptedServer, auth: str, connection: dict[str, Any], header: str, value: str | None
) -> None:
    spec = load_provider(_SCHEMES.replace("AUTH", auth))
    conn = ConnectionSettings(base_url=server.url("/"), **connection)
    settings = Settings(http=LOOPBACK)
    request = ConnectorRequest(
        "schemes",
        "submit",
        {"form": "f1", "name": "Ann", "tags": "a, b"},
        conn,
        "schemes",
        settings,
        _ctx(settings),
    )
    server.answer(201, {"ok": True})
    assert DeclarativeConnector(spec)(request) == {"ok": True}
    got = server.requests[0]
    assert got.headers.get(header) == value
    assert got.headers["content-type"] == "application/x-www-form-urlencoded"
    assert got.text == "name=Ann&tags=a&tags=b&source=flowmaestro"


# -- registry and deploy-time checks -------------------------------------------------------------


def test_entry_point_plug_ins_win_over_the_catalogue(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "acme_notion_plugin.py").write_text(
        textwrap.dedent(
            """
            def register(registry):
                @registry.register("notion", ["createPage"])
                def create_page(request):
                    return {"plugin": True}
            """
        )
    )
    dist = tmp_path / "acme_notion_plugin-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: acme-notion-plugin\nVersion: 1.0\n"
    )
    (dist / "entry_points.txt").write_text(
        "[flowmaestro.connectors]\nacme = acme_notion_plugin:register\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        registry = builtin_registry()
        assert isinstance(registry.find("notion", "createPage").run, DeclarativeConnector)  # type: ignore[union-attr]
        assert "acme" in load_entry_points(registry)
        spec = registry.find("notion", "createPage")
        assert spec is not None and spec.run.__name__ == "create_page"
        assert isinstance(registry.find("notion", "getPage").run, DeclarativeConnector)  # type: ignore[union-attr]
    finally:
        sys.modules.pop("acme_notion_plugin", None)


def _problems(*nodes: Any, settings: Settings | None = None) -> list[Any]:
    from flowmaestro_dagster.nodes.connectors import connector_problems

    definition = flow(
        [node("in", "input", inputName="x"), *nodes], [("in", n["id"]) for n in nodes]
    )
    spec, _ = parse_workflow(definition)
    assert spec is not None
    return connector_problems(spec, registry=builtin_registry(), settings=settings or Settings())


def test_deploy_time_problems_name_the_node_and_field() -> None:
    bound = Settings(connections={"notion": {"access_token": "t"}, "airtable": {"token": "t"}})
    problems = _problems(
        node("bad-op", "notion", operation="deleteEverything"),
        node("no-parent", "integration", provider="notion", operation="createPage", title="x"),
        node("templated", "notion", operation="createPage", parentId="{{env.DB}}"),
        node("alias", "integration", provider="notion", action="searchPages", query="kb"),
        node("conn-base", "airtable", operation="createRecord", table="T"),
        node("who", "integration", provider="acme-nonsense", operation="x"),
        settings=bound,
    )
    found = {(p.node_id, p.code, p.severity, p.field) for p in problems}
    assert found == {
        ("bad-op", "unknown_operation", "error", "operation"),
        ("no-parent", "missing_parameter", "error", "parameters.parent_id"),
        ("who", "unknown_provider", "error", "provider"),
    }
    message = next(p.message for p in problems if p.node_id == "no-parent")
    assert "parameters.parentId" in message and "parameters.database" in message


def test_an_unbound_template_gets_warnings_not_errors() -> None:
    problems = _problems(
        node("sheet", "google-sheets", operation="appendRow", spreadsheetId="", sheetName="Log")
    )
    assert {(p.code, p.severity, p.field) for p in problems} == {
        ("missing_parameter", "warning", "parameters.spreadsheetId"),
        ("missing_parameter", "warning", "parameters.values"),
        ("connector_required", "warning", "connectionId"),
    }
    named = _problems(
        node(
            "sheet", "google-sheets", operation="appendRow", sheetName="Log", connectionId="conn-1"
        )
    )
    assert {(p.code, p.severity) for p in named} == {("missing_parameter", "error")}


def test_the_corpus_still_validates_without_connector_errors() -> None:
    codes = {"unknown_operation", "unknown_provider", "missing_parameter"}
    for path in corpus_files():
        errors = [
            p for p in validate(path.read_bytes()) if p.code in codes and p.severity == "error"
        ]
        assert not errors, (path.name, errors)


def test_registry_keeps_the_slack_webhook_connector() -> None:
    registry: ConnectorRegistry = builtin_registry()
    slack = registry.find("slack", "sendMessage")
    assert slack is not None and not isinstance(slack.run, DeclarativeConnector)


def test_a_workflow_uses_the_output_as_templates_expect(server: ScriptedServer) -> None:
    """`{{notionPage.url}}` downstream of a declarative node, through the compiled job."""
    from flowmaestro_dagster.testing import run_workflow
    from tests.builders import chain

    server.answer(
        200, {"object": "page", "id": "p9", "url": "https://www.notion.so/p9", "created_by": {}}
    )
    settings = _settings("notion", {"base_url": server.url("/v1"), "access_token": TOKEN})
    definition = chain(
        node("in", "input", inputName="topic"),
        node("page", "integration", provider="notion", action="createPage", parentId="db1", properties={"title": "{{topic}}"}, outputVariable="notionPage"),
        node("say", "transform", operation="passthrough", data="see {{notionPage.url}}", outputVariable="msg"),
        react=True,
    )  # fmt: skip
    result = run_workflow(definition, {"topic": "Q3 plan"}, settings=settings)
    assert result.output("page") == {
        "notionPage": {"object": "page", "id": "p9", "url": "https://www.notion.so/p9"}
    }
    assert json.loads(server.requests[0].body)["properties"] == {
        "title": {"title": [{"text": {"content": "Q3 plan"}}]}
    }
    assert "https://www.notion.so/p9" in json.dumps(result.output("say"))
