"""loop nodes: decide the items a loop iterates over (the compiler runs the body per item)."""

import json
import math
from typing import Any

from flowmaestro_dagster.errors import NodeConfigurationError
from flowmaestro_dagster.lang import templates
from flowmaestro_dagster.lang.expressions import to_number
from flowmaestro_dagster.nodes.base import NodeContext, NodeResult
from flowmaestro_dagster.spec.configs import LoopConfig


def loop_items(ctx: NodeContext, config: LoopConfig) -> list[Any]:
    """The list to iterate: a forEach collection, or 0..count-1."""
    if config.loop_type == "count":
        count = ctx.render(config.count)
        number = to_number(count)
        if math.isnan(number) or number < 0:
            raise ctx.error(
                f"loop count must be a number >= 0, got {count!r}", NodeConfigurationError
            )
        return list(range(min(int(number), config.max_iterations)))
    value = _collection(ctx, config.items)
    if value is None:
        return []
    if isinstance(value, str):
        try:
            parsed = json.loads(value)
        except ValueError:
            parsed = None
        value = parsed if isinstance(parsed, list) else [value]
    if isinstance(value, dict):
        value = [value]
    if not isinstance(value, list):
        value = [value]
    return value[: config.max_iterations]


def _collection(ctx: NodeContext, items: Any) -> Any:
    if isinstance(items, str):
        found = templates.lookup_path(ctx.state, items, budget=ctx.budget)
        if templates.is_missing(found):
            raise ctx.error(
                f"loop collection {items!r} did not resolve to any upstream value",
                NodeConfigurationError,
            )
        return found
    return ctx.render(items)


def execute_loop(ctx: NodeContext) -> NodeResult:
    config = ctx.typed_config(LoopConfig)
    if config.loop_type == "while":
        # While loops run inline (the adapter evaluates the condition before each iteration).
        return NodeResult({"items": [], "count": 0}, items=[])
    items = loop_items(ctx, config)
    return NodeResult({"items": items, "count": len(items)}, items=items)
