"""Per-node retry and error-handling settings, as saved in a node's config."""

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from flowmaestro_dagster.spec.problems import Problem, error

BackoffStrategy = Literal["exponential", "linear", "fixed"]
MAX_DELAY_MS = 86_400_000  # one day: no wait between attempts is ever longer


def _patterns(value: tuple[str, ...]) -> tuple[str, ...]:
    cleaned = tuple(p.strip() for p in value)
    if any(not p for p in cleaned):
        raise ValueError("error patterns must be non-empty strings")
    return cleaned


class RetrySettings(BaseModel):
    """How often, and how patiently, a node is retried.

    Waits between attempts (see `flowmaestro_dagster.adapter.retries.backoff_ms`): exponential
    `minDelayMs·2^(n-1)`, linear `minDelayMs·n`, fixed `minDelayMs`, each capped at
    `maxDelayMs`; `randomize` spreads each wait by ±25 %.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    max_attempts: int = Field(default=1, ge=1, le=100, alias="maxAttempts")
    backoff_strategy: BackoffStrategy = Field(default="exponential", alias="backoffStrategy")
    min_delay_ms: float = Field(default=1000, ge=0, le=MAX_DELAY_MS, alias="minDelayMs")
    max_delay_ms: float | None = Field(default=None, ge=0, le=MAX_DELAY_MS, alias="maxDelayMs")
    randomize: bool = False
    retryable_errors: tuple[str, ...] = Field(default=(), alias="retryableErrors")
    non_retryable_errors: tuple[str, ...] = Field(default=(), alias="nonRetryableErrors")

    @field_validator("retryable_errors", "non_retryable_errors")
    @classmethod
    def _non_empty_patterns(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return _patterns(value)

    @model_validator(mode="after")
    def _max_not_below_min(self) -> "RetrySettings":
        if self.max_delay_ms is not None and self.max_delay_ms < self.min_delay_ms:
            raise ValueError("maxDelayMs must not be smaller than minDelayMs")
        return self


OnErrorStrategy = Literal["fail", "continue", "fallback", "goto"]


class NotifyTarget(BaseModel):
    """Where a failure notification goes: a named connection (secrets stay in settings) or a
    URL (called through the SSRF guard like any URL a workflow chooses)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    connection: str | None = Field(default=None, min_length=1)
    url: str | None = Field(default=None, min_length=1)

    @model_validator(mode="after")
    def _one_target(self) -> "NotifyTarget":
        if (self.connection is None) == (self.url is None):
            raise ValueError("notify needs exactly one of connection or url")
        if self.url is not None and not self.url.lower().startswith(("http://", "https://")):
            raise ValueError("notify url must be an absolute http:// or https:// URL")
        return self


# `notify: true` posts to the connection with this name in `Settings.connections`.
DEFAULT_NOTIFY_CONNECTION = "notify"


class OnErrorSettings(BaseModel):
    """What happens after a node has failed its last attempt.

    `notify`: false (default); true (the connection named `notify`); a connection name; or
    `{connection}` / `{url}`. The notification is posted whatever the strategy.
    """

    model_config = ConfigDict(frozen=True, extra="allow", populate_by_name=True)

    strategy: OnErrorStrategy = "fail"
    fallback_value: Any = Field(default=None, alias="fallbackValue")
    goto_node: str | None = Field(default=None, alias="gotoNode")
    notify: bool | NotifyTarget = False

    @field_validator("notify", mode="before")
    @classmethod
    def _notify_shape(cls, value: Any) -> Any:
        """true/false, a connection name, a URL, or `{connection}` / `{url}`."""
        if value is None:
            return False
        if isinstance(value, bool | NotifyTarget):
            return value
        if isinstance(value, str):
            text = value.strip()
            if not text:
                return False
            key = "url" if text.lower().startswith(("http://", "https://")) else "connection"
            value = {key: text}
        if not isinstance(value, dict):
            raise ValueError("notify must be true/false, a connection name, a URL or {connection}")
        try:
            return NotifyTarget.model_validate(value)
        except ValidationError as exc:
            reasons = "; ".join(e["msg"].removeprefix("Value error, ") for e in exc.errors())
            raise ValueError(reasons) from None

    def notify_target(self) -> NotifyTarget | None:
        """The resolved notification target, or None when nobody is to be told."""
        if isinstance(self.notify, NotifyTarget):
            return self.notify
        if self.notify is True:
            return NotifyTarget(connection=DEFAULT_NOTIFY_CONNECTION)
        return None


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
_ON_ERROR_ALIASES = {"fallback": "fallbackValue", "goto": "gotoNode", "notifyOnFailure": "notify"}


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
        values = _canonical_retry_values(raw)
        try:
            return RetrySettings.model_validate(values), key, []
        except ValidationError as exc:
            return None, key, _problems(exc, "invalid_retry", key, node_id)
    return None, None, []


def _canonical_retry_values(raw: dict[str, Any]) -> dict[str, Any]:
    """Retry keys with their aliases resolved (`maxRetries` n → `maxAttempts` n + 1)."""
    values = dict(raw)
    for alias, canonical in _RETRY_ALIASES.items():
        if alias in values and canonical and canonical not in values:
            values[canonical] = values.pop(alias)
    if "maxRetries" in values and "maxAttempts" not in values:
        retries = values.pop("maxRetries")
        values["maxAttempts"] = retries + 1 if isinstance(retries, int) else retries
    return values


def parse_retry_defaults(
    raw: dict[str, Any], *, node_id: str, field: str | None = None
) -> tuple[dict[str, Any], list[Problem]]:
    """A retryConfig node's defaults: only the keys it sets (canonical names such as
    `maxAttempts`), checked like a node's `retry` settings; problems name `field.key`."""
    values = _canonical_retry_values(raw)
    # A cap alone is checked against no floor: the floor comes from another layer.
    probe = values if "minDelayMs" in values else {**values, "minDelayMs": 0}
    try:
        settings = RetrySettings.model_validate(probe)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            # The one check across fields (the cap below the floor) is the cap's problem.
            where = ".".join(str(p) for p in err["loc"]) or "maxDelayMs"
            name = ".".join(x for x in (field, where) if x)
            problems.append(
                error(
                    "invalid_retry",
                    f"{name}: {err['msg'].removeprefix('Value error, ')}",
                    node_id=node_id,
                    field=name,
                )
            )
        return {}, problems
    explicit = set(settings.model_fields_set)
    if "minDelayMs" not in values:
        explicit.discard("min_delay_ms")
    return settings.model_dump(by_alias=True, include=explicit), []


def parse_on_error(raw: Any, *, node_id: str) -> tuple[OnErrorSettings | None, list[Problem]]:
    """`onError` as an object, or a bare strategy (`"continue"`)."""
    if raw is None:
        return None, []
    if isinstance(raw, str):
        raw = {"strategy": raw}
    if not isinstance(raw, dict):
        return None, [
            error("invalid_on_error", "onError must be an object", node_id=node_id, field="onError")
        ]
    values = dict(raw)
    for alias, canonical in _ON_ERROR_ALIASES.items():
        if alias in values and canonical not in values:
            values[canonical] = values.pop(alias)
    try:
        return OnErrorSettings.model_validate(values), []
    except ValidationError as exc:
        return None, _problems(exc, "invalid_on_error", "onError", node_id)


def _problems(exc: ValidationError, code: str, key: str, node_id: str) -> list[Problem]:
    """One problem per pydantic error, its field a path under `key` (`retry.maxAttempts`)."""
    problems = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"])
        field = f"{key}.{where}" if where else key
        problems.append(
            error(
                code,
                f"{field}: {err['msg'].removeprefix('Value error, ')}",
                node_id=node_id,
                field=field,
            )
        )
    return problems
