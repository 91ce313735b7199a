"""Observability: an execution's timeline and metrics, workflow analytics, Prometheus metrics.

Timeline, execution metrics and analytics need an API key like every other route and only
show the caller's own executions and workflows. `/metrics` holds platform-wide aggregates
(counts by status and node type, no ids or names): it is open unless `FLOWMAESTRO_METRICS_TOKEN`
is set, then it wants `Authorization: Bearer <token>` (Prometheus `authorization` config).
"""

import hmac
import logging
from datetime import UTC, date, datetime, timedelta
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Header, Query, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from pydantic import BaseModel, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from flowmaestro_api.deps import CurrentUser, DagsterDep, SessionDep, SessionRoute
from flowmaestro_api.errors import DagsterUnavailable, Unauthenticated, Unprocessable
from flowmaestro_api.services.analytics import workflow_analytics
from flowmaestro_dagster.control import executions as executions_service
from flowmaestro_dagster.control.timeline import RunTrace, execution_traces, node_index, timeline
from flowmaestro_dagster.control.workflows import get_workflow

router = APIRouter(route_class=SessionRoute, tags=["observability"])
log = logging.getLogger("flowmaestro.api.observability")
MAX_RANGE_DAYS = 366

SegmentKind = Literal["queued", "running", "backoff", "waiting"]


class MetricsSettings(BaseSettings):
    """`FLOWMAESTRO_METRICS_TOKEN`: when set, `/metrics` wants it as a bearer token."""

    model_config = SettingsConfigDict(env_prefix="FLOWMAESTRO_", env_file=".env", extra="ignore")

    metrics_token: SecretStr | None = None


class SegmentPublic(BaseModel):
    kind: SegmentKind
    start: datetime
    end: datetime | None = Field(description="null while it lasts (`ongoing`)")
    start_ms: float | None = Field(description="from the execution's first moment")
    end_ms: float | None
    duration_ms: float | None
    ongoing: bool
    run_id: str
    attempt: int | None = None
    outcome: str | None = Field(
        default=None, description="running: retry | succeeded | failed | parked | handled"
    )


class SpanPublic(BaseModel):
    step_key: str
    node_id: str
    label: str
    type: str
    iteration: str | None = Field(description="the loop item's mapping key, for mapped steps")
    status: str
    attempts: int
    retries: int
    errors: int
    error: str | None
    start: datetime | None
    end: datetime | None
    segments: list[SegmentPublic]


class TimelineRunPublic(BaseModel):
    run_id: str
    kind: Literal["initial", "retry", "resume", "reexecution"]
    status: str
    parent_run_id: str | None
    created_at: datetime | None
    started_at: datetime | None
    finished_at: datetime | None
    queued_ms: float | None
    parked: bool


class NodeMetricsPublic(BaseModel):
    duration_ms: float = Field(description="running time, all attempts and iterations")
    wall_ms: float | None = Field(description="first attempt's start to last attempt's end")
    queued_ms: float
    backoff_ms: float
    waiting_ms: float
    attempts: int
    retries: int
    errors: int = Field(description="failed attempts: retried, final and handled failures")
    iterations: int


class ExecutionMetricsPublic(BaseModel):
    total_duration_ms: float | None = Field(description="submission to the last run's end")
    queue_wait_ms: float = Field(description="submission to first run start, + later runs' queue")
    running_ms: float
    backoff_ms: float
    waiting_ms: float
    retry_count: int
    error_count: int
    run_count: int
    nodes: dict[str, NodeMetricsPublic]


class TimelinePublic(BaseModel):
    execution_id: str
    workflow_id: str
    version: int
    status: str
    created_at: datetime | None
    started_at: datetime | None
    finished_at: datetime | None
    duration_ms: float | None
    runs: list[TimelineRunPublic]
    spans: list[SpanPublic]
    metrics: ExecutionMetricsPublic


class ExecutionMetricsResponse(ExecutionMetricsPublic):
    execution_id: str
    status: str


class DayPublic(BaseModel):
    day: date
    executions: int
    succeeded: int
    failed: int
    duration_p50_ms: float | None
    duration_p95_ms: float | None


class NodeAnalyticsPublic(BaseModel):
    node_id: str
    errors: int
    failures: int
    retries: int
    executions_with_errors: int


class AnalyticsPublic(BaseModel):
    workflow_id: str
    from_: datetime = Field(alias="from")
    to: datetime
    executions: int
    by_status: dict[str, int]
    finished: int
    success_rate: float | None
    failure_rate: float | None
    duration_p50_ms: float | None
    duration_p95_ms: float | None
    by_day: list[DayPublic]
    nodes: list[NodeAnalyticsPublic]
    retries: int
    errors: int
    truncated: bool = Field(
        description="always false: every execution of the range is counted (kept for clients)"
    )
    duplicates_prevented: int = Field(
        default=0, description="replays answered with these executions (docs/observability.md)"
    )

    model_config = {"populate_by_name": True}


def _timeline_data(
    session: SessionDep, dagster: DagsterDep, user: CurrentUser, execution_id: str
) -> dict[str, Any]:
    execution = executions_service.get_execution(session, user=user, execution_id=execution_id)
    version = executions_service.version_row(session, execution)
    nodes = node_index(executions_service.compiled_for(version) if version is not None else None)
    traces: list[RunTrace] = []
    try:
        traces = execution_traces(dagster, execution.id)
    except DagsterUnavailable as exc:
        log.warning("timeline of %s without Dagster: %s", execution.id, exc)
    created = execution.created_at
    if created.tzinfo is None:
        created = created.replace(tzinfo=UTC)
    data = timeline(traces, nodes, created=created.timestamp(), stored_status=execution.status)
    data.update(
        execution_id=execution.id, workflow_id=execution.workflow_id, version=execution.version
    )
    return data


@router.get("/executions/{execution_id}/timeline", response_model=TimelinePublic)
def execution_timeline(
    execution_id: str, session: SessionDep, user: CurrentUser, dagster: DagsterDep
) -> TimelinePublic:
    """Every node as a span of queued / running / backoff / waiting segments, across every
    Dagster run of the execution (retries from failure, resumes after a waitpoint)."""
    return TimelinePublic.model_validate(_timeline_data(session, dagster, user, execution_id))


@router.get("/executions/{execution_id}/metrics", response_model=ExecutionMetricsResponse)
def execution_metrics(
    execution_id: str, session: SessionDep, user: CurrentUser, dagster: DagsterDep
) -> ExecutionMetricsResponse:
    """Total duration, queue wait, per-node durations, retries and errors of one execution."""
    data = _timeline_data(session, dagster, user, execution_id)
    return ExecutionMetricsResponse.model_validate(
        {**data["metrics"], "execution_id": data["execution_id"], "status": data["status"]}
    )


def _utc(moment: datetime) -> datetime:
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


@router.get("/workflows/{workflow_id}/analytics", response_model=AnalyticsPublic)
def analytics(
    workflow_id: str,
    session: SessionDep,
    user: CurrentUser,
    from_: Annotated[
        datetime | None,
        Query(alias="from", description="start (UTC if no offset); to minus 7 days"),
    ] = None,
    to: Annotated[datetime | None, Query(description="end, exclusive; default now")] = None,
) -> AnalyticsPublic:
    """Executions created in `[from, to)`: success / failure rate, duration p50 / p95 per day
    (nearest rank), errors and retries per node. SQL over the platform database's indexes
    (services/analytics.py): every execution counted, Dagster not read."""
    workflow = get_workflow(session, user=user, workflow_id=workflow_id)
    end = _utc(to) if to is not None else datetime.now(UTC)
    start = _utc(from_) if from_ is not None else end - timedelta(days=7)
    if start >= end:
        raise Unprocessable("'from' must be before 'to'")
    if end - start > timedelta(days=MAX_RANGE_DAYS):
        raise Unprocessable(f"the range may span at most {MAX_RANGE_DAYS} days")
    data = workflow_analytics(session, workflow_id=workflow.id, start=start, end=end)
    return AnalyticsPublic.model_validate(data)


@router.get(
    "/metrics",
    response_class=Response,
    responses={
        200: {"content": {CONTENT_TYPE_LATEST: {}}},
        401: {"description": "token required"},
    },
)
def metrics(request: Request, authorization: Annotated[str | None, Header()] = None) -> Response:
    """Prometheus metrics (docs/observability.md): executions by status, queue depth and age,
    launches, node durations, attempts and errors by class, waitpoints, approval latency."""
    token = MetricsSettings().metrics_token
    if token is not None:
        given = (authorization or "").removeprefix("Bearer ").removeprefix("bearer ").strip()
        if not hmac.compare_digest(given.encode(), token.get_secret_value().encode()):
            raise Unauthenticated("the metrics token is missing or wrong")
    registry: CollectorRegistry = request.app.state.metrics_registry
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)


__all__ = ["router"]
