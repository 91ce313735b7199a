"""A threaded HTTP server on a free loopback port, for the fakes tests talk to."""

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import ClassVar, Self


class LocalHTTPServer:
    """Starts `handler` on 127.0.0.1:<free port> in a daemon thread; handlers reach this object
    as `self.server.owner`. `closing` is set on close, so slow replies stop waiting."""

    handler: ClassVar[type[BaseHTTPRequestHandler]]
    name: ClassVar[str] = "server"

    def __init__(self) -> None:
        self.closing = threading.Event()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> Self:
        if self._server is None:
            server = ThreadingHTTPServer(("127.0.0.1", 0), self.handler)
            server.daemon_threads = True
            server.owner = self  # type: ignore[attr-defined]
            self._server = server
            self._thread = threading.Thread(
                target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
            )
            self._thread.start()
        return self

    def close(self) -> None:
        self.closing.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = None
        self._thread = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError(f"the {self.name} is not running (use it as a context manager)")
        return int(self._server.server_address[1])
