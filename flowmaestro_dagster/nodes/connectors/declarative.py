"""Declarative connectors: a provider is a YAML file, one generic executor runs them all.

A file `catalog/<provider>.yaml` names the provider's base URL (and other hosts it serves
from), its auth scheme(s) and its operations (method, path template, query, body or multipart
mappings from the node's parameters, pagination, retry hints, the output to keep).
`catalogue()` loads and validates every file once (a bad file raises `CatalogueError`);
`execute()` renders an operation into a request, sends it through the SSRF-guarded client with
the connection's credentials placed as the chosen scheme says, follows pages up to a cap, and
maps the answer: the provider's JSON (trimmed as declared, with declared response headers) or
a node error carrying the provider's own code and message. Operations that need code (a MIME
message, a sign-in, a lookup before a write) name a hook in `hooks/<provider>.py`; hooks send
further requests through `HookApi`, with the same credentials, guard, caps and error mapping.
docs/providers.md is the format reference.

Mappings (`query`, `body`, `headers`): a string that is exactly `{name}` becomes the
parameter's value (typed); `{name}` inside a longer string is interpolated; a key whose
parameter is missing is left out. The base URL's placeholders come from the connection
(`https://{subdomain}.zendesk.com/api/v2`).
"""

import base64
import contextlib
import copy
import functools
import importlib
import inspect
import json
import re
import secrets
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import quote, unquote_to_bytes

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
from flowmaestro_dagster.nodes.filestore import FileRef, file_area
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
    from flowmaestro_dagster.nodes.base import NodeContext
    from flowmaestro_dagster.nodes.connectors import ConnectorRegistry, ConnectorRequest

CATALOG_PACKAGE = "flowmaestro_dagster.nodes.connectors"
CATALOG_DIR = "catalog"
HOOKS_PACKAGE = "flowmaestro_dagster.nodes.connectors.hooks"
HARD_MAX_PAGES = 100
# libyaml when PyYAML was built with it (Debian and PyPI wheels are): loading the catalogue is
# then ~6x faster, which every process that validates a workflow pays once.
_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
"""No operation, however declared or configured, reads more pages than this in one run."""
DEFAULT_MAX_PAGES = 10
DEFAULT_RETRY_STATUSES = (408, 429, 500, 502, 503, 504)
HOOK_METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE"})
_ERROR_TEXT_CHARS = 300
_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_.\-]*)\}")
_HOST_VALUE = re.compile(r"[A-Za-z0-9.\-_]+")
_OMIT = object()
_CHUNK = 64 * 1024

Scheme = Literal["oauth2", "api_key", "basic", "bearer", "session", "none"]
ParamType = Literal[
    "string", "integer", "number", "boolean", "object", "array", "rows", "file", "any"
]
Method = Literal["GET", "POST", "PUT", "PATCH", "DELETE"]
BodyType = Literal["json", "form", "multipart", "multipart-related"]


class CatalogueError(ValueError):
    """A catalogue file is not a valid provider description (raised at load, never at run)."""


class ParameterError(ValueError):
    """A hook's complaint about a node parameter: becomes a node error naming the field."""

    def __init__(self, name: str, message: str) -> None:
        self.name = name
        super().__init__(message)


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


def _as_map(value: Any) -> Any:
    """`[a, b]` as `{a: a, b: b}` (a field kept under its own name), anything else as is."""
    if isinstance(value, list):
        return {str(item): str(item) for item in value}
    return value


# -- the format --------------------------------------------------------------------------------


class AuthSpec(_Model):
    """How a connection's credential goes on a request, and for OAuth2 where tokens come from.

    `secrets` are the connection secrets tried in order (`connection.secret(name)`); by default
    `access_token`, `token`, `api_key` for oauth2 and bearer (a personal token works where the
    provider takes one), `api_key` for api_key, `password` (with `username`) for basic. A
    `session` scheme signs in first: its `hook` (hooks/<provider>.py) gets a `HookApi` and the
    parameters and returns a `SessionAuth` (headers for every request, values for paths); its
    `secrets` are the connection secrets it needs. `in: path` puts the secret in the path where
    it says `{<name>}` (Telegram's `/bot{token}/sendMessage`). `base_url` is where this scheme
    is served when that is not the provider's (Jira's OAuth2 tokens go through
    api.atlassian.com). `token_fields` / `metadata_*` say what else an OAuth2 callback keeps on
    the connection (Salesforce's `instance_url`, Mailchimp's `dc`); `client_id_param` names the
    client id where a provider renames it (TikTok's `client_key`).
    """

    scheme: Scheme
    location: Literal["header", "query", "path"] = Field(default="header", alias="in")
    name: str | None = None
    prefix: str | None = None
    secrets: list[str] = Field(default_factory=list)
    base_url: str | None = None
    hook: str | None = None
    authorize_url: str | None = None
    token_url: str | None = None
    revoke_url: str | None = None
    scopes: list[str] = Field(default_factory=list)
    scope_separator: str = " "
    extra_authorize_params: dict[str, str] = Field(default_factory=dict)
    pkce: bool = False
    client_auth: Literal["basic", "body"] = "body"
    client_id_param: str = "client_id"
    token_fields: dict[str, str] = Field(default_factory=dict)
    metadata_url: str | None = None
    metadata_fields: dict[str, str] = Field(default_factory=dict)
    metadata_prefix: str = "Bearer "
    docs: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _lists(cls, data: Any) -> Any:
        if isinstance(data, Mapping):
            data = dict(data)
            for key in ("token_fields", "metadata_fields"):
                if key in data:
                    data[key] = _as_map(data[key])
        return data

    @model_validator(mode="after")
    def _complete(self) -> "AuthSpec":
        if self.scheme == "oauth2" and not (self.authorize_url and self.token_url):
            raise ValueError("oauth2 needs authorize_url and token_url")
        if self.scheme == "api_key" and not self.name:
            raise ValueError("api_key needs the header or query parameter `name`")
        if self.scheme in ("basic", "none", "session") and self.location != "header":
            raise ValueError(f"{self.scheme} auth has no placement")
        if self.location == "path" and not self.name:
            raise ValueError("`in: path` needs the path placeholder `name`")
        if self.scheme == "session" and not (self.hook and self.secrets):
            raise ValueError("session auth needs its sign-in `hook` and the `secrets` it uses")
        if self.base_url is not None and not self.base_url.startswith(("https://", "http://")):
            raise ValueError("an auth scheme's base_url must be an absolute http(s) URL")
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
            "session": (),
            "none": (),
        }[self.scheme]

    @property
    def param_name(self) -> str:
        """The header (or query parameter, or path placeholder) that carries the credential."""
        return self.name or "Authorization"

    @property
    def value_prefix(self) -> str:
        if self.prefix is not None:
            return self.prefix
        return "Bearer " if self.scheme in ("oauth2", "bearer") and not self.name else ""

    def has_credentials(self, connection: ConnectionSettings | None) -> bool:
        """Whether `connection` holds what this scheme sends (the choice among several)."""
        if self.scheme == "none":
            return True
        if connection is None:
            return False
        if self.scheme == "basic":
            return bool(connection.username or connection.secret("username"))
        if self.scheme == "session":
            return all(connection.secret(n) for n in self.secret_names)
        return any(connection.secret(n) for n in self.secret_names)


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
    """How an operation's results continue.

    `cursor`: the next cursor at `cursor_path` goes out as `cursor_param` (dotted in a body:
    GraphQL's `variables.after`, Intercom's `pagination.starting_after`); `page`: `page_param`
    counts up from `first_page`; `link`: the Link header's rel="next"; `next_url`: a URL in
    the body (`next_url_path`, Salesforce's `nextRecordsUrl`, relative to the host);
    `offset`: `offset_param` grows by each page's items (Mailchimp's `offset`, LinkedIn's
    `start`), stopping at `total_path` (else at a page smaller than `size_param`'s value: a
    provider that serves fewer than asked per page says so in its total). A `page` style
    stops too once `total_path` items are read.

    `items` is the list in each page (dotted path); the output keeps the last page's JSON with
    `items` replaced by every page's items. Pages stop at `max_pages` (a node may lower or
    raise it with `maxPages`, never above HARD_MAX_PAGES; `all_pages_param` true means
    DEFAULT_MAX_PAGES) or when `limit_param`'s value in items is reached.
    """

    style: Literal["cursor", "page", "link", "next_url", "offset"]
    items: str
    cursor_path: str | None = None
    cursor_param: str | None = None
    cursor_in: Literal["query", "body"] = "query"
    has_more_path: str | None = None
    page_param: str = "page"
    first_page: int = 1
    next_url_path: str | None = None
    offset_param: str = "offset"
    size_param: str | None = None
    total_path: str | None = None
    max_pages: int = Field(default=DEFAULT_MAX_PAGES, ge=1, le=HARD_MAX_PAGES)
    limit_param: str | None = None
    all_pages_param: str | None = None

    @model_validator(mode="after")
    def _complete(self) -> "PaginationSpec":
        if self.style == "cursor" and not (self.cursor_path and self.cursor_param):
            raise ValueError("cursor pagination needs cursor_path and cursor_param")
        if self.style == "next_url" and not self.next_url_path:
            raise ValueError("next_url pagination needs next_url_path")
        return self


class RetryCondition(_Model):
    """A status retried only when a header says so (GitHub's 403 with
    `x-ratelimit-remaining: 0` is a rate limit; without it, a permission error)."""

    status: int
    header: str
    equals: str | None = None
    """The header's value that makes it retryable; None: the header being there is enough."""


class RetrySpec(_Model):
    """Which answers are worth retrying (the node's retry policy decides how often) and how
    long the provider asks to wait: `Retry-After` / `retry-after-ms`, else a number in the
    body (`after_path`), else a reset header (`reset_kind` epoch seconds, epoch milliseconds
    or seconds to wait)."""

    statuses: list[int] = Field(default_factory=lambda: list(DEFAULT_RETRY_STATUSES))
    retry_after: bool = True
    retry_if: list[RetryCondition] = Field(default_factory=list)
    reset_header: str | None = None
    reset_kind: Literal["epoch", "epoch_ms", "seconds"] = "epoch"
    after_path: str | None = None


class ErrorSpec(_Model):
    """Where the provider puts its error code and message (dotted paths, the first one found
    of a list); `fields` names a `{field: message}` map (Jira's `errors`) shown as
    `summary: ...`. A list body is read from its first item (Salesforce). Common shapes are
    recognised without it."""

    code: str | list[str] | None = None
    message: str | list[str] | None = None
    fields: str | None = None


class OutputSpec(_Model):
    """The part of the answer that becomes the node's output: a dotted path, the keys kept
    (of the object, or of each object of a list), and response headers merged in
    (`{id: x-restli-id}`)."""

    path: str | None = None
    keep: list[str] | None = None
    headers: dict[str, str] = Field(default_factory=dict)


class HookSpec(_Model):
    """Functions in hooks/<provider>.py: `request(prepared, params, api)` returns the request
    to send, `output(data, params[, headers])` the node's output."""

    request: str | None = None
    output: str | None = None


class PartSpec(_Model):
    """One part of a multipart body: a `value` (text, or JSON for an object) or a `file`
    (a parameter holding a FlowMaestro file reference, or text), with its form `name`,
    `filename` and `content_type` (templates like the mappings)."""

    name: str | None = None
    value: Any = None
    file: str | None = None
    filename: str | None = None
    content_type: str | None = None

    @model_validator(mode="after")
    def _one(self) -> "PartSpec":
        if (self.value is None) == (self.file is None):
            raise ValueError("a part has either a `value` or a `file`")
        return self


class ExamplePart(_Model):
    """A multipart part the contract test expects (`body`: text, or JSON for an object)."""

    name: str | None = None
    filename: str | None = None
    content_type: str | None = None
    body: Any = None


class ExampleRequest(_Model):
    method: str
    path: str
    query: dict[str, Any] = Field(default_factory=dict)
    headers: dict[str, str] = Field(default_factory=dict)
    body: Any = None
    form: dict[str, Any] | None = None
    multipart: Literal["form-data", "related"] | None = None
    parts: list[ExamplePart] | None = None


class ExampleResponse(_Model):
    status: int = 200
    headers: dict[str, str] = Field(default_factory=dict)
    body: Any = None


class ExampleExchange(_Model):
    request: ExampleRequest
    response: "ExampleResponse"


class ExampleSpec(_Model):
    """A documented call: the contract test sends `parameters` and expects `request`, then
    answers `response` and expects `output`; `before` are requests a hook (or a sign-in, or an
    earlier page) makes first; `files` are written to the workflow's file area first
    (path: text)."""

    parameters: dict[str, Any] = Field(default_factory=dict)
    connection: dict[str, Any] = Field(default_factory=dict)
    files: dict[str, str] = Field(default_factory=dict)
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
    base_url: str | None = None
    """A name in the provider's `base_urls`: the operation's host (Box's upload host)."""
    auth: AuthSpec | None = None
    """This operation's scheme (`none`: no credential, a Discord webhook)."""
    query: dict[str, Any] = Field(default_factory=dict)
    body: Any = None
    body_type: BodyType = "json"
    parts: list[PartSpec] = Field(default_factory=list)
    headers: dict[str, str] = Field(default_factory=dict)
    parameters: list[ParameterSpec] = Field(default_factory=list)
    pagination: PaginationSpec | None = None
    retry: RetrySpec | None = None
    output: OutputSpec = Field(default_factory=OutputSpec)
    hook: HookSpec | None = None
    example: ExampleSpec | None = None

    @model_validator(mode="before")
    @classmethod
    def _auth_shorthand(cls, data: Any) -> Any:
        if isinstance(data, Mapping) and isinstance(data.get("auth"), str):
            return {**data, "auth": {"scheme": data["auth"]}}
        return data

    @model_validator(mode="after")
    def _consistent(self) -> "OperationSpec":
        names = [p.name for p in self.parameters]
        if len(set(names)) != len(names):
            raise ValueError(f"operation {self.id}: a parameter is declared twice")
        if not self.path.startswith("/"):
            raise ValueError(f"operation {self.id}: path must start with '/'")
        if self.parts and not self.body_type.startswith("multipart"):
            raise ValueError(f"operation {self.id}: `parts` need body_type multipart")
        return self

    def undeclared(self, allowed: frozenset[str] = frozenset()) -> list[str]:
        """Placeholders that name no parameter (`allowed`: a path credential's)."""
        used = set(_PLACEHOLDER.findall(self.path))
        for mapping in (self.query, self.body, self.headers):
            used |= set(_placeholders(mapping))
        for part in self.parts:
            used |= set(_placeholders(part.model_dump()))
        return sorted(used - {p.name for p in self.parameters} - allowed)

    @property
    def ids(self) -> list[str]:
        return [self.id, *self.aliases]

    @property
    def required(self) -> list[ParameterSpec]:
        return [p for p in self.parameters if p.required]


class ProviderSpec(_Model):
    """A provider: where its API is, how it authenticates, what it can do.

    `auth` may list several schemes: a run uses the first the connection has credentials for
    (`schemes`); `.auth` stays the OAuth2 one when there is one (the connections store reads
    its endpoints there), else the first. `base_urls` are the provider's other hosts, by
    name, for operations served elsewhere; `origin_from` names a connection field holding the
    API's origin (Salesforce's `instance_url`), which replaces the base URL's scheme and host.
    """

    id: str
    name: str
    docs: str
    base_url: str
    base_urls: dict[str, str] = Field(default_factory=dict)
    origin_from: str | None = None
    auth: AuthSpec
    auth_schemes: list[AuthSpec] = Field(default_factory=list)
    headers: dict[str, str] = Field(default_factory=dict)
    retry: RetrySpec = Field(default_factory=RetrySpec)
    errors: ErrorSpec = Field(default_factory=ErrorSpec)
    operations: list[OperationSpec]

    @model_validator(mode="before")
    @classmethod
    def _several_schemes(cls, data: Any) -> Any:
        if isinstance(data, Mapping) and isinstance(data.get("auth"), list):
            listed = list(data["auth"])
            if not listed:
                raise ValueError("auth lists no scheme")
            oauth = next(
                (s for s in listed if isinstance(s, Mapping) and s.get("scheme") == "oauth2"),
                listed[0],
            )
            return {**data, "auth": oauth, "auth_schemes": listed}
        return data

    @model_validator(mode="after")
    def _unique(self) -> "ProviderSpec":
        seen: dict[str, str] = {}
        for op in self.operations:
            for name in op.ids:
                key = name.lower()
                if key in seen:
                    raise ValueError(f"operation id {name!r} is used by {seen[key]} and {op.id}")
                seen[key] = op.id
        for url in (self.base_url, *self.base_urls.values()):
            if not url.startswith(("https://", "http://")):
                raise ValueError("base_url must be an absolute http(s) URL")
        for op in self.operations:
            schemes = [op.auth] if op.auth is not None else self.schemes
            in_path = frozenset(s.param_name for s in schemes if s.location == "path")
            unknown = op.undeclared(in_path)
            if unknown:
                raise ValueError(f"operation {op.id}: undeclared parameters {unknown}")
            if op.base_url is not None and op.base_url not in self.base_urls:
                raise ValueError(
                    f"operation {op.id}: base_url {op.base_url!r} is not one of base_urls "
                    f"{sorted(self.base_urls)}"
                )
            for name in in_path:
                if "{" + name + "}" not in op.path and not (op.hook and op.hook.request):
                    raise ValueError(f"operation {op.id}: the path has no {{{name}}} credential")
        return self

    @property
    def schemes(self) -> list[AuthSpec]:
        """The auth schemes in the order a connection is matched against them."""
        return list(self.auth_schemes) or [self.auth]

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

    @property
    def needs_connection(self) -> bool:
        return any(s.scheme != "none" for s in self.schemes)


def auth_for(
    provider: ProviderSpec, op: OperationSpec | None, connection: ConnectionSettings | None
) -> AuthSpec:
    """The scheme a call uses: the operation's own, else the first of the provider's the
    connection has credentials for (the first when it has none: its error says what to add)."""
    if op is not None and op.auth is not None:
        return op.auth
    schemes = provider.schemes
    return next((s for s in schemes if s.has_credentials(connection)), schemes[0])


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
        data = yaml.load(text, Loader=_YAML_LOADER)  # libyaml: 6x faster than pure Python
    except yaml.YAMLError as exc:
        raise CatalogueError(f"{source}: not YAML: {exc}") from exc
    try:
        spec = ProviderSpec.model_validate(data)
    except ValidationError as exc:
        raise CatalogueError(f"{source}: {exc}") from exc
    wanted: list[tuple[str, str]] = [
        (f"auth {scheme.scheme} hook", scheme.hook)
        for scheme in spec.schemes
        if scheme.hook is not None
    ]
    for op in spec.operations:
        if op.auth is not None and op.auth.hook is not None:
            wanted.append((f"operation {op.id}: auth hook", op.auth.hook))
        if op.hook is not None:
            for kind in ("request", "output"):
                name = getattr(op.hook, kind)
                if name is not None:
                    wanted.append((f"operation {op.id}: {kind} hook", name))
    for what, name in wanted:
        try:
            hook_function(spec.id, name)
        except (ImportError, AttributeError) as exc:
            raise CatalogueError(f"{source}: {what} {name!r}: {exc}") from exc
    return spec


def hook_function(provider: str, name: str) -> Callable[..., Any]:
    """`hooks/<provider>.py`'s function `name` (dashes in the provider id become `_`)."""
    module = importlib.import_module(f"{HOOKS_PACKAGE}.{provider.replace('-', '_')}")
    function = getattr(module, name)
    if not callable(function):
        raise AttributeError(f"{name} is not a function")
    return function


@functools.cache
def _takes_headers(function: Callable[..., Any]) -> bool:
    """Whether an output hook takes the response headers (a third parameter)."""
    try:
        parameters = list(inspect.signature(function).parameters.values())
    except (TypeError, ValueError):
        return False
    if any(p.kind is inspect.Parameter.VAR_POSITIONAL for p in parameters):
        return True
    return len(parameters) >= 3


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
                needs_connection=spec.needs_connection,
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


def _article(word: str) -> str:
    return "an" if word[:1] in "aeiou" else "a"


def _coerce(param: ParameterSpec, value: Any) -> Any:
    """The value as the parameter's type; ValueError with the reason when it cannot be."""
    kind = param.type
    if kind in ("any",):
        return value
    if kind == "file":
        return _file_value(value)
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
            raise ValueError(f"must be {_article(kind)} {kind}")
        try:
            number = float(value) if kind == "number" else int(str(value).strip())
        except ValueError:
            raise ValueError(f"must be {_article(kind)} {kind}") from None
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


def _file_value(value: Any) -> Any:
    """A file parameter: a FlowMaestro file reference (or the one inside a node's output:
    `{{upload}}`), kept as its JSON; otherwise text, sent as its UTF-8 bytes."""
    if FileRef.from_value(value) is not None:
        return dict(value)
    if isinstance(value, Mapping):
        inner = [v for v in value.values() if FileRef.from_value(v) is not None]
        if len(inner) == 1:
            return dict(inner[0])
        raise ValueError("must be a file (a FlowMaestro file reference) or text")
    if isinstance(value, bytes | bytearray):
        return bytes(value)
    return value if isinstance(value, str) else to_text(value)


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
    op: OperationSpec,
    values: Mapping[str, Any],
    fail: Callable[..., Exception],
    *,
    keep: frozenset[str] = frozenset(),
) -> str:
    """The path with each `{param}` URL-encoded as one segment: a value cannot climb out of
    it (`..`, a slash; an encoded slash would be refused by the base-URL check anyway).
    Placeholders in `keep` (a path credential's) stay for the request to fill."""

    def fill(match: re.Match[str]) -> str:
        name = match.group(1)
        if name in keep:
            return match.group(0)
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


_ORIGIN = re.compile(r"^(https?://[^/]+)(.*)$")


def render_base_url(
    provider: ProviderSpec,
    connection: ConnectionSettings | None,
    fail: Callable[..., Exception],
    *,
    host: str | None = None,
    auth: AuthSpec | None = None,
) -> str:
    """Where an operation's requests go, with `{field}` placeholders from the connection
    (Zendesk's subdomain).

    The named `host` of the provider's `base_urls` (the connection's `<host>_base_url`
    overrides it), else the chosen scheme's `base_url`, else the provider's. A connection's
    `base_url` (a proxy, a test server, a region) replaces any of them it does not name; the
    provider's `origin_from` field, when the connection has it (an OAuth2 callback kept
    Salesforce's `instance_url`), replaces the scheme and host of the provider's own.
    """
    if host is not None:
        named = connection.secret(f"{host}_base_url") if connection is not None else None
        if named:
            return _checked_base(named, provider, f"{host}_base_url", fail)
    if connection is not None and connection.base_url:
        return connection.base_url.rstrip("/")
    if host is not None:
        template = provider.base_urls[host]
    else:
        template = (auth.base_url if auth is not None else None) or provider.base_url
        origin = (
            connection.secret(provider.origin_from)
            if connection is not None and provider.origin_from
            else None
        )
        if origin:
            _checked_base(origin, provider, provider.origin_from or "", fail)
            match = _ORIGIN.match(template)
            template = origin.rstrip("/") + (match.group(2) if match else "")

    def fill(match: re.Match[str]) -> str:
        name = match.group(1)
        value = connection.secret(name) if connection is not None else None
        if not value or not _HOST_VALUE.fullmatch(value):
            raise fail(
                "connectionId",
                f"{provider.id}'s connection needs a valid `{name}` for {template}",
            )
        return value

    return _PLACEHOLDER.sub(fill, template).rstrip("/")


def _checked_base(
    value: str, provider: ProviderSpec, name: str, fail: Callable[..., Exception]
) -> str:
    """A base URL (or origin) taken from a connection: absolute http(s), nothing else."""
    try:
        parsed = httpx.URL(value.strip())
    except httpx.InvalidURL:
        parsed = None
    if (
        parsed is None
        or parsed.scheme not in ("http", "https")
        or not parsed.host
        or parsed.userinfo
        or parsed.query
        or parsed.fragment
    ):
        raise fail(
            "connectionId",
            f"{provider.id}'s connection field `{name}` must be an absolute http(s) URL",
        )
    return value.strip().rstrip("/")


@dataclass
class Part:
    """One part of a multipart body, as hooks build them: `data` (bytes) or `file` (a stored
    file, streamed when the request is sent), with its form `name`, `filename` and
    `content_type`."""

    name: str | None = None
    data: bytes | None = None
    file: FileRef | None = None
    filename: str | None = None
    content_type: str | None = None


@dataclass
class PreparedRequest:
    """A request before auth: what hooks receive and return. `parts` make a multipart body
    (`multipart`: form-data or related); `authenticate` False sends no credential."""

    method: str
    path: str
    query: list[tuple[str, str]] = field(default_factory=list)
    headers: dict[str, str] = field(default_factory=dict)
    json: Any = None
    form: dict[str, Any] | None = None
    content: bytes | None = None
    parts: list[Part] | None = None
    multipart: Literal["form-data", "related"] = "form-data"
    authenticate: bool = True

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


def _path_credentials(provider: ProviderSpec, auth: AuthSpec | None) -> frozenset[str]:
    schemes = [auth] if auth is not None else provider.schemes
    return frozenset(s.param_name for s in schemes if s.location == "path")


def prepare(
    op: OperationSpec,
    provider: ProviderSpec,
    values: Mapping[str, Any],
    fail: Callable[..., Exception],
    *,
    auth: AuthSpec | None = None,
) -> PreparedRequest:
    """The operation's request from its mappings (before hooks and auth)."""
    keep = _path_credentials(provider, auth)
    prepared = PreparedRequest(method=op.method, path=render_path(op, values, fail, keep=keep))
    prepared.query = _query_pairs(render_mapping(op.query, values) if op.query else {})
    headers = render_mapping({**provider.headers, **op.headers}, values)
    prepared.headers = (
        {k: to_text(v) for k, v in (headers or {}).items()} if headers is not _OMIT else {}
    )
    if op.body_type.startswith("multipart"):
        prepared.multipart = "related" if op.body_type == "multipart-related" else "form-data"
        prepared.parts = _render_parts(op, values, fail)
        return prepared
    if op.body is not None:
        body = render_mapping(op.body, values)
        if body is _OMIT:
            body = {} if isinstance(op.body, Mapping) else None
        if op.body_type == "form":
            prepared.form = body if isinstance(body, dict) else {}
        else:
            prepared.json = body
    return prepared


_DATA_URL = re.compile(r"data:([\w.+-]+/[\w.+-]+)?(;[^,]*)?,", re.IGNORECASE)


def _data_url(value: str, fail: Callable[..., Exception]) -> tuple[str, bytes]:
    """(media type, bytes) of a `data:` URL (base64 or percent-encoded)."""
    head, _, payload = value.partition(",")
    media_type = head[5:].split(";", 1)[0] or "application/octet-stream"
    if head.lower().endswith(";base64"):
        try:
            return media_type, base64.b64decode(payload, validate=False)
        except ValueError:
            raise fail("parameters", "a data: URL's base64 is not valid") from None
    return media_type, unquote_to_bytes(payload)


def _render_parts(
    op: OperationSpec, values: Mapping[str, Any], fail: Callable[..., Exception]
) -> list[Part]:
    """The declared parts with the parameters filled in (a part whose value is missing is
    left out, as a mapping's key would be)."""
    parts: list[Part] = []
    for spec in op.parts:
        filename = render_mapping(spec.filename, values) if spec.filename else _OMIT
        content_type = render_mapping(spec.content_type, values) if spec.content_type else _OMIT
        part = Part(
            name=spec.name,
            filename=to_text(filename) if filename not in (_OMIT, None) else None,
            content_type=to_text(content_type) if content_type not in (_OMIT, None) else None,
        )
        if spec.file is not None:
            value = render_mapping(spec.file, values)
            if value is _OMIT or value is None:
                continue
            ref = FileRef.from_value(value)
            if ref is not None:
                part.file = ref
                part.filename = part.filename or ref.name
                part.content_type = part.content_type or ref.media_type or None
            elif isinstance(value, bytes):
                part.data = value
            elif isinstance(value, str) and _DATA_URL.match(value):
                media_type, data = _data_url(value, fail)
                part.data = data
                part.content_type = part.content_type or media_type
            else:
                part.data = to_text(value).encode()
                part.content_type = part.content_type or "text/plain; charset=utf-8"
            part.content_type = part.content_type or "application/octet-stream"
        else:
            value = render_mapping(spec.value, values)
            if value is _OMIT:
                continue
            if isinstance(value, dict | list):
                part.data = json.dumps(value).encode()
                part.content_type = part.content_type or "application/json; charset=UTF-8"
            else:
                part.data = to_text(value).encode()
        parts.append(part)
    return parts


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


def _set_nested(data: Any, path: str, value: Any) -> dict[str, Any]:
    """`path` (dotted: GraphQL's `variables.after`) set in a JSON object, objects made on the
    way."""
    updated = dict(data) if isinstance(data, Mapping) else {}
    head, _, rest = path.partition(".")
    updated[head] = _set_nested(updated.get(head), rest, value) if rest else value
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


def _first_found(data: Any, paths: str | list[str] | None) -> Any:
    """The first of the declared paths that holds something."""
    if paths is None:
        return None
    for path in [paths] if isinstance(paths, str) else paths:
        value = walk_path(data, path)
        if value not in (None, "", [], {}):
            return value
    return None


def provider_error(data: Any, errors: ErrorSpec) -> tuple[str | None, str | None]:
    """(code, message) from a provider's error body: the declared paths (several: the first
    found) and field map, else the common shapes `{error: {code, message}}`,
    `{error, error_description}`, `{message, code}`, `{errors: [{message}]}`, Slack's
    `{ok: false, error}`. A list body is read from its first item (Salesforce's
    `[{errorCode, message}]`)."""
    if isinstance(data, list):
        first = data[0] if data else None
        if isinstance(first, str) and first.strip():
            return None, first.strip()[:_ERROR_TEXT_CHARS]
        data = first
    if not isinstance(data, Mapping):
        text = data.strip()[:_ERROR_TEXT_CHARS] if isinstance(data, str) and data.strip() else None
        return None, text
    code = _first_found(data, errors.code)
    message = _first_found(data, errors.message)
    if isinstance(message, list):
        message = "; ".join(to_text(m) for m in message if m not in (None, ""))
    if errors.fields:
        described = walk_path(data, errors.fields)
        if isinstance(described, Mapping) and described:
            listed = "; ".join(f"{k}: {to_text(v)}" for k, v in described.items())
            message = f"{to_text(message)}; {listed}" if message else listed
    inner = data.get("error")
    if isinstance(inner, Mapping):
        code = code or inner.get("status") or inner.get("code") or inner.get("type")
        message = message or inner.get("message")
    elif isinstance(inner, str):
        code = code or (inner if " " not in inner else None)
        message = message or data.get("error_description") or data.get("message") or inner
    listed_errors = data.get("errors")
    if isinstance(listed_errors, list) and listed_errors:
        first_error = listed_errors[0]
        if isinstance(first_error, Mapping):
            code = (
                code
                or first_error.get("code")
                or first_error.get("error")
                or first_error.get("type")
            )
            message = message or first_error.get("message") or first_error.get("detail")
        elif isinstance(first_error, str):
            message = message or first_error
    code = code or data.get("code") or data.get("category") or data.get("type")
    message = message or data.get("message") or data.get("detail") or data.get("title")
    return (
        to_text(code) if code not in (None, "") else None,
        to_text(message)[:_ERROR_TEXT_CHARS] if message not in (None, "") else None,
    )


@dataclass(frozen=True)
class SessionAuth:
    """What a `session` scheme's sign-in hook returns: headers sent with every request of the
    run (their values are masked like any secret) and values the operation's paths and
    mappings may use when the node does not set them (Tableau's site id)."""

    headers: Mapping[str, str] = field(default_factory=dict)
    values: Mapping[str, Any] = field(default_factory=dict)


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
    auth: AuthSpec
    secret_params: set[str] = field(default_factory=set)
    masked: set[str] = field(default_factory=set)
    refreshed: bool = False
    session: SessionAuth | None = None
    signing_in: bool = False

    @property
    def retry(self) -> RetrySpec:
        """The operation's retry settings over the provider's (unset fields inherited)."""
        own = self.op.retry
        if own is None:
            return self.provider.retry
        return self.provider.retry.model_copy(
            update={name: getattr(own, name) for name in own.model_fields_set}
        )

    def fail(
        self, field_name: str, message: str, cls: type[NodeExecutionError] = NodeConfigurationError
    ) -> NodeExecutionError:
        return self.request.node.error(
            self.mask(message), cls, details={"field": field_name, "provider": self.provider.id}
        )

    def mask(self, text: str) -> str:
        """`text` with this run's secrets blanked (a path credential, a session token)."""
        for secret in sorted(self.masked, key=len, reverse=True):
            if len(secret) >= 3:
                text = text.replace(secret, "***")
        return text


@dataclass(frozen=True)
class HookResponse:
    """A hook request's answer (an error status never gets here: it is a node error)."""

    status: int
    headers: Mapping[str, str]
    data: Any


class HookApi:
    """What a hook may do besides rewriting the request: send further requests to the
    provider through the same client, credentials, guard, caps and error mapping (Gmail's
    reply reads the original, a thread posts its first tweets, Tableau signs in), read the
    connection's secrets (masked in every message from then on), and raise node errors."""

    def __init__(self, call: "_Call") -> None:
        self._call = call

    @property
    def node(self) -> "NodeContext":
        """The running node (its workflow's file area, its id for messages)."""
        return self._call.request.node

    @property
    def provider(self) -> ProviderSpec:
        return self._call.provider

    def secret(self, name: str) -> str | None:
        """The connection's secret `name` (None without it); masked in messages from now on."""
        connection = self._call.connection
        value = connection.secret(name) if connection is not None else None
        if value:
            self._call.masked.add(value)
        return value

    def field(self, name: str) -> str | None:
        """A connection field that is not a secret (a site, a region): not masked."""
        connection = self._call.connection
        return connection.secret(name) if connection is not None else None

    def mask(self, value: str) -> None:
        """Mask `value` (a token a sign-in returned) in every message of this run."""
        if value:
            self._call.masked.add(value)

    def get(self, path: str, query: Sequence[tuple[str, str]] = ()) -> Any:
        """GET `path` (under the base URL; its values already URL-encoded) as parsed JSON."""
        return self.request("GET", path, params=list(query))

    def request(
        self,
        method: str,
        path_or_url: str,
        *,
        params: Mapping[str, Any] | Sequence[tuple[str, Any]] | None = None,
        json: Any = None,
        data: Mapping[str, Any] | None = None,
        content: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        parts: Sequence[Part] | None = None,
        multipart: Literal["form-data", "related"] = "form-data",
        auth: bool = True,
    ) -> Any:
        """Send `method` to `path_or_url` and return the parsed answer (`{ok, status}` for an
        empty one); a provider error raises the node error the executor's own requests do."""
        return self.exchange(
            method,
            path_or_url,
            params=params,
            json=json,
            data=data,
            content=content,
            headers=headers,
            parts=parts,
            multipart=multipart,
            auth=auth,
        ).data

    def exchange(
        self,
        method: str,
        path_or_url: str,
        *,
        params: Mapping[str, Any] | Sequence[tuple[str, Any]] | None = None,
        json: Any = None,
        data: Mapping[str, Any] | None = None,
        content: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        parts: Sequence[Part] | None = None,
        multipart: Literal["form-data", "related"] = "form-data",
        auth: bool = True,
    ) -> HookResponse:
        """As `request`, with the status and the response headers.

        `path_or_url` is a path under the operation's base URL (its values URL-encoded), or an
        absolute URL under one of the provider's hosts (anything else is refused: the
        connection's secrets go nowhere else). The provider's headers go along (and
        `headers`); `json`, `data` (a form), `content` or `parts` is the body; `auth=False`
        sends no credential (a sign-in)."""
        call = self._call
        verb = method.upper()
        if verb not in HOOK_METHODS:
            raise ValueError(f"a hook request's method is one of {sorted(HOOK_METHODS)}")
        rendered = render_mapping(call.provider.headers, call.values)
        sent = {k: to_text(v) for k, v in rendered.items()} if isinstance(rendered, dict) else {}
        sent.update(headers or {})
        prepared = PreparedRequest(
            verb,
            "",
            _pairs(params),
            sent,
            json=json,
            form=dict(data) if data is not None else None,
            content=content,
            parts=list(parts) if parts is not None else None,
            multipart=multipart,
            authenticate=auth,
        )
        override = None
        if path_or_url.startswith(("https://", "http://")):
            override = path_or_url
        elif path_or_url.startswith("/"):
            prepared.path = path_or_url
        else:
            raise ValueError(f"a hook request needs a path (/...) or a URL, got {path_or_url!r}")
        answer = _exchange(call, prepared, override)
        return HookResponse(answer.status, answer.headers, answer.data)

    def error(
        self,
        message: str,
        *,
        cls: type[NodeExecutionError] = NodeExecutionError,
        details: Mapping[str, Any] | None = None,
    ) -> NodeExecutionError:
        """A node error (to raise) naming the provider and operation, secrets masked."""
        call = self._call
        error_: NodeExecutionError = call.request.node.error(
            call.mask(message),
            cls,
            details={"provider": call.provider.id, "operation": call.op.id, **(details or {})},
        )
        return error_


def _pairs(params: Mapping[str, Any] | Sequence[tuple[str, Any]] | None) -> list[tuple[str, str]]:
    if params is None:
        return []
    items = list(params.items()) if isinstance(params, Mapping) else list(params)
    pairs: list[tuple[str, str]] = []
    for key, value in items:
        for item in value if isinstance(value, list) else [value]:
            if item is not None:
                pairs.append((str(key), to_text(item)))
    return pairs


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
    auth = auth_for(provider, op, connection)
    if auth.scheme != "none" and connection is None:
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
        base_url=render_base_url(provider, connection, fail, host=op.base_url, auth=auth),
        timeout=timeout,
        auth=auth,
    )
    if auth.scheme == "session":
        _sign_in(call)
    prepared = prepare(op, provider, call.values, fail, auth=auth)
    if op.hook is not None and op.hook.request:
        try:
            prepared = hook_function(provider.id, op.hook.request)(
                prepared, call.values, HookApi(call)
            )
        except ParameterError as exc:
            raise fail(f"parameters.{exc.name}", call.mask(str(exc))) from None
    if op.pagination:
        data, headers = _paginate(call, prepared)
    else:
        answer = _exchange(call, prepared, None)
        data, headers = answer.data, answer.headers
    extra = {
        name: headers[header.lower()]
        for name, header in op.output.headers.items()
        if header.lower() in headers
    }
    if extra and isinstance(data, dict):
        data = {**data, **extra}
    if op.hook is not None and op.hook.output:
        function = hook_function(provider.id, op.hook.output)
        try:
            if _takes_headers(function):
                data = function(data, call.values, headers)
            else:
                data = function(data, call.values)
        except ParameterError as exc:
            raise fail(f"parameters.{exc.name}", call.mask(str(exc))) from None
    output = pick_output(op.output, data)
    if extra and isinstance(output, dict):
        output = {**output, **{k: v for k, v in extra.items() if k not in output}}
    return output


def _sign_in(call: _Call) -> None:
    """A `session` scheme: the connection has its secrets, the sign-in hook gets the
    session's headers (and values) for every request of the run."""
    auth = call.auth
    connection = call.connection
    name = call.request.connection_name or call.provider.id
    missing = [n for n in auth.secret_names if not (connection and connection.secret(n))]
    if missing:
        raise call.fail(
            "connectionId",
            f"connection '{name}' needs {' and '.join(missing)} for {call.provider.name}; "
            f"{how_to_connect(call.provider.id)}",
            ConnectorNotConfiguredError,
        )
    api = HookApi(call)
    for secret_name in auth.secret_names:
        api.secret(secret_name)
    assert auth.hook is not None  # the scheme's validator requires it
    sign_in = hook_function(call.provider.id, auth.hook)
    call.signing_in = True
    try:
        session = sign_in(api, call.values)
    except ParameterError as exc:
        raise call.fail(f"parameters.{exc.name}", str(exc)) from None
    finally:
        call.signing_in = False
    if not isinstance(session, SessionAuth):
        raise TypeError(f"{call.provider.id}'s sign-in hook {auth.hook} returned no SessionAuth")
    call.session = session
    call.masked.update(v for v in session.headers.values() if v)
    for key, value in session.values.items():
        if call.values.get(key) is None:
            call.values[key] = value


def _truthy(value: Any) -> bool:
    return value is True or str(value).strip().lower() in ("true", "1", "yes")


def _paginate(call: _Call, first: PreparedRequest) -> tuple[Any, Mapping[str, str]]:
    pagination = call.op.pagination
    assert pagination is not None
    requested = call.request.param("maxPages", "max_pages")
    max_pages = pagination.max_pages
    if pagination.all_pages_param and _truthy(call.values.get(pagination.all_pages_param)):
        max_pages = max(max_pages, DEFAULT_MAX_PAGES)
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
    last_headers: Mapping[str, str] = {}
    url_override: str | None = None
    for _ in range(max_pages):
        assert prepared is not None
        answer = _exchange(call, prepared, url_override)
        last, last_headers = answer.data, answer.headers
        page_items = walk_path(last, pagination.items)
        if isinstance(page_items, list):
            items.extend(page_items)
        if limit is not None and len(items) >= limit:
            items = items[:limit]
            break
        if not isinstance(page_items, list) or not page_items:
            break
        if pagination.has_more_path and not walk_path(last, pagination.has_more_path):
            break
        total = _number(walk_path(last, pagination.total_path)) if pagination.total_path else None
        if pagination.style == "page" and total is not None and len(items) >= total:
            break
        prepared, url_override = _next_page(
            pagination, prepared, last, last_headers, page_number, len(page_items)
        )
        page_number += 1
        if prepared is None:
            break
    if not isinstance(last, dict):
        return items, last_headers
    if not _settable(last, pagination.items):  # an error answer (GraphQL's `data: null`)
        return last, last_headers
    return _set_path(last, pagination.items, items), last_headers


def _settable(data: Mapping[str, Any], path: str) -> bool:
    """Whether every object on the way to `path` is an object (or not there yet)."""
    current: Any = data
    for part in path.split(".")[:-1]:
        if part not in current:
            return True
        current = current[part]
        if not isinstance(current, Mapping):
            return False
    return True


def _number(value: Any) -> float | None:
    """A count as providers write it (a number, or its text: Tableau's "totalAvailable")."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        with contextlib.suppress(ValueError):
            return float(value.strip())
    return None


def _param_value(prepared: PreparedRequest, name: str, where: str) -> str | None:
    if where == "body":
        value = walk_path(prepared.json, name)
        return to_text(value) if value is not None else None
    return next((v for k, v in prepared.query if k == name), None)


def _set_param(prepared: PreparedRequest, name: str, value: Any, where: str) -> None:
    if where == "body":
        prepared.json = _set_nested(prepared.json, name, value)
    else:
        prepared.query = [(k, v) for k, v in prepared.query if k != name] + [(name, to_text(value))]


def _next_page(
    pagination: PaginationSpec,
    prepared: PreparedRequest,
    data: Any,
    headers: Mapping[str, str],
    page_number: int,
    count: int,
) -> tuple[PreparedRequest | None, str | None]:
    """The request for the next page (None: there is none); a Link or body URL replaces the
    URL (and the first page's query, which it carries itself)."""
    if pagination.style in ("link", "next_url"):
        if pagination.style == "link":
            link = _next_link(headers.get("link", ""))
        else:
            found = walk_path(data, pagination.next_url_path)
            link = found if isinstance(found, str) and found.strip() else None
        if not link:
            return None, None
        following = copy.deepcopy(prepared)
        following.query = []
        return following, link
    following = copy.deepcopy(prepared)
    where = pagination.cursor_in
    if pagination.style == "page":
        _set_param(following, pagination.page_param, str(page_number + 1), "query")
        return following, None
    if pagination.style == "offset":
        current = _param_value(prepared, pagination.offset_param, where)
        offset = int(current) if current and current.strip().isdigit() else 0
        size_text = (
            _param_value(prepared, pagination.size_param, where) if pagination.size_param else None
        )
        size = int(size_text) if size_text and size_text.strip().isdigit() else None
        following_offset = offset + count
        total = _number(walk_path(data, pagination.total_path)) if pagination.total_path else None
        if total is not None and following_offset >= total:
            return None, None
        if total is None and size is not None and count < size:  # a short page is the last
            return None, None
        _set_param(
            following,
            pagination.offset_param,
            following_offset if where == "body" else str(following_offset),
            where,
        )
        return following, None
    cursor = walk_path(data, pagination.cursor_path)
    if cursor in (None, ""):
        return None, None
    _set_param(following, pagination.cursor_param or "", to_text(cursor), where)
    return following, None


def _next_link(header: str) -> str | None:
    """The `rel="next"` URL of an RFC 8288 Link header."""
    for part in header.split(","):
        url, _, params = part.partition(";")
        rels = re.findall(r'rel="?([^";]+)"?', params)
        if any("next" in r.split() for r in rels):
            return url.strip().strip("<>")
    return None


@dataclass(frozen=True)
class _Answer:
    status: int
    headers: Mapping[str, str]
    data: Any


def _secret(call: _Call) -> str:
    """The connection's credential for the chosen scheme (a node error naming what to add)."""
    auth = call.auth
    connection = call.connection
    secret = (
        next((s for s in (connection.secret(n) for n in auth.secret_names) if s), None)
        if connection is not None
        else None
    )
    if not secret:
        name = call.request.connection_name or call.provider.id
        wanted = " or ".join(auth.secret_names)
        raise call.fail(
            "connectionId",
            f"connection '{name}' has no {wanted} for {call.provider.name}; "
            f"{how_to_connect(call.provider.id)}",
            ConnectorNotConfiguredError,
        )
    return secret


def _auth(call: _Call, parts: RequestParts) -> None:
    """Place the connection's credential as the chosen scheme says (a path credential is
    placed with the path)."""
    auth = call.auth
    connection = call.connection
    if auth.scheme == "none" or connection is None:
        return
    if auth.scheme == "session":
        for header, value in (call.session.headers if call.session is not None else {}).items():
            parts.headers = [(k, v) for k, v in parts.headers if k.lower() != header.lower()]
            parts.headers.append((header, value))
            parts.secret_headers.add(header.lower())
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
    if auth.location == "path":
        return
    secret = _secret(call)
    parts.secrets.add(secret)
    if auth.location == "query":
        parts.params.append((auth.param_name, secret))
        call.secret_params.add(auth.param_name)
    else:
        parts.headers.append((auth.param_name, auth.value_prefix + secret))
        parts.secret_headers.add(auth.param_name.lower())


def _path_with_credential(call: _Call, prepared: PreparedRequest) -> str:
    """The path with a path credential (`/bot{token}/...`) filled in and masked from now on."""
    path = prepared.path
    auth = call.auth
    placeholder = "{" + auth.param_name + "}"
    if not prepared.authenticate or auth.location != "path" or placeholder not in path:
        return path
    secret = _secret(call)
    encoded = quote(secret, safe=":")
    call.masked.update({secret, encoded})
    return path.replace(placeholder, encoded)


def _build_parts(call: _Call, prepared: PreparedRequest, url_override: str | None) -> RequestParts:
    parts = RequestParts()
    parts.method = prepared.method
    if url_override is not None:  # a next-page link or a hook's URL; a relative one is under
        url = httpx.URL(call.base_url + "/").join(url_override)  # the base URL
    else:
        url = httpx.URL(call.base_url + _path_with_credential(call, prepared))
    if prepared.query:
        merged = (*url.params.multi_items(), *prepared.query)
        url = url.copy_with(query=str(httpx.QueryParams(merged)).encode())
    headers = dict(prepared.headers)
    if prepared.parts is not None:
        content, content_type, length = _multipart_body(call, prepared)
        parts.body = {"content": content}
        headers = {
            k: v for k, v in headers.items() if k.lower() not in ("content-type", "content-length")
        }
        headers.update({"Content-Type": content_type, "Content-Length": str(length)})
        keep_type = True
    else:
        parts.body = prepared.kwargs()
        # A declared JSON Content-Type means nothing without a JSON body (httpx sets a form's).
        keep_type = "json" in parts.body or "content" in parts.body
    parts.headers = [(k, v) for k, v in headers.items() if keep_type or k.lower() != "content-type"]
    if not any(k.lower() == "accept" for k, _ in parts.headers):
        parts.headers.append(("Accept", "application/json"))
    if prepared.authenticate:
        _auth(call, parts)
    parts.secrets.update(call.masked)
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
    shown_text = str(shown.copy_with(query=None)) if shown.query else str(shown)
    parts.display_url = parts.mask(shown_text)
    _check_destination(call, parts.url)
    return parts


def _quoted(value: str) -> str:
    """A Content-Disposition parameter value: quotes and line breaks cannot end it."""
    return value.replace("\\", "\\\\").replace('"', "%22").replace("\r", "%0D").replace("\n", "%0A")


def _multipart_body(call: _Call, prepared: PreparedRequest) -> tuple[Iterator[bytes], str, int]:
    """(chunks, Content-Type, Content-Length) of a multipart body. Stored files are streamed
    from the workflow's file area when the request is sent (the store's size cap applies,
    FLOWMAESTRO_FILES__MAX_FILE_MB), never read whole."""
    boundary = "flowmaestro-" + secrets.token_hex(16)
    segments: list[bytes | tuple[FileRef, int]] = []
    area = None
    for index, part in enumerate(prepared.parts or []):
        head = f"--{boundary}\r\n"
        if prepared.multipart == "form-data":
            disposition = f'form-data; name="{_quoted(part.name or f"part{index}")}"'
            if part.filename:
                disposition += f'; filename="{_quoted(part.filename)}"'
            head += f"Content-Disposition: {disposition}\r\n"
        if part.content_type:
            head += f"Content-Type: {part.content_type}\r\n"
        segments.append((head + "\r\n").encode())
        if part.file is not None:
            if area is None:
                area = file_area(call.request.node)
            try:
                with area.open(part.file.path, "file") as handle:
                    handle.seek(0, 2)
                    size = handle.tell()
            except NodeExecutionError as exc:
                raise call.request.node.error(
                    f"{call.provider.id} {call.op.id}: part {part.name or index}: {exc.reason}",
                    type(exc),
                    details={"provider": call.provider.id, "field": part.name},
                ) from None
            segments.append((part.file, size))
        else:
            segments.append(part.data or b"")
        segments.append(b"\r\n")
    segments.append(f"--{boundary}--\r\n".encode())
    length = sum(len(s) if isinstance(s, bytes) else s[1] for s in segments)

    def chunks() -> Iterator[bytes]:
        for segment in segments:
            if isinstance(segment, bytes):
                yield segment
                continue
            ref, size = segment
            assert area is not None
            sent = 0
            with area.open(ref.path, "file") as handle:
                while sent < size and (chunk := handle.read(min(_CHUNK, size - sent))):
                    sent += len(chunk)
                    yield chunk
            if sent != size:  # the file shrank after its size was taken
                raise httpx.WriteError(f"{ref.name} changed while it was being sent")

    return chunks(), f"multipart/{prepared.multipart}; boundary={boundary}", length


def _allowed_bases(call: _Call) -> list[str]:
    """Every base URL this connection may send the provider's requests to."""

    class _Unusable(Exception):
        pass

    def fail(*_: Any) -> Exception:
        return _Unusable()

    bases = [call.base_url]
    if call.connection is not None and call.connection.base_url:
        bases.append(call.connection.base_url)
    for scheme in call.provider.schemes:
        with contextlib.suppress(_Unusable):
            bases.append(render_base_url(call.provider, call.connection, fail, auth=scheme))
    for host in call.provider.base_urls:
        with contextlib.suppress(_Unusable):
            bases.append(render_base_url(call.provider, call.connection, fail, host=host))
    return bases


def _check_destination(call: _Call, url: str) -> None:
    """The connection's credential goes only under the provider's (or connection's) base
    URLs."""
    if under_base_url(url, call.base_url):
        return
    if any(under_base_url(url, base) for base in _allowed_bases(call)):
        return
    if call.connection is not None and call.connection.base_url:
        call.request.check_destination(url)
    raise call.request.node.error(
        call.mask(
            f"{call.provider.id}: {httpx.URL(url).copy_with(query=None)} is not under "
            f"{call.base_url}; the connection's credentials go nowhere else"
        ),
        ConnectionDestinationError,
        details={"provider": call.provider.id, "base_url": call.mask(call.base_url)},
    )


def _exchange(call: _Call, prepared: PreparedRequest, url_override: str | None) -> _Answer:
    """One request (and once more after a 401 with a refreshed token or a new session)."""
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
        if status == 401 and prepared.authenticate and _refresh(call):
            continue
        _check_answer(call, parts, status, headers, data)
        return _Answer(
            status, headers, data if data is not None else {"ok": True, "status": status}
        )


def _refresh(call: _Call) -> bool:
    """After a 401: a fresh token from `request.refresh`, or a new session (once per call)."""
    if call.refreshed or call.signing_in:
        return False
    if call.auth.scheme == "session":
        call.refreshed = True
        call.session = None
        _sign_in(call)
        return True
    refresh = call.request.refresh
    if refresh is None or call.auth.scheme not in ("oauth2", "bearer"):
        return False
    call.refreshed = True
    fresh = refresh()
    if fresh is None:
        return False
    call.connection = fresh
    return True


def _retryable(retry: RetrySpec, status: int, headers: Mapping[str, str]) -> bool:
    if status in retry.statuses:
        return True
    for condition in retry.retry_if:
        if condition.status != status:
            continue
        value = headers.get(condition.header.lower())
        if value is not None and (condition.equals is None or value.strip() == condition.equals):
            return True
    return False


def _wait_seconds(retry: RetrySpec, headers: Mapping[str, str], data: Any) -> float | None:
    """How long the provider asks to wait: Retry-After, a number in the body, a reset
    header (epoch seconds or milliseconds, or seconds to wait)."""
    if retry.retry_after:
        wait = parse_retry_after(headers)
        if wait is not None:
            return wait
    if retry.after_path:
        found = walk_path(data if isinstance(data, Mapping | list) else None, retry.after_path)
        with contextlib.suppress(TypeError, ValueError):
            if found is not None and not isinstance(found, bool):
                return max(float(found), 0.0)
    if retry.reset_header:
        raw = headers.get(retry.reset_header.lower(), "").strip()
        try:
            value = float(raw)
        except ValueError:
            return None
        if retry.reset_kind == "seconds":
            return max(value, 0.0)
        if retry.reset_kind == "epoch_ms":
            value /= 1000
        return max(value - time.time(), 0.0)
    return None


def _check_answer(
    call: _Call, parts: RequestParts, status: int, headers: Mapping[str, str], data: Any
) -> None:
    """Retryable statuses are transient (with the wait the provider asks for); other
    failures carry the provider's code and message and are not retried."""
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
    retry = call.retry
    if _retryable(retry, status, headers):
        raise TransientNodeError(
            text,
            retry_after_seconds=_wait_seconds(retry, headers, data),
            node_id=call.request.node.node_id,
            node_type=call.request.node.node_type,
            details=details,
        )
    raise call.request.node.error(text, NodeExecutionError, details=details)


__all__ = [
    "DEFAULT_MAX_PAGES",
    "HARD_MAX_PAGES",
    "AuthSpec",
    "CatalogueError",
    "DeclarativeConnector",
    "ErrorSpec",
    "ExamplePart",
    "ExampleSpec",
    "HookApi",
    "HookResponse",
    "HookSpec",
    "OperationSpec",
    "OutputSpec",
    "PaginationSpec",
    "ParameterError",
    "ParameterSpec",
    "Part",
    "PartSpec",
    "PreparedRequest",
    "ProviderSpec",
    "RetryCondition",
    "RetrySpec",
    "SessionAuth",
    "auth_for",
    "catalogue",
    "execute",
    "how_to_connect",
    "is_set",
    "load_provider",
    "node_problems",
    "register",
    "render_base_url",
    "resolve_parameters",
    "unknown_operation_problem",
]
