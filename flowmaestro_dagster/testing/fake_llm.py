"""A small OpenAI-compatible HTTP server for tests: real sockets, scripted replies.

No LLM service is reachable in tests, so the LLM and router nodes are exercised through the
real `openai` SDK against this server instead of a mock of our own code::

    with FakeLLMServer(["Paris"]) as llm:
        result = run_workflow(definition, inputs, settings=llm.settings())
        assert llm.chat_requests[0].prompt == "Capital of France?"

Replies come from a queue (`FakeReply` or plain text, first in first out), then from an
optional `responder(request)` function, then a default text. Every request is recorded.
`FakeReply.rate_limited(retry_after=...)` answers 429 with `Retry-After`;
`FakeReply.error(500)` any error status; `delay_s` holds the answer back (timeouts).
Endpoints: `POST /v1/chat/completions`, `POST /v1/embeddings`, `GET /v1/models`.
"""

import base64
import hashlib
import json
import struct
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any, ClassVar

from pydantic import SecretStr

from flowmaestro_dagster.settings import LLMProvider, LLMSettings, Settings
from flowmaestro_dagster.testing.local_server import LocalHTTPServer

API_KEY = "fake-llm-key"


@dataclass(frozen=True)
class FakeReply:
    """One scripted answer: a completion text, or an error status with headers."""

    text: str = "ok"
    status: int = 200
    headers: Mapping[str, str] = field(default_factory=dict)
    body: Any = None  # a JSON body sent as is (overrides text / the error body)
    delay_s: float = 0.0
    model: str | None = None
    finish_reason: str = "stop"

    @classmethod
    def error(
        cls,
        status: int,
        message: str | None = None,
        *,
        retry_after: str | float | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> "FakeReply":
        merged = dict(headers or {})
        if retry_after is not None:
            merged["Retry-After"] = str(retry_after)
        body = {
            "error": {
                "message": message or f"fake error {status}",
                "type": "rate_limit_error" if status == 429 else "fake_error",
                "code": status,
            }
        }
        return cls(status=status, headers=merged, body=body)

    @classmethod
    def rate_limited(cls, retry_after: str | float | None = 1) -> "FakeReply":
        return cls.error(429, "Rate limit reached", retry_after=retry_after)


@dataclass(frozen=True)
class RecordedRequest:
    """A request the server received (headers with lower-case names, body parsed as JSON)."""

    method: str
    path: str
    headers: Mapping[str, str]
    body: Any
    raw: bytes

    @property
    def model(self) -> str | None:
        return self.body.get("model") if isinstance(self.body, dict) else None

    @property
    def messages(self) -> list[dict[str, Any]]:
        messages = self.body.get("messages") if isinstance(self.body, dict) else None
        return list(messages) if isinstance(messages, list) else []

    @property
    def temperature(self) -> float | None:
        return self.body.get("temperature") if isinstance(self.body, dict) else None

    @property
    def max_tokens(self) -> int | None:
        if not isinstance(self.body, dict):
            return None
        value = self.body.get("max_tokens", self.body.get("max_completion_tokens"))
        return int(value) if value is not None else None

    def _text_of(self, role: str) -> str | None:
        texts = [_content_text(m.get("content")) for m in self.messages if m.get("role") == role]
        return texts[-1] if texts else None

    @property
    def prompt(self) -> str | None:
        """The last user message's text."""
        return self._text_of("user")

    @property
    def system(self) -> str | None:
        """The system message's text."""
        return self._text_of("system")


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # multi-part content (vision): the text parts
        return "\n".join(
            str(part.get("text", "")) for part in content if isinstance(part, dict)
        ).strip()
    return "" if content is None else str(content)


Responder = Callable[[RecordedRequest], "FakeReply | str | None"]


class OpenAICompatibleServer(LocalHTTPServer):
    """A fake speaking the OpenAI API under `/v1`, and the providers and settings that point
    the nodes at it (what FakeLLMServer and FakeMediaServer share); `api_key` is the key they
    send."""

    api_key: ClassVar[str] = API_KEY

    @property
    def url(self) -> str:
        """The OpenAI-compatible base URL (`.../v1`)."""
        return f"http://127.0.0.1:{self.port}/v1"

    def provider(self, **overrides: Any) -> LLMProvider:
        values: dict[str, Any] = {"base_url": self.url, "api_key": SecretStr(self.api_key)}
        values.update(overrides)
        return LLMProvider(**values)

    def settings(self, *names: str, base: Settings | None = None, **overrides: Any) -> Settings:
        """Settings whose providers `names` (default: openai) all point at this server."""
        providers = {name: self.provider(**overrides) for name in (names or ("openai",))}
        base = base or Settings()
        return base.model_copy(update={"llm": LLMSettings(providers=providers)})


class FakeLLMServer(OpenAICompatibleServer):
    """An OpenAI-compatible endpoint on 127.0.0.1 (a free port), served from a thread."""

    name = "fake LLM server"

    def __init__(
        self,
        replies: Iterable[FakeReply | str] = (),
        *,
        responder: Responder | None = None,
        default: str = "ok",
        model: str = "fake-model",
    ) -> None:
        self._queue: deque[FakeReply] = deque(_as_reply(r) for r in replies)
        self.responder = responder
        self.default = default
        self.model = model
        self.requests: list[RecordedRequest] = []
        self._lock = threading.Lock()
        super().__init__()

    # -- script and record ---------------------------------------------------------------------

    def enqueue(self, *replies: FakeReply | str) -> None:
        with self._lock:
            self._queue.extend(_as_reply(r) for r in replies)

    @property
    def chat_requests(self) -> list[RecordedRequest]:
        with self._lock:
            return [r for r in self.requests if r.path.endswith("/chat/completions")]

    def _record(self, request: RecordedRequest) -> None:
        with self._lock:
            self.requests.append(request)

    def _next_reply(self, request: RecordedRequest) -> FakeReply:
        with self._lock:
            if self._queue:
                return self._queue.popleft()
        if self.responder is not None:
            answer = self.responder(request)
            if answer is not None:
                return _as_reply(answer)
        return FakeReply(self.default)

    def _wait(self, seconds: float) -> None:
        if seconds > 0:
            self.closing.wait(seconds)

    # -- responses -----------------------------------------------------------------------------

    def _chat_body(self, request: RecordedRequest, reply: FakeReply) -> dict[str, Any]:
        prompt_tokens = sum(len(_content_text(m.get("content")).split()) for m in request.messages)
        completion_tokens = len(reply.text.split())
        return {
            "id": f"chatcmpl-fake-{len(self.requests)}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": reply.model or request.model or self.model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": reply.text},
                    "finish_reason": reply.finish_reason,
                }
            ],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
        }

    def _embeddings_body(self, request: RecordedRequest) -> dict[str, Any]:
        body = request.body if isinstance(request.body, dict) else {}
        inputs = body.get("input", "")
        texts = inputs if isinstance(inputs, list) else [inputs]
        as_base64 = body.get("encoding_format") == "base64"  # what the openai SDK asks for
        data = []
        for index, text in enumerate(texts):
            vector = fake_embedding(str(text))
            encoded: Any = vector
            if as_base64:
                encoded = base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
            data.append({"object": "embedding", "index": index, "embedding": encoded})
        tokens = sum(len(str(t).split()) for t in texts)
        return {
            "object": "list",
            "data": data,
            "model": request.model or self.model,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }

    def respond(self, request: RecordedRequest) -> tuple[int, dict[str, str], Any]:
        """(status, headers, JSON body) for a request; used by the handler thread."""
        path = request.path.split("?", 1)[0].rstrip("/")
        if request.method == "GET" and path.endswith("/models"):
            return 200, {}, {"object": "list", "data": [{"id": self.model, "object": "model"}]}
        if request.method != "POST" or not (
            path.endswith("/chat/completions") or path.endswith("/embeddings")
        ):
            return 404, {}, {"error": {"message": f"no route {request.method} {path}"}}
        self._record(request)
        reply = self._next_reply(request)
        self._wait(reply.delay_s)
        if reply.body is not None:
            return reply.status, dict(reply.headers), reply.body
        if reply.status >= 400:
            return reply.status, dict(reply.headers), FakeReply.error(reply.status).body
        if path.endswith("/embeddings"):
            return reply.status, dict(reply.headers), self._embeddings_body(request)
        return reply.status, dict(reply.headers), self._chat_body(request, reply)


def fake_embedding(text: str, dimensions: int = 8) -> list[float]:
    """A deterministic vector of a text (equal texts, equal vectors).

    Multiples of 1/256 survive the float32 round trip of `encoding_format: base64` exactly.
    """
    digest = hashlib.sha256(text.encode()).digest()
    return [b / 256 for b in digest[:dimensions]]


def _as_reply(reply: FakeReply | str) -> FakeReply:
    return reply if isinstance(reply, FakeReply) else FakeReply(text=reply)


class _Handler(BaseHTTPRequestHandler):
    server_version = "FakeLLM/1.0"

    def _handle(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
        request = RecordedRequest(
            method=self.command,
            path=self.path,
            headers={k.lower(): v for k, v in self.headers.items()},
            body=body,
            raw=raw,
        )
        fake: FakeLLMServer = self.server.owner  # type: ignore[attr-defined]
        try:
            status, headers, payload = fake.respond(request)
        except Exception as exc:  # noqa: BLE001 - a responder bug shows as a 500 the test sees
            status, headers, payload = 500, {}, {"error": {"message": f"fake server: {exc}"}}
        data = json.dumps(payload).encode()
        try:
            self.send_response(status)
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

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: tests read `requests`, not the log."""


__all__ = ["API_KEY", "FakeLLMServer", "FakeReply", "RecordedRequest", "fake_embedding"]


FakeLLMServer.handler = _Handler
