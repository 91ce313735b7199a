"""Per-workflow analytics over a time range, and the platform's Prometheus metrics.

Analytics count the executions *created* in `[from, to)` (UTC). An execution's status and
numbers come from its Dagster runs (the same reading as its timeline): duration is submission
to the end of its last run (finished executions only), errors are failed attempts of a node
(retried ones, final failures and failures onError handled), retries are retry requests.
Percentiles are nearest-rank (p50 of 1, 2, 3, 4 is 2; p95 of 20 values is the 19th).
"""

import math
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

from sqlalchemy import func, inspect, select
from sqlalchemy.orm import Session

from flowmaestro_api.services.timeline import (
    FINISHED,
    NodeInfo,
    RunTrace,
    build_spans,
    chain_status,
    read_trace,
)
from flowmaestro_dagster.compile.compiler import CompiledWorkflow
from flowmaestro_dagster.control.client import DagsterClient, RunInfo
from flowmaestro_dagster.store.models import Execution, Workflow, WorkflowVersion
from flowmaestro_dagster.tags import (
    EXECUTION_TAG,
    RESUME_TAG,
    WAIT_KINDS,
    WAITING_TAG,
    WORKFLOW_ID_TAG,
)
from flowmaestro_dagster.tags import WORKFLOW_NAME_TAG as WORKFLOW_TAG

TERMINAL = frozenset({"succeeded", "failed", "cancelled"})
MAX_EXECUTIONS = 5000


def percentile(values: Sequence[float], p: float) -> float | None:
    """Nearest-rank percentile (None for no values)."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(math.ceil(p / 100 * len(ordered)), 1)
    return ordered[rank - 1]


def node_index(compiled: CompiledWorkflow | None) -> dict[str, NodeInfo]:
    """Op alias -> node id, label and type of a compiled version."""
    if compiled is None:
        return {}
    return {
        alias: NodeInfo(
            node_id, compiled.spec.nodes[node_id].label, compiled.spec.nodes[node_id].source_type
        )
        for node_id, alias in compiled.aliases.items()
    }


# -- analytics -------------------------------------------------------------------------------------


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


def workflow_analytics(
    session: Session,
    client: DagsterClient,
    workflow: Workflow,
    start: datetime,
    end: datetime,
    compiled_for: Any,
) -> dict[str, Any]:
    """Analytics of the workflow's executions created in `[start, end)`.

    `compiled_for(version_row)` gives a version's compiled workflow (node ids of op aliases).
    """
    executions = list(
        session.scalars(
            select(Execution)
            .where(
                Execution.workflow_id == workflow.id,
                Execution.created_at >= start,
                Execution.created_at < end,
            )
            .order_by(Execution.created_at)
            .limit(MAX_EXECUTIONS + 1)
        )
    )
    truncated = len(executions) > MAX_EXECUTIONS
    executions = executions[:MAX_EXECUTIONS]
    runs: dict[str, list[RunInfo]] = {}
    if executions:
        from dagster import RunsFilter

        records = client.instance.get_run_records(
            filters=RunsFilter(
                tags={WORKFLOW_ID_TAG: workflow.id},
                created_after=start - timedelta(minutes=5),
            )
        )
        for record in records:
            execution_id = record.dagster_run.tags.get(EXECUTION_TAG)
            if execution_id:
                runs.setdefault(execution_id, []).append(_run_info(record))
    versions = {
        row.version: row
        for row in session.scalars(
            select(WorkflowVersion).where(WorkflowVersion.workflow_id == workflow.id)
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
        created = execution.created_at
        if created.tzinfo is None:
            created = created.replace(tzinfo=UTC)
        facts.append(
            facts_from_traces(
                execution.id, created, execution.status, traces, indexes[execution.version]
            )
        )
    summary = summarize(facts, start, end)
    summary["workflow_id"] = workflow.id
    summary["truncated"] = truncated
    return summary


# -- Prometheus ------------------------------------------------------------------------------------

BUCKETS: tuple[float, ...] = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900)


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def op_type(op_definition_name: str) -> str:
    """`llm_node_e` → `llm`, `shared_memory_node` → `shared_memory` (see adapter.OpShape)."""
    base, found, _ = op_definition_name.rpartition("_node")
    return base if found and base else "other"


class NodeDurationHistogram:
    """Node running time (the attempts of each step) by node type, counted once per finished
    run. Cumulative for the life of the API process, as Prometheus expects of a histogram;
    each scrape reads the runs that finished since the last one."""

    def __init__(self, batch: int = 500) -> None:
        self.batch = batch
        self._lock = threading.Lock()
        self.counts: dict[str, list[int]] = {}
        self.sums: dict[str, float] = {}
        self._seen: dict[str, float] = {}  # run id -> update time
        self._watermark: float | None = None
        self._types: dict[str, dict[str, str]] = {}  # job snapshot id -> alias -> type

    def observe(self, node_type: str, seconds: float) -> None:
        counts = self.counts.setdefault(node_type, [0] * (len(BUCKETS) + 1))
        for index, bound in enumerate(BUCKETS):
            if seconds <= bound:
                counts[index] += 1
        counts[-1] += 1  # +Inf
        self.sums[node_type] = self.sums.get(node_type, 0.0) + seconds

    def update(self, instance: Any, *, max_batches: int = 4) -> None:
        """Read runs finished since the last update (at most `max_batches` batches)."""
        from dagster import DagsterRunStatus, RunsFilter

        statuses = [DagsterRunStatus(s) for s in sorted(FINISHED)]
        with self._lock:
            for _ in range(max_batches):
                after = (
                    datetime.fromtimestamp(self._watermark - 1, UTC)
                    if self._watermark is not None
                    else None
                )
                records = instance.get_run_records(
                    filters=RunsFilter(statuses=statuses, updated_after=after),
                    limit=self.batch,
                    order_by="update_timestamp",
                    ascending=True,
                )
                fresh = [r for r in records if r.dagster_run.run_id not in self._seen]
                for record in records:
                    updated = record.update_timestamp.timestamp()
                    self._watermark = max(self._watermark or updated, updated)
                for record in fresh:
                    self._seen[record.dagster_run.run_id] = record.update_timestamp.timestamp()
                    if WORKFLOW_TAG in record.dagster_run.tags:
                        self._observe_run(instance, record.dagster_run)
                if self._watermark is not None:
                    horizon = self._watermark - 3600
                    self._seen = {k: v for k, v in self._seen.items() if v >= horizon}
                if len(records) < self.batch or not fresh:
                    break

    def _observe_run(self, instance: Any, run: Any) -> None:
        types = self._types.get(run.job_snapshot_id)
        if types is None:
            types = {}
            try:
                snapshot = instance.get_job_snapshot(run.job_snapshot_id)
                for invocation in snapshot.dep_structure_snapshot.node_invocation_snaps:
                    types[invocation.node_name] = op_type(invocation.node_def_name)
            except Exception:  # noqa: BLE001 - no snapshot: the steps count as type "other"
                types = {}
            self._types[run.job_snapshot_id] = types
        for stat in instance.get_run_step_stats(run.run_id):
            alias = stat.step_key.split("[", 1)[0]
            markers = [m for m in (stat.attempts_list or []) if m.start_time and m.end_time]
            if markers:
                seconds = sum(m.end_time - m.start_time for m in markers)
            elif stat.start_time and stat.end_time:
                seconds = stat.end_time - stat.start_time
            else:
                continue
            self.observe(types.get(alias, "other"), max(seconds, 0.0))

    def lines(self) -> list[str]:
        out = [
            "# HELP flowmaestro_node_duration_seconds Running time of node steps (all attempts).",
            "# TYPE flowmaestro_node_duration_seconds histogram",
        ]
        with self._lock:
            for node_type in sorted(self.counts):
                counts = self.counts[node_type]
                label = _label(node_type)
                for bound, count in zip(BUCKETS, counts, strict=False):
                    bucket = f'{{type="{label}",le="{bound:g}"}}'
                    out.append(f"flowmaestro_node_duration_seconds_bucket{bucket} {count}")
                out.append(
                    f'flowmaestro_node_duration_seconds_bucket{{type="{label}",le="+Inf"}} '
                    f"{counts[-1]}"
                )
                out.append(
                    f'flowmaestro_node_duration_seconds_sum{{type="{label}"}} '
                    f"{self.sums[node_type]:.6f}"
                )
                out.append(
                    f'flowmaestro_node_duration_seconds_count{{type="{label}"}} {counts[-1]}'
                )
        return out


def waitpoints_waiting(session: Session, client: DagsterClient | None) -> int | None:
    """Pending waitpoints: from the `waitpoints` table when it exists, else parked runs
    (tagged waiting) that nothing has resumed yet. None when neither can be read."""
    bind = session.get_bind()
    try:
        has_table = inspect(bind).has_table("waitpoints")
    except Exception:  # noqa: BLE001 - an unreadable catalogue: fall back to Dagster's tags
        has_table = False
    if has_table:
        from sqlalchemy import column, table

        waitpoints = table("waitpoints", column("status"))
        count = session.scalar(
            select(func.count()).select_from(waitpoints).where(waitpoints.c.status == "pending")
        )
        return int(count or 0)
    if client is None:
        return None
    from dagster import RunsFilter

    # A run parked with its kind as the value ("true" before); the tag goes at the resume.
    waiting_values = [*WAIT_KINDS, "true"]
    parked = client.instance.get_run_records(filters=RunsFilter(tags={WAITING_TAG: waiting_values}))
    waiting = 0
    for record in parked:
        run_id = record.dagster_run.run_id
        resumed = client.instance.get_runs_count(RunsFilter(tags={RESUME_TAG: run_id}))
        children = [
            r
            for r in client.instance.get_run_records(
                filters=RunsFilter(
                    tags={EXECUTION_TAG: record.dagster_run.tags.get(EXECUTION_TAG, "")}
                )
            )
            if r.dagster_run.parent_run_id == run_id
        ]
        if not resumed and not children:
            waiting += 1
    return waiting


def _gauge(name: str, help_text: str, samples: Iterable[tuple[str, float | int]]) -> list[str]:
    lines = [f"# HELP {name} {help_text}", f"# TYPE {name} gauge"]
    for labels, value in samples:
        lines.append(f"{name}{labels} {value}")
    return lines


def prometheus_text(
    session: Session, client: DagsterClient, histogram: NodeDurationHistogram
) -> str:
    """The platform's metrics in the Prometheus text format (version 0.0.4)."""
    lines: list[str] = []
    statuses = dict.fromkeys(
        ("queued", "running", "waiting", "succeeded", "failed", "cancelled"), 0
    )
    for status, count in session.execute(
        select(Execution.status, func.count()).group_by(Execution.status)
    ):
        statuses[status] = int(count)
    lines += _gauge(
        "flowmaestro_executions",
        "Executions by status (as last recorded by the platform).",
        ((f'{{status="{_label(s)}"}}', n) for s, n in sorted(statuses.items())),
    )
    pending_launch = session.scalar(
        select(func.count())
        .select_from(Execution)
        .where(Execution.launched_at.is_(None), Execution.status == "queued")
    )
    lines += _gauge(
        "flowmaestro_executions_pending_launch",
        "Executions committed but not launched as a Dagster run yet.",
        [("", int(pending_launch or 0))],
    )
    up = 1
    try:
        from dagster import DagsterRunStatus, RunsFilter

        instance = client.instance
        queued = instance.get_runs_count(RunsFilter(statuses=[DagsterRunStatus.QUEUED]))
        in_progress = instance.get_runs_count(
            RunsFilter(statuses=[DagsterRunStatus.STARTING, DagsterRunStatus.STARTED])
        )
        lines += _gauge(
            "flowmaestro_queue_depth", "Runs waiting in Dagster's run queue.", [("", queued)]
        )
        lines += _gauge(
            "flowmaestro_runs_in_progress", "Runs starting or running.", [("", in_progress)]
        )
        histogram.update(instance)
    except Exception:  # noqa: BLE001 - metrics must answer even when Dagster cannot be read
        up = 0
    waiting = None
    try:
        waiting = waitpoints_waiting(session, client if up else None)
    except Exception:  # noqa: BLE001 - the gauge is left out rather than failing the scrape
        waiting = None
    if waiting is not None:
        lines += _gauge(
            "flowmaestro_waitpoints_waiting",
            "Waitpoints waiting to be resolved (parked executions).",
            [("", waiting)],
        )
    lines += histogram.lines()
    lines += _gauge("flowmaestro_dagster_up", "1 if Dagster's storage could be read.", [("", up)])
    lines += _gauge(
        "flowmaestro_scrape_timestamp_seconds",
        "When these were read.",
        [("", round(time.time(), 3))],
    )
    return "\n".join(lines) + "\n"


__all__ = [
    "ExecutionFacts",
    "NodeDurationHistogram",
    "facts_from_traces",
    "node_index",
    "percentile",
    "prometheus_text",
    "summarize",
    "waitpoints_waiting",
    "workflow_analytics",
]
