"""Dagster schedules of deployed workflows whose trigger is a schedule (docs/triggers.md).

A schedule targets its version's job by name (the shard's jobs stay lazily built) but never
yields a RunRequest: a run Dagster started itself would have no execution record, no
idempotency key and none of the queue tags. Each tick submits through the control plane
(`control.schedules.submit_scheduled`) and returns a SkipReason saying what it submitted, so
the tick history in the UI reads as a log. Like the sensors, the factory takes optional
`settings` and `client_factory` so one tick can be evaluated in a test (tests/test_schedules.py).
"""

from datetime import UTC, datetime

from dagster import (
    DefaultScheduleStatus,
    ScheduleDefinition,
    ScheduleEvaluationContext,
    SkipReason,
    schedule,
)

from flowmaestro_dagster.control.schedules import WorkflowSchedule, submit_scheduled
from flowmaestro_dagster.orchestration.sensors import ClientFactory, for_tick
from flowmaestro_dagster.settings import Settings
from flowmaestro_dagster.store.db import get_engine, session_scope


def make_workflow_schedule(
    entry: WorkflowSchedule,
    *,
    settings: Settings | None = None,
    client_factory: ClientFactory | None = None,
) -> ScheduleDefinition:
    """The schedule of one deployed workflow; running from the start (a deploy turns it on),
    pausing it in the UI is the operator's switch."""

    @schedule(
        name=entry.name,
        cron_schedule=entry.cron,
        execution_timezone=entry.timezone,
        job_name=entry.job_name,
        default_status=DefaultScheduleStatus.RUNNING,
        description=(
            f"Schedule trigger of workflow {entry.workflow_id} (overlap: {entry.overlap}, "
            f"missed ticks: {entry.missed}); "
            "each tick submits an execution through the platform."
        ),
    )
    def evaluate(context: ScheduleEvaluationContext) -> SkipReason:
        current, client = for_tick(settings, client_factory, context.instance)
        # The daemon always sets the slot; a manual evaluation without one uses the minute.
        scheduled = context.scheduled_execution_time or datetime.now(UTC).replace(
            second=0, microsecond=0
        )
        with session_scope(get_engine(current.database_url)) as session:
            summary = submit_scheduled(
                session,
                client if current.launch_on_submit else None,
                workflow_id=entry.workflow_id,
                scheduled_time=scheduled,
                overlap=entry.overlap,
                default_ttl_seconds=current.idempotency_ttl_seconds,
                shards=current.code_location_shards,
                lease_seconds=current.launch_lease_seconds,
                missed=entry.missed,
                missed_grace_seconds=current.schedule_missed_grace_seconds,
            )
        return SkipReason(summary)

    return evaluate
