"""Retry settings per node → Dagster `RetryPolicy` (sensible defaults per node type)."""

from dagster import Backoff, Jitter, RetryPolicy

from flowmaestro_dagster.spec.configs import HttpConfig
from flowmaestro_dagster.spec.models import NodeSpec
from flowmaestro_dagster.spec.node_types import MEDIA_TYPES
from flowmaestro_dagster.spec.policies import RetrySettings

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


def effective_retry(node: NodeSpec) -> RetrySettings:
    """The node's own settings, else `http.retryCount`, else its type's default."""
    if node.retry is not None:
        return node.retry
    if isinstance(node.config, HttpConfig) and node.config.retry_count is not None:
        return _NETWORK.model_copy(update={"max_attempts": node.config.retry_count + 1})
    return DEFAULT_RETRY.get(node.type, _NO_RETRY)


def retry_policy(settings: RetrySettings) -> RetryPolicy | None:
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
