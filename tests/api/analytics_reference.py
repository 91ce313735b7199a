"""Workflow analytics as they were computed before issue 20: execution by execution, from each
execution's Dagster runs and their event logs (the timeline's reading), in Python.

The API now answers from the platform database (flowmaestro_api/services/analytics.py); this
is the specification it is tested against (tests/api/test_analytics.py): on real runs both
must give the same answer, field for field.
"""

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

from dagster import RunsFilter
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from flowmaestro_dagster.control.client import DagsterClient, RunInfo
from flowmaestro_dagster.control.executions import compiled_for
from flowmaestro_dagster.control.timeline import (
    NodeInfo,
    RunTrace,
    build_spans,
    chain_status,
    node_index,
    read_trace,
)
from flowmaestro_dagster.store.models import Execution, WorkflowVersion
from flowmaestro_dagster.tags import EXECUTION_TAG, WORKFLOW_ID_TAG

TERMINAL = frozenset({"succeeded", "failed", "cancelled"})


def percentile(values: Sequence[float], p: float) -> float | None:
    """Nearest-rank percentile (None for no values)."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(math.ceil(p / 100 * len(ordered)), 1)
    return ordered[rank - 1]


@dataclass(frozen=True)
class ExecutionFacts:
    """What analytics needs of one execution."""

    execution_id: str
    created_at: datetime
    status: str
    duration_ms: float | None = None  # finished executions only
    errors: Mapping[str, int] = field(default_factory=dict)  # node id -> failed attempts
    failures: Mapping[str, int] = field(default_factory=dict)  # node id -> unhandled failures
    retries: Mapping[str, int] = field(default_factory=dict)  # node id -> retry requests


def facts_from_traces(
    execution_id: str,
    created_at: datetime,
    stored_status: str,
    traces: Sequence[RunTrace],
    nodes: Mapping[str, NodeInfo],
) -> ExecutionFacts:
    status = chain_status(traces, stored_status)
    spans = build_spans(traces, nodes)
    errors: dict[str, int] = {}
    failures: dict[str, int] = {}
    retries: dict[str, int] = {}
    for span in spans:
        if span.errors:
            errors[span.node_id] = errors.get(span.node_id, 0) + span.errors
        if span.retries:
            retries[span.node_id] = retries.get(span.node_id, 0) + span.retries
        if span.status == "failed" and any(s.outcome == "failed" for s in span.segments):
            failures[span.node_id] = failures.get(span.node_id, 0) + 1
    duration = None
    ends = [t.ended for t in traces if t.ended]
    if status in TERMINAL and ends:
        duration = round(max(max(ends) - created_at.timestamp(), 0.0) * 1000, 3)
    return ExecutionFacts(execution_id, created_at, status, duration, errors, failures, retries)


def _days(start: datetime, end: datetime) -> list[date]:
    first, last = (
        start.astimezone(UTC).date(),
        (end - timedelta(microseconds=1)).astimezone(UTC).date(),
    )
    return [first + timedelta(days=n) for n in range((last - first).days + 1)]


def summarize(facts: Sequence[ExecutionFacts], start: datetime, end: datetime) -> dict[str, Any]:
    """Rates, duration percentiles per day, errors and retries per node."""
    by_status: dict[str, int] = {}
    for fact in facts:
        by_status[fact.status] = by_status.get(fact.status, 0) + 1
    succeeded, failed = by_status.get("succeeded", 0), by_status.get("failed", 0)
    finished = succeeded + failed + by_status.get("cancelled", 0)
    days: dict[date, list[ExecutionFacts]] = {day: [] for day in _days(start, end)}
    for fact in facts:
        days.setdefault(fact.created_at.astimezone(UTC).date(), []).append(fact)
    durations = [f.duration_ms for f in facts if f.duration_ms is not None]
    nodes: dict[str, dict[str, int]] = {}
    for fact in facts:
        for node_id in {*fact.errors, *fact.retries, *fact.failures}:
            entry = nodes.setdefault(
                node_id, {"errors": 0, "failures": 0, "retries": 0, "executions_with_errors": 0}
            )
            entry["errors"] += fact.errors.get(node_id, 0)
            entry["failures"] += fact.failures.get(node_id, 0)
            entry["retries"] += fact.retries.get(node_id, 0)
            entry["executions_with_errors"] += 1 if fact.errors.get(node_id) else 0
    ordered = sorted(
        nodes.items(), key=lambda item: (-item[1]["errors"], -item[1]["retries"], item[0])
    )
    return {
        "from": start,
        "to": end,
        "executions": len(facts),
        "by_status": dict(sorted(by_status.items())),
        "finished": finished,
        "success_rate": round(succeeded / finished, 4) if finished else None,
        "failure_rate": round(failed / finished, 4) if finished else None,
        "duration_p50_ms": percentile(durations, 50),
        "duration_p95_ms": percentile(durations, 95),
        "by_day": [
            {
                "day": day,
                "executions": len(items),
                "succeeded": sum(1 for f in items if f.status == "succeeded"),
                "failed": sum(1 for f in items if f.status == "failed"),
                "duration_p50_ms": percentile(
                    [f.duration_ms for f in items if f.duration_ms is not None], 50
                ),
                "duration_p95_ms": percentile(
                    [f.duration_ms for f in items if f.duration_ms is not None], 95
                ),
            }
            for day, items in sorted(days.items())
        ],
        "nodes": [{"node_id": node_id, **numbers} for node_id, numbers in ordered],
        "retries": sum(sum(f.retries.values()) for f in facts),
        "errors": sum(sum(f.errors.values()) for f in facts),
    }


def _run_info(record: Any) -> RunInfo:
    run = record.dagster_run
    return RunInfo(
        run_id=run.run_id,
        status=run.status.value,
        tags=dict(run.tags),
        parent_run_id=run.parent_run_id,
        root_run_id=run.root_run_id,
        start_time=record.start_time,
        end_time=record.end_time,
        create_time=record.create_timestamp.timestamp() if record.create_timestamp else None,
    )


def reference_analytics(
    session: Session, client: DagsterClient, workflow_id: str, start: datetime, end: datetime
) -> dict[str, Any]:
    """The workflow's analytics over `[start, end)` the old way (every execution, no cap)."""
    executions = list(
        session.scalars(
            select(Execution)
            .where(
                Execution.workflow_id == workflow_id,
                Execution.created_at >= start,
                Execution.created_at < end,
            )
            .order_by(Execution.created_at)
        )
    )
    runs: dict[str, list[RunInfo]] = {}
    records = client.instance.get_run_records(
        filters=RunsFilter(
            tags={WORKFLOW_ID_TAG: workflow_id}, created_after=start - timedelta(minutes=5)
        )
    )
    for record in records:
        execution_id = record.dagster_run.tags.get(EXECUTION_TAG)
        if execution_id:
            runs.setdefault(execution_id, []).append(_run_info(record))
    versions = {
        row.version: row
        for row in session.scalars(
            select(WorkflowVersion).where(WorkflowVersion.workflow_id == workflow_id)
        )
    }
    indexes: dict[int, dict[str, NodeInfo]] = {}
    facts = []
    for execution in executions:
        if execution.version not in indexes:
            row = versions.get(execution.version)
            indexes[execution.version] = node_index(compiled_for(row) if row is not None else None)
        chain = sorted(runs.get(execution.id, []), key=lambda r: r.create_time or 0)
        traces = [read_trace(client.instance, run, with_upstream=False) for run in chain]
        facts.append(
            facts_from_traces(
                execution.id,
                execution.created_at,
                execution.status,
                traces,
                indexes[execution.version],
            )
        )
    summary = summarize(facts, start, end)
    summary["workflow_id"] = workflow_id
    summary["truncated"] = False
    summary["duplicates_prevented"] = int(
        session.scalar(
            select(func.coalesce(func.sum(Execution.replays), 0)).where(
                Execution.workflow_id == workflow_id,
                Execution.created_at >= start,
                Execution.created_at < end,
            )
        )
        or 0
    )
    return summary
