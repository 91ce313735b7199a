"""JavaScript snippets (transform arrow functions) in an embedded V8 isolate.

Each call gets a fresh context with a time and memory limit and no I/O at all; values cross
the boundary as JSON.
"""

import json
from typing import Any

from flowmaestro_dagster.errors import ExpressionError

DEFAULT_TIMEOUT_S = 5.0
DEFAULT_MAX_MEMORY = 128 * 1024 * 1024


def run_js(
    body: str,
    bindings: dict[str, Any],
    *,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    max_memory: int = DEFAULT_MAX_MEMORY,
) -> Any:
    """Evaluate `body` (a JS expression) with `bindings` as parameters; returns JSON data."""
    from py_mini_racer import MiniRacer

    names = list(bindings)
    params = ", ".join(names)
    args = ", ".join(json.dumps(bindings[n], default=str) for n in names)
    source = f"JSON.stringify(((function({params}) {{ return ({body}); }})({args})) ?? null)"
    context = MiniRacer()
    try:
        text = context.eval(source, timeout_sec=timeout_s, max_memory=max_memory)
    except Exception as exc:  # py_mini_racer's errors have no common public base
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ExpressionError(f"JavaScript error: {message}") from exc
    finally:
        context.close()
    if text is None:
        return None
    return json.loads(str(text))
