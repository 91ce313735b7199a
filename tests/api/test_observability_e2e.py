"""Observability end to end: a real Dagster (webserver, daemon, waitpoint sensor) and the API.

One execution retries a model call (503, then an answer) and parks at an approval; while it
waits, the timeline shows an ongoing waiting segment and /metrics a waiting waitpoint; after
the approval the sensor resumes it in a second run, and the timeline splits every node into
its queued, running, backoff and waiting segments across both runs. With
FLOWMAESTRO_OTEL_ENABLED, the platform's trace export sensor sends the finished execution to an
in-process OTLP receiver (gRPC): one trace, checked span by span against the timeline.
"""

import json
import time
import uuid
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import pytest
from fastapi.testclient import TestClient

from flowmaestro_dagster.testing import FakeLLMServer, FakeReply
from flowmaestro_dagster.testing.fake_llm import API_KEY
from flowmaestro_dagster.testing.otlp import OtlpReceiver, ReceivedSpan
from flowmaestro_dagster.testing.stack import DagsterStack
from tests.api import e2e
from tests.api.e2e import approvals_of, decide, deploy, finished, running_stack, start, wait_for
from tests.builders import chain, node

pytestmark = pytest.mark.slow
SECRET = "observability-secret-0123456789"


@pytest.fixture(scope="module")
def llm() -> Iterator[FakeLLMServer]:
    with FakeLLMServer() as server:
        yield server


@pytest.fixture(scope="module")
def receiver() -> Iterator[OtlpReceiver]:
    with OtlpReceiver() as started:
        yield started


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory, llm: FakeLLMServer, receiver: OtlpReceiver
) -> Iterator[DagsterStack]:
    providers = {"providers": {"openai": {"base_url": llm.url, "api_key": API_KEY}}}
    env = {
        "FLOWMAESTRO_OTEL_ENABLED": "true",
        "FLOWMAESTRO_OTEL_EXPORT_INTERVAL_SECONDS": "1",
        "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.grpc_endpoint,
        "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
        "FLOWMAESTRO_LLM": json.dumps(providers),
        "FLOWMAESTRO_WAIT_SLEEP_THRESHOLD_SECONDS": "0.5",
        "FLOWMAESTRO_WAITPOINT_INTERVAL_SECONDS": "1",
        "FLOWMAESTRO_SECRET_KEY": SECRET,
        "FLOWMAESTRO_CALLBACK_SIGNING_SECRET": SECRET,
    }
    with running_stack(tmp_path_factory.mktemp("observability"), extra_env=env) as started:
        yield started


settings = e2e.settings_fixture(
    secret_key=SECRET, callback_signing_secret=SECRET, wait_sleep_threshold_seconds=0.5
)
dagster_client, client, auth = e2e.dagster_client, e2e.client, e2e.auth


RETRY = {"maxAttempts": 3, "backoffStrategy": "fixed", "minDelayMs": 500}
FLOW = chain(
    node("in", "input", label="Topic", inputName="topic"),
    node("ask", "llm", label="Draft", model="gpt-4o", prompt="{{topic}}", retry=RETRY),
    node("review", "humanReview", label="Editor OK", reviewPrompt="Publish {{ask.text}}?"),
    node("out", "output", outputName="post", value="{{ask.text}}"),
    name="Observed",
    react=True,
)


def metric(text: str, line_start: str) -> float:
    for line in text.splitlines():
        if line.startswith(line_start + " "):
            return float(line.split()[-1])
    raise AssertionError(f"{line_start} not in the metrics")


def kinds(span: dict[str, Any]) -> list[tuple[str, str | None]]:
    return [(s["kind"], s["outcome"]) for s in span["segments"]]


def test_a_retry_and_a_waitpoint_across_two_runs(
    client: TestClient, auth: dict[str, str], llm: FakeLLMServer, receiver: OtlpReceiver
) -> None:
    workflow_id = deploy(client, auth, FLOW)
    llm.enqueue(FakeReply.error(503), "A short post")
    execution_id = start(client, auth, workflow_id, {"topic": "t"})

    def parked() -> dict[str, Any] | None:
        body: dict[str, Any] = client.get(
            f"/executions/{execution_id}/timeline", headers=auth
        ).json()
        return body if body["status"] == "waiting" else None

    waiting = wait_for(parked, interval=0.5)
    review = next(s for s in waiting["spans"] if s["node_id"] == "review")
    assert review["status"] == "waiting" and review["segments"][-1]["ongoing"]
    assert waiting["runs"][0]["parked"] is True
    text = client.get("/metrics").text
    assert metric(text, "flowmaestro_waitpoints_waiting") >= 1
    time.sleep(1.5)  # the wait the timeline must show
    pending = wait_for(lambda: approvals_of(client, auth, execution_id))
    decide(client, auth, pending[0]["id"], decision="approve")
    assert finished(client, auth, execution_id)["status"] == "succeeded"
    body = client.get(f"/executions/{execution_id}/timeline", headers=auth).json()
    assert body["status"] == "succeeded"
    first, second = body["runs"]
    assert (first["kind"], first["parked"]) == ("initial", True)
    assert (second["kind"], second["parent_run_id"]) == ("resume", first["run_id"])
    spans = {s["node_id"]: s for s in body["spans"]}
    ask = spans["ask"]
    assert ask["step_key"] == "draft__ask"
    assert kinds(ask) == [
        ("queued", None),
        ("running", "retry"),
        ("backoff", None),
        ("running", "succeeded"),
    ]
    assert 450 <= ask["segments"][2]["duration_ms"] <= 5000
    review = spans["review"]
    assert kinds(review) == [
        ("queued", None),
        ("running", "parked"),
        ("waiting", None),
        ("running", "succeeded"),
    ]
    wait_segment = review["segments"][2]
    assert wait_segment["run_id"] == first["run_id"] and wait_segment["duration_ms"] >= 1500
    assert wait_segment["end"] == review["segments"][3]["start"]
    assert review["segments"][3]["run_id"] == second["run_id"]
    out = spans["out"]
    assert [s["run_id"] for s in out["segments"]] == [second["run_id"]] * 2
    assert kinds(out) == [("queued", None), ("running", "succeeded")]
    metrics = body["metrics"]
    assert metrics["run_count"] == 2 and metrics["retry_count"] == 1
    assert metrics["error_count"] == 1 and metrics["waiting_ms"] >= 1500
    assert metrics["queue_wait_ms"] > 0
    assert metrics["total_duration_ms"] >= metrics["waiting_ms"] + metrics["running_ms"]
    analytics = client.get(f"/workflows/{workflow_id}/analytics", headers=auth).json()
    assert analytics["by_status"] == {"succeeded": 1} and analytics["success_rate"] == 1.0
    assert analytics["nodes"] == [
        {"node_id": "ask", "errors": 1, "failures": 0, "retries": 1, "executions_with_errors": 1}
    ]
    text = client.get("/metrics").text
    assert metric(text, 'flowmaestro_node_duration_seconds_count{type="llm"}') >= 1
    assert metric(text, "flowmaestro_waitpoints_waiting") == 0
    assert metric(text, 'flowmaestro_executions{status="succeeded"}') >= 1
    check_trace(receiver, execution_id, body)


def ns(moment: str) -> int:
    return round(datetime.fromisoformat(moment).timestamp() * 1e9)


def check_trace(receiver: OtlpReceiver, execution_id: str, body: dict[str, Any]) -> None:
    """The exported trace, span by span, against the timeline the API computed."""
    trace_id = uuid.UUID(execution_id).hex
    first, second = (r["run_id"] for r in body["runs"])
    expected = sorted(
        [
            ("execution", None, ""),
            ("run initial", first, "execution "),
            ("run resume", second, "execution "),
            ("waiting for approval", first, "execution "),
            ("queued", first, f"run initial {first}"),
            ("queued", second, f"run resume {second}"),
            ("Topic", first, f"run initial {first}"),
            ("queued", first, f"Topic {first}"),
            ("attempt 1", first, f"Topic {first}"),
            ("Draft", first, f"run initial {first}"),
            ("queued", first, f"Draft {first}"),
            ("attempt 1", first, f"Draft {first}"),
            ("backoff", first, f"Draft {first}"),
            ("attempt 2", first, f"Draft {first}"),
            ("Editor OK", first, f"run initial {first}"),
            ("queued", first, f"Editor OK {first}"),
            ("attempt 1", first, f"Editor OK {first}"),
            ("Editor OK", second, f"run resume {second}"),
            ("attempt 2", second, f"Editor OK {second}"),  # resumed: the wait came before it
            ("post", first, f"run initial {first}"),  # skipped: its upstream parked
            ("post", second, f"run resume {second}"),
            ("queued", second, f"post {second}"),
            ("attempt 1", second, f"post {second}"),
        ]
    )
    trace = receiver.wait_for_spans(
        lambda got: sum(s.trace_id == trace_id for s in got) >= len(expected), timeout=60
    )
    spans = [s for s in trace if s.trace_id == trace_id]
    assert {s.transport for s in spans} == {"grpc"}
    assert {s.resource["service.name"] for s in spans} == {"flowmaestro"}
    by_id = {s.span_id: s for s in spans}

    def parent(span: ReceivedSpan) -> str:
        up = by_id.get(span.parent_span_id or "")
        return "" if up is None else f"{up.name} {up.attributes.get('dagster.run.id', '')}"

    shape = sorted((s.name, s.attributes.get("dagster.run.id"), parent(s)) for s in spans)
    assert shape == expected
    root = next(s for s in spans if s.name == "execution")
    assert root.parent_span_id is None
    assert root.attributes["flowmaestro.execution.id"] == execution_id
    assert root.attributes["flowmaestro.execution.status"] == "succeeded"
    assert root.attributes["flowmaestro.workflow.name"] == "Observed"
    assert root.attributes["flowmaestro.execution.run_count"] == 2
    runs = {s.name: s for s in spans if s.name.startswith("run ")}
    assert [link.span_id for link in runs["run resume"].links] == [runs["run initial"].span_id]
    timeline = {s["node_id"]: s for s in body["spans"]}
    draft = next(s for s in spans if s.name == "Draft")
    assert draft.attributes["flowmaestro.node.id"] == "ask"
    assert draft.attributes["flowmaestro.node.type"] == "llm"
    assert draft.attributes["flowmaestro.node.status"] == "succeeded"
    assert draft.attributes["flowmaestro.node.attempts"] == 2
    retried = next(s for s in spans if s.name == "attempt 1" and s.parent_span_id == draft.span_id)
    assert retried.attributes["flowmaestro.attempt.outcome"] == "retry"
    assert retried.status_code == "ERROR" and "503" in retried.status_message
    backoff = next(s for s in spans if s.name == "backoff")
    segment = timeline["ask"]["segments"][2]
    assert abs(backoff.start - ns(segment["start"])) < 1000
    assert abs(backoff.end - ns(segment["end"])) < 1000
    wait = next(s for s in spans if s.name == "waiting for approval")
    segment = timeline["review"]["segments"][2]
    assert abs(wait.start - ns(segment["start"])) < 1000
    assert abs(wait.end - ns(segment["end"])) < 1000
    assert wait.attributes["flowmaestro.wait.kind"] == "approval"
    assert wait.attributes["flowmaestro.node.label"] == "Editor OK"
    parked, resumed = (
        next(s for s in spans if s.name == "Editor OK" and s.attributes["dagster.run.id"] == run)
        for run in (first, second)
    )
    assert parked.attributes["flowmaestro.node.status"] == "waiting"
    assert resumed.attributes["flowmaestro.node.status"] == "succeeded"
    assert [link.span_id for link in wait.links] == [parked.span_id]
    assert [link.span_id for link in resumed.links] == [parked.span_id, wait.span_id]
    assert wait.end == resumed.start
    skipped = next(s for s in spans if s.name == "post" and s.attributes["dagster.run.id"] == first)
    assert skipped.attributes["flowmaestro.node.status"] == "skipped"
