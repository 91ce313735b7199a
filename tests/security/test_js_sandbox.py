"""JavaScript cannot outlive its timeout or its memory cap (issue 15, rows 4 and 5).

Row 4: after `await`, a snippet runs in a promise continuation, outside the evaluation the
timeout covered; the worker thread then waited on the promise forever while V8 spun. Row 5:
`ArrayBuffer` and typed-array storage is allocated outside the V8 heap, so the heap limit never
saw it and a JS transform could take the worker's memory. Both paths (code node, transform) run
in `lang/js.py`'s `V8Isolate`; docs/sandbox.md ("JavaScript").

Each attack runs in a helper thread, so a regression fails the test instead of hanging it, and
afterwards the process must be quiet: no CPU time spent for a second (a spinning V8 thread
burns one core), no `flowmaestro-v8` thread, no more native threads than before.
"""

import os
import resource
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from flowmaestro_dagster.errors import NodeConfigurationError, NodeExecutionError
from flowmaestro_dagster.lang.js import run_js
from flowmaestro_dagster.lang.state import ExecutionState
from flowmaestro_dagster.nodes import NodeContext, get_executor
from flowmaestro_dagster.nodes.code import execute_code
from flowmaestro_dagster.settings import Settings
from flowmaestro_dagster.spec.configs import CodeConfig, normalise_config

TRANSFORM_TIMEOUT_S = 5.0  # lang/js.py DEFAULT_TIMEOUT_S, what a transform node gets
MARGIN_S = 2.0
RSS_BOUND_MB = 300
STATE = ExecutionState.start({"items": [1, 2, 3]})


def _code(code: str, **config: Any) -> Any:
    ctx = NodeContext(
        node_id="code-1",
        node_type="code",
        label="Code",
        config=CodeConfig(language="javascript", code=code, **config),
        state=STATE,
        services={"settings": Settings()},
    )
    return execute_code(ctx).output


def _transform(**raw: Any) -> Any:
    config, problems = normalise_config("transform", raw, node_id="t")
    assert problems == []
    ctx = NodeContext(node_id="t", node_type="transform", label="T", config=config, state=STATE)
    return get_executor("transform")(ctx).output


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _rss_mb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) // 1024
    raise AssertionError("no VmRSS in /proc/self/status")


def _threads() -> int:
    """Threads Python did not start (the isolate's own thread is one while it lives)."""
    return len(os.listdir("/proc/self/task")) - threading.active_count()


def _attack(run: Callable[[], Any], deadline_s: float) -> tuple[BaseException | None, float, int]:
    """Run `run` in a thread: what it raised, how long it took, the peak RSS growth (MB)."""
    outcome: list[BaseException | None] = []
    baseline, peak = _rss_mb(), [0]

    def target() -> None:
        try:
            run()
            outcome.append(None)
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            outcome.append(exc)

    started = time.monotonic()
    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    while thread.is_alive() and time.monotonic() - started < deadline_s:
        peak[0] = max(peak[0], _rss_mb() - baseline)
        thread.join(0.005)
    elapsed = time.monotonic() - started
    assert not thread.is_alive(), f"still running {elapsed:.1f} s after it started"
    return outcome[0], elapsed, peak[0]


def _assert_quiet(threads_before: int) -> None:
    """Nothing keeps running: a spinning isolate would burn ~1 s of CPU in this second."""
    cpu = _cpu_s()
    time.sleep(1.0)
    assert _cpu_s() - cpu < 0.3
    assert not [t for t in threading.enumerate() if t.name == "flowmaestro-v8"]
    assert _threads() <= threads_before


@pytest.fixture(autouse=True)
def _warm() -> None:
    """V8's platform threads start with the first isolate: start them before counting."""
    assert run_js("1 + 1", {}) == 2


# -- row 4: the timeout is a hard stop -----------------------------------------------------------


@pytest.mark.timeout(30)
@pytest.mark.parametrize(
    "code",
    [
        "await 0; while (true) {}",  # the snippet: the loop is a promise continuation
        "while (true) {}",  # synchronous: the evaluation's own timeout
        "Promise.resolve().then(() => { while (true) {} }); return 1",  # after the value
        "const never = new Promise(() => {}); await 0; for (;;) { Math.random(); }",
    ],
)
def test_javascript_code_node_stops_at_its_timeout(code: str) -> None:
    threads = _threads()
    error, elapsed, _ = _attack(lambda: _code(code, timeout_ms=1000), 1.0 + MARGIN_S + 5)
    assert isinstance(error, NodeExecutionError), error
    assert "timed out after 1000 ms" in str(error)
    assert elapsed < 1.0 + MARGIN_S
    _assert_quiet(threads)
    assert _code("const v = await Promise.resolve(41); return v + 1")["output"] == 42


@pytest.mark.timeout(30)
@pytest.mark.parametrize(
    "expression",
    [
        "(async () => { await 0; while (true) {} })()",
        "item => { Promise.resolve().then(() => { while (true) {} }); return item }",
    ],
)
def test_javascript_transform_stops_at_its_timeout(expression: str) -> None:
    threads = _threads()
    operation = "custom" if expression.startswith("(async") else "map"
    error, elapsed, _ = _attack(
        lambda: _transform(operation=operation, inputData="{{items}}", expression=expression),
        TRANSFORM_TIMEOUT_S + MARGIN_S + 5,
    )
    assert isinstance(error, NodeConfigurationError), error
    assert f"timed out after {round(TRANSFORM_TIMEOUT_S * 1000)} ms" in str(error)
    assert elapsed < TRANSFORM_TIMEOUT_S + MARGIN_S
    _assert_quiet(threads)


@pytest.mark.timeout(30)
def test_synchronous_transform_loop_stops_at_its_timeout() -> None:
    threads = _threads()
    error, elapsed, _ = _attack(lambda: run_js("(() => { while (true) {} })()", {}, timeout_s=1), 8)
    assert "timed out after 1000 ms" in str(error)
    assert elapsed < 1.0 + MARGIN_S
    _assert_quiet(threads)


# -- row 5: no memory outside the heap limit -----------------------------------------------------

# 600 MB of typed-array storage, touched so that it is resident: over the 128 MB cap and the
# RSS bound, bounded so that a regression cannot take the machine.
TYPED_ARRAY_FLOOD = "for (let i = 0; i < 6; i++) kept.push(new Uint8Array(1e8).fill(1));"


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    "body",
    [
        TYPED_ARRAY_FLOOD,
        "kept.push(new ArrayBuffer(2 ** 31));",
        "kept.push(new Float64Array(2 ** 28).fill(1.5));",
        "kept.push(new DataView(new SharedArrayBuffer(2 ** 30)));",
        "kept.push(new WebAssembly.Memory({ initial: 16384 }));",
    ],
)
def test_javascript_transform_cannot_allocate_outside_the_heap(body: str) -> None:
    expression = f"(() => {{ const kept = []; {body} return kept.length; }})()"
    threads = _threads()
    error, _, growth = _attack(
        lambda: _transform(operation="custom", inputData="{{items}}", expression=expression), 40
    )
    assert isinstance(error, NodeConfigurationError), error
    assert "is not defined" in str(error)
    assert "outside its memory limit" in str(error)
    assert growth < RSS_BOUND_MB, f"RSS grew by {growth} MB"
    _assert_quiet(threads)


@pytest.mark.timeout(60)
def test_javascript_code_node_cannot_allocate_outside_the_heap() -> None:
    code = f"const kept = [];\n{TYPED_ARRAY_FLOOD}\nreturn kept.length"
    error, _, growth = _attack(lambda: _code(code, memory_mb=64), 40)
    assert isinstance(error, NodeExecutionError), error
    assert "Uint8Array is not defined: " in str(error) and str(error).endswith("(line 2)")
    assert "outside its memory limit" in str(error)
    assert growth < RSS_BOUND_MB, f"RSS grew by {growth} MB"


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    "make",
    [
        "new Intl.DateTimeFormat('en', { timeZone: 'UTC' })",
        "Intl.NumberFormat('de-DE')",  # called, not constructed
        "new (new Intl.Collator().constructor)()",  # the prototype's constructor
        "new (class extends Intl.PluralRules {})()",
        "new Intl.Segmenter().segment('a b c')",  # an ICU break iterator each
    ],
)
def test_intl_objects_are_capped_and_temporal_is_gone(make: str) -> None:
    """ICU state is outside the heap limit too (kept DateTimeFormats grew a worker by 2.2 GB
    under 128 MB): a run makes at most MAX_INTL_OBJECTS of them."""
    code = f"const kept = [];\nfor (let i = 0; i < 1e7; i++) kept.push({make});\nreturn 1"
    error, _, growth = _attack(lambda: _code(code, memory_mb=64, timeout=20000), 40)
    assert isinstance(error, NodeExecutionError), error
    assert "more than 1000 Intl objects in one run" in str(error)
    assert growth < RSS_BOUND_MB, f"RSS grew by {growth} MB"
    assert _code("return typeof Temporal")["output"] == "undefined"
    money = "return (1234.5).toLocaleString('en-US', { style: 'currency', currency: 'USD' })"
    assert _code(money)["output"] == "$1,234.50"  # formatting keeps working


@pytest.mark.timeout(60)
def test_async_heap_flood_hits_the_memory_limit() -> None:
    code = "const a = []; await 0; while (true) { a.push(new Array(100000).fill(1.5)); }"
    error, _, growth = _attack(lambda: _code(code, memory_mb=64), 40)
    assert isinstance(error, NodeExecutionError), error
    assert "exceeded its memory limit (64 MB)" in str(error)
    assert growth < RSS_BOUND_MB, f"RSS grew by {growth} MB"


# -- normal code is unaffected -------------------------------------------------------------------


@pytest.mark.timeout(30)
def test_normal_javascript_still_works_without_the_removed_globals() -> None:
    code = (
        "console.log('typed', typeof Uint8Array, typeof ArrayBuffer);\n"
        "const total = await Promise.all(inputs.items.map(async (n) => n * 2));\n"
        "const bytes = Array.from('hé', (c) => c.charCodeAt(0));\n"
        "return { total: total.reduce((a, b) => a + b, 0), bytes,\n"
        "  price: (1234.5).toLocaleString('en-US', { style: 'currency', currency: 'USD' }) };"
    )
    output = _code(code)
    assert output["output"] == {"total": 12, "bytes": [104, 233], "price": "$1,234.50"}
    assert output["stdout"] == "typed undefined undefined\n"
    mapped = _transform(operation="map", inputData="{{items}}", expression="n => n * 10")
    assert mapped == {"result": [10, 20, 30]}
    assert run_js("typeof Uint8Array + ' ' + typeof WebAssembly", {}) == "undefined undefined"
