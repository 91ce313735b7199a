"""JavaScript snippets in an embedded V8 isolate (`mini-racer`), with a time and memory limit.

Every run gets a fresh `V8Isolate` (flowmaestro_dagster/lang/js.py): no state survives between
snippets, plain V8 has no I/O at all (no `require`, `process`, `fetch`, file or socket API), and
`ArrayBuffer`, the typed arrays, `SharedArrayBuffer`, `DataView`, `Atomics`, `WebAssembly` and
the timers are gone before the snippet runs (their memory would be outside the heap limit, a
timer would run after the snippet). `console.*` writes to the captured stdout/stderr.

The time limit covers the whole snippet, `await` continuations included: after the snippet's
synchronous part the harness asks for its report within the rest of the budget, and when the
isolate is still busy (`await 0; while (true) {}`) the run is a timeout and closing the isolate
terminates the JavaScript.
"""

import json
import re
import time
from typing import Any

from flowmaestro_dagster.lang.js import MIN_SETTLE_S, V8Isolate, explain
from flowmaestro_dagster.nodes.sandbox import (
    FailureKind,
    SnippetError,
    SnippetInputs,
    SnippetResult,
)

PRELUDE_TIMEOUT_S = 10.0
LOGS_TIMEOUT_S = 1.0

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


__all__ = ["run_javascript", "wrap"]
