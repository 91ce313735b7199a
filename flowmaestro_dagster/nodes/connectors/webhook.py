"""The generic webhook / HTTP connector (providers `webhook` and `http`, any operation).

Parameters: `url` (else the connection's `url`/`url_env`, else its `base_url`), `method`
(POST), `headers` (object or `[{key, value}]`), `query`/`queryParams`, the body as
`body`/`payload`/`data`/`json` (else every other parameter, as a JSON object), `timeout`
(seconds). The connection may add headers (secrets) and a `signing_secret`, which signs the
body: `X-FlowMaestro-Signature: sha256=<hex HMAC of "<timestamp>.<body>">` with
`X-FlowMaestro-Timestamp`.

A connection's secrets (its headers, and the signature made with its signing secret) go to a
URL the node supplies only if it lies under the connection's `base_url` (a relative `url` is
appended to it); otherwise the node fails with `ConnectionDestinationError` and nothing is sent.
Redirects are not followed. Every request goes through the SSRF guard
(`flowmaestro_dagster.nodes.net.guarded_client`).
Output `{status, ok, headers, data, responseTime}`; 429, 5xx, timeouts and connection errors
are retryable, any other non-2xx fails the node.
"""

import hashlib
import hmac
import json
import time
from collections.abc import Mapping
from typing import Any

import httpx

from flowmaestro_dagster.errors import (
    NodeConfigurationError,
    NodeExecutionError,
    TransientNodeError,
)
from flowmaestro_dagster.nodes.connectors import ConnectorRegistry, ConnectorRequest
from flowmaestro_dagster.nodes.net import BlockedAddressError, guarded_client, parse_retry_after

PROVIDERS = ("webhook", "http")
_RESERVED = frozenset(
    {
        "url",
        "webhookUrl",
        "method",
        "headers",
        "query",
        "queryParams",
        "body",
        "payload",
        "data",
        "json",
        "timeout",
        "provider",
        "operation",
    }
)


def register(registry: ConnectorRegistry) -> None:
    for provider in PROVIDERS:
        registry.register(provider, description="POST (or any method) to a URL")(send)


def send(request: ConnectorRequest) -> dict[str, Any]:
    connection = request.connection
    url = request.param("url", "webhookUrl")
    from_node = bool(url)
    secret_url = False
    if not url and connection is not None:
        url = connection.secret("url")
        secret_url = bool(url)
        url = url or connection.base_url
    if not url or not isinstance(url, str):
        raise request.node.error(
            "the webhook needs a url (a parameter, or the url or base_url of its connection)",
            NodeConfigurationError,
        )
    method = str(request.param("method", default="POST")).upper()
    headers = _pairs(request.param("headers", default={}))
    secret_headers: dict[str, str] = {}
    signing_secret = None
    if connection is not None:
        secret_headers = {k: v.get_secret_value() for k, v in connection.headers.items()}
        signing_secret = connection.secret("signing_secret")
    if from_node:
        url = request.resolve_url(url)
        if secret_headers or signing_secret:  # the signature is made with a secret: one too
            request.check_destination(url)
    headers.update(secret_headers)
    body = request.param("body", "payload", "data", "json")
    if body is None and method not in ("GET", "HEAD", "DELETE"):
        body = {k: v for k, v in request.parameters.items() if k not in _RESERVED}
    content = _encode(body, headers)
    if signing_secret and content is not None:
        stamp = str(int(time.time()))
        digest = hmac.new(
            signing_secret.encode(), stamp.encode() + b"." + content, hashlib.sha256
        ).hexdigest()
        headers["X-FlowMaestro-Timestamp"] = stamp
        headers["X-FlowMaestro-Signature"] = f"sha256={digest}"
    timeout = _timeout(request)
    response = http_call(
        request,
        method,
        url,
        headers=headers,
        params=_pairs(request.param("query", "queryParams", default={})),
        content=content,
        timeout=timeout,
        shown_url=None if secret_url else url,
    )
    return response


def _timeout(request: ConnectorRequest) -> float:
    value = request.param("timeout")
    if value is None and request.connection is not None:
        value = request.connection.timeout_s
    try:
        seconds = float(value) if value is not None else request.settings.http.timeout_s
    except (TypeError, ValueError):
        seconds = request.settings.http.timeout_s
    return min(max(seconds, 0.1), request.settings.http.max_timeout_s)


def _pairs(value: Any) -> dict[str, str]:
    if isinstance(value, Mapping):
        return {str(k): _text(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        pairs = {}
        for item in value:
            if isinstance(item, Mapping) and ("key" in item or "name" in item):
                key = item.get("key", item.get("name"))
                if key:
                    pairs[str(key)] = _text(item.get("value"))
        return pairs
    return {}


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(value)


def _encode(body: Any, headers: dict[str, str]) -> bytes | None:
    if body is None:
        return None
    if isinstance(body, bytes):
        return body
    if isinstance(body, str):
        headers.setdefault("Content-Type", "text/plain; charset=utf-8")
        return body.encode()
    headers.setdefault("Content-Type", "application/json")
    return json.dumps(body, default=str).encode()


def http_call(
    request: ConnectorRequest,
    method: str,
    url: str,
    *,
    headers: Mapping[str, str],
    content: bytes | None,
    timeout: float,
    params: Mapping[str, str] | None = None,
    shown_url: str | None = None,
) -> dict[str, Any]:
    """One guarded request; errors name `shown_url` (None: a secret URL, never shown)."""
    node = request.node
    where = shown_url or "the connection's URL"
    limit = request.settings.http.max_response_bytes
    started = time.monotonic()
    try:
        with (
            # Never follow redirects: a 3xx is answered as is, so a connection's secret headers
            # cannot ride a redirect to another host (httpx keeps custom headers on one).
            guarded_client(
                request.settings.http, timeout=timeout, follow_redirects=False
            ) as client,
            client.stream(
                method, url, headers=headers, params=params or None, content=content
            ) as resp,
        ):
            raw = bytearray()
            for chunk in resp.iter_bytes():
                raw.extend(chunk)
                if len(raw) > limit:
                    raise node.error(
                        f"the response from {where} is larger than {limit} bytes",
                        NodeExecutionError,
                    )
    except BlockedAddressError as exc:
        raise node.error(_hide(str(exc), url, shown_url), NodeConfigurationError) from exc
    except httpx.TimeoutException as exc:
        raise node.error(
            f"{where} did not answer within {timeout:g} s", TransientNodeError
        ) from exc
    except httpx.HTTPError as exc:
        message = _hide(f"{type(exc).__name__}: {exc}", url, shown_url)
        raise node.error(f"request to {where} failed: {message}", TransientNodeError) from exc
    elapsed_ms = round((time.monotonic() - started) * 1000, 1)
    data = _decode(bytes(raw), resp.headers.get("content-type", ""))
    status = resp.status_code
    if status == 429 or status >= 500:
        raise node.error(
            f"{where} answered {status}",
            TransientNodeError,
            retry_after_seconds=parse_retry_after(resp.headers),
            details={"status": status, "body": _hide(_short(data), url, shown_url)},
        )
    if status >= 400:
        raise node.error(
            f"{where} answered {status}: {_hide(_short(data), url, shown_url)}",
            NodeExecutionError,
            details={"status": status},
        )
    return {
        "status": status,
        "ok": True,
        "headers": dict(resp.headers),
        "data": data,
        "responseTime": elapsed_ms,
    }


def _decode(raw: bytes, content_type: str) -> Any:
    text = raw.decode("utf-8", errors="replace")
    if "json" in content_type.lower():
        try:
            return json.loads(text)
        except ValueError:
            return text
    return text


def _short(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return text if len(text) <= 300 else text[:297] + "..."


def _hide(text: str, url: str, shown_url: str | None) -> str:
    """A secret URL never shows, nor any part of it (a Slack webhook's path is its token)."""
    if shown_url is not None:
        return text
    parsed = httpx.URL(url)
    pieces = [url, parsed.raw_path.decode(errors="replace"), parsed.path]
    pieces += [p for p in parsed.path.split("/") if len(p) >= 6]
    pieces += [v for _, v in parsed.params.multi_items() if len(v) >= 6]
    for piece in sorted({p for p in pieces if len(p) > 1}, key=len, reverse=True):
        text = text.replace(piece, "<secret>")
    return text


__all__ = ["http_call", "register", "send"]
