"""JavaScript in an embedded V8 isolate (`mini-racer`), with a time and memory budget.

`V8Isolate` is the one place V8 is driven; transform arrow functions (`run_js`) and code-node
snippets (`nodes/sandbox/javascript.py`) both run in a fresh one. Values cross the boundary as
JSON text; plain V8 has no I/O at all (no `require`, `process`, `fetch`, file or socket API).

Two things the isolate's own limits do not hold, and how they are held here:

* **Work after the synchronous part.** A timed-out `eval` terminates the JavaScript it started,
  but promise continuations (`await 0; while (true) {}`) and finalisers run afterwards, outside
  any eval, and no timeout covers them. So every evaluation is followed by `settle()` within the
  rest of the budget; when that does not come back, the isolate is still busy and `close()` is
  the hard stop: freeing the context terminates whatever runs and joins the isolate's thread.
  mini-racer's own event loop would deadlock here (its `JSPromise.get` and close both block on
  the busy isolate), so each isolate gets a private event loop thread that outlives the context.
* **Memory outside the V8 heap.** The hard memory limit compares the *heap* with `max_memory`
  after each garbage collection. `ArrayBuffer` and typed-array storage, `SharedArrayBuffer` and
  `WebAssembly` memory are allocated outside the heap (external memory) and never counted, so
  the isolate starts without those globals (`REMOVED_GLOBALS`), and without mini-racer's
  `setTimeout` (a timer would run after its evaluation). Creation fails closed if one remains.
"""

import asyncio
import json
import re
import threading
import time
from collections.abc import Coroutine
from typing import Any, TypeVar

from flowmaestro_dagster.errors import ExpressionError

DEFAULT_TIMEOUT_S = 5.0
DEFAULT_MAX_MEMORY = 128 * 1024 * 1024
SETUP_TIMEOUT_S = 10.0
MIN_SETTLE_S = 0.05

REMOVED_GLOBALS = (
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
    "Temporal",  # its objects (and every method's result) live outside the heap limit
    "__timer_manager",
    "setTimeout",
    "clearTimeout",
)
# Intl objects hold ICU state outside the heap limit (retaining DateTimeFormats grew a worker by
# 2.2 GB under a 128 MB cap), so a run may construct only this many; `toLocaleString` and
# friends keep working (their formatters are transient).
MAX_INTL_OBJECTS = 1000

# Removes REMOVED_GLOBALS, replaces the timers with functions that throw, counts what makes Intl
# objects (MAX_INTL_OBJECTS), and returns the names that could not be removed (there should be
# none: creation then refuses the isolate).
_LOCKDOWN = """
(function (removed, MAX_INTL) {
  const g = globalThis;
  for (const name of removed) {
    try { delete g[name]; } catch (e) { /* checked below */ }
    if (name in g) g[name] = undefined;  // `var` globals cannot be deleted
  }
  const unavailable = (name) => () => {
    throw new Error(name + ' is not available in the JavaScript sandbox');
  };
  g.setTimeout = unavailable('setTimeout');
  g.clearTimeout = unavailable('clearTimeout');
  let made = 0;
  const counted = (name) => {
    if (++made > MAX_INTL) {
      throw new RangeError('more than ' + MAX_INTL + ' Intl objects in one run (' + name +
        '): their memory is outside the memory limit of the JavaScript sandbox');
    }
  };
  const wrap = (owner, name, label) => {
    const original = owner[name];
    const wrapped = new Proxy(original, {
      construct(target, args, newTarget) {
        counted(label);
        return Reflect.construct(target, args, newTarget === wrapped ? target : newTarget);
      },
      apply(target, self, args) { counted(label); return Reflect.apply(target, self, args); },
    });
    Object.defineProperty(owner, name, {value: wrapped, writable: false, configurable: false});
    return wrapped;
  };
  if (g.Intl) {
    for (const name of Object.getOwnPropertyNames(g.Intl)) {
      const constructor = g.Intl[name];
      if (typeof constructor !== 'function' || !/^[A-Z]/.test(name)) continue;
      const wrapped = wrap(g.Intl, name, 'Intl.' + name);
      if (constructor.prototype) {  // `x.constructor` must not lead back to the original
        Object.defineProperty(constructor.prototype, 'constructor',
          {value: wrapped, writable: false, configurable: false});
      }
    }
    if (g.Intl.Segmenter) {  // each `segment()` holds an ICU break iterator
      wrap(g.Intl.Segmenter.prototype, 'segment', 'Intl.Segmenter.prototype.segment');
    }
    if (g.Intl.Locale) {  // these return new Locale objects
      for (const name of ['maximize', 'minimize']) {
        wrap(g.Intl.Locale.prototype, name, 'Intl.Locale.prototype.' + name);
      }
    }
  }
  return JSON.stringify(removed.filter(
    (name) => g[name] !== undefined && name !== 'setTimeout' && name !== 'clearTimeout'));
})
"""

_NOT_DEFINED = re.compile(r"ReferenceError: (\w+) is not defined")
_WHERE = re.compile(r"^<anonymous>:\d+: ")
_T = TypeVar("_T")


class V8Isolate:
    """A fresh V8 isolate with `REMOVED_GLOBALS` gone and a hard heap limit of `max_memory`.

    `eval` raises mini-racer's exceptions (`JSTimeoutException` when its time is up, also a
    `TimeoutError`). `close()` (also on leaving a `with` block) stops any JavaScript still
    running and frees the isolate; it returns only when the isolate's thread has ended.
    """

    def __init__(self, *, max_memory: int) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="flowmaestro-v8", daemon=True
        )
        self._thread.start()
        self._racer: Any = None
        try:
            self._racer = self._on_loop(self._open(max_memory))
            left = json.loads(
                str(
                    self.eval(
                        f"({_LOCKDOWN})({json.dumps(REMOVED_GLOBALS)}, {MAX_INTL_OBJECTS})",
                        SETUP_TIMEOUT_S,
                    )
                )
            )
            if left:
                raise RuntimeError(f"V8 globals could not be removed: {', '.join(left)}")
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> "V8Isolate":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def _open(self, max_memory: int) -> Any:
        from py_mini_racer import MiniRacer

        racer = MiniRacer()  # on this loop: mini-racer uses the running event loop
        racer.set_hard_memory_limit(max_memory)
        return racer

    def _on_loop(self, coroutine: Coroutine[Any, Any, _T]) -> _T:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result()

    def eval(self, source: str, timeout_s: float) -> Any:
        """The value of `source` (a primitive: return JSON text for anything else)."""
        from py_mini_racer import JSTimeoutException

        racer = self._racer

        async def run() -> Any:
            try:
                return await asyncio.wait_for(racer.eval_cancelable(source), timeout_s)
            except TimeoutError as exc:  # cancelling the evaluation terminated its JavaScript
                raise JSTimeoutException from exc

        return self._on_loop(run())

    def settle(self, timeout_s: float) -> None:
        """Wait until promise continuations and finalisers have run; `JSTimeoutException` if
        they have not within `timeout_s` (still running: only `close()` stops them)."""
        self.eval("0", max(timeout_s, MIN_SETTLE_S))

    @property
    def memory_exceeded(self) -> bool:
        """Whether the heap went over `max_memory` (V8 then terminated the JavaScript)."""

        async def reached() -> bool:
            return bool(self._racer.was_hard_memory_limit_reached())

        return self._racer is not None and self._on_loop(reached())

    def close(self) -> None:
        """Terminate whatever JavaScript still runs, free the isolate, end both threads."""
        if self._thread.ident is None or not self._thread.is_alive():
            return
        racer, self._racer = self._racer, None
        if racer is not None:

            async def free() -> None:
                racer.close()  # ~Context: TerminateExecution, then joins the isolate thread

            self._on_loop(free())
        # Callbacks the isolate sent while it shut down land on this loop (not a closed one).
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()


def explain(message: str) -> str:
    """A JavaScript error message, with why a removed global is missing."""
    match = _NOT_DEFINED.search(message)
    if match and match.group(1) in REMOVED_GLOBALS:
        return (
            f"{message}: ArrayBuffer, typed arrays, DataView, Atomics and WebAssembly are not "
            "available in the JavaScript sandbox, their memory would be outside its memory limit"
        )
    return message


def run_js(
    body: str,
    bindings: dict[str, Any],
    *,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    max_memory: int = DEFAULT_MAX_MEMORY,
) -> Any:
    """Evaluate `body` (a JS expression) with `bindings` as parameters; returns JSON data."""
    from py_mini_racer import JSTimeoutException
    from py_mini_racer._exc import MiniRacerBaseException

    names = list(bindings)
    params = ", ".join(names)
    args = ", ".join(json.dumps(bindings[n], default=str) for n in names)
    source = f"JSON.stringify(((function({params}) {{ return ({body}); }})({args})) ?? null)"
    with V8Isolate(max_memory=max_memory) as isolate:
        started = time.monotonic()
        try:
            text = isolate.eval(source, timeout_s)
            isolate.settle(timeout_s - (time.monotonic() - started))
        except (MiniRacerBaseException, TimeoutError) as exc:
            if isolate.memory_exceeded:
                message = f"exceeded its memory limit ({max_memory // (1024 * 1024)} MB)"
            elif isinstance(exc, JSTimeoutException | TimeoutError):
                message = f"timed out after {round(timeout_s * 1000)} ms"
            else:
                detail = str(exc).strip()
                first = detail.splitlines()[0] if detail else type(exc).__name__
                message = explain(_WHERE.sub("", first))
            raise ExpressionError(f"JavaScript error: {message}") from exc
    if text is None:
        return None
    return json.loads(str(text))


__all__ = ["REMOVED_GLOBALS", "V8Isolate", "explain", "run_js"]
