"""The platform's sensors, one tick at a time: what each tick launches, resumes and writes back.

Each test evaluates a single tick with Dagster's `build_sensor_context` (or
`build_run_status_sensor_context`) on `instance_for_test()`, against a real SQLite platform
database. Parked runs are real: the workflow runs in process on the test instance with the
database waitpoint store, so its waitpoint rows, tags and step stats are what a run worker
writes. The only fake is the webserver: `RecordingDagsterClient` records the GraphQL actions
and adds the runs they would create to the instance. The daemon path (sensors ticking on
their own in a real Dagster) is covered by tests/api/test_waitpoints_e2e.py and the other
end-to-end tests.
"""

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from dagster import (
    DagsterEventType,
    DagsterInstance,
    DagsterRunStatus,
    SensorDefinition,
    SkipReason,
    build_run_status_sensor_context,
    build_sensor_context,
)
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from flowmaestro_dagster.adapter.ops import INPUTS_RESOURCE, SERVICES_RESOURCE
from flowmaestro_dagster.adapter.resources import (
    static_services_resource,
    workflow_inputs_resource,
)
from flowmaestro_dagster.control.executions import run_tags, start_execution, version_row
from flowmaestro_dagster.control.hooks import DELIVERY_RETENTION
from flowmaestro_dagster.control.requests import ExecutionCreate
from flowmaestro_dagster.control.waitpoints import decide
from flowmaestro_dagster.engines.jobs import build_job
from flowmaestro_dagster.engines.local import execute_workflow, run_config_for
from flowmaestro_dagster.errors import DagsterUnavailable
from flowmaestro_dagster.orchestration.sensors import (
    make_execution_status_sensor,
    make_launch_reconciler_sensor,
    make_waitpoint_sensor,
)
from flowmaestro_dagster.settings import Settings
from flowmaestro_dagster.store.db import get_engine, session_scope
from flowmaestro_dagster.store.models import Execution, Waitpoint, WebhookDelivery, utcnow
from flowmaestro_dagster.store.waitpoints import DatabaseWaitpointStore
from flowmaestro_dagster.tags import (
    EXECUTION_TAG,
    PARENT_RUN_TAG,
    PARKED_TAG,
    RESUME_TAG,
    ROOT_RUN_TAG,
    WAIT_KINDS,
    WAITING_TAG,
    WAITING_TAGS,
)
from flowmaestro_dagster.testing.recording_client import RecordingDagsterClient
from tests.builders import chain, node
from tests.deploy import deploy, fresh_user

NOTHING_DONE = "due 0, expired 0, children 0, notified 0, resumed 0, failed 0"


def wait_flow() -> dict[str, Any]:
    """input → an hour's wait → output."""
    return chain(
        node("in", "input", inputName="who"),
        node("pause", "wait", durationValue=1, durationUnit="hours"),
        node("out", "output", outputName="done", value="{{who}}"),
        name="Timer",
    )


def approval_flow() -> dict[str, Any]:
    """input → prep → an approval → output."""
    return chain(
        node("in", "input", inputName="who"),
        node("prep", "transform", transformType="template", template="prepared {{who}}", outputVariable="prepared"),
        node("review", "humanReview", reviewPrompt="Ship {{who}}?", outputVariable="approval"),
        node("out", "output", outputName="result", value="{{prepared}}"),
        name="Approval",
    )  # fmt: skip


def echo_flow() -> dict[str, Any]:
    return chain(
        node("in", "input", inputName="who"),
        node("out", "output", outputName="said", value="hi {{who}}"),
        name="Echo",
    )


# -- fixtures ------------------------------------------------------------------------------------


@pytest.fixture
def settings(platform_db: str) -> Settings:
    return Settings(
        database_url=platform_db,
        wait_sleep_threshold_seconds=0,  # every wait parks
        reconcile_after_seconds=10,
        launch_lease_seconds=60,
        secret_key="sensor-test-secret-0123456789",
        callback_signing_secret="sensor-test-signing-0123456789",
    )


def resumer(settings: Settings, client: RecordingDagsterClient) -> SensorDefinition:
    return make_waitpoint_sensor(settings=settings, client_factory=lambda _: client)


def reconciler(settings: Settings, client: RecordingDagsterClient) -> SensorDefinition:
    return make_launch_reconciler_sensor(settings=settings, client_factory=lambda _: client)


def evaluate(sensor: SensorDefinition, instance: DagsterInstance) -> str:
    """One tick, as the daemon evaluates it; the tick's skip message."""
    result = sensor(build_sensor_context(instance=instance, sensor_name=sensor.name))
    assert isinstance(result, SkipReason)
    return str(result.skip_message)


# -- rows and runs -------------------------------------------------------------------------------


def committed_execution(
    settings: Settings, definition: dict[str, Any], *, age_seconds: float = 0
) -> str:
    """A deployed workflow's execution as the API commits it (no run yet), `age_seconds` old."""
    with session_scope(get_engine(settings.database_url)) as session:
        user = fresh_user(session)
        workflow_id = deploy(session, user, definition)
        session.commit()
        execution, _ = start_execution(
            session,
            user=user,
            workflow_id=workflow_id,
            body=ExecutionCreate(inputs={"who": "ada"}),
            idempotency_key=None,
            default_ttl_seconds=3600,
            shards=1,
        )
        execution.created_at = utcnow() - timedelta(seconds=age_seconds)
        return execution.id


def run_in_process(settings: Settings, instance: DagsterInstance, execution_id: str) -> str:
    """Run the execution's version on the instance as a run worker would (its tags, inputs and
    the database waitpoint store) and record the run on the execution as a launch does."""
    with session_scope(get_engine(settings.database_url)) as session:
        execution = session.get(Execution, execution_id)
        assert execution is not None
        tags = run_tags(execution)
        definition = committed_definition(session, execution)
        job_name, inputs = execution.job_name, dict(execution.inputs)
    store = DatabaseWaitpointStore(settings.database_url, sleep_threshold_seconds=0)
    compiled = build_job(
        definition,
        job_name=job_name,
        resource_defs={
            INPUTS_RESOURCE: workflow_inputs_resource,
            SERVICES_RESOURCE: static_services_resource(settings, waitpoints=store),
        },
    )
    result = execute_workflow(compiled, inputs, instance=instance, tags=tags, log_level="ERROR")
    with session_scope(get_engine(settings.database_url)) as session:
        session.execute(
            update(Execution)
            .where(Execution.id == execution_id)
            .values(run_id=result.run_id, latest_run_id=result.run_id, launched_at=utcnow())
        )
    return result.run_id


def committed_definition(session: Session, execution: Execution) -> dict[str, Any]:
    version = version_row(session, execution)
    assert version is not None
    return dict(version.definition)


def parked(settings: Settings, instance: DagsterInstance, definition: dict[str, Any]) -> str:
    """An execution whose run ended at a waitpoint; returns the execution id."""
    execution_id = committed_execution(settings, definition)
    run_id = run_in_process(settings, instance, execution_id)
    run = instance.get_run_by_id(run_id)
    assert run is not None and run.status == DagsterRunStatus.SUCCESS
    assert run.tags.get(WAITING_TAG) in WAIT_KINDS
    with session_scope(get_engine(settings.database_url)) as session:
        session.execute(
            update(Execution).where(Execution.id == execution_id).values(status="waiting")
        )
    return execution_id


def waitpoint_of(settings: Settings, execution_id: str) -> Waitpoint:
    with session_scope(get_engine(settings.database_url)) as session:
        row = session.scalar(select(Waitpoint).where(Waitpoint.execution_id == execution_id))
        assert row is not None
        return row


def execution_row(settings: Settings, execution_id: str) -> Execution:
    with session_scope(get_engine(settings.database_url)) as session:
        row = session.get(Execution, execution_id)
        assert row is not None
        return row


def set_waitpoint(settings: Settings, waitpoint_id: str, **values: Any) -> None:
    with session_scope(get_engine(settings.database_url)) as session:
        session.execute(update(Waitpoint).where(Waitpoint.id == waitpoint_id).values(**values))


def expected_run_tags(settings: Settings, execution_id: str) -> dict[str, str]:
    with session_scope(get_engine(settings.database_url)) as session:
        execution = session.get(Execution, execution_id)
        assert execution is not None
        return run_tags(execution)


# -- waitpoint_resumer ---------------------------------------------------------------------------


def test_a_due_datetime_waitpoint_resumes_its_parked_run_once(
    settings: Settings, instance: DagsterInstance, client: RecordingDagsterClient
) -> None:
    execution_id = parked(settings, instance, wait_flow())
    waitpoint = waitpoint_of(settings, execution_id)
    assert (waitpoint.kind, waitpoint.status) == ("datetime", "pending")
    set_waitpoint(settings, waitpoint.id, due_at=utcnow() - timedelta(seconds=1))
    sensor = resumer(settings, client)

    assert (
        evaluate(sensor, instance)
        == "due 1, expired 0, children 0, notified 0, resumed 1, failed 0"
    )

    [call] = client.calls
    execution = execution_row(settings, execution_id)
    assert call.action == "reexecute_steps"
    assert call.arguments["parent_run_id"] == waitpoint.run_id
    assert call.arguments["root_run_id"] == waitpoint.run_id
    assert call.arguments["step_keys"] == ["pause", "out"]  # not the input that already ran
    assert call.arguments["tags"] == {
        **expected_run_tags(settings, execution_id),
        RESUME_TAG: waitpoint.run_id,
        PARENT_RUN_TAG: waitpoint.run_id,  # Dagster groups the resumed run with its root
        ROOT_RUN_TAG: waitpoint.run_id,
    }
    assert (call.arguments["location"], call.arguments["job"]) == (
        execution.location_name,
        execution.job_name,
    )
    assert call.arguments["run_config"] == run_config_for({"who": "ada"})
    resumed = waitpoint_of(settings, execution_id)
    assert (resumed.status, resumed.resume_run_id) == ("resumed", call.run_id)
    assert (execution.latest_run_id, execution.status) == (call.run_id, "queued")
    # The runs page's waiting filter no longer lists it; the timeline still knows it parked.
    parked_run = instance.get_run_by_id(waitpoint.run_id)
    assert parked_run is not None
    parked_tags = parked_run.tags
    assert not set(WAITING_TAGS) & set(parked_tags)
    assert parked_tags[PARKED_TAG] == "datetime"

    assert evaluate(sensor, instance) == NOTHING_DONE
    assert len(client.calls) == 1


def test_a_decided_approval_resumes_its_parked_run(
    settings: Settings, instance: DagsterInstance, client: RecordingDagsterClient
) -> None:
    execution_id = parked(settings, instance, approval_flow())
    with session_scope(get_engine(settings.database_url)) as session:
        waitpoint = session.scalar(select(Waitpoint).where(Waitpoint.execution_id == execution_id))
        assert waitpoint is not None and waitpoint.kind == "approval"
        decide(
            session,
            waitpoint=waitpoint,
            user=None,
            via="link",
            decision="approve",
            value=None,
            comment="ship it",
        )

    assert evaluate(resumer(settings, client), instance) == (
        "due 0, expired 0, children 0, notified 0, resumed 1, failed 0"
    )

    [call] = client.calls_to("reexecute_steps")
    assert call.arguments["step_keys"] == ["review", "out"]
    assert call.arguments["tags"][RESUME_TAG] == waitpoint.run_id
    assert call.arguments["tags"][EXECUTION_TAG] == execution_id
    assert waitpoint_of(settings, execution_id).status == "resumed"


def test_a_tick_with_nothing_due_says_so_and_launches_nothing(
    settings: Settings, instance: DagsterInstance, client: RecordingDagsterClient
) -> None:
    execution_id = parked(settings, instance, wait_flow())  # due in an hour
    parked(settings, instance, approval_flow())  # nobody decided

    assert evaluate(resumer(settings, client), instance) == NOTHING_DONE

    assert client.calls == []
    assert waitpoint_of(settings, execution_id).status == "pending"


def test_a_resume_another_process_holds_waits_for_its_lease_to_expire(
    settings: Settings, instance: DagsterInstance, client: RecordingDagsterClient
) -> None:
    execution_id = parked(settings, instance, wait_flow())
    waitpoint = waitpoint_of(settings, execution_id)
    set_waitpoint(
        settings, waitpoint.id, status="resuming", resume_claimed_at=utcnow() - timedelta(seconds=5)
    )
    sensor = resumer(settings, client)

    assert evaluate(sensor, instance) == NOTHING_DONE
    assert client.calls == []

    set_waitpoint(settings, waitpoint.id, resume_claimed_at=utcnow() - timedelta(seconds=61))
    assert evaluate(sensor, instance).endswith("resumed 1, failed 0")
    assert len(client.calls_to("reexecute_steps")) == 1


def test_a_resume_launched_before_a_crash_is_recorded_not_launched_again(
    settings: Settings, instance: DagsterInstance, client: RecordingDagsterClient
) -> None:
    execution_id = parked(settings, instance, wait_flow())
    waitpoint = waitpoint_of(settings, execution_id)
    set_waitpoint(settings, waitpoint.id, due_at=utcnow() - timedelta(seconds=1))
    sensor = resumer(settings, client)
    evaluate(sensor, instance)
    [first] = client.calls
    # The process died after Dagster took the re-execution and before the row said so.
    set_waitpoint(
        settings,
        waitpoint.id,
        status="resuming",
        resume_run_id=None,
        resume_claimed_at=utcnow() - timedelta(seconds=61),
    )

    assert evaluate(sensor, instance).endswith("resumed 1, failed 0")

    assert client.calls == [first]
    assert waitpoint_of(settings, execution_id).resume_run_id == first.run_id


# -- execution_launch_reconciler -----------------------------------------------------------------


def test_the_reconciler_launches_a_committed_execution_without_a_run_once(
    settings: Settings, instance: DagsterInstance, client: RecordingDagsterClient
) -> None:
    stranded = committed_execution(settings, echo_flow(), age_seconds=60)
    fresh = committed_execution(settings, echo_flow())  # the API is still launching it
    sensor = reconciler(settings, client)

    assert evaluate(sensor, instance) == (
        "launched 1, held elsewhere 0, failed 0; "
        "purged 0 expired idempotency keys, 0 expired checkpoints and 0 old webhook deliveries"
    )

    [call] = client.calls
    execution = execution_row(settings, stranded)
    assert call.action == "launch"
    assert call.arguments["tags"] == expected_run_tags(settings, stranded)
    assert (call.arguments["location"], call.arguments["job"]) == (
        execution.location_name,
        execution.job_name,
    )
    assert call.arguments["run_config"] == run_config_for({"who": "ada"})
    assert (execution.run_id, execution.latest_run_id) == (call.run_id, call.run_id)
    assert execution.launched_at is not None and execution.launch_token is None
    assert execution_row(settings, fresh).launched_at is None

    assert evaluate(sensor, instance).startswith("launched 0, held elsewhere 0, failed 0;")
    assert len(client.calls) == 1


def test_a_launch_dagster_refuses_is_released_for_the_next_tick(
    settings: Settings, instance: DagsterInstance, client: RecordingDagsterClient
) -> None:
    execution_id = committed_execution(settings, echo_flow(), age_seconds=60)
    sensor = reconciler(settings, client)
    client.refuse = DagsterUnavailable("the webserver is down")

    assert evaluate(sensor, instance).startswith("launched 0, held elsewhere 0, failed 1;")
    refused = execution_row(settings, execution_id)
    assert refused.launched_at is None and refused.launch_claimed_at is None
    assert refused.error == "launch failed: the webserver is down"

    client.refuse = None
    assert evaluate(sensor, instance).startswith("launched 1,")
    launched = execution_row(settings, execution_id)
    assert launched.run_id == client.calls[0].run_id and launched.error is None


def test_a_run_launched_before_a_crash_is_recorded_not_launched_again(
    settings: Settings, instance: DagsterInstance, client: RecordingDagsterClient
) -> None:
    execution_id = committed_execution(settings, echo_flow(), age_seconds=60)
    with session_scope(get_engine(settings.database_url)) as session:
        execution = session.get(Execution, execution_id)
        assert execution is not None
        # Dagster took the launch; the process died before it wrote the run id down.
        earlier = client.launch(
            location=execution.location_name,
            job=execution.job_name,
            run_config=run_config_for(execution.inputs),
            tags=run_tags(execution),
        )
    client.calls.clear()

    assert evaluate(reconciler(settings, client), instance).startswith("launched 1,")

    assert client.calls == []
    assert execution_row(settings, execution_id).run_id == earlier


# -- execution_status_<status> -------------------------------------------------------------------


def finish_tick(
    settings: Settings,
    instance: DagsterInstance,
    client: RecordingDagsterClient,
    run_id: str,
    status: DagsterRunStatus,
    event_type: DagsterEventType,
) -> None:
    """The status sensor's tick for the run's final event."""
    sensor = make_execution_status_sensor(
        status, settings=settings, client_factory=lambda _: client
    )
    run = instance.get_run_by_id(run_id)
    [record] = instance.get_records_for_run(run_id, of_type=event_type).records
    event = record.event_log_entry.dagster_event
    assert run is not None and event is not None
    sensor(
        build_run_status_sensor_context(
            sensor_name=sensor.name,
            dagster_event=event,
            dagster_instance=instance,
            dagster_run=run,
        )
    )


def test_a_finished_run_writes_its_outcome_to_its_execution(
    settings: Settings, instance: DagsterInstance, client: RecordingDagsterClient
) -> None:
    execution_id = committed_execution(settings, echo_flow())
    run_id = run_in_process(settings, instance, execution_id)
    assert execution_row(settings, execution_id).status == "queued"

    finish_tick(
        settings, instance, client, run_id, DagsterRunStatus.SUCCESS, DagsterEventType.RUN_SUCCESS
    )

    execution = execution_row(settings, execution_id)
    [record] = instance.get_run_records()
    assert record.start_time is not None and record.end_time is not None
    assert execution.status == "succeeded"
    assert execution.finished_at == datetime.fromtimestamp(record.end_time, UTC)
    assert execution.started_at == datetime.fromtimestamp(record.start_time, UTC)
    assert execution.latest_run_id == run_id
    assert client.calls == []


def test_a_run_that_parked_leaves_its_execution_waiting(
    settings: Settings, instance: DagsterInstance, client: RecordingDagsterClient
) -> None:
    execution_id = committed_execution(settings, wait_flow())
    run_id = run_in_process(settings, instance, execution_id)

    finish_tick(
        settings, instance, client, run_id, DagsterRunStatus.SUCCESS, DagsterEventType.RUN_SUCCESS
    )

    execution = execution_row(settings, execution_id)
    assert (execution.status, execution.finished_at) == ("waiting", None)


def test_reconciler_forgets_webhook_deliveries_past_the_retention(
    settings: Settings, instance: DagsterInstance, client: RecordingDagsterClient
) -> None:
    execution_id = committed_execution(settings, echo_flow())
    workflow_id = execution_row(settings, execution_id).workflow_id
    with session_scope(get_engine(settings.database_url)) as session:
        old = utcnow() - DELIVERY_RETENTION - timedelta(minutes=1)
        session.add(WebhookDelivery(workflow_id=workflow_id, trigger_id="t", received_at=old, outcome="rejected"))  # fmt: skip
        session.add(WebhookDelivery(workflow_id=workflow_id, trigger_id="t", outcome="rejected"))

    assert evaluate(reconciler(settings, client), instance).endswith("and 1 old webhook deliveries")
    with session_scope(get_engine(settings.database_url)) as session:
        assert session.scalar(select(func.count()).select_from(WebhookDelivery)) == 1
