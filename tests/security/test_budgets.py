"""Expressions and definitions have budgets (issue 15, rows 3 and 10).

* Row 3: the expression evaluator counts its steps and measures what it builds, so `reduce` +
  `concat` (a list doubling each step), `[acc, acc]` (a value whose JSON doubles), a huge pad
  or `s + s`, and a 100,000-deep nesting all stop with an ExpressionBudgetError, fast and in a
  few MB: in nodes (on the run's settings) and in the API process, where a queueConfig
  concurrencyKey is rendered at submission (a hostile one is a 422, quickly).
* Row 10: a workflow has at most FLOWMAESTRO_MAX_NODES nodes and _MAX_EDGES edges (a problem
  naming the limit); a chain of exactly that many compiles into a Dagster job without
  RecursionError (Dagster's GraphDefinition walks dependencies recursively); loops nest 16 deep
  at most; a wait node's literal duration is a number from 0 to a year.
"""

import math
import sys
import time
import tracemalloc
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from flowmaestro_api.main import create_app
from flowmaestro_api.settings import ApiSettings
from flowmaestro_dagster.compile.validation import MAX_LOOP_NESTING, validate
from flowmaestro_dagster.engines.jobs import build_job
from flowmaestro_dagster.errors import (
    ExpressionBudgetError,
    ExpressionError,
    InvalidWorkflowError,
    NodeConfigurationError,
)
from flowmaestro_dagster.lang.expressions import Budget, Limits, evaluate
from flowmaestro_dagster.lang.state import ExecutionState
from flowmaestro_dagster.lang.templates import render
from flowmaestro_dagster.nodes.base import NodeContext
from flowmaestro_dagster.nodes.logic import execute_conditional
from flowmaestro_dagster.settings import Settings, get_settings
from flowmaestro_dagster.spec.configs import ConditionalConfig
from tests.api.conftest import UNREACHABLE_DAGSTER, deployed_workflow, make_key, row_counts
from tests.builders import backend_flow, chain, node

MB = 1024 * 1024
STATE = ExecutionState.start(
    {"xs": list(range(24)), "many": list(range(40)), "long": list(range(300))}
)


@pytest.fixture
def peak_memory() -> Iterator[list[int]]:
    """The tracemalloc peak of the test body, in bytes (appended when it ends)."""
    peak: list[int] = []
    tracemalloc.start()
    try:
        yield peak
    finally:
        peak.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()


def over_budget(expression: str, **limits: int) -> ExpressionBudgetError:
    with pytest.raises(ExpressionBudgetError) as info:
        evaluate(expression, STATE, budget=Budget(Limits(**limits)) if limits else None)
    return info.value


# -- row 3: the evaluator --------------------------------------------------------------------


def test_a_list_doubling_with_reduce_and_concat_stops_fast_in_a_few_mb() -> None:
    # 24 doublings: 16M elements (128 MB of list slots, more for each copy) without a budget.
    tracemalloc.start()
    started = time.perf_counter()
    try:
        error = over_budget("xs.reduce((acc, x) => acc.concat(acc), [1])")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert "FLOWMAESTRO_EXPRESSION_MAX_SIZE" in str(error)
    assert time.perf_counter() - started < 5
    assert peak < 48 * MB, f"peak {peak / MB:.0f} MB"


def test_a_value_nested_in_itself_is_measured_as_its_json_weighs() -> None:
    # `[acc, acc]` shares its halves: cheap in memory, 2**40 leaves once printed or stored.
    error = over_budget("many.reduce((acc, x) => [acc, acc], 1)")
    assert "FLOWMAESTRO_EXPRESSION_MAX_SIZE" in str(error)
    over_budget("JSON.stringify(many.reduce((acc, x) => [acc, acc], 1))")


@pytest.mark.parametrize(
    "expression",
    [
        "'x'.padEnd(20000000)",  # refused before the padding exists
        "'x'.padStart(1e12, 'ab')",
        "many.reduce((s, x) => s + s, 'ab')",  # doubling text
        "many.reduce((s, x) => s.concat(s, s), 'ab')",
        "'a'.padEnd(2000000, 'a').replaceAll('a', 'bbbbbbbbbb')",  # 20M: refused as it grows
        "'ab'.padEnd(2000000).split('').join('--------')",
    ],
)
def test_a_huge_string_is_refused(expression: str) -> None:
    tracemalloc.start()
    try:
        error = over_budget(expression)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert "FLOWMAESTRO_EXPRESSION_MAX" in str(error)
    assert peak < 48 * MB, f"peak {peak / MB:.0f} MB"


@pytest.mark.parametrize(
    ("expression", "message"),
    [
        ("(" * 100_000 + "1" + ")" * 100_000, "longer than"),
        ("(" * 9_000 + "1" + ")" * 9_000, "nested more than"),
        ("[" * 9_000 + "]" * 9_000, "nested more than"),
        ("!" * 10_000 + "1", "nested more than"),
        ("typeof " * 2_000 + "1", "nested more than"),
        ("1" + " + 1" * 4_000, "nested more than"),  # a loop in the parser, a deep tree
        ("xs" + ".a" * 5_000, "nested more than"),
        ("long.reduce((acc, x) => [acc], 0)", "nested deeper than"),  # a value 300 deep
        # RecursionError in json's parser, or (once a compile raised the recursion limit) the
        # value's own depth check: either way a clear "nested" error.
        ("JSON.parse('" + "[" * 5_000 + "]" * 5_000 + "')", "nested"),
    ],
)
def test_deep_nesting_is_a_clear_error_not_a_recursion_error(expression: str, message: str) -> None:
    assert message in str(over_budget(expression))


def test_the_step_budget_counts_the_work_of_built_ins() -> None:
    assert evaluate("many.map(x => many.includes(x)).length", STATE) == 40
    # `includes` walks the list: a step per 10 elements, so 4,000 checks of 40 cost 16,000
    over_budget(
        "many.map(a => many.map(b => many.filter(c => many.includes(c)).length))",
        max_steps=10_000,
    )


def test_one_budget_spans_every_reference_of_a_template() -> None:
    big = STATE.with_output("fetch", 1, {"body": "x" * 4_000_000})
    assert len(render("{{body}}{{body}}", big)) == 8_000_000
    with pytest.raises(ExpressionBudgetError, match="FLOWMAESTRO_EXPRESSION_MAX_SIZE"):
        render("{{body}}{{body}}{{body}}", big)  # 12M characters of text: refused
    with pytest.raises(ExpressionBudgetError):
        render({"a": "{{ body + body }}", "b": "{{ body + body + body }}"}, big)
    # Each reference is cheap, together they are not: the budget is the template's.
    cheap = "{{ many.map(x => x * 2).length }}"
    render(cheap * 10, STATE, budget=Budget(Limits(max_steps=2_000)))
    with pytest.raises(ExpressionBudgetError, match="steps"):
        render(cheap * 100, STATE, budget=Budget(Limits(max_steps=2_000)))


def test_a_reference_over_budget_fails_instead_of_staying_verbatim() -> None:
    doubling = "{{ xs.reduce((acc, x) => acc.concat(acc), [1]) }}"
    with pytest.raises(ExpressionBudgetError):
        render(f"key-{doubling}", STATE)
    assert render("Hi {{nobody.name}}", STATE) == "Hi {{nobody.name}}"  # unresolved: as before


def test_the_settings_set_the_budget_of_nodes() -> None:
    assert Limits() == Limits.from_settings(Settings(_env_file=None))
    small = Settings(_env_file=None, expression_max_steps=1_000, expression_max_size=10_000)
    config = ConditionalConfig(mode="expression", expression="many.map(x => 'x'.padEnd(500))")
    ctx = NodeContext("c", "conditional", "C", config, STATE, services={"settings": small})
    with pytest.raises(NodeConfigurationError, match="FLOWMAESTRO_EXPRESSION_MAX_SIZE"):
        execute_conditional(ctx)
    with pytest.raises(ExpressionBudgetError):
        ctx.render("{{ 'x'.padEnd(20000) }}")
    roomy = NodeContext(
        "c", "conditional", "C", config, STATE, services={"settings": Settings(_env_file=None)}
    )
    assert execute_conditional(roomy).output["result"] is True


def test_expression_errors_stay_expression_errors() -> None:
    assert issubclass(ExpressionBudgetError, ExpressionError)  # permanent, never retried


# -- row 3: the API process --------------------------------------------------------------------


@pytest.fixture
def database_url(platform_db: str) -> str:
    return platform_db


@pytest.fixture
def client(database_url: str) -> Iterator[TestClient]:
    settings = ApiSettings(
        _env_file=None,
        database_url=database_url,
        dagster_graphql_url=UNREACHABLE_DAGSTER,
        graphql_timeout_seconds=1,
        launch_on_submit=False,
    )
    with TestClient(create_app(settings), raise_server_exceptions=False) as test_client:
        yield test_client


def queued(key: str) -> dict[str, Any]:
    return chain(
        node("in", "input", inputName="customer", required=True),
        node("q", "queueConfig", priority="high", concurrencyKey=key),
        node("out", "output", outputName="who", value="{{customer}}"),
        name="Per customer",
    )


def test_a_hostile_concurrency_key_is_a_quick_422_at_submission(
    client: TestClient, database_url: str
) -> None:
    auth = make_key(database_url, "ada@example.com")
    ones = ", ".join(["1"] * 40)  # 40 doublings: a trillion elements without a budget
    hostile = "{{ [" + ones + "].reduce((acc, x) => acc.concat(acc), [customer]) }}"
    workflow_id = deployed_workflow(client, auth, queued(hostile))
    before = row_counts(database_url)
    started = time.perf_counter()
    response = client.post(
        f"/workflows/{workflow_id}/executions", json={"inputs": {"customer": "acme"}}, headers=auth
    )
    assert time.perf_counter() - started < 5
    assert response.status_code == 422, response.text
    problems = [(p["code"], p["node_id"], p["field"]) for p in response.json()["problems"]]
    assert problems == [("expression_budget", "q", "concurrencyKey")]
    assert "FLOWMAESTRO_EXPRESSION_MAX_SIZE" in response.json()["detail"]
    assert row_counts(database_url)["executions"] == before["executions"]  # nothing started


def test_an_ordinary_concurrency_key_still_starts(client: TestClient, database_url: str) -> None:
    auth = make_key(database_url, "ada@example.com")
    workflow_id = deployed_workflow(client, auth, queued("customer-{{customer.toLowerCase()}}"))
    response = client.post(
        f"/workflows/{workflow_id}/executions", json={"inputs": {"customer": "Acme"}}, headers=auth
    )
    assert response.status_code == 201, response.text


# -- row 10: definitions -----------------------------------------------------------------------


def linear(count: int) -> dict[str, Any]:
    """A chain of `count` nodes: input, passthroughs, output."""
    middle = [node(f"t{i}", "transform", operation="passthrough") for i in range(count - 2)]
    return chain(
        node("in", "input", inputName="x"),
        *middle,
        node("out", "output", outputName="y", value="{{x}}"),
    )


def test_a_5000_node_chain_is_a_problem_naming_the_limit() -> None:
    limit = get_settings().max_nodes
    assert limit < 5_000
    with pytest.raises(InvalidWorkflowError) as info:
        build_job(linear(5_000))
    [problem] = info.value.problems
    assert problem.code == "too_many_nodes"
    assert f"at most {limit}" in problem.message and "FLOWMAESTRO_MAX_NODES" in problem.message


def _stack_depth() -> int:
    depth, frame = 0, sys._getframe()
    while frame.f_back is not None:
        depth, frame = depth + 1, frame.f_back
    return depth + 1


def test_a_chain_of_exactly_max_nodes_builds_a_job_without_recursion_error() -> None:
    limit = get_settings().max_nodes
    definition = linear(limit)
    # Dagster's GraphDefinition walks dependencies recursively from whichever op a set yields
    # first: how deep depends on luck. A tight limit makes any deep walk fail unless the
    # compiler makes room for it (it did not: a 5,000-node chain died in RecursionError).
    saved = sys.getrecursionlimit()
    sys.setrecursionlimit(_stack_depth() + 150)
    try:
        compiled = build_job(definition)
    finally:
        sys.setrecursionlimit(max(saved, sys.getrecursionlimit()))
    assert len(compiled.job.nodes_in_topological_order) == limit
    with pytest.raises(InvalidWorkflowError, match="FLOWMAESTRO_MAX_NODES"):
        build_job(linear(limit + 1))


def test_edges_are_limited_too() -> None:
    definition = backend_flow(
        [node("a", "input", inputName="x"), node("b", "output", outputName="y", value="{{x}}")],
        [("a", "b")] * 12,
    )
    problems = validate(definition, max_edges=10)
    assert [(p.code, p.path) for p in problems] == [("too_many_edges", "$.edges")]
    assert "at most 10" in problems[0].message
    assert not [p for p in validate(definition, max_edges=12) if p.severity == "error"]


def test_loops_nested_hundreds_deep_are_a_problem_not_a_recursion_error() -> None:
    # Each while loop's body holds the next: compiling nested bodies recursed per level.
    count = 300
    ids = [f"w{i}" for i in range(count)]
    nodes = [node("in", "input", inputName="x")]
    nodes += [node(i, "loop", loopType="while", condition="x < 3", maxIterations=2) for i in ids]
    with pytest.raises(InvalidWorkflowError) as info:
        build_job(backend_flow(nodes, list(zip(["in", *ids], ids, strict=False))))
    [problem] = [p for p in info.value.problems if p.severity == "error"]
    assert (problem.code, problem.node_id) == ("loops_nested_too_deeply", ids[MAX_LOOP_NESTING])
    build_job(
        backend_flow(
            nodes[: MAX_LOOP_NESTING + 1],
            list(zip(["in", *ids], ids[:MAX_LOOP_NESTING], strict=False)),
        )
    )


@pytest.mark.parametrize(
    ("duration", "unit", "why"),
    [
        (-5, "seconds", "must be 0 or more"),
        (math.nan, "ms", "NaN"),
        ("-1", "minutes", "must be 0 or more"),
        ("soon", "ms", "must be a number"),
        (1e300, "days", "longer than the 366 days"),
        (math.inf, "ms", "longer than the 366 days"),
        (400, "days", "longer than the 366 days"),
    ],
)
def test_a_wait_with_a_negative_nan_or_absurd_duration_is_a_problem(
    duration: Any, unit: str, why: str
) -> None:
    definition = chain(
        node("in", "input", inputName="x"),
        node("w", "wait", waitType="duration", duration=duration, durationUnit=unit),
        node("out", "output", outputName="y", value="{{x}}"),
    )
    errors = [p for p in validate(definition) if p.severity == "error"]
    assert [(p.code, p.node_id, p.field) for p in errors] == [("invalid_duration", "w", "duration")]
    assert why in errors[0].message


@pytest.mark.parametrize("duration", [0, 30, "45", "{{delay}}", "{{ x * 1000 }}"])
def test_a_sane_or_templated_wait_duration_passes(duration: Any) -> None:
    definition = chain(
        node("in", "input", inputName="x"),
        node("w", "wait", waitType="duration", duration=duration, durationUnit="days"),
        node("out", "output", outputName="y", value="{{x}}"),
    )
    assert not [p for p in validate(definition) if p.severity == "error"]


def test_a_templated_wait_duration_gets_the_literal_checks_when_it_runs() -> None:
    """`{{x}}` days passes validation; at run time 1e300 days is a clear node error (it used to
    overflow timedelta), and a sane value still waits."""
    from flowmaestro_dagster.engines.local import execute_workflow
    from flowmaestro_dagster.testing import resources_for

    definition = chain(
        node("in", "input", inputName="x"),
        node("w", "wait", waitType="duration", duration="{{x}}", durationUnit="days"),
        node("out", "output", outputName="y", value="{{x}}"),
    )
    compiled = build_job(definition, resource_defs=resources_for())
    result = execute_workflow(compiled, {"x": 1e300})
    assert result.status == "failed"
    assert "longer than the 366 days" in str(result.nodes["w"].error)
    assert execute_workflow(compiled, {"x": 0}).outputs == {"y": 0}
