"""conditional and switch nodes: choose which outgoing branches run."""

import math
from typing import Any

from flowmaestro_dagster.errors import ExpressionError, NodeConfigurationError, PatternError
from flowmaestro_dagster.lang import templates
from flowmaestro_dagster.lang.expressions import (
    Evaluator,
    loose_equals,
    parse,
    to_number,
    to_text,
    truthy,
)
from flowmaestro_dagster.lang.patterns import wildcard
from flowmaestro_dagster.nodes.base import NodeContext, NodeResult
from flowmaestro_dagster.spec.configs import ConditionalConfig, SwitchConfig


def compare(left: Any, operator: str, right: Any) -> bool:
    """A comparison of the builder's operator list (values as the UI typed them)."""
    if operator in ("isEmpty", "isNotEmpty"):
        empty = left is None or left in ("", [], {})
        return empty if operator == "isEmpty" else not empty
    if operator in ("contains", "not_contains"):
        if isinstance(left, list):
            found = any(loose_equals(item, right) for item in left)
        elif isinstance(left, dict):
            found = to_text(right) in left
        else:
            found = to_text(right).lower() in to_text(left).lower()
        return found if operator == "contains" else not found
    if operator == "startsWith":
        return to_text(left).lower().startswith(to_text(right).lower())
    if operator == "endsWith":
        return to_text(left).lower().endswith(to_text(right).lower())
    a, b = _numbers_if_numeric(left, right)
    if operator == "==":
        return loose_equals(a, b) or (isinstance(a, str) and isinstance(b, str) and a == b)
    if operator == "!=":
        return not loose_equals(a, b)
    if isinstance(a, int | float) and isinstance(b, int | float):
        x, y = float(a), float(b)
    else:
        x, y = to_text(a), to_text(b)  # type: ignore[assignment]
    if operator == ">":
        return x > y
    if operator == "<":
        return x < y
    if operator == ">=":
        return x >= y
    if operator == "<=":
        return x <= y
    raise ValueError(f"unknown operator {operator}")


def _numbers_if_numeric(left: Any, right: Any) -> tuple[Any, Any]:
    def numeric(value: Any) -> bool:
        if isinstance(value, bool):
            return False
        if isinstance(value, int | float):
            return True
        return isinstance(value, str) and value.strip() != "" and not math.isnan(to_number(value))

    if numeric(left) and numeric(right):
        return to_number(left), to_number(right)
    if isinstance(left, bool) and isinstance(right, str) and right.lower() in ("true", "false"):
        return left, right.lower() == "true"
    if isinstance(right, bool) and isinstance(left, str) and left.lower() in ("true", "false"):
        return left.lower() == "true", right
    return left, right


def execute_conditional(ctx: NodeContext) -> NodeResult:
    config = ctx.typed_config(ConditionalConfig)
    detail: dict[str, Any]
    if config.mode == "expression":
        expression = config.expression or ""
        evaluator = Evaluator(ctx.state, lenient=True, budget=ctx.budget)
        try:
            value = evaluator.evaluate(parse(expression))
        except ExpressionError as exc:
            raise ctx.error(f"condition {expression!r}: {exc}", NodeConfigurationError) from exc
        result = truthy(value)
        detail = {"expression": expression}
        if evaluator.unresolved:
            detail["unresolved"] = sorted(set(evaluator.unresolved))
    else:
        left = ctx.render(config.left_value)
        right = ctx.render(config.right_value)
        result = compare(left, config.operator, right)
        detail = {"left": left, "operator": config.operator, "right": right}
    branch = "true" if result else "false"
    output: dict[str, Any] = {"result": result, "branch": branch, **detail}
    if config.output_variable:
        output[config.output_variable] = result
    return NodeResult(output, branches=frozenset({branch}))


def case_matches(value: Any, case: str) -> bool:
    """Switch matching: wildcards `*` `?` (on RE2, linear time: a case such as
    `*a*a*a*a*b` backtracked polynomially under `re`), numbers by value, text
    case-insensitively. A wildcard over its budget raises `PatternError`."""
    if value is None:
        return False
    text = to_text(value)
    if "*" in case or "?" in case:
        return wildcard(case).matches(text)
    left, right = _numbers_if_numeric(value, case)
    if isinstance(left, float) and isinstance(right, float):
        return left == right
    return text.strip().lower() == case.strip().lower()


def switch_value(ctx: NodeContext, expression: Any) -> Any:
    if isinstance(expression, str) and "{{" not in expression and "${" not in expression:
        found = templates.lookup_path(ctx.state, expression, budget=ctx.budget)
        return expression if templates.is_missing(found) else found
    return ctx.render(expression)


def execute_switch(ctx: NodeContext) -> NodeResult:
    config = ctx.typed_config(SwitchConfig)
    value = switch_value(ctx, config.expression)
    branches: set[str] = set()
    matched: str | None = None
    for index, case in enumerate(config.cases):
        try:
            found = case_matches(value, case.value)
        except PatternError as exc:
            raise ctx.error(f"case {case.value!r}: {exc}", NodeConfigurationError) from exc
        if found:
            branches.add(f"case-{index}")
            matched = case.value
            break
    if not branches:
        branches.add("default")
        if config.default_case is not None:
            for index, case in enumerate(config.cases):
                if case.value == config.default_case:
                    branches.add(f"case-{index}")
                    break
    output: dict[str, Any] = {
        "value": value,
        "matched": matched,
        "branch": matched if matched is not None else "default",
    }
    if config.output_variable:
        output[config.output_variable] = matched if matched is not None else config.default_case
    return NodeResult(output, branches=frozenset(branches))
