"""Connectors: what integration nodes (and connector-backed media nodes) call.

A connector is a plain function of a `ConnectorRequest` returning the node's value. The
registry keys connectors by provider and operation (`slack` + `sendMessage`); a connector may
take any operation of its provider. Built-in connectors need no vendor account: `webhook`
(alias `http`), `slack` (incoming webhooks) and `smtp` (alias `email`). Vendor APIs (Notion,
HubSpot, Airtable, Google Sheets, Gmail, ...) are data: `catalog/<provider>.yaml`, run by the
one executor in `declarative.py` (docs/providers.md).

A deployment adds connectors without forking through the entry-point group
`flowmaestro.connectors`. An entry point names either a function that takes the registry and
registers into it, or a `ConnectorSpec` (or a list of them):

    [project.entry-points."flowmaestro.connectors"]
    hubspot = "acme_connectors.hubspot:register"     # def register(registry): ...

Credentials never travel in a node's config: a node names a connection (`connectionId`, else
the connection named like its provider) in `Settings.connections`, whose secrets are
`SecretStr` fields or names of environment variables, read when the connector runs.

A connection's secrets go only to its own service: its `url`, or (for a URL the node supplies,
since workflow authors are not trusted with them) a URL under its `base_url`. A connector that
attaches a connection's secret to a node-supplied URL calls `request.check_destination(url)`
first; without a `base_url` every node-supplied URL is refused.
"""

import logging
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any

import httpx

from flowmaestro_dagster.errors import ConnectionDestinationError, NodeConfigurationError
from flowmaestro_dagster.nodes.net import origin, under_base_url
from flowmaestro_dagster.settings import ConnectionSettings, Settings

if TYPE_CHECKING:
    from flowmaestro_dagster.nodes.base import NodeContext
    from flowmaestro_dagster.spec.models import WorkflowSpec
    from flowmaestro_dagster.spec.problems import Problem

ENTRY_POINT_GROUP = "flowmaestro.connectors"
ANY_OPERATION = "*"
_log = logging.getLogger("flowmaestro.connectors")


@dataclass(frozen=True)
class ConnectorRequest:
    """One call of a connector: rendered parameters, the named connection, the settings."""

    provider: str
    operation: str | None
    parameters: Mapping[str, Any]
    connection: ConnectionSettings | None
    connection_name: str | None
    settings: Settings
    node: "NodeContext"
    refresh: Callable[[], ConnectionSettings | None] | None = None
    """A fresh connection after a 401 (OAuth2: the store refreshes the token); None: none."""

    def param(self, *names: str, default: Any = None) -> Any:
        """The first of `names` present (and not None) in the parameters."""
        for name in names:
            value = self.parameters.get(name)
            if value is not None:
                return value
        return default

    def resolve_url(self, url: str) -> str:
        """A node's URL; a relative one (`/contacts`) is appended to the connection's base_url."""
        try:
            if httpx.URL(url).scheme:
                return url
        except httpx.InvalidURL as exc:
            raise self.node.error(f"invalid url: {exc}", NodeConfigurationError) from exc
        base = self.connection.base_url if self.connection is not None else None
        if not base:
            raise self.node.error(
                f"url {url!r} is not absolute, and no connection with a base_url is named",
                NodeConfigurationError,
            )
        return base.rstrip("/") + "/" + url.lstrip("/")

    def check_destination(self, url: str) -> None:
        """Refuse to send the connection's secrets to `url` unless it lies under the
        connection's base_url (a node-supplied URL could point anywhere: refusing beats a
        silent unauthenticated request that still carries the node's data)."""
        connection = self.connection
        if connection is None:
            return
        name = self.connection_name or self.provider
        try:
            scheme, host, port = origin(url)
            path = httpx.URL(url).path  # no query in messages: it may hold the node's tokens
        except httpx.InvalidURL as exc:
            raise self.node.error(f"invalid url: {exc}", NodeConfigurationError) from exc
        where = f"{scheme}://{host}:{port}"
        setting = f"FLOWMAESTRO_CONNECTIONS__{name.upper()}__BASE_URL"
        if connection.base_url is None:
            message = (
                f"connection '{name}' declares no base_url, so none of its secrets go to a URL "
                f"the node supplies (here {where}); an operator allows a service with {setting}"
            )
        elif not under_base_url(url, connection.base_url):
            message = (
                f"connection '{name}' sends its secrets only under {connection.base_url}, "
                f"not to {where}{path}: use a URL under it, or another connection"
            )
        else:
            return
        raise self.node.error(
            message,
            ConnectionDestinationError,
            details={"connection": name, "host": host, "base_url": connection.base_url},
        )


Connector = Callable[[ConnectorRequest], Any]


@dataclass(frozen=True)
class ConnectorSpec:
    """A connector for one provider: `operations` None means any operation."""

    provider: str
    run: Connector
    operations: frozenset[str] | None = None
    needs_connection: bool = False
    description: str = ""

    def serves(self, operation: str | None) -> bool:
        if self.operations is None:
            return True
        return operation is not None and operation.lower() in self.operations


def _key(provider: str) -> str:
    return provider.strip().lower().replace("_", "-")


@dataclass
class ConnectorRegistry:
    """Connectors by provider; later registrations of a provider/operation win."""

    _specs: dict[str, list[ConnectorSpec]] = field(default_factory=dict)

    def add(self, spec: ConnectorSpec) -> ConnectorSpec:
        operations = (
            frozenset(o.lower() for o in spec.operations) if spec.operations is not None else None
        )
        spec = ConnectorSpec(
            spec.provider, spec.run, operations, spec.needs_connection, spec.description
        )
        self._specs.setdefault(_key(spec.provider), []).insert(0, spec)
        return spec

    def register(
        self,
        provider: str,
        operations: Iterable[str] | None = None,
        *,
        needs_connection: bool = False,
        description: str = "",
    ) -> Callable[[Connector], Connector]:
        """Decorator: `@registry.register("acme", ["createTicket"])`."""

        def decorate(run: Connector) -> Connector:
            ops = frozenset(operations) if operations is not None else None
            self.add(ConnectorSpec(provider, run, ops, needs_connection, description))
            return run

        return decorate

    def find(self, provider: str | None, operation: str | None) -> ConnectorSpec | None:
        if not provider:
            return None
        for spec in self._specs.get(_key(provider), []):
            if spec.serves(operation):
                return spec
        return None

    def providers(self) -> list[str]:
        return sorted(self._specs)

    def __iter__(self) -> Iterator[ConnectorSpec]:
        for specs in self._specs.values():
            yield from specs


def load_entry_points(registry: ConnectorRegistry, group: str = ENTRY_POINT_GROUP) -> list[str]:
    """Register the connectors installed distributions declare; returns the names loaded.

    A broken plugin is logged and skipped: one bad distribution must not take every workflow
    of the deployment down.
    """
    loaded = []
    for entry in entry_points(group=group):
        try:
            target = entry.load()
            if isinstance(target, ConnectorSpec):
                registry.add(target)
            elif isinstance(target, list | tuple):
                for spec in target:
                    registry.add(spec)
            elif callable(target):
                target(registry)
            else:
                raise TypeError(f"{entry.value} is neither a function nor a ConnectorSpec")
        except Exception:  # noqa: BLE001  (a plugin may raise anything on import)
            _log.exception("connector entry point %r (%s) failed to load", entry.name, entry.value)
            continue
        loaded.append(entry.name)
    return loaded


def builtin_registry() -> ConnectorRegistry:
    """The connectors that ship with the platform: the hand-written ones (no vendor account
    needed), then the declarative catalogue (`declarative.py`, `catalog/*.yaml`); entry
    points are registered after these and so win."""
    from flowmaestro_dagster.nodes.connectors import (
        declarative,
        email,
        postgresql,
        slack,
        webhook,
    )

    registry = ConnectorRegistry()
    for module in (webhook, slack, email, postgresql, declarative):
        module.register(registry)
    return registry


_default: ConnectorRegistry | None = None
_default_lock = threading.Lock()


def default_registry() -> ConnectorRegistry:
    """Built-in connectors plus the installed entry points (loaded once per process)."""
    global _default
    with _default_lock:
        if _default is None:
            registry = builtin_registry()
            load_entry_points(registry)
            _default = registry
        return _default


def reset_default_registry() -> None:
    """Forget the loaded registry (after installing a plugin in a running process, tests)."""
    global _default
    with _default_lock:
        _default = None


def resolve_connection(
    settings: Settings, connection_id: str | None, provider: str | None
) -> tuple[str | None, ConnectionSettings | None]:
    """The node's connection: `connectionId` if set (it must exist), else the provider's."""
    if connection_id:
        return connection_id, settings.connections.get(connection_id)
    if provider:
        for name in (provider, _key(provider), _key(provider).replace("-", "_")):
            if name in settings.connections:
                return name, settings.connections[name]
    return None, None


def connector_problems(
    spec: "WorkflowSpec",
    *,
    registry: ConnectorRegistry | None = None,
    settings: Settings | None = None,
) -> list["Problem"]:
    """A `connector_required` warning per node whose connector (or connection) this
    deployment lacks; for declarative providers also an unknown operation or a missing
    required parameter (`declarative.node_problems`); an unknown provider is an error."""
    from flowmaestro_dagster.nodes.connectors import declarative
    from flowmaestro_dagster.spec.node_types import MEDIA_TYPES
    from flowmaestro_dagster.spec.problems import error, warning
    from flowmaestro_dagster.spec.providers import PROVIDER_IDS

    registry = registry or default_registry()
    if settings is None:
        try:
            from flowmaestro_dagster.settings import get_settings

            settings = get_settings()
        except ValueError:  # unreadable settings: judge by the registry alone
            settings = None
    catalogue = declarative.catalogue()
    problems = []
    for node in spec.nodes.values():
        if node.type == "integration":
            provider = getattr(node.config, "provider", None)
            operation = getattr(node.config, "operation", None)
        elif node.type in MEDIA_TYPES and _served_by_plug_ins_only(node.type):
            provider, operation = node.type, getattr(node.config, "operation", None)
        else:
            continue
        served_by = provider
        connection = None
        connection_id = getattr(node.config, "connection_id", None)
        if settings is not None and node.type == "integration":
            _, connection = resolve_connection(settings, connection_id, provider)
            if connection is not None and connection.connector:
                served_by = connection.connector
        found = registry.find(served_by, operation)
        provider_spec = catalogue.get(_key(served_by)) if served_by else None
        if found is None and node.type == "integration" and served_by:
            if provider_spec is not None:
                problems.append(
                    declarative.unknown_operation_problem(node.id, provider_spec, operation)
                )
                continue
            # A node naming a connection may be served by that connection's `connector`,
            # which only the run knows (the user's connections store): not certain here.
            if not connection_id and _key(served_by) not in PROVIDER_IDS | set(
                registry.providers()
            ):
                problems.append(
                    error(
                        "unknown_provider",
                        f"no provider '{served_by}': neither the builder nor this deployment "
                        "knows it (a connector plug-in adds providers)",
                        node_id=node.id,
                        field="provider",
                    )
                )
                continue
        if found is not None and isinstance(found.run, declarative.DeclarativeConnector):
            bound = connection is not None or bool(connection_id)
            parameters = getattr(node.config, "parameters", None)
            problems += declarative.node_problems(
                node.id,
                found.run.provider,
                operation,
                parameters if isinstance(parameters, dict) else {},
                strict=bound,
            )
            if bound or found.run.provider.auth.scheme == "none":
                continue
            what = describe(provider, operation, node.type)
            how = declarative.how_to_connect(found.run.provider.id)
            problems.append(
                warning(
                    "connector_required",
                    f"needs a connection: {what}; {how} (the node fails when it runs without one)",
                    node_id=node.id,
                    field="connectionId",
                )
            )
            continue
        if found is not None:
            continue
        what = describe(provider, operation, node.type)
        problems.append(
            warning(
                "connector_required",
                f"needs a connector: {what} (the node fails when it runs)",
                node_id=node.id,
                field="provider" if node.type == "integration" else None,
            )
        )
    return problems


NATIVE_MEDIA_TYPES = frozenset({"templateOutput"})
"""Media node types integration.py runs itself (no connector involved)."""


def _served_by_plug_ins_only(node_type: str) -> bool:
    """A media type with no executor of its own: only a connector registered under the type
    (an entry-point plug-in) runs it."""
    from flowmaestro_dagster.nodes import EXECUTORS
    from flowmaestro_dagster.nodes.integration import execute_media

    return EXECUTORS.get(node_type) is execute_media


def describe(provider: str | None, operation: str | None, node_type: str = "integration") -> str:
    """`provider hubspot (operation updateContact)`, as the failure message words it."""
    if node_type != "integration":
        return f"node type '{node_type}'" + (f" (operation {operation})" if operation else "")
    what = f"provider {provider}" if provider else "an integration node that names no provider"
    return what + (f" (operation {operation})" if operation else "")


__all__ = [
    "ANY_OPERATION",
    "ENTRY_POINT_GROUP",
    "NATIVE_MEDIA_TYPES",
    "Connector",
    "ConnectorRegistry",
    "ConnectorRequest",
    "ConnectorSpec",
    "builtin_registry",
    "connector_problems",
    "default_registry",
    "describe",
    "load_entry_points",
    "reset_default_registry",
    "resolve_connection",
]
