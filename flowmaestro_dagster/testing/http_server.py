"""A small threaded HTTP server for tests of outbound HTTP (http node, webhook connectors).

Real sockets on 127.0.0.1 (a free port), served from a thread, used as a context manager::

    with EchoServer() as server:
        url = server.url("/anything?x=1")

Every request is recorded (`server.requests`). Paths:

* anything else: 200 and a JSON echo `{method, path, query, headers, body, json, form}`
* `/status/<code>`: that status with the echo as body (`?retry_after=5` adds `Retry-After`)
* `/delay/<seconds>`: the echo after a delay (cut short when the server closes)
* `/redirect?to=<url>&status=302`: a redirect to `to`
* `/text?body=<text>`: a `text/plain` body; `/bytes/<n>`: n bytes of octet-stream
* `/drip/<n>`: n bytes, one every 0.1 s (a server that trickles)
"""

import json
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import parse_qs, urlsplit

from flowmaestro_dagster.testing.local_server import LocalHTTPServer

MAX_DELAY_S = 30.0
DRIP_INTERVAL_S = 0.1


@dataclass(frozen=True)
class EchoRequest:
    """A request the server received (header names in lower case)."""

    method: str
    path: str
    query: Mapping[str, list[str]]
    headers: Mapping[str, str]
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", errors="replace")


class EchoServer(LocalHTTPServer):
    """An HTTP server that echoes requests and answers chosen statuses, delays and redirects."""

    name = "echo server"

    def __init__(self) -> None:
        self.requests: list[EchoRequest] = []
        self._lock = threading.Lock()
        super().__init__()

    def url(self, path: str = "/", host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}{path if path.startswith('/') else '/' + path}"

    def _record(self, request: EchoRequest) -> None:
        with self._lock:
            self.requests.append(request)

    def respond(self, request: EchoRequest) -> tuple[int, dict[str, str], bytes | Iterator[bytes]]:
        """(status, headers, body) for a request; a body may be chunks sent one by one."""
        parts = [p for p in request.path.split("/") if p]
        echo = _echo(request)
        json_type = {"Content-Type": "application/json"}
        if len(parts) == 2 and parts[0] == "status" and parts[1].isdigit():
            headers = dict(json_type)
            if request.query.get("retry_after"):
                headers["Retry-After"] = request.query["retry_after"][0]
            return int(parts[1]), headers, json.dumps(echo).encode()
        if len(parts) == 2 and parts[0] == "delay":
            self.closing.wait(min(float(parts[1]), MAX_DELAY_S))
            return 200, json_type, json.dumps(echo).encode()
        if parts == ["redirect"]:
            status = int(request.query.get("status", ["302"])[0])
            return status, {"Location": request.query.get("to", ["/"])[0]}, b""
        if parts == ["text"]:
            body = request.query.get("body", ["hello"])[0].encode()
            return 200, {"Content-Type": "text/plain; charset=utf-8"}, body
        if len(parts) == 2 and parts[0] == "bytes" and parts[1].isdigit():
            return 200, {"Content-Type": "application/octet-stream"}, b"x" * int(parts[1])
        if len(parts) == 2 and parts[0] == "drip" and parts[1].isdigit():
            count = int(parts[1])
            headers = {"Content-Type": "text/plain", "Content-Length": str(count)}
            return 200, headers, self._drip(count)
        return 200, json_type, json.dumps(echo).encode()

    def _drip(self, count: int) -> Iterator[bytes]:
        for _ in range(count):
            if self.closing.wait(DRIP_INTERVAL_S):
                return
            yield b"x"


def _echo(request: EchoRequest) -> dict[str, Any]:
    content_type = request.headers.get("content-type", "")
    parsed_json: Any = None
    form: dict[str, Any] | None = None
    if "json" in content_type:
        try:
            parsed_json = json.loads(request.body or b"null")
        except ValueError:
            parsed_json = None
    if "x-www-form-urlencoded" in content_type:
        form = {k: v if len(v) > 1 else v[0] for k, v in parse_qs(request.text).items()}
    return {
        "method": request.method,
        "path": request.path,
        "query": {k: v if len(v) > 1 else v[0] for k, v in request.query.items()},
        "headers": dict(request.headers),
        "body": request.text,
        "json": parsed_json,
        "form": form,
    }


class _EchoHandler(BaseHTTPRequestHandler):
    server_version = "EchoServer/1.0"

    def _handle(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        split = urlsplit(self.path)
        request = EchoRequest(
            method=self.command,
            path=split.path,
            query=parse_qs(split.query, keep_blank_values=True),
            headers={k.lower(): v for k, v in self.headers.items()},
            body=body,
        )
        echo: EchoServer = self.server.owner  # type: ignore[attr-defined]
        echo._record(request)
        try:
            status, headers, payload = echo.respond(request)
        except Exception as exc:  # noqa: BLE001 - a bad test path shows as a 500 with the reason
            status, headers, payload = 500, {}, str(exc).encode()
        try:
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            if isinstance(payload, bytes):
                self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            if self.command == "HEAD":
                return
            for chunk in [payload] if isinstance(payload, bytes) else payload:
                self.wfile.write(chunk)
                self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (a timeout test)

    do_GET = _handle
    do_POST = _handle
    do_PUT = _handle
    do_PATCH = _handle
    do_DELETE = _handle
    do_HEAD = _handle
    do_OPTIONS = _handle

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: tests read `requests`, not the log."""


__all__ = ["EchoRequest", "EchoServer"]


EchoServer.handler = _EchoHandler
