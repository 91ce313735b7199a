"""One canonical config model per node type, and the dialect normalisers that fill them.

Real definitions spell the same setting several ways (see docs/node-types.md). Each normaliser
takes the node's original config, picks every known spelling of a setting into one canonical
field, and keeps any key it does not know as an extra field: nothing a builder saved is lost.
"""

from collections.abc import Callable
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from flowmaestro_dagster.spec.durations import canonical_unit, parse_duration_seconds
from flowmaestro_dagster.spec.problems import Problem, error

_MISSING: Any = object()


class NodeConfig(BaseModel):
    """Base of every canonical config: unknown keys are kept, not rejected."""

    model_config = ConfigDict(extra="allow", frozen=True)

    output_variable: str | None = None

    def extras(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class InputConfig(NodeConfig):
    name: str | None = None
    names: list[str] = Field(default_factory=list)
    input_type: str = "text"
    required: bool = False
    has_default: bool = False
    default_value: Any = None
    description: str | None = None


class OutputConfig(NodeConfig):
    name: str | None = None
    has_value: bool = False
    value: Any = None
    format: str | None = None


SCHEDULE_TRIGGER_TYPES = frozenset({"schedule", "cron"})
OVERLAP_POLICIES = ("skip", "queue", "allow")  # docs/triggers.md
MISSED_TICK_POLICIES = ("run_once", "skip")  # docs/triggers.md


class TriggerConfig(NodeConfig):
    trigger_type: str = "manual"
    schedule: str | None = None
    timezone: str | None = None
    overlap: str | None = None  # schedules: OVERLAP_POLICIES; None is "skip"
    missed: str | None = None  # schedules: MISSED_TICK_POLICIES; None is "run_once"
    provider: str | None = None
    event: str | None = None

    @property
    def kind(self) -> str | None:
        """How this trigger starts the workflow: `schedule`, `webhook` (plain, or a provider's
        event), `manual`, or None — a type this platform cannot start (case-insensitive, as
        the builder's spellings vary)."""
        return trigger_kind(self.trigger_type, self.provider, self.event)


def trigger_kind(trigger_type: str, provider: str | None, event: str | None) -> str | None:
    """`TriggerConfig.kind` from its three fields (what the hook lookup has at hand)."""
    kind = trigger_type.strip().lower()
    if kind in SCHEDULE_TRIGGER_TYPES:
        return "schedule"
    if kind in ("webhook", "manual"):
        return kind
    if provider and provider.strip() and event and event.strip():
        return "webhook"  # a provider's event under the provider's own type name
    return None


TRANSFORM_OPERATIONS = frozenset(
    {
        "passthrough",
        "template",
        "merge",
        "aggregate",
        "map",
        "filter",
        "reduce",
        "sort",
        "extract",
        "custom",
        "parseJSON",
        "parseXML",
        "flatten",
        "first_non_null",
        "select",
        "compare",
    }
)


class TransformConfig(NodeConfig):
    operation: str = "passthrough"
    input_data: Any = None
    expression: Any = None
    template: Any = None
    sources: list[Any] | None = None
    merge_data: Any = None
    path: str | None = None
    operations: list[str] = Field(default_factory=list)
    condition: Any = None
    delay_ms: float | None = None


OPERATOR_ALIASES: dict[str, str] = {
    "==": "==",
    "===": "==",
    "eq": "==",
    "equals": "==",
    "is": "==",
    "!=": "!=",
    "!==": "!=",
    "ne": "!=",
    "neq": "!=",
    "notequals": "!=",
    "not_equals": "!=",
    ">": ">",
    "gt": ">",
    "greaterthan": ">",
    ">=": ">=",
    "gte": ">=",
    "ge": ">=",
    "greaterthanorequal": ">=",
    "<": "<",
    "lt": "<",
    "lessthan": "<",
    "<=": "<=",
    "lte": "<=",
    "le": "<=",
    "lessthanorequal": "<=",
    "contains": "contains",
    "includes": "contains",
    "notcontains": "not_contains",
    "not_contains": "not_contains",
    "startswith": "startsWith",
    "starts_with": "startsWith",
    "endswith": "endsWith",
    "ends_with": "endsWith",
    "isempty": "isEmpty",
    "is_empty": "isEmpty",
    "isnotempty": "isNotEmpty",
    "is_not_empty": "isNotEmpty",
}


class ConditionalConfig(NodeConfig):
    mode: Literal["comparison", "expression"] = "comparison"
    left_value: Any = None
    operator: str = "=="
    right_value: Any = None
    expression: str | None = None

    @field_validator("operator", mode="before")
    @classmethod
    def _canonical_operator(cls, value: Any) -> str:
        key = str(value).strip()
        canonical = OPERATOR_ALIASES.get(key) or OPERATOR_ALIASES.get(key.lower())
        if canonical is None:
            known = ", ".join(sorted(set(OPERATOR_ALIASES.values())))
            raise ValueError(f"unknown operator {value!r} (known: {known})")
        return canonical


class SwitchCase(BaseModel):
    model_config = ConfigDict(frozen=True)
    value: str
    label: str | None = None


class SwitchConfig(NodeConfig):
    expression: Any = None
    cases: list[SwitchCase] = Field(default_factory=list)
    default_case: str | None = None


class Route(BaseModel):
    model_config = ConfigDict(frozen=True)
    value: str
    label: str | None = None
    description: str | None = None


class RouterConfig(NodeConfig):
    router_type: str = "llm"
    provider: str | None = None
    model: str | None = None
    prompt: str | None = None
    system_prompt: str | None = None
    temperature: float | None = None
    max_tokens: int | None = None
    routes: list[Route] = Field(default_factory=list)
    default_route: str | None = None


class LoopConfig(NodeConfig):
    loop_type: Literal["forEach", "while", "count"] = "forEach"
    items: Any = None
    count: Any = None
    condition: str | None = None
    item_variable: str = "item"
    index_variable: str = "index"
    max_iterations: int = Field(default=1000, ge=0)


class WaitConfig(NodeConfig):
    wait_type: Literal["duration", "until", "webhook"] = "duration"
    duration: Any = None
    duration_unit: Literal["ms", "seconds", "minutes", "hours", "days"] = "ms"
    timestamp: Any = None
    provider: str | None = None
    event: str | None = None


class HumanReviewConfig(NodeConfig):
    prompt: str | None = None
    variable_name: str | None = None
    input_type: Literal["text", "number", "boolean", "json"] = "text"
    required: bool = True
    default_value: Any = None
    validation: Any = None
    placeholder: str | None = None
    timeout_ms: float | None = None
    on_timeout: str | None = None
    approvers: list[str] = Field(default_factory=list)
    notify: Any = None

    @field_validator("approvers", mode="before")
    @classmethod
    def _listed(cls, value: Any) -> Any:
        """`assignee: "a@x.eu, b@x.eu"` (one text) means two approvers."""
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value


APPROVAL_EXPIRY_ACTIONS = ("reject", "approve", "default", "fail", "timeout")
"""What `onTimeout` may say (docs/waitpoints.md); `route`/`branch` are spellings of `timeout`."""


def expiry_action(on_timeout: str | None) -> str | None:
    """The canonical expiry action of an approval, None for one that is not known."""
    action = (on_timeout or "reject").strip().lower()
    action = {"route": "timeout", "branch": "timeout", "expire": "timeout"}.get(action, action)
    return action if action in APPROVAL_EXPIRY_ACTIONS else None


NOTIFY_CHANNELS = ("email", "slack", "webhook")


def notify_targets(value: Any) -> list[dict[str, Any]]:
    """An approval's `notify` as `[{channel, to, connection, url}]`; ValueError says what is
    wrong. Shorthands: `true` or `"email"` (email the approvers), `"slack"`, `"webhook"`, an
    email address, or a list of these and objects."""
    if value is None or value is False or value == []:
        return []
    items = value if isinstance(value, list) else [value]
    targets = []
    for raw in items:
        item = "email" if raw is True else raw
        if isinstance(item, str):
            text = item.strip()
            item = {"channel": "email", "to": text} if "@" in text else {"channel": text}
        if not isinstance(item, dict):
            raise ValueError(f"a notify target is an object or text, not {item!r}")
        channel = str(item.get("channel") or item.get("type") or "email").strip().lower()
        if channel not in NOTIFY_CHANNELS:
            raise ValueError(
                f"notify channel {channel!r} is not one of {', '.join(NOTIFY_CHANNELS)}"
            )
        to = item.get("to", item.get("recipients"))
        connection = item.get("connection", item.get("connectionId"))
        url = item.get("url")
        if channel == "webhook" and not (url or connection):
            raise ValueError("a webhook notification needs a url or a connection")
        targets.append(
            {
                "channel": channel,
                "to": to,
                "connection": str(connection) if connection else None,
                "url": str(url) if url else None,
            }
        )
    return targets


class CodeConfig(NodeConfig):
    language: Literal["javascript", "python"] = "javascript"
    code: str | None = None
    timeout_ms: float = Field(default=30_000, gt=0)
    memory_mb: float | None = Field(default=None, gt=0)


class KeyValue(BaseModel):
    model_config = ConfigDict(frozen=True)
    key: str
    value: Any = None


class HttpConfig(NodeConfig):
    method: str = "GET"
    url: str | None = None
    headers: list[KeyValue] | str = Field(default_factory=list)
    query_params: list[KeyValue] | str = Field(default_factory=list)
    auth_type: str = "none"
    auth_credentials: Any = None
    body_type: str | None = None
    body: Any = None
    timeout_s: float = Field(default=30, gt=0)
    retry_count: int | None = Field(default=None, ge=0)
    fail_on_error: bool = False

    @field_validator("method", mode="before")
    @classmethod
    def _upper(cls, value: Any) -> str:
        return str(value).upper()


class LLMConfig(NodeConfig):
    provider: str = "openai"
    model: str | None = None
    prompt: str | None = None
    system_prompt: str | None = None
    temperature: float | None = None
    max_tokens: int | None = None


class IntegrationConfig(NodeConfig):
    provider: str | None = None
    operation: str | None = None
    parameters: dict[str, Any] = Field(default_factory=dict)
    connection_id: str | None = None


class DatabaseConfig(NodeConfig):
    provider: str | None = None
    operation: str = "query"
    query: str | None = None
    parameters: Any = None
    connection_id: str | None = None


class SharedMemoryConfig(NodeConfig):
    operation: Literal["store", "get", "append", "search", "delete"] = "store"
    key: str | None = None
    value: Any = None
    search_query: str | None = None
    top_k: int = Field(default=5, ge=1)


class SubworkflowConfig(NodeConfig):
    """Starts another deployed workflow as a child execution and waits for its outputs."""

    workflow_id: str | None = None
    inputs: Any = None


CHECKPOINT_DEFAULT_EXPIRY = "7d"
CHECKPOINT_MAX_EXPIRY_SECONDS = 90 * 86_400


def expiry_seconds(value: str) -> int:
    """`30m`, `1h`, `24h`, `7d` → seconds (1 minute to 90 days); ValueError otherwise."""
    try:
        seconds = int(parse_duration_seconds(value))
    except ValueError:
        raise ValueError(
            "must be a number of minutes, hours or days such as 1h, 24h or 7d"
        ) from None
    if not 60 <= seconds <= CHECKPOINT_MAX_EXPIRY_SECONDS:
        raise ValueError("must be between 1m and 90d")
    return seconds


class CheckpointConfig(NodeConfig):
    """Keeps the execution's state (every node output so far) until it expires; with
    `pause_here` the execution also parks here until someone resumes it."""

    name: str | None = None
    expires_in: str = CHECKPOINT_DEFAULT_EXPIRY
    pause_here: bool = False
    description: str | None = None

    @field_validator("expires_in", mode="before")
    @classmethod
    def _expiry(cls, value: Any) -> str:
        if isinstance(value, bool) or not isinstance(value, str | int):
            raise ValueError("must be a text such as 1h, 24h or 7d")
        text = str(value).strip().lower()
        expiry_seconds(text)
        return text

    @property
    def expiry_seconds(self) -> int:
        return expiry_seconds(self.expires_in)


BATCH_MAX_CONCURRENCY = 64


class BatchConfig(NodeConfig):
    """An array processed in chunks of `batch_size`, up to `concurrency` items at a time; the
    nodes downstream of the batch (its body, as a loop's) run once per item."""

    items: list[Any] | str | None = None
    batch_size: int = Field(default=10, ge=1, le=10_000)
    concurrency: int = Field(default=5, ge=1, le=BATCH_MAX_CONCURRENCY)
    on_item_error: Literal["fail", "continue"] = "fail"
    min_success: int | None = Field(default=None, ge=1)
    item_variable: str = "item"
    index_variable: str = "index"
    max_items: int = Field(default=10_000, ge=0, le=100_000)

    @field_validator("on_item_error", mode="before")
    @classmethod
    def _strategy(cls, value: Any) -> Any:
        aliases = {"skip": "continue", "collect": "continue", "stop": "fail", "abort": "fail"}
        text = str(value).strip().lower() if isinstance(value, str) else value
        return aliases.get(text, text) if isinstance(text, str) else text


class RetryConfigConfig(NodeConfig):
    """Retry defaults for the nodes downstream of the node (or the whole workflow when nothing
    leads into it): the keys of a node's `retry` settings, as written (`maxAttempts`, ...).
    `retry_field` is the key they were nested under (`retry`), None at the top level."""

    retry: dict[str, Any] = Field(default_factory=dict)
    retry_field: str | None = None


QUEUE_PRIORITY_NAMES: dict[str, int] = {"low": -10, "normal": 0, "high": 10}


def queue_priority(value: Any) -> int:
    """`low` / `normal` / `high` (-10 / 0 / 10) or an integer in -1000..1000 (higher first).

    The one priority parser: queueConfig nodes, workflow settings and execution requests."""
    if isinstance(value, bool):
        raise ValueError("priority must be low, normal, high or an integer")
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, int):
        if not -1000 <= value <= 1000:
            raise ValueError("priority must be between -1000 and 1000")
        return value
    if isinstance(value, str):
        text = value.strip().lower()
        if text in QUEUE_PRIORITY_NAMES:
            return QUEUE_PRIORITY_NAMES[text]
        if text.lstrip("-").isdigit():
            return queue_priority(int(text))
    raise ValueError("priority must be low, normal, high or an integer")


class QueueConfigConfig(NodeConfig):
    """The execution's priority, queue and concurrency key, applied when it starts."""

    priority: int | None = None
    queue: str | None = Field(default=None, max_length=100, pattern=r"^[A-Za-z0-9_.-]+$")
    concurrency_key: str | None = Field(default=None, min_length=1, max_length=255)

    @field_validator("priority", mode="before")
    @classmethod
    def _priority(cls, value: Any) -> int | None:
        return None if value is None else queue_priority(value)


class MediaConfig(NodeConfig):
    provider: str | None = None
    model: str | None = None
    operation: str | None = None


class _Raw:
    """Picks dialect spellings out of a raw config, remembering where each value came from."""

    def __init__(self, data: dict[str, Any]) -> None:
        self.rest = dict(data)
        self.rest.pop("label", None)
        self.values: dict[str, Any] = {}
        self.origin: dict[str, str] = {}

    def take(self, canonical: str, *keys: str) -> Any:
        found: Any = _MISSING
        for key in keys:
            if key in self.rest:
                value = self.rest.pop(key)
                if found is _MISSING and value is not None:
                    found = value
                    self.origin[canonical] = key
        if found is not _MISSING:
            self.values[canonical] = found
        return found

    def peek(self, *keys: str) -> Any:
        for key in keys:
            if self.rest.get(key) is not None:
                return self.rest[key]
        return _MISSING

    def set(self, canonical: str, value: Any, origin: str | None = None) -> None:
        self.values[canonical] = value
        if origin:
            self.origin[canonical] = origin

    def result(self) -> dict[str, Any]:
        return {**self.rest, **self.values}


Normaliser = Callable[[_Raw], None]
_NORMALISERS: dict[str, tuple[type[NodeConfig], Normaliser]] = {}


def _normaliser(*types: str, model: type[NodeConfig]) -> Callable[[Normaliser], Normaliser]:
    def register(fn: Normaliser) -> Normaliser:
        for node_type in types:
            _NORMALISERS[node_type] = (model, fn)
        return fn

    return register


def _output_variable(raw: _Raw) -> None:
    raw.take("output_variable", "outputVariable")


@_normaliser("input", model=InputConfig)
def _input(raw: _Raw) -> None:
    names = [raw.rest.get(k) for k in ("inputName", "variableName", "inputVariable", "name")]
    found = [n for n in names if isinstance(n, str) and n]
    raw.take("name", "inputName", "variableName", "inputVariable", "name")
    raw.set("names", list(dict.fromkeys(found)))
    raw.take("input_type", "inputType", "type")
    raw.take("required", "required")
    if "defaultValue" in raw.rest or "default" in raw.rest:
        raw.set("has_default", True)
        value = raw.rest.pop("defaultValue", raw.rest.pop("default", None))
        raw.rest.pop("default", None)
        raw.set("default_value", value, "defaultValue")
    raw.take("description", "description")
    _output_variable(raw)


@_normaliser("output", model=OutputConfig)
def _output(raw: _Raw) -> None:
    raw.take("name", "outputName", "name", "variableName")
    if "value" in raw.rest:
        raw.set("has_value", True)
        raw.set("value", raw.rest.pop("value"), "value")
    raw.take("format", "format")
    _output_variable(raw)


@_normaliser("trigger", model=TriggerConfig)
def _trigger(raw: _Raw) -> None:
    raw.take("trigger_type", "triggerType", "type")
    raw.take("schedule", "schedule", "cron", "cronExpression")
    raw.take("timezone", "timezone", "timeZone")
    raw.take("overlap", "overlap", "overlapPolicy")
    raw.take("missed", "missedTicks", "missed")
    raw.take("provider", "provider", "webhookProvider")
    raw.take("event", "event")
    _output_variable(raw)


@_normaliser("transform", model=TransformConfig)
def _transform(raw: _Raw) -> None:
    kind = raw.take("operation", "operation")
    transform_type = raw.rest.pop("transformType", None)
    if kind is _MISSING and transform_type is not None:
        raw.set("operation", str(transform_type), "transformType")
    elif kind is _MISSING:
        raw.set("operation", "template" if "template" in raw.rest else "passthrough")
    raw.take("input_data", "inputData", "input", "data")
    raw.take("expression", "expression", "jsonata")
    raw.take("template", "template")
    raw.take("sources", "sources")
    raw.take("merge_data", "mergeData")
    raw.take("path", "path")
    raw.take("operations", "operations")
    raw.take("condition", "condition")
    raw.take("delay_ms", "delayMs")
    _output_variable(raw)


@_normaliser("conditional", model=ConditionalConfig)
def _conditional(raw: _Raw) -> None:
    condition_type = raw.rest.pop("conditionType", None)
    has_comparison = raw.peek("leftValue", "operator") is not _MISSING
    expression = raw.take("expression", "expression", "condition")
    if expression is not _MISSING and (condition_type == "expression" or not has_comparison):
        raw.set("mode", "expression")
        raw.set("expression", str(expression), raw.origin.get("expression"))
    else:
        raw.set("mode", "comparison")
    raw.take("left_value", "leftValue", "left")
    raw.take("operator", "operator")
    raw.take("right_value", "rightValue", "right")
    _output_variable(raw)


def _case_list(value: Any) -> Any:
    if not isinstance(value, list):
        return value
    cases = []
    for case in value:
        if isinstance(case, dict):
            item = dict(case)
            if item.get("value") is None:
                item["value"] = item.get("label", "")
            item["value"] = _scalar_text(item["value"])
            cases.append(item)
        else:
            cases.append({"value": _scalar_text(case)})
    return cases


def _scalar_text(value: Any) -> Any:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(int(value)) if isinstance(value, float) and value.is_integer() else str(value)
    return value


@_normaliser("switch", model=SwitchConfig)
def _switch(raw: _Raw) -> None:
    raw.take("expression", "expression", "switchVariable", "variable", "value")
    cases = raw.take("cases", "cases")
    if cases is not _MISSING:
        raw.set("cases", _case_list(cases), "cases")
    default = raw.take("default_case", "defaultCase", "default")
    if default is not _MISSING:
        raw.set("default_case", _scalar_text(default), raw.origin.get("default_case"))
    _output_variable(raw)


@_normaliser("router", model=RouterConfig)
def _router(raw: _Raw) -> None:
    raw.take("router_type", "routerType")
    raw.take("provider", "provider")
    raw.take("model", "model")
    raw.take("prompt", "prompt", "routingPrompt")
    raw.take("system_prompt", "systemPrompt")
    raw.take("temperature", "temperature")
    raw.take("max_tokens", "maxTokens")
    routes = raw.take("routes", "routes")
    if routes is not _MISSING:
        raw.set("routes", _case_list(routes), "routes")
    default = raw.take("default_route", "defaultRoute")
    if default is not _MISSING:
        raw.set("default_route", _scalar_text(default), "defaultRoute")
    _output_variable(raw)


@_normaliser("loop", model=LoopConfig)
def _loop(raw: _Raw) -> None:
    loop_type = raw.take("loop_type", "loopType", "type")
    items = raw.take("items", "arrayPath", "collection", "items", "arrayVariable", "array")
    count = raw.take("count", "count", "times", "iterations")
    condition = raw.take("condition", "condition", "whileCondition")
    if loop_type is _MISSING:
        if items is _MISSING and count is not _MISSING:
            raw.set("loop_type", "count")
        elif items is _MISSING and condition is not _MISSING:
            raw.set("loop_type", "while")
        else:
            raw.set("loop_type", "forEach")
    else:
        aliases = {"foreach": "forEach", "for_each": "forEach", "each": "forEach", "times": "count"}
        raw.set("loop_type", aliases.get(str(loop_type).lower(), loop_type), "loopType")
    raw.take("item_variable", "itemVariable")
    raw.take("index_variable", "indexVariable", "iterationVariable")
    raw.take("max_iterations", "maxIterations")
    _output_variable(raw)


@_normaliser("wait", model=WaitConfig)
def _wait(raw: _Raw) -> None:
    wait_type = raw.take("wait_type", "waitType")
    trigger_type = raw.rest.pop("triggerType", None)
    unit = raw.rest.pop("durationUnit", None)
    value = raw.take("duration", "durationValue", "duration")
    timestamp = raw.take("timestamp", "timestamp", "untilDate", "until", "dateTime")
    raw.rest.pop("delayType", None)
    if unit == "timestamp":
        raw.set("wait_type", "until", "durationUnit")
        raw.set("timestamp", value, raw.origin.get("duration"))
        raw.values.pop("duration", None)
    elif unit is not None:
        canonical = canonical_unit(str(unit))
        raw.set("duration_unit", canonical or unit, "durationUnit")
    elif value is not _MISSING and wait_type == "duration":
        # Templates wrote `waitType: duration, duration: 86400` meaning seconds; a bare
        # `duration` (the backend shape) is milliseconds. See docs/node-types.md.
        raw.set("duration_unit", "seconds", "duration")
    if wait_type is _MISSING or wait_type in ("delay", "fixed"):
        if trigger_type == "webhook" or raw.peek("event") is not _MISSING:
            raw.set("wait_type", "webhook", "triggerType")
        elif timestamp is not _MISSING or unit == "timestamp":
            raw.set("wait_type", "until")
        else:
            raw.set("wait_type", "duration")
    elif wait_type in ("timestamp", "datetime", "date"):
        raw.set("wait_type", "until", "waitType")
    elif wait_type in ("event", "callback", "approval"):
        raw.set("wait_type", "webhook", "waitType")
    raw.take("provider", "provider")
    raw.take("event", "event")
    _output_variable(raw)


@_normaliser("humanReview", model=HumanReviewConfig)
def _human_review(raw: _Raw) -> None:
    raw.take("prompt", "prompt", "reviewPrompt", "message")
    variable = raw.take("variable_name", "variableName", "outputVariable")
    if variable is not _MISSING:
        raw.set("output_variable", variable)
    raw.take("input_type", "inputType")
    raw.take("required", "required")
    raw.take("default_value", "defaultValue")
    raw.take("validation", "validation")
    raw.take("placeholder", "placeholder")
    raw.take("timeout_ms", "timeout", "timeoutMs")
    raw.take("on_timeout", "onTimeout", "timeoutAction")
    raw.take("approvers", "approvers", "assignees", "assignee")
    raw.take("notify", "notify", "notifications")


@_normaliser("code", model=CodeConfig)
def _code(raw: _Raw) -> None:
    language = raw.take("language", "language")
    if isinstance(language, str):
        lang = {"js": "javascript", "node": "javascript", "py": "python", "python3": "python"}
        raw.set("language", lang.get(language.lower(), language.lower()), "language")
    raw.take("code", "code", "script")
    raw.take("timeout_ms", "timeout")
    raw.take("memory_mb", "memory", "memoryLimit")
    _output_variable(raw)


def _pairs(value: Any) -> Any:
    if isinstance(value, dict):
        return [{"key": str(k), "value": v} for k, v in value.items()]
    if isinstance(value, list):
        pairs = []
        for item in value:
            if isinstance(item, dict) and ("key" in item or "name" in item):
                pairs.append(
                    {"key": str(item.get("key", item.get("name"))), "value": item.get("value")}
                )
            else:
                pairs.append(item)
        return pairs
    return value


@_normaliser("http", model=HttpConfig)
def _http(raw: _Raw) -> None:
    raw.take("method", "method")
    raw.take("url", "url", "endpoint")
    headers = raw.take("headers", "headers")
    if headers is not _MISSING:
        raw.set("headers", _pairs(headers), "headers")
    query = raw.take("query_params", "queryParams", "params", "query")
    if query is not _MISSING:
        raw.set("query_params", _pairs(query), raw.origin.get("query_params"))
    raw.take("auth_type", "authType")
    raw.take("auth_credentials", "authCredentials", "auth")
    raw.take("body_type", "bodyType")
    raw.take("body", "body", "data")
    raw.take("timeout_s", "timeout")
    raw.take("retry_count", "retryCount")
    raw.take("fail_on_error", "failOnError", "failOnNon2xx")
    _output_variable(raw)


@_normaliser("llm", model=LLMConfig)
def _llm(raw: _Raw) -> None:
    raw.take("provider", "provider")
    raw.take("model", "model")
    raw.take("prompt", "prompt", "userPrompt")
    raw.take("system_prompt", "systemPrompt", "system")
    raw.take("temperature", "temperature")
    raw.take("max_tokens", "maxTokens", "max_tokens")
    _output_variable(raw)


@_normaliser("integration", model=IntegrationConfig)
def _integration(raw: _Raw) -> None:
    raw.take("provider", "provider")
    raw.take("operation", "operation", "action")
    params = raw.take("parameters", "parameters", "params")
    raw.take("connection_id", "connectionId", "connection")
    _output_variable(raw)
    # Everything else at the top level is a parameter of the operation.
    merged = {k: v for k, v in raw.rest.items()}
    if isinstance(params, dict):
        merged.update(params)
    elif params is not _MISSING:
        raw.set("parameters", params, "parameters")
        return
    raw.rest.clear()
    raw.set("parameters", merged)


@_normaliser("database", model=DatabaseConfig)
def _database(raw: _Raw) -> None:
    raw.take("provider", "provider", "databaseType", "type")
    raw.take("operation", "operation")
    raw.take("query", "query", "sql")
    raw.take("parameters", "parameters", "params")
    raw.take("connection_id", "connectionId", "connection")
    _output_variable(raw)


_MEMORY_OPERATIONS = {
    "store": "store",
    "set": "store",
    "save": "store",
    "write": "store",
    "get": "get",
    "read": "get",
    "retrieve": "get",
    "load": "get",
    "append": "append",
    "push": "append",
    "search": "search",
    "query": "search",
    "delete": "delete",
    "remove": "delete",
}


@_normaliser("shared-memory", model=SharedMemoryConfig)
def _shared_memory(raw: _Raw) -> None:
    operation = raw.take("operation", "operation", "action")
    if isinstance(operation, str):
        raw.set("operation", _MEMORY_OPERATIONS.get(operation.lower(), operation), "operation")
    raw.take("key", "key")
    raw.take("value", "value")
    raw.take("search_query", "searchQuery", "query")
    raw.take("top_k", "topK")
    _output_variable(raw)


@_normaliser("subworkflow", model=SubworkflowConfig)
def _subworkflow(raw: _Raw) -> None:
    raw.take("workflow_id", "workflowId", "workflow", "childWorkflowId")
    raw.take("inputs", "inputs", "input", "parameters")
    _output_variable(raw)


@_normaliser("checkpoint", model=CheckpointConfig)
def _checkpoint(raw: _Raw) -> None:
    raw.take("name", "checkpointName", "name")
    raw.take("expires_in", "expiresIn", "expiry", "ttl", "retention")
    raw.take("pause_here", "pauseHere", "pause")
    raw.take("description", "description")
    _output_variable(raw)


@_normaliser("batch", model=BatchConfig)
def _batch(raw: _Raw) -> None:
    raw.take("items", "items", "arrayPath", "collection", "array", "arrayVariable")
    raw.take("batch_size", "batchSize", "chunkSize", "batch_size")
    raw.take("concurrency", "concurrency", "maxConcurrency", "parallelism")
    strategy = raw.take("on_item_error", "onItemError", "itemErrorStrategy", "onItemFailure")
    continue_on_error = raw.rest.pop("continueOnError", None)
    if strategy is _MISSING and isinstance(continue_on_error, bool):
        raw.set("on_item_error", "continue" if continue_on_error else "fail", "continueOnError")
    raw.take("min_success", "minSuccess", "minSuccessCount", "successThreshold")
    raw.take("item_variable", "itemVariable")
    raw.take("index_variable", "indexVariable")
    raw.take("max_items", "maxItems", "maxIterations")
    _output_variable(raw)


RETRY_DEFAULT_KEYS: tuple[str, ...] = (
    "maxAttempts",
    "maxRetries",
    "attempts",
    "backoffStrategy",
    "backoff",
    "strategy",
    "minDelayMs",
    "initialDelayMs",
    "delayMs",
    "maxDelayMs",
    "randomize",
    "jitter",
    "retryableErrors",
    "nonRetryableErrors",
)


@_normaliser("retryConfig", model=RetryConfigConfig)
def _retry_config(raw: _Raw) -> None:
    for key in ("retry", "retryPolicy", "retrySettings", "defaults"):
        nested = raw.rest.get(key)
        if isinstance(nested, dict):
            raw.rest.pop(key)
            raw.set("retry", dict(nested), key)
            raw.set("retry_field", key)
            return
    found = {key: raw.rest.pop(key) for key in RETRY_DEFAULT_KEYS if key in raw.rest}
    raw.set("retry", found)


@_normaliser("queueConfig", model=QueueConfigConfig)
def _queue_config(raw: _Raw) -> None:
    raw.take("priority", "priority", "priorityLevel")
    raw.take("queue", "queue", "queueName")
    raw.take("concurrency_key", "concurrencyKey", "concurrencyGroup", "concurrency_key")


def _media(raw: _Raw) -> None:
    raw.take("provider", "provider")
    raw.take("model", "model")
    raw.take("operation", "operation", "action")
    _output_variable(raw)


def normalise_config(
    node_type: str, raw_config: dict[str, Any], *, node_id: str
) -> tuple[NodeConfig, list[Problem]]:
    """Canonical config of a node, plus a problem per field whose value has the wrong type."""
    model, normalise = _NORMALISERS.get(node_type, (MediaConfig, _media))
    raw = _Raw(raw_config)
    normalise(raw)
    values = raw.result()
    try:
        return model.model_validate(values), []
    except ValidationError as exc:
        problems = []
        bad_fields = set()
        for err in exc.errors():
            field = str(err["loc"][0]) if err["loc"] else ""
            bad_fields.add(field)
            original = raw.origin.get(field, field)
            message = err["msg"].removeprefix("Value error, ")
            problems.append(
                error(
                    "invalid_config",
                    f"{original}: {message} (got {_short(values.get(field))})",
                    node_id=node_id,
                    field=original,
                )
            )
        # Keep the node usable for further checks: drop the bad fields.
        kept = {k: v for k, v in values.items() if k not in bad_fields}
        try:
            return model.model_validate(kept), problems
        except ValidationError:
            return model.model_construct(), problems


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
