"""An execution's timeline: every node as a span of queued, running, backoff and waiting
segments, read from Dagster's event log across every run of the execution.

An execution is a chain of Dagster runs: the first run, re-executions from failure (tag
`flowmaestro/retry_of`) and resumed runs after a waitpoint (tag `flowmaestro/resume_of`). A run
that parked carries the hidden tag `PARKED_TAG` (its visible `flowmaestro/waiting=<kind>` goes
at the resume; runs parked before had `flowmaestro/waiting=true`) and its waitpoint step
succeeded without yielding an output. Segments of a step, per run:

* queued   — from the moment the step could start (its upstream steps in this run ended, or
             the run was created when none ran in it) to its first attempt's start;
* running  — each attempt, start to its end (outcome: retry, succeeded, failed, parked);
* backoff  — from a retry request to the next attempt's start (`STEP_UP_FOR_RETRY` →
             `STEP_RESTARTED`);
* waiting  — a parked step: from its end to its start in a later run of the chain (open while
             nothing resumed it). A resumed step has no queued segment: the wait covers it.

Nothing here reads the waitpoint tables (their owner may change them): the chain and its tags
are enough. Times are epoch seconds inside, ISO datetimes and milliseconds outside.

The API serves it (`GET /executions/{id}/timeline`, analytics); the trace export
(`control/traces.py`) turns the same spans into OpenTelemetry spans.
"""

import math
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from dagster import DagsterEventType

from flowmaestro_dagster.compile.compiler import CompiledWorkflow
from flowmaestro_dagster.control.client import DagsterClient, RunInfo
from flowmaestro_dagster.control.executions import RUN_STATUS
from flowmaestro_dagster.tags import ERROR_METADATA as HANDLED_METADATA
from flowmaestro_dagster.tags import PARKED_TAG, RESUME_TAG, RETRY_TAG, WAITING_TAG

FINISHED = frozenset({"SUCCESS", "FAILURE", "CANCELED"})

_STEP_KINDS: dict[DagsterEventType, str] = {
    DagsterEventType.STEP_START: "start",
    DagsterEventType.STEP_RESTARTED: "start",
    DagsterEventType.STEP_UP_FOR_RETRY: "retry",
    DagsterEventType.STEP_SUCCESS: "success",
    DagsterEventType.STEP_FAILURE: "failure",
    DagsterEventType.STEP_SKIPPED: "skipped",
    DagsterEventType.STEP_OUTPUT: "output",
}
TRACE_EVENTS: frozenset[DagsterEventType] = frozenset(
    {*_STEP_KINDS, DagsterEventType.RUN_ENQUEUED, DagsterEventType.RUN_START}
)

# -- what one run did ----------------------------------------------------------------------------


@dataclass(frozen=True)
class StepEvent:
    timestamp: float
    kind: str  # start | retry | success | failure | skipped | output
    wait_seconds: float | None = None  # retry: the wait the step asked for
    output: str | None = None  # output: its name
    handled_error: str | None = None  # output of a failure onError / an error edge handled
    error: str | None = None  # retry / failure: the message


@dataclass
class RunTrace:
    """One Dagster run of an execution: its times, tags, upstream steps and step events."""

    run_id: str
    status: str
    tags: Mapping[str, str]
    parent_run_id: str | None
    created: float
    started: float | None
    ended: float | None
    steps: dict[str, list[StepEvent]] = field(default_factory=dict)
    upstream: dict[str, set[str]] = field(default_factory=dict)  # op alias -> upstream aliases

    @property
    def parked(self) -> bool:
        return PARKED_TAG in self.tags or WAITING_TAG in self.tags

    @property
    def kind(self) -> str:
        if RESUME_TAG in self.tags:
            return "resume"
        if RETRY_TAG in self.tags:
            return "retry"
        return "reexecution" if self.parent_run_id else "initial"

    def parked_steps(self) -> set[str]:
        """Steps of a parked run that succeeded without yielding anything (the waitpoints)."""
        if not self.parked:
            return set()
        return {
            key
            for key, events in self.steps.items()
            if any(e.kind == "success" for e in events)
            and not any(e.kind == "output" for e in events)
        }


def _error_message(data: Any) -> str | None:
    failure = getattr(data, "user_failure_data", None)
    description = getattr(failure, "description", None)
    if description:
        return str(description)
    error = getattr(data, "error", None)
    cause = getattr(error, "cause", None) or error
    message = getattr(cause, "message", None)
    return str(message).strip() if message else None


def read_trace(instance: Any, run: RunInfo, *, with_upstream: bool = True) -> RunTrace:
    """A run's step events (only the kinds a timeline needs) and its dependency structure."""
    trace = RunTrace(
        run_id=run.run_id,
        status=run.status,
        tags=dict(run.tags),
        parent_run_id=run.parent_run_id,
        created=run.create_time or run.start_time or time.time(),
        started=run.start_time,
        ended=run.end_time,
    )
    cursor: str | None = None
    while True:
        connection = instance.get_records_for_run(
            run.run_id, cursor=cursor, of_type=set(TRACE_EVENTS), limit=1000
        )
        for record in connection.records:
            entry = record.event_log_entry
            event = entry.dagster_event
            if event is None:
                continue
            if event.event_type == DagsterEventType.RUN_START and trace.started is None:
                trace.started = entry.timestamp
            kind = _STEP_KINDS.get(event.event_type)
            if kind is None or not event.step_key:
                continue
            data = event.event_specific_data
            step = StepEvent(entry.timestamp, kind)
            if kind == "retry":
                wait = getattr(data, "seconds_to_wait", None)
                step = StepEvent(
                    entry.timestamp, kind, wait_seconds=wait, error=_error_message(data)
                )
            elif kind == "failure":
                step = StepEvent(entry.timestamp, kind, error=_error_message(data))
            elif kind == "output":
                handle = getattr(data, "step_output_handle", None)
                metadata = getattr(data, "metadata", None) or {}
                mark = metadata.get(HANDLED_METADATA)
                step = StepEvent(
                    entry.timestamp,
                    kind,
                    output=getattr(handle, "output_name", None),
                    handled_error=str(getattr(mark, "value", mark)) if mark is not None else None,
                )
            trace.steps.setdefault(event.step_key, []).append(step)
        if not connection.has_more:
            break
        cursor = connection.cursor
    if with_upstream:
        trace.upstream = _upstream(instance, run.run_id)
    return trace


def _upstream(instance: Any, run_id: str) -> dict[str, set[str]]:
    """Op alias -> the aliases it depends on, from the run's job snapshot."""
    try:
        dagster_run = instance.get_run_by_id(run_id)
        snapshot = instance.get_job_snapshot(dagster_run.job_snapshot_id)
    except Exception:  # noqa: BLE001 - no snapshot: steps count as ready when the run was created
        return {}
    deps: dict[str, set[str]] = {}
    for invocation in snapshot.dep_structure_snapshot.node_invocation_snaps:
        deps[invocation.node_name] = {
            upstream.node_name
            for dep in invocation.input_dep_snaps
            for upstream in dep.upstream_output_snaps
        }
    return deps


def execution_traces(client: DagsterClient, execution_id: str) -> list[RunTrace]:
    """Every run of the execution, oldest first, with its events."""
    runs = client.runs_for_execution(execution_id)
    return [read_trace(client.instance, run) for run in runs]


# -- spans and segments --------------------------------------------------------------------------


@dataclass
class Segment:
    kind: str  # queued | running | backoff | waiting
    start: float
    end: float | None
    run_id: str
    attempt: int | None = None
    outcome: str | None = None  # running: retry | succeeded | failed | parked | handled
    error: str | None = None  # running: the attempt's error (retry, failed, handled)


@dataclass
class Span:
    step_key: str
    alias: str
    iteration: str | None
    node_id: str
    label: str
    type: str
    status: str = "not_run"
    attempts: int = 0
    retries: int = 0
    errors: int = 0
    error: str | None = None
    segments: list[Segment] = field(default_factory=list)


@dataclass(frozen=True)
class NodeInfo:
    node_id: str
    label: str
    type: str


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


def split_step_key(step_key: str) -> tuple[str, str | None]:
    """`llm_1[3]` → ('llm_1', '3')."""
    if step_key.endswith("]") and "[" in step_key:
        alias, _, key = step_key[:-1].partition("[")
        return alias, key
    return step_key, None


def _end_of(events: Sequence[StepEvent]) -> float | None:
    ends = [e.timestamp for e in events if e.kind in ("success", "failure", "skipped")]
    return max(ends) if ends else None


def _ready_at(trace: RunTrace, step_key: str) -> float:
    """When the step could start in this run: its upstream steps here ended, or run creation."""
    alias, key = split_step_key(step_key)
    ends: list[float] = []
    for upstream in trace.upstream.get(alias, ()):
        mapped = f"{upstream}[{key}]" if key is not None else None
        if mapped is not None and mapped in trace.steps:
            candidates = [mapped]
        else:
            candidates = [k for k in trace.steps if k == upstream or k.startswith(f"{upstream}[")]
        for candidate in candidates:
            end = _end_of(trace.steps[candidate])
            if end is not None:
                ends.append(end)
    return max(ends) if ends else trace.created


def build_spans(traces: Sequence[RunTrace], nodes: Mapping[str, NodeInfo]) -> list[Span]:
    """One span per step key across the whole run chain."""
    spans: dict[str, Span] = {}
    for trace in traces:
        parked = trace.parked_steps()
        for step_key, events in trace.steps.items():
            span = spans.get(step_key)
            if span is None:
                alias, iteration = split_step_key(step_key)
                info = nodes.get(alias, NodeInfo(alias, alias, "unknown"))
                span = Span(step_key, alias, iteration, info.node_id, info.label, info.type)
                spans[step_key] = span
            _add_run(span, trace, events, step_key in parked)
    return sorted(spans.values(), key=_span_order)


def _span_order(span: Span) -> tuple[float, str]:
    first = min((s.start for s in span.segments), default=math.inf)
    return first, span.step_key


def _add_run(span: Span, trace: RunTrace, events: Sequence[StepEvent], parked: bool) -> None:
    run_id = trace.run_id
    waiting = next(
        (s for s in reversed(span.segments) if s.kind == "waiting" and s.end is None), None
    )
    first_start = next((e.timestamp for e in events if e.kind == "start"), None)
    if waiting is not None and first_start is not None:
        waiting.end = first_start  # resumed: the wait ends where this run starts the step
    elif first_start is not None:
        ready = min(_ready_at(trace, span.step_key), first_start)
        span.segments.append(Segment("queued", ready, first_start, run_id))
    open_segment: Segment | None = None
    handled: str | None = None
    outputs: set[str] = set()
    for event in events:
        if event.kind == "start":
            if open_segment is not None and open_segment.kind == "backoff":
                open_segment.end = event.timestamp
            span.attempts += 1
            open_segment = Segment("running", event.timestamp, None, run_id, span.attempts)
            span.segments.append(open_segment)
        elif event.kind == "retry":
            span.retries += 1
            span.errors += 1
            span.error = event.error or span.error
            if open_segment is not None:
                open_segment.end, open_segment.outcome = event.timestamp, "retry"
                open_segment.error = event.error
            open_segment = Segment("backoff", event.timestamp, None, run_id, span.attempts)
            span.segments.append(open_segment)
            span.status = "backoff"
        elif event.kind == "output":
            outputs.add(event.output or "")
            if event.handled_error is not None:
                handled = event.handled_error
        elif event.kind in ("success", "failure"):
            if open_segment is not None and open_segment.kind == "running":
                outcome = "succeeded" if event.kind == "success" else "failed"
                if event.kind == "success" and parked:
                    outcome = "parked"
                elif handled is not None:
                    outcome = "handled"
                open_segment.end, open_segment.outcome = event.timestamp, outcome
                if event.kind == "failure":
                    open_segment.error = event.error
                elif handled is not None:
                    open_segment.error = handled
            open_segment = None
            if event.kind == "failure":
                span.errors += 1
                span.status, span.error = "failed", event.error or span.error
            elif parked:
                span.status = "waiting"
                span.segments.append(Segment("waiting", event.timestamp, None, run_id))
            elif handled is not None and "result" not in outputs:
                span.status = "failed"  # handled by an error edge / goto: only `error` ran on
            else:
                span.status = "succeeded"
            if handled is not None:
                span.errors += 1
                span.error = handled
        elif event.kind == "skipped":
            span.status = "skipped"
    if open_segment is not None and open_segment.kind == "running":
        span.status = "running"


# -- the whole execution -------------------------------------------------------------------------


def chain_status(traces: Sequence[RunTrace], stored: str) -> str:
    """The execution's status from its last run (a parked last run: waiting)."""
    if not traces:
        return stored if stored in ("queued", "cancelled") else "queued"
    last = traces[-1]
    status = RUN_STATUS.get(last.status, "running")
    if status == "cancelled" and last.tags.get("flowmaestro/paused") == "true":
        return "paused"  # terminated by POST /pause (control/lifecycle.py)
    if status == "succeeded" and last.parked_steps():
        return "waiting"
    return status


def _ms(start: float | None, end: float | None) -> float | None:
    if start is None or end is None:
        return None
    return round(max(end - start, 0.0) * 1000, 3)


def _iso(moment: float | None) -> datetime | None:
    return datetime.fromtimestamp(moment, UTC) if moment is not None else None


def segment_public(segment: Segment, origin: float, now: float) -> dict[str, Any]:
    end = segment.end if segment.end is not None else now
    return {
        "kind": segment.kind,
        "start": _iso(segment.start),
        "end": _iso(segment.end),
        "start_ms": _ms(origin, segment.start),
        "end_ms": _ms(origin, segment.end),
        "duration_ms": _ms(segment.start, end),
        "ongoing": segment.end is None,
        "run_id": segment.run_id,
        "attempt": segment.attempt,
        "outcome": segment.outcome,
    }


def _sum(segments: Iterable[Segment], kind: str, now: float) -> float:
    total = 0.0
    for segment in segments:
        if segment.kind == kind:
            total += max((segment.end if segment.end is not None else now) - segment.start, 0.0)
    return round(total * 1000, 3)


def execution_metrics(
    traces: Sequence[RunTrace], spans: Sequence[Span], created: float, now: float, status: str
) -> dict[str, Any]:
    """Totals of one execution and per node (mapped iterations summed into their node)."""
    terminal = status in ("succeeded", "failed", "cancelled")
    end = max((t.ended for t in traces if t.ended), default=None) if terminal else now
    queue = 0.0
    for index, trace in enumerate(traces):
        began = created if index == 0 else trace.created
        if trace.started is not None:
            queue += max(trace.started - began, 0.0)
        elif trace.status not in FINISHED:
            queue += max(now - began, 0.0)
    segments = [s for span in spans for s in span.segments]
    nodes: dict[str, dict[str, Any]] = {}
    for span in spans:
        node = nodes.setdefault(
            span.node_id,
            {
                "duration_ms": 0.0,
                "wall_ms": 0.0,
                "queued_ms": 0.0,
                "backoff_ms": 0.0,
                "waiting_ms": 0.0,
                "attempts": 0,
                "retries": 0,
                "errors": 0,
                "iterations": 0,
                "_first": math.inf,
                "_last": 0.0,
            },
        )
        node["duration_ms"] += _sum(span.segments, "running", now)
        node["queued_ms"] += _sum(span.segments, "queued", now)
        node["backoff_ms"] += _sum(span.segments, "backoff", now)
        node["waiting_ms"] += _sum(span.segments, "waiting", now)
        node["attempts"] += span.attempts
        node["retries"] += span.retries
        node["errors"] += span.errors
        node["iterations"] += 1 if span.iteration is not None else 0
        running = [s for s in span.segments if s.kind == "running"]
        if running:
            node["_first"] = min(node["_first"], running[0].start)
            node["_last"] = max(node["_last"], *((s.end or now) for s in running))
    for node in nodes.values():
        first, last = node.pop("_first"), node.pop("_last")
        node["wall_ms"] = _ms(first, last) if first != math.inf else 0.0
        for key in ("duration_ms", "queued_ms", "backoff_ms", "waiting_ms"):
            node[key] = round(node[key], 3)
    return {
        "total_duration_ms": _ms(created, end),
        "queue_wait_ms": round(queue * 1000, 3),
        "running_ms": _sum(segments, "running", now),
        "backoff_ms": _sum(segments, "backoff", now),
        "waiting_ms": _sum(segments, "waiting", now),
        "retry_count": sum(span.retries for span in spans),
        "error_count": sum(span.errors for span in spans),
        "run_count": len(traces),
        "nodes": nodes,
    }


def timeline(
    traces: Sequence[RunTrace],
    nodes: Mapping[str, NodeInfo],
    *,
    created: float,
    stored_status: str,
    now: float | None = None,
) -> dict[str, Any]:
    """The execution as runs, spans with segments, and metrics (plain data)."""
    moment = now if now is not None else time.time()
    origin = min([created, *(t.created for t in traces)])
    spans = build_spans(traces, nodes)
    status = chain_status(traces, stored_status)
    metrics = execution_metrics(traces, spans, created, moment, status)
    terminal = status in ("succeeded", "failed", "cancelled")
    finished = max((t.ended for t in traces if t.ended), default=None) if terminal else None
    return {
        "status": status,
        "created_at": _iso(created),
        "started_at": _iso(min((t.started for t in traces if t.started), default=None)),
        "finished_at": _iso(finished),
        "duration_ms": metrics["total_duration_ms"],
        "runs": [
            {
                "run_id": t.run_id,
                "kind": t.kind,
                "status": RUN_STATUS.get(t.status, "running"),
                "parent_run_id": t.parent_run_id,
                "created_at": _iso(t.created),
                "started_at": _iso(t.started),
                "finished_at": _iso(t.ended),
                "queued_ms": _ms(t.created, t.started),
                "parked": bool(t.parked_steps()),
            }
            for t in traces
        ],
        "spans": [
            {
                "step_key": span.step_key,
                "node_id": span.node_id,
                "label": span.label,
                "type": span.type,
                "iteration": span.iteration,
                "status": span.status,
                "attempts": span.attempts,
                "retries": span.retries,
                "errors": span.errors,
                "error": span.error,
                "start": _iso(min((s.start for s in span.segments), default=None)),
                "end": _iso(max((s.end or moment for s in span.segments), default=None)),
                "segments": [segment_public(s, origin, moment) for s in span.segments],
            }
            for span in spans
        ],
        "metrics": metrics,
    }


__all__ = [
    "FINISHED",
    "NodeInfo",
    "RunTrace",
    "Segment",
    "Span",
    "StepEvent",
    "build_spans",
    "chain_status",
    "execution_metrics",
    "execution_traces",
    "node_index",
    "read_trace",
    "segment_public",
    "split_step_key",
    "timeline",
]
