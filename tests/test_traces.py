"""Traces out: an execution as one OpenTelemetry trace (control/traces.py), received by an
in-process OTLP receiver over HTTP and gRPC.

The span tree is checked on a run chain built from data (a retried node, a node parked at an
approval in the first run and resumed in the second); the export on a real exporter against
`OtlpReceiver`; the sensor on a real execution run in process. The whole path on a real Dagster
(daemon, sensors, resume) is in tests/api/test_observability_e2e.py.
"""

import uuid
from collections.abc import Iterator
from dataclasses import replace
from datetime import datetime
from typing import Any

import pytest
from dagster import DagsterEventType, DagsterInstance, DagsterRunStatus, build_sensor_context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExportResult

from flowmaestro_dagster.control.timeline import NodeInfo, RunTrace, StepEvent
from flowmaestro_dagster.control.traces import (
    TRACED_TAG,
    ExecutionFacts,
    build_trace,
    otlp_exporter,
    otlp_protocol,
    span_id_of,
    trace_id_of,
)
from flowmaestro_dagster.orchestration.tracing import make_trace_export_sensor
from flowmaestro_dagster.settings import Settings
from flowmaestro_dagster.tags import PARKED_TAG, RESUME_TAG
from flowmaestro_dagster.testing.otlp import OtlpReceiver, ReceivedSpan
from flowmaestro_dagster.testing.recording_client import RecordingDagsterClient
from tests.test_sensors import (
    committed_execution,
    echo_flow,
    execution_row,
    finish_tick,
    run_in_process,
    settings,
)

__all__ = ["settings"]  # the fixture, shared with tests/test_sensors.py

EXECUTION = str(uuid.uuid4())
NODES = {
    "topic__in": NodeInfo("in", "Topic", "input"),
    "draft__ask": NodeInfo("ask", "Draft", "llm"),
    "editor_ok__review": NodeInfo("review", "Editor OK", "humanReview"),
    "out": NodeInfo("out", "out", "output"),
}
FACTS = ExecutionFacts(
    execution_id=EXECUTION,
    workflow_id="wf-1",
    workflow_name="Observed",
    version=1,
    user_id="user-1",
    status="succeeded",
    created=100.0,
    finished=121.0,
)


def run_chain() -> list[RunTrace]:
    """r1 (initial): in → ask (503, retried after a backoff, then succeeds) → review parks at
    an approval; r2 (resume of r1) runs review again and out."""
    first = RunTrace(
        run_id="r1",
        status="SUCCESS",
        tags={PARKED_TAG: "approval"},
        parent_run_id=None,
        created=100.0,
        started=101.0,
        ended=106.0,
        steps={
            "topic__in": [
                StepEvent(101.5, "start"),
                StepEvent(101.6, "output", output="result"),
                StepEvent(101.7, "success"),
            ],
            "draft__ask": [
                StepEvent(101.8, "start"),
                StepEvent(102.0, "retry", wait_seconds=1, error="HTTP 503 from the provider"),
                StepEvent(103.0, "start"),
                StepEvent(103.5, "output", output="result"),
                StepEvent(103.6, "success"),
            ],
            "editor_ok__review": [StepEvent(103.8, "start"), StepEvent(104.0, "success")],
        },
        upstream={"draft__ask": {"topic__in"}, "editor_ok__review": {"draft__ask"}},
    )
    second = RunTrace(
        run_id="r2",
        status="SUCCESS",
        tags={RESUME_TAG: "r1"},
        parent_run_id="r1",
        created=115.0,
        started=116.0,
        ended=121.0,
        steps={
            "editor_ok__review": [
                StepEvent(117.0, "start"),
                StepEvent(117.5, "output", output="result"),
                StepEvent(117.6, "success"),
            ],
            "out": [
                StepEvent(118.0, "start"),
                StepEvent(118.2, "output", output="result"),
                StepEvent(118.3, "success"),
            ],
        },
        upstream={"out": {"editor_ok__review"}, "editor_ok__review": {"draft__ask"}},
    )
    return [first, second]


def ids(span: ReadableSpan) -> tuple[int, int | None]:
    assert span.context is not None
    return span.context.span_id, span.parent.span_id if span.parent else None


def tree(spans: list[ReadableSpan]) -> dict[str, list[str]]:
    """Parent name → child names (the parent's run id in brackets for the per-run spans)."""
    by_id = {ids(s)[0]: s for s in spans}

    def label(span: ReadableSpan) -> str:
        run = (span.attributes or {}).get("dagster.run.id")
        return f"{span.name} [{run}]" if run and span.name != "execution" else span.name

    children: dict[str, list[str]] = {}
    for span in spans:
        parent = ids(span)[1]
        if parent is not None:
            children.setdefault(label(by_id[parent]), []).append(label(span))
    return children


def named(spans: list[ReadableSpan], name: str, run: str | None = None) -> ReadableSpan:
    [span] = [
        s
        for s in spans
        if s.name == name and (run is None or (s.attributes or {}).get("dagster.run.id") == run)
    ]
    return span


# -- the span tree -------------------------------------------------------------------------------


def test_an_execution_is_one_trace_of_runs_nodes_attempts_and_waits() -> None:
    spans = build_trace(
        FACTS, run_chain(), NODES, wait_kinds={("r1", "editor_ok__review"): "approval"}
    )
    assert {s.context.trace_id for s in spans if s.context} == {uuid.UUID(EXECUTION).int}
    assert tree(spans) == {
        "execution": ["run initial [r1]", "run resume [r2]", "waiting for approval [r1]"],
        "run initial [r1]": ["queued [r1]", "Topic [r1]", "Draft [r1]", "Editor OK [r1]"],
        "Topic [r1]": ["queued [r1]", "attempt 1 [r1]"],
        "Draft [r1]": ["queued [r1]", "attempt 1 [r1]", "backoff [r1]", "attempt 2 [r1]"],
        "Editor OK [r1]": ["queued [r1]", "attempt 1 [r1]"],
        "run resume [r2]": ["queued [r2]", "Editor OK [r2]", "out [r2]"],
        "Editor OK [r2]": ["attempt 2 [r2]"],  # resumed: its wait, not a queue, came before
        "out [r2]": ["queued [r2]", "attempt 1 [r2]"],
    }
    root = named(spans, "execution")
    assert root.parent is None
    assert (root.start_time, root.end_time) == (100_000_000_000, 121_000_000_000)
    assert root.attributes == {
        "flowmaestro.execution.id": EXECUTION,
        "flowmaestro.execution.status": "succeeded",
        "flowmaestro.execution.run_count": 2,
        "flowmaestro.workflow.id": "wf-1",
        "flowmaestro.workflow.name": "Observed",
        "flowmaestro.workflow.version": 1,
        "flowmaestro.user.id": "user-1",
        "flowmaestro.priority": 0,
    }


def test_node_spans_carry_label_type_status_and_error() -> None:
    spans = build_trace(FACTS, run_chain(), NODES)
    draft = named(spans, "Draft")
    assert draft.attributes is not None
    assert {k: v for k, v in draft.attributes.items() if k.startswith("flowmaestro.node")} == {
        "flowmaestro.node.id": "ask",
        "flowmaestro.node.label": "Draft",
        "flowmaestro.node.type": "llm",
        "flowmaestro.node.step_key": "draft__ask",
        "flowmaestro.node.status": "succeeded",
        "flowmaestro.node.attempts": 2,
    }
    failed = next(s for s in spans if s.name == "attempt 1" and s.parent == draft.context)
    retried = next(s for s in spans if s.name == "attempt 2" and s.parent == draft.context)
    assert failed.attributes is not None and retried.attributes is not None
    assert failed.attributes["flowmaestro.attempt.outcome"] == "retry"
    assert failed.attributes["flowmaestro.attempt.error"] == "HTTP 503 from the provider"
    assert failed.status.status_code.name == "ERROR"
    assert failed.status.description == "HTTP 503 from the provider"
    assert retried.attributes["flowmaestro.attempt.outcome"] == "succeeded"
    assert retried.status.status_code.name == "UNSET"
    backoff = next(s for s in spans if s.name == "backoff")
    assert (backoff.start_time, backoff.end_time) == (102_000_000_000, 103_000_000_000)
    assert (
        backoff.attributes is not None and backoff.attributes["flowmaestro.wait.kind"] == "backoff"
    )
    parked = named(spans, "Editor OK", "r1")
    assert parked.attributes is not None
    assert parked.attributes["flowmaestro.node.status"] == "waiting"
    assert named(spans, "Editor OK", "r2").attributes["flowmaestro.node.status"] == "succeeded"  # type: ignore[index]


def test_a_failed_node_and_execution_are_errors() -> None:
    [first] = run_chain()[:1]
    first.steps["draft__ask"] = [
        StepEvent(101.8, "start"),
        StepEvent(102.0, "failure", error="the model refused"),
    ]
    del first.steps["editor_ok__review"]
    first.tags = {}
    facts = replace(FACTS, status="failed", error="node 'ask' failed")
    spans = build_trace(facts, [first], NODES)
    draft = named(spans, "Draft")
    assert draft.attributes is not None
    assert draft.attributes["flowmaestro.node.status"] == "failed"
    assert draft.attributes["flowmaestro.node.error"] == "the model refused"
    assert (draft.status.status_code.name, draft.status.description) == (
        "ERROR",
        "the model refused",
    )
    root = named(spans, "execution")
    assert root.status.status_code.name == "ERROR"
    assert (
        root.attributes is not None
        and root.attributes["flowmaestro.execution.error"] == "node 'ask' failed"
    )


def test_resumed_runs_link_to_the_run_node_and_wait_before_them() -> None:
    spans = build_trace(FACTS, run_chain(), NODES)
    first, second = named(spans, "run initial"), named(spans, "run resume")
    assert [(link.context.span_id, dict(link.attributes or {})) for link in second.links] == [
        (ids(first)[0], {"flowmaestro.link": "resume"})
    ]
    wait = named(spans, "waiting for approval")  # from the run's parked tag
    parked, resumed = named(spans, "Editor OK", "r1"), named(spans, "Editor OK", "r2")
    assert (wait.start_time, wait.end_time) == (parked.end_time, resumed.start_time)
    assert [link.context.span_id for link in wait.links] == [ids(parked)[0]]
    assert wait.attributes is not None and wait.attributes["flowmaestro.wait.resumed_in"] == "r2"
    assert [
        (link.context.span_id, (link.attributes or {})["flowmaestro.link"])
        for link in resumed.links
    ] == [
        (ids(parked)[0], "resumed"),
        (ids(wait)[0], "waited"),
    ]


def test_ids_are_derived_from_the_execution_so_exports_agree() -> None:
    spans = {s.name: s for s in build_trace(FACTS, run_chain(), NODES)}
    # Named by what they are, not drawn at random: a re-export sends the same ids.
    root, run = spans["execution"].context, spans["run initial"].context
    assert root is not None and run is not None
    assert (root.trace_id, root.span_id) == (
        trace_id_of(EXECUTION),
        span_id_of(EXECUTION, "execution"),
    )
    assert (run.trace_id, run.span_id) == (
        trace_id_of(EXECUTION),
        span_id_of(EXECUTION, "run", "r1"),
    )
    assert trace_id_of(EXECUTION) == uuid.UUID(EXECUTION).int
    assert trace_id_of("not-a-uuid") == trace_id_of("not-a-uuid") != trace_id_of("other")
    assert span_id_of(EXECUTION, "run", "r1") != span_id_of(EXECUTION, "run", "r2")


def test_runs_an_earlier_export_sent_are_left_out() -> None:
    spans = build_trace(FACTS, run_chain(), NODES, exported_runs={"r1"})
    waits = [s for s in spans if s.name == "waiting for approval"]
    runs = {(s.attributes or {}).get("dagster.run.id") for s in spans if s.name != "execution"}
    assert runs - {"r1"} == {"r2"} and len(waits) == 1  # the wait ended in r2: it comes with it
    assert all(s.name != "run initial" for s in spans)


def test_a_wait_never_resumed_ends_with_the_execution() -> None:
    first = run_chain()[0]
    facts = replace(FACTS, status="cancelled", finished=109.0)
    spans = build_trace(facts, [first], NODES)
    wait = named(spans, "waiting for approval")
    assert wait.end_time == 109_000_000_000
    assert wait.attributes is not None and wait.attributes["flowmaestro.wait.resumed"] is False


# -- the export ----------------------------------------------------------------------------------


@pytest.fixture
def receiver() -> Iterator[OtlpReceiver]:
    with OtlpReceiver() as started:
        yield started


def received_tree(spans: list[ReceivedSpan]) -> set[tuple[str, str | None]]:
    names = {s.span_id: s.name for s in spans}
    return {(s.name, names.get(s.parent_span_id or "")) for s in spans}


@pytest.mark.parametrize("protocol", ["http/protobuf", "grpc"])
def test_the_trace_reaches_an_otlp_receiver_span_by_span(
    receiver: OtlpReceiver, monkeypatch: pytest.MonkeyPatch, protocol: str
) -> None:
    endpoint = receiver.grpc_endpoint if protocol == "grpc" else receiver.http_endpoint
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", protocol)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_HEADERS", "x-tenant=acme")
    monkeypatch.setenv("OTEL_SERVICE_NAME", "flowmaestro-test")
    spans = build_trace(FACTS, run_chain(), NODES, resource=Resource.create())
    exporter = otlp_exporter()
    try:
        assert exporter.export(spans) is SpanExportResult.SUCCESS
    finally:
        exporter.shutdown()
    received = receiver.wait_for_spans(lambda got: len(got) >= len(spans))
    assert len(received) == len(spans)
    assert {s.transport for s in received} == {protocol.split("/", maxsplit=1)[0]}
    assert receiver.requests[0]["x-tenant"] == "acme"
    assert {s.trace_id for s in received} == {uuid.UUID(EXECUTION).hex}
    assert {s.resource["service.name"] for s in received} == {"flowmaestro-test"}
    expected = {
        (s.name, next((p.name for p in spans if p.context == s.parent), None)) for s in spans
    }
    assert received_tree(received) == expected
    by_name = {s.name: s for s in received if s.name in ("execution", "run resume", "backoff")}
    assert by_name["execution"].parent_span_id is None
    assert by_name["execution"].attributes["flowmaestro.workflow.name"] == "Observed"
    assert [link.span_id for link in by_name["run resume"].links] == [
        f"{span_id_of(EXECUTION, 'run', 'r1'):016x}"
    ]
    failed = next(s for s in received if s.attributes.get("flowmaestro.attempt.outcome") == "retry")
    assert (failed.status_code, failed.status_message) == ("ERROR", "HTTP 503 from the provider")
    assert failed.attributes["flowmaestro.node.label"] == "Draft"
    assert failed.attributes["flowmaestro.node.type"] == "llm"


def test_the_protocol_comes_from_the_standard_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_PROTOCOL", raising=False)
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", raising=False)
    assert otlp_protocol() == "http/protobuf"
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "grpc")
    assert otlp_protocol() == "grpc"  # the traces-specific one wins
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "http/json")
    with pytest.raises(ValueError, match="http/json"):
        otlp_protocol()


# -- the sensor ----------------------------------------------------------------------------------


def tick(
    sensor: Any, instance: DagsterInstance, cursor: str | None = None
) -> tuple[str, str | None]:
    context = build_sensor_context(instance=instance, sensor_name=sensor.name, cursor=cursor)
    result = sensor(context)
    return str(result.skip_message), context.cursor


def finished_execution(
    settings: Settings, instance: DagsterInstance, client: RecordingDagsterClient
) -> tuple[str, str]:
    execution_id = committed_execution(settings, echo_flow())
    run_id = run_in_process(settings, instance, execution_id)
    finish_tick(
        settings, instance, client, run_id, DagsterRunStatus.SUCCESS, DagsterEventType.RUN_SUCCESS
    )
    assert execution_row(settings, execution_id).status == "succeeded"
    return execution_id, run_id


def test_the_export_sensor_is_off_by_default(
    settings: Settings,
    instance: DagsterInstance,
    client: RecordingDagsterClient,
    receiver: OtlpReceiver,
) -> None:
    finished_execution(settings, instance, client)
    assert settings.otel_enabled is False
    sensor = make_trace_export_sensor(settings=settings, client_factory=lambda _: client)
    assert tick(sensor, instance)[0] == "trace export is off (FLOWMAESTRO_OTEL_ENABLED)"
    assert receiver.spans == []


def test_the_export_sensor_sends_a_finished_execution_once(
    settings: Settings,
    instance: DagsterInstance,
    client: RecordingDagsterClient,
    receiver: OtlpReceiver,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.http_endpoint)
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_PROTOCOL", raising=False)
    execution_id, run_id = finished_execution(settings, instance, client)
    enabled = settings.model_copy(update={"otel_enabled": True})
    sensor = make_trace_export_sensor(settings=enabled, client_factory=lambda _: client)

    message, cursor = tick(sensor, instance)

    assert message.startswith("exported 1 executions, 9 spans"), message
    spans = receiver.wait_for_spans(lambda got: len(got) >= 9)
    assert received_tree(spans) == {
        ("execution", None),
        ("run initial", "execution"),
        ("queued", "run initial"),
        ("who", "run initial"),  # the nodes' labels: their input / output names
        ("said", "run initial"),
        ("queued", "who"),
        ("attempt 1", "who"),
        ("queued", "said"),
        ("attempt 1", "said"),
    }
    root = next(s for s in spans if s.name == "execution")
    assert root.trace_id == uuid.UUID(execution_id).hex
    assert root.attributes["flowmaestro.workflow.name"] == "Echo"
    nodes = {
        s.attributes["flowmaestro.node.id"]: s
        for s in spans
        if s.attributes.get("flowmaestro.node.status")
    }
    assert set(nodes) == {"in", "out"}
    assert {n.attributes["flowmaestro.node.type"] for n in nodes.values()} == {"input", "output"}
    assert {n.attributes["flowmaestro.node.status"] for n in nodes.values()} == {"succeeded"}
    run = instance.get_run_by_id(run_id)
    assert run is not None and TRACED_TAG in run.tags
    finished = execution_row(settings, execution_id).finished_at
    assert finished is not None and run.tags[TRACED_TAG] == finished.isoformat()
    assert cursor is not None and datetime.fromisoformat(cursor) >= finished  # its first tick

    assert tick(sensor, instance, cursor)[0] == "exported 0 executions, 0 spans"
    assert len(receiver.spans) == len(spans)
