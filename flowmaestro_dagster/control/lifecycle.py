"""Pause, resume, cancel and retry an execution.

Pause terminates the execution's running Dagster run after tagging it `flowmaestro/paused=true`:
the run worker starts no more nodes, the run ends CANCELED (so it holds no run slot, and
Dagster's run retries, which only re-execute FAILURE runs, leave it alone) and the execution's
status reads `paused`. Resume re-executes the paused run FROM_FAILURE: nodes that finished are
not run again (their outputs come from the database IO manager), the interrupted and the
unstarted ones are. A resume claims the execution with a lease and looks for a run already
tagged `flowmaestro/resume_of=<paused run>` first, so a paused execution resumes once.

Resume also continues an execution parked at a checkpoint with `pauseHere` (a manual waitpoint):
the waitpoint is resolved by the user and the parked run is resumed through the waitpoint
machinery. A retry of a failure downstream of a live checkpoint re-executes from it.
"""

from collections.abc import Sequence
from datetime import timedelta

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from flowmaestro_dagster.control import executions as executions_service
from flowmaestro_dagster.control.checkpoints import retry_from_checkpoint
from flowmaestro_dagster.control.client import DagsterClient, RunInfo
from flowmaestro_dagster.control.executions import execution_status
from flowmaestro_dagster.control.waitpoints import (
    RESUME_TAG,
    record_decision,
    resume_run,
    waiting_executions,
)
from flowmaestro_dagster.errors import Conflict
from flowmaestro_dagster.store.models import Decision, Execution, User, Waitpoint, utcnow
from flowmaestro_dagster.tags import PAUSED_TAG


def _status(session: Session, execution: Execution, runs: Sequence[RunInfo]) -> str:
    """The execution's status as GET shows it (a run that ended at a waitpoint: waiting)."""
    status = execution_status(execution, runs)
    if status in ("succeeded", "queued") and runs and waiting_executions(session, [execution.id]):
        return "waiting"
    return status


def pause_execution(session: Session, client: DagsterClient, execution: Execution) -> None:
    """Stop a running execution at the next node boundary; a paused one stays paused."""
    runs = client.runs_for_execution(execution.id)
    status = _status(session, execution, runs)
    if status in ("paused", "pausing"):
        return  # idempotent
    if status == "waiting":
        raise Conflict(
            "the execution is waiting at a waitpoint: it holds no worker, so there is nothing "
            "to pause (cancel it, or decide its waitpoint)"
        )
    if status != "running" or not runs:
        raise Conflict(f"only a running execution can be paused (this one is {status})")
    latest = runs[-1]
    client.tag_run(latest.run_id, {PAUSED_TAG: "true"})  # before the run can end CANCELED
    execution.paused_run_id = latest.run_id
    execution.paused_at = utcnow()
    session.commit()
    try:
        client.terminate(latest.run_id)
    except Conflict as exc:  # it finished (or failed) before the termination reached it
        client.tag_run(latest.run_id, {PAUSED_TAG: "false"})
        execution.paused_run_id = None
        execution.paused_at = None
        session.commit()
        now = _status(session, execution, client.runs_for_execution(execution.id))
        raise Conflict(f"the execution is {now}: it ended before it could be paused") from exc


def resume_execution(
    session: Session,
    client: DagsterClient,
    execution: Execution,
    *,
    user: User,
    lease_seconds: int,
) -> str | None:
    """Continue a paused execution (or one parked at a pausing checkpoint); the new run id,
    or None when a checkpoint pause resumes in the background."""
    runs = client.runs_for_execution(execution.id)
    status = _status(session, execution, runs)
    if status == "paused":
        return _resume_paused(session, client, execution, lease_seconds=lease_seconds)
    if status == "waiting":
        return _resume_checkpoints(session, client, execution, user, lease_seconds)
    if status == "pausing":
        raise Conflict("the execution is still pausing: resume it once it is paused")
    raise Conflict(f"only a paused execution can be resumed (this one is {status})")


def _resume_paused(
    session: Session, client: DagsterClient, execution: Execution, *, lease_seconds: int
) -> str:
    runs = client.runs_for_execution(execution.id)
    paused = runs[-1]
    now = utcnow()
    claimed = session.execute(
        update(Execution)
        .where(
            Execution.id == execution.id,
            Execution.paused_run_id == paused.run_id,
            (Execution.resume_claimed_at.is_(None))
            | (Execution.resume_claimed_at < now - timedelta(seconds=lease_seconds)),
        )
        .values(resume_claimed_at=now)
    ).rowcount  # type: ignore[attr-defined]
    session.commit()
    if not claimed:
        raise Conflict("the execution is already being resumed")
    try:
        existing = [r for r in runs if r.tags.get(RESUME_TAG) == paused.run_id]
        # Resumed just before a crash? Record that run instead of launching another.
        run_id = (
            existing[0].run_id
            if existing
            else client.reexecute_from_failure(
                paused.run_id, {PAUSED_TAG: "false", RESUME_TAG: paused.run_id}
            )
        )
    except Exception:
        execution.resume_claimed_at = None
        session.commit()
        raise
    execution.paused_run_id = None
    execution.resume_claimed_at = None
    execution.latest_run_id = run_id
    execution.status = "queued"
    execution.finished_at = None
    session.commit()
    return run_id


def _resume_checkpoints(
    session: Session, client: DagsterClient, execution: Execution, user: User, lease_seconds: int
) -> str | None:
    pending = session.scalars(
        select(Waitpoint).where(
            Waitpoint.execution_id == execution.id,
            Waitpoint.kind == "manual",
            Waitpoint.status == "pending",
        )
    ).all()
    if not pending:
        raise Conflict(
            "the execution is waiting at a waitpoint that its decision, callback, due time or "
            "child resumes, not POST /resume"
        )
    at = utcnow().isoformat()
    for waitpoint in pending:
        record_decision(
            session,
            waitpoint,
            Decision(waitpoint_id=waitpoint.id, user_id=user.id, decision="resume"),
            {"decision": "resume", "by": user.email, "at": at},
            conflict="the execution is already being resumed",
        )
    session.commit()
    run_id = None
    for parked_run in sorted({w.run_id for w in pending}):
        run_id = resume_run(
            session,
            client,
            execution_id=execution.id,
            parked_run_id=parked_run,
            lease_seconds=lease_seconds,
        )
    return run_id


def cancel_execution(session: Session, client: DagsterClient, execution: Execution) -> None:
    """Cancel; a paused execution (its run already ended) is marked cancelled here."""
    runs = client.runs_for_execution(execution.id)
    if runs and execution_status(execution, runs) == "paused":
        client.tag_run(runs[-1].run_id, {PAUSED_TAG: "false"})
        execution.paused_run_id = None
        execution.status = "cancelled"
        execution.finished_at = utcnow()
        session.commit()
        return
    executions_service.cancel_execution(session, client, execution)


def retry_execution(session: Session, client: DagsterClient, execution: Execution) -> str:
    """A failed execution re-executes from its latest checkpoint when one precedes every
    failed node, else (and for cancelled ones) from failure."""
    runs = client.runs_for_execution(execution.id)
    if execution_status(execution, runs) == "failed":
        run_id = retry_from_checkpoint(session, client, execution, runs)
        if run_id is not None:
            return run_id
    return executions_service.retry_execution(session, client, execution)


__all__ = [
    "RESUME_TAG",
    "cancel_execution",
    "pause_execution",
    "resume_execution",
    "retry_execution",
]
