"""transform nodes: templates, merges, JSONata, JS arrow functions, parsing, aggregation."""

import contextlib
import json
import math
import re
import time
from collections.abc import Callable
from typing import Any

from flowmaestro_dagster.errors import ExpressionError, NodeConfigurationError, PatternError
from flowmaestro_dagster.lang import templates
from flowmaestro_dagster.lang.expressions import to_number, truthy
from flowmaestro_dagster.lang.js import run_js
from flowmaestro_dagster.lang.patterns import jsonata_regex_engine
from flowmaestro_dagster.nodes.base import NodeContext, NodeResult, wrap_output
from flowmaestro_dagster.spec.configs import TransformConfig

MAX_DELAY_MS = 60_000
# Arrow functions, strict equality, method calls, `new`, spread, and object literals with bare
# keys (`{ total: ... }`) are JavaScript; JSONata quotes its object keys.
_JS_HINT = re.compile(r"=>|===|!==|&&|\|\||\.\w+\s*\(|\bnew\s|\.\.\.|[{,]\s*[A-Za-z_$][\w$]*\s*:")


def looks_like_js(expression: str) -> bool:
    """Arrow functions and method calls are JavaScript; everything else is JSONata."""
    return bool(_JS_HINT.search(expression))


def execute_transform(ctx: NodeContext) -> NodeResult:
    config = ctx.typed_config(TransformConfig)
    if config.delay_ms:
        time.sleep(min(float(config.delay_ms), MAX_DELAY_MS) / 1000)
    operation = _OPERATIONS.get(config.operation, _passthrough)
    try:
        value = operation(ctx, config)
    except ExpressionError as exc:
        raise ctx.error(f"{config.operation}: {exc}", NodeConfigurationError) from exc
    return NodeResult(wrap_output(value, config.output_variable))


def _data(ctx: NodeContext, config: TransformConfig) -> Any:
    if config.input_data is None:
        return ctx.upstream_value()
    if isinstance(config.input_data, str):
        return _resolve_operand(ctx, config.input_data)
    return ctx.render(config.input_data)


def _resolve_operand(ctx: NodeContext, text: str) -> Any:
    """`{{x}}` / `${x}` templates, or a bare name / path such as `generator1`."""
    if "{{" in text or "${" in text:
        return ctx.render(text)
    value = templates.lookup_path(ctx.state, text, budget=ctx.budget)
    return text if templates.is_missing(value) else value


def _passthrough(ctx: NodeContext, config: TransformConfig) -> Any:
    return _data(ctx, config)


def _template(ctx: NodeContext, config: TransformConfig) -> Any:
    template = config.template if config.template is not None else config.expression
    rendered = ctx.render(template)
    if isinstance(rendered, str):
        stripped = rendered.strip()
        if stripped[:1] in ("{", "[") and stripped[-1:] in ("}", "]"):
            try:
                return json.loads(stripped)
            except ValueError:
                return rendered
    return rendered


def merge_values(values: list[Any]) -> Any:
    """Objects merge (later keys win), lists concatenate, anything else is listed."""
    present = [v for v in values if v is not None]
    if present and all(isinstance(v, dict) for v in present):
        merged: dict[str, Any] = {}
        for value in present:
            merged.update(value)
        return merged
    if present and all(isinstance(v, list) for v in present):
        return [item for value in present for item in value]
    return present


def _merge(ctx: NodeContext, config: TransformConfig) -> Any:
    if config.sources:
        return merge_values([_source(ctx, s) for s in config.sources])
    parts = []
    if config.input_data is not None:
        parts.append(_data(ctx, config))
    for extra in (config.merge_data, config.expression):
        if extra is not None:
            parts.append(_resolve_operand(ctx, extra) if isinstance(extra, str) else extra)
    if parts:
        if len(parts) > 1 and all(isinstance(p, str) for p in parts):
            return " ".join(parts)
        return merge_values(parts)
    upstream = {n: ctx.state.outputs[n] for n in ctx.upstream if n in ctx.state.outputs}
    return merge_values(list(upstream.values()))


def _source(ctx: NodeContext, source: Any) -> Any:
    return _resolve_operand(ctx, source) if isinstance(source, str) else ctx.render(source)


def _items(ctx: NodeContext, config: TransformConfig) -> list[Any]:
    data = _data(ctx, config)
    if isinstance(data, str):
        with contextlib.suppress(ValueError):
            data = json.loads(data)
    if data is None:
        return []
    if not isinstance(data, list):
        raise ctx.error(
            f"{config.operation} needs a list as input, got {type(data).__name__}",
            NodeConfigurationError,
        )
    return data


def _expression(ctx: NodeContext, config: TransformConfig) -> str:
    if not isinstance(config.expression, str) or not config.expression.strip():
        raise ctx.error(f"{config.operation} needs an expression", NodeConfigurationError)
    return config.expression.strip()


JSONATA_TIMEOUT_MS = 5_000
JSONATA_MAX_DEPTH = 200


def _jsonata(expression: str, data: Any) -> Any:
    """JSONata with `$data` bound to the input, under a time and recursion bound. Its regex
    literals (`$match(s, /(a+)+$/)`) run on RE2 under a budget (`lang/patterns.py`): the time
    bound is checked between steps, and could not stop one backtracking `re` call."""
    import jsonata

    try:
        compiled = jsonata.Jsonata(expression, jsonata_regex_engine)
        frame = compiled.create_frame()
        frame.bind("data", data)
        frame.set_runtime_bounds(JSONATA_TIMEOUT_MS, JSONATA_MAX_DEPTH)
        return compiled.evaluate(data, frame)
    except Exception as exc:  # jsonata raises its own exception types
        raise ExpressionError(f"JSONata: {exc}") from exc


def jsonata_pattern_problem(expression: str) -> str | None:
    """Why a regex literal of a JSONata expression cannot run on RE2 (validation asks when a
    workflow is deployed), or None; JSONata's other parse errors are told when the node runs."""
    import jsonata

    try:
        jsonata.Jsonata(expression, jsonata_regex_engine)
    except PatternError as exc:
        return str(exc)
    except Exception:  # noqa: BLE001 - jsonata's own parse errors have no common base
        return None
    return None


def _js_apply(method: str, expression: str, items: list[Any], extra: str = "") -> Any:
    return run_js(f"data.{method}(({expression}){extra})", {"data": items})


def _map(ctx: NodeContext, config: TransformConfig) -> Any:
    items, expression = _items(ctx, config), _expression(ctx, config)
    if looks_like_js(expression):
        return _js_apply("map", expression, items)
    return [_jsonata(expression, item) for item in items]


def _filter(ctx: NodeContext, config: TransformConfig) -> Any:
    items, expression = _items(ctx, config), _expression(ctx, config)
    if looks_like_js(expression):
        return _js_apply("filter", expression, items)
    return [item for item in items if truthy(_jsonata(expression, item))]


def _reduce(ctx: NodeContext, config: TransformConfig) -> Any:
    items, expression = _items(ctx, config), _expression(ctx, config)
    initial = config.extras().get("initialValue")
    if initial is None and re.search(r"=>\s*\(\s*\{", expression):
        initial = {}  # a reducer that builds an object starts from {} (see docs)
    extra = f", {json.dumps(initial)}" if initial is not None else ""
    if looks_like_js(expression):
        return _js_apply("reduce", expression, items, extra)
    return _jsonata(expression, items)


def _sort(ctx: NodeContext, config: TransformConfig) -> Any:
    items = _items(ctx, config)
    expression = config.expression.strip() if isinstance(config.expression, str) else ""
    if expression and looks_like_js(expression):
        return run_js(f"data.slice().sort(({expression}))", {"data": items})
    key = expression or config.path
    descending = str(config.extras().get("order", "asc")).lower().startswith("desc")

    def sort_key(item: Any) -> tuple[int, Any]:
        value = templates.walk(item, key.split(".")) if key else item
        if templates.is_missing(value) or value is None:
            return (2, 0)
        if isinstance(value, int | float) and not isinstance(value, bool):
            return (0, value)
        return (1, str(value))

    return sorted(items, key=sort_key, reverse=descending)


def _custom(ctx: NodeContext, config: TransformConfig) -> Any:
    data, expression = _data(ctx, config), _expression(ctx, config)
    if looks_like_js(expression):
        return run_js(expression, {"$": data, "data": data, "input": data})
    return _jsonata(expression, data)


def _extract(ctx: NodeContext, config: TransformConfig) -> Any:
    data = _data(ctx, config)
    path = config.path or (config.expression if isinstance(config.expression, str) else None)
    if not path:
        return data
    path = path.strip()
    if path.startswith(("$.", "$[")):
        path = path[2:] if path.startswith("$.") else path[1:]
    parts: list[str | int] = []
    for piece in re.findall(r"[^.\[\]]+", path):
        parts.append(int(piece) if piece.isdigit() else piece.strip("'\""))
    value = templates.walk(data, parts)
    return None if templates.is_missing(value) else value


def _parse_json(ctx: NodeContext, config: TransformConfig) -> Any:
    data = _data(ctx, config)
    if not isinstance(data, str):
        return data
    try:
        return json.loads(data)
    except ValueError as exc:
        raise ctx.error(
            f"parseJSON: input is not valid JSON ({exc})", NodeConfigurationError
        ) from exc


def _parse_xml(ctx: NodeContext, config: TransformConfig) -> Any:
    from defusedxml import ElementTree
    from defusedxml.common import DefusedXmlException

    data = _data(ctx, config)
    if not isinstance(data, str):
        return data
    try:
        root = ElementTree.fromstring(data)
    except (ElementTree.ParseError, DefusedXmlException) as exc:
        raise ctx.error(f"parseXML: {exc}", NodeConfigurationError) from exc
    return {root.tag: _xml_to_data(root)}


def _xml_to_data(element: Any) -> Any:
    children = list(element)
    attributes = {f"@{k}": v for k, v in element.attrib.items()}
    text = (element.text or "").strip()
    if not children and not attributes:
        return text
    result: dict[str, Any] = dict(attributes)
    for child in children:
        value = _xml_to_data(child)
        if child.tag in result:
            existing = result[child.tag]
            result[child.tag] = (
                [*existing, value] if isinstance(existing, list) else [existing, value]
            )
        else:
            result[child.tag] = value
    if text:
        result["#text"] = text
    return result


def _flatten(ctx: NodeContext, config: TransformConfig) -> Any:
    data = _data(ctx, config)
    if isinstance(data, dict):
        data = list(data.values())
    if not isinstance(data, list):
        return data
    return [x for item in data for x in (item if isinstance(item, list) else [item])]


def _aggregate(ctx: NodeContext, config: TransformConfig) -> Any:
    data = _data(ctx, config)
    items = (
        data if isinstance(data, list) else list(data.values()) if isinstance(data, dict) else []
    )
    field = config.extras().get("field") or config.path
    group_by = config.extras().get("groupBy")
    values = [templates.walk(i, field.split(".")) if field else i for i in items]
    numbers = [to_number(v) for v in values if not templates.is_missing(v) and v is not None]
    numbers = [n for n in numbers if not math.isnan(n)]
    result: dict[str, Any] = {}
    for operation in config.operations or ["count"]:
        name = operation.lower()
        if name == "count":
            result["count"] = len(items)
        elif name == "sum":
            result["sum"] = sum(numbers)
        elif name in ("average", "avg", "mean"):
            result["average"] = sum(numbers) / len(numbers) if numbers else None
        elif name == "min":
            result["min"] = min(numbers) if numbers else None
        elif name == "max":
            result["max"] = max(numbers) if numbers else None
        elif name in ("groupby", "group_by"):
            groups: dict[str, list[Any]] = {}
            key = group_by or field
            for item in items:
                bucket = templates.walk(item, key.split(".")) if key else None
                groups.setdefault("" if templates.is_missing(bucket) else str(bucket), []).append(
                    item
                )
            result["groups"] = {k: len(v) for k, v in groups.items()}
    return result


def _first_non_null(ctx: NodeContext, config: TransformConfig) -> Any:
    for source in config.sources or []:
        value = _source(ctx, source)
        if value is not None and not (isinstance(value, str) and value == source):
            return value
    return None


def _compare(ctx: NodeContext, config: TransformConfig) -> Any:
    return {str(s): _source(ctx, s) for s in config.sources or []}


def _select(ctx: NodeContext, config: TransformConfig) -> Any:
    if config.condition is not None:
        return ctx.render(config.condition)
    return _data(ctx, config)


_OPERATIONS: dict[str, Callable[[NodeContext, TransformConfig], Any]] = {
    "passthrough": _passthrough,
    "template": _template,
    "merge": _merge,
    "aggregate": _aggregate,
    "map": _map,
    "filter": _filter,
    "reduce": _reduce,
    "sort": _sort,
    "extract": _extract,
    "custom": _custom,
    "parseJSON": _parse_json,
    "parseXML": _parse_xml,
    "flatten": _flatten,
    "first_non_null": _first_non_null,
    "compare": _compare,
    "select": _select,
}
