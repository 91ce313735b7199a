"""Errors raised by the FlowMaestro compiler and node runtime.

FlowMaestroError
├── InvalidWorkflowError          the definition has validation errors; carries every problem
├── ExpressionError               an expression or template cannot be parsed or evaluated
│   ├── ExpressionBudgetError     it went over a limit: length, nesting, steps or value size
│   └── PatternError              a user-supplied regex is invalid, unsupported (RE2) or over budget
└── NodeExecutionError            a node failed at run time (names the node and its type)
    ├── TransientNodeError        worth retrying: timeouts, connection errors, 429, 5xx
    ├── NodeConfigurationError    the node's settings cannot work (bad value at run time)
    │   ├── ConnectionDestinationError
    │   │                         a connection's secrets would leave its declared base_url
    │   └── UnresolvedReferenceError
    │                             a `{{reference}}` nothing provides (unresolvedReferences=error)
    └── ConnectorNotConfiguredError
                                  no executor / connector is configured for this node
├── PlatformError                 a control-plane request cannot be done (`status`: HTTP answer)
│   ├── InvalidRequest 400, Forbidden 403, NotFound 404, Conflict 409, Gone 410
│   ├── BadSignature 401          a webhook delivery is not signed with the hook's secret
│   ├── UnsupportedMediaType 415  a webhook body that is not JSON, a form or text
│   ├── Unprocessable 422         (InvalidWorkflow, InvalidInputs, IdempotencyKeyReused,
│   │                             InvalidAlertRule)
│   └── DagsterUnavailable 503    the Dagster webserver did not answer
└── CeleryError                   a node step could not be run on a Celery worker
    ├── CeleryUnavailableError    the broker is unreachable or no worker consumes the queue
    └── CeleryWorkerLostError     the worker running a step stopped answering (killed, lost)
"""

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from flowmaestro_dagster.spec.problems import Problem


class FlowMaestroError(Exception):
    """A FlowMaestro error."""

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or (self.__doc__ or "").strip())


class InvalidWorkflowError(FlowMaestroError):
    """The workflow definition has errors and cannot become a job."""

    def __init__(self, problems: Sequence["Problem"]) -> None:
        self.problems = list(problems)
        errors = [p for p in self.problems if p.severity == "error"]
        summary = "; ".join(p.describe() for p in errors[:5])
        more = f" (+{len(errors) - 5} more)" if len(errors) > 5 else ""
        super().__init__(f"invalid workflow: {summary}{more}")


class ExpressionError(FlowMaestroError):
    """An expression could not be parsed or evaluated."""


class ExpressionBudgetError(ExpressionError):
    """An expression went over its budget (FLOWMAESTRO_EXPRESSION_MAX_STEPS / _MAX_SIZE, or
    the fixed limits on length and nesting): a definition cannot hang or exhaust a process."""


class PatternError(ExpressionError):
    """A regular expression from a definition or a request cannot be used: invalid, unsupported
    by RE2 (backreferences, lookaround), too large, or too costly for the text it would scan."""


class NodeExecutionError(FlowMaestroError):
    """A node failed while it ran."""

    retryable = False

    def __init__(
        self,
        message: str,
        *,
        node_id: str | None = None,
        node_type: str | None = None,
        details: dict[str, Any] | None = None,
    ) -> None:
        self.node_id = node_id
        self.node_type = node_type
        self.details = details or {}
        where = f"node '{node_id}' ({node_type}): " if node_id else ""
        super().__init__(f"{where}{message}")
        self.reason = message


class TransientNodeError(NodeExecutionError):
    """A node failed for a reason that may pass: retry it."""

    retryable = True

    def __init__(
        self,
        message: str,
        *,
        retry_after_seconds: float | None = None,
        node_id: str | None = None,
        node_type: str | None = None,
        details: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message, node_id=node_id, node_type=node_type, details=details)
        self.retry_after_seconds = retry_after_seconds


class NodeConfigurationError(NodeExecutionError):
    """A node's settings cannot work with the values it received."""


class ConnectionDestinationError(NodeConfigurationError):
    """A connection's secrets would go to a URL outside the connection's declared base_url."""


class UnresolvedReferenceError(NodeConfigurationError):
    """A `{{reference}}` in the node's config resolves to nothing, and the workflow (setting
    `unresolvedReferences`) or the platform (FLOWMAESTRO_UNRESOLVED_REFERENCES) says error."""

    def __init__(
        self,
        message: str,
        *,
        field: str = "",
        reference: str = "",
        node_id: str | None = None,
        node_type: str | None = None,
        details: dict[str, Any] | None = None,
    ) -> None:
        self.field = field
        self.reference = reference
        details = {"field": field, "reference": reference, **(details or {})}
        super().__init__(message, node_id=node_id, node_type=node_type, details=details)


class ConnectorNotConfiguredError(NodeExecutionError):
    """No executor or connector is configured for this node."""


class CeleryError(FlowMaestroError):
    """A node step could not be run on a Celery worker."""


class CeleryUnavailableError(CeleryError):
    """No Celery worker can take node steps (broker unreachable, or no worker on the queue)."""


class CeleryWorkerLostError(CeleryError):
    """The Celery worker running a node step stopped answering; the run fails so that Dagster
    retries it from failure (FLOWMAESTRO_RUN_RETRIES)."""


# -- the control plane: requests the API (and sensors) make of the platform -----------------


class PlatformError(FlowMaestroError):
    """Internal error."""

    status = 500
    code = "internal_error"

    def __init_subclass__(
        cls, *, status: int | None = None, code: str | None = None, **kwargs: Any
    ) -> None:
        """`class NotFound(PlatformError, status=404, code="not_found")`: the HTTP answer."""
        super().__init_subclass__(**kwargs)
        if status is not None:
            cls.status = status
        if code is not None:
            cls.code = code

    def __init__(
        self,
        detail: str | None = None,
        *,
        problems: Sequence["Problem | dict[str, Any]"] = (),
        headers: dict[str, str] | None = None,
        **extra: Any,
    ) -> None:
        self.detail = detail or (self.__doc__ or "").strip()
        self.problems = [
            p if isinstance(p, dict) else p.model_dump(exclude_none=True) for p in problems
        ]
        self.headers = headers or {}
        self.extra = extra
        super().__init__(self.detail)

    @property
    def title(self) -> str:
        return (type(self).__doc__ or self.code).strip().splitlines()[0].rstrip(".")


class InvalidRequest(PlatformError, status=400, code="invalid_request"):
    """The request could not be read."""


class BadSignature(PlatformError, status=401, code="bad_signature"):
    """The delivery is not signed with the hook's secret."""


class UnsupportedMediaType(PlatformError, status=415, code="unsupported_media_type"):
    """The body is not JSON, a form or text."""


class Forbidden(PlatformError, status=403, code="forbidden"):
    """Not allowed."""


class NotFound(PlatformError, status=404, code="not_found"):
    """Not found."""


class Conflict(PlatformError, status=409, code="conflict"):
    """The resource is not in a state that allows this."""


class Gone(PlatformError, status=410, code="gone"):
    """It is gone: it expired, or its execution was cancelled."""


class Unprocessable(PlatformError, status=422, code="unprocessable"):
    """The request is well-formed but its content is invalid."""


class InvalidWorkflow(Unprocessable, code="invalid_workflow"):
    """The workflow definition has errors."""


class InvalidInputs(Unprocessable, code="invalid_inputs"):
    """The inputs do not match the workflow's input nodes."""


class IdempotencyKeyReused(Unprocessable, code="idempotency_key_reused"):
    """The Idempotency-Key was already used with a different request."""


class InvalidAlertRule(Unprocessable, code="invalid_alert_rule"):
    """The alert rule cannot work (names the field: a workflow, a channel nobody configured)."""


class DagsterUnavailable(PlatformError, status=503, code="dagster_unavailable"):
    """The Dagster webserver did not answer."""
