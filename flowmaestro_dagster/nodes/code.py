"""code nodes: JavaScript in an embedded V8 isolate and Python in an interpreter, each in an
isolated child process (docs/sandbox.md).

What a snippet sees (both languages, see docs/node-types.md):

* `inputs` (also `variables`): every name a `{{...}}` reference could resolve at this node,
  with the value it would resolve to: execution inputs, node outputs by node id, the top-level
  keys of node outputs (first writer wins) and loop variables (`item`, `index`, ...). In Python
  it is a dict whose keys also read as attributes (`inputs.customer.name`).
* `shared`: shared memory as the writes upstream left it.
* each of those names that is a plain identifier, as a global (`input.data.number`), unless it
  would shadow a builtin of the language or is `result`.

The value is what the snippet `return`s (a top-level `return`), else its `result` variable.
The node's output is `{output, stdout, stderr, metadata}` under `outputVariable`; when the
value is an object its keys are also copied beside those four (which win on a clash), so
`{{x.nextState}}` works as the corpus expects as well as `{{x.output.nextState}}`.
"""

import builtins
import keyword
import re
from collections.abc import Iterable, Mapping
from typing import Any

from flowmaestro_dagster.errors import NodeConfigurationError, NodeExecutionError
from flowmaestro_dagster.lang.expressions import Unresolved
from flowmaestro_dagster.lang.state import ExecutionState
from flowmaestro_dagster.nodes.base import Executor, NodeContext, NodeResult, wrap_output
from flowmaestro_dagster.nodes.sandbox import SnippetInputs, SnippetResult
from flowmaestro_dagster.nodes.sandbox.javascript import JavaScriptLimits, run_javascript
from flowmaestro_dagster.nodes.sandbox.python import PythonLimits, run_python
from flowmaestro_dagster.settings import CodeSettings
from flowmaestro_dagster.spec.configs import CodeConfig

ENVELOPE_KEYS = ("output", "stdout", "stderr", "metadata")
RESERVED_GLOBALS = frozenset({"result", "inputs", "variables", "shared"})
_JS_IDENTIFIER = re.compile(r"^[A-Za-z_$][A-Za-z0-9_$]*$")
_JS_RESERVED = frozenset(
    {
        "break",
        "case",
        "catch",
        "class",
        "const",
        "continue",
        "debugger",
        "default",
        "delete",
        "do",
        "else",
        "enum",
        "export",
        "extends",
        "false",
        "finally",
        "for",
        "function",
        "if",
        "implements",
        "import",
        "in",
        "instanceof",
        "interface",
        "let",
        "new",
        "null",
        "package",
        "private",
        "protected",
        "public",
        "return",
        "static",
        "super",
        "switch",
        "this",
        "throw",
        "true",
        "try",
        "typeof",
        "var",
        "void",
        "while",
        "with",
        "yield",
        "await",
        "arguments",
        "eval",
        "undefined",
        "NaN",
        "Infinity",
        "globalThis",
        "console",
    }
)


def snippet_names(state: ExecutionState) -> dict[str, Any]:
    """Every root name a reference could resolve here, with the value it resolves to."""
    candidates: dict[str, None] = {}
    for name in (*state.scope, *state.outputs, *state.inputs):
        candidates[str(name)] = None
    for value in state.outputs.values():
        for item in value if isinstance(value, list) else [value]:
            if isinstance(item, dict):
                for key in item:
                    candidates[str(key)] = None
    names: dict[str, Any] = {}
    for name in candidates:
        try:
            names[name] = state.lookup(name)
        except Unresolved:
            continue
    return names


def global_names(names: Iterable[str], language: str) -> tuple[str, ...]:
    """The names bound as globals: identifiers that shadow nothing of the language."""
    chosen = []
    for name in names:
        if name in RESERVED_GLOBALS:
            continue
        if language == "python":
            if name.isidentifier() and not keyword.iskeyword(name) and not hasattr(builtins, name):
                chosen.append(name)
        elif _JS_IDENTIFIER.match(name) and name not in _JS_RESERVED:
            chosen.append(name)  # names V8 already defines are skipped inside the isolate
    return tuple(chosen)


def execute_code(ctx: NodeContext) -> NodeResult:
    config = ctx.typed_config(CodeConfig)
    limits = ctx.settings.code
    code = config.code if isinstance(config.code, str) else ""
    if not code.strip():
        raise ctx.error("the code node has no code", NodeConfigurationError)
    timeout_ms = min(float(config.timeout_ms), float(limits.max_timeout_ms))
    memory_mb = int(min(config.memory_mb or limits.default_memory_mb, limits.max_memory_mb))
    names = snippet_names(ctx.state)
    inputs = SnippetInputs(
        names=names,
        shared=ctx.state.memory_view(),
        globals=global_names(names, config.language),
    )
    if config.language == "python":
        result = _python(ctx, code, inputs, limits, timeout_ms, memory_mb)
    else:
        result = run_javascript(
            code,
            inputs,
            JavaScriptLimits(
                timeout_s=timeout_ms / 1000,
                memory_mb=memory_mb,
                max_output_chars=limits.max_output_chars,
                max_result_chars=limits.max_result_chars,
                isolation=ctx.settings.python_isolation,
                bwrap=limits.python_bwrap,
                uid_base=limits.python_uid_base,
            ),
            scratch_root=str(limits.scratch_dir) if limits.scratch_dir else None,
        )
    metadata = {
        "language": config.language,
        "durationMs": result.duration_ms,
        "timeoutMs": round(timeout_ms),
        "memoryMb": memory_mb,
        "truncated": result.truncated,
        "sandbox": result.isolation,
    }
    if result.error is not None:
        raise _failure(ctx, config.language, result, metadata)
    envelope = {
        "output": result.output,
        "stdout": result.stdout,
        "stderr": result.stderr,
        "metadata": metadata,
    }
    value: dict[str, Any] = {}
    if isinstance(result.output, Mapping):
        value.update(result.output)
    value.update(envelope)
    return NodeResult(wrap_output(value, config.output_variable))


def _python(
    ctx: NodeContext,
    code: str,
    inputs: SnippetInputs,
    limits: CodeSettings,
    timeout_ms: float,
    memory_mb: int,
) -> SnippetResult:
    if not limits.python_enabled:
        raise ctx.error(
            "Python snippets are disabled in this deployment (FLOWMAESTRO_CODE__PYTHON_ENABLED)",
            NodeConfigurationError,
        )
    return run_python(
        code,
        inputs,
        PythonLimits(
            timeout_s=timeout_ms / 1000,
            memory_mb=memory_mb,
            max_file_bytes=limits.python_max_file_mb * 1024 * 1024,
            max_files=limits.python_max_files,
            max_output_chars=limits.max_output_chars,
            max_processes=limits.python_max_processes,
            isolation=ctx.settings.python_isolation,
            bwrap=limits.python_bwrap,
            uid_base=limits.python_uid_base,
        ),
        scratch_root=str(limits.scratch_dir) if limits.scratch_dir else None,
    )


def _failure(
    ctx: NodeContext, language: str, result: SnippetResult, metadata: dict[str, Any]
) -> NodeExecutionError:
    """A permanent failure: the same snippet on the same inputs fails the same way."""
    error = result.error
    assert error is not None
    where = f" (line {error.line})" if error.line else ""
    name = "JavaScript" if language == "javascript" else "Python"
    if error.kind in ("timeout", "memory", "unavailable", "crash"):
        message = error.message
    elif error.kind == "syntax":
        message = f"the {name} snippet does not parse: {error.message}{where}"
    elif error.kind == "result":
        message = f"the {name} snippet's value cannot be used: {error.message}"
    else:
        message = f"the {name} snippet failed: {error.message}{where}"
    details = {
        "reason": error.kind,
        "stdout": result.stdout[-2000:],
        "stderr": result.stderr[-2000:],
        "traceback": (error.traceback or "")[-2000:],
        "metadata": metadata,
    }
    cls = NodeConfigurationError if error.kind in ("syntax", "unavailable") else NodeExecutionError
    return ctx.error(message, cls, details=details)


EXECUTORS: Mapping[str, Executor] = {"code": execute_code}
