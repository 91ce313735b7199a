"""A fake OpenAI-compatible media API for tests and benchmarks: real sockets, scripted answers.

The generative media nodes (audioTranscription, audioOutput / audio, imageGeneration,
videoGeneration) call the real `openai` SDK; this server stands in for the provider and
records every request, multipart uploads parsed into fields and files::

    with FakeMediaServer() as media:
        media.speech_audio = b"ID3..."  # what /audio/speech answers
        result = execute(ctx_with(media.settings()))
        [request] = media.requests_to("/audio/speech")
        assert request.json["voice"] == "nova"

Endpoints (under `/v1`): `POST /audio/transcriptions`, `POST /audio/translations`,
`POST /audio/speech`, `POST /images/generations`, `POST /images/edits`,
`POST /images/variations`, `POST /videos`, `GET /videos/{id}`, `GET /videos/{id}/content`;
and `GET /files/{name}` (outside `/v1`) serves `files[name]`, for image URLs.
`fail(path_suffix, status, message)` scripts an error answer for the next request to a path;
`video_statuses` scripts what successive `GET /videos/{id}` answer.

One provider often serves chat and media alike (`provider: openai` on an llm node and on an
audio node): `FakeMediaServer(chat=FakeLLMServer(...))` answers `/chat/completions`,
`/embeddings` and `/models` from that server's script, which records them in its own
`requests` (it need not be started itself).
"""

import base64
import email.parser
import email.policy
import hashlib
import json
import threading
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any

from flowmaestro_dagster.testing.fake_llm import (
    FakeLLMServer,
    OpenAICompatibleServer,
    RecordedRequest,
)

API_KEY = "fake-media-key"
# The smallest valid PNG (1x1, transparent): what generated images are unless set otherwise.
TINY_PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg=="
)
# The first box of an MP4 file (`ftyp`), padded: enough for content sniffing.
TINY_MP4 = b"\x00\x00\x00\x18ftypmp42\x00\x00\x00\x00mp42isom" + b"\x00" * 1000
# What a composed chat server (`chat=`) answers: the OpenAI-compatible LLM routes.
CHAT_ROUTES = ("/chat/completions", "/embeddings", "/models")


@dataclass(frozen=True)
class UploadedFile:
    """A file part of a multipart request."""

    field: str
    filename: str
    content_type: str
    data: bytes

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()


@dataclass(frozen=True)
class MediaRequest:
    """A request the server received: JSON body, or multipart fields and files."""

    method: str
    path: str
    headers: Mapping[str, str]
    json: Any = None
    fields: Mapping[str, str] = field(default_factory=dict)
    files: tuple[UploadedFile, ...] = ()
    size: int = 0

    @property
    def route(self) -> str:
        """The path after `/v1`, without a query: `/audio/speech`."""
        return self.path.split("?", 1)[0].removeprefix("/v1")

    def file(self, name: str) -> UploadedFile:
        return next(f for f in self.files if f.field == name)


@dataclass(frozen=True)
class _Failure:
    status: int
    message: str
    headers: Mapping[str, str]


class FakeMediaServer(OpenAICompatibleServer):
    """An OpenAI-compatible media endpoint on 127.0.0.1 (a free port), served from a thread."""

    name = "fake media server"
    api_key = API_KEY

    def __init__(self, *, keep_uploads: bool = True, chat: FakeLLMServer | None = None) -> None:
        super().__init__()
        self.keep_uploads = keep_uploads  # False: record sizes and digests only (benchmarks)
        self.chat = chat  # answers the chat routes (CHAT_ROUTES), records them too
        self.requests: list[MediaRequest] = []
        self.transcript = "hello from the fake transcriber"
        self.language = "english"
        self.duration = 3.5
        self.speech_audio = b"ID3\x04\x00\x00\x00\x00\x00\x00" + bytes(range(256)) * 64
        self.images: list[bytes] = [TINY_PNG]
        self.image_as_url = False  # answer image requests with URLs under /files/
        self.revised_prompt: str | None = "a revised prompt"
        self.files: dict[str, bytes] = {}
        self.video_statuses: deque[str] = deque()
        self.video_content = TINY_MP4
        self.video_error: str | None = None
        self._failures: dict[str, deque[_Failure]] = {}
        self._lock = threading.Lock()
        self._videos = 0

    # -- script and record ---------------------------------------------------------------------

    def fail(
        self, route: str, status: int, message: str, headers: Mapping[str, str] | None = None
    ) -> None:
        """The next request to `route` (`/audio/speech`) answers `status` with `message`."""
        with self._lock:
            self._failures.setdefault(route, deque()).append(
                _Failure(status, message, dict(headers or {}))
            )

    def requests_to(self, route: str) -> list[MediaRequest]:
        with self._lock:
            return [r for r in self.requests if r.route == route]

    def _record(self, request: MediaRequest) -> None:
        with self._lock:
            self.requests.append(request)

    def _failure(self, route: str) -> _Failure | None:
        with self._lock:
            for prefix, queue in self._failures.items():
                matches = route == prefix or (
                    prefix.endswith("*") and route.startswith(prefix[:-1])
                )
                if matches and queue:
                    return queue.popleft()
        return None

    # -- answers -------------------------------------------------------------------------------

    def respond(self, request: MediaRequest) -> tuple[int, dict[str, str], bytes]:
        route = request.route
        if request.method == "GET" and request.path.startswith("/files/"):
            data = self.files.get(request.path.split("?", 1)[0].removeprefix("/files/"))
            if data is None:
                return _json(404, {"error": {"message": "no such file"}})
            return 200, {"Content-Type": "application/octet-stream"}, data
        if self.chat is not None and route.rstrip("/").endswith(CHAT_ROUTES):
            return self._chat(request)
        self._record(request)
        failure = self._failure(route)
        if failure is not None:
            body = {"error": {"message": failure.message, "type": "fake_error"}}
            status, headers, data = _json(failure.status, body)
            return status, {**headers, **failure.headers}, data
        if route in ("/audio/transcriptions", "/audio/translations"):
            return self._transcription(request)
        if route == "/audio/speech":
            return 200, {"Content-Type": "audio/mpeg"}, self.speech_audio
        if route in ("/images/generations", "/images/edits", "/images/variations"):
            return self._images(request)
        if route == "/videos" and request.method == "POST":
            return self._video_created(request)
        if route.startswith("/videos/") and route.endswith("/content"):
            return 200, {"Content-Type": "video/mp4"}, self.video_content
        if route.startswith("/videos/") and request.method == "GET":
            return self._video_status(route.removeprefix("/videos/"))
        return _json(404, {"error": {"message": f"no route {request.method} {route}"}})

    def _chat(self, request: MediaRequest) -> tuple[int, dict[str, str], bytes]:
        """The composed chat server's answer (it records the request in its own list)."""
        assert self.chat is not None
        raw = json.dumps(request.json).encode() if request.json is not None else b""
        recorded = RecordedRequest(request.method, request.path, request.headers, request.json, raw)
        status, headers, payload = self.chat.respond(recorded)
        return status, {"Content-Type": "application/json", **headers}, json.dumps(payload).encode()

    def _transcription(self, request: MediaRequest) -> tuple[int, dict[str, str], bytes]:
        kind = request.fields.get("response_format", "json")
        if kind in ("text", "srt", "vtt"):
            text = self.transcript
            if kind != "text":
                text = f"1\n00:00:00,000 --> 00:00:03,500\n{self.transcript}\n"
            return 200, {"Content-Type": "text/plain"}, text.encode()
        body: dict[str, Any] = {"text": self.transcript}
        if kind == "verbose_json":
            body.update(
                task="translate" if request.route.endswith("translations") else "transcribe",
                language=self.language,
                duration=self.duration,
                segments=[
                    {
                        "id": 0,
                        "seek": 0,
                        "start": 0.0,
                        "end": self.duration,
                        "text": self.transcript,
                        "tokens": [1, 2, 3],
                        "temperature": 0.0,
                        "avg_logprob": -0.1,
                        "compression_ratio": 1.0,
                        "no_speech_prob": 0.01,
                    }
                ],
            )
        return _json(200, body)

    def _images(self, request: MediaRequest) -> tuple[int, dict[str, str], bytes]:
        params = request.json if isinstance(request.json, dict) else dict(request.fields)
        count = int(params.get("n") or 1)
        data = []
        for index in range(count):
            image = self.images[index % len(self.images)]
            item: dict[str, Any] = {}
            if self.image_as_url:
                name = f"image-{len(self.requests)}-{index}.png"
                self.files[name] = image
                item["url"] = f"http://127.0.0.1:{self.port}/files/{name}"
            else:
                item["b64_json"] = base64.b64encode(image).decode()
            if self.revised_prompt is not None:
                item["revised_prompt"] = self.revised_prompt
            data.append(item)
        return _json(200, {"created": int(time.time()), "data": data})

    def _video(self, video_id: str, status: str) -> dict[str, Any]:
        body: dict[str, Any] = {
            "id": video_id,
            "object": "video",
            "created_at": int(time.time()),
            "model": "sora-2",
            "progress": 100 if status == "completed" else 40,
            "seconds": "8",
            "size": "1280x720",
            "status": status,
        }
        if status == "completed":
            body["completed_at"] = int(time.time())
        if status == "failed":
            body["error"] = {"code": "moderation", "message": self.video_error or "it failed"}
        return body

    def _video_created(self, request: MediaRequest) -> tuple[int, dict[str, str], bytes]:
        with self._lock:
            self._videos += 1
            video_id = f"video_{self._videos}"
        return _json(200, self._video(video_id, "queued"))

    def _video_status(self, video_id: str) -> tuple[int, dict[str, str], bytes]:
        with self._lock:
            status = self.video_statuses.popleft() if self.video_statuses else "completed"
        return _json(200, self._video(video_id, status))


def _json(status: int, body: Any) -> tuple[int, dict[str, str], bytes]:
    return status, {"Content-Type": "application/json"}, json.dumps(body).encode()


def parse_multipart(
    content_type: str, body: bytes, keep: bool = True
) -> tuple[dict[str, str], list[UploadedFile]]:
    """Fields and files of a multipart/form-data body (the stdlib's MIME parser)."""
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        f"Content-Type: {content_type}\r\n\r\n".encode() + body
    )
    fields: dict[str, str] = {}  # and `<file field>.size` / `.sha256` per file
    files: list[UploadedFile] = []
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        filename = part.get_filename()
        payload = part.get_payload(decode=True)
        data = payload if isinstance(payload, bytes) else b""
        if filename is not None:
            files.append(
                UploadedFile(str(name), filename, part.get_content_type(), data if keep else b"")
            )
            fields[f"{name}.size"] = str(len(data))
            fields[f"{name}.sha256"] = hashlib.sha256(data).hexdigest()
        else:
            fields[str(name)] = data.decode()
    return fields, files


class _Handler(BaseHTTPRequestHandler):
    server_version = "FakeMedia/1.0"
    protocol_version = "HTTP/1.1"

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().strip().split(b";")[0], 16)
                if size == 0:
                    self.rfile.readline()
                    break
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            return b"".join(chunks)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _handle(self) -> None:
        fake: FakeMediaServer = self.server.owner  # type: ignore[attr-defined]
        raw = self._body()
        content_type = self.headers.get("Content-Type", "")
        body: Any = None
        fields: dict[str, str] = {}
        files: list[UploadedFile] = []
        if content_type.startswith("multipart/form-data"):
            fields, files = parse_multipart(content_type, raw, fake.keep_uploads)
        elif raw:
            try:
                body = json.loads(raw)
            except ValueError:
                body = None
        request = MediaRequest(
            method=self.command,
            path=self.path,
            headers={k.lower(): v for k, v in self.headers.items()},
            json=body,
            fields=fields,
            files=tuple(files),
            size=len(raw),
        )
        del raw
        try:
            status, headers, data = fake.respond(request)
        except Exception as exc:  # noqa: BLE001 - a fake's bug shows as a 500 the test sees
            status, headers, data = _json(500, {"error": {"message": f"fake server: {exc}"}})
        try:
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            pass

    do_GET = _handle
    do_POST = _handle

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: tests read `requests`, not the log."""


FakeMediaServer.handler = _Handler

__all__ = [
    "API_KEY",
    "CHAT_ROUTES",
    "TINY_MP4",
    "TINY_PNG",
    "FakeMediaServer",
    "MediaRequest",
    "UploadedFile",
    "parse_multipart",
]
