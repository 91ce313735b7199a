"""One `node_attempts` row per attempt of a node, written by the op adapter when it ends.

The row says what the node was given (its config with `{{...}}` resolved, secrets redacted),
what it produced (capped), what it logged through its context's logger (capped), and for a
failure the error with its stack and what the retry policy decided. It costs one INSERT per
attempt, made through the `attempts` service (the platform's code locations bind
`store.attempts.DatabaseAttemptStore`; without it nothing is recorded), and a failure to
record it is a warning: the node's outcome never depends on its bookkeeping.
"""

import json
import logging
import traceback
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from flowmaestro_dagster.adapter.retries import RetryDecision
from flowmaestro_dagster.lang import templates
from flowmaestro_dagster.lang.expressions import Budget, Limits
from flowmaestro_dagster.lang.state import ExecutionState
from flowmaestro_dagster.nodes.base import settings_of
from flowmaestro_dagster.runtime.plan import NodePlan
from flowmaestro_dagster.runtime.runner import NodeOutcome, RunContext

ATTEMPTS_SERVICE = "attempts"
OUTPUT_CAP_BYTES = 64 * 1024  # of JSON, for the output and for the inputs
LOG_LINES_CAP = 200
LOG_LINE_CHARS = 2000
STACK_CHARS = 16_000
REDACTED = "***"
# Key names (lower case, without `_` and `-`) whose values are credentials; the HTTP node's
# list of credential headers (nodes/http.py) with the compound names configs use.
_SENSITIVE = (
    "password",
    "passwd",
    "secret",
    "token",
    "apikey",
    "authorization",
    "credential",
    "cookie",
    "privatekey",
    "accesskey",
    "signature",
)
_PAIR_NAMES = ("key", "name", "header")  # [{key: "Authorization", value: "..."}] lists


def _now() -> datetime:
    return datetime.now(UTC)


class AttemptStore(Protocol):
    def record(self, values: Mapping[str, Any]) -> None: ...


class CapturingLogger(logging.Logger):
    """The node's logger: every line still goes to `inner` (Dagster's log manager), and the
    first `LOG_LINES_CAP` lines at INFO and above are kept for the attempt's row."""

    def __init__(self, inner: logging.Logger) -> None:
        super().__init__(inner.name, logging.NOTSET)
        self.inner = inner
        self.lines: list[dict[str, Any]] = []
        self.dropped = 0

    def isEnabledFor(self, level: int) -> bool:
        return level >= logging.INFO or self.inner.isEnabledFor(level)

    def _log(
        self,
        level: int,
        msg: object,
        args: Any,
        exc_info: Any = None,
        extra: Mapping[str, object] | None = None,
        stack_info: bool = False,
        stacklevel: int = 1,
    ) -> None:
        if level >= logging.INFO:
            if len(self.lines) < LOG_LINES_CAP:
                try:
                    text = str(msg) % args if args else str(msg)
                except (TypeError, ValueError):
                    text = str(msg)
                self.lines.append(
                    {
                        "at": _now().isoformat(),
                        "level": logging.getLevelName(level),
                        "message": text[:LOG_LINE_CHARS],
                    }
                )
            else:
                self.dropped += 1
        if self.inner.isEnabledFor(level):
            self.inner.log(
                level,
                msg,
                *(args if isinstance(args, tuple) else (args,) if args else ()),
                exc_info=exc_info,
                extra=extra,
                stack_info=stack_info,
                stacklevel=stacklevel + 1,
            )


@dataclass
class Attempt:
    """An attempt under way; `finished` / `failed` record it once."""

    store: AttemptStore
    plan: NodePlan
    state: ExecutionState
    run: RunContext
    log: CapturingLogger
    upstream: tuple[str, ...]
    started_at: datetime = field(default_factory=_now)

    def finished(self, outcome: NodeOutcome) -> None:
        """After `run_node` returned: succeeded, or parked at a waitpoint."""
        if outcome.result.parked is not None:
            self._record("parked", output=None)
        else:
            self._record("succeeded", output=outcome.state.outputs.get(self.plan.node_id))

    def failed(self, exc: BaseException, decision: RetryDecision, handled_by: str) -> None:
        """After the attempt raised: retried (after the chosen wait), handled or failed."""
        status = "retrying" if decision.retry else "failed" if handled_by == "fail" else "handled"
        stack = "".join(traceback.format_exception(exc))
        self._record(
            status,
            output=None,
            error_class=type(exc).__name__,
            error_message=str(exc) or type(exc).__name__,
            error_stack=stack[-STACK_CHARS:],
            retryable=decision.retryable,
            retry_delay_seconds=decision.wait_seconds if decision.retry else None,
            max_attempts=decision.max_attempts,
            handled_by=None if decision.retry else handled_by,
        )

    def _record(self, status: str, *, output: Any, **error: Any) -> None:
        try:
            self.store.record(self._values(status, output, error))
        except Exception as exc:  # noqa: BLE001 - bookkeeping never fails the node
            self.log.inner.warning(f"{self.plan.node_id}: could not record the attempt: {exc}")

    def _values(self, status: str, output: Any, error: Mapping[str, Any]) -> dict[str, Any]:
        config, secrets = redact(self._resolved_config())
        inputs = {"upstream": list(self.upstream), "config": capped(config)[0]}
        shown, size, truncated = capped(output) if status == "succeeded" else (None, None, False)
        values: dict[str, Any] = {
            "execution_id": self.run.execution_id,
            "node_id": self.plan.node_id,
            "iteration": ".".join(str(i) for i in self.state.iteration),
            "run_id": self.run.run_id,
            "step_key": self.run.step_key,
            "attempt": self.run.attempt,
            "status": status,
            "started_at": self.started_at,
            "finished_at": _now(),
            "inputs": inputs,
            "output": scrub(shown, secrets),
            "output_bytes": size,
            "output_truncated": truncated,
            "logs": scrub(self.log.lines, secrets),
            "logs_dropped": self.log.dropped,
        }
        for key, value in error.items():
            values[key] = scrub(value, secrets) if key.startswith("error_") else value
        return values

    def _resolved_config(self) -> Any:
        """The node's config with its `{{...}}` references resolved against its input state
        (as the executor resolves them); the config as written when that fails."""
        try:
            budget = Budget(Limits.from_settings(settings_of(self.run.services)))
            return templates.render(self.plan.config, self.state, budget=budget)
        except Exception:  # noqa: BLE001 - the node reported its own error already
            return self.plan.config


def begin(
    plan: NodePlan,
    state: ExecutionState,
    upstream: tuple[str, ...],
    run: RunContext,
    log: CapturingLogger,
) -> Attempt | None:
    """An attempt to record, when the run records attempts (the `attempts` service) and it is
    an execution's step (API runs are tagged with their execution)."""
    store = run.services.get(ATTEMPTS_SERVICE)
    if store is None or not (run.execution_id and run.run_id and run.step_key):
        return None
    return Attempt(store, plan, state, run, log, upstream)


def capped(value: Any) -> tuple[Any, int | None, bool]:
    """(value, size of its JSON, truncated): over `OUTPUT_CAP_BYTES` the value becomes the
    first `OUTPUT_CAP_BYTES` of its JSON text."""
    try:
        text = json.dumps(value, ensure_ascii=False, default=str)
    except (TypeError, ValueError):
        text = json.dumps(str(value))
    size = len(text.encode())
    if size <= OUTPUT_CAP_BYTES:
        return value, size, False
    preview = text.encode()[:OUTPUT_CAP_BYTES].decode(errors="ignore")
    return {"truncated": True, "bytes": size, "preview": preview}, size, True


def _sensitive(name: Any) -> bool:
    normal = str(name).lower().replace("_", "").replace("-", "")
    return any(marker in normal for marker in _SENSITIVE)


def redact(value: Any) -> tuple[Any, list[str]]:
    """`value` with credentials replaced by `***`: values under a sensitive key
    (`password`, `apiKey`, `authCredentials`, ...), the `value` of a `{key: "Authorization",
    value}` pair, and every other occurrence of those values in its strings (a token also
    rendered into a URL). Returns the secrets found, to scrub logs and errors with."""
    found: set[str] = set()

    def collect(item: Any, hidden: bool) -> Any:
        if hidden and not isinstance(item, bool | int | float | None):  # not maxTokens: 500
            _gather(item, found)
            return REDACTED if item != "" else item
        if isinstance(item, Mapping):
            pair = next((item[k] for k in _PAIR_NAMES if isinstance(item.get(k), str)), None)
            return {
                k: collect(
                    v, _sensitive(k) or (k == "value" and pair is not None and _sensitive(pair))
                )
                for k, v in item.items()
            }
        if isinstance(item, list | tuple):
            return [collect(v, False) for v in item]
        return item

    hidden = collect(value, False)
    secrets = sorted((s for s in found if len(s) >= 4), key=len, reverse=True)
    return scrub(hidden, secrets), secrets


def _gather(item: Any, found: set[str]) -> None:
    if isinstance(item, str):
        found.add(item.strip())
    elif isinstance(item, Mapping):
        for v in item.values():
            _gather(v, found)
    elif isinstance(item, list | tuple):
        for v in item:
            _gather(v, found)


def scrub(value: Any, secrets: list[str]) -> Any:
    """Every occurrence of a secret in the strings of `value` replaced by `***`."""
    if not secrets or value is None:
        return value
    if isinstance(value, str):
        for secret in secrets:
            value = value.replace(secret, REDACTED)
        return value
    if isinstance(value, Mapping):
        return {k: scrub(v, secrets) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [scrub(v, secrets) for v in value]
    return value


__all__ = ["ATTEMPTS_SERVICE", "Attempt", "CapturingLogger", "begin", "capped", "redact", "scrub"]
