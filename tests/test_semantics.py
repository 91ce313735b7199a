"""Run semantics through compiled jobs: which nodes ran, which were skipped, and the outputs."""

from collections.abc import Callable
from typing import Any

import pytest

from flowmaestro_dagster.engines.results import WorkflowRunResult
from tests.builders import chain, flow, node

Run = Callable[..., WorkflowRunResult]


def template(node_id: str, text: str, variable: str | None = None) -> dict[str, Any]:
    node = {"id": node_id, "type": "transform", "transformType": "template", "template": text}
    if variable:
        node["outputVariable"] = variable
    return node


def branching(condition_node: dict[str, Any]) -> dict[str, Any]:
    return flow(
        [
            {"id": "in", "type": "input", "inputName": "score", "inputType": "number"},
            condition_node,
            template("yes", "passed with {{score}}", "verdict"),
            template("no", "failed with {{score}}", "verdict"),
            {"id": "out", "type": "output", "outputName": "verdict", "value": "{{verdict}}"},
        ],
        [
            ("in", "cond"),
            ("cond", "yes", "true"),
            ("cond", "no", "false"),
            ("yes", "out"),
            ("no", "out"),
        ],
    )


CONDITIONAL_FORMS = {
    "comparison": {
        "id": "cond",
        "type": "conditional",
        "leftValue": "{{score}}",
        "operator": "gte",
        "rightValue": "60",
    },
    "condition-string": {"id": "cond", "type": "conditional", "condition": "{{score}} >= 60"},
    "expression": {
        "id": "cond",
        "type": "conditional",
        "conditionType": "expression",
        "expression": "in.score >= 60 && score < 1000",
    },
}


@pytest.mark.parametrize("form", sorted(CONDITIONAL_FORMS))
@pytest.mark.parametrize(("score", "taken", "pruned"), [(75, "yes", "no"), (40, "no", "yes")])
def test_conditional_takes_one_branch_and_skips_the_other(
    run: Run, form: str, score: int, taken: str, pruned: str
) -> None:
    result = run(branching(CONDITIONAL_FORMS[form]), {"score": score})
    assert result.status == "succeeded"
    assert result.nodes[taken].status == "succeeded"
    assert result.nodes[pruned].status == "skipped"
    assert result.nodes["out"].status == "succeeded"  # OR-join: runs after the branch that ran
    word = "passed" if taken == "yes" else "failed"
    assert result.outputs == {"verdict": f"{word} with {score}"}
    assert result.output("cond")["result"] is (taken == "yes")


def switch_flow(
    cases: list[Any], handles: list[str], default_case: str | None = None
) -> dict[str, Any]:
    nodes: list[dict[str, Any]] = [
        {"id": "in", "type": "input", "inputName": "code"},
        {
            "id": "sw",
            "type": "switch",
            "expression": "{{code}}",
            "cases": cases,
            **({"defaultCase": default_case} if default_case else {}),
        },
    ]
    edges: list[tuple[Any, ...]] = [("in", "sw")]
    for index, handle in enumerate(handles):
        nodes.append(template(f"b{index}", f"branch {handle}", "picked"))
        edges.append(("sw", f"b{index}", handle))
        edges.append((f"b{index}", "out"))
    nodes.append({"id": "out", "type": "output", "outputName": "picked", "value": "{{picked}}"})
    return flow(nodes, edges)


@pytest.mark.parametrize(
    ("code", "picked"),
    [
        ("ERR-42", "b0"),
        ("WARN-abc", "b1"),
        ("warn-xyz", "b1"),
        ("INFO", "b2"),
        ("3", "b3"),
        ("zzz", "b4"),
    ],
)
def test_switch_matches_wildcards_numbers_case_insensitively_and_defaults(
    run: Run, code: str, picked: str
) -> None:
    cases = [{"value": "ERR-*"}, {"value": "WARN-???"}, "info", 3]
    definition = switch_flow(cases, ["ERR-*", "case-1", "INFO", "case-3", "default"])
    result = run(definition, {"code": code})
    ran = {n for n in ("b0", "b1", "b2", "b3", "b4") if result.nodes[n].status == "succeeded"}
    assert ran == {picked}
    assert result.outputs["picked"].startswith("branch")


def test_switch_default_case_value_selects_that_case(run: Run) -> None:
    definition = switch_flow(
        ["low", "medium", "high"], ["low", "medium", "high"], default_case="medium"
    )
    result = run(definition, {"code": "unheard-of"})
    assert {n for n in ("b0", "b1", "b2") if result.nodes[n].status == "succeeded"} == {"b1"}


def test_or_join_after_a_branch_runs_with_the_branch_that_ran(run: Run) -> None:
    definition = flow(
        [
            {"id": "in", "type": "input", "inputName": "x"},
            {"id": "c", "type": "conditional", "condition": "x > 1"},
            template("a", "A", "a_out"),
            template("b", "B", "b_out"),
            template("side", "S", "side_out"),
            {"id": "join", "type": "transform", "operation": "merge"},
            {"id": "out", "type": "output", "outputName": "joined", "value": "{{join}}"},
        ],
        [
            ("in", "c"),
            ("c", "a", "true"),
            ("c", "b", "false"),
            ("in", "side"),
            ("a", "join"),
            ("b", "join"),
            ("side", "join"),
            ("join", "out"),
        ],
    )
    result = run(definition, {"x": 5})
    assert result.nodes["b"].status == "skipped"
    assert result.nodes["join"].status == "succeeded"
    assert result.outputs["joined"] == {"a_out": "A", "side_out": "S"}


def test_join_with_every_input_skipped_is_skipped(run: Run) -> None:
    definition = flow(
        [
            {"id": "in", "type": "input", "inputName": "x"},
            {"id": "c", "type": "conditional", "condition": "x > 1"},
            template("a", "A"),
            template("b", "B"),
            template("join", "J"),
            template("after", "after join"),
        ],
        [
            ("in", "c"),
            ("c", "a", "true"),
            ("c", "b", "true"),
            ("a", "join"),
            ("b", "join"),
            ("join", "after"),
        ],
    )
    result = run(definition, {"x": 0})
    assert {n: result.nodes[n].status for n in ("a", "b", "join", "after")} == dict.fromkeys(
        ("a", "b", "join", "after"), "skipped"
    )


def test_failure_cascades_downstream_while_other_branches_finish(run: Run) -> None:
    definition = flow(
        [
            {"id": "in", "type": "input", "inputName": "raw"},
            {"id": "parse", "type": "transform", "operation": "parseJSON", "inputData": "{{raw}}"},
            template("after-parse", "got {{parse.result}}"),
            template("last", "{{after-parse.result}}"),
            template("healthy", "independent branch", "ok"),
        ],
        [("in", "parse"), ("parse", "after-parse"), ("after-parse", "last"), ("in", "healthy")],
    )
    result = run(definition, {"raw": "{not json"})
    assert result.status == "failed"
    assert result.nodes["parse"].status == "failed"
    assert "parseJSON" in (result.nodes["parse"].error or "")
    assert result.nodes["after-parse"].status == "not_run"
    assert result.nodes["last"].status == "not_run"
    assert result.nodes["healthy"].status == "succeeded"


def test_node_without_executor_fails_with_a_clear_error(run: Run) -> None:
    definition = chain(
        node("in", "input", inputName="x"),
        node("ask", "webSearch", query="{{x}}"),
        react=True,
    )
    result = run(definition, {"x": "q"})
    assert result.status == "failed"
    error = result.nodes["ask"].error or ""
    assert "ask" in error and "webSearch" in error


def loop_flow() -> dict[str, Any]:
    return flow(
        [
            {"id": "in", "type": "input", "inputName": "orders", "inputType": "json"},
            {
                "id": "loop",
                "type": "loop",
                "collection": "{{orders}}",
                "itemVariable": "order",
                "indexVariable": "i",
                "outputVariable": "results",
            },
            {"id": "big", "type": "conditional", "condition": "order.amount > 100"},
            template("manual", "manual {{order.id}} #{{i}}", "decision"),
            template("auto", "auto {{order.id}} #{{i}}", "decision"),
            {
                "id": "log",
                "type": "shared-memory",
                "operation": "append",
                "key": "seen",
                "value": "{{order.id}}",
            },
            {"id": "out", "type": "output", "outputName": "decisions", "value": "{{results}}"},
            {"id": "count", "type": "output", "outputName": "count", "value": "{{loop.count}}"},
        ],
        [
            ("in", "loop"),
            ("loop", "big"),
            ("big", "manual", "true"),
            ("big", "auto", "false"),
            ("manual", "log"),
            ("auto", "log"),
            ("log", "out"),
            ("log", "count"),
        ],
    )


def test_loop_runs_the_body_per_item_and_collects_results(run: Run) -> None:
    orders = [{"id": "a", "amount": 50}, {"id": "b", "amount": 500}, {"id": "c", "amount": 5}]
    result = run(loop_flow(), {"orders": orders})
    assert result.status == "succeeded"
    assert result.nodes["big"].iterations == 3
    assert result.nodes["manual"].output == [None, {"decision": "manual b #1"}, None]
    assert result.nodes["auto"].output == [
        {"decision": "auto a #0"},
        None,
        {"decision": "auto c #2"},
    ]
    decisions = [r["value"] for r in result.outputs["decisions"]]
    assert decisions == ["a", "b", "c"]
    assert result.outputs["count"] == 3
    final_state_memory = result.nodes["log"].output
    assert [entry["value"] for entry in final_state_memory] == ["a", "b", "c"]


def test_loop_over_an_empty_list_runs_zero_iterations_and_exits_get_empty_lists(run: Run) -> None:
    result = run(loop_flow(), {"orders": []})
    assert result.status == "succeeded"
    assert result.nodes["big"].status == "not_run"
    assert result.outputs == {"decisions": [], "count": 0}


def test_loop_with_body_handles_and_an_exit_after_the_loop(run: Run) -> None:
    definition = flow(
        [
            node("in", "input", inputName="xs", inputType="json"),
            node("loop", "loop", items="{{xs}}", itemVariable="x", outputVariable="doubled"),
            node("double", "transform", operation="custom", inputData="{{x}}", expression="$ * 2", outputVariable="value"),
            node("total", "transform", operation="custom", inputData="{{doubled}}", expression="$sum($.value)", outputVariable="sum"),
            node("out", "output", outputName="sum", value="{{sum}}"),
        ],
        [("in", "loop"), ("loop", "double", "body"), ("loop", "total", "done"), ("total", "out")],
    )  # fmt: skip
    result = run(definition, {"xs": [1, 2, 3]})
    assert result.nodes["total"].iterations is None  # ran once, after the loop
    assert result.outputs == {"sum": 12}


def test_nested_loop_runs_inline_per_outer_item(run: Run) -> None:
    definition = flow(
        [
            {"id": "in", "type": "input", "inputName": "rows", "inputType": "json"},
            {"id": "outer", "type": "loop", "items": "{{rows}}", "itemVariable": "row"},
            {"id": "inner", "type": "loop", "items": "{{row}}", "itemVariable": "cell"},
            template("cell-text", "{{cell}}!", "shout"),
            {"id": "out", "type": "output", "outputName": "grid", "value": "{{outer.results}}"},
        ],
        [("in", "outer"), ("outer", "inner"), ("inner", "cell-text"), ("cell-text", "out")],
    )
    result = run(definition, {"rows": [["a", "b"], ["c"]]})
    assert result.status == "succeeded"
    assert result.nodes["inner"].iterations == 2
    grid = result.outputs["grid"]
    assert [[cell["shout"] for cell in row["results"]] for row in grid] == [["a!", "b!"], ["c!"]]


def test_while_loop_iterates_until_its_condition_fails(run: Run) -> None:
    definition = flow(
        [
            node("in", "input", inputName="limit", inputType="number"),
            node("loop", "loop", loopType="while", condition="(step.n || 0) < limit", maxIterations=10),
            node("step", "transform", operation="custom", inputData="{{index}}", expression="{ 'n': $ + 1 }"),
            node("out", "output", outputName="count", value="{{loop.count}}"),
        ],
        [("in", "loop"), ("loop", "step", "body"), ("loop", "out", "done")],
    )  # fmt: skip
    result = run(definition, {"limit": 4})
    assert result.status == "succeeded"
    assert result.outputs == {"count": 4}


def test_interpolation_of_nested_paths_arrays_and_objects(run: Run) -> None:
    definition = flow(
        [
            {"id": "in", "type": "input", "inputName": "user", "inputType": "json"},
            template(
                "text",
                "{{user.name}} likes {{user.tags[1]}}; all: {{user.tags}}; meta: {{user.meta}}",
                "line",
            ),
            {
                "id": "copy",
                "type": "transform",
                "operation": "passthrough",
                "inputData": {
                    "first": "{{user.tags[0]}}",
                    "meta": "{{user.meta}}",
                    "same": "{{user['name']}}",
                },
                "outputVariable": "copy",
            },
            {
                "id": "out",
                "type": "output",
                "outputName": "result",
                "value": {"line": "{{line}}", "copy": "{{copy}}"},
            },
        ],
        [("in", "text"), ("in", "copy"), ("text", "out"), ("copy", "out")],
    )
    user = {"name": "Ada", "tags": ["math", "engines"], "meta": {"born": 1815}}
    result = run(definition, {"user": user})
    assert result.outputs["result"]["line"] == (
        'Ada likes engines; all: ["math", "engines"]; meta: {"born": 1815}'
    )
    assert result.outputs["result"]["copy"] == {
        "first": "math",
        "meta": {"born": 1815},
        "same": "Ada",
    }


def test_final_outputs_merge_output_nodes_else_sinks(run: Run) -> None:
    no_outputs = flow(
        [{"id": "in", "type": "input", "inputName": "x"}, template("t", "{{x}}!", "shout")],
        [("in", "t")],
    )
    assert run(no_outputs, {"x": "hi"}).outputs == {"shout": "hi!"}


def test_missing_optional_input_uses_default_value(run: Run) -> None:
    definition = chain(
        node("in", "input", inputName="who", defaultValue="world"),
        node("out", "output", outputName="greeting", value="hello {{who}}"),
        react=True,
    )
    assert run(definition).outputs == {"greeting": "hello world"}
    assert run(definition, {"who": "Ada"}).outputs == {"greeting": "hello Ada"}


def test_shared_memory_reads_writes_made_upstream(run: Run) -> None:
    definition = chain(
        node("in", "input", inputName="v"),
        node("put", "shared-memory", operation="set", key="k-{{v}}", value="{{v}}"),
        node("get", "shared-memory", operation="get", key="k-{{v}}", outputVariable="got"),
        node("find", "shared-memory", operation="search", searchQuery="{{v}}"),
        node("out", "output", outputName="got", value="{{got}}"),
        react=True,
    )
    result = run(definition, {"v": "blue"})
    assert result.outputs == {"got": "blue"}
    assert result.output("find")["results"][0]["key"] == "k-blue"
