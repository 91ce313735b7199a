"""HTTP errors: every `PlatformError` rendered as RFC 9457 problem+json in one place.

The control plane (flowmaestro_dagster.errors) raises the domain errors and names their status;
this module adds what only HTTP has and maps them all in `register_error_handlers`:

PlatformError (flowmaestro_dagster.errors)   500 (never raised on purpose)
├── InvalidRequest               400 the request cannot be read
├── BadSignature                 401 a webhook delivery is not signed with the hook's secret
├── Forbidden                    403 the key's user may not do this
├── NotFound                     404 no such workflow / version / execution (or not yours)
├── Conflict                     409 the resource is in the wrong state for this
├── Gone                         410 it existed but has expired, or its execution was cancelled
├── UnsupportedMediaType         415 a webhook body that is not JSON, a form or text
├── Unprocessable                422 valid JSON, invalid content (carries validation problems)
│   ├── InvalidWorkflow          the definition has errors
│   ├── InvalidInputs            inputs do not match the workflow's input nodes
│   ├── IdempotencyKeyReused     the key was used with a different request
│   └── InvalidAlertRule         an alert rule's workflow or channel does not exist
├── DagsterUnavailable           503 the Dagster webserver did not answer
└── ApiError                     (this module)
    ├── Unauthenticated          401 missing or unknown API key
    ├── PayloadTooLarge          413 past FLOWMAESTRO_MAX_REQUEST_BYTES (counted as it arrives)
    ├── JsonExpected             415 a JSON endpoint got no content type, or another one
    ├── MalformedJson            422 not JSON (names line and column)
    ├── JsonTooDeep              422 nested deeper than request_guard.MAX_JSON_DEPTH (64)
    ├── NonFiniteNumber          422 NaN, Infinity, or too large for a float (names the path)
    ├── InvalidText              422 a NUL character or a lone UTF-16 surrogate (names the path)
    └── TooManyRequests          429 a webhook's rate limit (with Retry-After)
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from sqlalchemy.exc import TimeoutError as PoolTimeout

from flowmaestro_dagster.errors import (
    BadSignature,
    Conflict,
    DagsterUnavailable,
    Forbidden,
    Gone,
    IdempotencyKeyReused,
    InvalidInputs,
    InvalidRequest,
    InvalidWorkflow,
    NotFound,
    PlatformError,
    Unprocessable,
    UnsupportedMediaType,
)

__all__ = [
    "ApiError",
    "BadSignature",
    "Conflict",
    "DagsterUnavailable",
    "Forbidden",
    "Gone",
    "IdempotencyKeyReused",
    "InvalidInputs",
    "InvalidRequest",
    "InvalidText",
    "InvalidWorkflow",
    "JsonExpected",
    "JsonTooDeep",
    "MalformedJson",
    "NonFiniteNumber",
    "NotFound",
    "PayloadTooLarge",
    "PlatformError",
    "TooManyRequests",
    "Unauthenticated",
    "Unprocessable",
    "UnsupportedMediaType",
    "malformed_json",
    "register_error_handlers",
    "render",
]

if TYPE_CHECKING:  # FastAPI is imported where a response is made: code servers raise these too
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse

log = logging.getLogger(__name__)
PROBLEM_JSON = "application/problem+json"


class ApiError(PlatformError):
    """The request cannot be served."""


class Unauthenticated(ApiError, status=401, code="unauthenticated"):
    """Missing or unknown API key."""


class PayloadTooLarge(ApiError, status=413, code="payload_too_large"):
    """The request body is too large."""


class JsonExpected(ApiError, status=415, code="unsupported_media_type"):
    """The endpoint takes a JSON body."""


class MalformedJson(ApiError, status=422, code="malformed_json"):
    """The request body is not valid JSON."""


class JsonTooDeep(ApiError, status=422, code="json_too_deep"):
    """The JSON body is nested too deeply."""


class NonFiniteNumber(ApiError, status=422, code="non_finite_number"):
    """The JSON body holds a number that is not finite."""


class InvalidText(ApiError, status=422, code="invalid_text"):
    """The JSON body holds text that cannot be stored."""


def malformed_json(document: str | bytes, position: int, reason: str) -> MalformedJson:
    """Where the parser stopped, as a person reads the body (1-based line and column)."""
    text = document.decode(errors="replace") if isinstance(document, bytes) else document
    line = text.count("\n", 0, position) + 1
    column = position - text.rfind("\n", 0, position)
    message = f"malformed JSON at line {line} column {column}: {reason}"
    return MalformedJson(
        message,
        problems=[{"code": "malformed_json", "message": message, "line": line, "column": column}],
    )


def render(error: PlatformError, request: Request) -> JSONResponse:
    """One error as problem+json (its problems, extra members and headers included)."""
    response = problem_response(
        error.status,
        error.code,
        error.title,
        error.detail,
        request,
        problems=error.problems,
        **error.extra,
    )
    response.headers.update(error.headers)
    return response


class InvalidLastEventId(ApiError, status=400, code="invalid_last_event_id"):
    """A Last-Event-ID that is malformed, another execution's, or from the future."""


class TooManyRequests(ApiError, status=429, code="rate_limited"):
    """Too many requests."""


def problem_response(
    status: int, code: str, title: str, detail: str, request: Request, **extra: Any
) -> JSONResponse:
    body = {
        "type": f"https://flowmaestro.dev/problems/{code}",
        "title": title,
        "status": status,
        "detail": detail,
        "instance": request.url.path,
        "code": code,
        **{k: v for k, v in extra.items() if v not in (None, [], {})},
    }
    from fastapi.responses import JSONResponse

    return JSONResponse(body, status_code=status, media_type=PROBLEM_JSON)


def register_error_handlers(app: FastAPI) -> None:
    """Map every error to problem+json; nothing escapes as an HTML 500."""
    from fastapi.exceptions import RequestValidationError
    from starlette.exceptions import HTTPException as StarletteHTTPException

    @app.exception_handler(PlatformError)
    async def _api_error(request: Request, exc: PlatformError) -> JSONResponse:
        return render(exc, request)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        unread = _unread_body(request, exc.body, errors)
        if unread is not None:
            return render(unread, request)
        problems = [_field_problem(err) for err in errors]
        return problem_response(
            422,
            "invalid_request_body",
            "The request body is invalid",
            "; ".join(
                f"{p['field']}: {p['message']}" if "field" in p else p["message"]
                for p in problems[:5]
            ),
            request,
            problems=problems,
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        response = problem_response(
            exc.status_code, code, str(exc.detail), str(exc.detail), request
        )
        if exc.headers:
            response.headers.update(exc.headers)
        return response

    @app.exception_handler(PoolTimeout)
    async def _busy(request: Request, exc: PoolTimeout) -> JSONResponse:
        log.warning("database pool exhausted on %s %s", request.method, request.url.path)
        response = problem_response(
            503, "busy", "Busy", "every database connection is in use: retry shortly", request
        )
        response.headers["Retry-After"] = "1"
        return response

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return problem_response(
            500, "internal_error", "Internal error", "an unexpected error occurred", request
        )


def _unread_body(request: Request, body: Any, errors: Sequence[Any]) -> PlatformError | None:
    """A body FastAPI could not read as JSON: not valid JSON (FastAPI gives only an offset), or
    not sent as JSON at all (FastAPI hands the raw bytes to the model: "valid dictionary")."""
    for err in errors:
        loc = tuple(err.get("loc", ()))
        if err.get("type") == "json_invalid" and len(loc) == 2 and isinstance(loc[1], int):
            reason = str((err.get("ctx") or {}).get("error") or "not JSON")
            return malformed_json(body if isinstance(body, str | bytes) else "", loc[1], reason)
        if loc == ("body",) and isinstance(body, bytes):
            sent = request.headers.get("content-type")
            told = f"it was sent as {sent}" if sent else "it was sent without a Content-Type"
            return JsonExpected(
                f"this endpoint takes a JSON body (Content-Type: application/json); {told}"
            )
    return None


def _field_problem(err: Mapping[str, Any]) -> dict[str, Any]:
    """A validation error as a problem; `field` only when it names one (not the whole body)."""
    field = ".".join(str(p) for p in err["loc"] if p != "body")
    message = str(err["msg"])
    if not field and err.get("type") == "missing":
        message = "a JSON body is required"
    return {"code": "invalid_field", **({"field": field} if field else {}), "message": message}
