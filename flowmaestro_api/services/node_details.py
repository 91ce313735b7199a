"""A node's attempts in an execution, as `GET /executions/{id}/nodes/{node_id}` shows them.

Everything comes from the `node_attempts` rows the op adapter wrote (one query for the node,
one for its upstream nodes' end times); the timing is derived from those rows alone:
running is an attempt's own start to end, backoff a retried attempt's end to the next
attempt's start, waiting a parked attempt's end to the resumed attempt's start (to now while
nothing resumed it), queued a first attempt's start minus the latest end of its upstream
nodes' attempts in the same run (unknown for a node none of whose upstream nodes ran in that
run: the run's queue and launch time are in the timeline).
"""

from collections.abc import Sequence
from datetime import datetime
from urllib.parse import urlencode

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from flowmaestro_api.schemas import (
    AttemptError,
    AttemptTiming,
    NodeAttemptPublic,
    NodeDetail,
    RetryDecisionPublic,
)
from flowmaestro_dagster.store.attempts import node_attempts
from flowmaestro_dagster.store.models import NodeAttempt, utcnow


def _ms(start: datetime, end: datetime) -> float:
    return round((end - start).total_seconds() * 1000, 3)


def _upstream(row: NodeAttempt) -> list[str]:
    inputs = row.inputs if isinstance(row.inputs, dict) else {}
    upstream = inputs.get("upstream")
    return [str(n) for n in upstream] if isinstance(upstream, list) else []


def _ready_at(
    session: Session, execution_id: str, rows: Sequence[NodeAttempt]
) -> dict[tuple[str, str], datetime]:
    """(run id, node id) -> the end of that upstream node's last attempt in that run."""
    upstream = {n for row in rows for n in _upstream(row)}
    if not upstream:
        return {}
    ends = session.execute(
        select(NodeAttempt.run_id, NodeAttempt.node_id, func.max(NodeAttempt.finished_at))
        .where(
            NodeAttempt.execution_id == execution_id,
            NodeAttempt.node_id.in_(sorted(upstream)),
            NodeAttempt.run_id.in_(sorted({r.run_id for r in rows})),
        )
        .group_by(NodeAttempt.run_id, NodeAttempt.node_id)
    ).all()
    return {(run_id, node_id): end for run_id, node_id, end in ends}


def node_detail(
    session: Session, *, execution_id: str, node_id: str, output_url: str
) -> NodeDetail:
    rows = node_attempts(session, execution_id=execution_id, node_id=node_id)
    ends = _ready_at(session, execution_id, rows)
    now = utcnow()
    attempts = []
    for index, row in enumerate(rows):
        following = next((r for r in rows[index + 1 :] if r.iteration == row.iteration), None)
        timing = AttemptTiming(running_ms=_ms(row.started_at, row.finished_at))
        if row.status == "retrying" and following is not None:
            timing.backoff_ms = _ms(row.finished_at, following.started_at)
        if row.status == "parked":
            timing.waiting_ms = _ms(
                row.finished_at, following.started_at if following is not None else now
            )
        earlier = [r for r in rows[:index] if r.run_id == row.run_id and r.step_key == row.step_key]
        ready = [ends[(row.run_id, n)] for n in _upstream(row) if (row.run_id, n) in ends]
        if not earlier and ready:
            timing.queued_ms = max(0.0, _ms(max(ready), row.started_at))
        error = (
            AttemptError(
                error_class=row.error_class, message=row.error_message, stack=row.error_stack
            )
            if row.error_class
            else None
        )
        retry = (
            RetryDecisionPublic(
                retryable=row.retryable,
                retried=row.status == "retrying",
                delay_seconds=row.retry_delay_seconds,
                max_attempts=row.max_attempts,
                handled_by=row.handled_by,
            )
            if row.error_class
            else None
        )
        attempts.append(
            NodeAttemptPublic(
                attempt=row.attempt,
                iteration=row.iteration,
                run_id=row.run_id,
                step_key=row.step_key,
                status=row.status,
                started_at=row.started_at,
                finished_at=row.finished_at,
                inputs=row.inputs,
                output=row.output,
                output_bytes=row.output_bytes,
                output_truncated=row.output_truncated,
                output_url=(
                    f"{output_url}?{urlencode({'run_id': row.run_id, 'step_key': row.step_key})}"
                    if row.output_truncated
                    else None
                ),
                logs=list(row.logs or []),
                logs_dropped=row.logs_dropped,
                error=error,
                retry=retry,
                timing=timing,
            )
        )
    return NodeDetail(execution_id=execution_id, node_id=node_id, attempts=attempts)


__all__ = ["node_detail"]
