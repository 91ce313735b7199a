"""The long-tail providers (N to Z): what their catalogue examples cannot show.

Every catalogued operation's documented request and answer are checked by
tests/test_declarative_connectors.py (generated from each `example`). Here: the hooks'
refusals and conversions, the providers' own error shapes, relative time windows, the
PostgreSQL integration provider on the real local PostgreSQL (the database node's machinery),
and the providers deliberately left uncatalogued (MongoDB, Telegram, YouTube, Tableau) keep a
deploy-time warning rather than an error.
"""

import json
import os
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
import sqlalchemy as sa

from flowmaestro_dagster.compile.validation import validate
from flowmaestro_dagster.errors import (
    ConnectorNotConfiguredError,
    NodeConfigurationError,
    NodeExecutionError,
    TransientNodeError,
)
from flowmaestro_dagster.nodes.connectors import ConnectorRegistry, builtin_registry, postgresql
from flowmaestro_dagster.nodes.connectors.declarative import ParameterError, catalogue
from flowmaestro_dagster.nodes.connectors.hooks._time_range import bounds, window
from flowmaestro_dagster.nodes.integration import execute_integration
from flowmaestro_dagster.settings import Settings
from flowmaestro_dagster.spec.parse import parse_workflow
from tests.builders import chain, flow, node, node_context
from tests.conftest import corpus_files
from tests.services import require_postgres
from tests.test_declarative_connectors import ScriptedServer, _run

PG_URL = os.environ.get(
    "FLOWMAESTRO_TEST_PG_URL", "postgresql+psycopg2://postgres@127.0.0.1:5432/test"
)
NOW = datetime(2024, 3, 18, 12, 30, tzinfo=UTC)


@pytest.fixture
def server() -> Iterator[ScriptedServer]:
    with ScriptedServer() as running:
        yield running


# -- relative time windows ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "start"),
    [
        ("last_24_hours", datetime(2024, 3, 17, 12, 30, tzinfo=UTC)),
        ("past_7_days", datetime(2024, 3, 11, 12, 30, tzinfo=UTC)),
        ("last_hour", datetime(2024, 3, 18, 11, 30, tzinfo=UTC)),
        ("48h", datetime(2024, 3, 16, 12, 30, tzinfo=UTC)),
        ("today", datetime(2024, 3, 18, tzinfo=UTC)),
    ],
)
def test_relative_windows_end_now(text: str, start: datetime) -> None:
    assert window(text, now=NOW) == (start, NOW)


def test_yesterday_and_explicit_ends() -> None:
    assert window("yesterday", now=NOW) == (
        datetime(2024, 3, 17, tzinfo=UTC),
        datetime(2024, 3, 18, tzinfo=UTC),
    )
    start, end = bounds({"since": "2024-03-01", "until": 1710720000, "dateRange": "today"})
    assert start == datetime(2024, 3, 1, tzinfo=UTC)
    assert end == datetime(2024, 3, 18, tzinfo=UTC)


@pytest.mark.parametrize("text", ["forever", "last_0_days", "last_99999_weeks"])
def test_a_window_that_is_not_one_names_the_field(text: str) -> None:
    with pytest.raises(ParameterError) as caught:
        window(text, field="dateRange")
    assert caught.value.name == "dateRange"


def test_stripe_date_range_becomes_created_bounds(server: ScriptedServer) -> None:
    server.answer(200, {"object": "list", "data": [], "has_more": False})
    _run(server, "stripe", "listCharges", {"dateRange": "last_24_hours"})
    query = server.requests[0].query
    start, end = int(query["created[gte]"][0]), int(query["created[lte]"][0])
    assert end - start == 86_400


# -- hooks -------------------------------------------------------------------------------------


def test_reddit_reports_refusals_inside_a_200_as_node_errors(server: ScriptedServer) -> None:
    server.answer(
        200,
        {"json": {"errors": [["SUBREDDIT_NOEXIST", "that subreddit doesn't exist", "sr"]]}},
    )
    with pytest.raises(NodeExecutionError, match="SUBREDDIT_NOEXIST") as caught:
        _run(server, "reddit", "submitPost", {"subreddit": "r/nope", "title": "t", "text": "x"})
    assert not caught.value.retryable
    assert caught.value.details["code"] == "SUBREDDIT_NOEXIST"
    form = server.requests[0].text
    assert "sr=nope" in form and "kind=self" in form and "api_type=json" in form


def test_reddit_link_posts_need_a_url_and_send_no_text(server: ScriptedServer) -> None:
    server.answer(200, {"json": {"errors": [], "data": {"id": "x", "name": "t3_x"}}})
    output = _run(
        server,
        "reddit",
        "submitPost",
        {"subreddit": "python", "title": "t", "url": "https://example.com", "text": "x"},
    )
    assert output == {"id": "x", "name": "t3_x"}
    assert "kind=link" in server.requests[0].text and "text=" not in server.requests[0].text
    with pytest.raises(NodeConfigurationError, match=r"parameters\.url"):
        _run(server, "reddit", "submitPost", {"subreddit": "python", "title": "t", "kind": "link"})


def test_quickbooks_refuses_what_it_would_reject_before_sending(server: ScriptedServer) -> None:
    payments = [{"customerId": "1", "amount": 1}] * 31
    with pytest.raises(NodeConfigurationError, match="QuickBooks takes 30") as caught:
        _run(server, "quickbooks", "createPayments", {"payments": payments})
    assert caught.value.details["field"] == "parameters.payments"
    with pytest.raises(NodeConfigurationError, match="must be a QuickBooks id"):
        _run(server, "quickbooks", "getInvoices", {"customerId": "1' OR Id > '0"})
    with pytest.raises(NodeConfigurationError, match=r"lineItems\[0\] needs an amount"):
        _run(server, "quickbooks", "createInvoice", {"customerId": "1", "lineItems": [{"x": 1}]})
    assert server.requests == []


def test_quickbooks_fault_carries_its_code_and_detail(server: ScriptedServer) -> None:
    server.answer(
        400,
        {
            "Fault": {
                "Error": [
                    {
                        "Message": "Object Not Found",
                        "Detail": "Object Not Found : Something you're trying to use has been "
                        "made inactive.",
                        "code": "610",
                    }
                ],
                "type": "ValidationFault",
            }
        },
    )
    with pytest.raises(NodeExecutionError, match="HTTP 400 610: Object Not Found : Something"):
        _run(
            server,
            "quickbooks",
            "createInvoice",
            {"customerId": "99", "lineItems": [{"amount": 10}]},
        )


def test_pagerduty_error_shape_and_rate_limit(server: ScriptedServer) -> None:
    server.answer(
        400,
        {"error": {"message": "Invalid Input Provided", "code": 2001, "errors": ["Bad From"]}},
    )
    with pytest.raises(NodeExecutionError, match="HTTP 400 2001: Invalid Input Provided"):
        _run(server, "pagerduty", "createIncident", {"title": "x", "serviceId": "P1"}, api_key="k")
    server.answer(429, {"error": {"message": "Rate Limit Exceeded", "code": 2020}})
    with pytest.raises(TransientNodeError):
        _run(server, "pagerduty", "createIncident", {"title": "x", "serviceId": "P1"}, api_key="k")
    body = json.loads(server.requests[0].body)["incident"]
    assert "body" not in body and "escalation_policy" not in body  # nothing the node left out


def test_sharepoint_paths_stay_segments_and_uploads_are_typed(server: ScriptedServer) -> None:
    for path in ("../../me/drive/x", "a/./b"):
        with pytest.raises(NodeConfigurationError, match="not a valid name"):
            _run(server, "sharepoint", "getFile", {"siteId": "s1", "path": path})
    with pytest.raises(NodeConfigurationError, match="siteId"):
        _run(server, "sharepoint", "getFile", {"path": "a.txt"})
    assert server.requests == []
    server.answer(201, {"id": "1", "name": "notes.md"})
    _run(
        server,
        "sharepoint",
        "uploadFile",
        {"driveId": "b!x", "folder": "/Notes/", "fileName": "notes.md", "content": "# Sync\n"},
    )
    got = server.requests[0]
    assert got.path == "/v1.0/drives/b!x/root:/Notes/notes.md:/content"
    assert got.body == b"# Sync\n" and got.headers["content-type"] == "text/markdown"


def test_segment_needs_to_know_who(server: ScriptedServer) -> None:
    with pytest.raises(NodeConfigurationError, match=r"userId or parameters\.anonymousId"):
        _run(server, "segment", "track", {"event": "x"}, username="wk")
    assert server.requests == []


def test_zoom_registers_for_webinars_too(server: ScriptedServer) -> None:
    server.answer(201, {"registrant_id": "r1"})
    _run(server, "zoom", "addRegistrant", {"webinarId": "810 1234 5678", "email": "a@b.c", "firstName": "A"})  # fmt: skip
    assert server.requests[0].path == "/v2/webinars/81012345678/registrants"
    with pytest.raises(NodeConfigurationError, match=r"meetingId or \.webinarId"):
        _run(server, "zoom", "addRegistrant", {"email": "a@b.c", "firstName": "A"})


def test_pipedrive_filters_object_spreads_into_the_query(server: ScriptedServer) -> None:
    server.answer(200, {"success": True, "data": [], "additional_data": {"next_cursor": None}})
    _run(server, "pipedrive", "getDeals", {"filters": {"status": ["open", "won"]}, "stageId": 3})
    assert server.requests[0].query == {"status": ["open,won"], "stage_id": ["3"]}
    with pytest.raises(NodeConfigurationError, match="unknown filter"):
        _run(server, "pipedrive", "getDeals", {"filters": {"status&x": "open"}})


def test_trello_key_and_token_are_query_parameters(server: ScriptedServer) -> None:
    server.answer(200, {"id": "c1"})
    _run(server, "trello", "getCard", {"cardId": "c1"}, api_key="app-key", token="user-token")
    assert server.requests[0].query == {"key": ["app-key"], "token": ["user-token"]}


# -- deploy-time: corpus nodes of these providers ----------------------------------------------

MINE = {
    "pagerduty", "pipedrive", "posthog", "quickbooks", "reddit", "segment", "sentry",
    "sharepoint", "shopify", "stripe", "tiktok", "trello", "twilio", "typeform", "vercel",
    "whatsapp", "wordpress", "zoom",
}  # fmt: skip
LEFT_OUT = {"mongodb"}
CATALOGUED_LATER = {"telegram", "youtube", "tableau"}  # by the format's second version


def _corpus_integration_nodes() -> Iterator[tuple[str, str, str]]:
    for path in corpus_files():
        spec, _ = parse_workflow(path.read_bytes())
        for item in spec.nodes.values() if spec is not None else ():
            provider = getattr(item.config, "provider", None)
            if item.type == "integration" and isinstance(provider, str):
                yield path.name, provider, str(getattr(item.config, "operation", None))


def test_every_corpus_operation_of_these_providers_is_served() -> None:
    registry = builtin_registry()
    postgresql.register(registry)
    seen = set()
    for name, provider, operation in _corpus_integration_nodes():
        if provider in MINE | {"postgresql", "webhook"}:
            assert registry.find(provider, operation) is not None, (name, provider, operation)
            seen.add(provider)
        if provider in MINE:
            assert catalogue()[provider].operation(operation) is not None, (provider, operation)
    assert {"postgresql", "stripe", "zoom", "sharepoint"} <= seen
    assert registry.find("webhook", "send") is not None  # the hand-written connector


def test_providers_left_out_warn_at_deploy_and_fail_plainly_at_run() -> None:
    assert not LEFT_OUT & set(catalogue())
    assert set(catalogue()) >= CATALOGUED_LATER
    nodes = [
        node("mongo", "integration", provider="mongodb", action="aggregate", collection="m"),
        node("tg", "integration", provider="telegram", action="sendMessage", chatId="1", text="t"),
        node("yt", "integration", provider="youtube", action="uploadVideo", title="t"),
        node("tab", "integration", provider="tableau", action="refreshDataSource"),
    ]
    definition = flow(
        [node("in", "input", inputName="x"), *nodes], [("in", n["id"]) for n in nodes]
    )
    problems = [p for p in validate(definition) if p.node_id in {"mongo", "tg", "yt", "tab"}]
    assert {(p.node_id, p.code, p.severity) for p in problems} == {
        (n, "connector_required", "warning") for n in ("mongo", "tg", "yt", "tab")
    } | {("yt", "missing_parameter", "warning"), ("tab", "missing_parameter", "warning")}
    ctx = node_context(
        "integration",
        {"provider": "mongodb", "action": "aggregate", "collection": "m"},
        {"settings": Settings()},
    )
    with pytest.raises(ConnectorNotConfiguredError, match="provider mongodb"):
        execute_integration(ctx)


def test_bound_nodes_missing_required_parameters_are_errors() -> None:
    definition = chain(
        node("in", "input", inputName="x"),
        node("sms", "integration", provider="twilio", action="sendSMS", to="+1555", connectionId="tw"),
        node("ph", "integration", provider="posthog", action="capture", event="e", properties={}),
    )  # fmt: skip
    problems = {(p.node_id, p.code, p.severity, p.field) for p in validate(definition)}
    assert ("sms", "missing_parameter", "error", "parameters.body") in problems
    # PostHog needs no connection (its key travels in the body): unbound, a missing distinct
    # id is a warning, and the key may come from a connection.
    assert ("ph", "missing_parameter", "warning", "parameters.distinct_id") in problems
    assert not [p for p in problems if p[0] == "ph" and p[3] == "parameters.api_key"]


# -- PostgreSQL as an integration provider (the database node's machinery) ---------------------


@pytest.fixture
def pg_table() -> Iterator[str]:
    """A fresh `tasks` table with a unique name on the local PostgreSQL, dropped afterwards."""
    require_postgres(PG_URL)
    table = f"fm_tasks_{uuid.uuid4().hex[:10]}"
    engine = sa.create_engine(PG_URL, poolclass=sa.pool.NullPool)
    with engine.begin() as connection:
        connection.execute(
            sa.text(f"CREATE TABLE {table} (id TEXT PRIMARY KEY, title TEXT, status TEXT)")
        )
    try:
        yield table
    finally:
        with engine.begin() as connection:
            connection.execute(sa.text(f"DROP TABLE IF EXISTS {table}"))
        engine.dispose()


def _pg(raw: dict[str, Any], upstream: dict[str, Any] | None = None) -> Any:
    registry = ConnectorRegistry()
    postgresql.register(registry)
    services = {
        "settings": Settings(databases={"postgresql": PG_URL}),
        "connectors": registry,
    }
    ctx = node_context(
        "integration", {"provider": "postgresql", "outputVariable": "db", **raw}, services,
        upstream=upstream,
    )  # fmt: skip
    return execute_integration(ctx).output["db"]


def test_postgresql_upsert_inserts_then_updates_by_the_conflict_column(pg_table: str) -> None:
    """The corpus's shape (trello-project-sync): `data` is one reference to an object."""
    record = {"id": "T-1", "title": "Ship {{env.SECRET}} plan", "status": "todo"}
    upstream = {"analysis": {"dbRecord": record}}
    node_config = {"action": "upsert", "table": pg_table, "data": "{{analysis.dbRecord}}",
                   "conflictColumn": "id", "returning": ["id", "status"]}  # fmt: skip
    first = _pg(node_config, upstream)
    assert first["rows"] == [{"id": "T-1", "status": "todo"}] and first["operation"] == "upsert"
    record["status"] = "done"
    second = _pg(node_config, {"analysis": {"dbRecord": record}})
    assert second["rows"] == [{"id": "T-1", "status": "done"}]
    rows = _pg({"action": "query", "query": f"SELECT id, title, status FROM {pg_table}"})
    # one row, and text from data is stored as written, never evaluated as a template
    assert rows["rows"] == [{"id": "T-1", "title": "Ship {{env.SECRET}} plan", "status": "done"}]


def test_postgresql_query_binds_references_and_values(pg_table: str) -> None:
    evil = f"x'); DROP TABLE {pg_table}; --"
    _pg({"action": "insert", "table": pg_table, "data": {"id": "1", "title": evil}})
    query = f"SELECT title FROM {pg_table} WHERE id = $1 AND title = {{{{analysis.title}}}}"
    found = _pg(  # the builder's shape: SQL and its values under `parameters`
        {"action": "executeQuery", "parameters": {"query": query, "parameters": ["1"]}},
        {"analysis": {"title": evil}},
    )
    assert found["rows"] == [{"title": evil}] and found["rowCount"] == 1


def test_postgresql_names_are_literal_and_operations_known(pg_table: str) -> None:
    with pytest.raises(NodeConfigurationError, match="conflictColumn") as caught:
        _pg({"action": "upsert", "table": pg_table, "data": {"id": "1"}})
    assert caught.value.details["field"] == "parameters.conflictColumn"
    with pytest.raises(NodeConfigurationError, match="literal"):
        _pg({"action": "upsert", "table": "{{analysis.table}}", "data": {"id": "1"},
             "conflictColumn": "id"}, {"analysis": {"table": pg_table}})  # fmt: skip
    with pytest.raises(ConnectorNotConfiguredError, match=r"postgresql \(operation truncate\)"):
        _pg({"action": "truncate", "table": pg_table})
    tables = _pg({"action": "listTables"})
    assert pg_table in tables["tables"]


def test_postgresql_without_a_configured_database_says_where_to_add_one() -> None:
    registry = ConnectorRegistry()
    postgresql.register(registry)
    ctx = node_context(
        "integration",
        {"provider": "postgresql", "action": "query", "query": "SELECT 1"},
        {"settings": Settings(), "connectors": registry},
    )
    with pytest.raises(ConnectorNotConfiguredError, match="FLOWMAESTRO_DATABASES"):
        execute_integration(ctx)
