"""Every file of the corpus category `advanced-logic`, end to end (issue 3).

Each workflow runs as written against the real local servers: the fake OpenAI-compatible
server (`FakeLLMServer`, replies computed from the prompt so parallel branches and loop items
get their own answers), the echo HTTP server as the Slack incoming webhook (a named connection;
loopback explicitly allowed), and the local PostgreSQL for database nodes. Workflows without
waitpoints run in process (`run_workflow`); those with a humanReview or a long wait run through
the API on one real Dagster (`DagsterStack`) for the module.

On the stack the corpus's day-long escalation wait parks as a datetime waitpoint; the test
then moves that waitpoint's `due_at` (flowmaestro_dagster.store.models.Waitpoint) into the past, and the
`waitpoint_resumer` sensor (FLOWMAESTRO_WAITPOINT_INTERVAL_SECONDS=1) resumes the run exactly
as it would a day later. The stack's executions are all started at once so their runs overlap.

Per file the test asserts which branches ran and which were skipped (node statuses, per loop
item where the branch is inside a loop) and the outputs the definition implies for the inputs
chosen. Where a file cannot run as written, the test asserts the precise failure (node and
message) and says why that is the right behaviour. Findings about the definitions, in short:

* every Slack node of the category has no `text` → "a Slack message needs text or blocks";
* `state-machine-workflow` reads `inputs.transition`, which no node writes;
* `scheduled-task-orchestrator-2` JSON-parses the database node's output object and runs an
  UPDATE with `$1` but no values;
* `multi-level-approval-chain` reads the loop's result inside the loop body, so every item
  takes the "not all approved" branch;
* `rate-limited-batch-processor` writes `rateTracker` from three nodes; a name resolves to its
  first writer (docs/semantics.md), so the wait branch is unreachable from the definition's own
  data (it is driven here through an execution input, which shadows node keys);
* the `merge` of the parallel batches keeps only the last batch's answer (objects merge).

Platform defects this module found (fixed; the tests below pin the fixes):

* a loop exit that no iteration reached ran anyway (`saga-pattern-workflow` reported both
  "Transaction Complete" and "Transaction Rolled Back" when every step succeeded);
* GET /executions/{id} did not say why an execution failed;
* a duration wait resumed from its waitpoint reported `dueAt` as resume time + duration.
"""

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient
from pydantic import SecretStr

from flowmaestro_dagster.control.client import DagsterClient
from flowmaestro_dagster.engines.jobs import build_job
from flowmaestro_dagster.engines.results import WorkflowRunResult
from flowmaestro_dagster.errors import InvalidWorkflowError
from flowmaestro_dagster.settings import (
    ConnectionSettings,
    DatabaseConnection,
    HttpSettings,
    Settings,
)
from flowmaestro_dagster.store.db import get_engine, session_scope
from flowmaestro_dagster.store.models import Waitpoint
from flowmaestro_dagster.testing import (
    EchoServer,
    FakeLLMServer,
    RecordedRequest,
    run_workflow,
)
from flowmaestro_dagster.testing.fake_llm import API_KEY
from flowmaestro_dagster.testing.stack import DagsterStack
from tests.api.e2e import (
    api_client,
    approvals_of,
    decide,
    deploy,
    finished,
    new_user,
    node_statuses,
    reaches,
    running_stack,
    stack_settings,
    start,
    status_is,
    wait_for,
)
from tests.conftest import CORPUS, ROOT
from tests.services import (
    create_pg_database,
    drop_pg_database,
    pg_url,
    require_postgres,
)

CATEGORY = CORPUS / "advanced-logic"
SLACK_PATH = "/slack/corpus-advanced-logic"
SLACK_URL_VARIABLE = "FM_TEST_CORPUS_SLACK_WEBHOOK_URL"
NO_SLACK_TEXT = "a Slack message needs text or blocks"

# Rejected at compile time: each draws its retry / escalation loop as a back-edge.
CYCLES = {
    "multi-stage-approval-workflow.json": (
        "humanReview-1 → switch-decision → llm-escalate → humanReview-1"
    ),
    "retry-with-exponential-backoff.json": (
        "loop-retry → http-call → conditional-success → code-backoff → wait-backoff → "
        "conditional-max → loop-retry"
    ),
    "retry-with-exponential-backoff-2.json": (
        "http-1 → conditional-success → code-backoff → conditional-retry → wait-1 → "
        "shared-memory-2 → http-1"
    ),
}
IN_PROCESS = {
    "dynamic-workflow-router.json",  # its default route (a humanReview) also runs on the stack
    "dynamic-workflow-router-2.json",
    "parallel-processing-with-aggregation.json",
    "parallel-processing-with-aggregation-2.json",
    "rate-limited-batch-processor.json",
    "saga-pattern-workflow.json",
    "scheduled-task-orchestrator.json",
    "scheduled-task-orchestrator-2.json",
    "state-machine-workflow.json",
    "state-machine-workflow-2.json",
}
ON_STACK = {"dynamic-workflow-router.json", "multi-level-approval-chain.json"}


def definition(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((CATEGORY / name).read_text())
    return data


def test_every_file_of_the_category_is_covered() -> None:
    files = {p.name for p in CATEGORY.glob("*.json")}
    assert len(files) == 14
    assert files == set(CYCLES) | IN_PROCESS | ON_STACK
    assert not set(CYCLES) & (IN_PROCESS | ON_STACK)


@pytest.mark.parametrize("name", sorted(CYCLES))
def test_cyclic_files_are_rejected_at_compile_time_naming_the_cycle(name: str) -> None:
    with pytest.raises(InvalidWorkflowError) as info:
        build_job(definition(name))
    errors = [p for p in info.value.problems if p.severity == "error"]
    assert [p.code for p in errors] == ["cycle"]
    assert errors[0].message == (
        f"the workflow has a cycle: {CYCLES[name]}; loops must use a loop node"
    )


# -- the fake LLM: replies are a function of the prompt ------------------------------------------


def _batch_reply(prompt: str) -> str:
    batch = prompt.removeprefix("Process: ").removeprefix("Process this batch of items:\n\n")
    try:
        items = json.loads(batch.split("\n", 1)[0])
    except ValueError:
        return "no items in this batch"
    return json.dumps([f"done {item}" for item in items])


def reply(request: RecordedRequest) -> str:
    """What the fake model answers: routers decide from the request, saga steps fail when the
    transaction says `fail <step>`, batches echo their items, everything else is acknowledged."""
    prompt = request.prompt or ""
    first = prompt.splitlines()[0] if prompt else ""
    if prompt.startswith("Classify this request and route"):
        ask = prompt.split("\n\n")[1].lower()
        if "invoice" in ask:
            return json.dumps({"route": "billing", "reason": "an invoice question"})
        if "crash" in ask:
            return json.dumps({"route": "support", "reason": "the app crashes"})
        return "I cannot place this request."
    if prompt.startswith("Route this request to the appropriate team"):
        if '"area": "api"' in prompt:
            return json.dumps({"route": "engineering", "reason": "an API change"})
        return "sales"
    if prompt.startswith("Process this item:"):
        return f"processed {prompt.split(chr(10) + chr(10))[1]}"
    if prompt.startswith(("Process: ", "Process this batch of items:")):
        return _batch_reply(prompt)
    saga = re.match(r"Execute saga step: (\w+)\n\nTransaction: (.*?)\n", prompt)
    if saga is not None:
        step, transaction = saga.groups()
        ok = f"fail {step}" not in transaction
        return json.dumps(
            {
                "success": ok,
                "result": f"{step} {'done' if ok else 'declined'}",
                "error": None if ok else f"{step} declined",
            }
        )
    if prompt.startswith("Execute scheduled task:"):
        return f"ran {json.loads(prompt.split(chr(10) + chr(10), 1)[1])['id']}"
    return f"ACK {first}"


@pytest.fixture(scope="module")
def llm() -> Iterator[FakeLLMServer]:
    with FakeLLMServer(responder=reply) as server:
        yield server


@pytest.fixture(scope="module")
def slack() -> Iterator[EchoServer]:
    """The Slack incoming webhook of the `slack` connection."""
    with EchoServer() as server:
        yield server


@pytest.fixture(scope="module")
def settings(llm: FakeLLMServer, slack: EchoServer) -> Settings:
    base = Settings(
        http=HttpSettings(allow_loopback=True),
        connections={"slack": ConnectionSettings(url=SecretStr(slack.url(SLACK_PATH)))},
    )
    return llm.settings("openai", base=base)


def prompts_with(llm: FakeLLMServer, marker: str) -> list[str]:
    return [r.prompt or "" for r in llm.chat_requests if marker in (r.prompt or "")]


def statuses(result: WorkflowRunResult) -> dict[str, str]:
    return {node_id: run.status for node_id, run in result.nodes.items()}


def slack_posts(slack: EchoServer) -> list[Any]:
    return [json.loads(r.body) for r in slack.requests if r.path == SLACK_PATH]


def code_value(output: dict[str, Any]) -> Any:
    """A code node's `{output, stdout, stderr, metadata, ...}` → the snippet's value."""
    return output["output"]


# -- dynamic-workflow-router: an LLM router with four routes and a humanReview default ------------


@pytest.mark.parametrize(
    ("ask", "route", "handler", "response_variable", "handler_ask"),
    [
        (
            "My invoice #77 charged me twice",
            "billing",
            "llm-billing",
            "billingResponse",
            "Handle this billing inquiry:",
        ),
        (
            "The app crashes when I upload a file",
            "support",
            "llm-support",
            "supportResponse",
            "Handle this support request:",
        ),
    ],
)
def test_dynamic_workflow_router_routes_to_one_handler(
    settings: Settings,
    llm: FakeLLMServer,
    ask: str,
    route: str,
    handler: str,
    response_variable: str,
    handler_ask: str,
) -> None:
    result = run_workflow(
        definition("dynamic-workflow-router.json"), {"userRequest": ask}, settings=settings
    )
    handlers = ["llm-support", "llm-sales", "llm-billing", "llm-feedback", "humanReview-other"]
    assert statuses(result) == {
        "input-request": "succeeded",
        "router-classify": "succeeded",
        **{h: "succeeded" if h == handler else "skipped" for h in handlers},
        "output-1": "succeeded",  # the join runs with the one branch that ran
    }
    decision = result.output("router-classify")
    assert decision["route"] == route and decision["usedDefault"] is False
    assert decision["routeDecision"] == route
    # Two model calls quote the request: the router's, then the one handler's.
    asked = [p.splitlines()[0] for p in prompts_with(llm, ask)]
    assert asked == ["Classify this request and route to the appropriate handler:", handler_ask]
    assert result.output(handler)[response_variable]["text"] == f"ACK {handler_ask}"
    # The output node's value is `{{routeDecision}}`: the route, not the handler's answer.
    assert result.outputs == {"result": route}


def test_dynamic_workflow_router_default_route_needs_the_platform_in_process(
    settings: Settings,
) -> None:
    """Outside the platform a humanReview cannot park: the default route fails there with a
    message that says so (the same route runs through the API on the stack, below)."""
    result = run_workflow(
        definition("dynamic-workflow-router.json"),
        {"userRequest": "Do you like jazz? (ref dwr-no-platform)"},
        settings=settings,
    )
    assert result.status == "failed"
    assert result.output("router-classify")["routeDecision"] == "other"
    assert result.nodes["humanReview-other"].status == "failed"
    assert result.nodes["humanReview-other"].error == (
        "node 'humanReview-other' (humanReview): a human review needs the platform (start the "
        "workflow through the API so the execution can park and resume)"
    )
    assert result.nodes["output-1"].status == "not_run"


# -- dynamic-workflow-router-2: switch → conditional → (router) → llm → slack --------------------


def run_router_2(request: dict[str, Any], settings: Settings) -> WorkflowRunResult:
    return run_workflow(
        definition("dynamic-workflow-router-2.json"), {"request": request}, settings=settings
    )


def router_2_statuses(router_team: str) -> dict[str, str]:
    """Node statuses of dynamic-workflow-router-2 as written, for either request type."""
    return {
        "input-1": "succeeded",
        "switch-priority": "succeeded",
        "conditional-type": "succeeded",
        "router-team": router_team,
        "llm-process": "succeeded",  # a join: it also runs with the false branch alone
        # Definition bug: the Slack node has a channel but no message. Failing the node with a
        # configuration error (nothing is posted) is right: Slack rejects an empty message.
        "integration-slack": "failed",
        "output-1": "not_run",
    }


def test_dynamic_workflow_router_2_automated_request_goes_through_the_team_router(
    settings: Settings, llm: FakeLLMServer, slack: EchoServer
) -> None:
    request = {"type": "automated", "priority": "urgent", "area": "api", "ref": "dwr2-auto"}
    posted_before = len(slack.requests)
    result = run_router_2(request, settings)
    # The switch's only edge has no handle, so it runs the conditional whatever the case;
    # `automated` takes the conditional's true branch through the team router.
    assert statuses(result) == router_2_statuses(router_team="succeeded")
    assert result.status == "failed"
    assert result.output("switch-priority")["priorityCase"] == "urgent"
    assert result.output("conditional-type")["isAutomated"] is True
    assert result.output("router-team")["teamRoute"] == "engineering"
    assert result.nodes["integration-slack"].error == (
        f"node 'integration-slack' (integration): {NO_SLACK_TEXT}"
    )
    assert [p.splitlines()[0] for p in prompts_with(llm, "dwr2-auto")] == [
        "Route this request to the appropriate team:",
        "Process this automated request with urgent priority:",
    ]
    assert len(slack.requests) == posted_before  # nothing reached the webhook


def test_dynamic_workflow_router_2_manual_request_skips_the_router(settings: Settings) -> None:
    request = {"type": "manual", "priority": "someday", "ref": "dwr2-manual"}
    result = run_router_2(request, settings)
    assert statuses(result) == router_2_statuses(router_team="skipped")
    switch = result.output("switch-priority")
    # No case matches: the default handle, and `defaultCase` names the case taken.
    assert switch["matched"] is None and switch["branch"] == "default"
    assert switch["priorityCase"] == "medium"
    assert result.output("conditional-type")["isAutomated"] is False
    processed = result.output("llm-process")["processed"]["text"]
    assert processed == "ACK Process this manual request with someday priority:"


def test_dynamic_workflow_router_2_with_the_slack_text_filled_in_posts_to_the_team_channel(
    settings: Settings, slack: EchoServer
) -> None:
    """The same file with the one missing key a builder user would add (`text`): the rest of
    the path works — the message reaches the webhook and the output is the processed text."""
    patched = definition("dynamic-workflow-router-2.json")
    for node in patched["definition"]["nodes"]:
        if node["id"] == "integration-slack":
            node["data"]["text"] = "{{processed.text}}"
    request = {"type": "automated", "priority": "high", "area": "api", "ref": "dwr2-text"}
    before = len(slack_posts(slack))
    result = run_workflow(patched, {"request": request}, settings=settings)
    assert result.status == "succeeded"
    assert result.nodes["router-team"].status == "succeeded"
    processed = result.output("llm-process")["processed"]
    assert processed["text"] == "ACK Process this automated request with high priority:"
    assert slack_posts(slack)[before:] == [{"text": processed["text"]}]
    posted = result.output("integration-slack")
    assert posted["channel"] == "#engineering" and posted["ok"] is True
    assert result.outputs == {"result": processed}


# -- parallel-processing-with-aggregation(-2): split, three parallel LLM batches, merge ----------


def _parallel_run(
    name: str, items: list[int], settings: Settings
) -> tuple[WorkflowRunResult, dict[str, Any]]:
    result = run_workflow(definition(name), {"items": json.dumps(items)}, settings=settings)
    assert result.status == "succeeded"
    assert set(statuses(result).values()) == {"succeeded"}
    return result, result.outputs


@pytest.mark.parametrize(
    ("name", "batch_size", "split", "batch_variables", "merged", "summary_variable"),
    [
        (
            "parallel-processing-with-aggregation.json",
            10,
            "batchedItems",
            ["batch1Result", "batch2Result", "batch3Result"],
            "aggregatedResults",
            "processSummary",
        ),
        (
            "parallel-processing-with-aggregation-2.json",
            5,
            "batched",
            ["batch1", "batch2", "batch3"],
            "aggregated",
            "summary",
        ),
    ],
)
def test_parallel_processing_with_aggregation(
    settings: Settings,
    llm: FakeLLMServer,
    name: str,
    batch_size: int,
    split: str,
    batch_variables: list[str],
    merged: str,
    summary_variable: str,
) -> None:
    # Three full batches: every branch gets its own slice (answers are per prompt).
    items = list(range(1, 2 * batch_size + 3))
    result, outputs = _parallel_run(name, items, settings)
    batched = result.output("code-split")[split]
    expected_batches = [items[i : i + batch_size] for i in range(0, len(items), batch_size)]
    assert code_value(batched) == {
        "batches": expected_batches,
        "totalItems": len(items),
        "batchCount": 3,
    }
    texts = [result.output(f"llm-batch{i + 1}")[batch_variables[i]]["text"] for i in range(3)]
    assert texts == [json.dumps([f"done {x}" for x in batch]) for batch in expected_batches]
    # `transformType: merge` over three LLM outputs: objects merge key by key (docs/semantics.md),
    # so the aggregate is the last batch's answer — the first two batches' texts are lost.
    aggregate = result.output("transform-aggregate")[merged]
    assert aggregate["text"] == texts[2]
    assert outputs == {"result": result.output("llm-summarize")[summary_variable]}
    assert outputs["result"]["text"].startswith("ACK Summarize")

    # Fewer items than three batches: `batches[2]` names nothing, so the reference stays
    # verbatim in the third prompt (docs/semantics.md) and that branch still runs.
    items = list(range(1, batch_size + 3))
    result, outputs = _parallel_run(name, items, settings)
    assert code_value(result.output("code-split")[split])["batchCount"] == 2
    third = result.output("llm-batch3")[batch_variables[2]]["text"]
    assert third == "no items in this batch"
    template = next(
        n["data"]["prompt"]
        for n in definition(name)["definition"]["nodes"]
        if n["id"] == "llm-batch3"
    )
    assert "batches[2]}}" in template and template in [r.prompt for r in llm.chat_requests]
    assert result.output("transform-aggregate")[merged]["text"] == third


# -- rate-limited-batch-processor: a loop whose body has a conditional wait and a join ----------


def test_rate_limited_batch_processor_without_waiting(settings: Settings) -> None:
    result = run_workflow(
        definition("rate-limited-batch-processor.json"),
        {"items": json.dumps(["alpha", "beta", "gamma"])},
        settings=settings,
    )
    assert statuses(result) == {
        "input-items": "succeeded",
        "input-ratelimit": "succeeded",  # defaultValue {"maxPerMinute": 60, ...}
        "code-init": "succeeded",
        "loop-items": "succeeded",
        "code-check-rate": "succeeded",
        "conditional-wait": "succeeded",
        "wait-rate": "skipped",
        "llm-process": "succeeded",
        "code-update": "succeeded",
        "shared-memory-progress": "succeeded",
        "output-1": "succeeded",
    }
    assert result.output("loop-items") == {"items": ["alpha", "beta", "gamma"], "count": 3}
    assert [o["shouldWait"] for o in result.output("conditional-wait")] == [False] * 3
    assert result.output("wait-rate") == [None] * 3
    assert [o["itemResult"]["text"] for o in result.output("llm-process")] == [
        "processed alpha",
        "processed beta",
        "processed gamma",
    ]
    # Every item starts from code-init's tracker (`rateTracker` names its first writer), so
    # each item counts one: the counters do not accumulate across items.
    assert [o["rateTracker"]["processed"] for o in result.output("code-update")] == [1, 1, 1]
    final = result.outputs["result"]
    assert final["processed"] == 0 and final["maxPerMinute"] == 60
    assert final == result.output("code-init")["rateTracker"]


def test_rate_limited_batch_processor_reads_the_first_rate_tracker(settings: Settings) -> None:
    """With a limit of 0 per minute the check computes `needsWait: true`, but the condition
    `rateTracker.needsWait` names code-init's tracker (three nodes write `rateTracker`; the
    first writer wins, docs/semantics.md), so the wait branch is not taken."""
    result = run_workflow(
        definition("rate-limited-batch-processor.json"),
        {"items": json.dumps(["one"]), "rateLimit": json.dumps({"maxPerMinute": 0})},
        settings=settings,
    )
    assert result.status == "succeeded"
    [checked] = result.output("code-check-rate")
    assert checked["rateTracker"]["needsWait"] is True
    assert 30_000 < checked["rateTracker"]["waitTime"] <= 60_000
    assert [o["shouldWait"] for o in result.output("conditional-wait")] == [False]
    assert result.nodes["wait-rate"].status == "skipped"


def test_rate_limited_batch_processor_waits_when_the_tracker_is_near_its_limit(
    settings: Settings,
) -> None:
    """The wait branch, reached the one way the definition allows: an execution input
    `rateTracker` (inputs shadow node keys) near its per-minute limit with 300 ms to wait.
    The short wait sleeps in the op; the join after it runs per item."""
    now_ms = int(time.time() * 1000)
    tracker = {
        "processed": 54,
        "minuteCount": 59,
        "hourCount": 59,
        "lastMinuteReset": now_ms - 59_700,
        "lastHourReset": now_ms,
        "maxPerMinute": 60,
        "maxPerHour": 1000,
        "needsWait": True,
        "waitTime": 300,
    }
    started = time.monotonic()
    result = run_workflow(
        definition("rate-limited-batch-processor.json"),
        {"items": json.dumps(["x", "y"]), "rateTracker": tracker},
        settings=settings,
    )
    assert result.status == "succeeded"
    assert time.monotonic() - started >= 0.3  # items may wait side by side (threaded executor)
    assert [o["shouldWait"] for o in result.output("conditional-wait")] == [True, True]
    # Without an outputVariable the wait's object is its output (docs/semantics.md).
    waits = result.output("wait-rate")
    assert [(w["waited"], w["slept"]) for w in waits] == [(True, True), (True, True)]
    assert all(w["resumedAt"] >= w["dueAt"] for w in waits)
    assert [o["itemResult"]["text"] for o in result.output("llm-process")] == [
        "processed x",
        "processed y",
    ]
    assert [o["rateTracker"]["processed"] for o in result.output("code-update")] == [55, 55]
    assert result.outputs == {"result": tracker}  # `{{rateTracker}}` is the input, again


# -- saga-pattern-workflow: a loop of LLM steps, compensation as a nested loop -------------------


@pytest.fixture(scope="module")
def saga_runs(settings: Settings) -> dict[str, WorkflowRunResult]:
    saga = definition("saga-pattern-workflow.json")
    return {
        "ok": run_workflow(saga, {"transactionRequest": "order saga-ok"}, settings=settings),
        "declined": run_workflow(
            saga,
            {"transactionRequest": "order saga-declined; fail charge_payment"},
            settings=settings,
        ),
    }


STEPS = ["reserve_inventory", "charge_payment", "create_order", "send_notification"]


def test_saga_every_step_succeeds(saga_runs: dict[str, WorkflowRunResult]) -> None:
    result = saga_runs["ok"]
    assert result.status == "succeeded"
    assert result.output("loop-steps")["count"] == 4
    assert [
        json.loads(o["stepResult"]["text"])["result"] for o in result.output("llm-execute")
    ] == [f"{step} done" for step in STEPS]
    assert [o["stepSuccess"] for o in result.output("conditional-success")] == [True] * 4
    logged = result.output("shared-memory-log")
    assert [entry["value"]["name"] for entry in logged] == STEPS
    assert {entry["key"] for entry in logged} == {"completed_steps"}
    assert result.nodes["shared-memory-log"].status == "succeeded"
    assert result.nodes["loop-compensate"].status == "skipped"
    assert result.output("loop-compensate") == [None] * 4
    assert result.nodes["llm-compensate"].status == "skipped"
    saga_state = result.outputs["result"]
    assert saga_state["sagaId"].startswith("saga_")
    assert [s["name"] for s in saga_state["steps"]] == STEPS


def test_saga_a_declined_step_takes_the_compensation_branch_for_that_item(
    saga_runs: dict[str, WorkflowRunResult], llm: FakeLLMServer
) -> None:
    result = saga_runs["declined"]
    assert result.status == "succeeded"
    # Items run independently (docs/semantics.md, loops): a failed step does not stop the
    # later steps, and only its own item takes the false branch.
    assert [o["stepSuccess"] for o in result.output("conditional-success")] == [
        True,
        False,
        True,
        True,
    ]
    logged = result.output("shared-memory-log")
    assert [None if e is None else e["value"]["name"] for e in logged] == [
        "reserve_inventory",
        None,
        "create_order",
        "send_notification",
    ]
    # The compensation loop iterates `sagaState.completedSteps`, which code-init wrote as []:
    # it runs for the declined item with zero iterations, so no compensation is asked for.
    compensate = result.output("loop-compensate")
    assert compensate[1] == {"items": [], "count": 0, "results": []}
    assert [c is None for c in compensate] == [True, False, True, True]
    assert result.nodes["llm-compensate"].status == "skipped"
    assert prompts_with(llm, "Execute compensation action") == []
    # Both exits ran: the declined item reached "Transaction Rolled Back", the others
    # "Transaction Complete"; their values are `{{sagaState}}`, code-init's state.
    assert result.nodes["output-success"].status == "succeeded"
    assert result.nodes["output-failure"].status == "succeeded"
    assert result.outputs["error"]["sagaId"] == result.outputs["result"]["sagaId"]


def test_saga_that_never_compensates_does_not_report_a_rollback(
    saga_runs: dict[str, WorkflowRunResult],
) -> None:
    result = saga_runs["ok"]
    assert result.nodes["output-failure"].status == "skipped"
    assert set(result.outputs) == {"result"}


# -- scheduled-task-orchestrator: a switch on the local hour -------------------------------------

CHILD = """
import json, sys
from flowmaestro_dagster.testing import run_workflow
result = run_workflow(json.loads(open(sys.argv[1]).read()), {})
print("RESULT " + json.dumps(result.to_dict(), default=str))
"""


def _zone_for_local_hour(hour: int) -> str:
    """An `Etc/GMT±N` zone in which it is now `hour` o'clock (POSIX signs are inverted)."""
    offset = (hour - datetime.now(UTC).hour) % 24
    if offset > 14:
        offset -= 24
    return "Etc/GMT" if offset == 0 else f"Etc/GMT{-offset:+d}"


def _task_type(hour: int, day: int, date: int) -> str:
    """The snippet's own rule (code-time)."""
    if date == 1 and hour == 9:
        return "monthly"
    if day == 1 and hour == 9:
        return "weekly"
    return {9: "daily-morning", 18: "daily-evening"}.get(hour, "hourly")


def test_scheduled_task_orchestrator_routes_by_the_local_hour(llm: FakeLLMServer) -> None:
    """`new Date().getHours()` in the code node decides the branch. V8 reads the time zone
    when the process starts, so each run is a child process with its own `TZ`, chosen so that
    it is now 03:xx (hourly tasks) or 18:xx (evening tasks) there."""
    targets = {3: "hourly", 18: "daily-evening"}
    env = {
        **os.environ,
        "FLOWMAESTRO_LLM__PROVIDERS__OPENAI__BASE_URL": llm.url,
        "FLOWMAESTRO_LLM__PROVIDERS__OPENAI__API_KEY": API_KEY,
    }
    utc_hour = datetime.now(UTC).hour
    path = str(CATEGORY / "scheduled-task-orchestrator.json")
    children = {
        hour: subprocess.Popen(
            [sys.executable, "-c", CHILD, path],
            env={**env, "TZ": _zone_for_local_hour(hour)},
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for hour in targets
    }
    results: dict[int, dict[str, Any]] = {}
    for hour, child in children.items():
        out, err = child.communicate(timeout=240)
        assert child.returncode == 0, err[-3000:]
        line = next(x for x in out.splitlines() if x.startswith("RESULT "))
        results[hour] = json.loads(line.removeprefix("RESULT "))
    same_hour = datetime.now(UTC).hour == utc_hour  # no hour boundary crossed meanwhile
    handlers = {
        "hourly": "llm-hourly",
        "daily-morning": "llm-morning",
        "daily-evening": "llm-evening",
        "weekly": "llm-weekly",
        "monthly": "llm-monthly",
    }
    for hour, task_type in targets.items():
        result = results[hour]
        nodes = result["nodes"]
        context = code_value(nodes["code-time"]["output"]["timeContext"])
        if same_hour:
            assert context["hour"] == hour
            assert context["taskType"] == task_type
        assert context["taskType"] == _task_type(context["hour"], context["day"], context["date"])
        chosen = handlers[context["taskType"]]
        assert {n: r["status"] for n, r in nodes.items()} == {
            "trigger-1": "succeeded",
            "code-time": "succeeded",
            "switch-task": "succeeded",
            **{h: "succeeded" if h == chosen else "skipped" for h in handlers.values()},
            "output-1": "succeeded",
        }
        assert nodes["switch-task"]["output"]["matched"] == context["taskType"]
        assert result["status"] == "succeeded"
        assert result["outputs"]["result"]["taskType"] == context["taskType"]
        [answer] = nodes[chosen]["output"].values()
        assert answer["text"].startswith("ACK Execute ") and answer["text"].endswith(" tasks:")


# -- scheduled-task-orchestrator-2: PostgreSQL → topological sort → loop → update ---------------


@pytest.fixture
def task_database() -> Iterator[str]:
    require_postgres()
    name = create_pg_database()
    url = pg_url(name)
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    with engine.begin() as connection:
        connection.execute(
            sa.text(
                "CREATE TABLE scheduled_tasks (id text PRIMARY KEY, name text, "
                "dependencies jsonb, schedule text, priority int, next_run timestamptz, "
                "last_run timestamptz)"
            )
        )
        connection.execute(
            sa.text(
                "INSERT INTO scheduled_tasks VALUES "
                "('report', 'Build report', '[\"extract\"]', '0 1 * * *', 1, "
                " now() - interval '1 hour', NULL), "
                "('extract', 'Extract data', '[]', '0 1 * * *', 2, "
                " now() - interval '2 hours', NULL), "
                "('later', 'Not due yet', '[]', '0 1 * * *', 0, now() + interval '1 day', NULL)"
            )
        )
    engine.dispose()
    try:
        yield url
    finally:
        drop_pg_database(name)


@pytest.mark.postgres
def test_scheduled_task_orchestrator_2_fails_where_the_definition_is_wrong(
    settings: Settings, task_database: str, llm: FakeLLMServer
) -> None:
    with_db = settings.model_copy(
        update={"databases": {"postgresql": DatabaseConnection(url=task_database)}}
    )
    name = "scheduled-task-orchestrator-2.json"
    result = run_workflow(definition(name), {}, settings=with_db)
    # The select runs on PostgreSQL: due tasks by priority, the one not due left out.
    tasks = result.output("database-tasks")["tasks"]
    assert tasks["rows"] == [
        {
            "id": "report",
            "name": "Build report",
            "dependencies": ["extract"],
            "schedule": "0 1 * * *",
        },
        {"id": "extract", "name": "Extract data", "dependencies": [], "schedule": "0 1 * * *"},
    ]
    # Definition bug: the sort snippet does `JSON.parse(inputs.tasks)`, but `tasks` is the
    # database node's output object. The snippet's SyntaxError, naming the node, is the right
    # failure: snippets get data, not JSON text (docs/node-types.md), and we do not guess.
    # (Past it, the UPDATE below fails too, and `spreadsheetGeneration` is deliberately left
    # unconfigured: "no connector configured for node type 'spreadsheetGeneration'".)
    assert result.status == "failed"
    assert result.nodes["code-order"].error == (
        "node 'code-order' (code): the JavaScript snippet failed: undefined:1: "
        'SyntaxError: "[object Object]" is not valid JSON'
    )
    assert {n for n, s in statuses(result).items() if s == "not_run"} == {
        "loop-tasks",
        "llm-execute",
        "database-update",
        "spreadsheetGeneration-1",
        "integration-slack",
        "output-1",
    }

    # A trigger payload carrying `tasks` as JSON text (execution inputs come before node keys)
    # gets past the sort: the loop runs the tasks in dependency order, then the UPDATE fails —
    # it uses `$1` and the node gives no values (definition bug; a missing bind value is a
    # configuration error, never an empty string pasted into SQL).
    payload = [
        {"id": "publish", "name": "Publish", "dependencies": ["build"]},
        {"id": "build", "name": "Build", "dependencies": []},
    ]
    result = run_workflow(definition(name), {"tasks": json.dumps(payload)}, settings=with_db)
    ordered = code_value(result.output("code-order")["ordered"])["orderedTasks"]
    assert [t["id"] for t in ordered] == ["build", "publish"]
    assert [o["taskResult"]["text"] for o in result.output("llm-execute")] == [
        "ran build",
        "ran publish",
    ]
    assert result.status == "failed"
    assert result.nodes["database-update"].status == "failed"
    assert result.nodes["database-update"].error == (
        "node 'database-update' (database): $1 has no value: the query has 0 positional "
        "value(s) (parameters.values)"
    )
    assert statuses(result)["output-1"] == "not_run"
    engine = sa.create_engine(task_database, poolclass=sa.pool.NullPool)
    with engine.connect() as connection:
        runs = connection.execute(sa.text("SELECT count(last_run) FROM scheduled_tasks"))
        assert runs.scalar() == 0  # nothing was updated
    engine.dispose()


# -- state-machine-workflow-2: a transition table in a code node, a guard conditional -----------

# Every execution runs the nodes up to the guard.
UP_TO_THE_GUARD = dict.fromkeys(
    ("input-1", "shared-memory-1", "code-transition", "conditional-valid"), "succeeded"
)


def test_state_machine_workflow_2_invalid_transition_goes_straight_to_the_output(
    settings: Settings,
) -> None:
    # The snippet reads `inputs.action` (a top-level input); an action inside `stateInput` is
    # not seen, so from the default state `draft` no transition is valid.
    result = run_workflow(
        definition("state-machine-workflow-2.json"),
        {"stateInput": {"action": "review"}},
        settings=settings,
    )
    assert statuses(result) == {
        **UP_TO_THE_GUARD,
        "shared-memory-2": "skipped",
        "llm-action": "skipped",
        "integration-slack": "skipped",
        "output-1": "succeeded",
    }
    assert result.output("shared-memory-1") == {"currentState": None}
    transition = {"current": "draft", "canTransition": False, "nextState": "draft"}
    assert code_value(result.outputs["result"]) == transition
    assert result.outputs["result"]["canTransition"] is False


def test_state_machine_workflow_2_valid_transition_updates_the_state(
    settings: Settings, llm: FakeLLMServer
) -> None:
    result = run_workflow(
        definition("state-machine-workflow-2.json"),
        {"stateInput": {"document": "sm2-doc"}, "action": "review"},
        settings=settings,
    )
    assert statuses(result) == {
        **UP_TO_THE_GUARD,
        "shared-memory-2": "succeeded",
        "llm-action": "succeeded",
        "integration-slack": "failed",  # no message text (definition bug, see above)
        # The join's other upstream failed: it is not run (docs/semantics.md, joins).
        "output-1": "not_run",
    }
    transition = code_value(result.output("code-transition")["transition"])
    assert transition == {
        "current": "draft",
        "action": "review",
        "canTransition": True,
        "nextState": "review",
    }
    assert result.output("shared-memory-2")["updated"] == "review"
    assert result.output("llm-action")["actionResult"]["text"] == (
        "ACK Execute action for state transition from draft to review."
    )
    assert result.nodes["integration-slack"].error == (
        f"node 'integration-slack' (integration): {NO_SLACK_TEXT}"
    )


# -- state-machine-workflow: a switch on the stored state, per-state LLM handlers ---------------


@pytest.mark.parametrize(
    ("state", "handler"),
    [(None, "llm-draft"), ("approved", "llm-approved"), ("pending_review", "llm-pending")],
)
def test_state_machine_workflow_handles_the_current_state_then_fails_on_a_missing_name(
    settings: Settings, llm: FakeLLMServer, state: str | None, handler: str
) -> None:
    event = {"type": "publish", "entityId": f"doc-{state}"}
    inputs: dict[str, Any] = {"event": event}
    if state is not None:
        # Shared memory is per execution, so the stored state of an earlier execution comes
        # in as an input; execution inputs come before node keys (docs/semantics.md).
        inputs["currentState"] = {"state": state, "history": []}
    result = run_workflow(definition("state-machine-workflow.json"), inputs, settings=settings)
    handlers = ["llm-draft", "llm-pending", "llm-approved"]
    assert statuses(result) == {
        "input-event": "succeeded",
        "shared-memory-get": "succeeded",
        "code-default": "succeeded",
        "switch-state": "succeeded",
        **{h: "succeeded" if h == handler else "skipped" for h in handlers},
        # Definition bug: the snippet reads `inputs.transition`, but the handlers write
        # draftTransition / pendingTransition / approvedTransition. The JavaScript TypeError,
        # naming the node and line, is the right failure.
        "code-update-state": "failed",
        "shared-memory-set": "not_run",
        "output-1": "not_run",
    }
    assert result.output("shared-memory-get") == {"currentState": None}
    assert code_value(result.output("code-default")["stateData"])["state"] == (state or "draft")
    assert result.output("switch-state")["matched"] == (state or "draft")
    assert result.nodes["code-update-state"].error == (
        "node 'code-update-state' (code): the JavaScript snippet failed: TypeError: Cannot "
        "read properties of undefined (reading 'valid') (line 3)"
    )
    [prompt] = prompts_with(llm, f'"entityId": "doc-{state}"')
    assert prompt.startswith(f"Entity in {(state or 'draft').upper()} state received event")


def test_state_machine_workflow_state_without_a_handler_skips_everything_after_the_switch(
    settings: Settings,
) -> None:
    result = run_workflow(
        definition("state-machine-workflow.json"),
        {"event": {"type": "archive"}, "currentState": {"state": "published", "history": []}},
        settings=settings,
    )
    # `published` matches a case that has no edge: every handler is skipped, so is the join
    # after them and everything downstream. The run succeeds with no outputs.
    assert result.status == "succeeded"
    assert statuses(result) == {
        "input-event": "succeeded",
        "shared-memory-get": "succeeded",
        "code-default": "succeeded",
        "switch-state": "succeeded",
        "llm-draft": "skipped",
        "llm-pending": "skipped",
        "llm-approved": "skipped",
        "code-update-state": "skipped",
        "shared-memory-set": "skipped",
        "output-1": "skipped",
    }
    assert result.output("switch-state")["matched"] == "published"
    assert result.outputs == {}


# -- on a real Dagster: humanReview and long waits through the API --------------------------------


SECRET = "corpus-advanced-logic-secret-0123456789"
TIMEOUT = 180  # s, for every wait on the stack: the module's runs overlap


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory, llm: FakeLLMServer, slack: EchoServer
) -> Iterator[DagsterStack]:
    """One `dagster dev` for the module. Run workers get the settings from the environment:
    the fake LLM as provider `openai`, loopback allowed, the echo server as the `slack`
    connection's webhook (named through a variable), and a 1 s waitpoint sensor."""
    env = {
        "FLOWMAESTRO_WAITPOINT_INTERVAL_SECONDS": "1",
        "FLOWMAESTRO_SECRET_KEY": SECRET,
        "FLOWMAESTRO_CALLBACK_SIGNING_SECRET": SECRET,
        "FLOWMAESTRO_LLM__PROVIDERS__OPENAI__BASE_URL": llm.url,
        "FLOWMAESTRO_LLM__PROVIDERS__OPENAI__API_KEY": API_KEY,
        "FLOWMAESTRO_HTTP__ALLOW_LOOPBACK": "true",
        "FLOWMAESTRO_CONNECTIONS__SLACK__URL_ENV": SLACK_URL_VARIABLE,
        SLACK_URL_VARIABLE: slack.url(SLACK_PATH),
    }
    with running_stack(tmp_path_factory.mktemp("advanced-logic"), extra_env=env) as started:
        yield started


@pytest.fixture(scope="module")
def client(stack: DagsterStack) -> Iterator[TestClient]:
    """The API on the stack (the module's `settings` fixture is the in-process runs')."""
    api = stack_settings(stack, secret_key=SECRET, callback_signing_secret=SECRET)
    dagster = DagsterClient(api.dagster_graphql_url, instance=stack.instance())
    with api_client(api, dagster) as test_client:
        yield test_client


@pytest.fixture(scope="module")
def auth(stack: DagsterStack) -> dict[str, str]:
    return new_user(stack.database_url, "corpus-advanced-logic")


def node(body: dict[str, Any], node_id: str) -> dict[str, Any]:
    found: dict[str, Any] = next(n for n in body["nodes"] if n["node_id"] == node_id)
    return found


def pending_approvals(
    client: TestClient, auth: dict[str, str], execution_id: str, count: int
) -> list[dict[str, Any]]:
    def probe() -> list[dict[str, Any]] | None:
        mine = approvals_of(client, auth, execution_id)
        return mine if len(mine) == count else None

    found: list[dict[str, Any]] = wait_for(probe, TIMEOUT)
    return sorted(found, key=lambda a: a["iteration"])


def make_waits_due(database_url: str, execution_id: str) -> int:
    """Bring the execution's pending datetime waitpoints due now (the corpus waits a day):
    the `waitpoint_resumer` sensor (every FLOWMAESTRO_WAITPOINT_INTERVAL_SECONDS) resolves
    them and resumes the parked run, exactly as it would a day later."""
    with session_scope(get_engine(database_url)) as session:
        rows = session.scalars(
            sa.select(Waitpoint).where(
                Waitpoint.execution_id == execution_id,
                Waitpoint.kind == "datetime",
                Waitpoint.status == "pending",
            )
        ).all()
        for row in rows:
            row.due_at = datetime.now(UTC) - timedelta(seconds=1)
        return len(rows)


def step_failures(stack: DagsterStack, run_id: str) -> dict[str, str]:
    """Step key → failure message, from Dagster's event log of a run."""
    from dagster import DagsterEventType

    found: dict[str, str] = {}
    for entry in stack.instance().all_logs(run_id, of_type=DagsterEventType.STEP_FAILURE):
        event = entry.dagster_event
        assert event is not None and event.step_key is not None
        failure = getattr(event.event_specific_data, "user_failure_data", None)
        found[event.step_key] = str(getattr(failure, "description", None))
    return found


@pytest.fixture(scope="module")
def started(client: TestClient, auth: dict[str, str]) -> dict[str, str]:
    """Every stack execution of the module, started at once so that their runs overlap (a run
    worker takes ~15 s to start on this machine); each test then drives its own."""
    router = deploy(client, auth, definition("dynamic-workflow-router.json"))
    chain = deploy(client, auth, definition("multi-level-approval-chain.json"))
    return {
        "router": start(client, auth, router, {"userRequest": ASK_A_PERSON}),
        "chain-3": start(client, auth, chain, {"request": LEVEL_3_REQUEST}),
        # The "all approved" branch reads `approvalResults.allApproved`, the loop's result,
        # which does not exist inside the loop body: only an execution input of that name
        # (inputs shadow node keys) reaches the true branch.
        "chain-1": start(
            client,
            auth,
            chain,
            {"request": LEVEL_1_REQUEST, "approvalResults": {"allApproved": True}},
        ),
    }


ASK_A_PERSON = "Would you sponsor our meetup? (ref dwr-person)"
LEVEL_3_REQUEST = {"amount": 250000, "title": "New data centre (ref mlac-3)"}
LEVEL_1_REQUEST = {"amount": 800, "title": "Team lunch (ref mlac-1)"}
CHAIN_NODES = [
    "input-1",
    "code-level",
    "loop-approvers",
    "humanReview-1",
    "conditional-approved",
    "wait-1",
    "integration-slack-approved",
    "integration-slack-rejected",
    "output-1",
]
# The chain once its approvals are decided: input, level, loop and review have run.
REVIEWED = dict.fromkeys(CHAIN_NODES[:4], "succeeded")


@pytest.mark.slow
def test_stack_cyclic_files_are_refused_by_the_api(
    client: TestClient, auth: dict[str, str]
) -> None:
    for name, cycle in CYCLES.items():
        response = client.post("/workflows", json={"definition": definition(name)}, headers=auth)
        assert response.status_code == 422, response.text
        problems = response.json()["problems"]
        assert [(p["code"], p["severity"]) for p in problems] == [("cycle", "error")]
        assert problems[0]["message"] == (
            f"the workflow has a cycle: {cycle}; loops must use a loop node"
        )


@pytest.mark.slow
def test_stack_dynamic_workflow_router_default_route_asks_a_person(
    client: TestClient, auth: dict[str, str], started: dict[str, str]
) -> None:
    """An answer that names no route takes `defaultRoute: other`, whose edge (`default`)
    leads to a humanReview: the execution parks until a person routes it."""
    execution_id = started["router"]
    waiting = status_is(client, auth, execution_id, "waiting", timeout=TIMEOUT)
    handlers = ["llm-support", "llm-sales", "llm-billing", "llm-feedback"]
    assert node_statuses(waiting) == {
        "input-request": "succeeded",
        "router-classify": "succeeded",
        **dict.fromkeys(handlers, "skipped"),
        "humanReview-other": "waiting",
        "output-1": "skipped",
    }
    decision = node(waiting, "router-classify")["output"]
    assert decision["route"] == "other" and decision["usedDefault"] is True
    assert decision["text"] == "I cannot place this request."
    [approval] = pending_approvals(client, auth, execution_id, 1)
    assert approval["node_id"] == "humanReview-other"
    assert approval["prompt"] == (
        f"This request needs manual routing:\n\n{ASK_A_PERSON}\n\nPlease route to appropriate team."
    )
    decide(
        client,
        auth,
        approval["id"],
        decision="respond",
        value="partnerships",
        comment="sponsorships go to partnerships",
    )
    done = finished(client, auth, execution_id, TIMEOUT)
    assert done["status"] == "succeeded"
    assert node_statuses(done) == {
        "input-request": "succeeded",
        "router-classify": "succeeded",
        **dict.fromkeys(handlers, "skipped"),
        "humanReview-other": "succeeded",
        "output-1": "succeeded",  # the five-way join runs with the one branch that ran
    }
    review = node(done, "humanReview-other")["output"]
    assert review["manualRoute"]["response"] == review["response"] == "partnerships"
    assert review["decision"] == "respond"
    assert review["comment"] == "sponsorships go to partnerships"
    # The output is `{{routeDecision}}`: the route taken, not the person's answer.
    assert done["outputs"] == {"result": "other"}
    runs = done["runs"]
    assert len(runs) == 2 and runs[1]["parent_run_id"] == runs[0]["run_id"]


@pytest.fixture(scope="module")
def level_3_chain(
    client: TestClient, auth: dict[str, str], stack: DagsterStack, started: dict[str, str]
) -> dict[str, dict[str, Any]]:
    """Level 3 (two approvers): approve one, reject the other, let the day-long waits come
    due. Returns the execution as seen at each stop."""
    execution_id = started["chain-3"]
    seen: dict[str, dict[str, Any]] = {}
    seen["approvals"] = status_is(client, auth, execution_id, "waiting", timeout=TIMEOUT)
    approvals = pending_approvals(client, auth, execution_id, 2)
    seen["approvals"]["pending"] = approvals
    decide(client, auth, approvals[0]["id"], decision="approve", comment="fine by the CEO")
    decide(client, auth, approvals[1]["id"], decision="reject", comment="over budget")

    def waits_parked(body: dict[str, Any]) -> bool:
        waits = [w for w in body["waitpoints"] if w["kind"] == "datetime"]
        return body["status"] == "waiting" and len(waits) == 2

    seen["waits"] = reaches(client, auth, execution_id, waits_parked, TIMEOUT)
    assert make_waits_due(stack.database_url, execution_id) == 2
    seen["done"] = finished(client, auth, execution_id, TIMEOUT)
    return seen


@pytest.mark.slow
def test_stack_multi_level_approval_chain_asks_each_approver_then_escalates(
    level_3_chain: dict[str, dict[str, Any]], stack: DagsterStack, slack: EchoServer
) -> None:
    first = level_3_chain["approvals"]
    assert (
        node_statuses(first)
        == {
            "input-1": "succeeded",
            "code-level": "succeeded",
            "loop-approvers": "succeeded",
            "humanReview-1": "waiting",  # once per approver (loop item)
            **dict.fromkeys(CHAIN_NODES[4:], "skipped"),
        }
    )
    level = node(first, "code-level")["output"]["approvalLevel"]
    assert code_value(level) == {"level": 3, "approvers": ["ceo", "cfo"]}
    approvals = first["pending"]
    assert [a["iteration"] for a in approvals] == ["0", "1"]
    # The review prompt quotes the request but not `{{approver}}`: both approvals read alike.
    assert {a["prompt"] for a in approvals} == {
        f"Please review and approve this request:\n\n{json.dumps(LEVEL_3_REQUEST)}"
    }

    waits = level_3_chain["waits"]
    assert node_statuses(waits) == {
        **REVIEWED,
        "conditional-approved": "succeeded",
        "wait-1": "waiting",
        "integration-slack-approved": "skipped",
        "integration-slack-rejected": "skipped",
        "output-1": "skipped",
    }
    decisions = node(waits, "humanReview-1")["output"]
    assert [(d["approval"]["decision"], d["approval"]["comment"]) for d in decisions] == [
        ("approve", "fine by the CEO"),
        ("reject", "over budget"),
    ]
    # `{{approvalResults.allApproved}}` names the loop's result, which does not exist inside
    # the loop body: approved or not, every item takes the false branch (the escalation wait).
    assert [c["isApproved"] for c in node(waits, "conditional-approved")["output"]] == [
        False,
        False,
    ]
    parked = [w for w in waits["waitpoints"] if w["kind"] == "datetime"]
    assert sorted(w["iteration"] for w in parked) == ["0", "1"]
    for wait in parked:  # `waitType: duration` + `duration: 86400` is a day, in seconds
        created = datetime.fromisoformat(wait["created_at"].replace("Z", "+00:00"))
        due = datetime.fromisoformat(wait["due_at"].replace("Z", "+00:00"))
        assert timedelta(hours=23, minutes=59) < due - created <= timedelta(days=1)

    done = level_3_chain["done"]
    assert done["status"] == "failed"
    assert node_statuses(done) == {
        **REVIEWED,
        "conditional-approved": "succeeded",
        "wait-1": "succeeded",
        "integration-slack-approved": "skipped",
        # No message text (definition bug): a configuration error, nothing is posted.
        "integration-slack-rejected": "failed",
        "output-1": "skipped",  # as the parked run left it; the last run never reached it
    }
    waited = [w["waited"] for w in node(done, "wait-1")["output"]]  # outputVariable `waited`
    assert [(w["waited"], w["slept"]) for w in waited] == [(True, False), (True, False)]  # parked
    runs = done["runs"]
    # Parked, resumed after the approvals, resumed after the waits: one resume per parked run.
    # A fourth run may follow on a loaded machine: Dagster's run retry (FLOWMAESTRO_RUN_RETRIES)
    # of the failed run, from failure, which fails the same way; it is not a second resume.
    shape = [(r["status"], (r["parent_run_id"] or "")[:8], r["run_id"][:8]) for r in runs]
    assert [r["status"] for r in runs[:3]] == ["SUCCESS", "SUCCESS", "FAILURE"], shape
    assert len(runs) == 3 or (
        len(runs) == 4
        and runs[3]["status"] == "FAILURE"
        and runs[3]["parent_run_id"] == runs[2]["run_id"]
    ), shape
    assert runs[2]["parent_run_id"] == runs[1]["run_id"]
    assert runs[1]["parent_run_id"] == runs[0]["run_id"]
    failures = step_failures(stack, runs[2]["run_id"])
    assert set(failures.values()) == {
        f"node 'integration-slack-rejected' (integration): {NO_SLACK_TEXT}"
    }
    assert len(failures) == 2  # one per approver
    assert not [r for r in slack.requests if "mlac-3" in r.text]


@pytest.mark.slow
def test_stack_a_failed_execution_says_why(level_3_chain: dict[str, dict[str, Any]]) -> None:
    done = level_3_chain["done"]
    assert node(done, "integration-slack-rejected")["error"] == (
        f"node 'integration-slack-rejected' (integration): {NO_SLACK_TEXT}"
    )


@pytest.mark.slow
def test_stack_a_resumed_wait_reports_when_it_was_due(
    level_3_chain: dict[str, dict[str, Any]],
) -> None:
    for item in node(level_3_chain["done"], "wait-1")["output"]:
        waited = item["waited"]
        assert datetime.fromisoformat(waited["dueAt"]) <= datetime.fromisoformat(
            waited["resumedAt"]
        )


@pytest.mark.slow
def test_stack_multi_level_approval_chain_all_approved_branch(
    client: TestClient,
    auth: dict[str, str],
    stack: DagsterStack,
    started: dict[str, str],
) -> None:
    execution_id = started["chain-1"]
    status_is(client, auth, execution_id, "waiting", timeout=TIMEOUT)
    [approval] = pending_approvals(client, auth, execution_id, 1)
    decide(client, auth, approval["id"], decision="approve")
    done = finished(client, auth, execution_id, TIMEOUT)
    assert done["status"] == "failed"
    assert node_statuses(done) == {
        **REVIEWED,
        "conditional-approved": "succeeded",
        "wait-1": "skipped",
        "integration-slack-approved": "failed",  # no message text (definition bug)
        "integration-slack-rejected": "skipped",
        "output-1": "skipped",
    }
    level = node(done, "code-level")["output"]["approvalLevel"]
    assert code_value(level) == {"level": 1, "approvers": ["manager"]}
    assert [c["isApproved"] for c in node(done, "conditional-approved")["output"]] == [True]
    assert [w["kind"] for w in done["waitpoints"]] == ["approval"]  # no escalation wait
    runs = done["runs"]
    assert len(runs) == 2
    failures = step_failures(stack, runs[1]["run_id"])
    assert list(failures.values()) == [
        f"node 'integration-slack-approved' (integration): {NO_SLACK_TEXT}"
    ]
    assert next(iter(failures)).endswith("[0]")  # the loop's one item
