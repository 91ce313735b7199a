"""Running a batch node: its body once per item, in chunks, some items at a time.

The batch's body is a loop region (graph.py) run inside the batch's own op, like a while
loop's: items are split into chunks of `batchSize`; a chunk's items run on up to
`concurrency` threads, and the next chunk starts when the chunk is done. After each item the
batch logs its progress (`flowmaestro_dagster.runtime.progress`), which reaches the run's event log.

* `onItemError: fail` — the first failed item stops the batch: no further item starts, the
  items already running finish, and the node fails (its own retry and onError apply).
* `onItemError: continue` — a failed item's error is collected (`errors`), its result is null.
* `minSuccess: k` — once k items succeeded the batch is done: items not yet started never
  start (`skipped`), items already running finish and their results are kept. With
  `continue`, the batch fails as soon as k can no longer be reached; fewer than k items fail it
  at once.
"""

import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any

from flowmaestro_dagster.errors import NodeExecutionError
from flowmaestro_dagster.lang.state import ExecutionState
from flowmaestro_dagster.nodes import NodeContext, NodeResult
from flowmaestro_dagster.nodes.batch import batch_items, batch_summary, chunks
from flowmaestro_dagster.runtime.plan import NodePlan
from flowmaestro_dagster.runtime.progress import Progress
from flowmaestro_dagster.spec.configs import BatchConfig

PROGRESS_INTERVAL_SECONDS = 1.0
PROGRESS_STEPS = 50  # at most about this many progress messages per batch, plus one a second


@dataclass
class _Tally:
    total: int
    states: list[ExecutionState | None]
    errors: dict[int, dict[str, Any]] = field(default_factory=dict)
    succeeded: int = 0
    failed: int = 0
    first_failure: tuple[int, BaseException] | None = None
    complete: bool = False  # minSuccess reached

    @property
    def done(self) -> int:
        return self.succeeded + self.failed


def run_batch(
    ctx: NodeContext,
    plan: NodePlan,
    state: ExecutionState,
    run_item: Callable[[ExecutionState], ExecutionState | None],
    enter: Callable[[ExecutionState, Any, int, int], ExecutionState],
) -> tuple[ExecutionState, list[ExecutionState | None], dict[str, Any]]:
    """Run every item; returns the batch's base state, the per-item end states (None for a
    failed or unstarted item) and the batch's summary value (`results` left to the caller)."""
    config = ctx.typed_config(BatchConfig)
    items = batch_items(ctx, config)
    total = len(items)
    if config.min_success is not None and config.min_success > total:
        raise ctx.error(
            f"minSuccess {config.min_success} cannot be reached: the batch has {total} item(s)",
            NodeExecutionError,
        )
    base = state.with_output(plan.node_id, plan.rank, {"items": items, "count": total})
    tally = _Tally(total=total, states=[None] * total)
    reporter = _Reporter(ctx, total)
    reporter.report(tally, force=True)
    workers = max(1, min(config.concurrency, config.batch_size, total or 1))
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="flowmaestro-batch") as pool:
        for chunk in chunks(total, config.batch_size):
            if _stopped(config, tally):
                break
            waiting = iter(chunk)
            running: dict[Future[ExecutionState | None], int] = {}
            while True:
                while len(running) < workers and not _stopped(config, tally):
                    index = next(waiting, None)
                    if index is None:
                        break
                    start = enter(base, items[index], index, total)
                    running[pool.submit(run_item, start)] = index
                if not running:
                    break
                finished, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in finished:
                    _record(config, tally, items, running.pop(future), future)
                reporter.report(tally)
    reporter.report(tally, force=True, finished=True)
    if config.on_item_error == "fail" and tally.first_failure is not None and not tally.complete:
        index, exc = tally.first_failure
        raise ctx.error(
            f"item {index} failed: {exc}",
            NodeExecutionError,
            details={"item": index, "succeeded": tally.succeeded, "failed": tally.failed},
        ) from exc
    if config.min_success is not None and tally.succeeded < config.min_success:
        raise ctx.error(
            f"only {tally.succeeded} of {total} item(s) succeeded, minSuccess is "
            f"{config.min_success}",
            NodeExecutionError,
            details={"succeeded": tally.succeeded, "failed": tally.failed},
        )
    summary = batch_summary(
        results=[],
        errors=[tally.errors[i] for i in sorted(tally.errors)],
        succeeded=tally.succeeded,
        failed=tally.failed,
        total=total,
    )
    return base, tally.states, summary


def _stopped(config: BatchConfig, tally: _Tally) -> bool:
    """No further item starts: minSuccess reached, a failure under `fail`, or k unreachable."""
    if tally.complete or (tally.first_failure is not None and config.on_item_error == "fail"):
        return True
    k = config.min_success
    return k is not None and tally.succeeded + (tally.total - tally.done) < k


def _record(
    config: BatchConfig,
    tally: _Tally,
    items: list[Any],
    index: int,
    future: "Future[ExecutionState | None]",
) -> None:
    exc = future.exception()
    if exc is None:
        tally.states[index] = future.result()
        tally.succeeded += 1
        if config.min_success is not None and tally.succeeded >= config.min_success:
            tally.complete = True
        return
    if not isinstance(exc, Exception):
        raise exc  # an interrupt, not an item's error
    tally.failed += 1
    tally.errors[index] = {
        "index": index,
        "item": items[index],
        "error": {
            "message": str(exc) or type(exc).__name__,
            "type": type(exc).__name__,
            "nodeId": getattr(exc, "node_id", None),
        },
    }
    if tally.first_failure is None and not tally.complete:
        tally.first_failure = (index, exc)


class _Reporter:
    """Logs progress after items finish: at most ~PROGRESS_STEPS times, or once a second."""

    def __init__(self, ctx: NodeContext, total: int) -> None:
        self.ctx = ctx
        self.total = total
        self.step = max(1, total // PROGRESS_STEPS)
        self.last_done = -1
        self.last_time = 0.0

    def report(self, tally: _Tally, *, force: bool = False, finished: bool = False) -> None:
        now = time.monotonic()
        due = tally.done - self.last_done >= self.step
        if tally.done == self.last_done and not finished:
            return
        if not (force or due or now - self.last_time >= PROGRESS_INTERVAL_SECONDS):
            return
        self.last_done, self.last_time = tally.done, now
        progress = Progress(
            node_id=self.ctx.node_id,
            done=tally.done,
            total=self.total,
            succeeded=tally.succeeded,
            failed=tally.failed,
            skipped=self.total - tally.done if finished else 0,
            finished=finished,
        )
        self.ctx.log.info(progress.message())


def batch_node_result(summary: dict[str, Any], output_variable: str | None) -> NodeResult:
    """The batch's output: the summary, and the summary again under `outputVariable`."""
    output = dict(summary)
    if output_variable:
        output[output_variable] = dict(summary)
    return NodeResult(output)
