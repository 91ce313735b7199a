"""Schedule triggers, one tick at a time: what a tick submits, the shard's schedules, validation.

Ticks are evaluated with Dagster's `build_schedule_context` on `instance_for_test()` against a
real SQLite platform database; the only fake is the webserver (`RecordingDagsterClient`
records the launch and adds the run it would create). The daemon's own ticking is Dagster's.
"""

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from dagster import (
    DagsterInstance,
    ScheduleDefinition,
    SkipReason,
    build_schedule_context,
)
from sqlalchemy import select

from flowmaestro_dagster.compile.validation import validate
from flowmaestro_dagster.control.requests import WorkflowSettingsIn
from flowmaestro_dagster.control.schedules import (
    WorkflowSchedule,
    deployed_schedules,
    next_fire_time,
    schedule_trigger,
)
from flowmaestro_dagster.control.workflows import (
    archive_workflow,
    loadable_versions,
    mark_deployed,
    update_workflow,
)
from flowmaestro_dagster.orchestration.schedules import make_workflow_schedule
from flowmaestro_dagster.settings import Settings, get_settings
from flowmaestro_dagster.store.db import get_engine, session_scope
from flowmaestro_dagster.store.models import Execution, IdempotencyKey, User
from flowmaestro_dagster.tags import USER_TAG, WORKFLOW_ID_TAG
from flowmaestro_dagster.testing.recording_client import RecordingDagsterClient
from tests.builders import chain, node
from tests.deploy import deploy, fresh_user

MONDAY_9 = datetime(2026, 11, 30, 9, 0, tzinfo=UTC)


def scheduled_flow(
    cron: str = "0 9 * * 1", *, name: str = "Weekly Digest", **trigger: Any
) -> dict[str, Any]:
    return chain(
        node("start", "trigger", triggerType="schedule", schedule=cron, **trigger),
        node("out", "output", outputName="done", value="ok"),
        name=name,
    )


# -- fixtures ------------------------------------------------------------------------------------


@pytest.fixture
def settings(platform_db: str) -> Settings:
    return Settings(
        database_url=platform_db,
        launch_lease_seconds=60,
        secret_key="schedule-test-secret-0123456789",
        callback_signing_secret="schedule-test-signing-0123456789",
    )


def deployed(settings: Settings, definition: dict[str, Any]) -> tuple[str, str]:
    """A workflow created and deployed by a fresh user: (workflow id, owner id)."""
    with session_scope(get_engine(settings.database_url)) as session:
        user = fresh_user(session)
        workflow_id = deploy(session, user, definition, settings=WorkflowSettingsIn(priority=7))
        session.commit()
        return workflow_id, user.id


def shard_schedules(settings: Settings) -> list[WorkflowSchedule]:
    with session_scope(get_engine(settings.database_url)) as session:
        rows = loadable_versions(session, shard=0, shards=1)
        return deployed_schedules(session, rows, default_timezone=settings.schedule_timezone)


def the_schedule(
    settings: Settings, client: RecordingDagsterClient, workflow_id: str
) -> ScheduleDefinition:
    (entry,) = [s for s in shard_schedules(settings) if s.workflow_id == workflow_id]
    return make_workflow_schedule(entry, settings=settings, client_factory=lambda _: client)


def tick(schedule: ScheduleDefinition, instance: DagsterInstance, when: datetime) -> str:
    """One tick as the daemon evaluates it for the slot `when`; the tick's skip message."""
    context = build_schedule_context(instance=instance, scheduled_execution_time=when)
    data = schedule.evaluate_tick(context)
    assert not data.run_requests  # never a run Dagster starts on its own
    return str(data.skip_message)


def ticked(
    settings: Settings, instance: DagsterInstance, client: RecordingDagsterClient, **trigger: Any
) -> tuple[str, ScheduleDefinition]:
    """A scheduled workflow deployed, and its schedule ticked once for MONDAY_9."""
    workflow_id, _ = deployed(settings, scheduled_flow(**trigger))
    schedule = the_schedule(settings, client, workflow_id)
    tick(schedule, instance, MONDAY_9)
    return workflow_id, schedule


def set_status(settings: Settings, execution_id: str, status: str) -> None:
    with session_scope(get_engine(settings.database_url)) as session:
        row = session.get(Execution, execution_id)
        assert row is not None
        row.status = status


def executions(settings: Settings, workflow_id: str) -> list[Execution]:
    with session_scope(get_engine(settings.database_url)) as session:
        rows = session.scalars(select(Execution).where(Execution.workflow_id == workflow_id)).all()
        session.expunge_all()
        return list(rows)


# -- ticks ---------------------------------------------------------------------------------------


def test_a_tick_submits_one_execution_as_the_owner_and_launches_it(
    settings: Settings, instance: DagsterInstance, client: RecordingDagsterClient
) -> None:
    workflow_id, owner_id = deployed(settings, scheduled_flow())
    message = tick(the_schedule(settings, client, workflow_id), instance, MONDAY_9)

    (execution,) = executions(settings, workflow_id)
    assert execution.user_id == owner_id and execution.priority == 7
    assert f"submitted execution {execution.id}" in message
    with session_scope(get_engine(settings.database_url)) as session:
        key = session.scalar(select(IdempotencyKey.key))
    assert key == f"schedule:{workflow_id}:2026-11-30T09:00:00+00:00"
    (launch,) = client.calls_to("launch")
    tags = launch.arguments["tags"]
    assert tags[USER_TAG] == owner_id and tags[WORKFLOW_ID_TAG] == workflow_id
    assert tags["dagster/priority"] == "7"
    assert launch.arguments["job"] == execution.job_name
    assert execution.id in launch.arguments["tags"].values()


def test_the_same_tick_twice_runs_the_slot_once(
    settings: Settings, instance: DagsterInstance, client: RecordingDagsterClient
) -> None:
    workflow_id, schedule = ticked(settings, instance, client, overlap="allow")
    again = tick(schedule, instance, MONDAY_9)  # a daemon restart re-evaluating the slot

    (execution,) = executions(settings, workflow_id)
    assert again.endswith(f"already submitted as execution {execution.id}")
    assert len(client.calls_to("launch")) == 1
    tick(schedule, instance, MONDAY_9 + timedelta(weeks=1))  # the next slot is a new one
    assert len(executions(settings, workflow_id)) == 2


def test_overlap_skip_skips_while_an_execution_is_in_progress(
    settings: Settings, instance: DagsterInstance, client: RecordingDagsterClient
) -> None:
    workflow_id, schedule = ticked(settings, instance, client)  # overlap defaults to skip
    (first,) = executions(settings, workflow_id)
    set_status(settings, first.id, "running")

    message = tick(schedule, instance, MONDAY_9 + timedelta(weeks=1))
    assert f"skipped (overlap=skip): execution {first.id} of this workflow is running" in message
    assert len(executions(settings, workflow_id)) == 1

    set_status(settings, first.id, "succeeded")
    tick(schedule, instance, MONDAY_9 + timedelta(weeks=2))
    assert len(executions(settings, workflow_id)) == 2


def test_overlap_allow_submits_while_one_is_running(
    settings: Settings, instance: DagsterInstance, client: RecordingDagsterClient
) -> None:
    workflow_id, schedule = ticked(settings, instance, client, overlap="allow")
    tick(schedule, instance, MONDAY_9 + timedelta(weeks=1))
    assert len(executions(settings, workflow_id)) == 2


def test_overlap_queue_keeps_at_most_one_waiting(
    settings: Settings, instance: DagsterInstance, client: RecordingDagsterClient
) -> None:
    workflow_id, schedule = ticked(settings, instance, client, overlap="queue")
    (first,) = executions(settings, workflow_id)
    message = tick(schedule, instance, MONDAY_9 + timedelta(weeks=1))
    assert f"skipped (overlap=queue): execution {first.id} of this workflow is queued" in message
    set_status(settings, first.id, "running")
    tick(schedule, instance, MONDAY_9 + timedelta(weeks=2))  # the running one does not block
    assert len(executions(settings, workflow_id)) == 2


def test_without_launch_on_submit_the_reconciler_launches(
    settings: Settings, instance: DagsterInstance, client: RecordingDagsterClient
) -> None:
    workflow_id, _ = deployed(settings, scheduled_flow())
    deferred = settings.model_copy(update={"launch_on_submit": False})
    (entry,) = shard_schedules(settings)
    schedule = make_workflow_schedule(entry, settings=deferred, client_factory=lambda _: client)
    assert "the launch reconciler launches it" in tick(schedule, instance, MONDAY_9)
    assert len(executions(settings, workflow_id)) == 1 and not client.calls_to("launch")


def test_an_archived_workflow_has_no_schedule_and_its_stale_tick_submits_nothing(
    settings: Settings, instance: DagsterInstance, client: RecordingDagsterClient
) -> None:
    workflow_id, owner_id = deployed(settings, scheduled_flow())
    schedule = the_schedule(settings, client, workflow_id)
    with session_scope(get_engine(settings.database_url)) as session:
        owner = session.get(User, owner_id)
        assert owner is not None
        archive_workflow(session, user=owner, workflow_id=workflow_id)
    assert shard_schedules(settings) == []
    # A code location not yet reloaded still ticks once: the control plane refuses it.
    assert "archived" in tick(schedule, instance, MONDAY_9)
    assert executions(settings, workflow_id) == []


# -- which schedules a shard defines ----------------------------------------------------------


def test_a_redeploy_moves_the_schedule_to_the_new_version(settings: Settings) -> None:
    workflow_id, owner_id = deployed(settings, scheduled_flow(timezone="Europe/Paris"))
    (before,) = shard_schedules(settings)
    with session_scope(get_engine(settings.database_url)) as session:
        owner = session.get(User, owner_id)
        assert owner is not None
        update_workflow(
            session,
            user=owner,
            workflow_id=workflow_id,
            definition=scheduled_flow("30 8 * * *"),
            name=None,
            description=None,
            settings=None,
        )
        mark_deployed(session, user=owner, workflow_id=workflow_id, version=2)
    (after,) = shard_schedules(settings)
    assert before.name == after.name == f"weekly_digest_{workflow_id[:8]}_schedule"
    assert (before.cron, before.timezone) == ("0 9 * * 1", "Europe/Paris")
    assert (after.cron, after.timezone) == ("30 8 * * *", "UTC")  # the platform default
    assert before.job_name.endswith("_v1") and after.job_name.endswith("_v2")


def test_a_workflow_without_a_schedule_trigger_has_no_schedule(settings: Settings) -> None:
    deployed(settings, chain(node("start", "trigger", triggerType="manual"), node("out", "output")))
    assert shard_schedules(settings) == []


def test_the_shard_repository_holds_the_schedule_of_a_deployed_version(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    from flowmaestro_dagster.definitions import build_shard

    workflow_id, _ = deployed(settings, scheduled_flow(timezone="America/New_York"))
    monkeypatch.setenv("FLOWMAESTRO_DATABASE_URL", settings.database_url)
    monkeypatch.setenv("FLOWMAESTRO_CODE_LOCATION_SHARDS", "1")
    get_settings.cache_clear()
    try:
        repository = build_shard(0)
    finally:
        get_settings.cache_clear()
    (schedule,) = repository.schedule_defs
    assert schedule.name == f"weekly_digest_{workflow_id[:8]}_schedule"
    assert schedule.cron_schedule == "0 9 * * 1"
    assert schedule.execution_timezone == "America/New_York"
    assert repository.has_job(schedule.job_name)


def test_missed_ticks_skip_drops_a_late_slot_and_runs_a_timely_one(
    settings: Settings, instance: DagsterInstance, client: RecordingDagsterClient
) -> None:
    """MONDAY_9 is days ago: evaluating it now is a catch-up after downtime."""
    workflow_id, schedule = ticked(
        settings, instance, client, cron="* * * * *", overlap="allow", missedTicks="skip"
    )
    assert executions(settings, workflow_id) == []
    late = tick(schedule, instance, MONDAY_9 + timedelta(minutes=1))
    assert "skipped (missedTicks=skip): evaluated more than 120 s after its slot" in late
    now = datetime.now(UTC).replace(second=0, microsecond=0)
    assert "submitted execution" in tick(schedule, instance, now)
    assert len(executions(settings, workflow_id)) == 1


def test_missed_ticks_run_once_is_the_default_and_runs_the_late_slot(
    settings: Settings, instance: DagsterInstance, client: RecordingDagsterClient
) -> None:
    workflow_id, _ = ticked(settings, instance, client)
    (entry,) = [s for s in shard_schedules(settings) if s.workflow_id == workflow_id]
    assert entry.missed == "run_once"
    assert len(executions(settings, workflow_id)) == 1


def test_next_fire_time_follows_the_timezone_across_daylight_saving() -> None:
    before_dst = datetime(2026, 3, 28, 12, 0, tzinfo=UTC)  # Paris: CET (UTC+1) until 29 March
    first = next_fire_time("0 9 * * *", "Europe/Paris", before_dst)
    second = next_fire_time("0 9 * * *", "Europe/Paris", first + timedelta(seconds=1))
    assert first.astimezone(UTC) == datetime(2026, 3, 29, 7, 0, tzinfo=UTC)  # CEST: UTC+2
    assert second.astimezone(UTC) == datetime(2026, 3, 30, 7, 0, tzinfo=UTC)
    monday = next_fire_time("0 9 * * 1", "UTC", MONDAY_9 - timedelta(minutes=1))
    assert monday == MONDAY_9


# -- the trigger node ----------------------------------------------------------------------------


def test_schedule_trigger_reads_the_builder_spellings() -> None:
    definition = chain(
        node("t", "trigger", triggerType="cron", cron=" 0 */6 * * * ", timeZone="Asia/Tokyo"),
        node("out", "output"),
    )
    trigger = schedule_trigger(definition)
    assert trigger is not None
    assert (trigger.cron, trigger.timezone, trigger.overlap) == (
        "0 */6 * * *",
        "Asia/Tokyo",
        "skip",
    )


@pytest.mark.parametrize(
    ("trigger", "code", "field"),
    [
        ({"schedule": "0 9 * *"}, "invalid_schedule", "schedule"),
        ({"cron": "every monday"}, "invalid_schedule", "cron"),
        ({"schedule": "0 9 30 2 *"}, "invalid_schedule", "schedule"),
        ({"schedule": "0 9 * * 1", "timezone": "Mars/Olympus"}, "invalid_timezone", "timezone"),
        ({"schedule": "0 9 * * 1", "overlap": "sometimes"}, "invalid_overlap", "overlap"),
        ({"schedule": "0 9 * * 1", "missedTicks": "all"}, "invalid_missed_ticks", "missedTicks"),
        ({}, "missing_config", "schedule"),
    ],
)
def test_an_invalid_schedule_trigger_is_an_error_on_its_field(
    trigger: dict[str, Any], code: str, field: str
) -> None:
    definition = chain(
        node("start", "trigger", triggerType="schedule", **trigger), node("out", "output")
    )
    errors = [p for p in validate(definition) if p.severity == "error"]
    assert [(p.code, p.node_id, p.field) for p in errors] == [(code, "start", field)]


def test_a_valid_schedule_trigger_has_no_problem() -> None:
    definition = scheduled_flow("*/5 * * * *", timezone="America/New_York", overlap="queue")
    assert [p for p in validate(definition) if p.node_id == "start"] == []


def test_the_default_timezone_setting_must_be_known() -> None:
    with pytest.raises(ValueError, match="unknown timezone"):
        Settings(schedule_timezone="Nowhere/Town")


def test_a_skip_reason_is_what_a_tick_returns(
    settings: Settings, instance: DagsterInstance, client: RecordingDagsterClient
) -> None:
    workflow_id, _ = deployed(settings, scheduled_flow())
    schedule = the_schedule(settings, client, workflow_id)
    context = build_schedule_context(instance=instance, scheduled_execution_time=MONDAY_9)
    assert isinstance(schedule(context), SkipReason)
    (execution,) = executions(settings, workflow_id)
    assert execution.inputs == {}
