"""integration nodes (also `action` and provider-id types), connector-backed media nodes, and
templateOutput.

An integration node calls the connector registered for its provider and operation (see
`flowmaestro_dagster.nodes.connectors`); a node whose connector is missing fails with
"no connector configured for provider X (operation Y)". Media node types without an executor
of their own (audio*, pdf*, ocr*, image*, chart*, spreadsheet*, webSearch, ...) look up a
connector registered under the node type, so a deployment can add one through the entry-point
group; without one they fail with "no connector configured for <type>". templateOutput renders
its template here (no connector involved).
"""

import copy
from collections.abc import Mapping
from typing import Any

from flowmaestro_dagster.errors import (
    ConnectorNotConfiguredError,
    NodeConfigurationError,
    NodeExecutionError,
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
    connection_name, connection = resolve_connection(
        settings, str(connection_id) if connection_id else None, provider
    )
    if connection_id and connection is None:
        raise ctx.error(
            f"no connection named '{connection_id}' is configured (FLOWMAESTRO_CONNECTIONS)",
            ConnectorNotConfiguredError,
        )
    served_by = connection.connector if connection is not None and connection.connector else None
    spec = _registry(ctx).find(served_by or provider, operation)
    if spec is None:
        what = describe(provider, operation, ctx.node_type if media else "integration")
        media_provider = getattr(ctx.config, "provider", None) if media else None
        if media_provider:
            what += f" (provider {media_provider})"
        raise ctx.error(f"no connector configured for {what}", ConnectorNotConfiguredError)
    request = ConnectorRequest(
        provider=served_by or provider or ctx.node_type,
        operation=operation,
        parameters=ctx.render(dict(raw_parameters)),
        connection=connection,
        connection_name=connection_name,
        settings=settings,
        node=ctx,
    )
    secrets = _secrets(connection)
    try:
        return spec.run(request)
    except NodeExecutionError as exc:
        raise _redacted(exc, secrets) from exc.__cause__
    except Exception as exc:  # noqa: BLE001  (a deployment's connector may raise anything)
        message = _redact(f"{type(exc).__name__}: {exc}", secrets)
        raise ctx.error(f"connector {spec.provider} failed: {message}") from None


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
