"""Per-node retry and error-handling settings, as saved in a node's config."""

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from flowmaestro_dagster.spec.problems import Problem, error

BackoffStrategy = Literal["exponential", "linear", "fixed"]


class RetrySettings(BaseModel):
    """How often, and how patiently, a node is retried."""

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    max_attempts: int = Field(default=1, ge=1, le=100, alias="maxAttempts")
    backoff_strategy: BackoffStrategy = Field(default="exponential", alias="backoffStrategy")
    min_delay_ms: float = Field(default=1000, ge=0, le=86_400_000, alias="minDelayMs")
    max_delay_ms: float | None = Field(default=None, ge=0, le=86_400_000, alias="maxDelayMs")
    randomize: bool = False
    retryable_errors: tuple[str, ...] = Field(default=(), alias="retryableErrors")
    non_retryable_errors: tuple[str, ...] = Field(default=(), alias="nonRetryableErrors")

    @model_validator(mode="after")
    def _max_not_below_min(self) -> "RetrySettings":
        if self.max_delay_ms is not None and self.max_delay_ms < self.min_delay_ms:
            raise ValueError("maxDelayMs must not be smaller than minDelayMs")
        return self


OnErrorStrategy = Literal["fail", "continue", "fallback", "goto"]


class OnErrorSettings(BaseModel):
    """What happens after a node has failed its last attempt."""

    model_config = ConfigDict(frozen=True, extra="allow", populate_by_name=True)

    strategy: OnErrorStrategy = "fail"
    fallback_value: Any = Field(default=None, alias="fallbackValue")
    goto_node: str | None = Field(default=None, alias="gotoNode")
    notify: bool = False


_RETRY_KEYS = ("retry", "retryPolicy", "retrySettings")
_RETRY_ALIASES = {
    "attempts": "maxAttempts",
    "maxRetries": None,  # handled below: retries + 1 attempts
    "backoff": "backoffStrategy",
    "strategy": "backoffStrategy",
    "initialDelayMs": "minDelayMs",
    "delayMs": "minDelayMs",
    "jitter": "randomize",
}


def parse_retry(
    config: dict[str, Any], *, node_id: str
) -> tuple[RetrySettings | None, str | None, list[Problem]]:
    """Retry settings found in a node config, the key they were under, and any problems."""
    for key in _RETRY_KEYS:
        if key not in config or config[key] is None:
            continue
        raw = config[key]
        if not isinstance(raw, dict):
            problem = error(
                "invalid_retry",
                f"{key} must be an object with maxAttempts, backoffStrategy, ...",
                node_id=node_id,
                field=key,
            )
            return None, key, [problem]
        values = dict(raw)
        for alias, canonical in _RETRY_ALIASES.items():
            if alias in values and canonical and canonical not in values:
                values[canonical] = values.pop(alias)
        if "maxRetries" in values and "maxAttempts" not in values:
            retries = values.pop("maxRetries")
            values["maxAttempts"] = retries + 1 if isinstance(retries, int) else retries
        try:
            return RetrySettings.model_validate(values), key, []
        except ValidationError as exc:
            problems = []
            for err in exc.errors():
                where = ".".join(str(p) for p in err["loc"])
                field = f"{key}.{where}" if where else key
                problems.append(
                    error(
                        "invalid_retry",
                        f"{field}: {err['msg'].removeprefix('Value error, ')}",
                        node_id=node_id,
                        field=field,
                    )
                )
            return None, key, problems
    return None, None, []


def parse_on_error(raw: Any, *, node_id: str) -> tuple[OnErrorSettings | None, list[Problem]]:
    if raw is None:
        return None, []
    if isinstance(raw, str):
        raw = {"strategy": raw}
    if not isinstance(raw, dict):
        return None, [
            error("invalid_on_error", "onError must be an object", node_id=node_id, field="onError")
        ]
    try:
        return OnErrorSettings.model_validate(raw), []
    except ValidationError as exc:
        return None, [
            error(
                "invalid_on_error",
                f"onError.{'.'.join(str(p) for p in err['loc'])}: {err['msg']}",
                node_id=node_id,
                field="onError",
            )
            for err in exc.errors()
        ]
