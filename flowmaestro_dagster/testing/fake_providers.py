"""One local HTTP server standing in for every catalogued SaaS provider: real sockets, recorded
requests, answers shaped like each provider's documented responses.

No SaaS API is reachable in tests, so workflows that call Notion, Gmail, HubSpot, ... run their
integration nodes through the real declarative executor against this server instead. Each
provider lives under its own prefix; a connection whose `base_url` is `base_url(provider)`
sends that provider's calls here::

    with FakeProviderServer() as providers:
        connection = {"provider": "notion", "credentials": {"token": "secret"},
                      "base_url": providers.base_url("notion")}
        ...  # run a workflow
        [call] = providers.requests_to("notion", "createPage")
        assert call.headers["authorization"] == "Bearer secret"

A request is routed to the catalogue operation whose method and path template match (`{param}`
is one segment; of the placeholders a hook fills, `:name` (Teams' `:teamId`) is one segment
and a segment in capitals (GitHub's `OWNER/REPO`) one or more; the operation's documented
example path matches too); among several, the one whose declared body fields (key paths,
nested objects included) the request's JSON shares most, then the one declaring fewest fields
it lacks, then the most literal template. Answers, first that applies: a reply queued for the
operation (`reply`), the `responder` function, the operation's documented example response
(`example.response` in the catalogue: status, headers, body), else `{}`. Example answers end
pagination after one page (the cursor removed, `has_more` false, later page numbers empty) so
paginated reads stop. A path no operation matches answers 404 with the reason (and is
recorded, operation None).
"""

import json
import re
import threading
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import parse_qs, urlsplit

from flowmaestro_dagster.nodes.connectors import declarative
from flowmaestro_dagster.nodes.connectors.declarative import OperationSpec, ProviderSpec
from flowmaestro_dagster.testing.local_server import LocalHTTPServer

MAX_BODY_BYTES = 16 * 1024 * 1024
"""A request body larger than this is refused (413) without being read."""
_CAPITALS = re.compile(r"[A-Z][A-Z0-9_]*")
_COLON_NAME = re.compile(r":[A-Za-z_][A-Za-z0-9_]*")


@dataclass(frozen=True)
class ProviderRequest:
    """A request the server received (header names in lower case, the path below the
    provider's prefix as sent, still URL-encoded)."""

    provider: str
    operation: str | None
    method: str
    path: str
    query: Mapping[str, list[str]]
    headers: Mapping[str, str]
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", errors="replace")

    @property
    def json(self) -> Any:
        """The JSON body (None when there is none or it is not JSON)."""
        if not self.body or "json" not in self.headers.get("content-type", ""):
            return None
        try:
            return json.loads(self.body)
        except ValueError:
            return None

    @property
    def form(self) -> dict[str, Any] | None:
        """A form-encoded body's fields (a repeated field as a list), else None."""
        if "x-www-form-urlencoded" not in self.headers.get("content-type", ""):
            return None
        return {k: v if len(v) > 1 else v[0] for k, v in parse_qs(self.text).items()}


@dataclass(frozen=True)
class ProviderReply:
    """One scripted answer: a JSON body (None: no body), a status, headers."""

    body: Any = None
    status: int = 200
    headers: Mapping[str, str] = field(default_factory=dict)


Responder = Callable[[ProviderRequest], "ProviderReply | None"]


@dataclass(frozen=True)
class _Route:
    operation: OperationSpec
    pattern: re.Pattern[str]
    literal_chars: int
    body_paths: frozenset[str]


class FakeProviderServer(LocalHTTPServer):
    """Every provider of `catalogue` (default: the shipped one) on 127.0.0.1, one prefix each."""

    name = "fake provider server"

    def __init__(
        self,
        catalogue: Mapping[str, ProviderSpec] | None = None,
        *,
        responder: Responder | None = None,
    ) -> None:
        self.catalogue = dict(catalogue if catalogue is not None else declarative.catalogue())
        self.responder = responder
        self.requests: list[ProviderRequest] = []
        self._routes = {pid: _routes(spec) for pid, spec in self.catalogue.items()}
        self._queued: dict[tuple[str, str], deque[ProviderReply]] = {}
        self._lock = threading.Lock()
        super().__init__()

    # -- addresses ---------------------------------------------------------------------------

    def url(self, path: str = "/") -> str:
        return f"http://127.0.0.1:{self.port}{path if path.startswith('/') else '/' + path}"

    def base_url(self, provider: str) -> str:
        """What a connection's `base_url` is for `provider`'s calls to come here."""
        if provider not in self.catalogue:
            raise KeyError(f"{provider!r} is not catalogued (known: {sorted(self.catalogue)})")
        return self.url(f"/{provider}")

    # -- script and record -------------------------------------------------------------------

    def reply(self, provider: str, operation: str, *replies: ProviderReply | Any) -> None:
        """Queue answers for the next calls of `operation` (its id or an alias); a value that
        is not a ProviderReply is a JSON body answered with 200."""
        op = self._operation(provider, operation)
        with self._lock:
            queue = self._queued.setdefault((provider, op.id), deque())
            queue.extend(r if isinstance(r, ProviderReply) else ProviderReply(r) for r in replies)

    def requests_to(self, provider: str, operation: str | None = None) -> list[ProviderRequest]:
        """The recorded calls of `provider` (of one operation, by id or alias), in order."""
        op_id = self._operation(provider, operation).id if operation else None
        with self._lock:
            return [
                r
                for r in self.requests
                if r.provider == provider and (op_id is None or r.operation == op_id)
            ]

    def _operation(self, provider: str, operation: str) -> OperationSpec:
        spec = self.catalogue.get(provider)
        op = spec.operation(operation) if spec is not None else None
        if spec is None or op is None:
            raise KeyError(f"no catalogued operation {provider} {operation}")
        return op

    def _record(self, request: ProviderRequest) -> None:
        with self._lock:
            self.requests.append(request)

    def _next_queued(self, provider: str, operation: str) -> ProviderReply | None:
        with self._lock:
            queue = self._queued.get((provider, operation))
            return queue.popleft() if queue else None

    # -- routing and answers -----------------------------------------------------------------

    def route(
        self, provider: str, method: str, path: str, body: Any = None
    ) -> OperationSpec | None:
        """The operation a request goes to (see the module docstring), or None."""
        matches = [
            r
            for r in self._routes.get(provider, [])
            if r.operation.method == method and r.pattern.fullmatch(path)
        ]
        if not matches:
            return None
        sent = _key_paths(body)
        best = max(
            enumerate(matches),
            key=lambda item: (
                len(item[1].body_paths & sent),
                -len(item[1].body_paths - sent),
                item[1].literal_chars,
                -item[0],
            ),
        )
        return best[1].operation

    def respond(self, request: ProviderRequest) -> tuple[int, dict[str, str], Any]:
        """(status, headers, JSON body or None) for a routed request."""
        if request.operation is None:
            return (
                404,
                {},
                {
                    "error": {
                        "code": "not_found",
                        "message": f"fake providers: no {request.provider} operation answers "
                        f"{request.method} {request.path}",
                    }
                },
            )
        answer = self._next_queued(request.provider, request.operation)
        if answer is None and self.responder is not None:
            answer = self.responder(request)
        if answer is not None:
            return answer.status, dict(answer.headers), answer.body
        op = self._operation(request.provider, request.operation)
        return _example_answer(op, request)


def _routes(spec: ProviderSpec) -> list[_Route]:
    base_path = urlsplit(re.sub(r"\{[^}]*\}", "x", spec.base_url)).path.rstrip("/")
    routes = []
    for op in spec.operations:
        body_paths = _key_paths(op.body)
        patterns = [_template_pattern(op.path)]
        if op.example is not None:
            example = op.example.request.path.split("?", 1)[0]
            if example.startswith(base_path + "/"):
                patterns.append(re.escape(example[len(base_path) :]))
        for pattern in patterns:
            literal = len(re.sub(r"\[\^/\]\+|\.\+", "", pattern))
            routes.append(_Route(op, re.compile(pattern), literal, body_paths))
    return routes


def _key_paths(value: Any, prefix: str = "") -> frozenset[str]:
    """`{a: {b: 1}}` -> {a, a.b}: the fields of a JSON object (not into lists)."""
    if not isinstance(value, Mapping):
        return frozenset()
    paths: set[str] = set()
    for key, item in value.items():
        path = f"{prefix}{key}"
        paths.add(path)
        paths |= _key_paths(item, path + ".")
    return frozenset(paths)


def _template_pattern(template: str) -> str:
    """`/pages/{page_id}` -> a regex: a parameter is one segment; of the placeholders hooks
    fill, `:name` is one segment and a segment in capitals one or more."""
    parts = []
    for segment in template.split("/"):
        if _CAPITALS.fullmatch(segment):
            parts.append(".+")
            continue
        if _COLON_NAME.fullmatch(segment):
            parts.append("[^/]+")
            continue
        pieces = re.split(r"(\{[^}]+\})", segment)
        parts.append("".join("[^/]+" if p.startswith("{") else re.escape(p) for p in pieces))
    return "/".join(parts)


def _example_answer(op: OperationSpec, request: ProviderRequest) -> tuple[int, dict[str, str], Any]:
    """The operation's documented response, pagination ended after this page."""
    if op.example is None:
        return 200, {}, {}
    response = op.example.response
    headers = {k: v for k, v in response.headers.items() if k.lower() != "link"}
    body = json.loads(json.dumps(response.body))  # a copy the caller may not change
    pagination = op.pagination
    if pagination is not None and isinstance(body, dict):
        if pagination.cursor_path:
            _set(body, pagination.cursor_path, None)
        if pagination.has_more_path:
            _set(body, pagination.has_more_path, False)
        if pagination.style == "page":
            page = (request.query.get(pagination.page_param) or [str(pagination.first_page)])[0]
            if page != str(pagination.first_page):
                _set(body, pagination.items, [])
    return response.status, headers, body


def _set(data: dict[str, Any], path: str, value: Any) -> None:
    """Set `a.b.c` when its parent exists (a missing path stays missing)."""
    *parents, last = path.split(".")
    target: Any = data
    for part in parents:
        target = target.get(part) if isinstance(target, dict) else None
    if isinstance(target, dict) and last in target:
        target[last] = value


class _Handler(BaseHTTPRequestHandler):
    server_version = "FakeProviders/1.0"

    def _handle(self) -> None:
        owner: FakeProviderServer = self.server.owner  # type: ignore[attr-defined]
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY_BYTES:
            self._send(413, {}, {"error": {"message": f"body over {MAX_BODY_BYTES} bytes"}})
            return
        raw = self.rfile.read(length) if length else b""
        split = urlsplit(self.path)
        provider, _, rest = split.path.lstrip("/").partition("/")
        request = ProviderRequest(
            provider=provider,
            operation=None,
            method=self.command,
            path="/" + rest,
            query=parse_qs(split.query, keep_blank_values=True),
            headers={k.lower(): v for k, v in self.headers.items()},
            body=raw,
        )
        op = owner.route(provider, self.command, request.path, request.json)
        if op is not None:
            request = ProviderRequest(**{**request.__dict__, "operation": op.id})
        owner._record(request)
        try:
            status, headers, payload = owner.respond(request)
        except Exception as exc:  # noqa: BLE001 - a responder bug shows as a 500 the test sees
            status, headers, payload = 500, {}, {"error": {"message": f"fake providers: {exc}"}}
        self._send(status, headers, payload)

    def _send(self, status: int, headers: Mapping[str, str], payload: Any) -> None:
        data = b"" if payload is None else json.dumps(payload).encode()
        try:
            self.send_response(status)
            if payload is not None:
                self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for name, value in headers.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (a timeout test)

    do_GET = _handle
    do_POST = _handle
    do_PUT = _handle
    do_PATCH = _handle
    do_DELETE = _handle

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: tests read `requests`, not the log."""


def operations_of(requests: Iterable[ProviderRequest]) -> list[tuple[str, str | None]]:
    """(provider, operation) of each request, in order: what a workflow called."""
    return [(r.provider, r.operation) for r in requests]


__all__ = [
    "MAX_BODY_BYTES",
    "FakeProviderServer",
    "ProviderReply",
    "ProviderRequest",
    "Responder",
    "operations_of",
]


FakeProviderServer.handler = _Handler
