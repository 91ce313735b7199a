"""Sandboxes for code-node snippets: JavaScript in an embedded V8, Python in a child process.

Both take the same inputs (a JSON object of names, the shared-memory view, the names to bind
as globals) and return a `SnippetResult`; neither raises for a failing snippet, so the executor
decides what a failure means for the node. See docs/node-types.md (code) for the contract.
"""

from dataclasses import dataclass, field
from typing import Any, Literal

FailureKind = Literal[
    "exception",  # the snippet raised / threw
    "syntax",  # the snippet does not parse
    "timeout",  # wall-clock or CPU time limit
    "memory",  # memory limit
    "result",  # the value is not JSON data or is too large
    "crash",  # the sandbox process died without a result
    "unavailable",  # the sandbox cannot run here
]


@dataclass(frozen=True)
class SnippetError:
    kind: FailureKind
    message: str
    type: str | None = None
    line: int | None = None
    traceback: str | None = None


@dataclass(frozen=True)
class SnippetResult:
    output: Any = None
    stdout: str = ""
    stderr: str = ""
    error: SnippetError | None = None
    duration_ms: float = 0.0
    truncated: bool = False
    isolation: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass(frozen=True)
class SnippetInputs:
    """What a snippet sees: `inputs` (also `variables`), `shared`, and names bound as globals."""

    names: dict[str, Any]
    shared: dict[str, Any]
    globals: tuple[str, ...]


def truncate(text: str, limit: int) -> tuple[str, bool]:
    """At most `limit` characters of `text`, and whether anything was cut."""
    if len(text) <= limit:
        return text, False
    return text[:limit] + "\n[... output truncated]", True


__all__ = ["FailureKind", "SnippetError", "SnippetInputs", "SnippetResult", "truncate"]
