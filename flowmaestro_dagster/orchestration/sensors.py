"""Sensors of the platform code location: launch reconciliation and execution status sync."""

from dagster import (
    DagsterRunStatus,
    DefaultSensorStatus,
    RunStatusSensorContext,
    SensorDefinition,
    SensorEvaluationContext,
    SkipReason,
    run_status_sensor,
    sensor,
)

from flowmaestro_dagster.control.checkpoints import purge_expired_checkpoints
from flowmaestro_dagster.control.client import DagsterClient
from flowmaestro_dagster.control.executions import purge_expired_keys, reconcile_launches, refresh
from flowmaestro_dagster.control.waitpoints import tick
from flowmaestro_dagster.settings import get_settings
from flowmaestro_dagster.store.db import get_engine, session_scope
from flowmaestro_dagster.store.models import Execution


def make_launch_reconciler_sensor(minimum_interval_seconds: int = 10) -> SensorDefinition:
    """Launches executions that were committed but never launched (the API died, Dagster was
    down): the same exactly-once claim as the API's own launch. Also purges expired
    idempotency keys and checkpoints."""

    @sensor(
        name="execution_launch_reconciler",
        minimum_interval_seconds=minimum_interval_seconds,
        default_status=DefaultSensorStatus.RUNNING,
        description="Launches committed executions that have no Dagster run yet.",
    )
    def execution_launch_reconciler(context: SensorEvaluationContext) -> SkipReason:
        settings = get_settings()
        client = DagsterClient(
            settings.dagster_graphql_url,
            timeout=settings.graphql_timeout_seconds,
            instance=context.instance,
        )
        with session_scope(get_engine(settings.database_url)) as session:
            counts = reconcile_launches(
                session,
                client,
                older_than_seconds=settings.reconcile_after_seconds,
                lease_seconds=settings.launch_lease_seconds,
            )
            purged = purge_expired_keys(session)
            checkpoints = purge_expired_checkpoints(session)
        return SkipReason(
            f"launched {counts['launched']}, held elsewhere {counts['skipped']}, "
            f"failed {counts['failed']}; purged {purged} expired idempotency keys and "
            f"{checkpoints} expired checkpoints"
        )

    return execution_launch_reconciler


def make_waitpoint_sensor(minimum_interval_seconds: int = 5) -> SensorDefinition:
    """Resolves due, expired and child waitpoints and resumes parked runs that are ready.

    Approvals and callbacks resume at once through the API; this sensor is their backstop.
    """

    @sensor(
        name="waitpoint_resumer",
        minimum_interval_seconds=minimum_interval_seconds,
        default_status=DefaultSensorStatus.RUNNING,
        description="Resumes executions parked at waitpoints once they resolve.",
    )
    def waitpoint_resumer(context: SensorEvaluationContext) -> SkipReason:
        settings = get_settings()
        client = DagsterClient(
            settings.dagster_graphql_url,
            timeout=settings.graphql_timeout_seconds,
            instance=context.instance,
        )
        with session_scope(get_engine(settings.database_url)) as session:
            counts = tick(session, client, lease_seconds=settings.launch_lease_seconds)
        return SkipReason(", ".join(f"{k} {v}" for k, v in counts.items()))

    return waitpoint_resumer


def make_execution_status_sensor(status: DagsterRunStatus) -> SensorDefinition:
    """Writes a finished run's outcome back to its execution (for lists, filters, analytics)."""

    @run_status_sensor(
        name=f"execution_status_{status.value.lower()}",
        run_status=status,
        monitor_all_code_locations=True,
        default_status=DefaultSensorStatus.RUNNING,
        minimum_interval_seconds=5,
    )
    def execution_status(context: RunStatusSensorContext) -> None:
        execution_id = context.dagster_run.tags.get("flowmaestro/execution_id")
        if not execution_id:
            return
        settings = get_settings()
        client = DagsterClient(settings.dagster_graphql_url, instance=context.instance)
        with session_scope(get_engine(settings.database_url)) as session:
            execution = session.get(Execution, execution_id)
            if execution is not None:
                refresh(session, client, execution)

    return execution_status


def platform_sensors() -> list[SensorDefinition]:
    return [
        make_launch_reconciler_sensor(get_settings().reconciler_interval_seconds),
        make_waitpoint_sensor(get_settings().waitpoint_interval_seconds),
        *(
            make_execution_status_sensor(status)
            for status in (
                DagsterRunStatus.SUCCESS,
                DagsterRunStatus.FAILURE,
                DagsterRunStatus.CANCELED,
            )
        ),
    ]
