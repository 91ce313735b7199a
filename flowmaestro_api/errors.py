"""HTTP errors: every `PlatformError` rendered as RFC 9457 problem+json in one place.

The control plane (flowmaestro_dagster.errors) raises the domain errors and names their status;
this module adds what only HTTP has and maps them all in `register_error_handlers`:

PlatformError (flowmaestro_dagster.errors)   500 (never raised on purpose)
├── InvalidRequest               400 the request cannot be read
├── BadSignature                 401 a webhook delivery is not signed with the hook's secret
├── Forbidden                    403 the key's user may not do this
├── NotFound                     404 no such workflow / version / execution (or not yours)
├── Conflict                     409 the resource is in the wrong state for this
├── Gone                         410 it existed but has expired
├── UnsupportedMediaType         415 a webhook body that is not JSON, a form or text
├── Unprocessable                422 valid JSON, invalid content (carries validation problems)
│   ├── InvalidWorkflow          the definition has errors
│   ├── InvalidInputs            inputs do not match the workflow's input nodes
│   └── IdempotencyKeyReused     the key was used with a different request
├── DagsterUnavailable           503 the Dagster webserver did not answer
└── ApiError                     (this module)
    ├── Unauthenticated          401 missing or unknown API key
    ├── PayloadTooLarge          413
    └── TooManyRequests          429 a webhook's rate limit (with Retry-After)
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

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
    "InvalidWorkflow",
    "NotFound",
    "PayloadTooLarge",
    "PlatformError",
    "TooManyRequests",
    "Unauthenticated",
    "Unprocessable",
    "UnsupportedMediaType",
    "register_error_handlers",
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
        response = problem_response(
            exc.status, exc.code, exc.title, exc.detail, request, problems=exc.problems, **exc.extra
        )
        response.headers.update(exc.headers)
        return response

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = [
            {
                "code": "invalid_field",
                "field": ".".join(str(p) for p in err["loc"] if p != "body"),
                "message": err["msg"],
            }
            for err in exc.errors()
        ]
        return problem_response(
            422,
            "invalid_request_body",
            "The request body is invalid",
            "; ".join(f"{p['field']}: {p['message']}" for p in problems[:5]),
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

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return problem_response(
            500, "internal_error", "Internal error", "an unexpected error occurred", request
        )
