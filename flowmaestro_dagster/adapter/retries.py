"""Retries: per-node settings → a Dagster `RetryPolicy`, and what the adapter does when a node
fails (retry after how long, or give up).

Dagster's own backoff cannot express ours: exponential waits `(2^n - 1)·delay` (1, 3, 7 x the
delay), there is no cap and no server-given wait. So the adapter decides every retry itself and
raises `dagster.RetryRequested(max_retries, seconds_to_wait)` with the wait computed here:

* exponential `minDelayMs · 2^(n-1)` (1, 2, 4, 8 x minDelayMs), linear `minDelayMs · n`,
  fixed `minDelayMs` — for retry n = 1, 2, ... — capped at `maxDelayMs`;
* `randomize`: each wait x a uniform factor in [0.75, 1.25], still capped;
* a `Retry-After` the service sent (429, 503) replaces the schedule, capped at `maxDelayMs`.

The op's compiled `RetryPolicy` (same attempts, Dagster's nearest backoff) only governs what the
adapter never sees: a step interrupted by the run being stopped, or an input that fails to load.

Which errors are retried: `TransientNodeError` (timeouts, connection errors, 408, 429, 5xx) and
Python's `TimeoutError`/`ConnectionError`, plus whatever `retryableErrors` matches, minus
whatever `nonRetryableErrors` matches. Configuration and validation errors, connectors that are
not configured, SSRF refusals and code-node (sandbox) failures are never retried: the next
attempt would fail the same way.
"""

import math
import random
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any

from dagster import Backoff, Jitter, RetryPolicy

from flowmaestro_dagster.errors import (
    ConnectorNotConfiguredError,
    ExpressionError,
    NodeConfigurationError,
    NodeExecutionError,
    TransientNodeError,
)
from flowmaestro_dagster.spec.configs import HttpConfig, RetryConfigConfig
from flowmaestro_dagster.spec.graph import WorkflowGraph
from flowmaestro_dagster.spec.models import NodeSpec, WorkflowSpec
from flowmaestro_dagster.spec.node_types import MEDIA_TYPES, SETTINGS_TYPES
from flowmaestro_dagster.spec.policies import MAX_DELAY_MS, RetrySettings, parse_retry_defaults

JITTER = 0.25  # randomize: ±25 %

_NETWORK = RetrySettings(
    max_attempts=3,
    backoff_strategy="exponential",
    min_delay_ms=1000,
    max_delay_ms=30_000,
    randomize=True,
)
_NO_RETRY = RetrySettings(max_attempts=1)

# Calls to models and services fail transiently; pure nodes give the same answer every time.
DEFAULT_RETRY: dict[str, RetrySettings] = {
    "llm": _NETWORK,
    "router": _NETWORK,
    "http": _NETWORK,
    "integration": _NETWORK,
    "database": RetrySettings(max_attempts=2, backoff_strategy="exponential", min_delay_ms=500),
    **dict.fromkeys(MEDIA_TYPES, _NETWORK),
}

# The next attempt would fail the same way, whatever the user's patterns say.
_PERMANENT: tuple[type[BaseException], ...] = (
    NodeConfigurationError,
    ConnectorNotConfiguredError,
    ExpressionError,
)
_PERMANENT_NODE_TYPES = frozenset({"code"})  # sandboxed snippets are deterministic


def effective_retry(node: NodeSpec, defaults: Mapping[str, Any] | None = None) -> RetrySettings:
    """The node's own settings, else `http.retryCount`, else its type's default.

    `defaults` (from retryConfig nodes, see `retry_defaults`) sit between the two: they
    replace keys of the type's default, and a node's own keys replace theirs.
    """
    if node.type in SETTINGS_TYPES:
        return _NO_RETRY  # a passthrough: nothing to retry
    if not defaults:
        if node.retry is not None:
            return node.retry
        if isinstance(node.config, HttpConfig) and node.config.retry_count is not None:
            return _NETWORK.model_copy(update={"max_attempts": node.config.retry_count + 1})
        return DEFAULT_RETRY.get(node.type, _NO_RETRY)
    if node.retry is not None:
        own = node.retry.model_dump(by_alias=True, include=node.retry.model_fields_set)
        return _layered({}, dict(defaults), own)
    if isinstance(node.config, HttpConfig) and node.config.retry_count is not None:
        count = {"maxAttempts": node.config.retry_count + 1}
        return _layered(_NETWORK.model_dump(by_alias=True), dict(defaults), count)
    base = DEFAULT_RETRY.get(node.type, _NO_RETRY).model_dump(by_alias=True)
    return _layered(base, dict(defaults))


def _layered(*layers: Mapping[str, Any]) -> RetrySettings:
    """Settings from layers of keys, later layers winning; when the floor and the cap end up
    crossed, the one a later layer set wins and the other moves to meet it."""
    values: dict[str, Any] = {}
    origin: dict[str, int] = {}
    for rank, layer in enumerate(layers):
        for key, value in layer.items():
            values[key] = value
            origin[key] = rank
    floor, cap = values.get("minDelayMs", 1000), values.get("maxDelayMs")
    if cap is not None and cap < floor:
        if origin.get("maxDelayMs", -1) >= origin.get("minDelayMs", -1):
            values["minDelayMs"] = cap
        else:
            values["maxDelayMs"] = floor
    return RetrySettings.model_validate(values)


def retry_defaults(spec: WorkflowSpec, graph: WorkflowGraph) -> dict[str, dict[str, Any]]:
    """Per node id, the retry keys the workflow's retryConfig nodes give it.

    A retryConfig with no incoming edge applies to the whole workflow; one with incoming
    edges to the nodes downstream of it. Layers, later winning key by key: workflow-wide
    ones (in topological order), then the downstream-scoped ones upstream of the node (in
    topological order, so the one nearest the node wins over one further up).
    """
    configs = [n for n in spec.nodes if spec.nodes[n].type == "retryConfig"]
    if not configs:
        return {}
    try:
        order = graph.topological_order()
    except ValueError:  # a cycle: validation reports it
        return {}
    rank = {node_id: i for i, node_id in enumerate(order)}
    configs.sort(key=lambda n: rank[n])
    keys: dict[str, dict[str, Any]] = {}
    for node_id in configs:
        config = spec.nodes[node_id].config
        assert isinstance(config, RetryConfigConfig)
        keys[node_id] = parse_retry_defaults(config.retry, node_id=node_id)[0]
    workflow_wide = [c for c in configs if not graph.incoming[c]]
    scoped = [c for c in configs if graph.incoming[c]]
    result: dict[str, dict[str, Any]] = {}
    for node_id in order:
        ancestors = graph.ancestors(node_id)
        merged: dict[str, Any] = {}
        for config_id in [*workflow_wide, *(c for c in scoped if c in ancestors)]:
            merged.update(keys[config_id])
        if merged:
            result[node_id] = merged
    return result


def retry_policy(settings: RetrySettings) -> RetryPolicy | None:
    """The op's declared policy: the same attempts and first delay, Dagster's own backoff."""
    if settings.max_attempts <= 1:
        return None
    backoff = {
        "exponential": Backoff.EXPONENTIAL,
        "linear": Backoff.LINEAR,
        "fixed": None,
    }[settings.backoff_strategy]
    return RetryPolicy(
        max_retries=settings.max_attempts - 1,
        delay=settings.min_delay_ms / 1000,
        backoff=backoff,
        jitter=Jitter.PLUS_MINUS if settings.randomize else None,
    )


# -- how long to wait ------------------------------------------------------------------------------


def _cap(settings: RetrySettings, millis: float) -> float:
    ceiling = settings.max_delay_ms if settings.max_delay_ms is not None else MAX_DELAY_MS
    return max(0.0, min(millis, ceiling, MAX_DELAY_MS))


def backoff_ms(settings: RetrySettings, retry: int) -> float:
    """The wait before retry `retry` (1 = the second attempt), without jitter, capped."""
    base = settings.min_delay_ms
    n = max(retry, 1)
    if settings.backoff_strategy == "exponential":
        millis = base * math.pow(2, min(n - 1, 64))
    elif settings.backoff_strategy == "linear":
        millis = base * n
    else:
        millis = base
    return _cap(settings, millis)


def schedule_ms(settings: RetrySettings) -> list[float]:
    """Every wait between the configured attempts, without jitter (for docs and tests)."""
    return [backoff_ms(settings, n) for n in range(1, settings.max_attempts)]


def retry_wait_seconds(
    settings: RetrySettings,
    retry: int,
    *,
    retry_after_seconds: float | None = None,
    rng: random.Random | None = None,
) -> float:
    """Seconds to wait before retry `retry`: the server's Retry-After, else the schedule."""
    if retry_after_seconds is not None:
        return _cap(settings, retry_after_seconds * 1000) / 1000
    millis = backoff_ms(settings, retry)
    if settings.randomize:
        factor = (rng or random).uniform(1 - JITTER, 1 + JITTER)
        millis = _cap(settings, millis * factor)
    return millis / 1000


# -- which errors are retried ---------------------------------------------------------------------


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen and len(seen) < 10:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def status_of(exc: BaseException) -> int | None:
    """The HTTP status an error carries (`details.status`), if any."""
    details = getattr(exc, "details", None)
    status = details.get("status") if isinstance(details, dict) else None
    if isinstance(status, int) and not isinstance(status, bool):
        return status
    return None


def error_tokens(exc: BaseException) -> set[str]:
    """Names a pattern can match: class names along the cause chain, a category
    (`timeout`, `connection`, `rate_limit`, `server_error`, `client_error`, `transient`), the
    HTTP status (`429`, `http_429`, `4xx`) and the executor's reason (`details.reason`)."""
    tokens: set[str] = set()
    for link in _chain(exc):
        for cls in type(link).__mro__:
            if cls in (BaseException, Exception, object):
                break
            tokens.add(cls.__name__.lower())
    names = " ".join(tokens)
    message = str(exc).lower()
    if "timeout" in names or "timed out" in message:
        tokens.add("timeout")
    if "connect" in names:
        tokens.add("connection")
    if isinstance(exc, TransientNodeError):
        tokens.add("transient")
    status = status_of(exc)
    if status is not None:
        tokens |= {str(status), f"http_{status}", f"{status // 100}xx"}
        if status == 429:
            tokens.add("rate_limit")
        elif status >= 500:
            tokens.add("server_error")
        elif status >= 400:
            tokens.add("client_error")
    details = getattr(exc, "details", None)
    reason = details.get("reason") if isinstance(details, dict) else None
    if isinstance(reason, str) and reason:
        tokens.add(reason.lower())
    return tokens


def matches(pattern: str, exc: BaseException, tokens: set[str] | None = None) -> bool:
    """A pattern matches an error token (glob, case-insensitive: `5xx`, `*Timeout*`,
    `rate_limit`) or occurs in the error message (`quota`, `insufficient_quota`)."""
    wanted = pattern.strip().lower()
    if not wanted:
        return False
    found = tokens if tokens is not None else error_tokens(exc)
    if any(fnmatchcase(token, wanted) for token in found):
        return True
    message = str(exc).lower()
    if any(ch in wanted for ch in "*?["):
        return fnmatchcase(message, wanted)
    return wanted in message


def is_permanent(exc: BaseException, node_type: str | None = None) -> bool:
    """Errors no retry can fix, whatever the patterns say."""
    if isinstance(exc, _PERMANENT):
        return True
    if type(exc).__name__ == "BlockedAddressError":  # the SSRF guard refused the address
        return True
    kind = node_type or getattr(exc, "node_type", None)
    return isinstance(exc, NodeExecutionError) and kind in _PERMANENT_NODE_TYPES


def is_retryable(settings: RetrySettings, exc: BaseException, node_type: str | None = None) -> bool:
    """Whether another attempt may succeed (built-in classes, then the user's patterns)."""
    if is_permanent(exc, node_type):
        return False
    tokens = error_tokens(exc)
    if any(matches(p, exc, tokens) for p in settings.non_retryable_errors):
        return False
    if any(matches(p, exc, tokens) for p in settings.retryable_errors):
        return True
    if isinstance(exc, NodeExecutionError):
        return exc.retryable
    return isinstance(exc, TimeoutError | ConnectionError)


@dataclass(frozen=True)
class RetryDecision:
    """After attempt `attempt` failed: retry after `wait_seconds`, or give up (`retry` False)."""

    retry: bool
    attempt: int
    max_attempts: int
    retryable: bool
    wait_seconds: float = 0.0
    retry_after_seconds: float | None = None

    @property
    def exhausted(self) -> bool:
        """A retryable error that ran out of attempts."""
        return self.retryable and not self.retry


def decide(
    settings: RetrySettings,
    exc: BaseException,
    attempt: int,
    *,
    node_type: str | None = None,
    rng: random.Random | None = None,
) -> RetryDecision:
    """Whether (and after how long) the attempt `attempt` that failed with `exc` is retried."""
    retryable = is_retryable(settings, exc, node_type)
    if not retryable or attempt >= settings.max_attempts:
        return RetryDecision(False, attempt, settings.max_attempts, retryable)
    retry_after = getattr(exc, "retry_after_seconds", None)
    if not isinstance(retry_after, int | float) or isinstance(retry_after, bool):
        retry_after = None
    wait = retry_wait_seconds(settings, attempt, retry_after_seconds=retry_after, rng=rng)
    return RetryDecision(True, attempt, settings.max_attempts, True, wait, retry_after)


def error_summary(exc: BaseException, decision: RetryDecision) -> dict[str, Any]:
    """The error as plain data: what an error edge hands on and a notification carries."""
    message = getattr(exc, "reason", None) or str(exc) or type(exc).__name__
    summary: dict[str, Any] = {
        "message": message,
        "type": type(exc).__name__,
        "retryable": decision.retryable,
        "attempts": decision.attempt,
    }
    status = status_of(exc)
    if status is not None:
        summary["status"] = status
    return summary


__all__ = [
    "DEFAULT_RETRY",
    "RetryDecision",
    "backoff_ms",
    "decide",
    "effective_retry",
    "error_summary",
    "error_tokens",
    "is_retryable",
    "matches",
    "retry_defaults",
    "retry_policy",
    "retry_wait_seconds",
    "schedule_ms",
]
