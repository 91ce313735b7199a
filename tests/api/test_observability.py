"""Timeline, execution metrics and /metrics through the API (workflow analytics:
test_analytics.py).

The API reads Dagster's storage directly, so these tests run the executions' Dagster runs in
process on a real (ephemeral) instance, tagged as the API tags them, and then ask the API.
The span algorithm's waiting segments are covered with a run chain built from data here and
end to end (a real waitpoint, resumed by the sensor) in test_observability_e2e.py.
"""

import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from dagster import DagsterEventType, DagsterInstance
from fastapi.testclient import TestClient
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import Metric
from prometheus_client.registry import Collector
from sqlalchemy import update

from flowmaestro_api.services.metrics import NodeDurationHistogram, op_type
from flowmaestro_dagster.control.timeline import NodeInfo, RunTrace, StepEvent, build_spans
from flowmaestro_dagster.engines.jobs import build_job
from flowmaestro_dagster.engines.local import execute_workflow
from flowmaestro_dagster.store.db import get_engine, session_scope
from flowmaestro_dagster.store.models import Decision, Execution, NodeAttempt, Waitpoint
from flowmaestro_dagster.tags import WORKFLOW_ID_TAG
from flowmaestro_dagster.testing import FakeLLMServer, FakeReply, resources_for
from tests.api.conftest import make_key
from tests.builders import backend_flow, chain, node

LLM_FLOW = chain(
    node("in", "input", label="Topic", inputName="topic"),
    node("ask", "llm", label="Ask the model", model="gpt-4o", prompt="{{topic}}", retry={"maxAttempts": 3, "backoffStrategy": "fixed", "minDelayMs": 400}),
    node("out", "output", outputName="answer", value="{{ask.text}}"),
    name="Ask twice",
    react=True,
)  # fmt: skip
PARSE = {"operation": "parseJSON", "inputData": "{{raw}}"}
PARSE_FLOW = backend_flow(
    [
        node("in", "input", inputName="raw"),
        node("parse", "transform", **PARSE),
        node("safe", "transform", **PARSE, onError={"strategy": "continue"}),
    ],
    [("in", "parse"), ("in", "safe")],
    name="Parse",
)


@pytest.fixture
def auth(database_url: str) -> dict[str, str]:
    return make_key(database_url, "observer@example.com")


def deploy(api: TestClient, auth: dict[str, str], definition: dict[str, Any]) -> str:
    created = api.post("/workflows", json={"definition": definition}, headers=auth)
    assert created.status_code == 201, created.text
    workflow_id: str = created.json()["id"]
    assert api.post(f"/workflows/{workflow_id}/versions/1/deploy", headers=auth).status_code == 200
    return workflow_id


def execute(
    api: TestClient,
    auth: dict[str, str],
    instance: DagsterInstance,
    workflow_id: str,
    definition: dict[str, Any],
    inputs: dict[str, Any],
    **settings: Any,
) -> tuple[str, str]:
    """Start an execution through the API and run its Dagster run in process, tagged as the
    API tags it. Returns (execution id, run id)."""
    created = api.post(
        f"/workflows/{workflow_id}/executions", json={"inputs": inputs}, headers=auth
    )
    assert created.status_code == 201, created.text
    execution_id: str = created.json()["id"]
    compiled = build_job(definition, resource_defs=resources_for(settings.get("settings")))
    tags = {
        "flowmaestro/execution_id": execution_id,
        WORKFLOW_ID_TAG: workflow_id,
        "flowmaestro/version": "1",
    }
    result = execute_workflow(compiled, inputs, instance=instance, tags=tags, log_level="ERROR")
    return execution_id, result.run_id


def test_timeline_of_a_retried_node_has_queued_running_backoff_running(
    api: TestClient, auth: dict[str, str], instance: DagsterInstance, llm: FakeLLMServer
) -> None:
    workflow_id = deploy(api, auth, LLM_FLOW)
    llm.enqueue(FakeReply.error(503), "the answer")
    execution_id, run_id = execute(
        api, auth, instance, workflow_id, LLM_FLOW, {"topic": "x"}, settings=llm.settings()
    )
    response = api.get(f"/executions/{execution_id}/timeline", headers=auth)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] == "succeeded" and body["workflow_id"] == workflow_id
    assert [(r["run_id"], r["kind"], r["parked"]) for r in body["runs"]] == [
        (run_id, "initial", False)
    ]
    spans = {s["node_id"]: s for s in body["spans"]}
    ask = spans["ask"]
    assert ask["label"] == "Ask the model" and ask["step_key"] == "ask_the_model__ask"
    assert [s["kind"] for s in ask["segments"]] == ["queued", "running", "backoff", "running"]
    assert [s["outcome"] for s in ask["segments"]] == [None, "retry", None, "succeeded"]
    assert (ask["attempts"], ask["retries"], ask["errors"], ask["status"]) == (2, 1, 1, "succeeded")
    backoff = ask["segments"][2]
    assert 0.4 * 1000 - 50 <= backoff["duration_ms"] <= 0.4 * 1000 + 3000
    # The output node became ready when the llm step ended: its queued segment starts there.
    out_queued = spans["out"]["segments"][0]
    assert out_queued["kind"] == "queued" and out_queued["start"] == ask["segments"][3]["end"]
    # Segments of a span follow each other without gaps.
    for earlier, later in zip(ask["segments"], ask["segments"][1:], strict=False):
        assert earlier["end"] == later["start"]
    metrics = body["metrics"]
    assert metrics["retry_count"] == 1 and metrics["error_count"] == 1 and metrics["run_count"] == 1
    assert metrics["nodes"]["ask"]["attempts"] == 2
    assert metrics["nodes"]["ask"]["backoff_ms"] == backoff["duration_ms"]
    assert metrics["total_duration_ms"] >= metrics["running_ms"] > 0
    assert metrics["queue_wait_ms"] >= 0
    alone = api.get(f"/executions/{execution_id}/metrics", headers=auth).json()
    assert alone["execution_id"] == execution_id and alone["retry_count"] == 1
    assert alone["nodes"]["ask"]["retries"] == 1


def test_timeline_of_someone_elses_or_an_unknown_execution_is_404(
    api: TestClient, auth: dict[str, str], database_url: str
) -> None:
    other = make_key(database_url, "someone-else@example.com")
    workflow_id = deploy(api, other, PARSE_FLOW)
    created = api.post(
        f"/workflows/{workflow_id}/executions", json={"inputs": {"raw": "1"}}, headers=other
    ).json()
    assert api.get(f"/executions/{created['id']}/timeline", headers=auth).status_code == 404
    assert api.get("/executions/nope/metrics", headers=auth).status_code == 404
    assert api.get(f"/workflows/{workflow_id}/analytics", headers=auth).status_code == 404
    assert api.get("/executions/nope/timeline").status_code == 401
    queued = api.get(f"/executions/{created['id']}/timeline", headers=other).json()
    assert queued["status"] == "queued" and queued["runs"] == [] and queued["spans"] == []


def metric(text: str, name: str, **labels: str) -> float | None:
    wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))  # as written
    pattern = "^" + re.escape(name + (f"{{{wanted}}}" if labels else "")) + r" (\S+)$"
    match = re.search(pattern, text, re.MULTILINE)
    return float(match.group(1)) if match else None


def test_prometheus_metrics(
    api: TestClient,
    auth: dict[str, str],
    instance: DagsterInstance,
    llm: FakeLLMServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("FLOWMAESTRO_METRICS_TOKEN", raising=False)
    workflow_id = deploy(api, auth, LLM_FLOW)
    llm.enqueue("one", "two")
    for _ in range(2):
        execute(api, auth, instance, workflow_id, LLM_FLOW, {"topic": "x"}, settings=llm.settings())
    response = api.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"] == CONTENT_TYPE_LATEST
    text = response.text
    assert "# TYPE flowmaestro_executions gauge" in text
    assert metric(text, "flowmaestro_executions", status="queued") == 2  # as recorded in the DB
    assert metric(text, "flowmaestro_queue_depth") == 0
    assert metric(text, "flowmaestro_dagster_up") == 1
    assert metric(text, "flowmaestro_waitpoints_waiting") == 0
    assert metric(text, "flowmaestro_node_duration_seconds_count", type="llm") == 2
    assert metric(text, "flowmaestro_node_duration_seconds_count", type="input") == 2
    assert metric(text, "flowmaestro_node_duration_seconds_bucket", le="+Inf", type="llm") == 2
    again = api.get("/metrics").text  # counted once per run, however often it is scraped
    assert metric(again, "flowmaestro_node_duration_seconds_count", type="llm") == 2
    monkeypatch.setenv("FLOWMAESTRO_METRICS_TOKEN", "scrape-secret")
    assert api.get("/metrics").status_code == 401
    assert api.get("/metrics", headers={"Authorization": "Bearer nope"}).status_code == 401
    assert api.get("/metrics", headers={"Authorization": "Bearer scrape-secret"}).status_code == 200


def test_prometheus_metrics_of_queues_launches_waitpoints_attempts_and_approvals(
    api: TestClient, auth: dict[str, str], database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("FLOWMAESTRO_METRICS_TOKEN", raising=False)
    workflow_id = deploy(api, auth, PARSE_FLOW)
    ids = [
        api.post(
            f"/workflows/{workflow_id}/executions", json={"inputs": {"raw": "1"}}, headers=auth
        ).json()["id"]
        for _ in range(3)
    ]
    now = datetime.now(UTC)
    with session_scope(get_engine(database_url)) as session:
        session.execute(
            update(Execution)
            .where(Execution.id.in_(ids[:2]))
            .values(
                queue="reports",
                priority=5,
                launch_attempts=2,
                created_at=now - timedelta(minutes=10),
            )
        )
        session.execute(
            update(Execution)
            .where(Execution.id == ids[2])
            .values(status="failed", launch_attempts=5)
        )
        approval = Waitpoint(
            execution_id=ids[0],
            node_id="ok",
            step_key="ok",
            run_id="r1",
            kind="approval",
            status="resolved",
            created_at=now - timedelta(seconds=120),
        )
        session.add_all(
            [
                approval,
                Waitpoint(
                    execution_id=ids[1], node_id="at", step_key="at", run_id="r2", kind="datetime"
                ),
            ]
        )
        session.flush()
        session.add(Decision(waitpoint_id=approval.id, decision="approve", created_at=now))
        for attempt, (status, error_class) in enumerate(
            [
                ("retrying", "HTTPError"),
                ("retrying", "HTTPError"),
                ("failed", "ValueError"),
                ("succeeded", None),
            ]
        ):
            session.add(
                NodeAttempt(
                    execution_id=ids[0],
                    node_id="parse",
                    run_id="r1",
                    step_key="parse",
                    attempt=attempt,
                    status=status,
                    error_class=error_class,
                    started_at=now,
                    finished_at=now,
                )
            )
    text = api.get("/metrics").text
    assert metric(text, "flowmaestro_queued_executions", queue="reports", priority="5") == 2
    age = metric(text, "flowmaestro_queued_oldest_age_seconds", queue="reports", priority="5")
    assert age is not None and 590 <= age <= 900
    assert metric(text, "flowmaestro_launch_retrying") == 2
    assert metric(text, "flowmaestro_launches_given_up") == 1
    assert metric(text, "flowmaestro_waitpoints", kind="approval", status="resolved") == 1
    assert metric(text, "flowmaestro_waitpoints", kind="datetime", status="pending") == 1
    assert metric(text, "flowmaestro_waitpoints_waiting") == 1
    assert metric(text, "flowmaestro_node_attempts_total", status="retrying") == 2
    assert (
        metric(text, "flowmaestro_node_errors_total", error_class="HTTPError", status="retrying")
        == 2
    )
    assert (
        metric(text, "flowmaestro_node_errors_total", error_class="ValueError", status="failed")
        == 1
    )
    assert metric(text, "flowmaestro_approval_latency_seconds_bucket", le="60") == 0
    assert metric(text, "flowmaestro_approval_latency_seconds_bucket", le="300") == 1
    assert metric(text, "flowmaestro_approval_latency_seconds_count") == 1
    assert metric(text, "flowmaestro_approval_latency_seconds_sum") == pytest.approx(120, abs=1)
    assert "_created" not in text


# -- pure parts --------------------------------------------------------------------------------------


def trace(
    run_id: str,
    created: float,
    steps: dict[str, list[tuple[float, str]]],
    *,
    parked: bool = False,
    parent: str | None = None,
    upstream: dict[str, set[str]] | None = None,
) -> RunTrace:
    tags = {"flowmaestro/waiting": "true"} if parked else {}
    if parent:
        tags["flowmaestro/resume_of"] = parent
    return RunTrace(
        run_id=run_id,
        status="SUCCESS",
        tags=tags,
        parent_run_id=parent,
        created=created,
        started=created + 0.5,
        ended=max(t for events in steps.values() for t, _ in events),
        steps={k: [StepEvent(t, kind) for t, kind in events] for k, events in steps.items()},
        upstream=upstream or {},
    )


def test_a_waitpoint_waits_from_its_parked_end_to_its_start_in_the_resumed_run() -> None:
    deps = {"pause": {"in"}, "out": {"pause"}}
    first = trace(
        "r1",
        100.0,
        {
            "in": [(101.0, "start"), (101.5, "output"), (102.0, "success")],
            "pause": [(103.0, "start"), (103.5, "success")],  # parked: no output
            "out": [(103.6, "skipped")],
        },
        parked=True,
        upstream=deps,
    )
    second = trace(
        "r2",
        110.0,
        {
            "pause": [(111.0, "start"), (111.2, "output"), (111.5, "success")],
            "out": [(112.0, "start"), (112.1, "output"), (112.5, "success")],
        },
        parent="r1",
        upstream=deps,
    )
    nodes = {a: NodeInfo(a, a.title(), "x") for a in ("in", "pause", "out")}
    spans = {s.step_key: s for s in build_spans([first, second], nodes)}
    pause = spans["pause"]
    assert [(s.kind, s.start, s.end, s.run_id, s.outcome) for s in pause.segments] == [
        ("queued", 102.0, 103.0, "r1", None),
        ("running", 103.0, 103.5, "r1", "parked"),
        ("waiting", 103.5, 111.0, "r1", None),
        ("running", 111.0, 111.5, "r2", "succeeded"),
    ]
    assert pause.status == "succeeded" and pause.attempts == 2 and pause.errors == 0
    out = spans["out"]
    assert [(s.kind, s.start, s.end) for s in out.segments] == [
        ("queued", 111.5, 112.0),
        ("running", 112.0, 112.5),
    ]
    still = {s.step_key: s for s in build_spans([first], nodes)}["pause"]
    assert still.status == "waiting" and still.segments[-1].end is None


def test_a_failure_an_error_edge_handled_is_a_failed_span_with_a_handled_attempt() -> None:
    run = trace("r1", 10.0, {"fetch": [(11.0, "start"), (11.5, "output"), (12.0, "success")]})
    run.steps["fetch"][1] = StepEvent(11.5, "output", output="error", handled_error="HTTP 503")
    [span] = build_spans([run], {})
    assert (span.status, span.errors, span.error) == ("failed", 1, "HTTP 503")
    assert [(s.kind, s.outcome) for s in span.segments] == [
        ("queued", None),
        ("running", "handled"),
    ]
    run.steps["fetch"].insert(1, StepEvent(11.4, "output", output="result", handled_error="x"))
    assert build_spans([run], {})[0].status == "succeeded"  # continue / fallback: a value


class OneFamily(Collector):
    def __init__(self, histogram: NodeDurationHistogram) -> None:
        self.histogram = histogram

    def collect(self) -> Iterator[Metric]:
        yield self.histogram.family()


def test_histogram_buckets_are_cumulative() -> None:
    histogram = NodeDurationHistogram()
    for seconds in (0.01, 0.2, 0.2, 7.0, 5000.0):
        histogram.observe("llm", seconds)
    registry = CollectorRegistry()
    registry.register(OneFamily(histogram))
    text = generate_latest(registry).decode()
    assert metric(text, "flowmaestro_node_duration_seconds_bucket", le="0.05", type="llm") == 1
    assert metric(text, "flowmaestro_node_duration_seconds_bucket", le="0.25", type="llm") == 3
    assert metric(text, "flowmaestro_node_duration_seconds_bucket", le="10", type="llm") == 4
    assert metric(text, "flowmaestro_node_duration_seconds_bucket", le="+Inf", type="llm") == 5
    assert metric(text, "flowmaestro_node_duration_seconds_sum", type="llm") == pytest.approx(
        5007.41
    )
    assert op_type("shared_memory_node_e") == "shared_memory" and op_type("llm_node") == "llm"
    assert DagsterEventType.STEP_UP_FOR_RETRY  # the events the timeline reads exist
