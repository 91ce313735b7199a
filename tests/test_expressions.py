"""The safe evaluator: JavaScript-like semantics, and no way out of the sandbox."""

from typing import Any

import pytest

from flowmaestro_dagster.errors import ExpressionError
from flowmaestro_dagster.lang.expressions import Unresolved, evaluate, free_names, parse
from flowmaestro_dagster.lang.state import ExecutionState

STATE = (
    ExecutionState.start({"topic": "AI", "n": 3, "flag": "true"})
    .with_output("llm-1", 1, {"review": {"text": 'x "success": true y', "score": 7}})
    .with_output("http", 2, {"apiResponse": {"status": 204, "items": [1, 2, 3]}})
)


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ("review.score >= 7 && topic == 'AI'", True),
        ("{{review.score}} < 7", False),
        ("review.text.includes('\"success\": true')", True),
        ("!review.text.includes('nope')", True),
        ("apiResponse.status >= 200 && apiResponse.status < 300", True),
        ("apiResponse.items.length > 2", True),
        ("apiResponse.items[0] === 1", True),
        ("llm-1.review.score", 7),
        ("n - 1", 2),
        ("n * 2 + 1", 7),
        ("'a' + n", "a3"),
        ("flag == true", False),  # JS: "true" == true is false
        ("n == '3'", True),
        ("n === '3'", False),
        ("review.score > 5 ? 'high' : 'low'", "high"),
        ("missing || 'fallback'", "fallback"),
        ("Object.keys(apiResponse).length", 2),
        ("apiResponse.items.reduce((sum, d) => sum + d, 0)", 6),
        ("apiResponse.items.map(x => x * 2).filter(x => x > 2)", [4, 6]),
        ("[] ? 1 : 2", 1),  # JS truthiness: empty arrays are true
        ("typeof nowhere === 'undefined'", True),
        ("Math.max(1, n, 2)", 3),
        ("{a: 1, 'b': n}", {"a": 1, "b": 3}),
        ("topic.toLowerCase().startsWith('a')", True),
        ("apiResponse?.nothing?.deeper", None),
    ],
)
def test_evaluates_like_javascript(expression: str, expected: Any) -> None:
    assert evaluate(expression, STATE, lenient=True) == expected


def test_unknown_names_raise_unless_lenient() -> None:
    with pytest.raises(Unresolved):
        evaluate("nowhere.x > 1", STATE)
    assert evaluate("nowhere.x > 1", STATE, lenient=True) is False


@pytest.mark.parametrize(
    "expression",
    [
        "topic.__class__",
        "topic.constructor",
        "apiResponse.items.pop()",
        "__import__('os')",
        "new Date()",
        "topic.repeat(1000000)",
    ],
)
def test_nothing_reaches_python_objects(expression: str) -> None:
    try:
        result = evaluate(expression, STATE, lenient=True)
    except (ExpressionError, Unresolved):
        return
    assert result is None  # unknown properties are simply undefined


def test_budgets_stop_runaway_expressions() -> None:
    with pytest.raises(ExpressionError):
        parse("(" * 500 + "1" + ")" * 500)
    ten = "[1,2,3,4,5,6,7,8,9,10]"
    nested = f"{ten}.map(a => {ten}.map(b => {ten}.map(c => {ten}.map(d => {ten}.map(e => a)))))"
    with pytest.raises(ExpressionError):
        evaluate(nested, STATE)
    with pytest.raises(ExpressionError):
        parse("x" * 30_000)


def test_free_names_ignore_arrow_parameters_and_globals() -> None:
    tree = parse("items.filter(x => x.score > limit).length + Math.max(a, 1)")
    assert list(free_names(tree)) == ["items", "limit", "a"]


@pytest.mark.parametrize("bad", ["a >= (1", "a ===", "'unterminated", "a ? b", "@x"])
def test_parse_errors_are_expression_errors(bad: str) -> None:
    with pytest.raises(ExpressionError):
        parse(bad)
