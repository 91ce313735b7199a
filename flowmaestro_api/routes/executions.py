"""Executions: start (idempotently), read, list, cancel, retry, pause, resume, checkpoints,
node details (attempts), follow (server-sent events)."""

from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Query, Request, Response, status
from sqlalchemy import bindparam, select
from sqlalchemy.orm import Session
from sse_starlette import EventSourceResponse
from starlette.concurrency import run_in_threadpool

from flowmaestro_api.deps import (
    CurrentUser,
    DagsterDep,
    OwnExecution,
    SessionDep,
    SessionRoute,
    SettingsDep,
)
from flowmaestro_api.errors import ApiError, InvalidLastEventId, NotFound
from flowmaestro_api.schemas import (
    CheckpointDetail,
    CheckpointList,
    CheckpointPublic,
    ExecutionList,
    ExecutionPublic,
    ExecutionStatus,
    NodeDetail,
    NodeProgressPublic,
    NodeStatusPublic,
    RunPublic,
    WaitpointList,
    WaitpointPublic,
)
from flowmaestro_api.services.events import (
    HEARTBEAT_SECONDS,
    SEPARATOR,
    EventFeed,
    EventIdError,
    check_event_id,
    parse_event_id,
)
from flowmaestro_api.services.node_details import node_detail
from flowmaestro_api.services.progress import node_progress
from flowmaestro_api.settings import ApiSettings
from flowmaestro_dagster.control import checkpoints as checkpoint_service
from flowmaestro_dagster.control import executions as service
from flowmaestro_dagster.control import lifecycle as control
from flowmaestro_dagster.control.client import DagsterClient
from flowmaestro_dagster.control.requests import ExecutionCreate
from flowmaestro_dagster.store.attempts import full_output, node_attempts
from flowmaestro_dagster.store.db import session_scope
from flowmaestro_dagster.store.models import Execution, User, Waitpoint

router = APIRouter(route_class=SessionRoute, tags=["executions"])
MAX_OFFSET = 1_000_000


def _public(view: service.ExecutionView, settings: ApiSettings) -> ExecutionPublic:
    execution = view.execution
    public = ExecutionPublic.model_validate(execution)
    ui = settings.dagster_ui_url.rstrip("/")
    public.runs = [
        RunPublic(
            run_id=r.run_id,
            status=r.status,
            parent_run_id=r.parent_run_id,
            url=f"{ui}/runs/{r.run_id}",
        )
        for r in view.runs
    ]
    latest = execution.latest_run_id or execution.run_id
    public.url = f"{ui}/runs/{latest}" if latest else None
    public.nodes = [NodeStatusPublic.model_validate(n) for n in view.nodes]
    if public.status == "queued" or (view.runs and view.runs[-1].status == "QUEUED"):
        from flowmaestro_dagster.control.queues import queue_status

        public.queue_position, public.queued_reason = queue_status(execution, view.runs, settings)
    return public


def answer_submitted(
    request: Request, response: Response, execution_id: str, replayed: bool
) -> None:
    """The answer to a submission: `Location`, and for a replay 200 with
    `Idempotent-Replayed: true`; otherwise (with launch_on_submit) the launch after the response:
    the execution is committed, the reconciler covers a crash."""
    response.headers["Location"] = f"/executions/{execution_id}"
    if replayed:
        response.status_code = status.HTTP_200_OK
        response.headers["Idempotent-Replayed"] = "true"
    elif request.app.state.settings.launch_on_submit:
        pool: Executor = request.app.state.launcher
        pool.submit(request.app.state.launch, execution_id)


@router.post(
    "/workflows/{workflow_id}/executions",
    status_code=status.HTTP_201_CREATED,
    response_model=ExecutionPublic,
    responses={
        200: {"description": "a replay of an earlier request with the same Idempotency-Key"}
    },
)
async def start_execution(
    workflow_id: str,
    body: ExecutionCreate,
    request: Request,
    response: Response,
    user: CurrentUser,
    settings: SettingsDep,
    idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key")] = None,
) -> ExecutionPublic:
    """Start an execution of the deployed version.

    With `Idempotency-Key`, a repeat of the same request returns the same execution (200,
    `Idempotent-Replayed: true`, `"idempotent_replayed": true`) and counts one duplicate
    prevented (`duplicates_prevented` in the workflow's analytics); the same key with a
    different body is 422. Keys are scoped to the user and the workflow and expire after the
    workflow's TTL (default 24 h).
    """

    # One hop to a request thread for all of it (its own session and transaction, the ORM
    # rows read into the answer); the answer is validated and written on the event loop.
    def submit() -> tuple[ExecutionPublic, bool]:
        with session_scope(request.app.state.sessions) as session:
            execution, replayed = service.start_execution(
                session,
                user=user,
                workflow_id=workflow_id,
                body=body,
                idempotency_key=idempotency_key,
                default_ttl_seconds=settings.idempotency_ttl_seconds,
                shards=settings.code_location_shards,
            )
            public = _public(service.ExecutionView(execution, [], []), settings)
        public.idempotent_replayed = replayed
        return public, replayed

    public, replayed = await run_in_threadpool(submit)
    answer_submitted(request, response, public.id, replayed)
    return public


@router.get("/executions", response_model=ExecutionList)
def list_executions(
    session: SessionDep,
    user: CurrentUser,
    settings: SettingsDep,
    workflow_id: str | None = None,
    status_filter: Annotated[ExecutionStatus | None, Query(alias="status")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
) -> ExecutionList:
    rows, total = service.list_executions(
        session,
        user=user,
        workflow_id=workflow_id,
        status=status_filter,
        limit=limit,
        offset=offset,
    )
    return ExecutionList(
        items=[_public(service.ExecutionView(r, [], []), settings) for r in rows], total=total
    )


@router.get("/executions/{execution_id}", response_model=ExecutionPublic)
async def get_execution(
    execution_id: str,
    request: Request,
    user: CurrentUser,
    settings: SettingsDep,
    dagster: DagsterDep,
) -> ExecutionPublic:
    """Status, per-node status / attempts / durations / outputs, every Dagster run, and the
    progress of batch nodes (`progress`: node id -> done / total / succeeded / failed). 404
    for another user's."""

    # One hop to a request thread for the whole read (the row, Dagster's runs, waitpoints), in
    # a session of its own.
    def read() -> ExecutionPublic:
        with session_scope(request.app.state.sessions) as session:
            execution = service.get_execution(session, user=user, execution_id=execution_id)
            view = service.refresh(session, dagster, execution)
            public = _public(view, settings)
            public.waitpoints = _waitpoints(session, settings, execution.id, user)
            if view.runs:
                version = view.version or service.version_row(session, execution)
                if version is not None:
                    progress = node_progress(dagster, service.compiled_for(version), view.runs)
                    public.progress = {
                        k: NodeProgressPublic.model_validate(v) for k, v in progress.items()
                    }
        return public

    return await run_in_threadpool(read)


# Built once (every read of an execution runs it): SQLAlchemy keeps its cache key.
_WAITPOINTS = (
    select(Waitpoint)
    .where(Waitpoint.execution_id == bindparam("execution_id"))
    .order_by(Waitpoint.created_at)
)


def _waitpoints(
    session: Session, settings: ApiSettings, execution_id: str, user: User
) -> list[WaitpointPublic]:
    """The execution's waitpoints; a webhook wait shows the URL its caller must POST to, an
    approval its API URL and, while pending and if `user` may decide it, the signed page."""
    from flowmaestro_dagster.control.notifications import approval_api_url, approval_page_url
    from flowmaestro_dagster.control.waitpoints import may_decide, signed_token

    rows = session.scalars(_WAITPOINTS, {"execution_id": execution_id}).all()
    base = settings.public_api_url.rstrip("/")
    result = []
    for row in rows:
        public = WaitpointPublic.model_validate(row, from_attributes=True)
        if row.kind == "callback":
            token = signed_token(settings.secret("secret_key"), "callback", row.id)
            public.callback_url = f"{base}/callbacks/{token}"
        if row.kind == "approval":
            public.approval_url = approval_api_url(settings, row.id)
            if row.status == "pending" and may_decide(session, row, user):
                public.page_url = approval_page_url(settings, row.id)
        result.append(public)
    return result


@router.get("/executions/{execution_id}/waitpoints", response_model=WaitpointList)
def list_waitpoints(
    execution: OwnExecution, session: SessionDep, user: CurrentUser, settings: SettingsDep
) -> WaitpointList:
    """The execution's waitpoints (what `GET /executions/{id}` shows as `waitpoints`), oldest
    first: approvals with their links, callbacks with their URL. 404 for another user's."""
    return WaitpointList(items=_waitpoints(session, settings, execution.id, user))


@dataclass(frozen=True)
class _Action:
    """What a lifecycle action on one of the caller's executions works with."""

    execution: Execution
    session: Session
    user: User
    settings: ApiSettings
    dagster: DagsterClient

    def answer(self) -> ExecutionPublic:
        """The execution as it is after the action."""
        return _public(service.refresh(self.session, self.dagster, self.execution), self.settings)


def _action(
    execution: OwnExecution,
    session: SessionDep,
    user: CurrentUser,
    settings: SettingsDep,
    dagster: DagsterDep,
) -> _Action:
    return _Action(execution, session, user, settings, dagster)


ActionDep = Annotated[_Action, Depends(_action)]


@router.post("/executions/{execution_id}/cancel", response_model=ExecutionPublic, status_code=202)
def cancel_execution(it: ActionDep) -> ExecutionPublic:
    """Cancel a queued, launching, running, waiting or paused execution (its runs are
    terminated, its waitpoints closed); it wins over a launch, retry or resume in flight.
    409 if it has already ended or was already cancelled. A waiting execution's waitpoints
    are closed with who cancelled it and when: a later decision, callback or due time on one
    is 410 with that reason, and its parked run is tagged `flowmaestro/cancelled=true`."""
    control.cancel_execution(it.session, it.dagster, it.execution, user=it.user)
    return it.answer()


@router.post("/executions/{execution_id}/retry", response_model=ExecutionPublic, status_code=202)
def retry_execution(it: ActionDep) -> ExecutionPublic:
    """Re-execute from failure: finished nodes are not run again. A failure downstream of a
    live checkpoint re-executes from the latest such checkpoint instead (every node after it
    runs again on the checkpoint's state). 409 while another retry of it is under way."""
    lease = it.settings.launch_lease_seconds
    control.retry_execution(it.session, it.dagster, it.execution, lease_seconds=lease)
    return it.answer()


@router.post("/executions/{execution_id}/pause", response_model=ExecutionPublic, status_code=202)
def pause_execution(it: ActionDep) -> ExecutionPublic:
    """Stop a running execution at the next node boundary: no further node starts, finished
    nodes stay finished, the run ends and holds no slot. `pausing` until the run has ended,
    then `paused`; pausing again changes nothing. 409 if it is not running."""
    control.pause_execution(it.session, it.dagster, it.execution)
    return it.answer()


@router.post("/executions/{execution_id}/resume", response_model=ExecutionPublic, status_code=202)
def resume_execution(it: ActionDep) -> ExecutionPublic:
    """Continue a paused execution, or one parked at a checkpoint with `pauseHere`, without
    running finished nodes again. 409 if it is neither."""
    lease = it.settings.launch_lease_seconds
    control.resume_execution(
        it.session, it.dagster, it.execution, user=it.user, lease_seconds=lease
    )
    return it.answer()


def _checkpoint_public(row: Any, model: type[CheckpointPublic]) -> Any:
    outputs = row.state.get("outputs") if isinstance(row.state, dict) else None
    nodes = sorted(outputs) if isinstance(outputs, dict) else []
    return model.model_validate(
        {
            **{k: getattr(row, k) for k in CheckpointPublic.model_fields if k != "nodes"},
            "nodes": nodes,
            **({"state": row.state} if model is CheckpointDetail else {}),
        }
    )


@router.get("/executions/{execution_id}/checkpoints", response_model=CheckpointList)
def list_checkpoints(execution_id: str, session: SessionDep, user: CurrentUser) -> CheckpointList:
    """The execution's live checkpoints (expired ones are purged), oldest first."""
    execution = service.get_execution(session, user=user, execution_id=execution_id)
    rows = checkpoint_service.list_checkpoints(session, execution=execution)
    return CheckpointList(items=[_checkpoint_public(r, CheckpointPublic) for r in rows])


@router.get("/executions/{execution_id}/checkpoints/{node_id}", response_model=CheckpointDetail)
def get_checkpoint(
    execution: OwnExecution,
    node_id: str,
    session: SessionDep,
    user: CurrentUser,
    iteration: Annotated[str, Query(max_length=100)] = "",
) -> CheckpointDetail:
    """The state kept at a checkpoint node: inputs, every node output so far (by node id)
    and shared memory. `iteration` (`0`, `1.2`) picks one of a loop body's checkpoints."""
    row = checkpoint_service.get_checkpoint(
        session, execution=execution, node_id=node_id, iteration=iteration
    )
    result: CheckpointDetail = _checkpoint_public(row, CheckpointDetail)
    return result


@router.get("/executions/{execution_id}/nodes/{node_id}", response_model=NodeDetail)
def get_node_detail(
    execution: OwnExecution, node_id: str, request: Request, session: SessionDep
) -> NodeDetail:
    """Every attempt of one node (loop items and resumed runs included): its resolved
    inputs (credentials as `***`), its output (capped at 64 KiB of JSON, the rest at
    `output_url`), what it logged, its error with the stack, the retry decision and where the
    time went. 404 for a node the execution's workflow version does not have."""
    _known_node(session, execution, node_id)
    url = str(request.url_for("get_node_output", execution_id=execution.id, node_id=node_id))
    return node_detail(session, execution_id=execution.id, node_id=node_id, output_url=url)


@router.get("/executions/{execution_id}/nodes/{node_id}/output")
def get_node_output(
    execution: OwnExecution,
    node_id: str,
    session: SessionDep,
    run_id: Annotated[str | None, Query(max_length=64)] = None,
    step_key: Annotated[str | None, Query(max_length=400)] = None,
) -> Any:
    """The node's whole output (JSON), as stored after it: of the attempt `run_id` /
    `step_key` names (the `output_url` of a truncated one), else of its latest successful
    attempt. 404 when none was stored."""
    _known_node(session, execution, node_id)
    # Matched among the node's own attempts: only ids read from the database reach a query.
    done = [
        row
        for row in node_attempts(session, execution_id=execution.id, node_id=node_id)
        if row.status == "succeeded"
        and (run_id is None or row.run_id == run_id)
        and (step_key is None or row.step_key == step_key)
    ]
    if not done:
        raise NotFound(f"node {node_id} has no such successful attempt")
    run_id, step_key = done[-1].run_id, done[-1].step_key
    try:
        return full_output(
            session, execution_id=execution.id, node_id=node_id, run_id=run_id, step_key=step_key
        )
    except LookupError as exc:
        raise NotFound(str(exc)) from exc


def _known_node(session: Session, execution: Execution, node_id: str) -> None:
    version = service.version_row(session, execution)
    if version is None or node_id not in service.submittable_for(version).spec.nodes:
        raise NotFound(f"execution {execution.id} has no node {node_id}")


@router.get(
    "/executions/{execution_id}/events",
    response_class=EventSourceResponse,
    responses={200: {"content": {"text/event-stream": {}}}},
)
def execution_event_stream(
    request: Request,
    execution: OwnExecution,
    session: SessionDep,
    dagster: DagsterDep,
    last_event_id: Annotated[str | None, Header(alias="Last-Event-ID")] = None,
) -> EventSourceResponse:
    """The execution's live events across all its runs, until the execution is terminal.

    Reconnect with `Last-Event-ID` to resume after the last event received."""
    after = None
    if last_event_id:
        try:
            after = parse_event_id(execution.id, last_event_id)
            check_event_id(dagster, execution.id, after)
        except EventIdError as exc:
            raise InvalidLastEventId(str(exc)) from exc
    version = service.version_row(session, execution)
    node_ids = service.compiled_for(version).node_ids if version is not None else {}
    session.commit()  # the stream may last an hour: give the connection back before it starts
    feed: EventFeed = request.app.state.events
    return EventSourceResponse(
        feed.follow(execution.id, node_ids, after=after),
        headers={"Cache-Control": "no-cache"},
        ping=HEARTBEAT_SECONDS,
        sep=SEPARATOR,
    )


__all__ = ["ApiError", "router"]
