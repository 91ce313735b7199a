"""Validation problems: code, node and field, never a traceback."""

import json

import pytest

from flowmaestro_dagster.compile.validation import validate
from flowmaestro_dagster.engines.jobs import build_job
from flowmaestro_dagster.errors import InvalidWorkflowError
from flowmaestro_dagster.spec.problems import Problem
from tests.builders import chain, flow, node


def codes(problems: list[Problem], severity: str = "error") -> set[str]:
    return {p.code for p in problems if p.severity == severity}


def only(problems: list[Problem], code: str) -> Problem:
    found = [p for p in problems if p.code == code]
    assert len(found) == 1, problems
    return found[0]


def test_malformed_json_points_at_line_and_column() -> None:
    problem = only(validate('{"name": "x", "nodes": [\n  {"id": 1,,}]}'), "malformed_json")
    assert problem.severity == "error" and problem.path == "$"
    assert "line 2" in problem.message


@pytest.mark.parametrize(
    ("document", "path"),
    [
        ("[1, 2]", "$"),
        ('{"name": "x", "nodes": "abc"}', "$.nodes"),
        ('{"name": "x", "nodes": [{"id": "a", "type": 5}]}', "$.nodes[0].type"),
        ('{"name": "x", "nodes": [{"id": "a", "type": "input", "data": []}]}', "$.nodes[0].data"),
        ('{"name": "x", "nodes": [{"type": "input"}]}', "$.nodes[0].id"),
        ('{"name": "x", "nodes": [], "edges": [{"source": "a"}]}', "$.edges[0].target"),
        (
            '{"definition": {"name": "x", "nodes": {"a": {"type": "input", "config": 3}}}}',
            "$.definition.nodes.a.config",
        ),
        ('{"name": "x", "nodes": [], "edges": {}}', "$.edges"),
    ],
)
def test_wrong_types_give_a_problem_at_the_json_path(document: str, path: str) -> None:
    problems = validate(document)
    assert any(p.path == path and p.severity == "error" for p in problems), problems


def test_empty_workflow() -> None:
    assert "empty_workflow" in codes(validate({"name": "x", "nodes": []}))


def test_duplicate_node_ids_in_both_shapes() -> None:
    react = flow([{"id": "a", "type": "input", "inputName": "x"}] * 2, [])
    problem = only(validate(react), "duplicate_node_id")
    assert problem.node_id == "a"
    backend = (
        '{"name": "x", "nodes": {"a": {"type": "input", "config": {}}, '
        '"a": {"type": "output", "config": {}}}}'
    )
    assert only(validate(backend), "duplicate_node_id").node_id == "a"


def test_edge_to_missing_node() -> None:
    problems = validate(
        flow(
            [
                node("a", "input", inputName="x"),
            ],
            [("a", "ghost")],
        )
    )
    problem = only(problems, "edge_missing_node")
    assert "ghost" in problem.message and problem.field == "target"


def test_cycle_reports_the_node_path() -> None:
    problems = validate(
        flow(
            [
                node("a", "input", inputName="x"),
                node("b", "transform", operation="passthrough"),
                node("c", "transform", operation="passthrough"),
            ],
            [("a", "b"), ("b", "c"), ("c", "b")],
        )
    )
    problem = only(problems, "cycle")
    assert "b → c → b" in problem.message


def test_unknown_node_type_names_the_node() -> None:
    problem = only(
        validate(
            flow(
                [
                    node("x1", "teleport"),
                ],
                [],
            )
        ),
        "unknown_node_type",
    )
    assert problem.node_id == "x1" and problem.field == "type" and "teleport" in problem.message


@pytest.mark.parametrize(
    ("node", "field"),
    [
        ({"id": "n", "type": "transform", "transformType": "template"}, "template"),
        ({"id": "n", "type": "transform", "operation": "map"}, "expression"),
        ({"id": "n", "type": "conditional"}, "condition"),
        ({"id": "n", "type": "switch", "cases": ["a"]}, "expression"),
        ({"id": "n", "type": "loop", "loopType": "forEach"}, "items"),
        ({"id": "n", "type": "loop", "loopType": "while"}, "condition"),
        ({"id": "n", "type": "shared-memory", "operation": "store"}, "key"),
    ],
)
def test_missing_required_config(node: dict, field: str) -> None:
    problem = only(validate(flow([node], [])), "missing_config")
    assert problem.node_id == "n" and problem.field == field


def test_invalid_config_value_names_the_original_field() -> None:
    problems = validate(
        flow(
            [
                node("l", "loop", collection="{{x}}", maxIterations="lots"),
            ],
            [],
        )
    )
    problem = only(problems, "invalid_config")
    assert problem.node_id == "l" and problem.field == "maxIterations"


def test_unknown_operator_is_an_error() -> None:
    problems = validate(
        flow(
            [
                node("c", "conditional", leftValue=1, operator="~~", rightValue=2),
            ],
            [],
        )
    )
    assert only(problems, "invalid_config").field == "operator"


def test_unparsable_condition_is_an_error_naming_the_field() -> None:
    problem = only(
        validate(
            flow(
                [
                    node("c", "conditional", condition="a >= (1"),
                ],
                [],
            )
        ),
        "invalid_expression",
    )
    assert problem.node_id == "c" and problem.field == "condition"


@pytest.mark.parametrize(
    ("retry", "field"),
    [
        ({"maxAttempts": 0}, "retry.maxAttempts"),
        ({"backoffStrategy": "sideways"}, "retry.backoffStrategy"),
        ({"minDelayMs": 5000, "maxDelayMs": 10}, "retry"),
        ({"maxAttempts": 3, "bogus": 1}, "retry.bogus"),
        ("three times", "retry"),
    ],
)
def test_bad_retry_settings_name_node_and_field(retry: object, field: str) -> None:
    problems = validate(
        flow(
            [
                node("h", "http", url="https://x", retry=retry),
            ],
            [],
        )
    )
    problem = only(problems, "invalid_retry")
    assert problem.node_id == "h" and problem.field == field


def test_branch_handle_matching_no_case_is_a_warning() -> None:
    problems = validate(
        flow(
            [
                node("s", "switch", expression="{{x}}", cases=["a", "b"]),
                node("t", "transform", operation="passthrough"),
            ],
            [("s", "t", "zzz")],
        )
    )
    assert codes(problems) == set()
    problem = only(problems, "unknown_branch_handle")
    assert problem.severity == "warning" and problem.node_id == "s"


def test_reference_nothing_provides_is_a_warning() -> None:
    problems = validate(
        chain(
            node("i", "input", inputName="topic"),
            node("t", "transform", transformType="template", template="{{topic}} {{nowhere.x}}"),
            react=True,
        )
    )
    problem = only(problems, "unresolved_reference")
    assert problem.severity == "warning" and problem.node_id == "t" and "nowhere" in problem.message
    assert problem.field == "template"


def test_reference_to_a_node_that_runs_later_is_a_warning() -> None:
    problems = validate(
        chain(
            node("a", "input", inputName="x"),
            node("b", "transform", transformType="template", template="{{c.result}}"),
            node("c", "transform", transformType="template", template="x"),
            react=True,
        )
    )
    assert only(problems, "reference_not_upstream").node_id == "b"


def test_a_definition_with_errors_never_becomes_a_job() -> None:
    with pytest.raises(InvalidWorkflowError) as info:
        build_job(
            flow(
                [
                    node("x", "teleport"),
                ],
                [],
            )
        )
    assert [p.code for p in info.value.problems if p.severity == "error"] == ["unknown_node_type"]


@pytest.mark.parametrize(
    "document",
    [
        "",
        "null",
        "{}",
        '{"nodes": null}',
        '{"nodes": [null]}',
        '{"nodes": [{"id": "a", "type": "input", "data": {"label": 5}}]}',
        "[" * 5000,
        '{"nodes": {"": {"type": "input"}}}',
        '{"nodes": [], "edges": [5]}',
        '{"x": NaN}',
        json.dumps({"nodes": {"a": {"type": "loop", "config": {"maxIterations": -1}}}}),
    ],
)
def test_hostile_documents_give_problems_not_exceptions(document: str) -> None:
    problems = validate(document)
    assert isinstance(problems, list)
    assert any(p.severity == "error" for p in problems) or document.startswith(
        '{"nodes": [{"id": "a"'
    )
