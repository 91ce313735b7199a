"""shared-memory nodes: an execution-scoped key-value store.

Writes travel with the execution state, so a node reads exactly the writes made upstream of
it, in a deterministic order, on whichever worker it runs and after any resume.
"""

import re
from typing import Any

from flowmaestro_dagster.errors import NodeConfigurationError
from flowmaestro_dagster.lang.expressions import to_text
from flowmaestro_dagster.nodes.base import MemoryOp, NodeContext, NodeResult, wrap_output
from flowmaestro_dagster.spec.configs import SharedMemoryConfig

_WORD = re.compile(r"\w+")


def execute_shared_memory(ctx: NodeContext) -> NodeResult:
    config = ctx.typed_config(SharedMemoryConfig)
    if config.operation == "search":
        return _search(ctx, config)
    if not config.key:
        raise ctx.error(f"{config.operation} needs a key", NodeConfigurationError)
    key = ctx.render_text(config.key)
    if config.operation == "get":
        value = ctx.state.memory_view().get(key)
        return NodeResult(wrap_output(value, config.output_variable, default_key="value"))
    if config.operation == "delete":
        return NodeResult({"key": key, "operation": "delete"}, memory=[MemoryOp("delete", key)])
    value = ctx.render(config.value)
    output: dict[str, Any] = {"key": key, "value": value, "operation": config.operation}
    if config.output_variable:
        output[config.output_variable] = value
    return NodeResult(output, memory=[MemoryOp(config.operation, key, value)])


def _search(ctx: NodeContext, config: SharedMemoryConfig) -> NodeResult:
    query = ctx.render_text(config.search_query or config.value or config.key or "")
    terms = {w.lower() for w in _WORD.findall(query)}
    scored = []
    for key, value in ctx.state.memory_view().items():
        words = {w.lower() for w in _WORD.findall(f"{key} {to_text(value)}")}
        score = len(terms & words) / len(terms) if terms else 0.0
        if score > 0 or not terms:
            scored.append({"key": key, "value": value, "score": round(score, 4)})
    scored.sort(key=lambda r: (-r["score"], r["key"]))
    results = scored[: config.top_k]
    return NodeResult(wrap_output(results, config.output_variable, default_key="results"))
