"""Workflow analytics (`GET /workflows/{id}/analytics`) from the platform database, on SQLite and
on PostgreSQL.

The answer must equal what the per-execution computation from Dagster's event logs gave
(tests/api/analytics_reference.py): on real runs (retries, final failures, failures handled,
a failing loop item), synced as the status sensor syncs them; and on rows written directly,
more than the 5,000 executions the old computation read, with every one counted. The facts
are recorded when an execution settles and cleared while it runs again, an execution under
way is counted from its node attempts, and migration 0015 backfills existing rows.
"""

import math
import random
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from dagster import (
    DagsterEventType,
    DagsterInstance,
    DagsterRunStatus,
    build_run_status_sensor_context,
)
from fastapi.testclient import TestClient
from sqlalchemy import select

from flowmaestro_api.routes.observability import AnalyticsPublic
from flowmaestro_dagster.adapter.ops import INPUTS_RESOURCE, SERVICES_RESOURCE
from flowmaestro_dagster.adapter.resources import (
    static_services_resource,
    workflow_inputs_resource,
)
from flowmaestro_dagster.control.client import DagsterClient, RunInfo
from flowmaestro_dagster.control.executions import give_up_launches, record_facts
from flowmaestro_dagster.engines.jobs import build_job
from flowmaestro_dagster.engines.local import execute_workflow
from flowmaestro_dagster.orchestration.sensors import make_execution_status_sensor
from flowmaestro_dagster.settings import Settings
from flowmaestro_dagster.store.attempts import DatabaseAttemptStore
from flowmaestro_dagster.store.db import MIGRATIONS, dispose_engines, get_engine, session_scope
from flowmaestro_dagster.store.models import (
    Execution,
    ExecutionNodeStats,
    NodeAttempt,
    Workflow,
    utcnow,
)
from flowmaestro_dagster.tags import EXECUTION_TAG, VERSION_TAG, WORKFLOW_ID_TAG
from flowmaestro_dagster.testing import FakeLLMServer, FakeReply
from tests.api.analytics_reference import ExecutionFacts, reference_analytics, summarize
from tests.api.conftest import UNREACHABLE_DAGSTER, deployed_workflow
from tests.builders import backend_flow, chain, flow, node
from tests.services import fresh_pg_database

RETRIED = chain(
    node("in", "input", inputName="topic"),
    node("ask", "llm", model="gpt-4o", prompt="{{topic}}", retry={"maxAttempts": 3, "backoffStrategy": "fixed", "minDelayMs": 50}),
    node("out", "output", outputName="answer", value="{{ask.text}}"),
    name="Retried",
    react=True,
)  # fmt: skip
PARSE = {"operation": "parseJSON", "inputData": "{{raw}}"}
PARSED = backend_flow(
    [
        node("in", "input", inputName="raw"),
        node("parse", "transform", **PARSE),
        node("safe", "transform", **PARSE, onError={"strategy": "continue"}),
    ],
    [("in", "parse"), ("in", "safe")],
    name="Parsed",
)
LOOPED = flow(
    [
        node("in", "input", inputName="rows", inputType="json"),
        node("loop", "loop", items="{{rows}}", itemVariable="raw"),
        node("parse", "transform", operation="parseJSON", inputData="{{raw}}", outputVariable="row"),
        node("out", "output", outputName="rows", value="{{parse}}"),
    ],
    [("in", "loop"), ("loop", "parse"), ("parse", "out")],
    name="Looped",
)  # fmt: skip


def run_synced(
    api: TestClient,
    auth: dict[str, str],
    instance: DagsterInstance,
    database_url: str,
    workflow_id: str,
    definition: dict[str, Any],
    inputs: dict[str, Any],
    settings: Settings,
) -> str:
    """Start an execution through the API, run its Dagster run in process as a run worker
    would (tagged, node attempts recorded), then tick the status sensor for the run's end: it
    syncs the execution's status and records its facts."""
    created = api.post(
        f"/workflows/{workflow_id}/executions", json={"inputs": inputs}, headers=auth
    )
    assert created.status_code == 201, created.text
    execution_id: str = created.json()["id"]
    services = static_services_resource(settings, attempts=DatabaseAttemptStore(database_url))
    compiled = build_job(
        definition,
        resource_defs={INPUTS_RESOURCE: workflow_inputs_resource, SERVICES_RESOURCE: services},
    )
    tags = {EXECUTION_TAG: execution_id, WORKFLOW_ID_TAG: workflow_id, VERSION_TAG: "1"}
    result = execute_workflow(compiled, inputs, instance=instance, tags=tags, log_level="ERROR")
    run = instance.get_run_by_id(result.run_id)
    assert run is not None
    status, event_type = FINAL[run.status]
    sensor = make_execution_status_sensor(
        status,
        settings=Settings(_env_file=None, database_url=database_url),
        client_factory=lambda current: DagsterClient(UNREACHABLE_DAGSTER, instance=current),
    )
    [record] = instance.get_records_for_run(result.run_id, of_type=event_type).records
    event = record.event_log_entry.dagster_event
    assert event is not None
    sensor(
        build_run_status_sensor_context(
            sensor_name=sensor.name, dagster_event=event, dagster_instance=instance, dagster_run=run
        )
    )
    with session_scope(get_engine(database_url)) as session:
        execution = session.get(Execution, execution_id)
        assert execution is not None and execution.facts_recorded_at is not None
        assert execution.status in ("succeeded", "failed") and execution.duration_ms is not None
    return execution_id


FINAL = {
    DagsterRunStatus.SUCCESS: (DagsterRunStatus.SUCCESS, DagsterEventType.RUN_SUCCESS),
    DagsterRunStatus.FAILURE: (DagsterRunStatus.FAILURE, DagsterEventType.RUN_FAILURE),
}


def analytics(
    api: TestClient, auth: dict[str, str], workflow_id: str, start: datetime, end: datetime
) -> dict[str, Any]:
    response = api.get(
        f"/workflows/{workflow_id}/analytics",
        params={"from": start.isoformat(), "to": end.isoformat()},
        headers=auth,
    )
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def as_answer(summary: dict[str, Any]) -> dict[str, Any]:
    """A reference summary as the API serialises an answer."""
    return AnalyticsPublic.model_validate(summary).model_dump(mode="json", by_alias=True)


def test_analytics_equal_the_per_execution_computation_over_real_runs(
    api: TestClient,
    auth: dict[str, str],
    instance: DagsterInstance,
    database_url: str,
    llm: FakeLLMServer,
) -> None:
    settings = llm.settings()
    cases: list[tuple[dict[str, Any], list[dict[str, Any]]]] = [
        # One retry, two retries, and a third failure after two retries (a final failure).
        (RETRIED, [{"topic": "a"}, {"topic": "b"}, {"topic": "c"}]),
        # `parse` fails on the broken inputs; `safe` fails too, handled (onError continue).
        (PARSED, [{"raw": '{"a": 1}'}, {"raw": "{broken"}, {"raw": "[1]"}, {"raw": "{also"}]),
        # The second loop item fails: one failure of `parse` (its item), not of the loop.
        (LOOPED, [{"rows": ['{"a": 1}', "{broken", "[3]"]}, {"rows": ["1", "2"]}]),
    ]
    llm.enqueue(FakeReply.error(503), "one")
    llm.enqueue(FakeReply.error(503), FakeReply.error(503), "two")
    llm.enqueue(FakeReply.error(503), FakeReply.error(503), FakeReply.error(503))
    end = datetime.now(UTC) + timedelta(minutes=1)
    start = end - timedelta(days=2)
    client = DagsterClient(UNREACHABLE_DAGSTER, instance=instance)
    for definition, runs in cases:
        workflow_id = deployed_workflow(api, auth, definition)
        for inputs in runs:
            run_synced(api, auth, instance, database_url, workflow_id, definition, inputs, settings)
        answer = analytics(api, auth, workflow_id, start, end)
        with session_scope(get_engine(database_url)) as session:
            expected = reference_analytics(session, client, workflow_id, start, end)
        assert answer == as_answer(expected), definition["name"]
        assert answer["executions"] == len(runs) and answer["nodes"], answer
    # The last one (the loop): one item's failure, spelled out.
    looped = {n["node_id"]: n for n in analytics(api, auth, workflow_id, start, end)["nodes"]}
    assert looped["parse"] == {
        "node_id": "parse",
        "errors": 1,
        "failures": 1,
        "retries": 0,
        "executions_with_errors": 1,
    }


def test_analytics_of_a_retried_then_failed_node_count_each_attempt(
    api: TestClient,
    auth: dict[str, str],
    instance: DagsterInstance,
    database_url: str,
    llm: FakeLLMServer,
) -> None:
    workflow_id = deployed_workflow(api, auth, RETRIED)
    llm.enqueue(FakeReply.error(503), "fine", *[FakeReply.error(503)] * 3)
    for topic in ("a", "b"):
        run_synced(
            api,
            auth,
            instance,
            database_url,
            workflow_id,
            RETRIED,
            {"topic": topic},
            llm.settings(),
        )
    end = datetime.now(UTC) + timedelta(minutes=1)
    body = analytics(api, auth, workflow_id, end - timedelta(days=1), end)
    assert body["by_status"] == {"failed": 1, "succeeded": 1}
    assert body["nodes"] == [
        {"node_id": "ask", "errors": 4, "failures": 1, "retries": 3, "executions_with_errors": 2}
    ]
    assert (body["errors"], body["retries"]) == (4, 3)
    assert (
        body["duration_p50_ms"] is not None and body["duration_p95_ms"] >= body["duration_p50_ms"]
    )


# -- rows written directly: exact numbers, no cap ------------------------------------------------


def insert_facts(database_url: str, workflow_id: str, facts: list[ExecutionFacts]) -> None:
    """Executions as the platform records them when they settle (`record_facts`): one row
    each with its status and duration, and a node stats row per node with an error."""
    with session_scope(get_engine(database_url)) as session:
        workflow = session.get(Workflow, workflow_id)
        assert workflow is not None
        rows: list[dict[str, Any]] = []
        stats: list[dict[str, Any]] = []
        for fact in facts:
            rows.append(
                {
                    "id": fact.execution_id,
                    "workflow_id": workflow_id,
                    "version": 1,
                    "user_id": workflow.owner_id,
                    "status": fact.status,
                    "job_name": "job",
                    "location_name": "loc",
                    "inputs": {},
                    "created_at": fact.created_at,
                    "duration_ms": fact.duration_ms,
                    "replays": 0,
                    "facts_recorded_at": fact.created_at,
                }
            )
            stats.extend(
                {
                    "execution_id": fact.execution_id,
                    "node_id": node_id,
                    "workflow_id": workflow_id,
                    "created_at": fact.created_at,
                    "errors": errors,
                    "failures": fact.failures.get(node_id, 0),
                    "retries": fact.retries.get(node_id, 0),
                }
                for node_id, errors in fact.errors.items()
            )
        for begin in range(0, len(rows), 1000):
            session.execute(sa.insert(Execution), rows[begin : begin + 1000])
        for begin in range(0, len(stats), 1000):
            session.execute(sa.insert(ExecutionNodeStats), stats[begin : begin + 1000])


def expected_answer(
    workflow_id: str, facts: list[ExecutionFacts], start: datetime, end: datetime
) -> dict[str, Any]:
    inside = [f for f in facts if start <= f.created_at < end]
    summary = summarize(inside, start, end)
    summary.update(workflow_id=workflow_id, truncated=False, duplicates_prevented=0)
    return as_answer(summary)


def test_summary_numbers_and_nearest_rank_percentiles(
    api: TestClient, auth: dict[str, str], database_url: str
) -> None:
    workflow_id = deployed_workflow(api, auth)
    day = datetime(2026, 3, 2, 12, tzinfo=UTC)
    ids = [str(uuid.uuid4()) for _ in range(6)]
    facts = [
        ExecutionFacts(ids[0], day, "succeeded", 100.0, {}, {}, {}),
        ExecutionFacts(ids[1], day, "succeeded", 300.0, {"n": 1}, {}, {"n": 1}),
        ExecutionFacts(ids[2], day, "failed", 200.0, {"n": 3}, {"n": 1}, {"n": 2}),
        ExecutionFacts(ids[3], day + timedelta(days=1), "succeeded", 1000.0, {}, {}, {}),
        ExecutionFacts(ids[4], day + timedelta(days=1), "waiting", None, {}, {}, {}),
        ExecutionFacts(ids[5], day + timedelta(days=3), "succeeded", 5.0, {}, {}, {}),  # after
    ]
    insert_facts(database_url, workflow_id, facts)
    start, end = datetime(2026, 3, 1, tzinfo=UTC), datetime(2026, 3, 4, tzinfo=UTC)
    body = analytics(api, auth, workflow_id, start, end)
    assert body == expected_answer(workflow_id, facts, start, end)
    assert body["executions"] == 5 and body["finished"] == 4
    assert body["success_rate"] == 0.75 and body["failure_rate"] == 0.25
    assert body["duration_p50_ms"] == 200.0 and body["duration_p95_ms"] == 1000.0
    assert [(d["day"], d["executions"], d["duration_p50_ms"]) for d in body["by_day"]] == [
        ("2026-03-01", 0, None),
        ("2026-03-02", 3, 200.0),
        ("2026-03-03", 2, 1000.0),
    ]
    assert body["nodes"] == [
        {"node_id": "n", "errors": 4, "failures": 1, "retries": 3, "executions_with_errors": 2}
    ]
    # A range starting and ending inside days: only the part of each day inside it counts.
    partial = analytics(api, auth, workflow_id, day - timedelta(hours=1), day + timedelta(days=1))
    assert partial["executions"] == 3 and partial["by_day"][-1]["executions"] == 0


def test_durations_come_back_exactly_whatever_their_size(
    api: TestClient, auth: dict[str, str], database_url: str
) -> None:
    """Durations are stored to the microsecond; from a millisecond to a month they come back
    as the very floats stored (SQLite hands the day's durations over as one text)."""
    workflow_id = deployed_workflow(api, auth)
    day = datetime(2026, 4, 7, 9, tzinfo=UTC)
    durations = [0.001, 1234.567, 86_399_999.999, 2_591_999_999.999, 0.1 + 0.2 - 0.3 + 7.123]
    facts = [
        ExecutionFacts(str(uuid.uuid4()), day, "succeeded", round(d, 3), {}, {}, {})
        for d in durations
    ]
    insert_facts(database_url, workflow_id, facts)
    body = analytics(api, auth, workflow_id, day, day + timedelta(hours=1))
    ordered = sorted(round(d, 3) for d in durations)
    assert (body["duration_p50_ms"], body["duration_p95_ms"]) == (ordered[2], ordered[4])
    assert body["by_day"][0]["duration_p50_ms"] == ordered[2]
    assert body == expected_answer(workflow_id, facts, day, day + timedelta(hours=1))


def test_every_execution_is_counted_beyond_five_thousand(
    api: TestClient, auth: dict[str, str], database_url: str
) -> None:
    """6,001 executions over three days and one before: the old computation read 5,000 and
    dropped the rest; every total here is exact."""
    workflow_id = deployed_workflow(api, auth)
    rng = random.Random(6)
    start = datetime(2026, 2, 10, 7, 30, tzinfo=UTC)
    end = start + timedelta(days=3)
    facts = []
    for n in range(6002):
        created = (
            start + timedelta(seconds=rng.uniform(0, 3 * 86400))
            if n
            else start - timedelta(hours=2)
        )
        status = rng.choices(
            ["succeeded", "failed", "cancelled", "running", "waiting"], [80, 10, 4, 3, 3]
        )[0]
        duration = (
            round(rng.lognormvariate(math.log(1500), 1), 3)
            if status in ("succeeded", "failed", "cancelled")
            else None
        )
        errors: dict[str, int] = {}
        failures: dict[str, int] = {}
        retries: dict[str, int] = {}
        if status == "failed":
            node_id = f"node_{rng.randrange(4)}"
            retries[node_id] = rng.randrange(3)
            errors[node_id], failures[node_id] = retries[node_id] + 1, 1
        elif status == "succeeded" and rng.random() < 0.05:
            errors["flaky"] = retries["flaky"] = 1
        facts.append(ExecutionFacts(str(uuid.uuid4()), created, status, duration, errors, failures, retries))  # fmt: skip
    insert_facts(database_url, workflow_id, facts)
    body = analytics(api, auth, workflow_id, start, end)
    assert body["executions"] == 6001 and body["truncated"] is False
    assert body == expected_answer(workflow_id, facts, start, end)
    assert sum(d["executions"] for d in body["by_day"]) == 6001 and len(body["by_day"]) == 4


# -- facts recorded as executions settle; executions under way ----------------------------------


def execution_row(database_url: str, workflow_id: str, **values: Any) -> str:
    execution_id = str(uuid.uuid4())
    with session_scope(get_engine(database_url)) as session:
        workflow = session.get(Workflow, workflow_id)
        assert workflow is not None
        session.add(
            Execution(
                id=execution_id,
                workflow_id=workflow_id,
                version=1,
                user_id=workflow.owner_id,
                job_name="job",
                location_name="loc",
                **values,
            )
        )
    return execution_id


def attempt(
    execution_id: str, node_id: str, n: int, status: str, iteration: str = ""
) -> NodeAttempt:
    moment = datetime(2026, 1, 1, tzinfo=UTC) + timedelta(seconds=n)
    return NodeAttempt(
        execution_id=execution_id,
        node_id=node_id,
        iteration=iteration,
        run_id="run-1",
        step_key=f"{node_id}[{iteration}]" if iteration else node_id,
        attempt=n,
        status=status,
        started_at=moment,
        finished_at=moment,
    )


def run_info(end_time: float) -> RunInfo:
    return RunInfo(
        run_id="run-1",
        status="SUCCESS",
        tags={},
        parent_run_id=None,
        root_run_id=None,
        start_time=end_time - 1,
        end_time=end_time,
        create_time=end_time - 2,
    )


def test_facts_are_recorded_when_an_execution_settles_and_cleared_while_it_runs_again(
    api: TestClient, auth: dict[str, str], database_url: str
) -> None:
    workflow_id = deployed_workflow(api, auth)
    created = utcnow() - timedelta(minutes=5)
    execution_id = execution_row(database_url, workflow_id, status="running", created_at=created)
    with session_scope(get_engine(database_url)) as session:
        session.add_all(
            [
                attempt(execution_id, "fetch", 1, "retrying"),
                attempt(execution_id, "fetch", 2, "succeeded"),
                attempt(execution_id, "rows", 1, "failed", "0"),  # a loop item
                attempt(execution_id, "rows", 2, "succeeded", "0"),  # ... retried from failure
                attempt(execution_id, "rows", 1, "failed", "1"),  # ... its last attempt failed
                attempt(execution_id, "safe", 1, "handled"),
                attempt(execution_id, "ok", 1, "succeeded"),
            ]
        )
    week = (utcnow() - timedelta(days=7), utcnow() + timedelta(minutes=1))
    expected = {
        "fetch": {"errors": 1, "failures": 0, "retries": 1, "executions_with_errors": 1},
        "rows": {"errors": 2, "failures": 1, "retries": 0, "executions_with_errors": 1},
        "safe": {"errors": 1, "failures": 0, "retries": 0, "executions_with_errors": 1},
    }

    def nodes() -> dict[str, dict[str, int]]:
        body = analytics(api, auth, workflow_id, *week)
        return {n.pop("node_id"): n for n in body["nodes"]}

    assert nodes() == expected  # under way: read from its attempts
    engine = get_engine(database_url)
    with session_scope(engine) as session:
        execution = session.get(Execution, execution_id)
        assert execution is not None
        assert record_facts(session, execution, [], changed=True) is False  # still running
        execution.status = "succeeded"
        finished = created.timestamp() + 42.5
        assert record_facts(session, execution, [run_info(finished)], changed=True) is True
    with session_scope(engine) as session:
        execution = session.get(Execution, execution_id)
        assert execution is not None and execution.facts_recorded_at is not None
        assert execution.duration_ms == 42500.0
        stats = session.scalars(select(ExecutionNodeStats).order_by(ExecutionNodeStats.node_id))
        assert [(s.node_id, s.errors, s.failures, s.retries) for s in stats] == [
            ("fetch", 1, 0, 1),
            ("rows", 2, 1, 0),
            ("safe", 1, 0, 0),
        ]
        # Synced again without a change: nothing written.
        assert record_facts(session, execution, [run_info(finished)], changed=False) is False
    assert nodes() == expected  # settled: the rolled-up rows, counted once
    body = analytics(api, auth, workflow_id, *week)
    assert body["duration_p50_ms"] == 42500.0 and body["finished"] == 1

    # Retried: under way again, its numbers come from its attempts until it settles anew.
    with session_scope(engine) as session:
        execution = session.get(Execution, execution_id)
        assert execution is not None
        execution.status = "running"
        assert record_facts(session, execution, [], changed=True) is True
        session.add(attempt(execution_id, "rows", 3, "failed", "0"))
    with session_scope(engine) as session:
        execution = session.get(Execution, execution_id)
        assert execution is not None and execution.facts_recorded_at is None
        assert execution.duration_ms is None
        assert session.scalars(select(ExecutionNodeStats)).all() == []
    again = nodes()
    assert again["rows"] == {"errors": 3, "failures": 2, "retries": 0, "executions_with_errors": 1}
    with session_scope(engine) as session:
        execution = session.get(Execution, execution_id)
        assert execution is not None
        execution.status = "failed"
        assert record_facts(session, execution, [run_info(created.timestamp() + 60)], changed=True)
    assert nodes() == again and analytics(api, auth, workflow_id, *week)["by_status"] == {
        "failed": 1
    }


def test_an_execution_whose_launch_is_given_up_settles_without_facts(
    api: TestClient, auth: dict[str, str], database_url: str
) -> None:
    workflow_id = deployed_workflow(api, auth)
    execution_id = execution_row(
        database_url, workflow_id, status="queued", created_at=utcnow(), launch_attempts=3
    )
    with session_scope(get_engine(database_url)) as session:
        assert give_up_launches(session, max_attempts=3, lease_seconds=60) == [execution_id]
        execution = session.get(Execution, execution_id)
        assert execution is not None and execution.status == "failed"
        assert execution.facts_recorded_at is not None and execution.duration_ms is None
    body = api.get(f"/workflows/{workflow_id}/analytics", headers=auth).json()
    assert (body["by_status"], body["finished"], body["duration_p50_ms"]) == (
        {"failed": 1},
        1,
        None,
    )


def test_the_analytics_route_reads_no_dagster(
    api: TestClient, auth: dict[str, str], database_url: str
) -> None:
    """`api` cannot reach a Dagster webserver, and its instance holds no runs: the answer
    comes from the platform database alone."""
    workflow_id = deployed_workflow(api, auth)
    execution_row(
        database_url,
        workflow_id,
        status="succeeded",
        created_at=utcnow() - timedelta(hours=1),
        duration_ms=12.5,
        facts_recorded_at=utcnow(),
        replays=2,
    )
    body = api.get(f"/workflows/{workflow_id}/analytics", headers=auth).json()
    assert (body["executions"], body["duration_p95_ms"], body["duplicates_prevented"]) == (
        1,
        12.5,
        2,
    )


def test_analytics_range_is_checked(api: TestClient, auth: dict[str, str]) -> None:
    workflow_id = deployed_workflow(api, auth)
    url = f"/workflows/{workflow_id}/analytics"
    backwards = {"from": "2026-02-01T00:00:00Z", "to": "2026-01-01T00:00:00Z"}
    assert api.get(url, params=backwards, headers=auth).status_code == 422
    too_long = {"from": "2020-01-01T00:00:00Z", "to": "2026-01-01T00:00:00Z"}
    assert api.get(url, params=too_long, headers=auth).status_code == 422
    assert api.get(url, params={"from": "yesterday"}, headers=auth).status_code == 422
    default = api.get(url, headers=auth).json()
    assert default["executions"] == 0 and len(default["by_day"]) in (7, 8)
    assert default["success_rate"] is None and default["nodes"] == []


# -- migration 0015 backfills what was stored before ---------------------------------------------


def upgrade(url: str, revision: str) -> None:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    try:
        with engine.begin() as connection:
            config.attributes["connection"] = connection
            command.upgrade(config, revision)
    finally:
        engine.dispose()


@pytest.fixture(params=["sqlite", "postgres"])
def empty_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'before.db'}"
        dispose_engines()
        return
    with fresh_pg_database() as url:
        yield url


def test_migration_0015_backfills_durations_node_numbers_and_settled_marks(
    empty_url: str,
) -> None:
    upgrade(empty_url, "0014")
    created = datetime(2026, 1, 5, 10, 0, 0, 123456, tzinfo=UTC)
    engine = sa.create_engine(empty_url, poolclass=sa.pool.NullPool)
    metadata = sa.MetaData()
    metadata.reflect(engine, only=["users", "workflows", "executions", "node_attempts"])
    tables = metadata.tables
    rows = {
        "done": ("succeeded", "run-1", created + timedelta(seconds=3, microseconds=250)),
        "broke": ("failed", "run-2", created + timedelta(minutes=2)),
        "gave_up": ("failed", None, created + timedelta(minutes=9)),  # never launched
        "busy": ("running", "run-4", None),
    }
    with engine.begin() as connection:
        connection.execute(
            sa.insert(tables["users"]),
            {"id": "u", "email": "u@example.com", "name": "", "created_at": created},
        )
        connection.execute(sa.insert(tables["workflows"]), {"id": "w", "owner_id": "u", "name": "w", "latest_version": 1, "priority": 0, "one_at_a_time_per_user": False, "created_at": created, "updated_at": created})  # fmt: skip
        for execution_id, (status, run_id, finished) in rows.items():
            connection.execute(
                sa.insert(tables["executions"]),
                {
                    "id": execution_id, "workflow_id": "w", "version": 1, "user_id": "u", "status": status,
                    "priority": 0, "inputs": {}, "job_name": "j", "location_name": "l", "run_id": run_id,
                    "launch_attempts": 1, "created_at": created, "finished_at": finished,
                },
            )  # fmt: skip
        for n, (execution_id, node_id, iteration, status) in enumerate(
            [
                ("broke", "parse", "", "retrying"),
                ("broke", "parse", "", "failed"),
                ("broke", "safe", "", "handled"),
                ("broke", "ok", "", "succeeded"),
                ("done", "loop", "0", "failed"),
                ("done", "loop", "0", "succeeded"),
                ("busy", "slow", "", "retrying"),
            ]
        ):
            connection.execute(
                sa.insert(tables["node_attempts"]),
                {
                    "id": f"a{n}", "execution_id": execution_id, "node_id": node_id, "iteration": iteration,
                    "run_id": "r", "step_key": f"{node_id}{n}", "attempt": n + 1, "status": status,
                    "started_at": created + timedelta(seconds=n), "finished_at": created + timedelta(seconds=n),
                    "output_truncated": False, "logs": [], "logs_dropped": 0,
                },
            )  # fmt: skip
    engine.dispose()
    upgrade(empty_url, "head")
    with session_scope(get_engine(empty_url)) as session:
        executions = {e.id: e for e in session.scalars(select(Execution))}
        assert executions["done"].duration_ms == 3000.25
        assert executions["broke"].duration_ms == 120000.0
        assert executions["gave_up"].duration_ms is None and executions["busy"].duration_ms is None
        settled = {k for k, e in executions.items() if e.facts_recorded_at is not None}
        assert settled == {"done", "broke", "gave_up"}
        stats = session.scalars(
            select(ExecutionNodeStats).order_by(
                ExecutionNodeStats.execution_id, ExecutionNodeStats.node_id
            )
        )
        assert [(s.execution_id, s.node_id, s.errors, s.failures, s.retries) for s in stats] == [
            ("broke", "parse", 2, 1, 1),
            ("broke", "safe", 1, 0, 0),
            ("done", "loop", 1, 0, 0),
        ]
        assert {s.workflow_id for s in session.scalars(select(ExecutionNodeStats))} == {"w"}
