"""API errors, rendered as RFC 9457 problem+json in one place (`register_error_handlers`).

ApiError                         500 (never raised on purpose)
├── InvalidRequest               400 the request cannot be read
├── Unauthenticated              401 missing or unknown API key
├── Forbidden                    403 the key's user may not do this
├── NotFound                     404 no such workflow / version / execution (or not yours)
├── Conflict                     409 the resource is in the wrong state for this
├── Gone                         410 it existed but has expired
├── PayloadTooLarge              413
├── Unprocessable                422 valid JSON, invalid content (carries validation problems)
│   ├── InvalidWorkflow          the definition has errors
│   ├── InvalidInputs            inputs do not match the workflow's input nodes
│   └── IdempotencyKeyReused     the key was used with a different request
└── DagsterUnavailable           503 the Dagster webserver did not answer
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from flowmaestro_dagster.spec.problems import Problem

if TYPE_CHECKING:  # FastAPI is imported where a response is made: code servers raise these too
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse

log = logging.getLogger(__name__)
PROBLEM_JSON = "application/problem+json"


class ApiError(Exception):
    """Internal error."""

    status = 500
    code = "internal_error"

    def __init__(
        self,
        detail: str | None = None,
        *,
        problems: Sequence[Problem | dict[str, Any]] = (),
        headers: dict[str, str] | None = None,
        **extra: Any,
    ) -> None:
        self.detail = detail or (self.__doc__ or "").strip()
        self.problems = [
            p.model_dump(exclude_none=True) if isinstance(p, Problem) else p for p in problems
        ]
        self.headers = headers or {}
        self.extra = extra
        super().__init__(self.detail)

    @property
    def title(self) -> str:
        return (type(self).__doc__ or self.code).strip().splitlines()[0].rstrip(".")


class InvalidRequest(ApiError):
    """The request could not be read."""

    status, code = 400, "invalid_request"


class Unauthenticated(ApiError):
    """Missing or unknown API key."""

    status, code = 401, "unauthenticated"


class Forbidden(ApiError):
    """Not allowed."""

    status, code = 403, "forbidden"


class NotFound(ApiError):
    """Not found."""

    status, code = 404, "not_found"


class Conflict(ApiError):
    """The resource is not in a state that allows this."""

    status, code = 409, "conflict"


class Gone(ApiError):
    """It has expired."""

    status, code = 410, "gone"


class PayloadTooLarge(ApiError):
    """The request body is too large."""

    status, code = 413, "payload_too_large"


class Unprocessable(ApiError):
    """The request is well-formed but its content is invalid."""

    status, code = 422, "unprocessable"


class InvalidWorkflow(Unprocessable):
    """The workflow definition has errors."""

    code = "invalid_workflow"


class InvalidInputs(Unprocessable):
    """The inputs do not match the workflow's input nodes."""

    code = "invalid_inputs"


class IdempotencyKeyReused(Unprocessable):
    """The Idempotency-Key was already used with a different request."""

    code = "idempotency_key_reused"


class DagsterUnavailable(ApiError):
    """The Dagster webserver did not answer."""

    status, code = 503, "dagster_unavailable"


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

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
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
