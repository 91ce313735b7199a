"""Traces out: an execution as one OpenTelemetry trace, exported over OTLP (docs/observability.md).

The spans are the timeline's (`control/timeline.py`, read from Dagster's event log) cut by run:

    execution                       the whole execution: submission to the end of its last run
    ├── run initial                 one per Dagster run; a later run links to the run it follows
    │   ├── queued                  the run in Dagster's queue and its launch
    │   └── <node label>            a node (a loop item: `<label> [key]`) in this run
    │       ├── queued              its upstream nodes ended -> its first attempt
    │       ├── attempt 1           an attempt: outcome, error
    │       ├── backoff             a retry's wait
    │       └── attempt 2
    ├── waiting for approval        a parked node: its end in one run -> its start in the resumed
    └── run resume                  run (links: the parked node span, and from the resumed one)
        └── <node label>            (links: the same node parked in the earlier run)

Every id is derived from the execution id, so each export of an execution lands in the same
trace with the same span ids: the trace id is the execution id's 128 bits (a UUID), each span
id the first 8 bytes of SHA-256 of the execution id and what the span is (run, step, attempt).
Spans are built as finished `ReadableSpan`s with their recorded times and handed straight to an
OTLP exporter (no tracer provider, no global state); the exporter reads the standard
`OTEL_EXPORTER_OTLP_*` variables, the protocol is `OTEL_EXPORTER_OTLP_TRACES_PROTOCOL` or
`OTEL_EXPORTER_OTLP_PROTOCOL` (`http/protobuf`, the default, or `grpc`).
"""

import hashlib
import logging
import os
import time
import uuid
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import Link, SpanContext, SpanKind, Status, StatusCode, TraceFlags
from sqlalchemy import select
from sqlalchemy.orm import Session

from flowmaestro_dagster.control.client import DagsterClient
from flowmaestro_dagster.control.executions import (
    RUN_STATUS,
    TERMINAL,
    compiled_for,
    version_row,
)
from flowmaestro_dagster.control.timeline import (
    NodeInfo,
    RunTrace,
    Segment,
    Span,
    build_spans,
    execution_traces,
    node_index,
)
from flowmaestro_dagster.errors import DagsterUnavailable
from flowmaestro_dagster.store.models import Execution, Waitpoint, Workflow
from flowmaestro_dagster.tags import HIDDEN_PREFIX, PARKED_TAG

log = logging.getLogger("flowmaestro.traces")

TRACED_TAG = f"{HIDDEN_PREFIX}/traced"  # on an exported run: the export's execution finish time
LOOKBACK_SECONDS = 600.0  # how late a finish may be written and still be found
SCOPE = InstrumentationScope("flowmaestro", None)
PROTOCOLS = ("http/protobuf", "grpc")
WAIT_NAMES = {
    "approval": "waiting for approval",
    "datetime": "waiting until due",
    "callback": "waiting for callback",
    "child": "waiting for child execution",
    "manual": "waiting for resume",
}
NODE_STATUS = {  # a running segment's outcome -> the node's status in that run
    "succeeded": "succeeded",
    "failed": "failed",
    "handled": "handled",
    "parked": "waiting",
    "retry": "backoff",
}


@dataclass(frozen=True)
class ExecutionFacts:
    """What the trace says about the execution itself (from the platform database)."""

    execution_id: str
    workflow_id: str
    workflow_name: str
    version: int
    user_id: str
    status: str
    created: float
    finished: float | None = None
    error: str | None = None
    queue: str | None = None
    priority: int = 0


# -- ids -----------------------------------------------------------------------------------------


def trace_id_of(execution_id: str) -> int:
    """The execution id's 128 bits when it is a UUID (search the trace by it), else a hash."""
    try:
        value = uuid.UUID(execution_id).int
    except ValueError:
        value = int.from_bytes(hashlib.sha256(execution_id.encode()).digest()[:16], "big")
    return value or 1


def span_id_of(execution_id: str, *parts: str) -> int:
    digest = hashlib.sha256("|".join((execution_id, *parts)).encode()).digest()
    return int.from_bytes(digest[:8], "big") or 1


# -- building ------------------------------------------------------------------------------------


def _ns(seconds: float) -> int:
    return round(seconds * 1e9)


def _compact(attributes: Mapping[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in attributes.items() if value is not None}


class _Builder:
    def __init__(self, facts: ExecutionFacts, resource: Resource, end: float) -> None:
        self.facts = facts
        self.resource = resource
        self.trace_id = trace_id_of(facts.execution_id)
        self.end = end
        self.spans: list[ReadableSpan] = []

    def context(self, *parts: str) -> SpanContext:
        return SpanContext(
            self.trace_id,
            span_id_of(self.facts.execution_id, *parts),
            is_remote=False,
            trace_flags=TraceFlags(TraceFlags.SAMPLED),
        )

    def add(
        self,
        name: str,
        key: Sequence[str],
        parent: SpanContext | None,
        start: float,
        end: float | None,
        attributes: Mapping[str, Any],
        *,
        error: str | None = None,
        failed: bool = False,
        links: Sequence[Link] = (),
    ) -> SpanContext:
        context = self.context(*key)
        status = Status(StatusCode.ERROR, error) if failed or error else Status(StatusCode.UNSET)
        self.spans.append(
            ReadableSpan(
                name=name,
                context=context,
                parent=parent,
                resource=self.resource,
                attributes=_compact(attributes),
                links=links,
                kind=SpanKind.INTERNAL,
                status=status,
                start_time=_ns(start),
                end_time=_ns(max(end if end is not None else self.end, start)),
                instrumentation_scope=SCOPE,
            )
        )
        return context


def _node_name(span: Span) -> str:
    return f"{span.label} [{span.iteration}]" if span.iteration is not None else span.label


def _node_attributes(span: Span) -> dict[str, Any]:
    return {
        "flowmaestro.node.id": span.node_id,
        "flowmaestro.node.label": span.label,
        "flowmaestro.node.type": span.type,
        "flowmaestro.node.step_key": span.step_key,
        "flowmaestro.node.iteration": span.iteration,
    }


def _status_in_run(span: Span, run: RunTrace, segments: Sequence[Segment], last: bool) -> str:
    """The node's status at the end of this run: the timeline's for its last run, else what
    its last attempt here came to (a node parked here and resumed later: `waiting`)."""
    if last:
        return span.status
    running = [s for s in segments if s.kind == "running"]
    if running and running[-1].outcome in NODE_STATUS:
        return NODE_STATUS[running[-1].outcome or ""]
    if any(e.kind == "skipped" for e in run.steps.get(span.step_key, ())):
        return "skipped"
    return "running" if running else "not_run"


def build_trace(
    facts: ExecutionFacts,
    traces: Sequence[RunTrace],
    nodes: Mapping[str, NodeInfo],
    *,
    wait_kinds: Mapping[tuple[str, str], str] | None = None,
    exported_runs: Collection[str] = (),
    resource: Resource | None = None,
    now: float | None = None,
) -> list[ReadableSpan]:
    """The execution's spans, parents before children. `wait_kinds`: (run id, step key) -> the
    waitpoint's kind (names the waiting span; else the run's parked tag). `exported_runs`: runs
    an earlier export sent (their spans and the waits that ended in them are left out; the
    execution span is sent again with its new end and status)."""
    moment = now if now is not None else time.time()
    ends = [t.ended for t in traces if t.ended is not None]
    end = facts.finished or (max(ends) if ends else moment)
    build = _Builder(facts, resource or default_resource(), end)
    root = build.add(
        "execution",
        ("execution",),
        None,
        min([facts.created, *(t.created for t in traces)]),
        end,
        {
            "flowmaestro.execution.id": facts.execution_id,
            "flowmaestro.execution.status": facts.status,
            "flowmaestro.execution.error": facts.error,
            "flowmaestro.execution.run_count": len(traces),
            "flowmaestro.workflow.id": facts.workflow_id,
            "flowmaestro.workflow.name": facts.workflow_name,
            "flowmaestro.workflow.version": facts.version,
            "flowmaestro.user.id": facts.user_id,
            "flowmaestro.queue": facts.queue,
            "flowmaestro.priority": facts.priority,
        },
        failed=facts.status == "failed",
        error=facts.error if facts.status == "failed" else None,
    )
    spans = build_spans(traces, nodes)
    runs = {t.run_id: t for t in traces}
    last_run = {span.step_key: span.segments[-1].run_id for span in spans if span.segments}
    for trace in traces:
        if trace.run_id in exported_runs:
            continue
        run_end = trace.ended if trace.ended is not None else end
        links = []
        if trace.parent_run_id in runs:
            links.append(
                Link(
                    build.context("run", trace.parent_run_id),
                    {"flowmaestro.link": trace.kind},
                )
            )
        run_span = build.add(
            f"run {trace.kind}",
            ("run", trace.run_id),
            root,
            trace.created,
            run_end,
            {
                "flowmaestro.execution.id": facts.execution_id,
                "flowmaestro.run.kind": trace.kind,
                "flowmaestro.run.status": RUN_STATUS.get(trace.status, trace.status.lower()),
                "flowmaestro.run.parked": bool(trace.parked_steps()),
                "dagster.run.id": trace.run_id,
                "dagster.run.parent_id": trace.parent_run_id,
            },
            failed=trace.status == "FAILURE",
            links=links,
        )
        if trace.started is not None:
            build.add(
                "queued",
                ("run-queued", trace.run_id),
                run_span,
                trace.created,
                trace.started,
                {"flowmaestro.wait.kind": "run_queue", "dagster.run.id": trace.run_id},
            )
        for span in spans:
            if span.step_key in trace.steps:
                _node_in_run(build, span, trace, run_span, last_run.get(span.step_key))
    for span in spans:
        _waits(build, span, root, runs, wait_kinds or {}, exported_runs)
    return build.spans


def _node_in_run(
    build: _Builder, span: Span, trace: RunTrace, run_span: SpanContext, last_run: str | None
) -> None:
    run_id = trace.run_id
    segments = [s for s in span.segments if s.run_id == run_id]
    events = trace.steps.get(span.step_key, [])
    start = min([s.start for s in segments] or [e.timestamp for e in events] or [trace.created])
    finished = [s.end for s in segments if s.kind != "waiting" and s.end is not None]
    end = max(finished or [e.timestamp for e in events] or [start])
    if any(s.kind != "waiting" and s.end is None for s in segments):
        end = trace.ended if trace.ended is not None else build.end
    status = _status_in_run(span, trace, segments, last=run_id == last_run)
    errors = [s.error for s in segments if s.error]
    error = (span.error if run_id == last_run else None) or (errors[-1] if errors else None)
    if status in ("succeeded", "waiting", "skipped"):
        error = None
    links = []
    earlier = [s for s in span.segments if s.kind == "waiting" and s.end == start]
    for waiting in earlier:  # resumed here: the parked node and the wait it ended
        parked = build.context("node", waiting.run_id, span.step_key)
        wait = build.context("waiting", waiting.run_id, span.step_key)
        links.append(Link(parked, {"flowmaestro.link": "resumed"}))
        links.append(Link(wait, {"flowmaestro.link": "waited"}))
    attributes = _node_attributes(span)
    node = build.add(
        _node_name(span),
        ("node", run_id, span.step_key),
        run_span,
        start,
        end,
        {
            **attributes,
            "flowmaestro.node.status": status,
            "flowmaestro.node.error": error,
            "flowmaestro.node.attempts": sum(1 for s in segments if s.kind == "running"),
            "dagster.run.id": run_id,
        },
        failed=status == "failed",
        error=error if status in ("failed", "handled") else None,
        links=links,
    )
    for segment in segments:
        if segment.kind == "waiting":
            continue
        if segment.kind == "running":
            outcome = segment.outcome or ("running" if segment.end is None else None)
            build.add(
                f"attempt {segment.attempt}",
                ("attempt", run_id, span.step_key, str(segment.attempt)),
                node,
                segment.start,
                segment.end if segment.end is not None else end,
                {
                    **attributes,
                    "flowmaestro.attempt": segment.attempt,
                    "flowmaestro.attempt.outcome": outcome,
                    "flowmaestro.attempt.error": segment.error,
                    "dagster.run.id": run_id,
                },
                failed=segment.outcome in ("retry", "failed", "handled"),
                error=segment.error,
            )
        else:  # queued | backoff
            build.add(
                segment.kind,
                (segment.kind, run_id, span.step_key, str(segment.attempt or 0)),
                node,
                segment.start,
                segment.end if segment.end is not None else end,
                {
                    **attributes,
                    "flowmaestro.wait.kind": segment.kind,
                    "flowmaestro.attempt": segment.attempt,
                    "dagster.run.id": run_id,
                },
            )


def _waits(
    build: _Builder,
    span: Span,
    root: SpanContext,
    runs: Mapping[str, RunTrace],
    wait_kinds: Mapping[tuple[str, str], str],
    exported_runs: Collection[str],
) -> None:
    """A parked node's wait, under the execution: it lies between two runs."""
    segments = span.segments
    for index, segment in enumerate(segments):
        if segment.kind != "waiting":
            continue
        resumed = next((s for s in segments[index + 1 :] if s.run_id != segment.run_id), None)
        ended_in = resumed.run_id if resumed is not None and segment.end is not None else None
        if (ended_in or segment.run_id) in exported_runs:
            continue
        parked_run = runs.get(segment.run_id)
        kind = wait_kinds.get((segment.run_id, span.step_key)) or (
            parked_run.tags.get(PARKED_TAG) if parked_run is not None else None
        )
        kind = kind if kind in WAIT_NAMES else None
        build.add(
            WAIT_NAMES.get(kind or "", "waiting"),
            ("waiting", segment.run_id, span.step_key),
            root,
            segment.start,
            segment.end,
            {
                **_node_attributes(span),
                "flowmaestro.wait.kind": kind or "waitpoint",
                "flowmaestro.wait.resumed": segment.end is not None,
                "dagster.run.id": segment.run_id,
                "flowmaestro.wait.resumed_in": ended_in,
            },
            links=[
                Link(
                    build.context("node", segment.run_id, span.step_key),
                    {"flowmaestro.link": "parked"},
                )
            ],
        )


# -- exporting -----------------------------------------------------------------------------------


def default_resource() -> Resource:
    """`OTEL_SERVICE_NAME` / `OTEL_RESOURCE_ATTRIBUTES`, `service.name` flowmaestro by default."""
    resource = Resource.create()
    if str(resource.attributes.get("service.name", "")).startswith("unknown_service"):
        resource = resource.merge(Resource({"service.name": "flowmaestro"}))
    return resource


def otlp_protocol() -> str:
    protocol = (
        os.environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
        or os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL")
        or "http/protobuf"
    ).strip()
    if protocol not in PROTOCOLS:
        raise ValueError(
            f"OTEL_EXPORTER_OTLP_PROTOCOL={protocol!r}: FlowMaestro exports "
            f"{' or '.join(PROTOCOLS)}"
        )
    return protocol


def otlp_exporter() -> SpanExporter:
    """The OTLP span exporter the environment asks for; it reads `OTEL_EXPORTER_OTLP_*`
    (endpoint, headers, timeout, compression, certificates) itself."""
    if otlp_protocol() == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
            OTLPSpanExporter as GrpcExporter,
        )

        return GrpcExporter()
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
        OTLPSpanExporter as HttpExporter,
    )

    return HttpExporter()


class ExporterFactory(Protocol):
    def __call__(self) -> SpanExporter: ...


def _utc(moment: datetime) -> datetime:
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def execution_facts(session: Session, execution: Execution) -> ExecutionFacts:
    workflow = session.get(Workflow, execution.workflow_id)
    return ExecutionFacts(
        execution_id=execution.id,
        workflow_id=execution.workflow_id,
        workflow_name=workflow.name if workflow is not None else execution.workflow_id,
        version=execution.version,
        user_id=execution.user_id,
        status=execution.status,
        created=_utc(execution.created_at).timestamp(),
        finished=_utc(execution.finished_at).timestamp() if execution.finished_at else None,
        error=execution.error,
        queue=execution.queue,
        priority=execution.priority,
    )


def _wait_kinds(session: Session, execution_id: str) -> dict[tuple[str, str], str]:
    rows = session.execute(
        select(Waitpoint.run_id, Waitpoint.step_key, Waitpoint.kind).where(
            Waitpoint.execution_id == execution_id
        )
    )
    return {(run_id, step_key): kind for run_id, step_key, kind in rows}


def export_execution(
    session: Session, client: DagsterClient, execution: Execution, exporter: SpanExporter
) -> int:
    """Export the execution's trace (the runs an earlier export sent left out) and mark its
    runs; the number of spans sent. Raises `DagsterUnavailable`, or `RuntimeError` when the
    exporter refused the spans (nothing is marked: the next tick sends them again)."""
    traces = execution_traces(client, execution.id)
    exported = {t.run_id for t in traces if TRACED_TAG in t.tags}
    version = version_row(session, execution)
    nodes = node_index(compiled_for(version) if version is not None else None)
    spans = build_trace(
        execution_facts(session, execution),
        traces,
        nodes,
        wait_kinds=_wait_kinds(session, execution.id),
        exported_runs=exported,
    )
    if exporter.export(spans) is not SpanExportResult.SUCCESS:
        raise RuntimeError(f"the OTLP exporter refused the trace of execution {execution.id}")
    mark = _utc(execution.finished_at).isoformat() if execution.finished_at else "unfinished"
    for trace in traces:
        client.tag_run(trace.run_id, {TRACED_TAG: mark})
    return len(spans)


@dataclass(frozen=True)
class ExportTick:
    exported: int  # executions
    spans: int
    failed: int
    watermark: datetime | None  # the latest finish time looked at (the sensor's cursor)


def _traced_marks(client: DagsterClient, run_ids: Sequence[str]) -> dict[str, str | None]:
    """Each existing run's `TRACED_TAG` (None: not exported yet), read in pages of 500 runs
    instead of a lookup per candidate."""
    from dagster import RunsFilter

    marks: dict[str, str | None] = {}
    for start in range(0, len(run_ids), 500):
        page = list(run_ids[start : start + 500])
        for run in client.instance.get_runs(filters=RunsFilter(run_ids=page)):
            marks[run.run_id] = run.tags.get(TRACED_TAG)
    return marks


def export_finished(
    session: Session,
    client: DagsterClient,
    exporter: SpanExporter,
    *,
    after: datetime | None,
    lookback_seconds: float = LOOKBACK_SECONDS,
    limit: int = 100,
) -> ExportTick:
    """Export the traces of executions that finished since `after`, at most `limit` of them.

    An execution counts as exported when its last run carries its finish time in `TRACED_TAG`;
    the candidates start `lookback_seconds` before `after`, so a status written late with an
    earlier finish time is still found (their runs' marks are read in pages, one query each). An
    execution retried after it failed finishes again later: its new runs are exported then.
    The watermark stops before the first execution not exported (the collector was down, or
    `limit` was reached), so the next tick starts there."""
    query = (
        select(Execution)
        .where(
            Execution.status.in_(sorted(TERMINAL)),
            Execution.finished_at.is_not(None),
            Execution.latest_run_id.is_not(None),
        )
        .order_by(Execution.finished_at, Execution.id)
        .execution_options(yield_per=500)
    )
    if after is not None:
        since = _utc(after) - timedelta(seconds=lookback_seconds)
        query = query.where(Execution.finished_at >= since)
    exported = spans = failed = 0
    watermark = after
    candidates = [
        (execution, _utc(execution.finished_at), execution.latest_run_id)
        for execution in session.scalars(query)
        if execution.finished_at is not None and execution.latest_run_id is not None
    ]
    marks = _traced_marks(client, [run_id for _, _, run_id in candidates])
    for execution, finished, run_id in candidates:
        if run_id in marks and marks[run_id] != finished.isoformat():
            if exported >= limit:
                break
            try:
                spans += export_execution(session, client, execution, exporter)
            except (DagsterUnavailable, RuntimeError, ValueError) as exc:
                log.warning("trace of execution %s not exported: %s", execution.id, exc)
                failed += 1
                break  # the collector is down: start from here next tick
            exported += 1
        if watermark is None or finished > watermark:
            watermark = finished
    return ExportTick(exported, spans, failed, watermark)


__all__ = [
    "TRACED_TAG",
    "ExecutionFacts",
    "ExportTick",
    "ExporterFactory",
    "build_trace",
    "default_resource",
    "execution_facts",
    "export_execution",
    "export_finished",
    "otlp_exporter",
    "otlp_protocol",
    "span_id_of",
    "trace_id_of",
]
