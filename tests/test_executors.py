"""Executors as plain functions, and the adapter through Dagster's op context."""

from typing import Any

import dagster as dg
import pytest

from flowmaestro_dagster.adapter.ops import OpShape, node_op
from flowmaestro_dagster.adapter.resources import FlowMaestroResource
from flowmaestro_dagster.errors import ConnectorNotConfiguredError, NodeConfigurationError
from flowmaestro_dagster.lang.state import ExecutionState
from flowmaestro_dagster.nodes import NodeContext, get_executor
from flowmaestro_dagster.runtime.plan import NodePlan, config_model
from flowmaestro_dagster.spec.configs import normalise_config


def execute(
    node_type: str, raw: dict[str, Any], state: ExecutionState, upstream: tuple[str, ...] = ()
) -> Any:
    config, problems = normalise_config(node_type, raw, node_id="n")
    assert problems == []
    ctx = NodeContext(
        node_id="n", node_type=node_type, label="n", config=config, state=state, upstream=upstream
    )
    return get_executor(node_type)(ctx)


STATE = ExecutionState.start(
    {"items": [{"n": 3, "ok": True}, {"n": 1, "ok": False}, {"n": 2, "ok": True}]}
)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (
            {"operation": "filter", "inputData": "{{items}}", "expression": "item => item.ok"},
            [{"n": 3, "ok": True}, {"n": 2, "ok": True}],
        ),
        (
            {"operation": "map", "inputData": "{{items}}", "expression": "i => i.n * 10"},
            [30, 10, 20],
        ),
        (
            {"operation": "map", "inputData": "{{items}}", "expression": "n + 1"},
            [4, 2, 3],
        ),  # JSONata
        (
            {
                "operation": "reduce",
                "inputData": "{{items}}",
                "expression": "(acc, i) => ({ total: (acc.total || 0) + i.n })",
            },
            {"total": 6},
        ),
        (
            {"operation": "sort", "inputData": "{{items}}", "expression": "(a, b) => a.n - b.n"},
            [{"n": 1, "ok": False}, {"n": 2, "ok": True}, {"n": 3, "ok": True}],
        ),
        (
            {"operation": "sort", "inputData": "{{items}}", "path": "n"},
            [{"n": 1, "ok": False}, {"n": 2, "ok": True}, {"n": 3, "ok": True}],
        ),
        ({"operation": "custom", "inputData": "{{items}}", "expression": "$sum(n)"}, 6),
        (
            {"operation": "custom", "inputData": "{{items}}", "expression": "{ count: $.length }"},
            {"count": 3},
        ),
        ({"operation": "extract", "inputData": "{{items}}", "path": "[1].n"}, 1),
        (
            {
                "operation": "aggregate",
                "inputData": "{{items}}",
                "operations": ["count", "sum", "max"],
                "field": "n",
            },
            {"count": 3, "sum": 6.0, "max": 3.0},
        ),
        ({"operation": "flatten", "inputData": [[1, 2], [3], 4]}, [1, 2, 3, 4]),
        ({"operation": "parseJSON", "inputData": '{"a": [1]}'}, {"a": [1]}),
        (
            {"operation": "parseXML", "inputData": "<r><i a='1'>x</i><i>y</i></r>"},
            {"r": {"i": [{"@a": "1", "#text": "x"}, "y"]}},
        ),
        (
            {"transformType": "merge", "sources": ["{{items[0]}}", {"extra": 1}]},
            {"n": 3, "ok": True, "extra": 1},
        ),
        ({"transformType": "template", "template": '{"count": {{items.length}}}'}, {"count": 3}),
    ],
)
def test_transform_operations(raw: dict[str, Any], expected: Any) -> None:
    result = execute("transform", {**raw, "outputVariable": "out"}, STATE)
    assert result.output == {"out": expected}


def test_hostile_transform_code_fails_cleanly() -> None:
    with pytest.raises(NodeConfigurationError, match="JavaScript"):
        execute(
            "transform",
            {
                "operation": "map",
                "inputData": "{{items}}",
                "expression": "i => { while (true) {} }",
            },
            STATE,
        )
    with pytest.raises(NodeConfigurationError, match="parseXML"):
        billion_laughs = (
            '<?xml version="1.0"?><!DOCTYPE l [<!ENTITY a "aaaa"><!ENTITY b "&a;&a;">]><l>&b;</l>'
        )
        execute("transform", {"operation": "parseXML", "inputData": billion_laughs}, STATE)


def test_switch_and_conditional_choose_branches() -> None:
    result = execute("switch", {"expression": "{{items[0].n}}", "cases": ["1", "3"]}, STATE)
    assert result.branches == frozenset({"case-1"})
    result = execute(
        "conditional", {"leftValue": "{{items.length}}", "operator": "gt", "rightValue": "2"}, STATE
    )
    assert result.branches == frozenset({"true"})


def test_node_types_without_executor_fail_naming_the_connector() -> None:
    with pytest.raises(ConnectorNotConfiguredError, match="no connection for provider hubspot"):
        execute("integration", {"provider": "hubspot", "operation": "createContact"}, STATE)
    with pytest.raises(ConnectorNotConfiguredError, match="no web search provider is configured"):
        execute("webSearch", {"query": "x"}, STATE)


def test_adapter_op_runs_a_node_in_an_op_context() -> None:
    config, _ = normalise_config(
        "transform",
        {"transformType": "template", "template": "hi {{who}}", "outputVariable": "greeting"},
        node_id="t",
    )
    plan = NodePlan(
        node_id="t", type="transform", label="T", rank=1, config=config.model_dump(mode="json")
    )
    op_def = node_op(OpShape("transform"))
    assert op_def is node_op(OpShape("transform"))  # memoised: one definition per shape
    context = dg.build_op_context(
        op_config=plan.model_dump(mode="json"),
        resources={"workflow_inputs": {"who": "Ada"}, "flowmaestro": FlowMaestroResource()},
    )
    outputs = list(op_def.compute_fn(context, {"upstream": []}))  # type: ignore[operator]
    state = outputs[0].value
    assert isinstance(state, ExecutionState)
    assert state.outputs["t"] == {"greeting": "hi Ada"}
    assert config_model("transform") is type(config)
