"""http nodes: one request with httpx, behind the SSRF guard of `flowmaestro_dagster.nodes.net`.

Output `{status, headers, data, responseTime}` (ms); `data` is parsed JSON when the body is
JSON, else text. As upstream, a non-2xx answer is an output, not a failure, except that 408,
429 and 5xx (and timeouts and connection errors) are `TransientNodeError`s so the RetryPolicy
retries them (a 429 with its `Retry-After`). `failOnError` makes every other non-2xx a
permanent failure. Every field is interpolated with `{{...}}`.
"""

import base64
import contextlib
import json
import time
from collections.abc import Iterator, Mapping
from typing import Any

import httpx

from flowmaestro_dagster.errors import (
    NodeConfigurationError,
    NodeExecutionError,
    TransientNodeError,
)
from flowmaestro_dagster.lang.expressions import to_text
from flowmaestro_dagster.nodes.base import Executor, NodeContext, NodeResult, wrap_output
from flowmaestro_dagster.nodes.net import BlockedAddressError, guarded_client, parse_retry_after
from flowmaestro_dagster.settings import HttpSettings
from flowmaestro_dagster.spec.configs import HttpConfig, KeyValue

METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"})
USER_AGENT = "flowmaestro-dagster"
DEFAULT_API_KEY_HEADER = "X-API-Key"
# Headers that must not follow a redirect to another origin (httpx drops Authorization
# itself; API keys in custom headers it would forward).
_CREDENTIAL_MARKERS = ("auth", "key", "token", "secret", "cookie", "session", "password")
_ERROR_BODY_CHARS = 500

_AUTH_ALIASES = {
    "": "none",
    "none": "none",
    "noauth": "none",
    "basic": "basic",
    "basicauth": "basic",
    "bearer": "bearer",
    "bearertoken": "bearer",
    "token": "bearer",
    "oauth2": "bearer",
    "apikey": "apikey",
}
_BODY_ALIASES = {
    "json": "json",
    "application/json": "json",
    "form": "form",
    "urlencoded": "form",
    "formurlencoded": "form",
    "xwwwformurlencoded": "form",
    "application/x-www-form-urlencoded": "form",
    "formdata": "multipart",
    "multipart": "multipart",
    "multipart/form-data": "multipart",
    "raw": "raw",
    "text": "raw",
    "xml": "xml",
    "none": "none",
}


class _TooLarge(Exception):
    """The response body is larger than `max_response_bytes`."""


def node_http_settings(ctx: NodeContext) -> HttpSettings:
    return ctx.settings.http


def _key(text: Any) -> str:
    return "".join(ch for ch in str(text or "").lower() if ch.isalnum() or ch == "/")


def _send_failure(
    exc: Exception, method: str, display: str, timeout: float, settings: HttpSettings
) -> tuple[str, type[NodeExecutionError]]:
    """Why a request failed, and whether for good: a blocked address or an unusable URL is the
    configuration's fault, a timeout or a connection error is retried (httpx's specific
    errors are matched before the general ones they derive from)."""
    if isinstance(exc, BlockedAddressError):
        return str(exc), NodeConfigurationError
    if isinstance(exc, _TooLarge):
        return (
            f"the response of {display} is larger than {settings.max_response_bytes} bytes "
            "(FLOWMAESTRO_HTTP__MAX_RESPONSE_BYTES)",
            NodeExecutionError,
        )
    if isinstance(exc, httpx.TimeoutException):
        return f"{method} {display} timed out after {timeout:g}s", TransientNodeError
    if isinstance(exc, httpx.UnsupportedProtocol | httpx.LocalProtocolError | httpx.InvalidURL):
        return f"cannot send {method} {display}: {exc}", NodeConfigurationError
    if isinstance(exc, httpx.TransportError):
        return f"{method} {display} failed: {exc or type(exc).__name__}", TransientNodeError
    return f"{method} {display} failed: {exc}", NodeExecutionError


def execute_http(ctx: NodeContext) -> NodeResult:
    config = ctx.typed_config(HttpConfig)
    settings = node_http_settings(ctx)
    request_parts = build_request_parts(ctx, config)
    timeout = config.timeout_s if "timeout_s" in config.model_fields_set else settings.timeout_s
    timeout = min(timeout, settings.max_timeout_s)
    follow = bool(config.extras().get("followRedirects", True))
    display = request_parts.display_url
    try:
        status, headers, body, elapsed_ms = send(
            settings, request_parts, timeout=timeout, follow_redirects=follow
        )
    except (BlockedAddressError, _TooLarge, httpx.InvalidURL, httpx.HTTPError) as exc:
        message, kind = _send_failure(exc, request_parts.method, display, timeout, settings)
        raise ctx.error(message, kind, details={"url": display}) from exc
    data = parse_body(body, headers)
    output = {"status": status, "headers": headers, "data": data, "responseTime": elapsed_ms}
    check_status(ctx, config, request_parts, status, headers, data)
    return NodeResult(wrap_output(output, config.output_variable))


def check_status(
    ctx: NodeContext,
    config: HttpConfig,
    parts: "RequestParts",
    status: int,
    headers: Mapping[str, str],
    data: Any,
) -> None:
    """408/429/5xx are retried; with failOnError any other non-2xx fails for good."""
    if 200 <= status < 300:
        return
    snippet = (data if isinstance(data, str) else json.dumps(data, default=str))[:_ERROR_BODY_CHARS]
    snippet = parts.mask(snippet)
    details = {"url": parts.display_url, "status": status, "body": snippet}
    message = f"{parts.method} {parts.display_url} answered HTTP {status}: {snippet}"
    if status in (408, 429) or status >= 500:
        raise TransientNodeError(
            message,
            retry_after_seconds=parse_retry_after(headers),
            node_id=ctx.node_id,
            node_type=ctx.node_type,
            details=details,
        )
    if config.fail_on_error:
        raise ctx.error(message, NodeExecutionError, details=details)


# -- the request ----------------------------------------------------------------------------------


class RequestParts:
    """Everything a request is made of, rendered; `display_url` has secrets masked."""

    def __init__(self) -> None:
        self.method = "GET"
        self.url = ""
        self.display_url = ""
        self.headers: list[tuple[str, str]] = []
        self.params: list[tuple[str, str]] = []
        self.body: dict[str, Any] = {}
        self.secret_headers: set[str] = set()
        self.secrets: set[str] = set()

    def mask(self, text: str) -> str:
        """`text` with the auth secrets blanked (servers echo them back in error bodies)."""
        for secret in sorted(self.secrets, key=len, reverse=True):
            if len(secret) >= 3:
                text = text.replace(secret, "***")
        return text


def build_request_parts(ctx: NodeContext, config: HttpConfig) -> RequestParts:
    parts = RequestParts()
    method = ctx.render_text(config.method).strip().upper()
    if method not in METHODS:
        raise ctx.error(
            f"method '{method}' is not one of {', '.join(sorted(METHODS))}",
            NodeConfigurationError,
        )
    parts.method = method
    url = ctx.render_text(config.url).strip() if config.url is not None else ""
    if not url:
        raise ctx.error("the node has no url", NodeConfigurationError)
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL as exc:
        raise ctx.error(f"invalid url {url!r}: {exc}", NodeConfigurationError) from exc
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise ctx.error(
            f"url {url!r} must be an absolute http:// or https:// URL", NodeConfigurationError
        )
    parts.url = url
    parts.headers = _pairs(ctx, config.headers, "headers")
    parts.params = _pairs(ctx, config.query_params, "queryParams")
    secret_params = _apply_auth(ctx, config, parts)
    parts.body = _body(ctx, config, parts)
    if parts.params:  # appended to the URL's own query (httpx's `params=` would replace it)
        merged = (*parsed.params.multi_items(), *parts.params)
        parsed = parsed.copy_with(query=str(httpx.QueryParams(merged)).encode())
    parts.url = str(parsed)
    parts.display_url = _display_url(parsed, secret_params)
    return parts


def _pairs(ctx: NodeContext, value: list[KeyValue] | str, field: str) -> list[tuple[str, str]]:
    """Headers / query parameters as rendered (name, value) pairs; a list value repeats."""
    raw: list[tuple[Any, Any]]
    if isinstance(value, str):
        raw = _pairs_from_text(ctx, value, field)
    else:
        raw = [(item.key, item.value) for item in value]
    pairs: list[tuple[str, str]] = []
    for raw_name, raw_value in raw:
        name = ctx.render_text(raw_name).strip()
        if not name:
            continue
        rendered = ctx.render(raw_value)
        values = rendered if isinstance(rendered, list) else [rendered]
        for item in values:
            if item is None:
                continue
            text = to_text(item)
            if any(ch in name + text for ch in "\r\n\0"):
                raise ctx.error(f"{field} '{name}' contains a line break", NodeConfigurationError)
            pairs.append((name, text))
    return pairs


def _pairs_from_text(ctx: NodeContext, text: str, field: str) -> list[tuple[Any, Any]]:
    """A JSON object (its values may be templates), or `Name: value` / `a=1&b=2` text."""
    template = _json_or_none(text)
    if isinstance(template, dict):
        return list(template.items())
    rendered = ctx.render(text)
    if isinstance(rendered, dict):
        return list(rendered.items())
    rendered_text = to_text(rendered)
    parsed = _json_or_none(rendered_text)
    if isinstance(parsed, dict):
        return list(parsed.items())
    separator = ":" if field == "headers" else "="
    lines = [line for line in rendered_text.splitlines() if line.strip()]
    if separator == "=" and len(lines) == 1:
        lines = [part for part in lines[0].lstrip("?").split("&") if part]
    if all(separator in line for line in lines):
        pairs = (line.split(separator, 1) for line in lines)
        return [(name.strip(), value.strip()) for name, value in pairs]
    raise ctx.error(
        f"{field} must be a list of {{key, value}}, an object, or '{separator}'-separated lines",
        NodeConfigurationError,
    )


def _json_or_none(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return None


def _apply_auth(ctx: NodeContext, config: HttpConfig, parts: RequestParts) -> set[str]:
    """Add the node's auth to the headers or query; returns query names that hold secrets."""
    kind = _AUTH_ALIASES.get(_key(config.auth_type))
    if kind is None:
        raise ctx.error(
            f"authType '{config.auth_type}' is not one of none, basic, bearer, apiKey",
            NodeConfigurationError,
        )
    if kind == "none":
        return set()
    creds = ctx.render(config.auth_credentials)
    if isinstance(creds, str) and creds.strip().startswith("{"):
        creds = _json_or_none(creds) or creds
    if kind == "basic":
        if isinstance(creds, dict):
            user = _first(creds, "username", "user", "login")
            password = _first(creds, "password", "pass") or ""
        elif isinstance(creds, str) and ":" in creds:
            user, password = creds.split(":", 1)
        else:
            user, password = None, ""
        if not user:
            raise ctx.error(
                "basic auth needs authCredentials {username, password} or 'user:password'",
                NodeConfigurationError,
            )
        token = base64.b64encode(f"{user}:{password}".encode()).decode()
        parts.secrets.update({str(password), token})
        _set_header(parts, "Authorization", f"Basic {token}", secret=True)
        return set()
    if kind == "bearer":
        token = (
            _first(creds, "token", "accessToken", "access_token", "bearerToken", "value")
            if isinstance(creds, dict)
            else creds
        )
        if not isinstance(token, str | int) or not str(token).strip():
            raise ctx.error(
                "bearer auth needs authCredentials {token} or the token", NodeConfigurationError
            )
        parts.secrets.add(str(token).strip())
        _set_header(parts, "Authorization", f"Bearer {str(token).strip()}", secret=True)
        return set()
    # apiKey: {key (the header or parameter name), value, in: header | query}
    if isinstance(creds, dict):
        value = _first(creds, "value", "apiKey", "api_key", "token")
        name = _first(creds, "key", "name", "headerName", "paramName", "header") or (
            DEFAULT_API_KEY_HEADER
        )
        where = str(_first(creds, "in", "addTo", "location", "placement") or "header").lower()
    else:
        value, name, where = creds, DEFAULT_API_KEY_HEADER, "header"
    if not isinstance(value, str | int) or not str(value).strip():
        raise ctx.error(
            "apiKey auth needs authCredentials {key: <header or parameter name>, value, "
            "in: header|query} or the key itself",
            NodeConfigurationError,
        )
    parts.secrets.add(str(value))
    if where in ("query", "queryparams", "params", "url"):
        parts.params.append((str(name), str(value)))
        return {str(name)}
    _set_header(parts, str(name), str(value), secret=True)
    return set()


def _first(values: Mapping[str, Any], *names: str) -> Any:
    for name in names:
        if values.get(name) not in (None, ""):
            return values[name]
    return None


def _set_header(parts: RequestParts, name: str, value: str, *, secret: bool = False) -> None:
    parts.headers = [(k, v) for k, v in parts.headers if k.lower() != name.lower()]
    parts.headers.append((name, value))
    if secret:
        parts.secret_headers.add(name.lower())


def _has_header(parts: RequestParts, name: str) -> bool:
    return any(k.lower() == name.lower() for k, _ in parts.headers)


def _body(ctx: NodeContext, config: HttpConfig, parts: RequestParts) -> dict[str, Any]:
    """httpx keyword arguments for the body (`json`, `data`, `files` or `content`)."""
    if config.body is None:
        return {}
    kind = _BODY_ALIASES.get(
        str(config.body_type or "").strip().lower(), _BODY_ALIASES.get(_key(config.body_type))
    )
    if config.body_type and kind is None:
        raise ctx.error(
            f"bodyType '{config.body_type}' is not one of json, form, form-data, raw, xml, none",
            NodeConfigurationError,
        )
    if kind == "none":
        return {}
    if kind == "json":
        return {"json": _json_body(ctx, config.body)}
    if kind in ("form", "multipart"):
        fields = _form_fields(ctx, config.body)
        if kind == "multipart":
            return {"files": [(name, (None, value)) for name, value in fields]}
        return {"data": _grouped(fields)}
    if kind in ("raw", "xml"):
        rendered = ctx.render(config.body)
        if not _has_header(parts, "content-type"):
            default = "application/xml" if kind == "xml" else "text/plain; charset=utf-8"
            parts.headers.append(("Content-Type", default))
        return {"content": to_text(rendered).encode()}
    # No bodyType: objects and JSON text go as JSON, anything else as text.
    if isinstance(config.body, dict | list | int | float | bool):
        return {"json": ctx.render(config.body)}
    template = _json_or_none(config.body) if isinstance(config.body, str) else None
    if isinstance(template, dict | list):
        return {"json": ctx.render(template)}
    rendered = ctx.render(config.body)
    if isinstance(rendered, dict | list):
        return {"json": rendered}
    text = to_text(rendered)
    if isinstance(_json_or_none(text), dict | list):
        if not _has_header(parts, "content-type"):
            parts.headers.append(("Content-Type", "application/json"))
        return {"content": text.encode()}
    if not _has_header(parts, "content-type"):
        parts.headers.append(("Content-Type", "text/plain; charset=utf-8"))
    return {"content": text.encode()}


def _json_body(ctx: NodeContext, body: Any) -> Any:
    """A JSON body: structures are rendered value by value, so inserted text stays escaped."""
    if not isinstance(body, str):
        return ctx.render(body)
    template = _json_or_none(body)
    if template is not None:
        return ctx.render(template)
    rendered = ctx.render(body)
    if not isinstance(rendered, str):
        return rendered
    parsed = _json_or_none(rendered)
    if parsed is None and rendered.strip() not in ("null",):
        raise ctx.error(
            f"bodyType json, but the body is not valid JSON: {rendered[:200]!r}",
            NodeConfigurationError,
        )
    return parsed


def _form_fields(ctx: NodeContext, body: Any) -> list[tuple[str, str]]:
    rendered = ctx.render(body)
    if isinstance(rendered, str):
        parsed = _json_or_none(rendered)
        if isinstance(parsed, dict):
            rendered = parsed
        else:
            from urllib.parse import parse_qsl

            return parse_qsl(rendered, keep_blank_values=True)
    if isinstance(rendered, list):  # [{key, value}] rows from the builder
        rendered = {
            str(row.get("key", row.get("name"))): row.get("value")
            for row in rendered
            if isinstance(row, dict) and (row.get("key") or row.get("name"))
        }
    if not isinstance(rendered, dict):
        raise ctx.error(
            "a form body must be an object, [{key, value}] rows or 'a=1&b=2'",
            NodeConfigurationError,
        )
    fields: list[tuple[str, str]] = []
    for name, value in rendered.items():
        for item in value if isinstance(value, list) else [value]:
            if item is not None:
                fields.append((str(name), to_text(item)))
    return fields


def _grouped(fields: list[tuple[str, str]]) -> dict[str, str | list[str]]:
    grouped: dict[str, list[str]] = {}
    for name, value in fields:
        grouped.setdefault(name, []).append(value)
    return {k: v[0] if len(v) == 1 else v for k, v in grouped.items()}


def _display_url(url: httpx.URL, secret_params: set[str]) -> str:
    """The URL for messages and details: no userinfo, secret query values masked."""
    shown = url.copy_with(username=None, password=None) if url.userinfo else url
    if secret_params:
        params = [
            (k, "REDACTED" if k in secret_params else v) for k, v in shown.params.multi_items()
        ]
        shown = shown.copy_with(params=params)
    return str(shown)


# -- sending --------------------------------------------------------------------------------------


def send(
    settings: HttpSettings, parts: RequestParts, *, timeout: float, follow_redirects: bool
) -> tuple[int, dict[str, str], bytes, int]:
    """(status, headers, body, elapsed ms); redirects are followed hop by hop, each guarded."""
    opened = open_response(settings, parts, timeout=timeout, follow_redirects=follow_redirects)
    with opened as (response, started):
        body = _read_capped(response, settings.max_response_bytes, started + timeout)
    headers = {name.lower(): value for name, value in response.headers.items()}
    elapsed_ms = round((time.perf_counter() - started) * 1000)
    return response.status_code, headers, body, elapsed_ms


@contextlib.contextmanager
def open_response(
    settings: HttpSettings, parts: RequestParts, *, timeout: float, follow_redirects: bool
) -> Iterator[tuple[httpx.Response, float]]:
    """The final response with its body unread, and when sending started (perf_counter).

    For callers that stream the body (`iter_body`: fileDownload writes it to the file store
    chunk by chunk) as well as `send`. Redirects are followed hop by hop, each hop connecting
    through the guarded transport (so re-checked), credentials dropped across origins.
    """
    started = time.perf_counter()
    with guarded_client(settings, timeout=timeout, headers={"User-Agent": USER_AGENT}) as client:
        request = client.build_request(parts.method, parts.url, headers=parts.headers, **parts.body)
        hops = 0
        while True:
            response = client.send(request, stream=True)
            next_request = response.next_request
            if not follow_redirects or next_request is None:
                break
            response.close()
            hops += 1
            if hops > settings.max_redirects:
                raise httpx.TooManyRedirects(
                    f"more than {settings.max_redirects} redirects", request=request
                )
            if _origin(next_request.url) != _origin(request.url):
                for name in list(next_request.headers):
                    if name.lower() in parts.secret_headers or any(
                        marker in name.lower() for marker in _CREDENTIAL_MARKERS
                    ):
                        del next_request.headers[name]
            request = next_request
        try:
            yield response, started
        finally:
            response.close()


def _origin(url: httpx.URL) -> tuple[str, str, int | None]:
    return url.scheme, url.host, url.port


def _read_capped(response: httpx.Response, limit: int, deadline: float) -> bytes:
    """The body, up to `limit` bytes and until `deadline` (httpx's timeouts are per read, so
    a server that trickles bytes would otherwise hold the node for ever)."""
    return b"".join(iter_body(response, limit=limit, deadline=deadline))


def iter_body(response: httpx.Response, *, limit: int, deadline: float) -> Iterator[bytes]:
    """The body chunk by chunk, refused past `limit` bytes (a declared Content-Length over it
    before reading anything) or past `deadline` (perf_counter): `_TooLarge` / ReadTimeout."""
    declared = response.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise _TooLarge()
    size = 0
    for chunk in response.iter_bytes():  # decoded, so a compressed bomb is capped too
        size += len(chunk)
        if size > limit:
            raise _TooLarge()
        if time.perf_counter() > deadline:
            raise httpx.ReadTimeout("the response took longer than the timeout")
        yield chunk


def parse_body(body: bytes, headers: Mapping[str, str]) -> Any:
    """JSON when the response is JSON (or text that is a JSON object / list), else text."""
    content_type = headers.get("content-type", "").lower()
    charset = "utf-8"
    for part in content_type.split(";")[1:]:
        name, _, value = part.strip().partition("=")
        if name == "charset" and value:
            charset = value.strip('"')
    try:
        text = body.decode(charset, errors="replace")
    except LookupError:
        text = body.decode("utf-8", errors="replace")
    stripped = text.strip()
    if not stripped:
        return ""
    if "json" in content_type or stripped[:1] in ("{", "["):
        parsed = _json_or_none(stripped)
        if parsed is not None or stripped == "null":
            return parsed
    return text


EXECUTORS: Mapping[str, Executor] = {"http": execute_http}
