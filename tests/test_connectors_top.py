"""The five most used catalogued providers (Notion, Gmail, HubSpot, Airtable, Google Sheets)
against a local recording server: pages followed in each provider's own style, a refused
OAuth token refreshed once, and a 429's Retry-After handed to the retry policy. Then the
long-tail providers' hooks, on the branches their contract examples do not take.
"""

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs

import pytest

from flowmaestro_dagster.adapter.retries import decide
from flowmaestro_dagster.errors import NodeExecutionError, TransientNodeError
from flowmaestro_dagster.nodes.connectors import ConnectorRequest
from flowmaestro_dagster.nodes.connectors.declarative import DeclarativeConnector, catalogue
from flowmaestro_dagster.settings import ConnectionSettings, Settings
from flowmaestro_dagster.spec.policies import RetrySettings
from flowmaestro_dagster.testing import run_workflow
from tests.builders import chain, node
from tests.test_declarative_connectors import (
    LOOPBACK,
    TOKEN,
    ScriptedServer,
    _base_path,
    _ctx,
    _run,
)

FRESH = "tok-fresh-555666777"


@pytest.fixture
def server() -> Iterator[ScriptedServer]:
    with ScriptedServer() as running:
        yield running


# -- pagination, each provider's own way -----------------------------------------------------


def test_notion_search_follows_next_cursor_in_the_post_body_until_has_more_is_false(
    server: ScriptedServer,
) -> None:
    for ids, cursor in ((["p1", "p2"], "cur-a"), (["p3"], "cur-b"), (["p4"], None)):
        server.answer(
            200,
            {
                "object": "list",
                "results": [{"object": "page", "id": i} for i in ids],
                "next_cursor": cursor,
                "has_more": cursor is not None,
                "type": "page_or_database",
            },
        )
    output = _run(server, "notion", "search", {"query": "roadmap", "pageSize": 50})
    assert [r["id"] for r in output["results"]] == ["p1", "p2", "p3", "p4"]
    assert output["has_more"] is False and output["next_cursor"] is None
    assert [r.method for r in server.requests] == ["POST"] * 3
    assert [r.path for r in server.requests] == ["/v1/search"] * 3
    bodies = [json.loads(r.body) for r in server.requests]
    assert bodies == [
        {"query": "roadmap", "page_size": 50},
        {"query": "roadmap", "page_size": 50, "start_cursor": "cur-a"},
        {"query": "roadmap", "page_size": 50, "start_cursor": "cur-b"},
    ]
    assert all(r.query == {} for r in server.requests)  # the cursor is not in the URL


def test_notion_stops_when_has_more_is_false_even_with_a_cursor(server: ScriptedServer) -> None:
    server.answer(
        200,
        {"object": "list", "results": [{"id": "p1"}], "next_cursor": "stale", "has_more": False},
    )
    output = _run(server, "notion", "queryDatabase", {"databaseId": "db1"})
    assert [r["id"] for r in output["results"]] == ["p1"]
    assert len(server.requests) == 1


def test_gmail_list_threads_follows_next_page_token_in_the_query(server: ScriptedServer) -> None:
    server.answer(200, {"threads": [{"id": "t1"}, {"id": "t2"}], "nextPageToken": "pg-2"})
    server.answer(200, {"threads": [{"id": "t3"}], "nextPageToken": "pg-3"})
    server.answer(200, {"threads": [{"id": "t4"}], "resultSizeEstimate": 4})
    output = _run(server, "gmail", "listThreads", {"q": "label:invoices"})
    assert [t["id"] for t in output["threads"]] == ["t1", "t2", "t3", "t4"]
    assert "nextPageToken" not in output  # the last page had none: nothing left
    assert [r.query.get("pageToken") for r in server.requests] == [None, ["pg-2"], ["pg-3"]]
    assert all(r.query["q"] == ["label:invoices"] for r in server.requests)
    assert all(r.body == b"" for r in server.requests)


def test_gmail_max_pages_keeps_the_token_to_continue_from(server: ScriptedServer) -> None:
    server.answer(200, {"messages": [{"id": "m1"}], "nextPageToken": "pg-2"})
    server.answer(200, {"messages": [{"id": "m2"}], "nextPageToken": "pg-3"})
    output = _run(server, "gmail", "listMessages", {"query": "is:unread", "maxPages": 2})
    assert [m["id"] for m in output["messages"]] == ["m1", "m2"]
    assert output["nextPageToken"] == "pg-3"
    assert len(server.requests) == 2


def test_hubspot_list_contacts_follows_paging_next_after_in_the_query(
    server: ScriptedServer,
) -> None:
    def page(ids: list[str], after: str | None) -> dict[str, Any]:
        body: dict[str, Any] = {"results": [{"id": i, "properties": {}} for i in ids]}
        if after:
            body["paging"] = {
                "next": {"after": after, "link": f"https://api.hubapi.com/x?after={after}"}
            }
        return body

    server.answer(200, page(["1", "2"], "NTI1Cg%3D%3D"))
    server.answer(200, page(["3"], "MzU3Cg%3D%3D"))
    server.answer(200, page(["4"], None))
    output = _run(server, "hubspot", "listContacts", {"properties": ["email", "firstname"]})
    assert [c["id"] for c in output["results"]] == ["1", "2", "3", "4"]
    assert "paging" not in output
    assert [r.query.get("after") for r in server.requests] == [
        None,
        ["NTI1Cg%3D%3D"],
        ["MzU3Cg%3D%3D"],
    ]
    assert all(r.query["properties"] == ["email,firstname"] for r in server.requests)


def test_hubspot_search_sends_the_after_cursor_in_the_body(server: ScriptedServer) -> None:
    server.answer(
        200, {"total": 3, "results": [{"id": "7"}, {"id": "8"}], "paging": {"next": {"after": "2"}}}
    )
    server.answer(200, {"total": 3, "results": [{"id": "9"}]})
    output = _run(server, "hubspot", "searchDeals", {"filters": {"dealstage": "closedwon"}})
    assert [d["id"] for d in output["results"]] == ["7", "8", "9"]
    first, second = (json.loads(r.body) for r in server.requests)
    group = [{"filters": [{"propertyName": "dealstage", "operator": "EQ", "value": "closedwon"}]}]
    assert first == {"filterGroups": group}
    assert second == {"filterGroups": group, "after": "2"}


def test_airtable_list_records_sends_the_offset_back_in_the_post_body(
    server: ScriptedServer,
) -> None:
    server.answer(200, {"records": [{"id": "rec1", "fields": {}}], "offset": "itr1/rec1"})
    server.answer(200, {"records": [{"id": "rec2", "fields": {}}], "offset": "itr1/rec2"})
    server.answer(200, {"records": [{"id": "rec3", "fields": {}}]})
    output = _run(
        server,
        "airtable",
        "listRecords",
        {"baseId": "appA1", "table": "Tasks", "view": "Grid view", "pageSize": 1},
    )
    assert [r["id"] for r in output["records"]] == ["rec1", "rec2", "rec3"]
    assert "offset" not in output
    assert {r.path for r in server.requests} == {"/v0/appA1/Tasks/listRecords"}
    assert [json.loads(r.body) for r in server.requests] == [
        {"pageSize": 1, "view": "Grid view"},
        {"pageSize": 1, "view": "Grid view", "offset": "itr1/rec1"},
        {"pageSize": 1, "view": "Grid view", "offset": "itr1/rec2"},
    ]


def test_airtable_max_records_stops_paging_and_trims(server: ScriptedServer) -> None:
    server.answer(200, {"records": [{"id": "rec1"}, {"id": "rec2"}], "offset": "itr1/rec2"})
    server.answer(200, {"records": [{"id": "rec3"}, {"id": "rec4"}], "offset": "itr1/rec4"})
    output = _run(
        server, "airtable", "listRecords", {"baseId": "appA1", "tableId": "T", "maxRecords": 3}
    )
    assert [r["id"] for r in output["records"]] == ["rec1", "rec2", "rec3"]
    assert len(server.requests) == 2


def test_google_sheets_batch_get_reads_several_ranges_in_one_request(
    server: ScriptedServer,
) -> None:
    server.answer(
        200,
        {
            "spreadsheetId": "abc123",
            "valueRanges": [
                {"range": "Leads!A1:C3", "majorDimension": "ROWS", "values": [["Name", "Email"], ["Ann", "ann@example.com"]]},
                {"range": "Totals!B2", "majorDimension": "ROWS", "values": [["42"]]},
            ],
        },
    )  # fmt: skip
    output = _run(
        server,
        "google-sheets",
        "readRanges",
        {
            "spreadsheetId": "abc123",
            "ranges": "Leads!A1:C3, Totals!B2",
            "valueRenderOption": "UNFORMATTED_VALUE",
        },
    )
    (request,) = server.requests
    assert request.method == "GET" and request.path == "/v4/spreadsheets/abc123/values:batchGet"
    assert request.query == {
        "ranges": ["Leads!A1:C3", "Totals!B2"],
        "valueRenderOption": ["UNFORMATTED_VALUE"],
    }
    assert [v["range"] for v in output["valueRanges"]] == ["Leads!A1:C3", "Totals!B2"]
    assert output["valueRanges"][1]["values"] == [["42"]]


# -- a refused token is refreshed once -------------------------------------------------------


@dataclass(frozen=True)
class Case:
    provider: str
    operation: str
    parameters: dict[str, Any]
    ok: Any
    unauthorized: Any
    code: str


GOOGLE_401 = {
    "error": {
        "code": 401,
        "message": "Request had invalid authentication credentials.",
        "status": "UNAUTHENTICATED",
    }
}
REFRESH_CASES = [
    Case(
        "notion", "getPage", {"pageId": "p1"}, {"object": "page", "id": "p1"},
        {"object": "error", "status": 401, "code": "unauthorized", "message": "API token is invalid."},
        "unauthorized",
    ),
    Case(
        "gmail", "getMessage", {"messageId": "m1"}, {"id": "m1", "threadId": "m1"},
        GOOGLE_401, "UNAUTHENTICATED",
    ),
    Case(
        "hubspot", "getDeal", {"dealId": "777"}, {"id": "777", "properties": {}},
        {"status": "error", "message": "Authentication credentials not found.", "category": "INVALID_AUTHENTICATION"},
        "INVALID_AUTHENTICATION",
    ),
    Case(
        "airtable", "getRecord", {"baseId": "appA1", "tableId": "T", "recordId": "rec1"},
        {"id": "rec1", "fields": {}},
        {"error": {"type": "AUTHENTICATION_REQUIRED", "message": "Authentication required"}},
        "AUTHENTICATION_REQUIRED",
    ),
    Case(
        "google-sheets", "getValues", {"spreadsheetId": "abc123", "range": "A1:B2"},
        {"range": "Sheet1!A1:B2", "values": [["x"]]}, GOOGLE_401, "UNAUTHENTICATED",
    ),
]  # fmt: skip


def _request(
    server: ScriptedServer, case: Case, refreshed: list[str]
) -> tuple[DeclarativeConnector, ConnectorRequest]:
    spec = catalogue()[case.provider]
    base = server.url(_base_path(spec))
    settings = Settings(http=LOOPBACK)

    def refresh() -> ConnectionSettings:
        refreshed.append(case.provider)
        return ConnectionSettings(base_url=base, access_token=FRESH)

    request = ConnectorRequest(
        case.provider,
        case.operation,
        case.parameters,
        ConnectionSettings(base_url=base, access_token=TOKEN),
        case.provider,
        settings,
        _ctx(settings),
        refresh=refresh,
    )
    return DeclarativeConnector(spec), request


@pytest.mark.parametrize("case", REFRESH_CASES, ids=[c.provider for c in REFRESH_CASES])
def test_a_401_gets_one_fresh_token_and_the_same_request_again(
    server: ScriptedServer, case: Case
) -> None:
    assert catalogue()[case.provider].auth.scheme == "oauth2"
    refreshed: list[str] = []
    connector, request = _request(server, case, refreshed)
    server.answer(401, case.unauthorized)
    server.answer(200, case.ok)
    assert connector(request) == case.ok
    assert refreshed == [case.provider]
    first, second = server.requests
    assert first.headers["authorization"] == f"Bearer {TOKEN}"
    assert second.headers["authorization"] == f"Bearer {FRESH}"
    assert (second.method, second.path, second.query, second.body) == (
        first.method,
        first.path,
        first.query,
        first.body,
    )


@pytest.mark.parametrize("case", REFRESH_CASES, ids=[c.provider for c in REFRESH_CASES])
def test_a_fresh_token_refused_again_fails_with_the_providers_code_and_no_loop(
    server: ScriptedServer, case: Case
) -> None:
    refreshed: list[str] = []
    connector, request = _request(server, case, refreshed)
    server.answer(401, case.unauthorized)
    server.answer(401, case.unauthorized)
    server.answer(200, case.ok)  # never asked for
    with pytest.raises(NodeExecutionError) as caught:
        connector(request)
    error = caught.value
    assert not error.retryable and not isinstance(error, TransientNodeError)
    assert error.details["status"] == 401 and error.details["code"] == case.code
    assert len(server.requests) == 2 and refreshed == [case.provider]
    assert TOKEN not in str(error) and FRESH not in str(error)


# -- 429 and Retry-After ---------------------------------------------------------------------


RATE_LIMITED = [
    (
        "notion", "getPage", {"pageId": "p1"},
        {"object": "error", "status": 429, "code": "rate_limited", "message": "You have been rate limited. Please try again in a few minutes."},
        "rate_limited",
    ),
    (
        "gmail", "listLabels", {},
        {"error": {"code": 429, "message": "User-rate limit exceeded.", "status": "RESOURCE_EXHAUSTED"}},
        "RESOURCE_EXHAUSTED",
    ),
    (
        "hubspot", "listDeals", {"limit": 10},
        {"status": "error", "message": "You have reached your secondly limit.", "errorType": "RATE_LIMIT", "category": "RATE_LIMITS", "policyName": "SECONDLY"},
        "RATE_LIMITS",
    ),
    (
        "airtable", "listBases", {},
        {"errors": [{"error": "RATE_LIMIT_REACHED", "message": "Rate limit exceeded. Please try again later"}]},
        "RATE_LIMIT_REACHED",
    ),
    (
        "google-sheets", "getSpreadsheet", {"spreadsheetId": "abc123"},
        {"error": {"code": 429, "message": "Quota exceeded for quota metric 'Read requests'.", "status": "RESOURCE_EXHAUSTED"}},
        "RESOURCE_EXHAUSTED",
    ),
]  # fmt: skip


@pytest.mark.parametrize(
    ("provider", "operation", "parameters", "body", "code"),
    RATE_LIMITED,
    ids=[c[0] for c in RATE_LIMITED],
)
def test_a_429_is_transient_and_its_retry_after_sets_the_wait(
    server: ScriptedServer,
    provider: str,
    operation: str,
    parameters: dict[str, Any],
    body: Any,
    code: str,
) -> None:
    server.answer(429, body, **{"Retry-After": "30"})
    with pytest.raises(TransientNodeError) as caught:
        _run(server, provider, operation, parameters)
    error = caught.value
    assert error.retryable and error.retry_after_seconds == 30
    assert error.details["status"] == 429 and error.details["code"] == code
    assert len(server.requests) == 1  # the connector does not retry by itself
    retry = RetrySettings(max_attempts=3, min_delay_ms=1000, randomize=False)
    decision = decide(retry, error, 1, node_type="integration")
    assert decision.retry and decision.wait_seconds == 30 and decision.retry_after_seconds == 30
    assert not decide(retry, error, 3, node_type="integration").retry  # attempts still count


@pytest.mark.timeout(60)  # the node's own schedule (2 minutes) would outlast this
def test_a_rate_limited_node_is_retried_after_the_providers_wait_and_then_succeeds(
    server: ScriptedServer,
) -> None:
    """Retry-After: 0 replaces the node's two-minute backoff: the run ends at once."""
    server.answer(
        429,
        {"object": "error", "status": 429, "code": "rate_limited", "message": "slow down"},
        **{"Retry-After": "0"},
    )
    server.answer(200, {"object": "page", "id": "p1", "url": "https://www.notion.so/p1"})
    settings = Settings(
        http=LOOPBACK,
        connections={"notion": {"base_url": server.url("/v1"), "access_token": TOKEN}},
    )
    definition = chain(
        node("in", "input", inputName="page"),
        node(
            "get", "integration", provider="notion", operation="getPage", pageId="{{page}}",
            outputVariable="notionPage", retry={"maxAttempts": 2, "minDelayMs": 120000},
        ),
        react=True,
    )  # fmt: skip
    result = run_workflow(definition, {"page": "p1"}, settings=settings)
    assert result.output("get") == {
        "notionPage": {"object": "page", "id": "p1", "url": "https://www.notion.so/p1"}
    }
    assert result.nodes["get"].attempts == 2
    assert [r.path for r in server.requests] == ["/v1/pages/p1", "/v1/pages/p1"]


# -- the long tail's hooks: the branches their contract examples do not take --------------------


def test_amplitude_events_need_a_user_or_a_device_and_identify_sends_operations(
    server: ScriptedServer,
) -> None:
    amplitude = {"username": "amp-key", "password": "amp-secret"}
    with pytest.raises(NodeExecutionError, match=r"parameters\.user_id") as caught:
        _run(server, "amplitude", "track", {"event": "content_published"}, **amplitude)
    assert caught.value.details["field"] == "parameters.user_id" and server.requests == []
    server.answer(200, {"code": 200, "events_ingested": 1})
    _run(server, "amplitude", "trackEvents", {"event": "x", "deviceId": "d1"}, **amplitude)
    assert json.loads(server.requests[0].body) == {
        "api_key": "amp-key",
        "events": [{"device_id": "d1", "event_type": "x"}],
    }
    server.answer(200, "success")
    _run(server, "amplitude", "identify", {"userId": "u1", "unset": "old, older"}, **amplitude)
    form = parse_qs(server.requests[1].text)
    assert json.loads(form["identification"][0]) == [
        {"user_id": "u1", "user_properties": {"$unset": {"old": "-", "older": "-"}}}
    ]


def test_buffer_posts_to_one_channel_and_turns_graphql_failures_into_errors(
    server: ScriptedServer,
) -> None:
    with pytest.raises(NodeExecutionError, match="one channel per post"):
        _run(server, "buffer", "createPost", {"profileIds": ["a", "b"], "text": "hi"})
    server.answer(
        200, {"data": {"createPost": {"__typename": "PostActionSuccess", "post": {"id": "p1"}}}}
    )
    assert _run(
        server, "buffer", "createUpdate",
        {"profileIds": ["a"], "text": "hi", "now": True, "media": ["https://x.example/v.mp4"]},
    ) == {"id": "p1"}  # fmt: skip
    sent = json.loads(server.requests[0].body)["variables"]["input"]
    assert sent["channelId"] == "a" and sent["mode"] == "shareNow"
    assert sent["assets"] == {"videos": [{"url": "https://x.example/v.mp4"}]}
    server.answer(
        200,
        {
            "data": {
                "createPost": {"__typename": "InvalidInputError", "message": "Text is too long"}
            }
        },
    )
    with pytest.raises(NodeExecutionError, match="InvalidInputError: Text is too long"):
        _run(server, "buffer", "createPost", {"channelId": "a", "text": "x" * 10})
    server.answer(
        200, {"errors": [{"message": "Not authorized", "extensions": {"code": "UNAUTHORIZED"}}]}
    )
    with pytest.raises(NodeExecutionError, match="UNAUTHORIZED: Not authorized"):
        _run(server, "buffer", "createPost", {"channelId": "a", "text": "x"})


def test_clickup_creates_when_no_task_has_the_name_and_updates_by_id(
    server: ScriptedServer,
) -> None:
    server.answer(200, {"tasks": [{"id": "t1", "name": "Other"}], "last_page": False})
    server.answer(200, {"tasks": [], "last_page": True})
    server.answer(200, {"id": "t9", "name": "New"})
    _run(
        server,
        "clickup",
        "createOrUpdateTask",
        {"listId": "L1", "name": "New", "assignees": "7, 8"},
    )
    assert [(r.method, r.path, r.query.get("page")) for r in server.requests] == [
        ("GET", "/api/v2/list/L1/task", ["0"]),
        ("GET", "/api/v2/list/L1/task", ["1"]),
        ("POST", "/api/v2/list/L1/task", None),
    ]
    assert json.loads(server.requests[2].body) == {"name": "New", "assignees": [7, 8]}
    assert server.requests[0].headers["authorization"] == TOKEN  # no "Bearer": ClickUp's way
    server.requests.clear()
    server.answer(200, {"id": "t1", "name": "Renamed"})
    _run(
        server,
        "clickup",
        "upsertTask",
        {"listId": "L1", "taskId": "t1", "name": "Renamed", "tags": ["x"]},
    )
    (update,) = server.requests
    assert (update.method, update.path) == ("PUT", "/api/v2/task/t1")
    assert json.loads(update.body) == {"name": "Renamed"}  # tags have their own endpoint


def test_circleci_and_gitlab_refuse_paths_that_are_not_their_shape(server: ScriptedServer) -> None:
    for slug in ("acme/api", "gh/acme/../x", "gh/acme/api/extra"):
        with pytest.raises(NodeExecutionError, match="vcs/org/repo"):
            _run(server, "circleci", "getJob", {"projectSlug": slug, "jobNumber": 1}, token=TOKEN)
    server.answer(200, [{"id": 5, "path_with_namespace": "acme/checkout-legacy"}])
    with pytest.raises(NodeExecutionError, match="no project 'acme/checkout'"):
        _run(server, "gitlab", "getPipeline", {"project": "acme/checkout", "pipelineId": 1})
    server.answer(200, {"id": 1, "status": "success"})
    _run(server, "gitlab", "getPipeline", {"project": "278965", "pipelineId": 1})
    assert server.requests[-1].path == "/api/v4/projects/278965/pipelines/1"


def test_docusign_numbers_recipients_and_documents_of_a_document_envelope(
    server: ScriptedServer,
) -> None:
    server.answer(201, {"envelopeId": "e1", "status": "sent"})
    _run(
        server, "docusign", "createEnvelope",
        {
            "emailSubject": "Sign",
            "documents": [{"name": "msa.pdf", "content": "JVBERi0="}],
            "signers": [{"email": "ann@acme.com", "name": "Ann"}],
            "cc": [{"email": "legal@example.com", "name": "Legal"}],
        },
    )  # fmt: skip
    body = json.loads(server.requests[0].body)
    assert body["documents"] == [
        {"name": "msa.pdf", "documentBase64": "JVBERi0=", "fileExtension": "pdf", "documentId": "1"}
    ]
    assert body["recipients"] == {
        "signers": [{"email": "ann@acme.com", "name": "Ann", "recipientId": "1", "routingOrder": "1"}],
        "carbonCopies": [{"email": "legal@example.com", "name": "Legal", "recipientId": "2", "routingOrder": "1"}],
    }  # fmt: skip
    with pytest.raises(NodeExecutionError, match="roleName"):
        _run(
            server,
            "docusign",
            "createEnvelope",
            {"templateId": "t", "signers": [{"email": "a@b.c", "name": "A"}]},
        )


def test_freshbooks_records_one_payment_per_call(server: ScriptedServer) -> None:
    two = [{"invoiceId": 1, "amount": 5}, {"invoiceId": 2, "amount": 6}]
    with pytest.raises(NodeExecutionError, match="one payment per call") as caught:
        _run(server, "freshbooks", "recordPayments", {"accountId": "A1", "payments": two})
    assert caught.value.details["field"] == "parameters.payments"
    server.answer(200, {"response": {"result": {"payment": {"id": 9}}}})
    out = _run(
        server, "freshbooks", "recordPayment", {"invoiceId": "3", "amount": "12.5"}, account_id="A1"
    )
    assert out == {"id": 9}
    assert json.loads(server.requests[0].body) == {
        "payment": {"invoiceid": "3", "amount": {"amount": "12.50"}}
    }


def test_hellosign_sends_files_to_send_and_needs_them_without_a_template(
    server: ScriptedServer,
) -> None:
    key = {"username": "hs-key"}
    with pytest.raises(NodeExecutionError, match="file_urls or a template"):
        _run(
            server,
            "hellosign",
            "createSignatureRequest",
            {"signers": [{"email": "a@b.c", "name": "A"}]},
            **key,
        )
    server.answer(200, {"signature_request": {"signature_request_id": "s1"}})
    out = _run(
        server, "hellosign", "createSignatureRequest",
        {"signers": [{"email": "a@b.c", "name": "A", "order": 0}], "file_urls": "https://x.example/nda.pdf"},
        **key,
    )  # fmt: skip
    assert out == {"signature_request_id": "s1"}
    assert server.requests[0].path == "/v3/signature_request/send"
    assert json.loads(server.requests[0].body) == {
        "file_urls": ["https://x.example/nda.pdf"],
        "signers": [{"email_address": "a@b.c", "name": "A", "order": 0}],
    }


def test_instagram_video_media_and_post_insights(server: ScriptedServer) -> None:
    server.answer(200, {"id": "c1"})
    _run(
        server,
        "instagram",
        "createMedia",
        {"igAccountId": "17", "media": "https://x.example/r.mp4?sig=1", "caption": "hi"},
    )
    assert server.requests[0].query == {
        "caption": ["hi"], "video_url": ["https://x.example/r.mp4?sig=1"], "media_type": ["REELS"],
    }  # fmt: skip
    server.answer(200, {"data": []})
    _run(
        server,
        "instagram",
        "getInsights",
        {"mediaId": "99", "metrics": ["reach", "saved"], "period": "day"},
        ig_user_id="17",
    )
    assert server.requests[1].path == "/v23.0/99/insights"
    assert server.requests[1].query == {"metric": ["reach,saved"]}


def test_excel_appends_to_a_table_or_below_an_empty_sheets_first_cell(
    server: ScriptedServer,
) -> None:
    server.answer(201, {"index": 4, "values": [["a", 1]]})
    _run(
        server,
        "microsoft-excel",
        "addTableRow",
        {"workbookId": "W1", "table": "Sales", "values": ["a", 1]},
    )
    assert (server.requests[0].method, server.requests[0].path) == (
        "POST", "/v1.0/me/drive/items/W1/workbook/tables/Sales/rows",
    )  # fmt: skip
    server.answer(200, {"address": "Sheet1!A1"})
    server.answer(200, {"values": [[""]]})
    server.answer(200, {"address": "Sheet1!A1:C2"})
    _run(
        server,
        "microsoft-excel",
        "appendRow",
        {"workbookId": "W1", "values": [["a", "b", "c"], ["d"]]},
    )
    sheet = "/v1.0/me/drive/items/W1/workbook/worksheets/Sheet1"
    assert [(r.path, r.query) for r in server.requests[1:3]] == [
        (f"{sheet}/usedRange(valuesOnly=true)", {"$select": ["address"]}),
        (f"{sheet}/range(address='A1')", {"$select": ["values"]}),
    ]
    patch = server.requests[3]
    assert patch.path == "/v1.0/me/drive/items/W1/workbook/worksheets/Sheet1/range(address='A1:C2')"
    assert json.loads(patch.body) == {"values": [["a", "b", "c"], ["d", "", ""]]}
    server.answer(200, {"address": "'Q3 data'!B3:D9"})
    server.answer(200, {"address": "'Q3 data'!B10:C10"})
    _run(
        server,
        "microsoft-excel",
        "appendRow",
        {"workbookId": "W1", "sheet": "Q3 data", "row": [1, 2]},
    )
    assert server.requests[-1].path.endswith("/worksheets/Q3%20data/range(address='B10:C10')")


def test_outlook_recipients_from_text_and_objects(server: ScriptedServer) -> None:
    server.answer(202)
    _run(
        server, "microsoft-outlook", "sendEmail",
        {"to": ["Ann Lee <ann@example.com>", {"email": "bo@example.com", "name": "Bo"}], "cc": "cy@example.com", "subject": "Hi"},
    )  # fmt: skip
    message = json.loads(server.requests[0].body)["message"]
    assert message["toRecipients"] == [
        {"emailAddress": {"address": "ann@example.com", "name": "Ann Lee"}},
        {"emailAddress": {"address": "bo@example.com", "name": "Bo"}},
    ]
    assert message["ccRecipients"] == [{"emailAddress": {"address": "cy@example.com"}}]
    with pytest.raises(NodeExecutionError, match="line break"):
        _run(
            server, "microsoft-outlook", "sendMail", {"to": "a@b.c", "subject": "x\r\nBcc: evil@x"}
        )


def test_mixpanel_refusals_in_a_200_are_errors(server: ScriptedServer) -> None:
    connection = {"username": "sa", "password": "pw", "project_token": "tok", "project_id": "1"}
    server.answer(200, {"error": "token, missing or empty", "status": 0})
    with pytest.raises(NodeExecutionError, match="token, missing or empty"):
        _run(server, "mixpanel", "track", {"event": "x"}, **connection)
    with pytest.raises(NodeExecutionError, match="from_date and to_date, or interval"):
        _run(server, "mixpanel", "queryEvents", {"event": "Signed up"}, **connection)


def test_monday_updates_by_item_id_and_raises_graphql_errors(server: ScriptedServer) -> None:
    server.answer(200, {"data": {"change_multiple_column_values": {"id": "5", "name": "N"}}})
    out = _run(
        server,
        "monday",
        "createOrUpdateItem",
        {"boardId": 1, "itemId": 5, "itemName": "N", "columnValues": {"status": "Done"}},
    )
    assert out == {"id": "5", "name": "N"}
    sent = json.loads(server.requests[0].body)
    assert "change_multiple_column_values" in sent["query"]
    assert sent["variables"] == {
        "boardId": "1", "itemId": "5", "columnValues": '{"status": "Done", "name": "N"}', "createLabels": True,
    }  # fmt: skip
    server.answer(
        200,
        {
            "errors": [
                {"message": "Column not found", "extensions": {"code": "InvalidColumnIdException"}}
            ]
        },
    )
    with pytest.raises(NodeExecutionError, match="InvalidColumnIdException: Column not found"):
        _run(server, "monday", "createItem", {"boardId": 1, "itemName": "N"})
