"""Schedule triggers: which deployed workflows have one, and what one tick submits.

A tick goes through the API's own path (`start_execution`, then `launch_execution`): the
execution is the owner's, its run carries the queue, priority and per-user tags, and an
idempotency key made of the workflow and the tick's scheduled time makes a repeated tick (a
daemon restart, a double evaluation) return the execution it already submitted
(docs/triggers.md).
"""

import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from flowmaestro_dagster.compile.naming import sanitize
from flowmaestro_dagster.compile.validation import invalid_cron, unknown_timezone
from flowmaestro_dagster.control.client import DagsterClient
from flowmaestro_dagster.control.executions import launch_execution, start_execution
from flowmaestro_dagster.control.requests import ExecutionCreate
from flowmaestro_dagster.control.workflows import ACTIVE_EXECUTION_STATUSES
from flowmaestro_dagster.dagster_internals import cron_string_iterator
from flowmaestro_dagster.errors import Conflict, InvalidInputs, NotFound
from flowmaestro_dagster.spec.configs import TriggerConfig
from flowmaestro_dagster.spec.parse import parse_workflow
from flowmaestro_dagster.store.models import (
    Execution,
    IdempotencyKey,
    User,
    Workflow,
    WorkflowVersion,
)

log = logging.getLogger(__name__)

DEFAULT_OVERLAP = "skip"
DEFAULT_MISSED = "run_once"


@dataclass(frozen=True)
class ScheduleTrigger:
    """The schedule trigger node of a definition (the first, by node id, if several)."""

    node_id: str
    cron: str
    timezone: str | None
    overlap: str
    missed: str


@dataclass(frozen=True)
class WorkflowSchedule:
    """One deployed workflow's schedule, as its shard's repository defines it."""

    name: str
    workflow_id: str
    job_name: str
    cron: str
    timezone: str
    overlap: str
    missed: str = DEFAULT_MISSED


def schedule_trigger(definition: dict[str, Any]) -> ScheduleTrigger | None:
    spec, _ = parse_workflow(definition)
    if spec is None:
        return None
    for node_id in sorted(spec.nodes):
        config = spec.nodes[node_id].config
        if isinstance(config, TriggerConfig) and config.kind == "schedule" and config.schedule:
            return ScheduleTrigger(
                node_id=node_id,
                cron=config.schedule.strip(),
                timezone=config.timezone or None,
                overlap=config.overlap or DEFAULT_OVERLAP,
                missed=config.missed or DEFAULT_MISSED,
            )
    return None


def schedule_name_for(workflow: Workflow) -> str:
    """Named after the workflow, not the version: a redeploy moves the schedule (its state,
    running or stopped, and its tick history stay with the name)."""
    return f"{sanitize(workflow.name.lower())[:40]}_{workflow.id[:8]}_schedule"


def deployed_schedules(
    session: Session, versions: list[WorkflowVersion], *, default_timezone: str
) -> list[WorkflowSchedule]:
    """The schedules of `versions` (a shard's loadable ones): deployed versions of workflows
    that are not archived, whose definition has a schedule trigger."""
    deployed = {row.workflow_id: row for row in versions if row.status == "deployed"}
    if not deployed:
        return []
    workflows = session.scalars(
        select(Workflow).where(Workflow.id.in_(sorted(deployed)), Workflow.archived_at.is_(None))
    ).all()
    schedules = []
    for workflow in workflows:
        row = deployed[workflow.id]
        if workflow.deployed_version != row.version:
            continue  # a stale row: no need to parse its definition
        trigger = schedule_trigger(row.definition)
        if trigger is None:
            continue
        schedules.append(
            WorkflowSchedule(
                name=schedule_name_for(workflow),
                workflow_id=workflow.id,
                job_name=row.job_name,
                cron=trigger.cron,
                timezone=trigger.timezone or default_timezone,
                overlap=trigger.overlap,
                missed=trigger.missed,
            )
        )
    return sorted(schedules, key=lambda s: s.name)


def next_fire_time(cron: str, timezone: str, after: datetime) -> datetime:
    """The first slot at or after `after`, computed as the schedule daemon computes it."""
    return next(cron_string_iterator(after.timestamp(), cron, timezone))


def missed_tick(scheduled_time: datetime, now: datetime, grace_seconds: float) -> bool:
    """A tick evaluated more than `grace_seconds` after its slot: the daemon was down (or
    behind) at the slot and is catching up."""
    return now - scheduled_time > timedelta(seconds=grace_seconds)


@dataclass(frozen=True)
class ListedSchedule:
    """A workflow's schedule trigger as its owner lists it; `next_fire_at` only while the
    schedule exists (deployed, not archived)."""

    trigger: ScheduleTrigger
    name: str
    timezone: str
    next_fire_at: datetime | None


def listed_schedule(
    session: Session, workflow: Workflow, *, default_timezone: str, now: datetime
) -> ListedSchedule | None:
    """The schedule of the version the triggers listing reads (the deployed one, else the
    latest). The next fire time is the daemon's next slot; a schedule an operator stopped in
    the Dagster UI does not fire then (its state is Dagster's, not the platform's)."""
    number = workflow.deployed_version or workflow.latest_version
    row = session.scalar(
        select(WorkflowVersion).where(
            WorkflowVersion.workflow_id == workflow.id, WorkflowVersion.version == number
        )
    )
    trigger = schedule_trigger(row.definition) if row is not None else None
    if trigger is None:
        return None
    timezone = trigger.timezone or default_timezone
    live = workflow.deployed_version is not None and workflow.archived_at is None
    live = live and invalid_cron(trigger.cron) is None and not unknown_timezone(timezone)
    return ListedSchedule(
        trigger=trigger,
        name=schedule_name_for(workflow),
        timezone=timezone,
        next_fire_at=next_fire_time(trigger.cron, timezone, now) if live else None,
    )


def tick_key(workflow_id: str, scheduled_time: datetime) -> str:
    """The idempotency key of one schedule slot: the same for every evaluation of that tick."""
    moment = scheduled_time.astimezone(UTC).replace(microsecond=0).isoformat()
    return f"schedule:{workflow_id}:{moment}"


def submit_scheduled(
    session: Session,
    client: DagsterClient | None,
    *,
    workflow_id: str,
    scheduled_time: datetime,
    overlap: str,
    default_ttl_seconds: int,
    shards: int,
    lease_seconds: int,
    missed: str = DEFAULT_MISSED,
    now: datetime | None = None,
    missed_grace_seconds: float = 120,
) -> str:
    """Submit the execution of one tick (and launch it unless `client` is None: then the
    launch reconciler does); returns what happened, for the tick's log. With `missed="skip"` a
    tick evaluated more than `missed_grace_seconds` after its slot submits nothing."""
    key = tick_key(workflow_id, scheduled_time)
    slot = scheduled_time.astimezone(UTC).isoformat()
    workflow = session.get(Workflow, workflow_id)
    if workflow is None:
        return f"{slot}: workflow {workflow_id} no longer exists; nothing submitted"
    owner = session.get(User, workflow.owner_id)
    if owner is None:
        return f"{slot}: the workflow's owner no longer exists; nothing submitted"
    earlier = session.scalar(
        select(IdempotencyKey.execution_id).where(
            IdempotencyKey.user_id == owner.id,
            IdempotencyKey.workflow_id == workflow.id,
            IdempotencyKey.key == key,
        )
    )
    if earlier is not None:
        return f"{slot}: already submitted as execution {earlier}"
    if missed == "skip" and missed_tick(
        scheduled_time, now or datetime.now(UTC), missed_grace_seconds
    ):
        return (
            f"{slot}: skipped (missedTicks=skip): evaluated more than "
            f"{missed_grace_seconds:g} s after its slot"
        )
    blocking = _overlapping(session, workflow_id, overlap)
    if blocking is not None:
        return (
            f"{slot}: skipped (overlap={overlap}): execution {blocking.id} of this workflow "
            f"is {blocking.status}"
        )
    try:
        execution, replayed = start_execution(
            session,
            user=owner,
            workflow_id=workflow_id,
            body=ExecutionCreate(),
            idempotency_key=key,
            default_ttl_seconds=default_ttl_seconds,
            shards=shards,
        )
    except (Conflict, InvalidInputs, NotFound) as exc:
        return f"{slot}: nothing submitted: {exc}"
    if replayed:
        return f"{slot}: already submitted as execution {execution.id}"
    submitted = f"{slot}: submitted execution {execution.id} (version {execution.version})"
    if client is None:
        return f"{submitted}; the launch reconciler launches it"
    try:
        run_id = launch_execution(session, client, execution.id, lease_seconds=lease_seconds)
    except Exception as exc:  # noqa: BLE001 - committed: the reconciler launches it later
        log.warning("launch of scheduled execution %s deferred: %s", execution.id, exc)
        return f"{submitted}; launch deferred to the reconciler: {exc}"
    return f"{submitted}, run {run_id}" if run_id else f"{submitted}; launched elsewhere"


def _overlapping(session: Session, workflow_id: str, overlap: str) -> Execution | None:
    """The execution that makes this tick skip: any unfinished one for `skip`, one still
    waiting to start for `queue` (at most one waits), none for `allow`."""
    if overlap == "allow":
        return None
    statuses = ("queued",) if overlap == "queue" else ACTIVE_EXECUTION_STATUSES
    return session.scalar(
        select(Execution)
        .where(Execution.workflow_id == workflow_id, Execution.status.in_(statuses))
        .order_by(Execution.created_at)
        .limit(1)
    )
