"""Compiler output: names, shared op definitions, retry policies, tags, default config."""

from typing import Any

import dagster as dg
from dagster import Backoff

from flowmaestro_dagster.compile.naming import unique_aliases
from flowmaestro_dagster.engines.jobs import build_job
from tests.builders import chain, flow, node


def two_workflows() -> list[dict[str, Any]]:
    first = chain(
        node("input-1", "input", inputName="x"),
        node("llm-1", "llm", label="Summarize", prompt="{{x}}"),
        node("c", "conditional", condition="x > 1"),
        name="First Workflow",
        react=True,
    )
    second = flow(
        [
            node("input", "input", inputName="y"),
            node("llm_1", "llm", prompt="{{y}}"),
            node("llm-1", "llm", prompt="{{y}}"),
        ],
        [("input", "llm_1"), ("input", "llm-1")],
        name="Second: workflow!",
    )
    return [first, second]


def test_job_names_are_stable_valid_names() -> None:
    first, second = (build_job(w) for w in two_workflows())
    assert first.job_name == "first_workflow"
    assert second.job_name == "second_workflow"
    assert build_job(two_workflows()[0]).job_name == first.job_name


def test_node_ids_become_collision_free_aliases_with_original_id_in_tags() -> None:
    second = build_job(two_workflows()[1])
    aliases = second.aliases
    assert aliases["input"] == "input_"  # `input` is reserved by Dagster
    assert aliases["llm_1"] == "llm_1"  # the id that is already valid keeps the plain name
    assert aliases["llm-1"].startswith("llm_1_") and aliases["llm-1"] != aliases["llm_1"]
    node = second.job.graph.node_named(aliases["llm-1"])
    assert node.tags["flowmaestro/node_id"] == "llm-1"


def test_aliases_are_deterministic_and_unique_for_hostile_ids() -> None:
    ids = ["a b", "a-b", "a_b", "1x", "", "é", "input", "x" * 300, "config"]
    first = unique_aliases(ids)
    assert first == unique_aliases(list(reversed(ids)))
    assert len(set(first.values())) == len(ids)
    for alias in first.values():
        assert alias.replace("_", "a").isalnum() and not alias[0].isdigit() and len(alias) <= 90


def test_workflows_share_one_op_definition_per_node_type() -> None:
    jobs = [build_job(w).job for w in two_workflows()]
    defs = dg.Definitions(jobs=jobs)
    defs.get_repository_def()  # raises on conflicting op definitions
    llm_defs = {
        node.definition
        for job in jobs
        for node in job.graph.nodes
        if node.definition.name == "llm_node"
    }
    assert len(llm_defs) == 1


def test_op_labels_type_and_plan_config() -> None:
    compiled = build_job(two_workflows()[0])
    assert compiled.aliases["llm-1"] == "summarize__llm_1"  # the Gantt shows the label
    assert compiled.aliases["input-1"] == "input_1"  # a label that only repeats id/type/name
    node = compiled.job.graph.node_named("summarize__llm_1")
    assert node.tags["flowmaestro/label"] == "Summarize"
    assert node.tags["flowmaestro/type"] == "llm"
    config = compiled.job.run_config_schema  # default run config carries each node's plan
    assert config is not None


def test_retry_policies_come_from_node_settings_or_type_defaults() -> None:
    definition = flow(
        [
            node("in", "input", inputName="x"),
            node("call", "http", url="https://x", retry={"maxAttempts": 4, "backoffStrategy": "linear", "minDelayMs": 250}),
            node("ask", "llm", prompt="{{x}}"),
            node("pure", "transform", operation="passthrough"),
        ],
        [("in", "call"), ("in", "ask"), ("in", "pure")],
    )  # fmt: skip
    job = build_job(definition).job
    policies = {n.name: job.graph.node_named(n.name).retry_policy for n in job.graph.nodes}
    call = policies["call"]
    assert call is not None and call.max_retries == 3 and call.delay == 0.25
    assert call.backoff == Backoff.LINEAR
    ask = policies["ask"]
    assert ask is not None and ask.max_retries == 2 and ask.backoff == Backoff.EXPONENTIAL
    assert policies["pure"] is None


def test_workflow_timeout_becomes_dagster_max_runtime() -> None:
    definition = {
        "name": "t",
        "nodes": {"a": {"type": "input", "config": {"inputName": "x"}}},
        "edges": [],
        "settings": {"timeout": 90000},
    }
    job = build_job(definition).job
    assert job.tags["dagster/max_runtime"] == "90.0"


def test_branch_outputs_are_optional_per_handle() -> None:
    definition = flow(
        [
            node("in", "input", inputName="x"),
            node("sw", "switch", expression="{{x}}", cases=["high priority", "low"]),
            node("a", "transform", operation="passthrough"),
            node("b", "transform", operation="passthrough"),
        ],
        [("in", "sw"), ("sw", "a", "high priority"), ("sw", "b", "default")],
    )
    job = build_job(definition).job
    switch_def = job.graph.node_named("sw").definition
    assert set(switch_def.output_dict) == {"result", "high_priority", "default"}
    assert all(not out.is_required for out in switch_def.output_defs)


def test_compiling_is_pure_and_repeatable() -> None:
    definition = two_workflows()[0]
    first = build_job(definition)
    second = build_job(definition)
    assert first.aliases == second.aliases
    assert first.job.get_job_snapshot().snapshot_id == second.job.get_job_snapshot().snapshot_id
