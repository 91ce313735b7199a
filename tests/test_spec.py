"""Reading definitions: both shapes, the corpus wrapper, dialects into canonical configs."""

import json

import pytest

from flowmaestro_dagster.spec.configs import (
    ConditionalConfig,
    HumanReviewConfig,
    InputConfig,
    IntegrationConfig,
    LoopConfig,
    RouterConfig,
    SharedMemoryConfig,
    SwitchConfig,
    TransformConfig,
    WaitConfig,
    normalise_config,
)
from flowmaestro_dagster.spec.parse import parse_workflow
from tests.builders import flow, node


def test_react_flow_shape_becomes_spec_with_labels_and_original_config() -> None:
    definition = flow(
        [
            {"id": "input-1", "type": "input", "label": "Topic", "inputName": "topic"},
            {
                "id": "llm-1",
                "type": "llm",
                "label": "Summarize",
                "provider": "openai",
                "model": "gpt-4o",
                "prompt": "{{topic}}",
                "outputVariable": "summary",
                "x-custom": 1,
            },
        ],
        [("input-1", "llm-1")],
    )
    spec, problems = parse_workflow(definition)
    assert problems == []
    assert spec is not None and spec.shape == "react-flow"
    llm = spec.nodes["llm-1"]
    assert llm.label == "Summarize"
    assert llm.original_config["x-custom"] == 1  # unknown keys are kept
    assert "label" not in llm.original_config
    assert llm.config.model_dump()["prompt"] == "{{topic}}"
    assert llm.config.extras() == {"x-custom": 1}


def test_backend_shape_with_entry_point_settings_and_on_error() -> None:
    definition = {
        "name": "b",
        "nodes": {
            "input": {"type": "input", "name": "In", "config": {"inputName": "q"}},
            "fetch": {
                "type": "http",
                "name": "Fetch",
                "config": {"url": "https://x"},
                "onError": {"strategy": "continue"},
            },
        },
        "edges": [{"id": "e", "source": "input", "target": "fetch"}],
        "entryPoint": "input",
        "settings": {"timeout": 300000, "maxConcurrentNodes": 4},
    }
    spec, problems = parse_workflow(definition)
    assert problems == []
    assert spec is not None and spec.shape == "backend"
    assert spec.entry_point == "input"
    assert spec.settings.timeout_ms == 300000 and spec.settings.max_concurrent_nodes == 4
    assert spec.nodes["fetch"].on_error is not None
    assert spec.nodes["fetch"].on_error.strategy == "continue"


def test_corpus_wrapper_is_unwrapped_and_metadata_kept() -> None:
    wrapped = {
        "name": "Outer",
        "category": "sales",
        "definition": flow(
            [
                node("a", "input", inputName="x"),
            ],
            [],
            name="Inner",
        ),
    }
    spec, problems = parse_workflow(json.dumps(wrapped))
    assert problems == [] and spec is not None
    assert spec.name == "Inner"
    assert spec.metadata["category"] == "sales"


def test_comment_nodes_and_their_edges_are_dropped() -> None:
    definition = flow(
        [
            node("a", "input", inputName="x"),
            node("note", "comment", text="hi"),
        ],
        [("note", "a")],
    )
    spec, problems = parse_workflow(definition)
    assert problems == [] and spec is not None
    assert list(spec.nodes) == ["a"] and spec.edges == []


def test_provider_id_types_become_integration_nodes() -> None:
    definition = flow(
        [
            node("s", "slack", action="sendMessage", channel="#x"),
        ],
        [],
    )
    spec, _ = parse_workflow(definition)
    assert spec is not None
    slack = spec.nodes["s"]
    assert slack.type == "integration" and slack.source_type == "slack"
    assert isinstance(slack.config, IntegrationConfig)
    assert slack.config.provider == "slack" and slack.config.operation == "sendMessage"
    assert slack.config.parameters == {"channel": "#x"}


@pytest.mark.parametrize(
    ("node_type", "raw", "expected"),
    [
        (
            "input",
            {"variableName": "q", "defaultValue": 3},
            {"name": "q", "default_value": 3, "has_default": True},
        ),
        ("input", {"inputVariable": "doc"}, {"name": "doc"}),
        (
            "conditional",
            {"condition": "{{a}} == 1"},
            {"mode": "expression", "expression": "{{a}} == 1"},
        ),
        (
            "conditional",
            {"conditionType": "expression", "expression": "a > 1"},
            {"mode": "expression"},
        ),
        (
            "conditional",
            {"leftValue": "{{a}}", "operator": "gte", "rightValue": "0.8"},
            {"mode": "comparison", "operator": ">="},
        ),
        (
            "switch",
            {"switchVariable": "{{p}}", "cases": ["a", {"value": 2}], "defaultCase": "a"},
            {"expression": "{{p}}", "default_case": "a"},
        ),
        (
            "loop",
            {"collection": "{{xs}}", "itemVariable": "x"},
            {"items": "{{xs}}", "loop_type": "forEach", "item_variable": "x"},
        ),
        ("loop", {"arrayPath": "${fetch.body.items}"}, {"items": "${fetch.body.items}"}),
        ("loop", {"times": 3}, {"loop_type": "count", "count": 3}),
        (
            "wait",
            {"duration": 300000},
            {"wait_type": "duration", "duration": 300000, "duration_unit": "ms"},
        ),
        ("wait", {"waitType": "duration", "duration": 3600}, {"duration_unit": "seconds"}),
        (
            "wait",
            {"durationValue": 2, "durationUnit": "hours"},
            {"duration": 2, "duration_unit": "hours"},
        ),
        (
            "wait",
            {"duration": "{{t}}", "durationUnit": "timestamp"},
            {"wait_type": "until", "timestamp": "{{t}}"},
        ),
        ("wait", {"triggerType": "webhook", "event": "signed"}, {"wait_type": "webhook"}),
        (
            "humanReview",
            {"reviewPrompt": "ok?", "outputVariable": "approval"},
            {"prompt": "ok?", "variable_name": "approval"},
        ),
        ("transform", {"transformType": "template", "template": "x"}, {"operation": "template"}),
        ("shared-memory", {"operation": "set", "key": "k", "value": 1}, {"operation": "store"}),
        (
            "router",
            {"routerType": "llm", "routes": ["a", "b"], "defaultRoute": "a"},
            {"default_route": "a"},
        ),
    ],
)
def test_dialects_normalise_to_one_canonical_config(
    node_type: str, raw: dict, expected: dict
) -> None:
    config, problems = normalise_config(node_type, raw, node_id="n")
    assert problems == []
    dumped = config.model_dump()
    for key, value in expected.items():
        assert dumped[key] == value, key


def test_canonical_models_by_type() -> None:
    cases = {
        "input": InputConfig,
        "conditional": ConditionalConfig,
        "switch": SwitchConfig,
        "loop": LoopConfig,
        "wait": WaitConfig,
        "humanReview": HumanReviewConfig,
        "transform": TransformConfig,
        "shared-memory": SharedMemoryConfig,
        "router": RouterConfig,
    }
    for node_type, model in cases.items():
        config, _ = normalise_config(node_type, {}, node_id="n")
        assert isinstance(config, model)


def test_router_routes_as_strings_or_objects() -> None:
    config, _ = normalise_config(
        "router", {"routes": ["hot", {"value": "cold", "label": "Cold"}]}, node_id="r"
    )
    assert isinstance(config, RouterConfig)
    assert [r.value for r in config.routes] == ["hot", "cold"]
