"""JavaScript snippets in an embedded V8 isolate (`mini-racer`), with a time and memory limit.

Every run gets a fresh isolate: no state survives between snippets. Plain V8 has no I/O at all
(no `require`, `process`, `fetch`, file or socket API). Before the snippet runs, the harness
also removes what would escape the limits or outlive the run: `ArrayBuffer`, the typed arrays,
`SharedArrayBuffer`, `DataView`, `Atomics` and `WebAssembly` (their memory is allocated outside
the V8 heap, so the heap limit would not see it) and mini-racer's `setTimeout` (a timer that
fires after the isolate is closed). `console.*` writes to the captured stdout/stderr.
"""

import json
import re
import time
from typing import Any

from flowmaestro_dagster.nodes.sandbox import (
    FailureKind,
    SnippetError,
    SnippetInputs,
    SnippetResult,
)

PRELUDE_TIMEOUT_S = 10.0
LOGS_TIMEOUT_S = 1.0

_REMOVED_GLOBALS = (
    "ArrayBuffer",
    "SharedArrayBuffer",
    "DataView",
    "Atomics",
    "WebAssembly",
    "Int8Array",
    "Uint8Array",
    "Uint8ClampedArray",
    "Int16Array",
    "Uint16Array",
    "Int32Array",
    "Uint32Array",
    "Float16Array",
    "Float32Array",
    "Float64Array",
    "BigInt64Array",
    "BigUint64Array",
    "__timer_manager",
    "setTimeout",
    "clearTimeout",
)

# Runs before the snippet: removes globals, installs console capture, binds the inputs.
_PRELUDE = """
(function (data, removed, limit) {
  const g = globalThis;
  for (const name of removed) {
    try { delete g[name]; } catch (e) { /* checked below */ }
    if (name in g) g[name] = undefined;  // `var` globals cannot be deleted
  }
  const unavailable = (name) => () => {
    throw new Error(name + ' is not available in the code sandbox');
  };
  g.setTimeout = unavailable('setTimeout');
  g.clearTimeout = unavailable('clearTimeout');
  const stringify = JSON.stringify;
  const streams = { stdout: [], stderr: [] };
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
    streams[stream].push(line);
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
  const hidden = (name, value) =>
    Object.defineProperty(g, name, { value, enumerable: false, writable: false });
  hidden('__fm_finish', (v) =>
    (v !== null && typeof v === 'object' && typeof v.then === 'function')
      ? Promise.resolve(v).then(finish) : finish(v));
  hidden('__fm_logs', () => stringify({
    stdout: streams.stdout.join(''), stderr: streams.stderr.join(''), truncated,
  }));
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

    The snippet starts on line 1 of the source, so V8's line numbers are the snippet's own.
    """
    tail = "\n;return (typeof result === 'undefined' ? undefined : result);\n}"
    if _AWAIT.search(code):
        return f"(async function () {{{code}{tail})().then(__fm_finish)"
    return f"__fm_finish((function () {{{code}{tail})())"


def run_javascript(
    code: str,
    inputs: SnippetInputs,
    *,
    timeout_s: float,
    memory_mb: int,
    max_output_chars: int = 100_000,
    max_result_chars: int = 10_000_000,
) -> SnippetResult:
    """Run a snippet in a fresh isolate; failures come back in `SnippetResult.error`."""
    from py_mini_racer import JSPromise, MiniRacer
    from py_mini_racer._exc import MiniRacerBaseException

    data = {
        "inputs": inputs.names,
        "shared": inputs.shared,
        "globals": {name: inputs.names[name] for name in inputs.globals},
    }
    prelude = (
        f"{_PRELUDE}(JSON.parse({json.dumps(json.dumps(data, default=str))}), "
        f"{json.dumps(list(_REMOVED_GLOBALS))}, {int(max_output_chars)})"
    )
    max_memory = memory_mb * 1024 * 1024
    isolation = {"engine": "v8", "heap_limit_mb": memory_mb}
    context = MiniRacer()
    started = time.monotonic()
    error: SnippetError | None = None
    output: Any = None
    try:
        context.eval(prelude, timeout_sec=PRELUDE_TIMEOUT_S, max_memory=max_memory)
        started = time.monotonic()
        text = context.eval(wrap(code), timeout_sec=timeout_s, max_memory=max_memory)
        if isinstance(text, JSPromise):  # an async snippet: wait for it within the budget
            remaining = max(timeout_s - (time.monotonic() - started), 0.001)
            text = text.get(timeout=remaining)
        if not isinstance(text, str):
            error = SnippetError("result", "the snippet's value could not be turned into JSON")
        elif len(text) > max_result_chars:
            error = SnippetError(
                "result", f"the snippet's value is larger than {max_result_chars} characters"
            )
        else:
            output = json.loads(text).get("output")
    except (MiniRacerBaseException, TimeoutError) as exc:
        error = _classify(exc, timeout_s, memory_mb)
    duration_ms = round((time.monotonic() - started) * 1000, 1)
    try:
        logs = _logs(context)
    finally:
        context.close()
    return SnippetResult(
        output=output,
        stdout=logs.get("stdout", ""),
        stderr=logs.get("stderr", ""),
        error=error,
        duration_ms=duration_ms,
        truncated=bool(logs.get("truncated")),
        isolation=isolation,
    )


def _logs(context: Any) -> dict[str, Any]:
    """What `console` captured; empty when the isolate can no longer run (out of memory)."""
    from py_mini_racer._exc import MiniRacerBaseException

    try:
        text = context.eval("__fm_logs()", timeout_sec=LOGS_TIMEOUT_S)
    except (MiniRacerBaseException, TimeoutError):
        return {}
    try:
        value = json.loads(str(text))
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


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
        return SnippetError(
            "memory", f"the JavaScript snippet exceeded its memory limit ({memory_mb} MB)"
        )
    text = str(exc).strip()
    kind: FailureKind = "syntax" if isinstance(exc, JSParseException) else "exception"
    if not isinstance(exc, JSPromiseError | JSEvalException):
        kind = "result"
    first = text.splitlines()[0] if text else type(exc).__name__
    first = first.removeprefix("JavaScript rejected promise with reason: ")
    match = _ERROR_LINE.match(first)
    message = match.group(2) if match else first
    line = int(match.group(1)) if match else None
    return SnippetError(kind, message, type=message.split(":")[0], line=line, traceback=text)


__all__ = ["run_javascript", "wrap"]
