"""batch nodes: the items, in chunks (the runtime runs the body per item: runtime/batch.py)."""

from collections.abc import Iterator, Sequence
from typing import Any

from flowmaestro_dagster.nodes.base import NodeContext
from flowmaestro_dagster.nodes.loop import loop_items
from flowmaestro_dagster.spec.configs import BatchConfig, LoopConfig


def batch_items(ctx: NodeContext, config: BatchConfig) -> list[Any]:
    """The array to process: a list, a `{{reference}}` or a bare path (as a loop reads it)."""
    as_loop = LoopConfig(loop_type="forEach", items=config.items, max_iterations=config.max_items)
    return loop_items(ctx, as_loop)


def chunks(count: int, size: int) -> Iterator[range]:
    """Item indexes in consecutive chunks of `size`."""
    for start in range(0, count, size):
        yield range(start, min(start + size, count))


def batch_summary(
    *,
    results: Sequence[Any],
    errors: Sequence[dict[str, Any]],
    succeeded: int,
    failed: int,
    total: int,
) -> dict[str, Any]:
    """The batch's value: per-item results (null for failed / unstarted items) and errors."""
    return {
        "results": list(results),
        "errors": list(errors),
        "succeeded": succeeded,
        "failed": failed,
        "skipped": total - succeeded - failed,
        "total": total,
    }
