"""Run history retention: what a batch deletes (old finished executions with their Dagster runs,
event logs and platform rows) and what it leaves (everything else).

On a real Dagster instance and platform database, both SQLite (`instance_for_test`) and
PostgreSQL (Dagster's storage in the platform database's `dagster` schema, as deployed). The
finished runs are real: the workflow runs in process on the instance, so its event log is what
a run worker writes; runs still going are created through the instance with an engine event.
The rows a finished execution leaves (attempts, outputs, waitpoints, decisions, checkpoints,
keys, deliveries) are written directly.
"""

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from dagster import (
    DagsterInstance,
    DagsterRunStatus,
    RunsFilter,
    SkipReason,
    build_sensor_context,
    instance_for_test,
)
from sqlalchemy import func, select, update

from flowmaestro_dagster.adapter.ops import INPUTS_RESOURCE, SERVICES_RESOURCE
from flowmaestro_dagster.adapter.resources import (
    static_services_resource,
    workflow_inputs_resource,
)
from flowmaestro_dagster.compile.compiler import CompiledWorkflow
from flowmaestro_dagster.control.client import DagsterClient
from flowmaestro_dagster.control.retention import PER_EXECUTION, RetentionPolicy, apply_retention
from flowmaestro_dagster.engines.jobs import build_job
from flowmaestro_dagster.engines.local import execute_workflow, run_config_for
from flowmaestro_dagster.orchestration.instance_config import (
    prepare_storage,
    render_instance_yaml,
)
from flowmaestro_dagster.orchestration.sensors import make_retention_sensor
from flowmaestro_dagster.settings import Settings
from flowmaestro_dagster.store.db import dispose_engines, get_engine, migrate, session_scope
from flowmaestro_dagster.store.models import (
    Base,
    Checkpoint,
    Decision,
    Execution,
    IdempotencyKey,
    NodeAttempt,
    NodeOutput,
    Waitpoint,
    WebhookDelivery,
    WorkflowVersion,
    utcnow,
)
from flowmaestro_dagster.store.waitpoints import DatabaseWaitpointStore
from flowmaestro_dagster.tags import EXECUTION_TAG
from tests.builders import chain, node
from tests.deploy import deploy, fresh_user
from tests.services import create_pg_database, drop_pg_database, pg_url, require_postgres

OLD = timedelta(days=40)
RECENT = timedelta(days=1)
MONTH = RetentionPolicy(days=30)


def echo_flow(name: str = "Echo") -> dict[str, Any]:
    return chain(
        node("in", "input", inputName="who"),
        node("out", "output", outputName="said", value="hi {{who}}"),
        name=name,
    )


def approval_flow() -> dict[str, Any]:
    return chain(
        node("in", "input", inputName="who"),
        node("review", "humanReview", reviewPrompt="Ship {{who}}?", outputVariable="approval"),
        node("out", "output", outputName="result", value="{{who}}"),
        name="Approval",
    )


# -- the platform and its Dagster instance, on SQLite and on PostgreSQL --------------------------


@dataclass
class Platform:
    settings: Settings
    instance: DagsterInstance

    def session(self) -> Any:
        return session_scope(get_engine(self.settings.database_url))


def _settings(url: str) -> Settings:
    return Settings(
        _env_file=None,
        database_url=url,
        wait_sleep_threshold_seconds=0,
        secret_key="retention-test-secret-0123456789",
        callback_signing_secret="retention-test-signing-0123456789",
    )


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def platform(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Platform]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'platform.db'}"
        migrate(url)
        with instance_for_test() as instance:
            yield Platform(_settings(url), instance)
        dispose_engines()
        return
    require_postgres()
    name = create_pg_database()
    try:
        settings = _settings(pg_url(name))
        migrate(settings.database_url)
        prepare_storage(settings)
        home = tmp_path / "home"
        home.mkdir()
        (home / "dagster.yaml").write_text(render_instance_yaml(settings))
        with DagsterInstance.from_config(str(home)) as instance:
            yield Platform(settings, instance)
    finally:
        dispose_engines()
        drop_pg_database(name)


# -- executions, runs and rows -------------------------------------------------------------------


@dataclass
class Workflow:
    id: str
    user_id: str
    job_name: str
    compiled: CompiledWorkflow


def deployed(platform: Platform, definition: dict[str, Any]) -> Workflow:
    with platform.session() as session:
        user = fresh_user(session)
        workflow_id = deploy(session, user, definition)
        version = session.scalar(
            select(WorkflowVersion).where(WorkflowVersion.workflow_id == workflow_id)
        )
        assert version is not None
        job_name, user_id = version.job_name, user.id
    store = DatabaseWaitpointStore(platform.settings.database_url, sleep_threshold_seconds=0)
    compiled = build_job(
        definition,
        job_name=job_name,
        resource_defs={
            INPUTS_RESOURCE: workflow_inputs_resource,
            SERVICES_RESOURCE: static_services_resource(platform.settings, waitpoints=store),
        },
    )
    return Workflow(workflow_id, user_id, job_name, compiled)


def execution(
    platform: Platform, workflow: Workflow, status: str, *, age: timedelta, **values: Any
) -> str:
    """An execution row `age` old (finished then, if `status` is final)."""
    when = utcnow() - age
    finished = status in ("succeeded", "failed", "cancelled")
    row = Execution(
        workflow_id=workflow.id,
        version=1,
        user_id=workflow.user_id,
        status=status,
        inputs={"who": "ada"},
        job_name=workflow.job_name,
        location_name="flowmaestro-workflows-0",
        created_at=when - timedelta(seconds=5),
        launched_at=when - timedelta(seconds=5),
        finished_at=when if finished else None,
        **values,
    )
    with platform.session() as session:
        session.add(row)
    return row.id


def ran(platform: Platform, workflow: Workflow, execution_id: str) -> str:
    """A real run of the execution on the instance (its tags as a launch gives them)."""
    result = execute_workflow(
        workflow.compiled,
        {"who": "ada"},
        instance=platform.instance,
        tags={EXECUTION_TAG: execution_id},
        log_level="ERROR",
    )
    return result.run_id


def going(
    platform: Platform, workflow: Workflow, execution_id: str, status: DagsterRunStatus
) -> str:
    """A run of the execution that has not finished (not started, started), with an event
    (a QUEUED run needs a code location origin; NOT_STARTED reads as queued as well)."""
    run = platform.instance.create_run_for_job(
        workflow.compiled.job,
        run_id=str(uuid.uuid4()),
        run_config=run_config_for({"who": "ada"}),
        status=status,
        tags={EXECUTION_TAG: execution_id},
    )
    platform.instance.report_engine_event("still going", run)
    return run.run_id


def history(platform: Platform, workflow: Workflow, execution_id: str, run_id: str) -> None:
    """The rows a finished execution leaves: an attempt, an output, a resumed approval and its
    decision, a checkpoint, an idempotency key, the webhook delivery that started it."""
    now = utcnow()
    with platform.session() as session:
        waitpoint = Waitpoint(
            execution_id=execution_id,
            node_id="review",
            step_key="review",
            run_id=run_id,
            kind="approval",
            status="resumed",
        )
        session.add(waitpoint)
        session.flush()
        session.add_all(
            [
                Decision(waitpoint_id=waitpoint.id, decision="approve"),
                NodeAttempt(
                    execution_id=execution_id,
                    node_id="in",
                    run_id=run_id,
                    step_key=f"in-{uuid.uuid4().hex[:6]}",
                    attempt=1,
                    status="succeeded",
                    started_at=now,
                    finished_at=now,
                ),
                NodeOutput(
                    run_id=run_id,
                    step_key=f"in-{uuid.uuid4().hex[:6]}",
                    output_name="result",
                    execution_id=execution_id,
                    value={"who": "ada"},
                ),
                Checkpoint(
                    execution_id=execution_id,
                    node_id="cp",
                    name="cp",
                    run_id=run_id,
                    step_key="cp",
                    state={},
                    expires_at=now + timedelta(days=365),
                ),
                IdempotencyKey(
                    user_id=workflow.user_id,
                    workflow_id=workflow.id,
                    key=uuid.uuid4().hex,
                    request_hash="0" * 64,
                    execution_id=execution_id,
                    expires_at=now + timedelta(days=365),
                ),
                WebhookDelivery(
                    workflow_id=workflow.id,
                    trigger_id="hook",
                    outcome="accepted",
                    execution_id=execution_id,
                ),
            ]
        )


def finished(platform: Platform, workflow: Workflow, status: str, age: timedelta) -> str:
    """A finished execution with a real run and its rows."""
    execution_id = execution(platform, workflow, status, age=age)
    history(platform, workflow, execution_id, ran(platform, workflow, execution_id))
    return execution_id


def rows_of(platform: Platform, execution_id: str) -> dict[str, int]:
    """How many rows of each per-execution table the execution has (its own row included)."""
    with platform.session() as session:
        counts = {
            model.__tablename__: session.scalar(
                select(func.count()).select_from(model).where(model.execution_id == execution_id)
            )
            or 0
            for model in PER_EXECUTION
        }
        counts["decisions"] = (
            session.scalar(
                select(func.count())
                .select_from(Decision)
                .join(Waitpoint, Waitpoint.id == Decision.waitpoint_id)
                .where(Waitpoint.execution_id == execution_id)
            )
            or 0
        )
        counts["executions"] = 1 if session.get(Execution, execution_id) is not None else 0
    return counts


def runs_of(platform: Platform, execution_id: str) -> list[str]:
    records = platform.instance.get_run_records(
        filters=RunsFilter(tags={EXECUTION_TAG: execution_id})
    )
    return [r.dagster_run.run_id for r in records]


def events_of(platform: Platform, run_id: str) -> int:
    return len(platform.instance.get_records_for_run(run_id).records)


def gone(platform: Platform, execution_id: str, run_ids: list[str]) -> bool:
    """Nothing of the execution is left: rows, runs, event logs."""
    return (
        not any(rows_of(platform, execution_id).values())
        and runs_of(platform, execution_id) == []
        and all(platform.instance.get_run_by_id(r) is None for r in run_ids)
        and all(events_of(platform, r) == 0 for r in run_ids)
    )


def intact(platform: Platform, execution_id: str, run_ids: list[str]) -> bool:
    """The execution's row, runs and their event logs are all still there."""
    return (
        rows_of(platform, execution_id)["executions"] == 1
        and sorted(runs_of(platform, execution_id)) == sorted(run_ids)
        and all(events_of(platform, r) > 0 for r in run_ids)
    )


def retain(platform: Platform, policy: RetentionPolicy, batch_size: int = 100) -> Any:
    with platform.session() as session:
        return apply_retention(session, platform.instance, policy=policy, batch_size=batch_size)


# -- what a batch deletes, what it leaves --------------------------------------------------------


def test_retention_deletes_old_finished_executions_and_nothing_else(platform: Platform) -> None:
    echo = deployed(platform, echo_flow())
    other = deployed(platform, echo_flow("Other"))
    approval = deployed(platform, approval_flow())
    old_succeeded = finished(platform, echo, "succeeded", OLD)
    old_failed = execution(platform, echo, "failed", age=OLD)
    failed_runs = [ran(platform, echo, old_failed), ran(platform, echo, old_failed)]  # a retry
    history(platform, echo, old_failed, failed_runs[-1])
    old_cancelled = execution(platform, echo, "cancelled", age=OLD)  # before its launch: no run
    other_old = finished(platform, other, "succeeded", OLD)
    old_runs = {e: runs_of(platform, e) for e in (old_succeeded, other_old)}
    old_runs[old_failed] = failed_runs
    assert all(events_of(platform, r) > 0 for runs in old_runs.values() for r in runs)

    recent = finished(platform, echo, "succeeded", RECENT)
    queued = execution(platform, echo, "queued", age=OLD)
    queued_run = going(platform, echo, queued, DagsterRunStatus.NOT_STARTED)
    running = execution(platform, echo, "running", age=OLD)
    running_run = going(platform, echo, running, DagsterRunStatus.STARTED)
    waiting = execution(platform, approval, "waiting", age=OLD)
    waiting_run = ran(platform, approval, waiting)  # parks at the approval: its run succeeded
    paused = execution(platform, echo, "paused", age=OLD)
    paused_run = ran(platform, echo, paused)
    outsider = execute_workflow(echo.compiled, {"who": "x"}, instance=platform.instance).run_id
    with platform.session() as session:
        open_approval = session.scalar(select(Waitpoint).where(Waitpoint.execution_id == waiting))
        assert open_approval is not None and open_approval.status == "pending"

    result = retain(platform, MONTH)

    assert (result.executions, result.runs, result.skipped) == (4, 4, 0)
    assert result.rows["decisions"] == 3 and result.rows["webhook_deliveries"] == 3
    for execution_id, run_ids in old_runs.items():
        assert gone(platform, execution_id, run_ids), execution_id
    assert gone(platform, old_cancelled, [])
    assert intact(platform, recent, runs_of(platform, recent))
    assert intact(platform, queued, [queued_run])
    assert intact(platform, running, [running_run])
    assert intact(platform, waiting, [waiting_run])
    assert rows_of(platform, waiting)["waitpoints"] == 1
    assert intact(platform, paused, [paused_run])
    assert platform.instance.get_run_by_id(outsider) is not None  # not the platform's run
    assert events_of(platform, outsider) > 0
    assert retain(platform, MONTH).executions == 0  # nothing more to do


def test_keep_per_workflow_keeps_each_workflows_newest_finished_executions(
    platform: Platform,
) -> None:
    echo = deployed(platform, echo_flow())
    other = deployed(platform, echo_flow("Other"))
    oldest_first = [
        execution(platform, echo, "succeeded", age=timedelta(hours=10 - i)) for i in range(5)
    ]
    with_run = oldest_first[0]
    run_id = ran(platform, echo, with_run)
    running = execution(platform, echo, "running", age=timedelta(hours=20))  # not counted
    others = [execution(platform, other, "failed", age=timedelta(hours=30 + i)) for i in range(2)]

    result = retain(platform, RetentionPolicy(keep=2))

    assert (result.executions, result.runs) == (3, 1)
    assert gone(platform, with_run, [run_id])
    for execution_id in oldest_first[1:3]:
        assert gone(platform, execution_id, [])
    for execution_id in [*oldest_first[3:], running, *others]:
        assert rows_of(platform, execution_id)["executions"] == 1


def test_either_rule_deletes_when_both_are_set(platform: Platform) -> None:
    echo = deployed(platform, echo_flow())
    old = execution(platform, echo, "succeeded", age=OLD)
    newer = [execution(platform, echo, "succeeded", age=timedelta(hours=5 - i)) for i in range(3)]

    result = retain(platform, RetentionPolicy(days=30, keep=2))

    assert result.executions == 2  # the old one (both rules), the oldest recent one (keep)
    assert rows_of(platform, old)["executions"] == 0
    assert rows_of(platform, newer[0])["executions"] == 0
    assert [rows_of(platform, e)["executions"] for e in newer[1:]] == [1, 1]


def test_a_batch_deletes_at_most_batch_size(platform: Platform) -> None:
    echo = deployed(platform, echo_flow())
    for i in range(5):
        execution(platform, echo, "succeeded", age=OLD + timedelta(days=i))

    counts = [retain(platform, MONTH, batch_size=2).executions for _ in range(4)]

    assert counts == [2, 2, 1, 0]
    with platform.session() as session:
        assert session.scalar(select(func.count()).select_from(Execution)) == 0


def test_a_batch_takes_the_oldest_first(platform: Platform) -> None:
    echo = deployed(platform, echo_flow())
    oldest = execution(platform, echo, "succeeded", age=OLD + timedelta(days=3))
    middle = execution(platform, echo, "succeeded", age=OLD + timedelta(days=2))
    newest = execution(platform, echo, "succeeded", age=OLD)

    assert retain(platform, MONTH, batch_size=2).executions == 2

    assert [rows_of(platform, e)["executions"] for e in (oldest, middle, newest)] == [0, 0, 1]


# -- what it never deletes, whatever the row says ------------------------------------------------


def test_a_finished_row_with_an_open_waitpoint_is_kept(platform: Platform) -> None:
    """A row read as succeeded while its run parked (the status sensor not there yet)."""
    approval = deployed(platform, approval_flow())
    stale = execution(platform, approval, "succeeded", age=OLD)
    run_id = ran(platform, approval, stale)

    assert retain(platform, MONTH).executions == 0

    assert intact(platform, stale, [run_id])


def test_a_child_an_open_waitpoint_waits_for_is_kept(platform: Platform) -> None:
    echo = deployed(platform, echo_flow())
    parent = execution(platform, echo, "waiting", age=OLD)
    child = execution(platform, echo, "succeeded", age=OLD)
    with platform.session() as session:
        session.add(
            Waitpoint(
                execution_id=parent,
                node_id="sub",
                step_key="sub",
                run_id="r",
                kind="child",
                child_execution_id=child,
            )
        )

    assert retain(platform, MONTH).executions == 0
    assert rows_of(platform, child)["executions"] == 1

    with platform.session() as session:
        session.execute(update(Waitpoint).values(status="resumed"))
    assert retain(platform, MONTH).executions == 1
    assert rows_of(platform, child)["executions"] == 0


def test_a_finished_row_whose_run_is_still_going_is_left_and_released(platform: Platform) -> None:
    echo = deployed(platform, echo_flow())
    stale = execution(platform, echo, "failed", age=OLD)
    run_id = going(platform, echo, stale, DagsterRunStatus.STARTED)

    result = retain(platform, MONTH)

    assert (result.executions, result.skipped) == (0, 1)
    assert intact(platform, stale, [run_id])
    with platform.session() as session:
        row = session.get(Execution, stale)
        assert row is not None and row.launch_token is None  # a retry may claim it again


def test_an_execution_a_retry_holds_is_kept(platform: Platform) -> None:
    echo = deployed(platform, echo_flow())
    held = execution(
        platform,
        echo,
        "failed",
        age=OLD,
        launch_token=str(uuid.uuid4()),
        launch_claimed_at=utcnow(),
    )

    assert retain(platform, MONTH).executions == 0

    assert rows_of(platform, held)["executions"] == 1


def test_retention_off_deletes_nothing(platform: Platform) -> None:
    echo = deployed(platform, echo_flow())
    old = finished(platform, echo, "succeeded", OLD)

    result = retain(platform, RetentionPolicy())

    assert result.executions == 0
    assert result.summary().startswith("retention off")
    assert intact(platform, old, runs_of(platform, old))


# -- the sensor ----------------------------------------------------------------------------------


def tick(platform: Platform, settings: Settings) -> str:
    sensor = make_retention_sensor(
        settings=settings,
        client_factory=lambda instance: DagsterClient("http://unused.invalid", instance=instance),
    )
    result = sensor(build_sensor_context(instance=platform.instance, sensor_name=sensor.name))
    assert isinstance(result, SkipReason)
    return str(result.skip_message)


def test_a_sensor_tick_deletes_one_batch_and_says_what_it_did(platform: Platform) -> None:
    echo = deployed(platform, echo_flow())
    old = [finished(platform, echo, "succeeded", OLD + timedelta(hours=i)) for i in range(3)]
    settings = platform.settings.model_copy(
        update={"retention_days": 30, "retention_batch_size": 2}
    )

    assert tick(platform, settings) == (
        "deleted 2 executions (2 Dagster runs with their event logs); "
        "policy: delete finished executions finished more than 30 days ago"
    )
    assert tick(platform, settings).startswith("deleted 1 executions (1 Dagster runs")
    assert tick(platform, settings).startswith("deleted 0 executions")
    assert all(rows_of(platform, e)["executions"] == 0 for e in old)


def test_a_sensor_tick_with_retention_unset_does_nothing(platform: Platform) -> None:
    echo = deployed(platform, echo_flow())
    old = finished(platform, echo, "succeeded", OLD)

    assert tick(platform, platform.settings).startswith("retention off")

    assert intact(platform, old, runs_of(platform, old))


def test_retention_is_off_by_default() -> None:
    settings = Settings(_env_file=None)
    assert (settings.retention_days, settings.retention_keep_per_workflow) == (None, None)
    assert not RetentionPolicy.from_settings(settings).active


def test_every_table_with_an_execution_id_is_one_retention_deletes() -> None:
    """A new table holding execution ids must be added to control/retention.py."""
    covered = {model.__tablename__ for model in PER_EXECUTION} | {"executions"}
    holding = {table.name for table in Base.metadata.sorted_tables if "execution_id" in table.c}
    assert holding <= covered
