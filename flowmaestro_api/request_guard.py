"""The request guard: every body bounded while it streams, JSON bodies read strictly.

Outermost in the app (`create_app` adds it), before anything reads a body: a declared length
over the limit is refused unread, any other body is counted as it arrives (chunked too), and a
JSON body that nests too deep, holds NaN/Infinity, or holds text no database can store (a NUL
character, a lone UTF-16 surrogate) is refused with a 422 naming where (docs/security.md).
"""

import json
import math
import re
from collections.abc import Sequence
from email.message import Message as MediaType
from typing import Any, NoReturn

from anyio import to_thread
from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from flowmaestro_api.errors import (
    InvalidText,
    JsonTooDeep,
    NonFiniteNumber,
    PayloadTooLarge,
    PlatformError,
    render,
)

MAX_JSON_DEPTH = 64  # workflow definitions nest ~10 deep; Python's parser overflows near 1000
# A body up to this size is checked on the event loop (tens of microseconds); a larger one, up to
# FLOWMAESTRO_MAX_REQUEST_BYTES (milliseconds of parsing), on a request thread, so it does not
# hold up every other request of the process meanwhile.
PARSE_ON_LOOP_BYTES = 64 * 1024


# -- request bodies: bounded while they stream, JSON read strictly -------------------------------


class _BodyRefused(Exception):
    """Raised into the app by `receive` when the guard refuses the body (its answer is sent)."""


class RequestBodyGuard:
    """Pure ASGI, outermost: the body limit and the JSON rules, before anything reads a body.

    A declared `Content-Length` over the limit is refused unread. Otherwise `receive` counts
    what arrives (chunked bodies too) and answers 413 the moment the total passes the limit;
    the app's read then fails and whatever it answers is dropped. A JSON body (by its content
    type, as FastAPI decides) reaches the app in one message, read when the app first asks for
    it (a route that answers before reading, like a rate-limited webhook, reads nothing) and
    refused (422) when it nests deeper than `MAX_JSON_DEPTH` or holds NaN/Infinity: Python's
    json reads both, and no database column or Dagster run config can hold them. Malformed JSON
    passes: the route answers it (errors.py names line and column; webhooks record it).
    `larger` lets named routes take more (a file upload: FLOWMAESTRO_FILES__MAX_UPLOAD_MB),
    counted the same way.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        limit: int,
        max_depth: int = MAX_JSON_DEPTH,
        larger: Sequence[tuple[str, str, int]] = (),
    ) -> None:
        self.app = app
        self.limit = limit
        self.max_depth = max_depth
        # (method, path pattern, limit): routes that take larger bodies (file uploads)
        self.larger = [(m.upper(), re.compile(p), n) for m, p, n in larger]

    def limit_for(self, scope: Scope) -> int:
        """The body limit of a request: a larger route's own, else the global one."""
        for method, pattern, limit in self.larger:
            if scope.get("method") == method and pattern.fullmatch(scope.get("path", "")):
                return max(limit, self.limit)
        return self.limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        limit = self.limit_for(scope)
        declared = headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            await self._answer(scope, send, self._too_large(limit))
            return
        received = 0
        started = cut = answered = delivered = False

        async def refuse(error: PlatformError) -> NoReturn:
            nonlocal cut, answered
            cut = True
            if not started and not answered:
                answered = True
                await self._answer(scope, send, error)
            raise _BodyRefused(error.detail)

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    await refuse(self._too_large(limit))
            return message

        async def whole_json() -> Message:
            nonlocal delivered
            if delivered:
                return await counted()  # after the body: the disconnect, when it comes
            chunks: list[bytes] = []
            while True:
                message = await counted()
                if message["type"] != "http.request":
                    return message  # the client went away
                chunks.append(message.get("body", b""))
                if not message.get("more_body", False):
                    break
            body = b"".join(chunks)
            error = (
                json_body_error(body, self.max_depth)
                if len(body) <= PARSE_ON_LOOP_BYTES
                else await to_thread.run_sync(json_body_error, body, self.max_depth)
            )
            if error is not None:
                await refuse(error)
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}

        async def guarded(message: Message) -> None:
            nonlocal started
            if answered:
                return  # the guard answered; what the app says to its failed read is dropped
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        reader = whole_json if is_json(headers.get("content-type")) else counted
        try:
            await self.app(scope, reader, guarded)
        except Exception:
            if not cut:
                raise
            # the app failed because the guard cut its body off (and answered, unless it had)

    def _too_large(self, limit: int | None = None) -> PayloadTooLarge:
        return PayloadTooLarge(f"the request body is larger than {limit or self.limit} bytes")

    async def _answer(self, scope: Scope, send: Send, error: PlatformError) -> None:
        await render(error, Request(scope))(scope, _nothing_to_receive, send)


async def _nothing_to_receive() -> Message:
    return {"type": "http.disconnect"}


def is_json(content_type: str | None) -> bool:
    """FastAPI's rule: application/json or application/*+json (parameters ignored)."""
    if not content_type:
        return False
    media = MediaType()
    media["content-type"] = content_type
    subtype = media.get_content_subtype()
    return media.get_content_maintype() == "application" and (
        subtype == "json" or subtype.endswith("+json")
    )


class _NonFinite(str):
    """A number literal that is not a finite float (`NaN`, `-Infinity`, `1e999`), as written."""


class _NonFiniteFound(Exception):
    """Stops the strict parse at the first non-finite number."""


def _finite(literal: str) -> float:
    value = float(literal)
    if not math.isfinite(value):
        raise _NonFiniteFound
    return value


def _refuse_constant(literal: str) -> float:
    raise _NonFiniteFound


def _marked(literal: str) -> float | _NonFinite:
    value = float(literal)
    return value if math.isfinite(value) else _NonFinite(literal)


# Made once: json.loads with hooks builds a decoder per call (it would double the cost of a
# small body). The hooks fire only on NaN/Infinity and float literals.
_STRICT = json.JSONDecoder(parse_constant=_refuse_constant, parse_float=_finite)
_MARKING = json.JSONDecoder(parse_constant=_NonFinite, parse_float=_marked)


# Text no PostgreSQL column can hold (NUL) and that no UTF-8 encoder can write (a lone UTF-16
# surrogate, which JSON's `\ud800` escape can spell): stored it is a 500, echoed in an error it
# breaks the answer.
_BAD_TEXT = re.compile("[\x00\ud800-\udfff]")
_BAD_ESCAPE = re.compile(r"\\u(?:0000|[dD][89a-fA-F][0-9a-fA-F]{2})")


def printable(key: str | int) -> str:
    """A path part safe to put in an answer: lone surrogates and NUL escaped."""
    return _BAD_TEXT.sub(lambda m: f"\\u{ord(m.group()):04x}", str(key))


def json_body_error(body: bytes, max_depth: int) -> PlatformError | None:
    """Why a JSON body is refused (too deep, a non-finite number), or None.

    One C-speed parse, decoded as `json.loads` decodes bytes (UTF-8, -16 or -32). The tree is
    walked only when it may be too deep (more brackets than `max_depth`) or, on a second parse
    that marks them, to name where a non-finite number is. A body that is not JSON at all is
    the route's to answer (None here).
    """
    decoder = _STRICT
    while True:
        try:
            text = body.decode(json.detect_encoding(body), "surrogatepass")
            value = decoder.decode(text)
        except _NonFiniteFound:
            decoder = _MARKING  # parse again, to say where
            continue
        except RecursionError:
            return _too_deep(max_depth)
        except ValueError:
            return None  # malformed, or not text: the route says so
        break
    suspicious = _BAD_ESCAPE.search(text) is not None or _BAD_TEXT.search(text) is not None
    if decoder is _STRICT and not suspicious and body.count(b"[") + body.count(b"{") <= max_depth:
        return None
    return _refusal(value, max_depth)


def _refusal(value: Any, max_depth: int) -> PlatformError | None:
    """The first refused place in document order (depth-first, iterative)."""
    stack: list[tuple[Any, tuple[str | int, ...]]] = [(value, ())]
    while stack:
        item, path = stack.pop()
        if isinstance(item, str) and not isinstance(item, _NonFinite):
            field = ".".join(printable(p) for p in path)
            message = "text holds a NUL character or a lone UTF-16 surrogate (\\ud800-\\udfff)"
            where = f"{field}: " if field else ""
            return InvalidText(
                f"{where}{message}",
                problems=[{"code": "invalid_text", "field": field, "message": message}],
            )
        if isinstance(item, _NonFinite):
            field = ".".join(printable(p) for p in path)
            message = f"{item} is not a finite number: JSON numbers must be finite"
            where = f"{field}: " if field else ""
            return NonFiniteNumber(
                f"{where}{message}",
                problems=[{"code": "non_finite_number", "field": field, "message": message}],
            )
        if isinstance(item, dict):
            children: list[tuple[str | int, Any]] = list(item.items())
        elif isinstance(item, list):
            children = list(enumerate(item))
        else:
            continue
        if len(path) >= max_depth:
            return _too_deep(max_depth)
        for key, child in reversed(children):
            if isinstance(key, str) and _BAD_TEXT.search(key):
                stack.append((key, (*path, key)))  # a bad key: refused where it is
            elif isinstance(child, dict | list | _NonFinite) or (
                isinstance(child, str) and _BAD_TEXT.search(child)
            ):
                stack.append((child, (*path, key)))
    return None


def _too_deep(max_depth: int) -> JsonTooDeep:
    return JsonTooDeep(f"the JSON body is nested more than {max_depth} levels deep")
