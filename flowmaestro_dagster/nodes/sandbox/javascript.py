"""JavaScript snippets in an embedded V8 isolate (`mini-racer`), in a sandboxed child process.

`run_javascript` (the worker's side) starts `javascript_child.py` through the Python sandbox's
launcher (`python.run_child`): the same bubblewrap namespaces, own uid, Landlock, seccomp,
resource limits, process-group and pid-1 teardown, empty environment (docs/sandbox.md). The
child calls `run_in_isolate` (below) and sends back its `SnippetResult`; the worker never runs
V8 for a code node. (JavaScript transforms stay in the worker: `lang/js.py`'s `run_js`.)

`run_in_isolate` gives every run a fresh `V8Isolate` (flowmaestro_dagster/lang/js.py): no state
survives between snippets, plain V8 has no I/O at all (no `require`, `process`, `fetch`, file
or socket API), and `ArrayBuffer`, the typed arrays, `SharedArrayBuffer`, `DataView`,
`Atomics`, `WebAssembly` and the timers are gone before the snippet runs (their memory would be
outside the heap limit, a timer would run after the snippet). `console.*` writes to the
captured stdout/stderr.

The time limit covers the whole snippet, `await` continuations included: after the snippet's
synchronous part the harness asks for its report within the rest of the budget, and when the
isolate is still busy (`await 0; while (true) {}`) the run is a timeout and closing the isolate
terminates the JavaScript. Should that ever fail, the worker kills the child's whole sandbox at
`timeout` + `GRACE_S`.

This module is imported in the child too, so it imports only what the child has: the launcher
(`python.py`, with `subprocess` and `logging`) is imported where the worker uses it.
"""

import functools
import importlib.util
import json
import math
import os
import re
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, get_args

from flowmaestro_dagster.lang.js import MIN_SETTLE_S, V8Isolate, explain
from flowmaestro_dagster.nodes.sandbox import (
    FailureKind,
    SnippetError,
    SnippetInputs,
    SnippetResult,
)

if TYPE_CHECKING:
    from flowmaestro_dagster.nodes.sandbox.python import ChildRun

PRELUDE_TIMEOUT_S = 10.0
LOGS_TIMEOUT_S = 1.0
# The worker's deadline is the snippet's `timeout` plus this (child start-up, about 0.1 s idle,
# the inputs' prelude and the report) plus a second per INPUT_BYTES_PER_S of inputs.
GRACE_S = 2.0
INPUT_BYTES_PER_S = 20_000_000
# What the child may use besides the heap limit, in RLIMIT_DATA (the data segment: writable
# private memory, committed or not), on top of what it has once its isolate exists (512 MB of
# that is V8's code range). The heap limit is checked after garbage collections, so the heap
# overshoots it: with less than `memory` + 64 MB on top, V8 dies of its own out-of-memory
# instead of reporting the heap limit (measured on mini-racer 0.14 at 64, 128 and 512 MB).
DATA_HEADROOM_BYTES = 64 * 1024 * 1024
MAX_THREADS = 16  # RLIMIT_NPROC: V8 runs --single-threaded; the child has 3 threads
MAX_OPEN_FILES = 64
# The modules the child imports (their files are all it sees of the platform).
CHILD_MODULES = (
    "flowmaestro_dagster.errors",
    "flowmaestro_dagster.lang",
    "flowmaestro_dagster.lang.js",
    "flowmaestro_dagster.nodes.sandbox",
    "flowmaestro_dagster.nodes.sandbox.javascript",
    "flowmaestro_dagster.nodes.sandbox.python_child",
)
_V8_OUT_OF_MEMORY = re.compile(r"Fatal (JavaScript|process) out of memory|Oilpan: Out of memory")

# Runs before the snippet: installs console capture, the result hooks, binds the inputs.
_PRELUDE = """
(function (data, limit) {
  const g = globalThis;
  const stringify = JSON.stringify;
  const streams = { stdout: '', stderr: '' };  // strings: no prototype method to replace
  const sizes = { stdout: 0, stderr: 0 };
  let truncated = false;
  const show = (v) => {
    if (typeof v === 'string') return v;
    if (v === undefined) return 'undefined';
    if (typeof v === 'function') return '[Function]';
    if (typeof v === 'bigint') return v.toString() + 'n';
    if (v instanceof Error) return v.stack || String(v);
    try { const s = stringify(v); return s === undefined ? String(v) : s; }
    catch (e) { return String(v); }
  };
  const writer = (stream) => (...args) => {
    if (sizes[stream] >= limit) { truncated = true; return; }
    const line = args.map(show).join(' ') + '\\n';
    sizes[stream] += line.length;
    streams[stream] += line;
  };
  const out = writer('stdout'), err = writer('stderr');
  g.console = Object.freeze({
    log: out, info: out, debug: out, trace: out, dir: out, table: out,
    warn: err, error: err,
  });
  const replacer = (key, value) => {
    if (typeof value === 'bigint') return value.toString();
    if (value instanceof Map) return Object.fromEntries(value);
    if (value instanceof Set) return Array.from(value);
    if (value instanceof Error) return { name: value.name, message: value.message };
    return value;
  };
  const finish = (v) => stringify({ output: v === undefined ? null : v }, replacer);
  const describe = (e) => {
    if (e !== null && typeof e === 'object') {
      if (typeof e.stack === 'string') return e.stack;
      try { const s = stringify(e); if (s !== undefined) return s; } catch (x) { /* below */ }
    }
    try { return String(e); } catch (x) { return 'a value that cannot be shown'; }
  };
  // How the snippet's promise ended; null when its value was not a promise.
  let outcome = null;
  const hidden = (name, value) =>
    Object.defineProperty(g, name, { value, enumerable: false, writable: false });
  hidden('__fm_finish', (v) => {
    if (v === null || typeof v !== 'object' || typeof v.then !== 'function') return finish(v);
    outcome = { state: 'pending' };
    Promise.resolve(v).then(finish).then(
      (text) => { outcome = { state: 'ok', text }; },
      (e) => { outcome = { state: 'error', reason: describe(e) }; });
    return undefined;
  });
  hidden('__fm_report', () => stringify({
    stdout: streams.stdout, stderr: streams.stderr, truncated,
    state: outcome === null ? 'none' : outcome.state,
    reason: outcome === null ? null : (outcome.reason ?? null),
  }));
  hidden('__fm_output', () => (outcome === null ? undefined : outcome.text));
  g.inputs = data.inputs;
  g.variables = data.inputs;
  g.shared = data.shared;
  for (const [name, value] of Object.entries(data.globals)) {
    if (!(name in g)) g[name] = value;
  }
})
"""

_ERROR_LINE = re.compile(r"^<anonymous>:(\d+): (.*)$")
_AWAIT = re.compile(r"\bawait\b")


def wrap(code: str) -> str:
    """The snippet as one expression: `return x` and a `result` variable both give the value.

    The snippet starts on line 1 of the source, so V8's line numbers are the snippet's own. A
    snippet that uses `await` is an async function: its value is a promise, which `__fm_finish`
    settles into the report instead of returning the value's JSON.
    """
    tail = "\n;return (typeof result === 'undefined' ? undefined : result);\n}"
    kind = "async function" if _AWAIT.search(code) else "function"
    return f"__fm_finish(({kind} () {{{code}{tail})())"


@dataclass(frozen=True)
class JavaScriptLimits:
    timeout_s: float
    memory_mb: int
    max_output_chars: int = 100_000
    max_result_chars: int = 10_000_000
    isolation: Literal["auto", "none"] = "auto"  # FLOWMAESTRO_PYTHON_ISOLATION: both languages
    bwrap: str = "bwrap"
    uid_base: int = 0x70000000
    wall_s: float | None = None  # the worker's deadline; None: timeout + GRACE_S (+ inputs)


def run_javascript(
    code: str,
    inputs: SnippetInputs,
    limits: JavaScriptLimits,
    *,
    scratch_root: str | None = None,
    executable: str | None = None,
) -> SnippetResult:
    """Run a snippet in a sandboxed child process; failures come back in `.error`."""
    from flowmaestro_dagster.nodes.sandbox import python as launcher

    if limits.isolation == "none":
        launcher.warn_unisolated()
    paths = _child_paths()
    # Sizes of the JSON the child writes: the result, and the logs (6 bytes a character at
    # most, as \uXXXX); RLIMIT_FSIZE holds the result file to that.
    result_bytes = 6 * (limits.max_result_chars + 2 * limits.max_output_chars) + (1 << 20)
    data = json.dumps(
        {"names": inputs.names, "shared": inputs.shared, "globals": list(inputs.globals)},
        default=str,
    )
    request = {
        "code": code,
        "inputs": data,
        "timeout_s": limits.timeout_s,
        "memory_mb": limits.memory_mb,
        "max_output_chars": limits.max_output_chars,
        "max_result_chars": limits.max_result_chars,
        "root": paths["root"],
        "site": paths["site"],
        "read_dirs": [paths["v8"]],
        "cpu_seconds": math.ceil(limits.timeout_s + GRACE_S),
        "max_file_bytes": result_bytes,
        "max_open_files": MAX_OPEN_FILES,
        "max_processes": MAX_THREADS,
        "data_headroom_bytes": DATA_HEADROOM_BYTES,
    }
    wall_s = limits.wall_s
    if wall_s is None:
        wall_s = limits.timeout_s + GRACE_S + len(data) / INPUT_BYTES_PER_S
    run = launcher.run_child(
        _child_source(),
        request,
        isolation=limits.isolation,
        bwrap=limits.bwrap,
        uid_base=limits.uid_base,
        wall_s=wall_s,
        max_output_chars=limits.max_output_chars,
        read_only=tuple(paths["files"]),
        # V8 takes its local time zone from TZ, as it did in the worker (not a secret).
        env={"TZ": os.environ["TZ"]} if os.environ.get("TZ") else None,
        scratch_root=scratch_root,
        executable=executable,
    )
    return _from_child(run, limits, launcher.no_result_error)


def _from_child(
    run: "ChildRun", limits: JavaScriptLimits, no_result: Callable[[str, int, str], SnippetError]
) -> SnippetResult:
    """The child's `SnippetResult`, or why there is none (time, memory, a crash)."""
    limit_ms = round(limits.timeout_s * 1000)
    timeout = SnippetError("timeout", f"the JavaScript snippet timed out after {limit_ms} ms")
    envelope = run.envelope
    if run.timed_out or envelope is None or "error" not in envelope:
        if run.timed_out or run.returncode in (-signal.SIGXCPU, -signal.SIGKILL):
            failure = timeout
        elif _V8_OUT_OF_MEMORY.search(run.stderr):
            failure = _memory_error(limits.memory_mb)
        else:
            failure = no_result("JavaScript", run.returncode, run.stderr)
        isolation = envelope.get("isolation", {}) if envelope else {}
        return SnippetResult(error=failure, duration_ms=run.duration_ms, isolation=isolation)
    error = _child_error(envelope["error"])
    return SnippetResult(
        output=envelope.get("output") if error is None else None,
        stdout=str(envelope.get("stdout", "")),
        stderr=str(envelope.get("stderr", "")),
        error=error,
        duration_ms=float(envelope.get("duration_ms", run.duration_ms)),
        truncated=bool(envelope.get("truncated")),
        isolation=envelope.get("isolation", {}),
    )


def _child_error(found: Any) -> SnippetError | None:
    """The child's `SnippetError`, sent as a dict (None: the snippet succeeded)."""
    if not isinstance(found, dict):
        return None
    kind: FailureKind = found["kind"] if found.get("kind") in get_args(FailureKind) else "result"
    return SnippetError(
        kind,
        str(found.get("message") or ""),
        type=found.get("type"),
        line=found.get("line"),
        traceback=found.get("traceback"),
    )


@functools.cache
def _child_source() -> str:
    with open(
        os.path.join(os.path.dirname(__file__), "javascript_child.py"), encoding="utf-8"
    ) as f:
        return f.read()


@functools.cache
def _child_paths() -> dict[str, Any]:
    """Where the child finds the platform's modules and mini-racer, and the files it needs:
    the modules of `CHILD_MODULES` (and their byte code, when compiled) and mini-racer."""
    files = []
    for name in CHILD_MODULES:
        spec = importlib.util.find_spec(name)
        assert spec is not None and spec.origin, name
        source = os.path.realpath(spec.origin)
        files.append(source)
        cached = importlib.util.cache_from_source(source)
        if os.path.exists(cached):
            files.append(cached)
    spec = importlib.util.find_spec("py_mini_racer")
    assert spec is not None and spec.submodule_search_locations
    v8 = os.path.realpath(next(iter(spec.submodule_search_locations)))
    package = importlib.util.find_spec("flowmaestro_dagster")
    assert package is not None and package.submodule_search_locations
    return {
        "root": os.path.dirname(os.path.realpath(next(iter(package.submodule_search_locations)))),
        "site": os.path.dirname(v8),
        "v8": v8,
        "files": [*files, v8],
    }


def run_in_isolate(
    code: str,
    inputs: SnippetInputs,
    *,
    timeout_s: float,
    memory_mb: int,
    max_output_chars: int = 100_000,
    max_result_chars: int = 10_000_000,
    on_isolate: Callable[[], None] | None = None,
) -> SnippetResult:
    """Run a snippet in a fresh isolate in this process (the sandbox's child calls it);
    failures come back in `SnippetResult.error`. `on_isolate` runs once the isolate exists,
    before any of the snippet's data is in it (the child sets its memory limit there)."""
    from py_mini_racer import JSPromiseError, JSTimeoutException
    from py_mini_racer._exc import MiniRacerBaseException

    data = {
        "inputs": inputs.names,
        "shared": inputs.shared,
        "globals": {name: inputs.names[name] for name in inputs.globals},
    }
    prelude = (
        f"{_PRELUDE}(JSON.parse({json.dumps(json.dumps(data, default=str))}), "
        f"{int(max_output_chars)})"
    )
    isolation = {"engine": "v8", "heap_limit_mb": memory_mb}
    error: SnippetError | None = None
    output: Any = None
    report: dict[str, Any] | None = None
    busy = False  # JavaScript still running when the time was up: only closing stops it
    started = time.monotonic()
    with V8Isolate(max_memory=memory_mb * 1024 * 1024) as isolate:
        if on_isolate is not None:
            on_isolate()
        try:
            isolate.eval(prelude, PRELUDE_TIMEOUT_S)
            started = time.monotonic()
            text = isolate.eval(wrap(code), timeout_s)
            # Queued behind the promise continuations: it runs once they have all run.
            report = _report(isolate, max(timeout_s - (time.monotonic() - started), MIN_SETTLE_S))
            if report is None:
                busy = True
                raise JSTimeoutException
            state = report.get("state")
            if state == "error":
                raise JSPromiseError(report.get("reason"))
            if state == "ok":
                text = isolate.eval("__fm_output()", LOGS_TIMEOUT_S)
            if state == "pending":
                error = SnippetError(
                    "exception",
                    "the JavaScript snippet awaits a promise that never settles "
                    "(the sandbox has no timers or I/O)",
                )
            else:
                output, error = _output(text, max_result_chars)
        except (MiniRacerBaseException, TimeoutError) as exc:
            error = _classify(exc, timeout_s, memory_mb)
        duration_ms = round((time.monotonic() - started) * 1000, 1)
        if report is None and not busy:
            report = _report(isolate, LOGS_TIMEOUT_S)
        if isolate.memory_exceeded:
            error = _memory_error(memory_mb)
    logs = report or {}
    return SnippetResult(
        output=output,
        stdout=logs.get("stdout", ""),
        stderr=logs.get("stderr", ""),
        error=error,
        duration_ms=duration_ms,
        truncated=bool(logs.get("truncated")),
        isolation=isolation,
    )


def _output(text: Any, max_result_chars: int) -> tuple[Any, SnippetError | None]:
    if not isinstance(text, str):
        return None, SnippetError("result", "the snippet's value could not be turned into JSON")
    if len(text) > max_result_chars:
        return None, SnippetError(
            "result", f"the snippet's value is larger than {max_result_chars} characters"
        )
    return json.loads(text).get("output"), None


def _report(isolate: V8Isolate, timeout_s: float) -> dict[str, Any] | None:
    """What `console` captured and how the snippet's promise ended; None while JavaScript is
    still running after `timeout_s`; empty when the isolate cannot run (out of memory)."""
    from py_mini_racer._exc import MiniRacerBaseException

    try:
        text = isolate.eval("__fm_report()", timeout_s)
    except TimeoutError:
        return None
    except MiniRacerBaseException:
        return {}
    try:
        value = json.loads(str(text))
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _memory_error(memory_mb: int) -> SnippetError:
    return SnippetError(
        "memory", f"the JavaScript snippet exceeded its memory limit ({memory_mb} MB)"
    )


def _classify(exc: Exception, timeout_s: float, memory_mb: int) -> SnippetError:
    from py_mini_racer import (
        JSEvalException,
        JSOOMException,
        JSParseException,
        JSPromiseError,
        JSTimeoutException,
    )

    if isinstance(exc, JSTimeoutException | TimeoutError):
        limit_ms = round(timeout_s * 1000)
        return SnippetError("timeout", f"the JavaScript snippet timed out after {limit_ms} ms")
    if isinstance(exc, JSOOMException):
        return _memory_error(memory_mb)
    text = str(exc).strip()
    kind: FailureKind = "syntax" if isinstance(exc, JSParseException) else "exception"
    if not isinstance(exc, JSPromiseError | JSEvalException):
        kind = "result"
    first = text.splitlines()[0] if text else type(exc).__name__
    first = first.removeprefix("JavaScript rejected promise with reason: ")
    match = _ERROR_LINE.match(first)
    message = explain(match.group(2) if match else first)
    line = int(match.group(1)) if match else None
    return SnippetError(kind, message, type=message.split(":")[0], line=line, traceback=text)


__all__ = ["JavaScriptLimits", "run_in_isolate", "run_javascript", "wrap"]
