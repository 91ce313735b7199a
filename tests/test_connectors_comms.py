"""Slack and Microsoft Teams (and Google Drive's uploads) beyond their per-operation contracts:
pages followed across cursors and `@odata.nextLink`s, one token refresh after a 401, 429s
transient with their Retry-After as the wait, the provider's own errors, Slack's webhook and
bot-token paths side by side, Teams channels by name, and Drive uploads of stored files.
"""

import json
from collections.abc import Iterator
from typing import Any

import pytest

from flowmaestro_dagster.adapter.retries import decide
from flowmaestro_dagster.errors import (
    NodeConfigurationError,
    NodeExecutionError,
    TransientNodeError,
)
from flowmaestro_dagster.lang.state import ExecutionState
from flowmaestro_dagster.nodes.base import NodeContext
from flowmaestro_dagster.nodes.connectors import ConnectorRequest, builtin_registry
from flowmaestro_dagster.nodes.connectors.declarative import DeclarativeConnector, catalogue
from flowmaestro_dagster.nodes.connectors.slack import OPERATIONS as SLACK_WEBHOOK_OPERATIONS
from flowmaestro_dagster.nodes.connectors.slack import WEB_API_OPERATION as SLACK_WEB_API_OPERATION
from flowmaestro_dagster.nodes.filestore import FileStore
from flowmaestro_dagster.nodes.integration import execute_integration
from flowmaestro_dagster.settings import ConnectionSettings, HttpSettings, Settings
from flowmaestro_dagster.spec.configs import IntegrationConfig
from flowmaestro_dagster.spec.policies import RetrySettings
from tests.builders import chain, node
from tests.test_declarative_connectors import TOKEN, ScriptedServer

LOOPBACK = HttpSettings(allow_loopback=True)
FRESH = "tok-fresh-5566778899"
BASES = {"slack": "/api", "microsoft-teams": "/v1.0", "google-drive": ""}

# The upstream builder's operations and their parameter names for these providers
# (flowmaestro-operations.json, nbaghiro/flowmaestro @7a063de7).
UPSTREAM: dict[str, dict[str, list[str]]] = {
    "slack": {
        "listChannels": ["excludeArchived", "limit"],
        "sendMessage": ["channel", "text", "thread_ts", "blocks"],
    },
    "microsoft-teams": {
        "createChannel": ["teamId", "displayName", "description", "membershipType"],
        "getChannel": ["teamId", "channelId"],
        "getTeam": ["teamId"],
        "listChannelMessages": ["teamId", "channelId", "top"],
        "listChannels": ["teamId"],
        "listChatMembers": ["chatId"],
        "listChatMessages": ["chatId", "top"],
        "listChats": ["top"],
        "listJoinedTeams": [],
        "replyToChannelMessage": ["teamId", "channelId", "messageId", "content", "contentType"],
        "sendChannelMessage": ["teamId", "channelId", "content", "contentType"],
        "sendChatMessage": ["chatId", "content", "contentType"],
    },
    "google-calendar": {
        "createCalendar": ["summary", "description", "location", "timeZone"],
        "createEvent": ["dateTime", "date", "timeZone"],
        "deleteEvent": ["calendarId", "eventId", "sendUpdates"],
        "getCalendar": ["calendarId"],
        "getEvent": ["calendarId", "eventId"],
        "getFreeBusy": ["timeMin", "timeMax", "items", "timeZone"],
        "listCalendars": ["maxResults"],
        "listEvents": ["calendarId", "timeMin", "timeMax", "maxResults", "orderBy", "q", "singleEvents"],
        "quickAdd": ["calendarId", "text"],
        "updateEvent": ["dateTime", "date", "timeZone"],
    },
    "google-drive": {
        "copyFile": ["fileId", "newName", "parentFolderId"],
        "createFolder": ["folderName", "parentFolderId", "description"],
        "deleteFile": ["fileId"],
        "downloadFile": ["fileId"],
        "exportDocument": ["fileId", "mimeType"],
        "getFile": ["fileId", "fields"],
        "listFiles": ["query", "pageSize", "pageToken", "orderBy", "fields"],
        "listPermissions": ["fileId"],
        "moveFile": ["fileId", "newFolderId", "oldFolderId"],
        "revokePermission": ["fileId", "permissionId"],
        "shareFile": ["fileId", "type", "role", "emailAddress", "domain"],
        "trashFile": ["fileId"],
        "updateFile": ["fileId", "name", "description"],
        "uploadFile": ["fileName", "fileContent", "mimeType", "folderId", "description"],
    },
    "calendly": {
        "cancelEvent": ["uuid", "reason"],
        "getAvailability": ["eventType", "startTime", "endTime"],
        "getCurrentUser": [],
        "getEventType": ["uuid"],
        "getScheduledEvent": ["uuid"],
        "listEventInvitees": ["eventUuid", "status", "count", "pageToken", "email"],
        "listEventTypes": ["user", "organization", "count", "pageToken", "active"],
        "listScheduledEvents": ["user", "organization", "minStartTime", "maxStartTime", "status", "count", "pageToken", "inviteeEmail"],
    },
}  # fmt: skip


@pytest.fixture
def server() -> Iterator[ScriptedServer]:
    with ScriptedServer() as running:
        yield running


def _ctx(settings: Settings, services: dict[str, Any] | None = None, **config: Any) -> NodeContext:
    return NodeContext(
        node_id="comms-1",
        node_type="integration",
        label="Comms",
        config=IntegrationConfig(**config),
        state=ExecutionState.start({}),
        services={"settings": settings, **(services or {})},
    )


def _call(
    server: ScriptedServer,
    provider: str,
    operation: str,
    parameters: dict[str, Any],
    *,
    refreshed: list[str] | None = None,
    services: dict[str, Any] | None = None,
) -> Any:
    """The declarative connector of `provider`, its base URL on the server; with `refreshed`,
    a 401 gets a fresh token (recorded there)."""
    base = server.url(BASES[provider])
    settings = Settings(http=LOOPBACK)

    def refresh() -> ConnectionSettings:
        assert refreshed is not None
        refreshed.append(FRESH)
        return ConnectionSettings(base_url=base, access_token=FRESH)

    request = ConnectorRequest(
        provider,
        operation,
        parameters,
        ConnectionSettings(base_url=base, access_token=TOKEN),
        provider,
        settings,
        _ctx(settings, services),
        refresh=refresh if refreshed is not None else None,
    )
    return DeclarativeConnector(catalogue()[provider])(request)


def _slack_page(texts: list[str], cursor: str) -> dict[str, Any]:
    return {
        "ok": True,
        "messages": [{"type": "message", "text": t, "ts": f"17145550{i}0.000100"} for i, t in enumerate(texts)],
        "has_more": bool(cursor),
        "response_metadata": {"next_cursor": cursor},
    }  # fmt: skip


def test_every_upstream_operation_and_parameter_name_is_accepted() -> None:
    """Each builder operation reaches a catalogued operation (Slack's `sendMessage` through the
    hand-written connector's `chatPostMessage`) that takes each of its parameter names."""
    for provider, operations in UPSTREAM.items():
        spec = catalogue()[provider]
        for name, parameters in operations.items():
            op = spec.operation(name)
            if op is None and provider == "slack" and name in SLACK_WEBHOOK_OPERATIONS:
                op = spec.operation(SLACK_WEB_API_OPERATION)
            assert op is not None, (provider, name)
            accepted = {n.lower() for p in op.parameters for n in (p.name, *p.aliases)}
            missing = [p for p in parameters if p.lower() not in accepted]
            assert not missing, (provider, name, missing)


# -- Slack -------------------------------------------------------------------------------------


def test_slack_history_follows_the_next_cursor_across_pages(server: ScriptedServer) -> None:
    server.answer(200, {"ok": True, "channels": [{"id": "C061EG9T2", "name": "engineering"}]})
    server.answer(200, _slack_page(["a", "b"], "dXNlcjpVMEc5V0ZYTlo="))
    server.answer(200, _slack_page(["c", "d"], "dXNlcjpVMEc5V0ZYTlp="))
    server.answer(200, _slack_page(["e"], ""))
    output = _call(
        server, "slack", "getChannelHistory", {"channel": "#engineering", "since": "2024-05-01T09:00:00Z"}
    )  # fmt: skip
    assert [m["text"] for m in output["messages"]] == ["a", "b", "c", "d", "e"]
    assert output["response_metadata"] == {"next_cursor": ""}
    history = server.requests[1:]
    assert [r.path for r in history] == ["/api/conversations.history"] * 3
    assert [r.query.get("cursor") for r in history] == [
        None,
        ["dXNlcjpVMEc5V0ZYTlo="],
        ["dXNlcjpVMEc5V0ZYTlp="],
    ]
    for got in history:  # every page asks for the same channel and window
        assert got.query["channel"] == ["C061EG9T2"]
        assert got.query["oldest"] == ["1714554000.000000"]
        assert got.headers["authorization"] == f"Bearer {TOKEN}"


def test_slack_limit_stops_reading_and_trims(server: ScriptedServer) -> None:
    server.answer(200, _slack_page(["a", "b"], "next-1"))
    server.answer(200, _slack_page(["c", "d"], "next-2"))
    output = _call(server, "slack", "getChannelHistory", {"channel": "C061EG9T2", "limit": 3})
    assert [m["text"] for m in output["messages"]] == ["a", "b", "c"]
    assert len(server.requests) == 2 and server.requests[0].query["limit"] == ["3"]
    assert output["response_metadata"] == {"next_cursor": "next-2"}  # where to continue


def test_slack_refreshes_the_token_once_after_a_401(server: ScriptedServer) -> None:
    refreshed: list[str] = []
    server.answer(401, {"ok": False, "error": "token_expired"})
    server.answer(200, {"ok": True, "channels": [], "response_metadata": {"next_cursor": ""}})
    assert _call(server, "slack", "listChannels", {}, refreshed=refreshed)["ok"] is True
    assert [r.headers["authorization"] for r in server.requests] == [
        f"Bearer {TOKEN}",
        f"Bearer {FRESH}",
    ]
    server.requests.clear()
    server.answer(401, {"ok": False, "error": "token_revoked"})
    server.answer(401, {"ok": False, "error": "token_revoked"})
    with pytest.raises(NodeExecutionError, match="token_revoked") as caught:
        _call(server, "slack", "listChannels", {}, refreshed=refreshed)
    assert not caught.value.retryable
    assert len(server.requests) == 2 and refreshed == [FRESH, FRESH]  # one refresh per call


def test_slack_rate_limit_is_transient_and_retry_after_is_the_wait(
    server: ScriptedServer,
) -> None:
    server.answer(429, {"ok": False, "error": "ratelimited"}, **{"Retry-After": "7"})
    with pytest.raises(TransientNodeError, match="HTTP 429 ratelimited") as caught:
        _call(server, "slack", "chatPostMessage", {"channel": "C1", "text": "hi"})
    assert caught.value.retry_after_seconds == 7
    decision = decide(RetrySettings(max_attempts=3), caught.value, 1, node_type="integration")
    assert decision.retry and decision.wait_seconds == 7 and decision.retry_after_seconds == 7


def test_slack_ok_false_is_a_permanent_error_with_slacks_code(server: ScriptedServer) -> None:
    server.answer(
        200,
        {
            "ok": False,
            "error": "invalid_arguments",
            "response_metadata": {"messages": ["[ERROR] missing required field: channel"]},
        },
    )
    with pytest.raises(NodeExecutionError) as caught:
        _call(server, "slack", "chatPostMessage", {"channel": "C1", "text": "hi"})
    assert not caught.value.retryable
    assert caught.value.details["code"] == "invalid_arguments"
    assert "missing required field: channel" in str(caught.value)
    with pytest.raises(NodeConfigurationError, match=r"needs parameters\.text or blocks"):
        _call(server, "slack", "chatPostMessage", {"channel": "C1"})
    assert len(server.requests) == 1


def test_slack_send_message_posts_to_a_webhook_url_or_through_the_bot_token(
    server: ScriptedServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    registry = builtin_registry()
    found = registry.find("slack", "sendMessage")
    assert found is not None and not isinstance(found.run, DeclarativeConnector)
    assert isinstance(registry.find("slack", "getChannelHistory").run, DeclarativeConnector)  # type: ignore[union-attr]
    monkeypatch.setenv("SLACK_HOOK_URL", server.url("/services/T0/B0/secret-path-1"))
    settings = Settings(
        http=LOOPBACK,
        connections={
            "webhook": {"url_env": "SLACK_HOOK_URL", "access_token": TOKEN},
            "bot": {"base_url": server.url("/api"), "access_token": TOKEN},
        },
    )
    services = {"connectors": registry}
    parameters = {"channel": "#sales", "text": "New lead: Ann"}
    server.answer(200, b"ok", **{"Content-Type": "text/html"})
    ctx = _ctx(settings, services, provider="slack", operation="sendMessage", connection_id="webhook", parameters=parameters)  # fmt: skip
    assert execute_integration(ctx).output == {
        "ok": True, "status": 200, "channel": "#sales", "text": "New lead: Ann",
    }  # fmt: skip
    hook = server.requests[-1]
    assert hook.path == "/services/T0/B0/secret-path-1" and "authorization" not in hook.headers
    assert json.loads(hook.body) == {"text": "New lead: Ann"}

    server.answer(
        200,
        {"ok": True, "channel": "C024BE91L", "ts": "1714555000.000200", "message": {"text": "New lead: Ann"}},
    )  # fmt: skip
    ctx = _ctx(settings, services, provider="slack", operation="postMessage", connection_id="bot", parameters=parameters, output_variable="slackResult")  # fmt: skip
    output = execute_integration(ctx).output["slackResult"]
    assert output["ts"] == "1714555000.000200" and output["channel"] == "C024BE91L"
    api = server.requests[-1]
    assert api.path == "/api/chat.postMessage"
    assert api.headers["authorization"] == f"Bearer {TOKEN}"
    assert json.loads(api.body) == {"channel": "#sales", "text": "New lead: Ann"}


def test_a_workflow_retries_a_rate_limited_slack_post_and_uses_its_ts(
    server: ScriptedServer,
) -> None:
    from flowmaestro_dagster.testing import run_workflow

    server.answer(429, {"ok": False, "error": "ratelimited"}, **{"Retry-After": "1"})
    server.answer(200, {"ok": True, "channel": "C1", "ts": "1714555000.000300", "message": {}})
    settings = Settings(
        http=LOOPBACK,
        connections={"slack": {"base_url": server.url("/api"), "access_token": TOKEN}},
    )
    definition = chain(
        node("in", "input", inputName="name"),
        node("say", "integration", provider="slack", action="chatPostMessage", channel="C1", text="hi {{name}}", outputVariable="slackResult", retry={"maxAttempts": 2}),
        node("reply", "transform", operation="passthrough", data="{{slackResult.ts}}", outputVariable="threadTs"),
        react=True,
    )  # fmt: skip
    result = run_workflow(definition, {"name": "Ann"}, settings=settings)
    assert len(server.requests) == 2
    assert [json.loads(r.body)["text"] for r in server.requests] == ["hi Ann", "hi Ann"]
    assert "1714555000.000300" in json.dumps(result.output("reply"))


# -- Microsoft Teams ---------------------------------------------------------------------------

TEAM = "fbe2bf47-16c8-47cf-b4a5-4b9b187c508b"
CHANNEL = "19:4a95f7d8db4c4e7fae857bcebe0623e6@thread.tacv2"
MESSAGES = f"/v1.0/teams/{TEAM}/channels/{CHANNEL}/messages"


def _graph_page(server: ScriptedServer, ids: list[str], skiptoken: str | None) -> dict[str, Any]:
    page: dict[str, Any] = {"value": [{"id": i, "body": {"content": i}} for i in ids]}
    if skiptoken:
        page["@odata.nextLink"] = server.url(f"{MESSAGES}?$top=2&$skiptoken={skiptoken}")
    return page


def test_teams_follows_odata_next_links_across_pages(server: ScriptedServer) -> None:
    server.answer(200, _graph_page(server, ["1", "2"], "MSMjMCMjMjAyMS0wMy0yOA"))
    server.answer(200, _graph_page(server, ["3", "4"], "MSMjMCMjMjAyMS0wMy0yNw"))
    server.answer(200, _graph_page(server, ["5"], None))
    output = _call(
        server, "microsoft-teams", "listChannelMessages", {"teamId": TEAM, "channelId": CHANNEL}
    )
    assert [m["id"] for m in output["value"]] == ["1", "2", "3", "4", "5"]
    assert "@odata.nextLink" not in output
    assert [r.path for r in server.requests] == [MESSAGES] * 3
    assert [r.query.get("$skiptoken") for r in server.requests] == [
        None,
        ["MSMjMCMjMjAyMS0wMy0yOA"],
        ["MSMjMCMjMjAyMS0wMy0yNw"],
    ]
    assert {r.headers["authorization"] for r in server.requests} == {f"Bearer {TOKEN}"}


def test_teams_top_and_max_pages_stop_the_reading(server: ScriptedServer) -> None:
    server.answer(200, _graph_page(server, ["1", "2"], "t1"))
    server.answer(200, _graph_page(server, ["3", "4"], "t2"))
    output = _call(
        server, "microsoft-teams", "listChannelMessages", {"teamId": TEAM, "channelId": CHANNEL, "top": 3}
    )  # fmt: skip
    assert [m["id"] for m in output["value"]] == ["1", "2", "3"]
    assert server.requests[0].query["$top"] == ["3"] and len(server.requests) == 2
    server.requests.clear()
    for n in range(3):
        server.answer(200, _graph_page(server, [f"p{n}"], f"t{n}"))
    capped = _call(
        server, "microsoft-teams", "listChatMessages", {"chatId": "19:abc@thread.v2", "maxPages": 2}
    )
    assert [m["id"] for m in capped["value"]] == ["p0", "p1"] and len(server.requests) == 2
    assert capped["@odata.nextLink"].endswith("$skiptoken=t1")  # where a later run continues
    server.script.clear()


def test_teams_next_links_are_read_under_the_connection_base_only(server: ScriptedServer) -> None:
    page = _graph_page(server, ["1"], None)
    page["@odata.nextLink"] = f"https://graph.evil.example{MESSAGES}?$skiptoken=x"
    server.answer(200, page)
    server.answer(200, _graph_page(server, ["2"], None))
    output = _call(
        server, "microsoft-teams", "listChannelMessages", {"teamId": TEAM, "channelId": CHANNEL}
    )
    assert [m["id"] for m in output["value"]] == ["1", "2"]
    assert server.requests[1].path == MESSAGES  # the link's path, under the connection's base


def test_teams_refreshes_the_token_once_after_a_401(server: ScriptedServer) -> None:
    refreshed: list[str] = []
    expired = {"error": {"code": "InvalidAuthenticationToken", "message": "Access token has expired or is not yet valid."}}  # fmt: skip
    server.answer(401, expired)
    server.answer(200, {"value": [{"id": TEAM, "displayName": "Finance"}]})
    output = _call(server, "microsoft-teams", "listJoinedTeams", {}, refreshed=refreshed)
    assert output == {"value": [{"id": TEAM, "displayName": "Finance"}]}
    assert [r.headers["authorization"] for r in server.requests] == [
        f"Bearer {TOKEN}",
        f"Bearer {FRESH}",
    ]
    server.requests.clear()
    server.answer(401, expired)
    server.answer(401, expired)
    with pytest.raises(
        NodeExecutionError, match="InvalidAuthenticationToken: Access token has expired"
    ):
        _call(server, "microsoft-teams", "listJoinedTeams", {}, refreshed=refreshed)
    assert len(server.requests) == 2 and len(refreshed) == 2


def test_teams_rate_limit_is_transient_and_retry_after_is_the_wait(
    server: ScriptedServer,
) -> None:
    throttled = {"error": {"code": "TooManyRequests", "message": "Too many requests"}}
    server.answer(429, throttled, **{"Retry-After": "12"})
    with pytest.raises(TransientNodeError, match="HTTP 429 TooManyRequests") as caught:
        _call(server, "microsoft-teams", "sendChatMessage", {"chatId": "19:abc@thread.v2", "content": "hi"})  # fmt: skip
    assert caught.value.retry_after_seconds == 12
    assert decide(RetrySettings(max_attempts=2), caught.value, 1).wait_seconds == 12
    server.answer(503, throttled, **{"Retry-After": "3"})
    with pytest.raises(NodeExecutionError) as created:  # a 5xx may have created the channel
        _call(server, "microsoft-teams", "createChannel", {"teamId": TEAM, "displayName": "Ops"})
    assert not created.value.retryable


def test_teams_channel_by_name_in_the_given_team(server: ScriptedServer) -> None:
    server.answer(200, {"value": [{"id": CHANNEL, "displayName": "Legal"}]})
    server.answer(201, {"id": "1616990032035", "body": {"content": "Ready"}})
    output = _call(
        server, "microsoft-teams", "sendMessage", {"teamId": TEAM, "channel": "#legal", "text": "Ready"}
    )  # fmt: skip
    assert output["id"] == "1616990032035"
    assert [r.path for r in server.requests] == [f"/v1.0/teams/{TEAM}/channels", MESSAGES]
    assert json.loads(server.requests[1].body) == {"body": {"content": "Ready"}}

    server.requests.clear()
    server.answer(200, {"value": [{"id": CHANNEL, "displayName": "Legal"}]})
    with pytest.raises(NodeConfigurationError, match="no channel named '#hr'") as caught:
        _call(server, "microsoft-teams", "sendMessage", {"teamId": TEAM, "channel": "#hr", "text": "x"})  # fmt: skip
    assert caught.value.details["field"] == "parameters.channelId" and len(server.requests) == 1
    with pytest.raises(NodeConfigurationError, match=r"needs parameters\.teamId"):
        _call(server, "microsoft-teams", "sendMessage", {"channel": CHANNEL, "text": "x"})


# -- Google Drive uploads ----------------------------------------------------------------------


def test_drive_uploads_a_stored_file_as_multipart(server: ScriptedServer, tmp_path: Any) -> None:
    store = FileStore(str(tmp_path / "files"), max_bytes=10 * 1024 * 1024)
    pdf = b"%PDF-1.7\n" + bytes(range(256)) * 4
    ref = store.area(None).write(
        "/executions/e1/sign/contract.pdf", pdf, media_type="application/pdf"
    )
    server.answer(200, {"id": "1Hq2", "name": "contract.pdf", "mimeType": "application/pdf"})
    output = _call(
        server,
        "google-drive",
        "uploadFile",
        {"file": {"signedDocument": ref.to_value()}, "folderId": "0Bww"},
        services={"files": store},
    )
    assert output["id"] == "1Hq2"
    got = server.requests[0]
    assert got.path == "/upload/drive/v3/files" and got.query["uploadType"] == ["multipart"]
    boundary = got.headers["content-type"].split("boundary=", 1)[1]
    parts = got.body.split(f"--{boundary}".encode())
    assert json.loads(parts[1].split(b"\r\n\r\n", 1)[1]) == {
        "name": "contract.pdf",
        "parents": ["0Bww"],
    }
    head, content = parts[2].split(b"\r\n\r\n", 1)
    assert b"Content-Type: application/pdf" in head and content == pdf + b"\r\n"
    assert parts[3] == b"--\r\n"


def test_drive_upload_refuses_what_drive_multipart_cannot_take(
    server: ScriptedServer, tmp_path: Any
) -> None:
    with pytest.raises(NodeConfigurationError, match="larger than 5 MB") as caught:
        _call(server, "google-drive", "uploadFile", {"fileName": "big.txt", "content": "x" * (5 * 1024 * 1024 + 1)})  # fmt: skip
    assert caught.value.details["field"] == "parameters.fileContent"
    store = FileStore(str(tmp_path / "files"), max_bytes=1024)
    missing = {"type": "file", "path": "/executions/e1/none.pdf", "name": "none.pdf"}
    with pytest.raises(NodeConfigurationError, match="no file") as absent:
        _call(server, "google-drive", "uploadFile", {"file": missing}, services={"files": store})
    assert absent.value.details["field"] == "parameters.fileContent"
    assert server.requests == []
