"""Slack: `sendMessage` / `postMessage` (and `send`) through an incoming webhook or the Web API.

A connection with a webhook `url` posts to that webhook, as always: the URL is the secret, it
comes from the node's connection (`url` or `url_env` of `Settings.connections[connectionId or
"slack"]`), never from the node, and never shows in output, logs or errors. An incoming
webhook posts to the one channel it was created for, so `channel` is reported back but not
sent; use one connection per channel. Parameters: `text` (also `message`/`content`), `blocks`,
`attachments`, `thread_ts`, `mrkdwn`, `unfurl_links`, `unfurl_media`. Output
`{ok, status, channel, text}`.

A connection without a webhook `url` but with a bot token (`access_token`, `token` or
`api_key`: a Slack OAuth connection) sends through the Web API instead: the catalogue's
`chatPostMessage` (catalog/slack.yaml), output Slack's `{ok, channel, ts, message}`. The other
Web API operations (history, direct messages, users, ...) are catalogued there and served
by the declarative connector; these ids stay here because the catalogue, registered after the
hand-written connectors, would otherwise shadow the webhook path.
"""

from dataclasses import replace
from typing import Any

from flowmaestro_dagster.errors import ConnectorNotConfiguredError, NodeConfigurationError
from flowmaestro_dagster.nodes.connectors import ConnectorRegistry, ConnectorRequest
from flowmaestro_dagster.nodes.connectors.webhook import http_call
from flowmaestro_dagster.settings import ConnectionSettings

OPERATIONS = ("sendMessage", "postMessage", "send", "sendWebhookMessage")
WEB_API_OPERATION = "chatPostMessage"
"""The catalogue operation a connection with a bot token (and no webhook URL) sends through."""
_PASSED = ("blocks", "attachments", "thread_ts", "mrkdwn", "unfurl_links", "unfurl_media")


def register(registry: ConnectorRegistry) -> None:
    registry.register(
        "slack", OPERATIONS, needs_connection=True, description="Slack incoming webhook"
    )(send_message)


def send_message(request: ConnectorRequest) -> dict[str, Any]:
    node = request.node
    if request.param("webhookUrl", "webhook_url", "url") is not None:
        raise node.error(
            "Slack webhook URLs come from a named connection (Settings.connections), "
            "not from the node",
            NodeConfigurationError,
        )
    connection = request.connection
    url = connection.secret("url") if connection is not None else None
    if not url and connection is not None and _has_bot_token(connection):
        return _through_web_api(request)
    if not url:
        name = request.connection_name or "slack"
        raise node.error(
            f"no Slack webhook configured: set FLOWMAESTRO_CONNECTIONS__{name.upper()}__URL_ENV "
            "to the name of a variable holding the incoming-webhook URL (or give the "
            "connection a Slack bot token, `access_token`, for the Web API)",
            ConnectorNotConfiguredError,
        )
    text = request.param("text", "message", "content")
    payload: dict[str, Any] = {}
    if text is not None:
        payload["text"] = text if isinstance(text, str) else str(text)
    for key in _PASSED:
        if request.parameters.get(key) is not None:
            payload[key] = request.parameters[key]
    if not payload.get("text") and not payload.get("blocks"):
        raise node.error("a Slack message needs text or blocks", NodeConfigurationError)
    timeout = connection.timeout_s if connection is not None else request.settings.http.timeout_s
    response = http_call(
        request,
        "POST",
        url,
        headers={"Content-Type": "application/json"},
        content=_json(payload),
        timeout=timeout,
        shown_url=None,
    )
    return {
        "ok": True,
        "status": response["status"],
        "channel": request.param("channel", "channelId"),
        "text": payload.get("text"),
    }


def _has_bot_token(connection: ConnectionSettings) -> bool:
    """Whether the connection carries a credential the Web API takes (the catalogue's auth)."""
    from flowmaestro_dagster.nodes.connectors.declarative import catalogue

    spec = catalogue().get("slack")
    return spec is not None and any(connection.secret(n) for n in spec.auth.secret_names)


def _through_web_api(request: ConnectorRequest) -> Any:
    """chat.postMessage with the connection's bot token (the declarative `chatPostMessage`)."""
    from flowmaestro_dagster.nodes.connectors.declarative import catalogue, execute

    return execute(catalogue()["slack"], replace(request, operation=WEB_API_OPERATION))


def _json(payload: dict[str, Any]) -> bytes:
    import json

    return json.dumps(payload, default=str).encode()


__all__ = ["OPERATIONS", "WEB_API_OPERATION", "register", "send_message"]
