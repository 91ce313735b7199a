"""Execution-control nodes (issue 10): batch, retryConfig and queueConfig, through compiled jobs
and validation."""

from collections.abc import Callable
from typing import Any

import pytest
from dagster import Backoff, DagsterInstance

from flowmaestro_dagster.compile.validation import validate
from flowmaestro_dagster.engines.jobs import build_job
from flowmaestro_dagster.engines.local import execute_workflow
from flowmaestro_dagster.engines.results import WorkflowRunResult
from flowmaestro_dagster.runtime.progress import parse_progress
from flowmaestro_dagster.testing import resources_for
from tests.builders import chain, flow, node

Run = Callable[..., WorkflowRunResult]


def batch_flow(**batch: Any) -> dict[str, Any]:
    """Each item x becomes 1 / x (x = 0 fails), then an output reads the batch's summary."""
    config = {"items": "{{xs}}", "itemVariable": "x", "batchSize": 2, "concurrency": 2}
    return flow(
        [
            node("in", "input", inputName="xs", inputType="json"),
            node("batch", "batch", label="Invert", **config | {"outputVariable": "inverted"} | batch),
            node("inv", "transform", operation="custom", inputData="{{x}}", expression="1 / $", outputVariable="inverse"),
            node("out", "output", outputName="summary", value="{{inverted}}"),
            node("ok", "output", outputName="ok", value="{{batch.succeeded}}"),
        ],
        [("in", "batch"), ("batch", "inv"), ("inv", "out"), ("inv", "ok")],
    )  # fmt: skip


def problems_of(definition: dict[str, Any]) -> list[tuple[str, str | None, str | None]]:
    return [(p.code, p.node_id, p.field) for p in validate(definition) if p.severity == "error"]


# -- batch ---------------------------------------------------------------------------------------


def test_batch_continue_collects_the_failing_item_and_runs_the_rest(run: Run) -> None:
    result = run(batch_flow(onItemError="continue"), {"xs": [1, 2, 0, 4]})
    assert result.status == "succeeded"
    summary = result.outputs["summary"]
    assert summary["results"] == [{"inverse": 1}, {"inverse": 0.5}, None, {"inverse": 0.25}]
    assert (summary["succeeded"], summary["failed"], summary["skipped"]) == (3, 1, 0)
    [error] = summary["errors"]
    assert error["index"] == 2 and error["item"] == 0
    assert error["error"]["nodeId"] == "inv" and "division by zero" in error["error"]["message"]
    assert result.outputs["ok"] == 3
    assert result.nodes["batch"].output["total"] == 4  # the summary is also the node's output


def test_batch_fail_stops_at_the_failing_item_and_fails_the_node(run: Run) -> None:
    result = run(batch_flow(onItemError="fail"), {"xs": [1, 2, 0, 4, 5, 6]})
    assert result.status == "failed"
    error = result.nodes["batch"].error or ""
    assert "item 2 failed" in error and "inv" in error
    assert result.nodes["out"].status != "succeeded"


def test_batch_fails_by_default_on_an_item_error(run: Run) -> None:
    result = run(batch_flow(), {"xs": [0]})
    assert result.status == "failed"
    assert "item 0 failed" in (result.nodes["batch"].error or "")


def test_batch_min_success_completes_without_starting_the_remaining_items(run: Run) -> None:
    # Chunks of 2: the first chunk reaches k = 2, so the second chunk never starts.
    result = run(batch_flow(onItemError="continue", minSuccess=2), {"xs": [1, 2, 0, 4]})
    assert result.status == "succeeded"
    summary = result.outputs["summary"]
    assert summary["results"] == [{"inverse": 1}, {"inverse": 0.5}, None, None]
    assert (summary["succeeded"], summary["failed"], summary["skipped"]) == (2, 0, 2)


def test_batch_min_success_tolerates_failures_until_k_is_reached(run: Run) -> None:
    definition = batch_flow(onItemError="continue", minSuccess=2, batchSize=1, concurrency=1)
    result = run(definition, {"xs": [0, 1, 2, 3]})
    summary = result.outputs["summary"]
    assert (summary["succeeded"], summary["failed"], summary["skipped"]) == (2, 1, 1)


def test_batch_fails_as_soon_as_min_success_cannot_be_reached(run: Run) -> None:
    definition = batch_flow(onItemError="continue", minSuccess=2, batchSize=1, concurrency=1)
    result = run(definition, {"xs": [0, 0, 1]})
    assert result.status == "failed"
    assert "only 0 of 3 item(s) succeeded, minSuccess is 2" in (result.nodes["batch"].error or "")


def test_batch_with_fewer_items_than_min_success_fails(run: Run) -> None:
    result = run(batch_flow(minSuccess=3), {"xs": [1]})
    assert result.status == "failed"
    assert "minSuccess 3 cannot be reached" in (result.nodes["batch"].error or "")


def test_batch_in_backend_shape_with_dialect_keys_and_no_body() -> None:
    definition = {
        "name": "Chunks",
        "nodes": {
            "b": {
                "type": "batch",
                "name": "Chunks",
                "config": {"collection": [3, 1, 2], "chunkSize": 2, "continueOnError": True},
            },
            "out": {"type": "output", "config": {"outputName": "r", "value": "{{b.results}}"}},
        },
        "edges": [{"id": "e", "source": "b", "target": "out"}],
    }
    warnings = [p.code for p in validate(definition)]
    assert "empty_batch" in warnings
    compiled = build_job(definition, resource_defs=resources_for())
    plan = compiled.job.run_config_schema  # compiles to one op for the batch
    assert plan is not None and set(compiled.aliases) == {"b", "out"}
    result = execute_workflow(compiled, {})
    assert result.status == "succeeded" and result.outputs == {"r": [3, 1, 2]}


def test_batch_body_runs_inside_the_batch_op_and_reports_progress() -> None:
    compiled = build_job(batch_flow(onItemError="continue"), resource_defs=resources_for())
    assert "inv" not in compiled.aliases  # the body has no step of its own
    with DagsterInstance.ephemeral() as instance:
        result = execute_workflow(compiled, {"xs": [1, 2, 0, 4]}, instance=instance)
        records = instance.get_records_for_run(result.run_id).records
    progress = [parse_progress(r.event_log_entry.user_message) for r in records]
    reports = [p for p in progress if p is not None]
    assert reports[0]["done"] == 0 and reports[0]["total"] == 4
    summary = {"done": 4, "total": 4, "succeeded": 3, "failed": 1, "skipped": 0, "finished": True}
    assert reports[-1] == {"node_id": "batch", **summary}
    assert any("2/4 done" in (r.event_log_entry.user_message or "") for r in records)


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"batchSize": 0}, "batchSize"),
        ({"concurrency": 1000}, "concurrency"),
        ({"onItemError": "sometimes"}, "onItemError"),
        ({"minSuccess": 0}, "minSuccess"),
        ({"items": [1, 2], "minSuccess": 3}, "minSuccess"),
        ({"items": {"not": "a list"}}, "items"),
        ({"items": None}, "items"),
    ],
)
def test_bad_batch_settings_are_errors_naming_node_and_field(
    changes: dict[str, Any], field: str
) -> None:
    definition = batch_flow(**changes)
    if changes.get("items", "") is None:
        definition["nodes"][1]["data"].pop("items")
    errors = problems_of(definition)
    assert any(node == "batch" and f == field for _, node, f in errors), errors


def test_a_wait_inside_a_batch_body_is_an_error() -> None:
    definition = chain(
        node("b", "batch", items=[1, 2]),
        node("pause", "wait", duration=1000),
        node("out", "output", outputName="r", value="{{b.results}}"),
        react=True,
    )
    assert ("waitpoint_in_batch", "pause", "type") in problems_of(definition)


# -- retryConfig ---------------------------------------------------------------------------------


def retry_flow(config_edges: list[tuple[str, ...]], **config: Any) -> dict[str, Any]:
    return flow(
        [
            node("in", "input", inputName="x"),
            node("before", "transform", operation="passthrough"),
            node("defaults", "retryConfig", label="Retry defaults", **config),
            node("call", "llm", prompt="{{x}}"),
            node("own", "llm", prompt="{{x}}", retry={"maxAttempts": 2, "minDelayMs": 50}),
            node("pure", "transform", operation="passthrough"),
        ],
        [
            ("in", "before"),
            *config_edges,
            ("defaults", "call"),
            ("defaults", "own"),
            ("defaults", "pure"),
        ],
    )


def policies(definition: dict[str, Any]) -> dict[str, Any]:
    job = build_job(definition).job
    by_alias = {n.name: job.graph.node_named(n.name).retry_policy for n in job.graph.nodes}
    aliases = build_job(definition).aliases
    return {node_id: by_alias[alias] for node_id, alias in aliases.items()}


def test_retry_config_sets_defaults_downstream_and_a_node_s_own_settings_win() -> None:
    definition = retry_flow(
        [("before", "defaults")], maxAttempts=5, backoffStrategy="linear", minDelayMs=200
    )
    found = policies(definition)
    assert found["before"] is None  # upstream of the retryConfig: its type's default
    assert found["defaults"] is None  # the settings node itself is never retried
    for node_id in ("call", "pure"):  # pure nodes too: the author asked for retries
        policy = found[node_id]
        assert (policy.max_retries, policy.delay, policy.backoff) == (4, 0.2, Backoff.LINEAR)
    own = found["own"]  # own keys win, the rest comes from the retryConfig
    assert (own.max_retries, own.delay, own.backoff) == (1, 0.05, Backoff.LINEAR)


def test_retry_config_without_incoming_edges_applies_to_the_whole_workflow() -> None:
    definition = retry_flow([("in", "defaults")], retry={"maxAttempts": 3, "backoff": "fixed"})
    definition["edges"] = [e for e in definition["edges"] if e["target"] != "defaults"]
    found = policies(definition)
    assert found["before"].max_retries == 2 and found["before"].backoff is None
    assert found["in"].max_retries == 2
    assert found["own"].max_retries == 1


def test_the_nearest_retry_config_wins_key_by_key() -> None:
    definition = flow(
        [
            node("wide", "retryConfig", maxAttempts=4, minDelayMs=300),
            node("in", "input", inputName="x"),
            node("outer", "retryConfig", maxAttempts=6, backoffStrategy="linear"),
            node("inner", "retryConfig", maxAttempts=2),
            node("t", "transform", operation="passthrough"),
        ],
        [("in", "outer"), ("outer", "inner"), ("inner", "t")],
    )
    policy = policies(definition)["t"]
    assert (policy.max_retries, policy.delay, policy.backoff) == (1, 0.3, Backoff.LINEAR)


def test_retry_config_runs_as_a_passthrough_that_keeps_edges_in_order(run: Run) -> None:
    definition = chain(
        node("in", "input", inputName="x"),
        node("defaults", "retryConfig", maxAttempts=2),
        node("q", "queueConfig", priority="high"),
        node("t", "transform", transformType="template", template="{{x}}!"),
        node("out", "output", outputName="r", value="{{t.result}}"),
        react=True,
    )
    result = run(definition, {"x": "hi"})
    assert result.status == "succeeded" and result.outputs == {"r": "hi!"}
    assert result.nodes["defaults"].output == {"retry": {"maxAttempts": 2}}
    assert result.nodes["q"].output["priority"] == 10


@pytest.mark.parametrize(
    ("config", "field"),
    [
        ({"maxAttempts": 0}, "maxAttempts"),
        ({"backoffStrategy": "sometimes"}, "backoffStrategy"),
        ({"retry": {"minDelayMs": -1}}, "retry.minDelayMs"),
        ({"minDelayMs": 500, "maxDelayMs": 100}, "maxDelayMs"),
        ({"retryableErrors": [""]}, "retryableErrors"),
    ],
)
def test_bad_retry_config_values_are_errors_naming_node_and_field(
    config: dict[str, Any], field: str
) -> None:
    definition = flow(
        [
            node("rc", "retryConfig", **config),
        ],
        [],
    )
    errors = problems_of(definition)
    assert any(code == "invalid_retry" and node == "rc" for code, node, _ in errors), errors
    assert any(f is not None and f.startswith(field) for _, _, f in errors), errors


# -- queueConfig ---------------------------------------------------------------------------------


def test_queue_config_is_exposed_on_the_compiled_workflow_and_as_job_tags() -> None:
    definition = chain(
        node("in", "input", inputName="customer"),
        node("q", "queueConfig", priority="high", queueName="ai-workflows", concurrencyKey="customer-{{customer}}"),
        name="Urgent",
    )  # fmt: skip
    compiled = build_job(definition)
    settings = compiled.queue_settings
    assert settings is not None
    assert (settings.node_id, settings.priority, settings.queue) == ("q", 10, "ai-workflows")
    assert settings.concurrency_key == "customer-{{customer}}"
    assert compiled.job.tags["dagster/priority"] == "10"
    assert compiled.job.tags["flowmaestro/queue"] == "ai-workflows"
    assert "flowmaestro/concurrency_key" not in compiled.job.tags  # rendered per execution
    assert (
        build_job(
            flow(
                [
                    node("i", "input"),
                ],
                [],
            )
        ).queue_settings
        is None
    )


@pytest.mark.parametrize(
    ("config", "field"),
    [
        ({"priority": "urgent"}, "priority"),
        ({"priority": 5000}, "priority"),
        ({"priority": True}, "priority"),
        ({"queue": "not a queue!"}, "queue"),
        ({"concurrencyKey": ""}, "concurrencyKey"),
    ],
)
def test_bad_queue_config_values_are_errors_naming_node_and_field(
    config: dict[str, Any], field: str
) -> None:
    errors = problems_of(
        flow(
            [
                node("q", "queueConfig", **config),
            ],
            [],
        )
    )
    assert ("invalid_config", "q", field) in errors, errors


def test_a_second_queue_config_is_an_error() -> None:
    definition = flow(
        [
            node("q1", "queueConfig", priority=1),
            node("q2", "queueConfig", priority=2),
        ],
        [],
    )
    assert ("duplicate_queue_config", "q2", "type") in problems_of(definition)
