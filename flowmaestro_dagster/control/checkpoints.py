"""Checkpoints: the state an execution had at a checkpoint node, kept until it expires.

Run workers save them (`DatabaseCheckpointStore`, what the checkpoint executor calls); the API
shows them (the state inspector); a retry of a failure downstream of a checkpoint re-executes
from the latest one (`retry_from_checkpoint`); the launch reconciler sensor purges expired ones
(`purge_expired_checkpoints`).
"""

from collections.abc import Mapping, Sequence
from datetime import datetime

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from flowmaestro_dagster.control.client import DagsterClient, RunInfo
from flowmaestro_dagster.control.executions import (
    compiled_for,
    launch_config,
    run_tags,
    version_row,
)
from flowmaestro_dagster.errors import NotFound
from flowmaestro_dagster.store.models import Checkpoint, Execution, utcnow
from flowmaestro_dagster.tags import FROM_CHECKPOINT_TAG, RETRY_TAG

# -- reading -------------------------------------------------------------------------------------


def list_checkpoints(
    session: Session, *, execution: Execution, now: datetime | None = None
) -> Sequence[Checkpoint]:
    """The execution's live checkpoints, oldest first (expired ones are not shown)."""
    moment = now or utcnow()
    return session.scalars(
        select(Checkpoint)
        .where(Checkpoint.execution_id == execution.id, Checkpoint.expires_at > moment)
        .order_by(Checkpoint.saved_at, Checkpoint.node_id, Checkpoint.iteration)
    ).all()


def get_checkpoint(
    session: Session, *, execution: Execution, node_id: str, iteration: str = ""
) -> Checkpoint:
    row = session.scalar(
        select(Checkpoint).where(
            Checkpoint.execution_id == execution.id,
            Checkpoint.node_id == node_id,
            Checkpoint.iteration == iteration,
            Checkpoint.expires_at > utcnow(),
        )
    )
    if row is None:
        raise NotFound(f"no live checkpoint at node {node_id!r} of execution {execution.id}")
    return row


def purge_expired_checkpoints(session: Session, *, now: datetime | None = None) -> int:
    """Delete checkpoints past their expiry (the launch reconciler sensor calls this)."""
    result = session.execute(delete(Checkpoint).where(Checkpoint.expires_at <= (now or utcnow())))
    session.commit()
    return int(result.rowcount or 0)  # type: ignore[attr-defined]


# -- retry from the latest checkpoint ------------------------------------------------------------


def _downstream(successors: Mapping[str, set[str]], alias: str) -> set[str]:
    seen: set[str] = set()
    frontier = list(successors.get(alias, ()))
    while frontier:
        current = frontier.pop()
        if current not in seen:
            seen.add(current)
            frontier.extend(successors.get(current, ()))
    return seen


def retry_from_checkpoint(
    session: Session, client: DagsterClient, execution: Execution, runs: Sequence[RunInfo]
) -> str | None:
    """Re-execute everything downstream of the latest live checkpoint that precedes every
    failed node, with the checkpoint's stored state as input; None if no checkpoint covers
    the failure (the caller then re-executes from failure)."""
    from flowmaestro_dagster.control.waitpoints import job_successors, resume_step_keys

    if not runs:
        return None
    failed_run = runs[-1]
    stats = client.step_stats(failed_run.run_id)
    failed = {
        s.step_key.split("[", 1)[0]
        for s in stats
        if s.status is not None and s.status.value == "FAILURE"
    }
    version = version_row(session, execution)
    if not failed or version is None:
        return None
    compiled = compiled_for(version)
    successors = job_successors(compiled)
    candidates = session.scalars(
        select(Checkpoint)
        .where(
            Checkpoint.execution_id == execution.id,
            Checkpoint.iteration == "",  # checkpoints inside loop bodies are not restart points
            Checkpoint.expires_at > utcnow(),
        )
        .order_by(Checkpoint.saved_at.desc())
    ).all()
    for checkpoint in candidates:
        alias = checkpoint.step_key.split("[", 1)[0]
        after = _downstream(successors, alias)
        if not failed <= after:
            continue  # a failure this checkpoint does not precede
        parent_keys = [s.step_key for s in stats]
        keys = [
            key
            for key in resume_step_keys(compiled, [checkpoint.step_key], parent_keys)
            if key.split("[", 1)[0] != alias
        ]
        if not keys:
            continue
        tags = {
            **run_tags(execution),
            RETRY_TAG: failed_run.run_id,
            FROM_CHECKPOINT_TAG: checkpoint.node_id,
        }
        run_id = client.reexecute_steps(
            location=execution.location_name,
            job=execution.job_name,
            parent_run_id=failed_run.run_id,
            root_run_id=runs[0].run_id,
            step_keys=keys,
            run_config=launch_config(execution.inputs),
            tags=tags,
        )
        execution.latest_run_id = run_id
        execution.status = "queued"
        execution.finished_at = None
        execution.error = None
        session.commit()
        return run_id
    return None
