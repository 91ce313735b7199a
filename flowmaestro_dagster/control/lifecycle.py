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

Cancel and retry are claims (issue 15), decided by conditional UPDATEs that several API and
sensor processes can race on SQLite and PostgreSQL alike. A cancel sets `cancelled_at` where it
is unset, closes the execution's open waitpoints in the same transaction and then terminates
its active runs; it wins in every state (queued, launching, running, waiting, pausing, paused)
because every launcher — the first launch, a retry, a resume of a paused or a parked run —
records its new run with an UPDATE conditional on `cancelled_at` being unset, and when that
UPDATE finds the execution cancelled it terminates the run it just created. A retry claims the
execution's launch lease (`launch_token`, the first launch's) before it asks Dagster for a run,
and checks after the claim that the run it retries is still the latest: concurrent retries
start one run, the others get 409.
"""

import logging
import uuid
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from flowmaestro_dagster.control.checkpoints import retry_from_checkpoint
from flowmaestro_dagster.control.client import DagsterClient, RunInfo
from flowmaestro_dagster.control.executions import execution_status, stop_run
from flowmaestro_dagster.control.waitpoints import (
    RESUME_TAG,
    cancel_waitpoints,
    clear_waiting,
    record_decision,
    resume_run,
    waiting_executions,
)
from flowmaestro_dagster.errors import Conflict
from flowmaestro_dagster.store.models import Decision, Execution, User, Waitpoint, utcnow
from flowmaestro_dagster.tags import CANCELLED_TAG, PAUSED_TAG, RETRY_TAG

log = logging.getLogger(__name__)

# Dagster run statuses of a run that may still start nodes (CANCELING is already being stopped).
ACTIVE_RUN = frozenset({"QUEUED", "NOT_STARTED", "STARTING", "MANAGED", "STARTED"})
DEFAULT_LEASE_SECONDS = 60


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
            Execution.cancelled_at.is_(None),
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
    # Conditional: a cancel that claimed the execution meanwhile wins over this resume.
    resumed = session.execute(
        update(Execution)
        .where(Execution.id == execution.id, Execution.cancelled_at.is_(None))
        .values(
            paused_run_id=None,
            resume_claimed_at=None,
            latest_run_id=run_id,
            status="queued",
            finished_at=None,
        )
        .execution_options(synchronize_session=False)
    ).rowcount  # type: ignore[attr-defined]
    if not resumed:
        session.execute(
            update(Execution)
            .where(Execution.id == execution.id)
            .values(resume_claimed_at=None)
            .execution_options(synchronize_session=False)
        )
    session.commit()
    session.refresh(execution)
    if not resumed:
        stop_run(client, run_id)
        raise Conflict("the execution was cancelled while it was being resumed: nothing runs")
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


def cancel_execution(
    session: Session, client: DagsterClient, execution: Execution, *, user: User | None = None
) -> None:
    """Cancel a queued, launching, running, waiting, pausing or paused execution; 409 if it has
    already ended (or was cancelled). The cancel is a claim: the one conditional UPDATE that
    sets `cancelled_at` wins, and it closes the execution's open waitpoints in the same
    transaction, each with the reason (who, when) a later decision's 410 quotes. Then every
    run of the execution that may still start nodes is terminated; a launch, retry or resume
    in flight finds the execution cancelled when it records its run and terminates that run
    itself (`stop_run`). A parked or paused run is tagged `flowmaestro/cancelled=true` and its
    event log says who cancelled it and which waitpoints closed."""
    runs = client.runs_for_execution(execution.id)
    status = _status(session, execution, runs)
    retrying = bool(runs) and execution.launch_token is not None  # a retry holds the lease
    if status in ("succeeded", "failed") and not retrying:
        raise Conflict(f"the execution is already {status}")
    now = utcnow()
    paused_run = execution.paused_run_id
    claimed = session.execute(
        update(Execution)
        .where(Execution.id == execution.id, Execution.cancelled_at.is_(None))
        .values(cancelled_at=now, status="cancelled", finished_at=now, paused_run_id=None)
        .execution_options(synchronize_session=False)
    ).rowcount  # type: ignore[attr-defined]
    cancel = _cancel_reason(user, now)
    closed = cancel_waitpoints(session, execution.id, cancel) if claimed else []
    session.commit()
    session.refresh(execution)
    # Also when another cancel won: terminating twice is harmless, a run left running is not.
    _stop_runs(client, execution.id)
    if claimed:  # one a run parked while it was being stopped
        closed += cancel_waitpoints(session, execution.id, cancel)
    session.commit()
    if not claimed:
        raise Conflict("the execution is already cancelled")
    _report_cancel(client, cancel, closed, paused_run if status == "paused" else None)


def _cancel_reason(user: User | None, now: datetime) -> dict[str, Any]:
    """What a cancelled waitpoint keeps as its resolution: who, when, and the sentence a
    later decision, callback or approval page answers 410 with."""
    who = user.email if user is not None else "the platform"
    at = now.isoformat()
    return {
        "decision": "cancelled",
        "by": user.email if user is not None else None,
        "user_id": user.id if user is not None else None,
        "at": at,
        "reason": f"the execution was cancelled by {who} at {at}",
    }


def _report_cancel(
    client: DagsterClient,
    cancel: Mapping[str, Any],
    closed: Sequence[Any],
    paused_run: str | None,
) -> None:
    """Tag the parked (or paused) runs `flowmaestro/cancelled=true` and append the cancel to
    their event logs: `execution.cancelled`, and `waitpoint.cancelled` per waitpoint. A view
    for operators: the database rows are the record, so a failure here is only a warning."""
    by = cancel.get("by") or "the platform"
    runs: dict[str, list[Any]] = {paused_run: []} if paused_run else {}
    for row in closed:
        runs.setdefault(row.run_id, []).append(row)
    for run_id, rows in runs.items():
        ids = [row.id for row in rows]
        what = "waiting" if rows else "paused"
        try:
            client.tag_run(run_id, {CANCELLED_TAG: "true"})
            if rows:
                clear_waiting(client, run_id)  # no longer waiting: off the waiting filter
            client.report_event(
                run_id,
                "execution.cancelled",
                {"by": cancel.get("user_id"), "email": cancel.get("by"), "waitpoints": ids},
                f"Cancelled while {what} by {by}",
            )
            for row in rows:
                client.report_event(
                    run_id,
                    "waitpoint.cancelled",
                    {
                        "waitpoint_id": row.id,
                        "node_id": row.node_id,
                        "kind": row.kind,
                        "by": cancel.get("user_id"),
                        "reason": cancel.get("reason"),
                    },
                    f"Waitpoint {row.kind} of node '{row.node_id}' cancelled by {by}",
                )
        except Exception as exc:  # noqa: BLE001 - the event log is a view; the rows are the record
            log.warning("could not mark run %s as cancelled: %s", run_id, exc)


def _stop_runs(client: DagsterClient, execution_id: str) -> None:
    runs = client.runs_for_execution(execution_id)
    if runs and runs[-1].tags.get(PAUSED_TAG) == "true":
        client.tag_run(runs[-1].run_id, {PAUSED_TAG: "false"})  # cancelled, not paused
    for run in runs:
        if run.status in ACTIVE_RUN:
            stop_run(client, run.run_id)


def retry_execution(
    session: Session,
    client: DagsterClient,
    execution: Execution,
    *,
    lease_seconds: int = DEFAULT_LEASE_SECONDS,
) -> str:
    """A failed execution re-executes from its latest checkpoint when one precedes every
    failed node, else (and for cancelled ones) from failure. 409 unless it is failed or
    cancelled, and for every retry but one of the same run: the retry claims the execution's
    launch lease before it asks Dagster, then checks that the run it retries is still the
    latest (a retry that finished meanwhile added one)."""
    runs = client.runs_for_execution(execution.id)
    status = execution_status(execution, runs)
    if status not in ("failed", "cancelled") or not runs:
        raise Conflict(f"only failed or cancelled executions can be retried (this one is {status})")
    retried = runs[-1].run_id
    cancelled_at = execution.cancelled_at
    token = _claim_launch(session, execution, cancelled_at, lease_seconds=lease_seconds)
    try:
        latest = client.runs_for_execution(execution.id)[-1].run_id
        if latest != retried:
            raise Conflict(f"the execution was already retried: its latest run is {latest}")
        run_id = (
            retry_from_checkpoint(session, client, execution, runs) if status == "failed" else None
        )
        if run_id is None:
            run_id = client.reexecute_from_failure(retried, {RETRY_TAG: retried})
    except Exception:
        session.rollback()
        session.execute(
            update(Execution)
            .where(Execution.id == execution.id, Execution.launch_token == token)
            # A cancel that came meanwhile stays; else the execution is as it was.
            .values(
                launch_token=None, cancelled_at=func.coalesce(Execution.cancelled_at, cancelled_at)
            )
            .execution_options(synchronize_session=False)
        )
        session.commit()
        raise
    return _record_retry(session, client, execution, token, run_id)


def _claim_launch(
    session: Session, execution: Execution, cancelled_at: datetime | None, *, lease_seconds: int
) -> str:
    """Take the execution's launch lease for a retry; 409 if another retry holds it, or if a
    cancel changed the execution since it was read. The claim clears `cancelled_at` (a retry
    of a cancelled execution): a cancel during the retry can then win over it."""
    token = str(uuid.uuid4())
    now = utcnow()
    as_read = (
        Execution.cancelled_at.is_(None)
        if cancelled_at is None
        else Execution.cancelled_at.is_not(None)
    )
    claimed = session.execute(
        update(Execution)
        .where(
            Execution.id == execution.id,
            as_read,
            (Execution.launch_token.is_(None))
            | (Execution.launch_claimed_at < now - timedelta(seconds=lease_seconds)),
        )
        .values(launch_token=token, launch_claimed_at=now, cancelled_at=None)
        .execution_options(synchronize_session=False)
    ).rowcount  # type: ignore[attr-defined]
    session.commit()
    session.refresh(execution)
    if claimed:
        return token
    if (execution.cancelled_at is None) != (cancelled_at is None):
        raise Conflict("the execution was cancelled meanwhile: reload it")
    raise Conflict("the execution is already being retried")


def _record_retry(
    session: Session, client: DagsterClient, execution: Execution, token: str, run_id: str
) -> str:
    """Record the retried run and release the lease, unless a cancel won meanwhile: then the
    run is terminated and the retry answers 409."""
    mine = update(Execution).where(Execution.id == execution.id, Execution.launch_token == token)
    recorded = session.execute(
        mine.where(Execution.cancelled_at.is_(None))
        .values(
            launch_token=None,
            latest_run_id=run_id,
            status="queued",
            finished_at=None,
            launched_at=func.coalesce(Execution.launched_at, utcnow()),
        )
        .execution_options(synchronize_session=False)
    ).rowcount  # type: ignore[attr-defined]
    cancelled = 0
    if not recorded:
        cancelled = session.execute(
            mine.values(
                launch_token=None, latest_run_id=run_id, status="cancelled"
            ).execution_options(synchronize_session=False)
        ).rowcount  # type: ignore[attr-defined]
    session.commit()
    session.refresh(execution)
    if cancelled:
        stop_run(client, run_id)
        raise Conflict("the execution was cancelled while it was being retried: nothing runs")
    return run_id


__all__ = [
    "RESUME_TAG",
    "cancel_execution",
    "pause_execution",
    "resume_execution",
    "retry_execution",
]
