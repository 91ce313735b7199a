"""Per-workflow analytics over a time range (the Prometheus metrics: services/metrics.py).

Analytics count every execution *created* in `[from, to)` (UTC), answered by SQL over indexed
columns of the platform database, never by reading Dagster: aggregate queries over index
ranges of the workflow read from the indexes alone (`ix_executions_analytics`,
`ix_execution_node_stats_range`), so the answer costs what the range holds, not what the
database holds, and nothing is left out (docs/observability.md#workflow-analytics).

The facts come from where the status is synced (control/executions.py `refresh`, run by the
status sensor when a run ends): the status; `duration_ms`, submission to the end of the last
run (finished executions only); and per node, rolled up from its node attempts, errors
(failed attempts: retried ones, final failures and failures onError handled), failures
(steps or loop items whose last attempt failed) and retries (retry requests). An execution
under way has no rolled-up numbers (`facts_recorded_at` NULL): its node attempts are read
instead. Percentiles are nearest-rank (p50 of 1, 2, 3, 4 is 2; p95 of 20 values is the 19th):
`percentile_disc` on PostgreSQL; on SQLite, which has no percentile function, each day's
durations are read from the index and sorted here. `duplicates_prevented` sums the replays of
those executions (a request answered with one of them instead of a new execution), counted on
the execution as they happen.
"""

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Date,
    and_,
    bindparam,
    case,
    cast,
    func,
    literal_column,
    select,
)
from sqlalchemy.orm import Session

from flowmaestro_dagster.control.executions import attempt_node_stats
from flowmaestro_dagster.store.models import Execution, ExecutionNodeStats, NodeAttempt

TERMINAL = ("succeeded", "failed", "cancelled")
PERCENTILES = (50, 95)
PENDING_CHUNK = 500  # executions under way whose attempts one query reads
NodeNumbers = dict[str, int]


def _days(start: datetime, end: datetime) -> list[date]:
    first, last = (
        start.astimezone(UTC).date(),
        (end - timedelta(microseconds=1)).astimezone(UTC).date(),
    )
    return [first + timedelta(days=n) for n in range((last - first).days + 1)]


def _day_bounds(start: datetime, end: datetime) -> list[tuple[date, datetime, datetime]]:
    """Each UTC day of the range with the part of it inside `[start, end)`."""
    bounds = []
    for day in _days(start, end):
        midnight = datetime(day.year, day.month, day.day, tzinfo=UTC)
        bounds.append((day, max(midnight, start), min(midnight + timedelta(days=1), end)))
    return bounds


def nearest_rank(ordered: Sequence[float], p: int) -> float | None:
    """The nearest-rank percentile of sorted values: the ceil(p / 100 * n)-th (None: none)."""
    if not ordered:
        return None
    return ordered[max((len(ordered) * p + 99) // 100, 1) - 1]


@dataclass
class _Scan:
    """What the executions of the range say: counts by day and status, duration percentiles
    by day and overall, replays."""

    statuses: dict[date, dict[str, int]] = field(default_factory=dict)
    percentiles: dict[date | None, dict[int, float | None]] = field(default_factory=dict)
    replays: int = 0


def _scan_postgresql(session: Session, in_range: ColumnElement[bool]) -> _Scan:
    """One statement: ROLLUP(day, status) gives the counts per day and status, and the
    duration percentiles (`percentile_disc`: nearest rank; NULLs ignored) per day and overall."""
    day = cast(func.timezone(literal_column("'UTC'"), Execution.created_at), Date)
    rows = session.execute(
        select(
            day.label("day"),
            Execution.status,
            func.grouping(day).label("all_days"),
            func.grouping(Execution.status).label("all_statuses"),
            func.count().label("n"),
            func.sum(Execution.replays).label("replays"),
            *(
                func.percentile_disc(p / 100).within_group(Execution.duration_ms).label(f"p{p}")
                for p in PERCENTILES
            ),
        )
        .where(in_range)
        .group_by(func.rollup(day, Execution.status))
    )
    scan = _Scan()
    for row in rows:
        if row.all_days:
            scan.percentiles[None] = {p: _float(getattr(row, f"p{p}")) for p in PERCENTILES}
            scan.replays = int(row.replays or 0)
        elif row.all_statuses:
            scan.percentiles[row.day] = {p: _float(getattr(row, f"p{p}")) for p in PERCENTILES}
        else:
            scan.statuses.setdefault(row.day, {})[row.status] = int(row.n)
    return scan


def _scan_sqlite(session: Session, workflow_id: str, start: datetime, end: datetime) -> _Scan:
    """Day by day, each an index range (grouping the whole range by a day expression took
    twice as long): counts by status, and the finished executions' durations as one text,
    sorted here for the nearest ranks (reading each rank's row with ORDER BY ... OFFSET took
    four times as long). Two statements, built once."""
    in_day = and_(
        Execution.workflow_id == workflow_id,
        Execution.created_at >= bindparam("low", type_=Execution.created_at.type),
        Execution.created_at < bindparam("high", type_=Execution.created_at.type),
    )
    counts = (
        select(
            Execution.status,
            func.count().label("n"),
            func.sum(Execution.replays).label("replays"),
        )
        .where(in_day)
        .group_by(Execution.status)
    )
    # One text of the day's durations, not a row each: tens of thousands of rows allocate as
    # many objects the garbage collector tracks, and the full collections they set off (one
    # every few requests, ~170 ms in the API's heap) were the p99. The text reads back exactly:
    # SQLite writes 15 significant digits, and durations are stored rounded to the microsecond.
    timed = select(func.group_concat(Execution.duration_ms)).where(
        in_day, Execution.duration_ms.is_not(None)
    )
    connection = session.connection()
    scan = _Scan()
    everything: list[float] = []
    for day, low, high in _day_bounds(start, end):
        bounds = {"low": low, "high": high}
        rows = connection.execute(counts, bounds).all()
        if not rows:
            continue
        scan.statuses[day] = {row.status: int(row.n) for row in rows}
        scan.replays += sum(int(row.replays or 0) for row in rows)
        joined = connection.execute(timed, bounds).scalar()
        durations = sorted(map(float, joined.split(","))) if joined else []
        scan.percentiles[day] = {p: nearest_rank(durations, p) for p in PERCENTILES}
        everything.extend(durations)
    everything.sort()  # runs of sorted days: a merge
    scan.percentiles[None] = {p: nearest_rank(everything, p) for p in PERCENTILES}
    return scan


def _float(value: Any) -> float | None:
    return float(value) if value is not None else None


def _add(nodes: dict[str, NodeNumbers], node_id: str, numbers: Mapping[Any, Any]) -> None:
    entry = nodes.setdefault(
        node_id, {"errors": 0, "failures": 0, "retries": 0, "executions_with_errors": 0}
    )
    for key in entry:
        entry[key] += int(numbers[key] or 0)


def _node_numbers(
    session: Session, workflow_id: str, start: datetime, end: datetime, pending: Iterable[str]
) -> dict[str, NodeNumbers]:
    """Per node: the rolled-up numbers of settled executions plus the attempts of those under
    way (`pending`, whose numbers are not rolled up)."""
    stats = ExecutionNodeStats
    nodes: dict[str, NodeNumbers] = {}
    rows = session.execute(
        select(
            stats.node_id,
            func.sum(stats.errors).label("errors"),
            func.sum(stats.failures).label("failures"),
            func.sum(stats.retries).label("retries"),
            func.sum(case((stats.errors > 0, 1), else_=0)).label("executions_with_errors"),
        )
        .where(stats.workflow_id == workflow_id, stats.created_at >= start, stats.created_at < end)
        .group_by(stats.node_id)
    )
    for row in rows:
        _add(nodes, row.node_id, row._mapping)
    ids = list(pending)
    for begin in range(0, len(ids), PENDING_CHUNK):
        chunk = ids[begin : begin + PENDING_CHUNK]
        for row in session.execute(attempt_node_stats(NodeAttempt.execution_id.in_(chunk))):
            _add(nodes, row.node_id, {**row._mapping, "executions_with_errors": 1})
    return nodes


def workflow_analytics(
    session: Session, *, workflow_id: str, start: datetime, end: datetime
) -> dict[str, Any]:
    """Analytics of the workflow's executions created in `[start, end)`: rates, duration
    percentiles overall and per UTC day, errors and retries per node, duplicates prevented."""
    in_range = and_(
        Execution.workflow_id == workflow_id,
        Execution.created_at >= start,
        Execution.created_at < end,
    )
    if session.get_bind().dialect.name == "postgresql":
        scan = _scan_postgresql(session, in_range)
    else:
        scan = _scan_sqlite(session, workflow_id, start, end)
    # Under way: few, found by the partial index `ix_executions_unsettled`.
    pending = session.scalars(
        select(Execution.id).where(in_range, Execution.facts_recorded_at.is_(None))
    ).all()
    nodes = _node_numbers(session, workflow_id, start, end, pending)
    by_status: dict[str, int] = {}
    for statuses in scan.statuses.values():
        for status, n in statuses.items():
            by_status[status] = by_status.get(status, 0) + n
    succeeded, failed = by_status.get("succeeded", 0), by_status.get("failed", 0)
    finished = sum(by_status.get(status, 0) for status in TERMINAL)
    overall = scan.percentiles.get(None, {})
    ordered = sorted(
        nodes.items(), key=lambda item: (-item[1]["errors"], -item[1]["retries"], item[0])
    )
    by_day = []
    for day in _days(start, end):
        statuses = scan.statuses.get(day, {})
        percentiles = scan.percentiles.get(day, {})
        by_day.append(
            {
                "day": day,
                "executions": sum(statuses.values()),
                "succeeded": statuses.get("succeeded", 0),
                "failed": statuses.get("failed", 0),
                "duration_p50_ms": percentiles.get(50),
                "duration_p95_ms": percentiles.get(95),
            }
        )
    return {
        "workflow_id": workflow_id,
        "from": start,
        "to": end,
        "executions": sum(by_status.values()),
        "by_status": dict(sorted(by_status.items())),
        "finished": finished,
        "success_rate": round(succeeded / finished, 4) if finished else None,
        "failure_rate": round(failed / finished, 4) if finished else None,
        "duration_p50_ms": overall.get(50),
        "duration_p95_ms": overall.get(95),
        "by_day": by_day,
        "nodes": [{"node_id": node_id, **numbers} for node_id, numbers in ordered],
        "retries": sum(n["retries"] for n in nodes.values()),
        "errors": sum(n["errors"] for n in nodes.values()),
        "truncated": False,
        "duplicates_prevented": scan.replays,
    }


__all__ = ["nearest_rank", "workflow_analytics"]
