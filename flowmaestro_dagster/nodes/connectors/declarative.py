"""Declarative connectors: a provider is a YAML file, one generic executor runs them all.

A file `catalog/<provider>.yaml` names the provider's base URL, its auth scheme and its
operations (method, path template, query and body mappings from the node's parameters,
pagination, retry hints, the output to keep). `catalogue()` loads and validates every file
once (a bad file raises `CatalogueError`); `execute()` renders an operation into a request,
sends it through the SSRF-guarded client with the connection's credentials placed as the
scheme says, follows pages up to a cap, and maps the answer: the provider's JSON (trimmed as
declared) or a node error carrying the provider's own code and message. Operations that need
code (a MIME message, a conversion) name a hook in `hooks/<provider>.py`. docs/providers.md
is the format reference.

Mappings (`query`, `body`, `headers`): a string that is exactly `{name}` becomes the
parameter's value (typed); `{name}` inside a longer string is interpolated; a key whose
parameter is missing is left out. The base URL's placeholders come from the connection
(`https://{subdomain}.zendesk.com/api/v2`).
"""

import base64
import copy
import functools
import importlib
import json
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import quote

import httpx
import yaml  # type: ignore[import-untyped]  # PyYAML ships no stubs
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from flowmaestro_dagster.errors import (
    ConnectionDestinationError,
    ConnectorNotConfiguredError,
    NodeConfigurationError,
    NodeExecutionError,
    TransientNodeError,
)
from flowmaestro_dagster.lang.expressions import to_text
from flowmaestro_dagster.nodes.http import (
    RequestParts,
    _send_failure,
    _TooLarge,
    parse_body,
    send,
)
from flowmaestro_dagster.nodes.net import BlockedAddressError, parse_retry_after, under_base_url
from flowmaestro_dagster.settings import ConnectionSettings
from flowmaestro_dagster.spec.problems import Problem, error, warning

if TYPE_CHECKING:
    from flowmaestro_dagster.nodes.connectors import ConnectorRegistry, ConnectorRequest

CATALOG_PACKAGE = "flowmaestro_dagster.nodes.connectors"
CATALOG_DIR = "catalog"
HOOKS_PACKAGE = "flowmaestro_dagster.nodes.connectors.hooks"
HARD_MAX_PAGES = 100
"""No operation, however declared or configured, reads more pages than this in one run."""
DEFAULT_RETRY_STATUSES = (408, 429, 500, 502, 503, 504)
_ERROR_TEXT_CHARS = 300
_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_.\-]*)\}")
_OMIT = object()

Scheme = Literal["oauth2", "api_key", "basic", "bearer", "none"]
ParamType = Literal["string", "integer", "number", "boolean", "object", "array", "rows", "any"]
Method = Literal["GET", "POST", "PUT", "PATCH", "DELETE"]


class CatalogueError(ValueError):
    """A catalogue file is not a valid provider description (raised at load, never at run)."""


class ParameterError(ValueError):
    """A hook's complaint about a node parameter: becomes a node error naming the field."""

    def __init__(self, name: str, message: str) -> None:
        self.name = name
        super().__init__(message)


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


# -- the format --------------------------------------------------------------------------------


class AuthSpec(_Model):
    """How a connection's credential goes on a request, and for OAuth2 where tokens come from.

    `secrets` are the connection secrets tried in order (`connection.secret(name)`); by default
    `access_token`, `token`, `api_key` for oauth2 and bearer (a personal token works where the
    provider takes one), `api_key` for api_key, `password` (with `username`) for basic.
    """

    scheme: Scheme
    location: Literal["header", "query"] = Field(default="header", alias="in")
    name: str | None = None
    prefix: str | None = None
    secrets: list[str] = Field(default_factory=list)
    authorize_url: str | None = None
    token_url: str | None = None
    revoke_url: str | None = None
    scopes: list[str] = Field(default_factory=list)
    scope_separator: str = " "
    extra_authorize_params: dict[str, str] = Field(default_factory=dict)
    pkce: bool = False
    client_auth: Literal["basic", "body"] = "body"
    docs: str | None = None

    @model_validator(mode="after")
    def _complete(self) -> "AuthSpec":
        if self.scheme == "oauth2" and not (self.authorize_url and self.token_url):
            raise ValueError("oauth2 needs authorize_url and token_url")
        if self.scheme == "api_key" and not self.name:
            raise ValueError("api_key needs the header or query parameter `name`")
        if self.scheme in ("basic", "none") and self.location != "header":
            raise ValueError(f"{self.scheme} auth has no placement")
        return self

    @property
    def secret_names(self) -> tuple[str, ...]:
        if self.secrets:
            return tuple(self.secrets)
        return {
            "oauth2": ("access_token", "token", "api_key"),
            "bearer": ("token", "access_token", "api_key"),
            "api_key": ("api_key", "token"),
            "basic": ("password",),
            "none": (),
        }[self.scheme]

    @property
    def param_name(self) -> str:
        """The header (or query parameter) that carries the credential."""
        return self.name or "Authorization"

    @property
    def value_prefix(self) -> str:
        if self.prefix is not None:
            return self.prefix
        return "Bearer " if self.scheme in ("oauth2", "bearer") and not self.name else ""


class ParameterSpec(_Model):
    """One parameter of an operation: the builder's name, its other spellings, its type."""

    name: str
    type: ParamType = "string"
    required: bool = False
    aliases: list[str] = Field(default_factory=list)
    default: Any = None
    description: str = ""
    from_connection: str | None = None
    """A connection field used when the node leaves the parameter out (Airtable's base)."""
    separator: str | None = None
    """An array sent as one text joined by this (HubSpot's `properties=a,b`)."""


class PaginationSpec(_Model):
    """How an operation's results continue: a cursor in the body, a page number, a Link header.

    `items` is the list in each page (dotted path); the output keeps the last page's JSON with
    `items` replaced by every page's items. Pages stop at `max_pages` (a node may lower or
    raise it with `maxPages`, never above HARD_MAX_PAGES) or when `limit_param`'s value in
    items is reached.
    """

    style: Literal["cursor", "page", "link"]
    items: str
    cursor_path: str | None = None
    cursor_param: str | None = None
    cursor_in: Literal["query", "body"] = "query"
    has_more_path: str | None = None
    page_param: str = "page"
    first_page: int = 1
    max_pages: int = Field(default=10, ge=1, le=HARD_MAX_PAGES)
    limit_param: str | None = None

    @model_validator(mode="after")
    def _complete(self) -> "PaginationSpec":
        if self.style == "cursor" and not (self.cursor_path and self.cursor_param):
            raise ValueError("cursor pagination needs cursor_path and cursor_param")
        return self


class RetrySpec(_Model):
    """Which answers are worth retrying (the node's retry policy decides how often)."""

    statuses: list[int] = Field(default_factory=lambda: list(DEFAULT_RETRY_STATUSES))
    retry_after: bool = True


class ErrorSpec(_Model):
    """Where the provider puts its error code and message (dotted paths); common shapes are
    recognised without it."""

    code: str | None = None
    message: str | None = None


class OutputSpec(_Model):
    """The part of the answer that becomes the node's output: a dotted path, and the keys kept
    (of the object, or of each object of a list)."""

    path: str | None = None
    keep: list[str] | None = None


class HookSpec(_Model):
    """Functions in hooks/<provider>.py: `request(prepared, params)` returns the request to
    send, `output(data, params)` the node's output."""

    request: str | None = None
    output: str | None = None


class ExampleRequest(_Model):
    method: str
    path: str
    query: dict[str, Any] = Field(default_factory=dict)
    headers: dict[str, str] = Field(default_factory=dict)
    body: Any = None
    form: dict[str, Any] | None = None


class ExampleResponse(_Model):
    status: int = 200
    headers: dict[str, str] = Field(default_factory=dict)
    body: Any = None


class ExampleExchange(_Model):
    request: ExampleRequest
    response: "ExampleResponse"


class ExampleSpec(_Model):
    """A documented call: the contract test sends `parameters` and expects `request`, then
    answers `response` and expects `output`; `before` are reads a hook makes first."""

    parameters: dict[str, Any] = Field(default_factory=dict)
    connection: dict[str, Any] = Field(default_factory=dict)
    before: list[ExampleExchange] = Field(default_factory=list)
    request: ExampleRequest
    response: ExampleResponse = Field(default_factory=ExampleResponse)
    output: Any = None


class OperationSpec(_Model):
    id: str
    name: str = ""
    aliases: list[str] = Field(default_factory=list)
    docs: str
    method: Method
    path: str
    query: dict[str, Any] = Field(default_factory=dict)
    body: Any = None
    body_type: Literal["json", "form"] = "json"
    headers: dict[str, str] = Field(default_factory=dict)
    parameters: list[ParameterSpec] = Field(default_factory=list)
    pagination: PaginationSpec | None = None
    retry: RetrySpec | None = None
    output: OutputSpec = Field(default_factory=OutputSpec)
    hook: HookSpec | None = None
    example: ExampleSpec | None = None

    @model_validator(mode="after")
    def _consistent(self) -> "OperationSpec":
        names = [p.name for p in self.parameters]
        if len(set(names)) != len(names):
            raise ValueError(f"operation {self.id}: a parameter is declared twice")
        declared = set(names)
        used = set(_PLACEHOLDER.findall(self.path))
        for mapping in (self.query, self.body, self.headers):
            used |= set(_placeholders(mapping))
        unknown = sorted(used - declared)
        if unknown:
            raise ValueError(f"operation {self.id}: undeclared parameters {unknown}")
        if not self.path.startswith("/"):
            raise ValueError(f"operation {self.id}: path must start with '/'")
        return self

    @property
    def ids(self) -> list[str]:
        return [self.id, *self.aliases]

    @property
    def required(self) -> list[ParameterSpec]:
        return [p for p in self.parameters if p.required]


class ProviderSpec(_Model):
    """A provider: where its API is, how it authenticates, what it can do."""

    id: str
    name: str
    docs: str
    base_url: str
    auth: AuthSpec
    headers: dict[str, str] = Field(default_factory=dict)
    retry: RetrySpec = Field(default_factory=RetrySpec)
    errors: ErrorSpec = Field(default_factory=ErrorSpec)
    operations: list[OperationSpec]

    @model_validator(mode="after")
    def _unique(self) -> "ProviderSpec":
        seen: dict[str, str] = {}
        for op in self.operations:
            for name in op.ids:
                key = name.lower()
                if key in seen:
                    raise ValueError(f"operation id {name!r} is used by {seen[key]} and {op.id}")
                seen[key] = op.id
        if not self.base_url.startswith(("https://", "http://")):
            raise ValueError("base_url must be an absolute http(s) URL")
        return self

    def operation(self, name: str | None) -> OperationSpec | None:
        """The operation `name` names (its id or an alias, any case)."""
        if not name:
            return None
        key = name.strip().lower()
        for op in self.operations:
            if any(key == n.lower() for n in op.ids):
                return op
        return None

    @property
    def operation_ids(self) -> frozenset[str]:
        return frozenset(n for op in self.operations for n in op.ids)


def _placeholders(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield from _PLACEHOLDER.findall(value)
    elif isinstance(value, Mapping):
        for key, item in value.items():
            yield from _placeholders(key)
            yield from _placeholders(item)
    elif isinstance(value, list):
        for item in value:
            yield from _placeholders(item)


# -- loading -------------------------------------------------------------------------------------


def load_provider(text: str, source: str = "<text>") -> ProviderSpec:
    """One provider file, validated (its hooks must exist); CatalogueError names the file."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise CatalogueError(f"{source}: not YAML: {exc}") from exc
    try:
        spec = ProviderSpec.model_validate(data)
    except ValidationError as exc:
        raise CatalogueError(f"{source}: {exc}") from exc
    for op in spec.operations:
        if op.hook is not None:
            for kind in ("request", "output"):
                name = getattr(op.hook, kind)
                if name is not None:
                    try:
                        hook_function(spec.id, name)
                    except (ImportError, AttributeError) as exc:
                        raise CatalogueError(
                            f"{source}: operation {op.id}: {kind} hook {name!r}: {exc}"
                        ) from exc
    return spec


def hook_function(provider: str, name: str) -> Callable[..., Any]:
    """`hooks/<provider>.py`'s function `name` (dashes in the provider id become `_`)."""
    module = importlib.import_module(f"{HOOKS_PACKAGE}.{provider.replace('-', '_')}")
    function = getattr(module, name)
    if not callable(function):
        raise AttributeError(f"{name} is not a function")
    return function


def catalogue_files() -> list[tuple[str, str]]:
    """(file name, text) of every catalogue file shipped in the package."""
    folder = resources.files(CATALOG_PACKAGE) / CATALOG_DIR
    return sorted(
        (entry.name, entry.read_text(encoding="utf-8"))
        for entry in folder.iterdir()
        if entry.name.endswith((".yaml", ".yml"))
    )


@functools.cache
def catalogue() -> Mapping[str, ProviderSpec]:
    """Every declarative provider, keyed by id (loaded and validated once per process)."""
    providers: dict[str, ProviderSpec] = {}
    for name, text in catalogue_files():
        spec = load_provider(text, f"{CATALOG_DIR}/{name}")
        stem = name.rsplit(".", 1)[0]
        if spec.id != stem:
            raise CatalogueError(f"{CATALOG_DIR}/{name}: id {spec.id!r} differs from the file name")
        providers[spec.id] = spec
    return MappingProxyType(providers)


# -- registry ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DeclarativeConnector:
    """The registry's connector for a catalogued provider: `execute` with its spec."""

    provider: ProviderSpec

    def __call__(self, request: "ConnectorRequest") -> Any:
        return execute(self.provider, request)


def register(registry: "ConnectorRegistry") -> None:
    """Register every catalogued provider (for its operations and their aliases)."""
    from flowmaestro_dagster.nodes.connectors import ConnectorSpec

    for spec in catalogue().values():
        registry.add(
            ConnectorSpec(
                spec.id,
                DeclarativeConnector(spec),
                spec.operation_ids,
                needs_connection=spec.auth.scheme != "none",
                description=f"{spec.name} (declarative)",
            )
        )


def how_to_connect(provider: str) -> str:
    """Where an operator or a user adds a connection for `provider`."""
    variable = provider.upper().replace("-", "_")
    return (
        f"add one with POST /connections (provider {provider}) or "
        f"FLOWMAESTRO_CONNECTIONS__{variable}__... (docs/providers.md)"
    )


# -- deploy-time checks -------------------------------------------------------------------------


def unknown_operation_problem(
    node_id: str, provider: ProviderSpec, operation: str | None
) -> Problem:
    """An error naming the node's `operation`, with the operations the provider has."""
    known = ", ".join(op.id for op in provider.operations)
    what = f"has no operation '{operation}'" if operation else "needs an operation"
    return error(
        "unknown_operation",
        f"{provider.name} {what} (operations: {known})",
        node_id=node_id,
        field="operation",
    )


def node_problems(
    node_id: str,
    provider: ProviderSpec,
    operation: str | None,
    parameters: Mapping[str, Any],
    *,
    strict: bool = True,
) -> list[Problem]:
    """A `missing_parameter` problem per required parameter the node leaves out (a `{{...}}`
    template counts as set: it may fill it). An error when the node is bound to a connection
    (`strict`); a warning for a node no connection serves yet, which cannot run here anyway
    (the builder's starter templates leave parameters for the user to fill in)."""
    op = provider.operation(operation)
    if op is None:
        return [unknown_operation_problem(node_id, provider, operation)]
    make = error if strict else warning
    problems = []
    for param in op.required:
        if param.from_connection or is_set(parameters, param):
            continue
        names = " / ".join(f"parameters.{n}" for n in (param.name, *param.aliases))
        problems.append(
            make(
                "missing_parameter",
                f"{provider.name} {op.id} needs {names}",
                node_id=node_id,
                field=f"parameters.{param.name}",
            )
        )
    return problems


# -- parameters ----------------------------------------------------------------------------------


def _lookup(raw: Mapping[str, Any], param: ParameterSpec) -> Any:
    names = [param.name, *param.aliases]
    for name in names:
        if raw.get(name) not in (None, ""):
            return raw[name]
    lowered = {str(k).lower(): v for k, v in raw.items()}
    for name in names:
        if lowered.get(name.lower()) not in (None, ""):
            return lowered[name.lower()]
    return None


def is_set(raw: Mapping[str, Any], param: ParameterSpec) -> bool:
    """Whether a node's parameters give `param` a value (by its name or an alias)."""
    return _lookup(raw, param) is not None


def _coerce(param: ParameterSpec, value: Any) -> Any:
    """The value as the parameter's type; ValueError with the reason when it cannot be."""
    kind = param.type
    if kind in ("any",):
        return value
    if kind == "string":
        return value if isinstance(value, str) else to_text(value)
    if kind == "boolean":
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in ("true", "1", "yes"):
            return True
        if text in ("false", "0", "no"):
            return False
        raise ValueError("must be true or false")
    if kind in ("integer", "number"):
        if isinstance(value, bool):
            raise ValueError(f"must be a {kind}")
        try:
            number = float(value) if kind == "number" else int(str(value).strip())
        except ValueError:
            raise ValueError(f"must be a {kind}") from None
        return number
    if isinstance(value, str) and kind in ("object", "array", "rows"):
        try:
            if not value.strip().startswith(("{", "[")):
                raise ValueError("not JSON structure")
            value = json.loads(value)
        except ValueError:
            if kind == "object":
                raise ValueError("must be an object (or its JSON text)") from None
            value = (
                [part.strip() for part in value.split(",") if part.strip()]
                if kind == "array"
                else [[value]]
            )
    if kind == "object":
        if not isinstance(value, dict):
            raise ValueError("must be an object")
        return value
    if kind == "array":
        items = value if isinstance(value, list) else [value]
        return param.separator.join(to_text(i) for i in items) if param.separator else items
    # rows: a list of rows; one flat row becomes [[...]]
    if not isinstance(value, list):
        return [[value]]
    if value and all(not isinstance(item, list) for item in value):
        return [value]
    return value


def resolve_parameters(
    op: OperationSpec,
    raw: Mapping[str, Any],
    connection: ConnectionSettings | None,
    fail: Callable[[str, str], Exception],
) -> dict[str, Any]:
    """The operation's parameters from the node's (by name or alias), typed, with defaults;
    `fail(field, message)` builds the error for a missing or mistyped one."""
    values: dict[str, Any] = {}
    for param in op.parameters:
        value = _lookup(raw, param)
        if value is None and param.from_connection and connection is not None:
            value = connection.secret(param.from_connection)
        if value is None and param.default is not None:
            value = param.default
        if value is None:
            if param.required:
                where = (
                    f" or the connection's {param.from_connection}" if param.from_connection else ""
                )
                raise fail(
                    f"parameters.{param.name}",
                    f"operation {op.id} needs parameters.{param.name}{where}",
                )
            continue
        try:
            values[param.name] = _coerce(param, value)
        except ValueError as exc:
            raise fail(f"parameters.{param.name}", f"parameters.{param.name} {exc}") from None
    return values


# -- rendering -----------------------------------------------------------------------------------


def render_mapping(template: Any, values: Mapping[str, Any]) -> Any:
    """A query/body/header mapping with the parameters filled in; `_OMIT` when it is empty."""
    if isinstance(template, str):
        whole = _PLACEHOLDER.fullmatch(template)
        if whole:
            return values.get(whole.group(1), _OMIT)
        names = _PLACEHOLDER.findall(template)
        if any(values.get(n) is None for n in names):
            return _OMIT
        return _PLACEHOLDER.sub(lambda m: to_text(values[m.group(1)]), template)
    if isinstance(template, Mapping):
        out: dict[str, Any] = {}
        for key, item in template.items():
            name = render_mapping(str(key), values)
            rendered = render_mapping(item, values)
            if name is _OMIT or rendered is _OMIT:
                continue
            out[to_text(name)] = rendered
        return out if out or not template else _OMIT
    if isinstance(template, list):
        items = [render_mapping(item, values) for item in template]
        kept = [item for item in items if item is not _OMIT]
        return kept if kept or not template else _OMIT
    return template


def render_path(
    op: OperationSpec, values: Mapping[str, Any], fail: Callable[..., Exception]
) -> str:
    """The path with each `{param}` URL-encoded as one segment: a value cannot climb out of
    it (`..`, a slash; an encoded slash would be refused by the base-URL check anyway)."""

    def fill(match: re.Match[str]) -> str:
        name = match.group(1)
        value = values.get(name)
        if value is None:
            raise fail(f"parameters.{name}", f"operation {op.id} needs parameters.{name}")
        text = to_text(value)
        if text in (".", "..") or "/" in text or "\\" in text:
            raise fail(
                f"parameters.{name}",
                f"parameters.{name} cannot be '.' or '..' or hold a slash (it is one path "
                f"segment): {text[:80]!r}",
            )
        return quote(text, safe="@:!$'()*,;=")

    return _PLACEHOLDER.sub(fill, op.path)


def render_base_url(
    provider: ProviderSpec, connection: ConnectionSettings | None, fail: Callable[..., Exception]
) -> str:
    """The connection's base_url (a proxy, a test server), else the provider's, with
    `{field}` placeholders from the connection (Zendesk's subdomain)."""
    if connection is not None and connection.base_url:
        return connection.base_url.rstrip("/")

    def fill(match: re.Match[str]) -> str:
        name = match.group(1)
        value = connection.secret(name) if connection is not None else None
        if not value or not re.fullmatch(r"[A-Za-z0-9.\-_]+", value):
            raise fail(
                "connectionId",
                f"{provider.id}'s connection needs a valid `{name}` for {provider.base_url}",
            )
        return value

    return _PLACEHOLDER.sub(fill, provider.base_url).rstrip("/")


@dataclass
class PreparedRequest:
    """A request before auth: what hooks receive and return."""

    method: str
    path: str
    query: list[tuple[str, str]] = field(default_factory=list)
    headers: dict[str, str] = field(default_factory=dict)
    json: Any = None
    form: dict[str, Any] | None = None
    content: bytes | None = None

    def kwargs(self) -> dict[str, Any]:
        if self.content is not None:
            return {"content": self.content}
        if self.form is not None:  # a list repeats the field, as in a query
            return {
                "data": {
                    k: [to_text(i) for i in v] if isinstance(v, list) else to_text(v)
                    for k, v in self.form.items()
                }
            }
        if self.json is not None:
            return {"json": self.json}
        return {}


def _query_pairs(mapping: Any) -> list[tuple[str, str]]:
    pairs: list[tuple[str, str]] = []
    if not isinstance(mapping, Mapping):
        return pairs
    for key, value in mapping.items():
        for item in value if isinstance(value, list) else [value]:
            if item is None:
                continue
            text = json.dumps(item) if isinstance(item, dict) else to_text(item)
            pairs.append((str(key), text))
    return pairs


def prepare(
    op: OperationSpec,
    provider: ProviderSpec,
    values: Mapping[str, Any],
    fail: Callable[..., Exception],
) -> PreparedRequest:
    """The operation's request from its mappings (before hooks and auth)."""
    prepared = PreparedRequest(method=op.method, path=render_path(op, values, fail))
    prepared.query = _query_pairs(render_mapping(op.query, values) if op.query else {})
    headers = render_mapping({**provider.headers, **op.headers}, values)
    prepared.headers = (
        {k: to_text(v) for k, v in (headers or {}).items()} if headers is not _OMIT else {}
    )
    if op.body is not None:
        body = render_mapping(op.body, values)
        if body is _OMIT:
            body = {} if isinstance(op.body, Mapping) else None
        if op.body_type == "form":
            prepared.form = body if isinstance(body, dict) else {}
        else:
            prepared.json = body
    return prepared


# -- the executor --------------------------------------------------------------------------------


def walk_path(data: Any, path: str | None) -> Any:
    """`a.b.0.c` into JSON (None when any step is missing)."""
    if not path:
        return data
    for part in path.split("."):
        if isinstance(data, Mapping):
            data = data.get(part)
        elif (
            isinstance(data, list)
            and part.lstrip("-").isdigit()
            and -len(data) <= int(part) < len(data)
        ):
            data = data[int(part)]
        else:
            return None
    return data


def _set_path(data: Any, path: str, value: Any) -> Any:
    if not isinstance(data, dict):
        return value
    head, _, rest = path.partition(".")
    updated = dict(data)
    updated[head] = _set_path(updated.get(head), rest, value) if rest else value
    return updated


def pick_output(spec: OutputSpec, data: Any) -> Any:
    """The declared part of the answer, with only the declared keys."""
    value = walk_path(data, spec.path)
    if spec.keep is None:
        return value
    keep = spec.keep

    def trim(item: Any) -> Any:
        return {k: item[k] for k in keep if k in item} if isinstance(item, Mapping) else item

    return [trim(item) for item in value] if isinstance(value, list) else trim(value)


def provider_error(data: Any, errors: ErrorSpec) -> tuple[str | None, str | None]:
    """(code, message) from a provider's error body: the declared paths, else the common
    shapes `{error: {code, message}}`, `{error, error_description}`, `{message, code}`,
    `{errors: [{message}]}`, Slack's `{ok: false, error}`."""
    if not isinstance(data, Mapping):
        text = data.strip()[:_ERROR_TEXT_CHARS] if isinstance(data, str) and data.strip() else None
        return None, text
    code = walk_path(data, errors.code) if errors.code else None
    message = walk_path(data, errors.message) if errors.message else None
    inner = data.get("error")
    if isinstance(inner, Mapping):
        code = code or inner.get("status") or inner.get("code") or inner.get("type")
        message = message or inner.get("message")
    elif isinstance(inner, str):
        code = code or (inner if " " not in inner else None)
        message = message or data.get("error_description") or data.get("message") or inner
    listed = data.get("errors")
    if isinstance(listed, list) and listed:
        first = listed[0]
        if isinstance(first, Mapping):
            code = code or first.get("code") or first.get("error") or first.get("type")
            message = message or first.get("message") or first.get("detail")
        elif isinstance(first, str):
            message = message or first
    code = code or data.get("code") or data.get("category") or data.get("type")
    message = message or data.get("message") or data.get("detail") or data.get("title")
    return (
        to_text(code) if code not in (None, "") else None,
        to_text(message)[:_ERROR_TEXT_CHARS] if message not in (None, "") else None,
    )


@dataclass
class _Call:
    """One run of an operation: what every request of it shares."""

    provider: ProviderSpec
    op: OperationSpec
    request: "ConnectorRequest"
    connection: ConnectionSettings | None
    values: dict[str, Any]
    base_url: str
    timeout: float
    secret_params: set[str] = field(default_factory=set)
    refreshed: bool = False

    @property
    def retry(self) -> RetrySpec:
        return self.op.retry or self.provider.retry

    def fail(
        self, field_name: str, message: str, cls: type[NodeExecutionError] = NodeConfigurationError
    ) -> NodeExecutionError:
        return self.request.node.error(
            message, cls, details={"field": field_name, "provider": self.provider.id}
        )


class HookApi:
    """What a request hook may do besides rewriting the request: read from the provider
    through the same client, credentials and caps (Gmail's reply reads the original)."""

    def __init__(self, call: "_Call") -> None:
        self._call = call

    def get(self, path: str, query: Sequence[tuple[str, str]] = ()) -> Any:
        """GET `path` (under the base URL; its values already URL-encoded) as parsed JSON."""
        headers = {
            k: v for k, v in self._call.provider.headers.items() if k.lower() != "content-type"
        }
        return _send(self._call, PreparedRequest("GET", path, list(query), headers))


def execute(provider: ProviderSpec, request: "ConnectorRequest") -> Any:
    """Run `request.operation` of `provider`: render, authenticate, send, paginate, map."""
    node = request.node
    op = provider.operation(request.operation)
    if op is None:
        known = ", ".join(o.id for o in provider.operations)
        raise node.error(
            f"{provider.id} has no operation {request.operation!r} (operations: {known})",
            NodeConfigurationError,
            details={"field": "operation"},
        )
    connection = request.connection
    if provider.auth.scheme != "none" and connection is None:
        raise node.error(
            f"no connection for provider {provider.id} (operation {request.operation}): "
            f"{provider.name} needs a connection; {how_to_connect(provider.id)}",
            ConnectorNotConfiguredError,
            details={"provider": provider.id},
        )

    def fail(field_name: str, message: str) -> Exception:
        return node.error(message, NodeConfigurationError, details={"field": field_name})

    values = resolve_parameters(op, request.parameters, connection, fail)
    settings = request.settings.http
    timeout = min(
        connection.timeout_s if connection is not None else settings.timeout_s,
        settings.max_timeout_s,
    )
    call = _Call(
        provider=provider,
        op=op,
        request=request,
        connection=connection,
        values=values,
        base_url=render_base_url(provider, connection, fail),
        timeout=timeout,
    )
    prepared = prepare(op, provider, values, fail)
    if op.hook is not None and op.hook.request:
        try:
            prepared = hook_function(provider.id, op.hook.request)(prepared, values, HookApi(call))
        except ParameterError as exc:
            raise fail(f"parameters.{exc.name}", str(exc)) from None
    data = _paginate(call, prepared) if op.pagination else _send(call, prepared)
    if op.hook is not None and op.hook.output:
        data = hook_function(provider.id, op.hook.output)(data, values)
    return pick_output(op.output, data)


def _paginate(call: _Call, first: PreparedRequest) -> Any:
    pagination = call.op.pagination
    assert pagination is not None
    requested = call.request.param("maxPages", "max_pages")
    max_pages = pagination.max_pages
    if requested is not None:
        try:
            max_pages = int(requested)
        except (TypeError, ValueError):
            raise call.fail("parameters.maxPages", "parameters.maxPages must be a number") from None
    max_pages = max(1, min(max_pages, HARD_MAX_PAGES))
    limit = call.values.get(pagination.limit_param) if pagination.limit_param else None
    limit = int(limit) if isinstance(limit, int | float) and limit > 0 else None
    items: list[Any] = []
    prepared: PreparedRequest | None = first
    page_number = pagination.first_page
    last: Any = None
    url_override: str | None = None
    for _ in range(max_pages):
        assert prepared is not None
        data, headers = _send_once(call, prepared, url_override)
        last = data
        page_items = walk_path(data, pagination.items)
        if isinstance(page_items, list):
            items.extend(page_items)
        if limit is not None and len(items) >= limit:
            items = items[:limit]
            break
        if not isinstance(page_items, list) or not page_items:
            break
        if pagination.has_more_path and not walk_path(data, pagination.has_more_path):
            break
        prepared, url_override = _next_page(call, pagination, prepared, data, headers, page_number)
        page_number += 1
        if prepared is None:
            break
    return _set_path(last, pagination.items, items) if isinstance(last, dict) else items


def _next_page(
    call: _Call,
    pagination: PaginationSpec,
    prepared: PreparedRequest,
    data: Any,
    headers: Mapping[str, str],
    page_number: int,
) -> tuple[PreparedRequest | None, str | None]:
    """The request for the next page (None: there is none); a Link URL replaces the URL."""
    if pagination.style == "link":
        link = _next_link(headers.get("link", ""))
        if not link:
            return None, None
        return copy.deepcopy(prepared), link
    following = copy.deepcopy(prepared)
    if pagination.style == "page":
        value = str(page_number + 1)
        name = pagination.page_param
    else:
        cursor = walk_path(data, pagination.cursor_path)
        if cursor in (None, ""):
            return None, None
        value = to_text(cursor)
        name = pagination.cursor_param or ""
    if pagination.cursor_in == "body" and pagination.style == "cursor":
        following.json = {**(following.json or {}), name: value}
    else:
        following.query = [(k, v) for k, v in following.query if k != name] + [(name, value)]
    return following, None


def _next_link(header: str) -> str | None:
    """The `rel="next"` URL of an RFC 8288 Link header."""
    for part in header.split(","):
        url, _, params = part.partition(";")
        rels = re.findall(r'rel="?([^";]+)"?', params)
        if any("next" in r.split() for r in rels):
            return url.strip().strip("<>")
    return None


def _send(call: _Call, prepared: PreparedRequest) -> Any:
    return _send_once(call, prepared, None)[0]


def _auth(call: _Call, parts: RequestParts) -> None:
    """Place the connection's credential as the provider's scheme says."""
    auth = call.provider.auth
    connection = call.connection
    if auth.scheme == "none" or connection is None:
        return
    name = call.request.connection_name or call.provider.id
    if auth.scheme == "basic":
        username = connection.username or connection.secret("username") or ""
        password = connection.secret("password") or ""
        if not username:
            raise call.fail(
                "connectionId",
                f"connection '{name}' needs a username and password for {call.provider.name}",
                ConnectorNotConfiguredError,
            )
        token = base64.b64encode(f"{username}:{password}".encode()).decode()
        parts.secrets.update({password, token})
        parts.headers.append(("Authorization", f"Basic {token}"))
        parts.secret_headers.add("authorization")
        return
    secret = next((s for s in (connection.secret(n) for n in auth.secret_names) if s), None)
    if not secret:
        wanted = " or ".join(auth.secret_names)
        raise call.fail(
            "connectionId",
            f"connection '{name}' has no {wanted} for {call.provider.name}; "
            f"{how_to_connect(call.provider.id)}",
            ConnectorNotConfiguredError,
        )
    parts.secrets.add(secret)
    if auth.location == "query":
        parts.params.append((auth.param_name, secret))
        call.secret_params.add(auth.param_name)
    else:
        parts.headers.append((auth.param_name, auth.value_prefix + secret))
        parts.secret_headers.add(auth.param_name.lower())


def _build_parts(call: _Call, prepared: PreparedRequest, url_override: str | None) -> RequestParts:
    parts = RequestParts()
    parts.method = prepared.method
    if url_override is not None:  # a next-page link; a relative one is under the base URL
        url = httpx.URL(call.base_url + "/").join(url_override)
    else:
        url = httpx.URL(call.base_url + prepared.path)
        if prepared.query:
            merged = (*url.params.multi_items(), *prepared.query)
            url = url.copy_with(query=str(httpx.QueryParams(merged)).encode())
    parts.body = prepared.kwargs()
    # A declared JSON Content-Type means nothing without a JSON body (httpx sets a form's).
    keep_type = "json" in parts.body or "content" in parts.body
    parts.headers = [
        (k, v) for k, v in prepared.headers.items() if keep_type or k.lower() != "content-type"
    ]
    if not any(k.lower() == "accept" for k, _ in parts.headers):
        parts.headers.append(("Accept", "application/json"))
    _auth(call, parts)
    if parts.params:
        merged = (*url.params.multi_items(), *parts.params)
        url = url.copy_with(query=str(httpx.QueryParams(merged)).encode())
    parts.url = str(url)
    shown = url
    if call.secret_params:
        shown = url.copy_with(
            params=[
                (k, "REDACTED" if k in call.secret_params else v)
                for k, v in url.params.multi_items()
            ]
        )
    parts.display_url = str(shown.copy_with(query=None)) if shown.query else str(shown)
    _check_destination(call, parts.url)
    return parts


def _check_destination(call: _Call, url: str) -> None:
    """The connection's credential goes only under the provider's (or connection's) base URL."""
    if call.connection is not None and call.connection.base_url:
        call.request.check_destination(url)
        return
    if not under_base_url(url, call.base_url):
        raise call.request.node.error(
            f"{call.provider.id}: {httpx.URL(url).copy_with(query=None)} is not under "
            f"{call.base_url}; the connection's credentials go nowhere else",
            ConnectionDestinationError,
            details={"provider": call.provider.id, "base_url": call.base_url},
        )


def _send_once(
    call: _Call, prepared: PreparedRequest, url_override: str | None
) -> tuple[Any, Mapping[str, str]]:
    """One request (and once more with a refreshed token after a 401); the parsed answer."""
    while True:
        parts = _build_parts(call, prepared, url_override)
        settings = call.request.settings.http
        try:
            status, headers, body, _ = send(
                settings, parts, timeout=call.timeout, follow_redirects=True
            )
        except (BlockedAddressError, _TooLarge, httpx.InvalidURL, httpx.HTTPError) as exc:
            message, kind = _send_failure(
                exc, parts.method, parts.display_url, call.timeout, settings
            )
            raise call.request.node.error(
                f"{call.provider.id} {call.op.id}: {parts.mask(message)}",
                kind,
                details={"provider": call.provider.id, "operation": call.op.id},
            ) from None
        data = parse_body(body, headers) if body else None
        if status == 401 and _refresh(call):
            continue
        _check_answer(call, parts, status, headers, data)
        return (data if data is not None else {"ok": True, "status": status}), headers


def _refresh(call: _Call) -> bool:
    """After a 401: a fresh token from `request.refresh` (once per call)."""
    refresh = call.request.refresh
    if call.refreshed or refresh is None or call.provider.auth.scheme not in ("oauth2", "bearer"):
        return False
    call.refreshed = True
    fresh = refresh()
    if fresh is None:
        return False
    call.connection = fresh
    return True


def _check_answer(
    call: _Call, parts: RequestParts, status: int, headers: Mapping[str, str], data: Any
) -> None:
    """Retryable statuses are transient (with Retry-After); other failures carry the
    provider's code and message and are not retried."""
    slack_style = isinstance(data, Mapping) and data.get("ok") is False and "error" in data
    if 200 <= status < 300 and not slack_style:
        return
    code, message = provider_error(data, call.provider.errors)
    what = f"{call.provider.id} {call.op.id}"
    reason = message or f"HTTP {status}"
    text = f"{what} failed: HTTP {status}" + (f" {code}" if code else "") + f": {reason}"
    text = parts.mask(text)
    details = {
        "provider": call.provider.id,
        "operation": call.op.id,
        "status": status,
        "code": parts.mask(code) if code else None,
        "message": parts.mask(reason),
        "url": parts.display_url,
    }
    if status in call.retry.statuses:
        wait = parse_retry_after(headers) if call.retry.retry_after else None
        raise TransientNodeError(
            text,
            retry_after_seconds=wait,
            node_id=call.request.node.node_id,
            node_type=call.request.node.node_type,
            details=details,
        )
    raise call.request.node.error(text, NodeExecutionError, details=details)


__all__ = [
    "HARD_MAX_PAGES",
    "AuthSpec",
    "CatalogueError",
    "DeclarativeConnector",
    "ErrorSpec",
    "ExampleSpec",
    "HookApi",
    "HookSpec",
    "OperationSpec",
    "OutputSpec",
    "PaginationSpec",
    "ParameterError",
    "ParameterSpec",
    "PreparedRequest",
    "ProviderSpec",
    "RetrySpec",
    "catalogue",
    "execute",
    "how_to_connect",
    "is_set",
    "load_provider",
    "node_problems",
    "register",
    "resolve_parameters",
    "unknown_operation_problem",
]
