"""The CRM/marketing/social providers of the declarative catalogue (salesforce, datadog,
mailchimp, twitter, linkedin) beyond their per-operation contracts: every upstream operation
and corpus use resolves, Salesforce follows `nextRecordsUrl` and refreshes an expired session,
rate limits are transient with their Retry-After, Datadog's keys, site and time windows, and a
thread broken off half-way says what it already posted.
"""

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest

from flowmaestro_dagster.errors import (
    NodeConfigurationError,
    NodeExecutionError,
    TransientNodeError,
)
from flowmaestro_dagster.lang.state import ExecutionState
from flowmaestro_dagster.nodes.base import NodeContext
from flowmaestro_dagster.nodes.connectors import ConnectorRequest
from flowmaestro_dagster.nodes.connectors.declarative import (
    DeclarativeConnector,
    catalogue,
    render_base_url,
)
from flowmaestro_dagster.settings import ConnectionSettings, HttpSettings, Settings
from flowmaestro_dagster.spec.configs import IntegrationConfig
from flowmaestro_dagster.spec.parse import parse_workflow
from flowmaestro_dagster.testing.http_server import EchoRequest, EchoServer
from tests.conftest import corpus_files

PROVIDERS = ("salesforce", "datadog", "mailchimp", "twitter", "linkedin")
TOKEN = "tok-access-0123456789"
APP_KEY = "app-key-9f8e7d"
SF_BASE = "/services/data/v60.0"

# The upstream builder's operations and their parameter names for these providers
# (flowmaestro-operations.json, nbaghiro/flowmaestro @7a063de7).
UPSTREAM: dict[str, dict[str, list[str]]] = {
    "salesforce": {
        "createRecord": ["objectType", "data"],
        "deleteRecord": ["objectType", "recordId"],
        "describeObject": ["objectType"],
        "getRecord": ["objectType", "recordId", "fields"],
        "listObjects": ["includeCustom", "onlyQueryable", "onlyCreateable"],
        "queryRecords": ["query", "objectType", "fields", "where", "orderBy", "limit", "fetchAll"],
        "searchRecords": ["searchQuery", "searchTerm", "objectTypes", "returningFields"],
        "updateRecord": ["objectType", "recordId", "data"],
    },
    "datadog": {
        "createEvent": ["title", "text", "tags", "alertType", "priority", "host"],
        "createIncident": ["title", "customerImpactScope", "fields"],
        "createMonitor": ["name", "type", "query", "message", "tags", "priority"],
        "getMonitor": ["monitorId"],
        "listEvents": ["start", "end", "tags", "sources", "priority"],
        "listIncidents": ["pageOffset", "pageSize"],
        "listMonitors": ["tags", "page", "pageSize"],
        "muteMonitor": ["monitorId", "scope", "end"],
        "queryMetrics": ["query", "from", "to"],
        "submitMetrics": ["metric", "points", "tags", "type"],
    },
    "mailchimp": {
        "addMember": ["listId", "email", "status", "emailType", "firstName", "lastName", "mergeFields", "language", "vip", "tags"],
        "addTagsToMember": ["listId", "email", "tags"],
        "archiveMember": ["listId", "email"],
        "createCampaign": ["type", "listId", "segmentId", "subjectLine", "previewText", "title", "fromName", "replyTo", "templateId", "trackOpens", "trackClicks"],
        "createList": ["name", "company", "address1", "address2", "city", "state", "zip", "country", "phone", "permissionReminder", "fromName", "fromEmail", "subject", "language", "emailTypeOption", "doubleOptin"],
        "deleteMemberPermanently": ["listId", "email"],
        "getCampaign": ["campaignId"],
        "getCampaigns": ["count", "offset", "type", "status", "listId", "sortField", "sortDir"],
        "getList": ["listId"],
        "getLists": ["count", "offset", "sortField", "sortDir"],
        "getMember": ["listId", "email"],
        "getMembers": ["listId", "count", "offset", "status", "sinceLastChanged"],
        "getSegmentMembers": ["listId", "segmentId", "count", "offset"],
        "getSegments": ["listId", "count", "offset", "type"],
        "getTags": ["listId", "count", "offset"],
        "getTemplate": ["templateId"],
        "getTemplates": ["count", "offset", "type", "category", "folderId", "sortField", "sortDir"],
        "removeTagsFromMember": ["listId", "email", "tags"],
        "scheduleCampaign": ["campaignId", "scheduleTime", "timewarp", "batchCount", "batchDelay"],
        "sendCampaign": ["campaignId"],
        "unscheduleCampaign": ["campaignId"],
        "updateCampaign": ["campaignId", "subjectLine", "previewText", "title", "fromName", "replyTo", "templateId", "trackOpens", "trackClicks"],
        "updateList": ["listId", "name", "company", "address1", "address2", "city", "state", "zip", "country", "phone", "permissionReminder", "fromName", "fromEmail", "subject", "language", "emailTypeOption", "doubleOptin"],
        "updateMember": ["listId", "email", "newEmail", "status", "emailType", "firstName", "lastName", "mergeFields", "language", "vip"],
    },
    "twitter": {
        "deleteTweet": ["tweet_id"],
        "getUser": ["username"],
        "getUserTimeline": ["user_id", "max_results", "pagination_token"],
        "postTweet": ["text", "reply_to_tweet_id", "quote_tweet_id"],
        "replyToTweet": ["tweet_id", "text"],
        "searchTweets": ["query", "max_results", "next_token"],
    },
    "linkedin": {
        "addComment": ["postId", "actor", "text"],
        "addReaction": ["postId", "actor", "reactionType"],
        "createArticlePost": ["author", "content", "visibility", "articleUrl", "articleTitle", "articleDescription"],
        "createPost": ["author", "content", "visibility"],
        "deletePost": ["postId"],
        "getComments": ["postId", "start", "count"],
        "getOrganizations": [],
        "getPost": ["postId"],
        "getProfile": [],
    },
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
        if body is None:
            return status, headers, b""
        return status, {"Content-Type": "application/json", **headers}, json.dumps(body).encode()


@pytest.fixture
def server() -> Iterator[ScriptedServer]:
    with ScriptedServer() as running:
        yield running


def _ctx(settings: Settings) -> NodeContext:
    return NodeContext(
        node_id="int-1",
        node_type="integration",
        label="Integration",
        config=IntegrationConfig(),
        state=ExecutionState.start({}),
        services={"settings": settings},
    )


def _call(
    server: ScriptedServer,
    provider: str,
    operation: str,
    parameters: dict[str, Any],
    base_path: str = "",
    refresh: Any = None,
    **connection: Any,
) -> Any:
    conn = ConnectionSettings(
        base_url=server.url(base_path or "/"), **{"access_token": TOKEN, **connection}
    )
    settings = Settings(http=HttpSettings(allow_loopback=True))
    request = ConnectorRequest(
        provider, operation, parameters, conn, provider, settings, _ctx(settings), refresh=refresh
    )
    return DeclarativeConnector(catalogue()[provider])(request)


def _salesforce(
    server: ScriptedServer, operation: str, parameters: dict[str, Any], **kw: Any
) -> Any:
    return _call(server, "salesforce", operation, parameters, SF_BASE, **kw)


def _datadog(server: ScriptedServer, operation: str, parameters: dict[str, Any]) -> Any:
    return _call(server, "datadog", operation, parameters, api_key=TOKEN, application_key=APP_KEY)


# -- coverage ------------------------------------------------------------------------------------


def test_every_upstream_operation_and_parameter_name_is_accepted() -> None:
    assert set(UPSTREAM) == set(PROVIDERS)
    for provider, operations in UPSTREAM.items():
        spec = catalogue()[provider]
        for operation, parameters in operations.items():
            op = spec.operation(operation)
            assert op is not None, (provider, operation)
            names = {n.lower() for p in op.parameters for n in (p.name, *p.aliases)}
            unknown = [n for n in parameters if n.lower() not in names]
            assert not unknown, (provider, operation, unknown)


def test_every_corpus_use_of_these_providers_resolves() -> None:
    used: set[tuple[str, str]] = set()
    for path in corpus_files():
        spec, _ = parse_workflow(path.read_bytes())
        if spec is None:
            continue
        for item in spec.nodes.values():
            provider = getattr(item.config, "provider", None)
            operation = getattr(item.config, "operation", None)
            if item.type == "integration" and provider in PROVIDERS and operation:
                used.add((provider, operation))
    assert {p for p, _ in used} == set(PROVIDERS)
    assert len(used) >= 25
    unserved = sorted(u for u in used if catalogue()[u[0]].operation(u[1]) is None)
    assert not unserved


# -- Salesforce ----------------------------------------------------------------------------------


def _records_page(ids: list[str], following: str | None) -> dict[str, Any]:
    page: dict[str, Any] = {
        "totalSize": 5,
        "done": following is None,
        "records": [{"attributes": {"type": "Account"}, "Id": i} for i in ids],
    }
    if following:
        page["nextRecordsUrl"] = following
    return page


def test_salesforce_query_follows_next_records_url_across_pages(server: ScriptedServer) -> None:
    server.answer(200, _records_page(["a1", "a2"], f"{SF_BASE}/query/01gD0000002HU6KIAW-2"))
    server.answer(200, _records_page(["a3", "a4"], f"{SF_BASE}/query/01gD0000002HU6KIAW-4"))
    server.answer(200, _records_page(["a5"], None))
    output = _salesforce(
        server, "queryRecords", {"query": "SELECT Id FROM Account", "fetchAll": True}
    )
    assert [r["Id"] for r in output["records"]] == ["a1", "a2", "a3", "a4", "a5"]
    assert output["done"] is True and "nextRecordsUrl" not in output
    assert output["totalSize"] == 5
    assert [r.path for r in server.requests] == [
        f"{SF_BASE}/query",
        f"{SF_BASE}/query/01gD0000002HU6KIAW-2",
        f"{SF_BASE}/query/01gD0000002HU6KIAW-4",
    ]
    assert server.requests[0].query == {"q": ["SELECT Id FROM Account"]}
    assert all(r.headers["authorization"] == f"Bearer {TOKEN}" for r in server.requests)


def test_salesforce_pages_stop_at_max_pages_and_say_where_to_go_on(
    server: ScriptedServer,
) -> None:
    server.answer(200, _records_page(["a1"], f"{SF_BASE}/query/01g-1"))
    server.answer(200, _records_page(["a2"], f"{SF_BASE}/query/01g-2"))
    output = _salesforce(
        server,
        "getOpportunities",
        {"filters": {"StageName": ["Prospecting", "Qualification"]}, "maxPages": 2},
    )
    assert len(server.requests) == 2
    assert [r["Id"] for r in output["records"]] == ["a1", "a2"]
    assert output["done"] is False and output["nextRecordsUrl"] == f"{SF_BASE}/query/01g-2"
    soql = server.requests[0].query["q"][0]
    assert "WHERE StageName IN ('Prospecting', 'Qualification')" in soql

    server.requests.clear()
    server.answer(200, _records_page(["b1"], f"{SF_BASE}/query/01g-9"))
    single = _salesforce(server, "queryRecords", {"query": "SELECT Id FROM Lead"})
    assert len(server.requests) == 1  # one page unless fetchAll / maxPages ask for more
    assert single["nextRecordsUrl"] == f"{SF_BASE}/query/01g-9"


def test_salesforce_filter_values_are_soql_literals_not_soql(server: ScriptedServer) -> None:
    server.answer(200, _records_page([], None))
    _salesforce(
        server,
        "listActivities",
        {
            "whatId": "006' OR Name != '",
            "filters": {"IsClosed": False, "ActivityDate": "2024-09-01"},
        },
    )
    soql = server.requests[0].query["q"][0]
    assert (
        "IsClosed = false AND ActivityDate = 2024-09-01 AND WhatId = '006\\' OR Name != \\''"
        in soql
    )
    with pytest.raises(NodeConfigurationError, match="is not a field name") as caught:
        _salesforce(
            server, "queryRecords", {"objectType": "Account", "filters": {"Name = 'x' OR Id": 1}}
        )
    assert caught.value.details["field"] == "parameters.filters"
    assert len(server.requests) == 1


def test_salesforce_refreshes_an_expired_session_and_retries(server: ScriptedServer) -> None:
    refreshed: list[int] = []

    def refresh() -> ConnectionSettings:
        refreshed.append(1)
        return ConnectionSettings(base_url=server.url(SF_BASE), access_token="tok-fresh-00D")

    expired = [{"message": "Session expired or invalid", "errorCode": "INVALID_SESSION_ID"}]
    server.answer(401, expired)
    server.answer(200, {"attributes": {"type": "Opportunity"}, "Id": "006A", "Name": "Renewal"})
    output = _salesforce(server, "getOpportunity", {"opportunityId": "006A"}, refresh=refresh)
    assert output["Name"] == "Renewal" and refreshed == [1]
    assert [r.headers["authorization"] for r in server.requests] == [
        f"Bearer {TOKEN}",
        "Bearer tok-fresh-00D",
    ]

    # A session that expires between pages is refreshed for the page that follows.
    server.requests.clear()
    server.answer(200, _records_page(["a1"], f"{SF_BASE}/query/01g-1"))
    server.answer(401, expired)
    server.answer(200, _records_page(["a2"], None))
    paged = _salesforce(
        server,
        "queryRecords",
        {"query": "SELECT Id FROM Account", "fetchAll": True},
        refresh=refresh,
    )
    assert [r["Id"] for r in paged["records"]] == ["a1", "a2"] and refreshed == [1, 1]
    assert [r.headers["authorization"] for r in server.requests] == [
        f"Bearer {TOKEN}",
        f"Bearer {TOKEN}",
        "Bearer tok-fresh-00D",
    ]

    # A refused refresh leaves the 401 a permanent failure.
    server.requests.clear()
    server.answer(401, expired)
    with pytest.raises(NodeExecutionError, match="HTTP 401") as caught:
        _salesforce(server, "getAccount", {"accountId": "001A"}, refresh=lambda: None)
    assert not caught.value.retryable and len(server.requests) == 1


def test_salesforce_rate_limits_are_transient_and_creates_are_not_retried_blindly(
    server: ScriptedServer,
) -> None:
    server.answer(
        429,
        [{"message": "slow down", "errorCode": "REQUEST_LIMIT_EXCEEDED"}],
        **{"Retry-After": "20"},
    )
    with pytest.raises(TransientNodeError) as caught:
        _salesforce(server, "getAccount", {"accountId": "001A"})
    assert caught.value.retry_after_seconds == 20
    server.answer(503, None)
    with pytest.raises(TransientNodeError):
        _salesforce(server, "getAccount", {"accountId": "001A"})
    server.answer(503, None)
    with pytest.raises(NodeExecutionError) as permanent:
        _salesforce(server, "createLead", {"data": {"LastName": "Lee", "Company": "Acme"}})
    assert not permanent.value.retryable  # the lead may exist: no blind second insert


def test_salesforce_instance_comes_from_the_connection() -> None:
    spec = catalogue()["salesforce"]

    def fail(field: str, message: str) -> Exception:
        return NodeConfigurationError(message, details={"field": field})

    sandbox = ConnectionSettings(access_token=TOKEN, instance="acme--uat.sandbox")
    assert (
        render_base_url(spec, sandbox, fail)
        == "https://acme--uat.sandbox.my.salesforce.com/services/data/v60.0"
    )
    with pytest.raises(NodeConfigurationError, match="valid `instance`"):
        render_base_url(spec, ConnectionSettings(access_token=TOKEN, instance="evil.com/x#"), fail)


# -- Datadog -------------------------------------------------------------------------------------


def test_datadog_sends_both_keys_and_honours_retry_after(server: ScriptedServer) -> None:
    server.answer(429, {"errors": ["Rate limit exceeded"]}, **{"Retry-After": "7"})
    with pytest.raises(TransientNodeError, match="Rate limit exceeded") as caught:
        _datadog(server, "queryMetrics", {"query": "avg:system.cpu.user{*}", "from": 1, "to": 2})
    assert caught.value.retry_after_seconds == 7
    got = server.requests[0]
    assert got.headers["dd-api-key"] == TOKEN and got.headers["dd-application-key"] == APP_KEY
    assert "authorization" not in got.headers

    server.answer(403, {"errors": ["Forbidden"]})
    with pytest.raises(NodeExecutionError, match="HTTP 403: Forbidden") as forbidden:
        _datadog(server, "getMonitor", {"monitorId": 1})
    assert not forbidden.value.retryable
    assert TOKEN not in str(forbidden.value) and APP_KEY not in str(forbidden.value)

    server.answer(502, None)
    with pytest.raises(NodeExecutionError) as write:
        _datadog(server, "createEvent", {"title": "Deploy", "text": "v2"})
    assert not write.value.retryable  # an event is not posted twice after an ambiguous 502


def test_datadog_site_is_part_of_the_base_url() -> None:
    spec = catalogue()["datadog"]

    def fail(field: str, message: str) -> Exception:
        return NodeConfigurationError(message)

    eu = ConnectionSettings(api_key=TOKEN, site="datadoghq.eu")
    assert render_base_url(spec, eu, fail) == "https://api.datadoghq.eu"
    with pytest.raises(NodeConfigurationError, match="valid `site`"):
        render_base_url(spec, ConnectionSettings(api_key=TOKEN), fail)


def test_datadog_time_windows_take_milliseconds_iso_or_nothing(server: ScriptedServer) -> None:
    server.answer(200, {"status": "ok", "series": []})
    # As the corpus writes it: {{$now - 86400000}} (epoch ms) and {{$now}} (ISO text).
    _datadog(
        server,
        "queryMetrics",
        {
            "query": "avg:pipeline.latency{*}",
            "from": 1717113600000,
            "to": "2024-06-01T00:00:00.000Z",
        },
    )
    assert server.requests[0].query["from"] == ["1717113600"]
    assert server.requests[0].query["to"] == ["1717200000"]

    before = int(time.time())
    server.answer(200, {"status": "ok", "series": []})
    _datadog(server, "queryMetrics", {"query": "compute costs"})
    after = int(time.time())
    window = server.requests[1].query
    until = int(window["to"][0])
    assert before <= until <= after and until - int(window["from"][0]) == 3600

    with pytest.raises(NodeConfigurationError, match=r"parameters\.from is after"):
        _datadog(server, "queryMetrics", {"query": "x", "from": 20, "to": 10})
    assert len(server.requests) == 2


def test_datadog_metrics_as_the_corpus_writes_them(server: ScriptedServer) -> None:
    server.answer(202, {"errors": []})
    before = int(time.time())
    output = _datadog(
        server,
        "submitMetrics",
        {
            "metrics": [
                {"name": "pipeline.health_score", "value": "100", "tags": ["source:flowmaestro"]},
                {"name": "pipeline.anomaly_count", "value": 3, "tags": ["source:flowmaestro"]},
            ]
        },
    )
    assert output == {"errors": []}
    series = json.loads(server.requests[0].body)["series"]
    assert [s["metric"] for s in series] == ["pipeline.health_score", "pipeline.anomaly_count"]
    assert [s["points"][0]["value"] for s in series] == [100.0, 3.0]
    assert all(s["points"][0]["timestamp"] >= before for s in series)
    with pytest.raises(NodeConfigurationError, match="is not a number"):
        _datadog(server, "submitMetric", {"metric": "x", "points": "lots"})


# -- X (Twitter) ---------------------------------------------------------------------------------


def test_a_thread_broken_off_names_the_posts_already_made(server: ScriptedServer) -> None:
    server.answer(201, {"data": {"id": "101", "text": "1/"}})
    server.answer(429, {"title": "Too Many Requests", "detail": "Too Many Requests", "status": 429})
    with pytest.raises(NodeExecutionError) as caught:
        _call(server, "twitter", "createThread", {"tweets": "1/\n\n2/\n\n3/"}, "/2")
    error = caught.value
    assert not error.retryable  # a retry would post "1/" again
    assert "stopped at post 2 of 3 (already posted: 101)" in str(error)
    assert error.details["posted"] == ["101"]
    bodies = [json.loads(r.body) for r in server.requests]
    assert bodies == [{"text": "1/"}, {"text": "2/", "reply": {"in_reply_to_tweet_id": "101"}}]

    server.requests.clear()
    server.answer(
        429, {"title": "Too Many Requests", "detail": "Too Many Requests"}, **{"Retry-After": "60"}
    )
    with pytest.raises(TransientNodeError) as first:
        _call(server, "twitter", "createThread", {"tweets": ["a", "b"]}, "/2")
    assert first.value.retry_after_seconds == 60  # nothing posted yet: retrying is safe
