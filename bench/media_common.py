"""What the media benchmarks (bench/media_*.py) do alike, so their rows mean the same thing.

Each case runs in a fresh spawned process (`run_in_children`), so its figures are its own.
`time_calls` gives every row the same keys: the first call timed alone (`first_call_ms`: lazy
library imports, engines starting), the median, min and max of `repeats` further calls, the
peak of Python allocations during one more call (`python_peak_mb`, tracemalloc: native memory
such as a browser's, pango's or Tesseract's is not seen there) and the child's peak resident set
(`max_rss_mb`, getrusage). bench/media.py gathers the rows; bench/report.py renders them.
"""

import multiprocessing
import resource
import statistics
import time
import tracemalloc
from collections.abc import Callable, Iterable
from typing import Any

from flowmaestro_dagster.lang.state import ExecutionState
from flowmaestro_dagster.nodes import NodeContext, get_executor
from flowmaestro_dagster.nodes.filestore import FileStore
from flowmaestro_dagster.settings import Settings
from flowmaestro_dagster.spec.configs import normalise_config
from flowmaestro_dagster.tags import WORKFLOW_ID_TAG

MB = 1 << 20
WORKFLOW = "bench"  # the workflow whose file area the cases read and write


def file_store(root: str) -> FileStore:
    """A local file store in `root` with room for every case's inputs and outputs."""
    return FileStore(root, max_bytes=1 << 30)


def node_call(
    node_type: str,
    raw_config: dict[str, Any],
    inputs: dict[str, Any],
    files: FileStore,
    settings: Settings | None = None,
    *,
    node_id: str = "bench",
    execution_id: str = "bench",
) -> Callable[[], Any]:
    """The node's executor bound to one context, as a run in workflow `WORKFLOW` would give it
    (`raw_config` normalised, `inputs` as the run's data, `files` as its store): each call runs
    the node again and returns its output object."""
    raw = {**raw_config, "outputVariable": "out"}
    config, _ = normalise_config(node_type, raw, node_id=node_id)
    ctx = NodeContext(
        node_id=node_id,
        node_type=node_type,
        label=node_id,
        config=config,
        state=ExecutionState.start(inputs),
        services={"settings": settings or Settings(), "files": files},
        run_tags={WORKFLOW_ID_TAG: WORKFLOW},
        execution_id=execution_id,
    )
    executor = get_executor(node_type)
    return lambda: executor(ctx).output["out"]


def time_calls(call: Callable[[], Any], repeats: int) -> tuple[Any, dict[str, float]]:
    """The first call's result, and the row figures of `call` (the keys every media row has)."""
    started = time.perf_counter()
    first_result = call()
    first = time.perf_counter() - started
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    tracemalloc.start()  # a call of its own: tracing slows the timed ones
    call()
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return first_result, {
        "first_call_ms": round(first * 1000, 1),
        "median_ms": round(statistics.median(times) * 1000, 1),
        "min_ms": round(min(times) * 1000, 1),
        "max_ms": round(max(times) * 1000, 1),
        "python_peak_mb": round(peak / MB, 2),
        "max_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }


def run_in_children(
    measure: Callable[..., dict[str, Any]], cases: Iterable[str], *args: Any
) -> list[dict[str, Any]]:
    """`measure(case, *args)` for each case, each in a fresh spawned process (one row a case):
    no case's imports, caches or memory peak count for another."""
    context = multiprocessing.get_context("spawn")
    rows = []
    for case in cases:
        with context.Pool(1) as pool:
            rows.append(pool.apply(measure, (case, *args)))
    return rows
