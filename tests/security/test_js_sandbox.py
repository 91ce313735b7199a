"""JavaScript cannot outlive its timeout or its memory cap (issue 15, rows 4 and 5).

Row 4: after `await`, a snippet runs in a promise continuation, outside the evaluation the
timeout covered; the worker thread then waited on the promise forever while V8 spun. Row 5:
`ArrayBuffer` and typed-array storage is allocated outside the V8 heap, so the heap limit never
saw it and a JS transform could take the worker's memory. Both paths (code node, transform) run
in `lang/js.py`'s `V8Isolate`; docs/sandbox.md ("JavaScript").

Each attack runs in a helper thread, so a regression fails the test instead of hanging it, and
afterwards the process must be quiet: no CPU time spent for a second (a spinning V8 thread
burns one core), no `flowmaestro-v8` thread, no more native threads than before.

The code node's isolate runs in a sandboxed child process (issue 15, "untrusted code runs
isolated"; transforms stay in the worker). The last section fails if a snippet ran in the
worker: its CPU time must show up as a child's, the child must be seen while it runs and be
gone, process group and all, when the node ends or the worker's deadline kills it; memory V8's
heap limit does not see (parser memory) is stopped by the child's RLIMIT_DATA.
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
from flowmaestro_dagster.nodes.sandbox import SnippetInputs
from flowmaestro_dagster.nodes.sandbox.javascript import JavaScriptLimits, run_javascript
from flowmaestro_dagster.settings import CodeSettings, Settings
from flowmaestro_dagster.spec.configs import CodeConfig, normalise_config

TRANSFORM_TIMEOUT_S = 5.0  # lang/js.py DEFAULT_TIMEOUT_S, what a transform node gets
MARGIN_S = 2.0
RSS_BOUND_MB = 300
STATE = ExecutionState.start({"items": [1, 2, 3]})


def _code(code: str, settings: Settings | None = None, **config: Any) -> Any:
    ctx = NodeContext(
        node_id="code-1",
        node_type="code",
        label="Code",
        config=CodeConfig(language="javascript", code=code, **config),
        state=STATE,
        services={"settings": settings or Settings()},
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


# -- the code node runs in a child process, killed whole --------------------------------------


def _start_time(pid: int) -> str | None:
    """A process's start time (field 22 of its stat), None when it is gone or a zombie."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return None if fields[0] in ("Z", "X") else fields[19]


def _descendants(pid: int) -> set[int]:
    found: set[int] = set()
    pending = [pid]
    while pending:
        for task in Path(f"/proc/{pending.pop()}/task").glob("*"):
            try:
                children = {int(c) for c in (task / "children").read_text().split()}
            except OSError:
                continue
            pending.extend(children - found)
            found |= children
    return found


class _Watch:
    """Every descendant of this process (pid, start time, process group) while a run lasts."""

    def __init__(self) -> None:
        self.seen: dict[tuple[int, str], int] = {}
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self) -> None:
        while not self._done.wait(0.01):
            for pid in _descendants(os.getpid()):
                started = _start_time(pid)
                try:
                    group = os.getpgid(pid)
                except OSError:
                    continue
                if started is not None:
                    self.seen[(pid, started)] = group

    def __enter__(self) -> "_Watch":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join()

    def assert_all_gone(self) -> None:
        assert self.seen, "no child process ran the snippet"
        survivors = [pid for pid, started in self.seen if _start_time(pid) == started]
        assert survivors == []
        for group in set(self.seen.values()) - {os.getpgid(0)}:
            with pytest.raises(ProcessLookupError):
                os.killpg(group, 0)


def _child_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


@pytest.mark.timeout(30)
def test_code_node_spins_in_a_child_process_that_is_gone_after_its_timeout() -> None:
    own, children = _cpu_s(), _child_cpu_s()
    with _Watch() as watch:
        error, elapsed, _ = _attack(lambda: _code("while (true) {}", timeout_ms=1000), 10)
    assert isinstance(error, NodeExecutionError), error
    assert "timed out after 1000 ms" in str(error)
    assert elapsed < 1.0 + MARGIN_S
    # The second of spinning was a child's CPU time, not the worker's (generous bounds: the
    # machine may be busy, and this process polls /proc meanwhile).
    spun, polled = _child_cpu_s() - children, _cpu_s() - own
    assert spun > 0.25 and polled < 0.5, (spun, polled)
    watch.assert_all_gone()


@pytest.mark.timeout(30)
def test_the_worker_kills_the_whole_sandbox_at_its_deadline() -> None:
    """V8's own timeout (30 s) comes too late: the worker's deadline kills pid 1, its namespace
    and its process group, and nothing is left."""
    limits = JavaScriptLimits(timeout_s=30, memory_mb=64, wall_s=1.0)
    inputs = SnippetInputs(names={}, shared={}, globals=())
    with _Watch() as watch:
        started = time.monotonic()
        result = run_javascript("const a = [1]; while (true) { a[0]++; }", inputs, limits)
        elapsed = time.monotonic() - started
    assert result.error is not None and result.error.kind == "timeout", result.error
    assert elapsed < 1.0 + MARGIN_S
    watch.assert_all_gone()
    assert len({group for group in watch.seen.values()}) >= 1


@pytest.mark.timeout(30)
def test_memory_outside_the_heap_is_bounded_by_the_child_data_limit() -> None:
    """Compiling a 20 MB source takes about 1.2 GB of parser memory that the heap limit never
    sees; in the worker it grew the process by that much. The child's RLIMIT_DATA stops it."""
    code = "const source = '1+'.repeat(1e7) + '1';\nreturn new Function('return ' + source)()"
    error, _, growth = _attack(lambda: _code(code, memory_mb=64), 20)
    assert isinstance(error, NodeExecutionError), error
    assert "exceeded its memory limit (64 MB)" in str(error)
    assert growth < 100, f"the worker grew by {growth} MB"
    assert _code("return 2")["output"] == 2


def test_the_child_reports_its_layers() -> None:
    sandbox = _code("return 1")["metadata"]["sandbox"]
    assert sandbox["engine"] == "v8" and sandbox["heap_limit_mb"] == 128
    assert sandbox["pid_namespace"] and sandbox["network_namespace"]  # this host has them all
    assert sandbox["landlock_abi"] >= 1 and sandbox["seccomp"]
    assert sandbox["capabilities_dropped"] and sandbox["process_limit"] == 16
    assert sandbox["data_limit_mb"] > 2 * 128


@pytest.mark.skipif(os.geteuid() != 0, reason="a non-root worker has bubblewrap-less layers")
def test_without_a_barrier_the_javascript_node_is_refused() -> None:
    """As root without bubblewrap, nothing gives the run a uid of its own: RLIMIT_NPROC would
    not hold, so mode `auto` refuses the snippet instead of running it."""
    settings = Settings(python_isolation="auto", code=CodeSettings(python_bwrap=""))
    with pytest.raises(NodeConfigurationError, match="JavaScript code nodes cannot be isolated"):
        _code("return 1", settings)
    none = Settings(python_isolation="none", code=CodeSettings(python_bwrap=""))
    output = _code("return 1", none)
    assert output["output"] == 1 and output["metadata"]["sandbox"]["mode"] == "none"
