"""Sensors of the platform code location: launch reconciliation and execution status sync.

Each factory takes optional `settings` (default: read from the environment at every tick) and
`client_factory` (default: the GraphQL client of those settings on the tick's instance), so a
tick can be evaluated without a webserver (tests/test_sensors.py).
"""

from collections.abc import Callable

from dagster import (
    DagsterInstance,
    DagsterRunStatus,
    DefaultSensorStatus,
    RunStatusSensorContext,
    SensorDefinition,
    SensorEvaluationContext,
    SkipReason,
    run_status_sensor,
    sensor,
)
from sqlalchemy.orm import Session

from flowmaestro_dagster.control.alerts import tick as evaluate_alerts
from flowmaestro_dagster.control.checkpoints import purge_expired_checkpoints
from flowmaestro_dagster.control.client import DagsterClient
from flowmaestro_dagster.control.executions import purge_expired_keys, reconcile_launches, refresh
from flowmaestro_dagster.control.hooks import purge_old_deliveries
from flowmaestro_dagster.control.retention import RetentionPolicy, apply_retention
from flowmaestro_dagster.control.waitpoints import tick
from flowmaestro_dagster.settings import Settings, get_settings
from flowmaestro_dagster.store.db import get_engine, session_scope
from flowmaestro_dagster.store.models import Execution
from flowmaestro_dagster.tags import EXECUTION_TAG

ClientFactory = Callable[[DagsterInstance], DagsterClient]


def graphql_client(settings: Settings, instance: DagsterInstance) -> DagsterClient:
    """The production client: actions through the webserver's GraphQL, reads from `instance`."""
    return DagsterClient(
        settings.dagster_graphql_url, timeout=settings.graphql_timeout_seconds, instance=instance
    )


def for_tick(
    settings: Settings | None, client_factory: ClientFactory | None, instance: DagsterInstance
) -> tuple[Settings, DagsterClient]:
    """The settings and client of one tick (sensors here, workflow schedules in schedules.py)."""
    current = settings or get_settings()
    client = client_factory(instance) if client_factory else graphql_client(current, instance)
    return current, client


def _session_sensor(
    name: str,
    description: str,
    minimum_interval_seconds: int,
    settings: Settings | None,
    client_factory: ClientFactory | None,
    work: Callable[[Session, DagsterClient, Settings], str],
) -> SensorDefinition:
    """A sensor whose tick does `work` in one platform database session and shows what it did
    (the returned summary) as the tick's skip reason."""

    @sensor(
        name=name,
        minimum_interval_seconds=minimum_interval_seconds,
        default_status=DefaultSensorStatus.RUNNING,
        description=description,
    )
    def evaluate(context: SensorEvaluationContext) -> SkipReason:
        current, client = for_tick(settings, client_factory, context.instance)
        with session_scope(get_engine(current.database_url)) as session:
            summary = work(session, client, current)
        return SkipReason(summary)

    return evaluate


def make_launch_reconciler_sensor(
    minimum_interval_seconds: int = 10,
    *,
    settings: Settings | None = None,
    client_factory: ClientFactory | None = None,
) -> SensorDefinition:
    """Launches executions that were committed but never launched (the API died, Dagster was
    down): the same exactly-once claim as the API's own launch; an execution whose launches
    keep failing is failed after FLOWMAESTRO_LAUNCH_MAX_ATTEMPTS. Also purges expired
    idempotency keys, checkpoints and webhook deliveries older than a week."""

    def reconcile(session: Session, client: DagsterClient, current: Settings) -> str:
        counts = reconcile_launches(
            session,
            client,
            older_than_seconds=current.reconcile_after_seconds,
            lease_seconds=current.launch_lease_seconds,
            max_attempts=current.launch_max_attempts,
        )
        purged = purge_expired_keys(session)
        checkpoints = purge_expired_checkpoints(session)
        deliveries = purge_old_deliveries(session)
        gave_up = f", gave up on {counts['gave_up']}" if counts["gave_up"] else ""
        return (
            f"launched {counts['launched']}, held elsewhere {counts['skipped']}, "
            f"failed {counts['failed']}{gave_up}; purged {purged} expired idempotency keys, "
            f"{checkpoints} expired checkpoints and {deliveries} old webhook deliveries"
        )

    return _session_sensor(
        "execution_launch_reconciler",
        "Launches committed executions that have no Dagster run yet.",
        minimum_interval_seconds,
        settings,
        client_factory,
        reconcile,
    )


def make_waitpoint_sensor(
    minimum_interval_seconds: int = 5,
    *,
    settings: Settings | None = None,
    client_factory: ClientFactory | None = None,
) -> SensorDefinition:
    """Resolves due, expired and child waitpoints, resumes parked runs that are ready, and
    sends approver notifications (control/notifications.py).

    Approvals and callbacks resume at once through the API; this sensor is their backstop.
    """

    def resume(session: Session, client: DagsterClient, current: Settings) -> str:
        counts = tick(session, client, lease_seconds=current.launch_lease_seconds, settings=current)
        return ", ".join(f"{k} {v}" for k, v in counts.items())

    return _session_sensor(
        "waitpoint_resumer",
        "Resumes executions parked at waitpoints once they resolve.",
        minimum_interval_seconds,
        settings,
        client_factory,
        resume,
    )


def make_retention_sensor(
    minimum_interval_seconds: int = 60,
    *,
    settings: Settings | None = None,
    client_factory: ClientFactory | None = None,
) -> SensorDefinition:
    """Deletes finished executions past FLOWMAESTRO_RETENTION_DAYS / _KEEP_PER_WORKFLOW with
    their Dagster runs, event logs and platform rows, FLOWMAESTRO_RETENTION_BATCH_SIZE a tick
    (control/retention.py); a tick with both rules unset does nothing."""

    def retain(session: Session, client: DagsterClient, current: Settings) -> str:
        return apply_retention(
            session,
            client.instance,
            policy=RetentionPolicy.from_settings(current),
            batch_size=current.retention_batch_size,
            lease_seconds=current.launch_lease_seconds,
        ).summary()

    return _session_sensor(
        "run_history_retention",
        "Deletes old finished executions with their runs, event logs and platform rows.",
        minimum_interval_seconds,
        settings,
        client_factory,
        retain,
    )


def make_alert_sensor(
    minimum_interval_seconds: int = 30,
    *,
    settings: Settings | None = None,
    client_factory: ClientFactory | None = None,
) -> SensorDefinition:
    """Evaluates the alert rules (control/alerts.py): records what fires and resolves, and
    sends each firing and each resolve once through the rule's channel."""

    def alert(session: Session, client: DagsterClient, current: Settings) -> str:
        counts = evaluate_alerts(session, client, current)
        return ", ".join(f"{k} {v}" for k, v in counts.items())

    return _session_sensor(
        "alert_evaluator",
        "Evaluates alert rules and notifies their channels when an alert fires or resolves.",
        minimum_interval_seconds,
        settings,
        client_factory,
        alert,
    )


def make_execution_status_sensor(
    status: DagsterRunStatus,
    *,
    settings: Settings | None = None,
    client_factory: ClientFactory | None = None,
) -> SensorDefinition:
    """Writes a finished run's outcome back to its execution (for lists, filters, analytics)."""

    @run_status_sensor(
        name=f"execution_status_{status.value.lower()}",
        run_status=status,
        monitor_all_code_locations=True,
        default_status=DefaultSensorStatus.RUNNING,
        minimum_interval_seconds=5,
    )
    def execution_status(context: RunStatusSensorContext) -> None:
        execution_id = context.dagster_run.tags.get(EXECUTION_TAG)
        if not execution_id:
            return
        current, client = for_tick(settings, client_factory, context.instance)
        with session_scope(get_engine(current.database_url)) as session:
            execution = session.get(Execution, execution_id)
            if execution is not None:
                refresh(session, client, execution)

    return execution_status


def platform_sensors() -> list[SensorDefinition]:
    from flowmaestro_dagster.orchestration.tracing import make_trace_export_sensor  # uses for_tick

    return [
        make_launch_reconciler_sensor(get_settings().reconciler_interval_seconds),
        make_trace_export_sensor(get_settings().otel_export_interval_seconds),
        make_waitpoint_sensor(get_settings().waitpoint_interval_seconds),
        make_alert_sensor(get_settings().alert_interval_seconds),
        make_retention_sensor(get_settings().retention_interval_seconds),
        *(
            make_execution_status_sensor(status)
            for status in (
                DagsterRunStatus.SUCCESS,
                DagsterRunStatus.FAILURE,
                DagsterRunStatus.CANCELED,
            )
        ),
    ]
