"""Per-node retries: the wait schedule, which errors are retried, and real runs measured from
Dagster's event log (fake OpenAI server and echo HTTP server: real sockets)."""

import random
from dataclasses import dataclass
from typing import Any

import pytest
from dagster import DagsterEventType, DagsterInstance

from flowmaestro_dagster.adapter.retries import (
    backoff_ms,
    decide,
    effective_retry,
    error_tokens,
    is_retryable,
    retry_wait_seconds,
    schedule_ms,
)
from flowmaestro_dagster.compile.compiler import CompiledWorkflow
from flowmaestro_dagster.compile.validation import validate
from flowmaestro_dagster.engines.jobs import build_job
from flowmaestro_dagster.engines.local import execute_workflow
from flowmaestro_dagster.engines.results import WorkflowRunResult
from flowmaestro_dagster.errors import (
    ConnectorNotConfiguredError,
    NodeConfigurationError,
    NodeExecutionError,
    TransientNodeError,
)
from flowmaestro_dagster.settings import HttpSettings, Settings
from flowmaestro_dagster.spec.policies import RetrySettings
from flowmaestro_dagster.testing import EchoServer, FakeLLMServer, FakeReply, resources_for
from tests.builders import chain, flow, node


def settings(**values: Any) -> RetrySettings:
    return RetrySettings.model_validate(values)


# -- the schedule ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("strategy", "expected"),
    [
        ("exponential", [100, 200, 400, 800, 1000]),  # 2^(n-1) · min, capped at max
        ("linear", [100, 200, 300, 400, 500]),
        ("fixed", [100, 100, 100, 100, 100]),
    ],
)
def test_schedule_per_strategy_capped_at_max_delay(strategy: str, expected: list[float]) -> None:
    retry = settings(
        maxAttempts=6, backoffStrategy=strategy, minDelayMs=100, maxDelayMs=1000, randomize=False
    )
    assert schedule_ms(retry) == expected


def test_no_cap_without_max_delay_but_never_more_than_a_day() -> None:
    retry = settings(maxAttempts=100, backoffStrategy="exponential", minDelayMs=1000)
    assert backoff_ms(retry, 5) == 16_000
    assert backoff_ms(retry, 99) == 86_400_000


def test_randomize_spreads_each_wait_by_a_quarter_and_keeps_the_cap() -> None:
    rng = random.Random(7)
    retry = settings(maxAttempts=5, minDelayMs=1000, maxDelayMs=2000, randomize=True)
    firsts = [retry_wait_seconds(retry, 1, rng=rng) for _ in range(500)]
    assert 0.75 <= min(firsts) < 0.8 and 1.2 < max(firsts) <= 1.25
    capped = [retry_wait_seconds(retry, 4, rng=rng) for _ in range(500)]  # 8 s → capped 2 s
    assert max(capped) == 2.0 and min(capped) >= 1.5


def test_retry_after_replaces_the_schedule_and_is_capped_by_max_delay() -> None:
    retry = settings(maxAttempts=3, minDelayMs=100, maxDelayMs=5000, randomize=True)
    assert retry_wait_seconds(retry, 1, retry_after_seconds=2) == 2.0  # no jitter on it
    assert retry_wait_seconds(retry, 1, retry_after_seconds=60) == 5.0


# -- which errors ------------------------------------------------------------------------------------


def transient(status: int, message: str = "boom") -> TransientNodeError:
    return TransientNodeError(message, node_id="n", node_type="http", details={"status": status})


def permanent(status: int, message: str = "boom") -> NodeExecutionError:
    return NodeExecutionError(message, node_id="n", node_type="http", details={"status": status})


def test_builtin_classes() -> None:
    plain = settings(maxAttempts=3)
    assert is_retryable(plain, transient(503))
    assert is_retryable(plain, transient(429))
    assert is_retryable(plain, TimeoutError("slow"))
    assert is_retryable(plain, ConnectionResetError("reset"))
    assert not is_retryable(plain, permanent(404))
    assert not is_retryable(plain, ValueError("a bug gives the same answer twice"))
    assert not is_retryable(plain, NodeConfigurationError("bad url"))
    assert not is_retryable(plain, ConnectorNotConfiguredError("no slack"))


def test_patterns_extend_the_lists() -> None:
    custom = settings(
        maxAttempts=3,
        retryableErrors=["404", "*Eventual*"],
        nonRetryableErrors=["insufficient_quota", "server_error"],
    )
    assert is_retryable(custom, permanent(404))  # a status token
    assert is_retryable(custom, ValueError("EventualConsistency: try again"))  # glob on message
    assert not is_retryable(custom, transient(429, "insufficient_quota for this key"))
    assert not is_retryable(custom, transient(502))  # a category token
    assert is_retryable(custom, transient(429, "slow down"))


def test_configuration_and_sandbox_errors_are_never_retried_even_if_a_pattern_matches() -> None:
    eager = settings(maxAttempts=3, retryableErrors=["*"])
    assert not is_retryable(eager, NodeConfigurationError("refused: loopback"))
    snippet = NodeExecutionError("the snippet failed", node_id="c", node_type="code")
    assert not is_retryable(eager, snippet)
    assert is_retryable(eager, permanent(400))


def test_tokens_name_class_category_and_status() -> None:
    tokens = error_tokens(transient(429))
    assert {"transientnodeerror", "nodeexecutionerror", "429", "http_429", "4xx"} <= tokens
    assert {"rate_limit", "transient"} <= tokens
    assert {"timeout"} <= error_tokens(TimeoutError("x"))


def test_decide_stops_at_the_last_attempt() -> None:
    retry = settings(maxAttempts=2, minDelayMs=0)
    first = decide(retry, transient(503), 1)
    assert first.retry and first.wait_seconds == 0
    last = decide(retry, transient(503), 2)
    assert not last.retry and last.exhausted
    assert not decide(retry, permanent(400), 1).retry


def test_type_defaults_and_http_retry_count() -> None:
    spec = build_job(
        flow(
            [
                node("a", "llm", prompt="x"),
                node("h", "http", url="https://x", retryCount=4),
                node("t", "transform", operation="passthrough"),
            ],
            [],
        )
    ).spec
    llm = effective_retry(spec.nodes["a"])
    assert (llm.max_attempts, llm.backoff_strategy, llm.randomize) == (3, "exponential", True)
    assert effective_retry(spec.nodes["h"]).max_attempts == 5
    assert effective_retry(spec.nodes["t"]).max_attempts == 1


@pytest.mark.parametrize(
    ("retry", "field"),
    [
        ({"retryableErrors": ["ok", " "]}, "retry.retryableErrors"),
        ({"nonRetryableErrors": "quota"}, "retry.nonRetryableErrors"),
        ({"maxDelayMs": -1}, "retry.maxDelayMs"),
        ({"randomize": "sometimes"}, "retry.randomize"),
    ],
)
def test_invalid_settings_name_node_and_field(retry: dict[str, Any], field: str) -> None:
    problems = validate(
        flow(
            [
                node("h", "http", url="https://x", retry=retry),
            ],
            [],
        )
    )
    errors = [p for p in problems if p.code == "invalid_retry"]
    assert errors and errors[0].node_id == "h" and errors[0].field == field


# -- real runs, measured from the event log --------------------------------------------------------


@dataclass
class Measured:
    result: WorkflowRunResult
    compiled: CompiledWorkflow
    events: list[tuple[float, Any]]  # (timestamp, DagsterEvent) of one step

    def of(self, kind: DagsterEventType) -> list[tuple[float, Any]]:
        return [(t, e) for t, e in self.events if e.event_type == kind]

    @property
    def requested_waits(self) -> list[float]:
        return [e.event_specific_data.seconds_to_wait for _, e in self.of(UP_FOR_RETRY)]

    @property
    def measured_waits(self) -> list[float]:
        """From each retry request to the next attempt's start."""
        ups = [t for t, _ in self.of(UP_FOR_RETRY)]
        restarts = [t for t, _ in self.of(DagsterEventType.STEP_RESTARTED)]
        return [r - u for u, r in zip(ups, restarts, strict=True)]


UP_FOR_RETRY = DagsterEventType.STEP_UP_FOR_RETRY


def run_measured(
    definition: dict[str, Any], node_id: str, config: Settings, inputs: dict[str, Any]
) -> Measured:
    instance = DagsterInstance.ephemeral()
    compiled = build_job(definition, resource_defs=resources_for(config))
    result = execute_workflow(compiled, inputs, instance=instance, log_level="ERROR")
    alias = compiled.aliases[node_id]
    events = [
        (r.event_log_entry.timestamp, r.event_log_entry.dagster_event)
        for r in instance.get_records_for_run(result.run_id).records
        if r.event_log_entry.dagster_event is not None and r.event_log_entry.step_key == alias
    ]
    return Measured(result, compiled, events)


def llm_flow(retry: dict[str, Any]) -> dict[str, Any]:
    return chain(
        node("topic", "input", inputName="topic"),
        node("ask", "llm", label="Ask", model="gpt-4o", prompt="{{topic}}", retry=retry),
        node("out", "output", outputName="answer", value="{{ask.text}}"),
        react=True,
    )


def test_a_node_failing_twice_then_succeeding_takes_three_attempts_with_the_delays(
    llm: FakeLLMServer,
) -> None:
    llm.enqueue(FakeReply.error(503), FakeReply.error(500), "third time lucky")
    retry = {"maxAttempts": 4, "backoffStrategy": "exponential", "minDelayMs": 300}
    run = run_measured(llm_flow(retry), "ask", llm.settings(), {"topic": "x"})
    assert run.result.status == "succeeded"
    assert run.result.outputs == {"answer": "third time lucky"}
    assert run.result.nodes["ask"].attempts == 3
    assert len(run.of(DagsterEventType.STEP_SUCCESS)) == 1
    assert run.requested_waits == [0.3, 0.6]  # exponential: min, 2·min (Dagster's would be 3·min)
    for wanted, measured in zip([0.3, 0.6], run.measured_waits, strict=True):
        assert wanted - 0.05 <= measured <= wanted + 3.0  # waited, and not for much longer
    assert len(llm.chat_requests) == 3


def test_linear_delays_with_a_cap(llm: FakeLLMServer) -> None:
    llm.enqueue(*[FakeReply.error(502)] * 3, "ok")
    retry = {"maxAttempts": 4, "backoffStrategy": "linear", "minDelayMs": 200, "maxDelayMs": 300}
    run = run_measured(llm_flow(retry), "ask", llm.settings(), {"topic": "x"})
    assert run.result.status == "succeeded"
    assert run.requested_waits == [0.2, 0.3, 0.3]


def test_a_non_retryable_error_fails_at_once(llm: FakeLLMServer) -> None:
    llm.enqueue(FakeReply.error(400, "model not found"))
    run = run_measured(
        llm_flow({"maxAttempts": 5, "minDelayMs": 0}), "ask", llm.settings(), {"topic": "x"}
    )
    assert run.result.status == "failed"
    assert run.of(UP_FOR_RETRY) == []
    [(_, failure)] = run.of(DagsterEventType.STEP_FAILURE)
    assert "model not found" in failure.event_specific_data.user_failure_data.description
    assert run.result.nodes["ask"].attempts == 1
    assert len(llm.chat_requests) == 1


def after_a_429(llm: FakeLLMServer, retry_after: int, max_delay_ms: int) -> Measured:
    """A 429 with Retry-After, then an answer, to a node retried once: the (successful) run."""
    llm.enqueue(FakeReply.rate_limited(retry_after=retry_after), "after the wait")
    retry = {"maxAttempts": 2, "minDelayMs": 0, "maxDelayMs": max_delay_ms}
    run = run_measured(llm_flow(retry), "ask", llm.settings(), {"topic": "x"})
    assert run.result.status == "succeeded"
    return run


def test_429_with_retry_after_2_waits_about_two_seconds(llm: FakeLLMServer) -> None:
    run = after_a_429(llm, retry_after=2, max_delay_ms=10_000)
    assert run.requested_waits == [2.0]
    [waited] = run.measured_waits
    assert 1.7 <= waited <= 5.0


def test_retry_after_is_capped_by_max_delay(llm: FakeLLMServer) -> None:
    run = after_a_429(llm, retry_after=120, max_delay_ms=400)
    assert run.requested_waits == [0.4]


def test_exhausted_retries_fail_with_the_last_error(echo: EchoServer) -> None:
    definition = flow(
        [
            node("call", "http", url=echo.url("/status/503"), retry={"maxAttempts": 3, "backoffStrategy": "fixed", "minDelayMs": 50}),
        ],
        [],
    )  # fmt: skip
    config = Settings().model_copy(update={"http": HttpSettings(allow_loopback=True)})
    run = run_measured(definition, "call", config, {})
    assert run.result.status == "failed"
    assert run.requested_waits == [0.05, 0.05]
    assert run.result.nodes["call"].attempts == 3
    assert "HTTP 503" in (run.result.nodes["call"].error or "")
    assert len(echo.requests) == 3


def test_http_404_with_fail_on_error_is_not_retried(echo: EchoServer) -> None:
    definition = flow(
        [
            node("call", "http", url=echo.url("/status/404"), failOnError=True, retry={"maxAttempts": 3, "minDelayMs": 0}),
        ],
        [],
    )  # fmt: skip
    config = Settings().model_copy(update={"http": HttpSettings(allow_loopback=True)})
    run = run_measured(definition, "call", config, {})
    assert run.result.status == "failed" and run.of(UP_FOR_RETRY) == []
    assert len(echo.requests) == 1


def test_a_retryable_errors_pattern_retries_a_404(echo: EchoServer) -> None:
    definition = flow(
        [
            node("call", "http", url=echo.url("/status/404"), failOnError=True, retry={"maxAttempts": 2, "minDelayMs": 0, "retryableErrors": ["404"]}),
        ],
        [],
    )  # fmt: skip
    config = Settings().model_copy(update={"http": HttpSettings(allow_loopback=True)})
    run = run_measured(definition, "call", config, {})
    assert run.result.status == "failed"
    assert len(run.of(UP_FOR_RETRY)) == 1 and len(echo.requests) == 2


def test_the_plan_carries_the_retry_settings_and_the_op_a_policy() -> None:
    compiled = build_job(llm_flow({"maxAttempts": 3, "minDelayMs": 250}))
    alias = compiled.aliases["ask"]
    assert alias == "ask"  # a label that only repeats the id adds nothing
    run_config = compiled.job.run_config
    assert run_config is not None
    plan = run_config["ops"][alias]["config"]
    assert plan["retry"]["max_attempts"] == 3 and plan["retry"]["min_delay_ms"] == 250
    op = compiled.job.graph.node_named(alias)
    assert op.retry_policy is not None and op.retry_policy.max_retries == 2


def test_a_failed_run_is_final_only_once_dagster_has_decided_on_its_retry() -> None:
    """Dagster writes FAILURE before its `dagster/will_retry` tag: a worker failure read in
    between is still running; a node's failure, or a decided run, is what its tags say."""
    from flowmaestro_dagster.control.client import RunInfo
    from flowmaestro_dagster.control.executions import _retry_pending, run_status

    def failed(tags: dict[str, str], ended: float | None) -> RunInfo:
        return RunInfo("r", "FAILURE", tags, None, None, None, ended, None)

    now = 1_000.0
    assert _retry_pending(failed({}, now - 1), now)  # worker died, decision not written yet
    assert not _retry_pending(failed({}, now - 60), now)  # no decision ever came: final
    assert not _retry_pending(failed({"dagster/failure_reason": "STEP_FAILURE"}, now - 1), now)
    assert not _retry_pending(failed({"dagster/will_retry": "false"}, now - 1), now)
    assert run_status(failed({"dagster/will_retry": "true"}, now - 600)) == "running"
    assert run_status(failed({"dagster/will_retry": "false"}, None)) == "failed"
