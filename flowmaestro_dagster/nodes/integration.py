"""integration nodes (also `action` and provider-id types), connector-backed media nodes, and
templateOutput.

An integration node calls the connector registered for its provider and operation (see
`flowmaestro_dagster.nodes.connectors`); a node whose connector is missing fails with
"no connector configured for provider X (operation Y)". `execute_media` is the fallback of
media node types (and operations, like imageGeneration's `upscale`) that the platform does not
run itself: it looks up a connector registered under the node type, so a deployment can add
one through the entry-point group; without one they fail with "no connector configured for
<type>". Every builder media type has an executor of its own today (nodes/__init__.py).
templateOutput renders its template here (no connector involved).

The node's connection comes from the `connections` service first (the connections store: the
run user's connection named by `connectionId`, an id or a name, else their default for the
provider, OAuth2 tokens refreshed), then from the operators' FLOWMAESTRO_CONNECTIONS. A
`connectionId` found in neither (another user's included) fails the node.
"""

import copy
from collections.abc import Callable, Mapping
from typing import Any, Protocol, cast

from flowmaestro_dagster.errors import (
    ConnectorNotConfiguredError,
    NodeConfigurationError,
    NodeExecutionError,
    TransientNodeError,
)
from flowmaestro_dagster.lang import templates
from flowmaestro_dagster.lang.expressions import Layered
from flowmaestro_dagster.nodes import http as _http_executors
from flowmaestro_dagster.nodes import llm as _llm_executors
from flowmaestro_dagster.nodes.base import Executor, NodeContext, NodeResult, wrap_output
from flowmaestro_dagster.nodes.connectors import (
    NATIVE_MEDIA_TYPES,
    ConnectorRegistry,
    ConnectorRequest,
    default_registry,
    describe,
    resolve_connection,
)
from flowmaestro_dagster.settings import ConnectionSettings
from flowmaestro_dagster.spec.configs import IntegrationConfig
from flowmaestro_dagster.spec.node_types import MEDIA_TYPES
from flowmaestro_dagster.tags import USER_TAG

_SECRET_FIELDS = ("url", "password", "signing_secret", "token", "api_key")


def _registry(ctx: NodeContext) -> ConnectorRegistry:
    registry = ctx.services.get("connectors")
    return registry if isinstance(registry, ConnectorRegistry) else default_registry()


def execute_integration(ctx: NodeContext) -> NodeResult:
    config = ctx.typed_config(IntegrationConfig)
    provider, operation = config.provider, config.operation
    if not isinstance(config.parameters, dict):
        raise ctx.error("parameters must be an object", NodeConfigurationError)
    value = _call(ctx, provider, operation, config.connection_id, config.parameters)
    return NodeResult(wrap_output(value, config.output_variable))


def execute_media(ctx: NodeContext) -> NodeResult:
    """A media/AI node served by a connector registered under its node type, if any."""
    operation = getattr(ctx.config, "operation", None)
    extras = ctx.config.extras()
    connection_id = extras.pop("connectionId", None)
    parameters = {**extras}
    for key in ("provider", "model"):
        if getattr(ctx.config, key, None) is not None:
            parameters[key] = getattr(ctx.config, key)
    value = _call(ctx, ctx.node_type, operation, connection_id, parameters, media=True)
    return NodeResult(wrap_output(value, ctx.config.output_variable))


def _call(
    ctx: NodeContext,
    provider: str | None,
    operation: str | None,
    connection_id: Any,
    raw_parameters: Mapping[str, Any],
    *,
    media: bool = False,
) -> Any:
    settings = ctx.settings
    wanted = str(connection_id) if connection_id else None
    connection_name, connection, refresh = _connection(ctx, wanted, provider)
    served_by = connection.connector if connection is not None and connection.connector else None
    spec = _registry(ctx).find(served_by or provider, operation)
    if spec is None:
        what = describe(provider, operation, ctx.node_type if media else "integration")
        media_provider = getattr(ctx.config, "provider", None) if media else None
        if media_provider:
            what += f" (provider {media_provider})"
        raise ctx.error(f"no connector configured for {what}", ConnectorNotConfiguredError)
    secrets = _secrets(connection)
    request = ConnectorRequest(
        provider=served_by or provider or ctx.node_type,
        operation=operation,
        parameters=ctx.render(dict(raw_parameters)),
        connection=connection,
        connection_name=connection_name,
        settings=settings,
        node=ctx,
        refresh=_redacting(refresh, secrets) if refresh is not None else None,
    )
    try:
        return spec.run(request)
    except ConnectorNotConfiguredError as exc:
        if connection is None and "POST /connections" not in str(exc):
            exc = _with_hint(exc, provider or ctx.node_type)
        raise _redacted(exc, secrets) from exc.__cause__
    except NodeExecutionError as exc:
        raise _redacted(exc, secrets) from exc.__cause__
    except Exception as exc:  # noqa: BLE001  (a deployment's connector may raise anything)
        message = _redact(f"{type(exc).__name__}: {exc}", secrets)
        raise ctx.error(f"connector {spec.provider} failed: {message}") from None


class ResolvedConnection(Protocol):
    """What the `connections` service resolves (store/connections.py ResolvedConnection)."""

    @property
    def name(self) -> str: ...
    @property
    def settings(self) -> ConnectionSettings | None: ...
    @property
    def refresh(self) -> Callable[[], ConnectionSettings | None] | None: ...
    @property
    def problem(self) -> str | None: ...
    @property
    def transient(self) -> bool: ...


class ConnectionResolver(Protocol):
    """The `connections` service: the run owner's connections (the platform database)."""

    def resolve(
        self, owner_id: str | None, connection_id: str | None, provider: str
    ) -> ResolvedConnection | None: ...


def _connection(
    ctx: NodeContext, connection_id: str | None, provider: str | None
) -> tuple[str | None, ConnectionSettings | None, Callable[[], ConnectionSettings | None] | None]:
    """The node's connection: the run owner's in the connections store (by id or name, else
    their default for the provider), else the operators' FLOWMAESTRO_CONNECTIONS. A named
    connection found in neither fails the node, worded alike whether it is someone else's
    or nobody's."""
    store = ctx.services.get("connections")
    if store is not None and (connection_id or provider):
        owner = ctx.run_tags.get(USER_TAG)
        found = cast(ConnectionResolver, store).resolve(owner, connection_id, provider or "")
        if found is not None:
            if found.problem is not None or found.settings is None:
                cls = TransientNodeError if found.transient else ConnectorNotConfiguredError
                raise ctx.error(found.problem or f"connection {found.name!r} is unusable", cls)
            return found.name, found.settings, found.refresh
    name, connection = resolve_connection(ctx.settings, connection_id, provider)
    if connection_id and connection is None:
        raise ctx.error(
            f"no connection named '{connection_id}' of yours: "
            f"{_how_to_add(provider or ctx.node_type)}",
            ConnectorNotConfiguredError,
            details={"field": "connectionId"},
        )
    return name, connection, None


def _how_to_add(provider: str) -> str:
    variable = provider.upper().replace("-", "_")
    return (
        f"add one with POST /connections (provider {provider}) or "
        f"FLOWMAESTRO_CONNECTIONS__{variable}__..."
    )


def _with_hint(exc: ConnectorNotConfiguredError, provider: str) -> ConnectorNotConfiguredError:
    """A connector's "not configured" failure, with where users add connections now."""
    hinted = copy.copy(exc)
    hinted.reason = f"{exc.reason} (or {_how_to_add(provider)})"
    hinted.args = (f"{exc.args[0] if exc.args else ''} (or {_how_to_add(provider)})",)
    return hinted


def _redacting(
    refresh: Callable[[], ConnectionSettings | None], secrets: list[str]
) -> Callable[[], ConnectionSettings | None]:
    """`refresh`, adding the new token to what error messages are scrubbed of."""

    def refreshed() -> ConnectionSettings | None:
        fresh = refresh()
        for value in _secrets(fresh):
            if value not in secrets:
                secrets.append(value)
        secrets.sort(key=len, reverse=True)
        return fresh

    return refreshed


def _secrets(connection: ConnectionSettings | None) -> list[str]:
    """Every secret value of a connection, to scrub from error messages (a safety net)."""
    if connection is None:
        return []
    names = set(_SECRET_FIELDS) | {
        k for k in (connection.model_extra or {}) if not k.endswith("_env")
    }
    values = [connection.secret(name) for name in names]
    values += [v.get_secret_value() for v in connection.headers.values()]
    return sorted({v for v in values if v and len(v) >= 4}, key=len, reverse=True)


def redact_secrets(text: str, connection: ConnectionSettings | None) -> str:
    """`text` with every secret of `connection` replaced by `***` (for messages that are kept:
    a notification's recorded error, an event)."""
    return _redact(text, _secrets(connection))


def _redact(text: str, secrets: list[str]) -> str:
    for secret in secrets:
        text = text.replace(secret, "***")
    return text


def _redacted(exc: NodeExecutionError, secrets: list[str]) -> NodeExecutionError:
    message = str(exc)
    if not any(s in message for s in secrets):
        return exc
    clean = copy.copy(exc)
    clean.args = (_redact(message, secrets),)
    clean.reason = _redact(exc.reason, secrets)
    clean.details = {k: _redact(str(v), secrets) for k, v in exc.details.items()}
    return clean


# -- templateOutput ------------------------------------------------------------------------------


def execute_template_output(ctx: NodeContext) -> NodeResult:
    """Render `template` (references, then the node's `variables`); optionally as HTML."""
    extras = ctx.config.extras()
    template = extras.get("template", extras.get("content"))
    if not isinstance(template, str):
        raise ctx.error("templateOutput needs a template (text)", NodeConfigurationError)
    variables = extras.get("variables")
    if isinstance(variables, dict) and variables:
        with templates.collect_misses():  # the variables may provide what this pass leaves
            text = ctx.render_text(template)
        values = ctx.render(variables)
        text = templates.render_string(text, Layered(ctx.state, values), budget=ctx.budget)
    else:
        text = ctx.render_text(template)
    source = str(extras.get("templateType") or "markdown").lower()
    target = str(extras.get("outputFormat") or extras.get("format") or source).lower()
    if target == "html" and source in ("markdown", "md", "handlebars"):
        from markdown_it import MarkdownIt

        text = MarkdownIt("commonmark", {"html": False}).render(text)
    name = ctx.config.output_variable or extras.get("outputName")
    if isinstance(name, str) and name:
        return NodeResult({name: text})
    return NodeResult({"content": text, "format": target})


# Media types with an executor of their own elsewhere (LLM: vision, embeddings; io: files).
_ELSEWHERE = set(_llm_executors.EXECUTORS) | set(_http_executors.EXECUTORS) | {"files"}

EXECUTORS: Mapping[str, Executor] = {
    "integration": execute_integration,
    "templateOutput": execute_template_output,
    **{
        node_type: execute_media
        for node_type in sorted(MEDIA_TYPES - NATIVE_MEDIA_TYPES - _ELSEWHERE)
    },
}
