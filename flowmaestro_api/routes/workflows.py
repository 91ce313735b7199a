"""Workflows and versions."""

import logging
import time
from collections.abc import Callable
from functools import partial
from typing import Annotated, Any, TypeVar

from anyio import to_thread
from fastapi import APIRouter, Path, Query, Request, Response, status
from starlette.concurrency import run_in_threadpool

from flowmaestro_api.deps import CurrentUser, DagsterDep, SessionDep, SessionRoute, SettingsDep
from flowmaestro_api.errors import PlatformError
from flowmaestro_api.schemas import (
    Deployment,
    VersionDiff,
    VersionList,
    VersionPublic,
    WorkflowCreate,
    WorkflowList,
    WorkflowPublic,
    WorkflowUpdate,
)
from flowmaestro_dagster.control import workflows as service
from flowmaestro_dagster.control.client import DagsterClient
from flowmaestro_dagster.spec.problems import Problem, warning

log = logging.getLogger(__name__)
T = TypeVar("T")

router = APIRouter(route_class=SessionRoute, prefix="/workflows", tags=["workflows"])
MAX_OFFSET = 1_000_000
MAX_VERSION = 1_000_000
VersionNumber = Annotated[int, Path(ge=1, le=MAX_VERSION)]


def _apply_limits(dagster: DagsterClient, workflow: Any) -> Problem | None:
    """Give Dagster the workflow's concurrency settings now (pool slots, run tags); a failure
    is a warning: the settings are stored and the next deploy or settings change retries."""
    from flowmaestro_dagster.control.queues import apply_workflow_limits

    try:
        apply_workflow_limits(dagster.instance, workflow)
    except Exception as exc:  # noqa: BLE001 - stored anyway; reported to the caller
        return warning(
            "limits_not_applied",
            f"the concurrency settings are stored but Dagster does not enforce them yet: {exc}",
            field="settings",
        )
    return None


def _public(workflow: Any, warnings: list[Any] | None = None) -> WorkflowPublic:
    public = WorkflowPublic.model_validate(workflow)
    public.warnings = [w.model_dump(exclude_none=True) for w in warnings or []]
    return public


@router.post("", status_code=status.HTTP_201_CREATED, response_model=WorkflowPublic)
def create_workflow(body: WorkflowCreate, session: SessionDep, user: CurrentUser) -> WorkflowPublic:
    """Store a workflow (either FlowMaestro shape) as version 1, a draft. 422 lists the problems."""
    workflow, warnings = service.create_workflow(
        session,
        user=user,
        definition=body.definition,
        name=body.name,
        description=body.description,
        settings=body.settings,
    )
    session.commit()
    return _public(workflow, warnings)


@router.get("", response_model=WorkflowList)
def list_workflows(
    session: SessionDep,
    user: CurrentUser,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
    include_archived: bool = False,
) -> WorkflowList:
    rows, total = service.list_workflows(
        session, user=user, limit=limit, offset=offset, include_archived=include_archived
    )
    return WorkflowList(items=[_public(r) for r in rows], total=total)


@router.get("/{workflow_id}", response_model=WorkflowPublic)
def get_workflow(workflow_id: str, session: SessionDep, user: CurrentUser) -> WorkflowPublic:
    return _public(service.get_workflow(session, user=user, workflow_id=workflow_id))


@router.patch("/{workflow_id}", response_model=WorkflowPublic)
def update_workflow(
    workflow_id: str,
    body: WorkflowUpdate,
    session: SessionDep,
    user: CurrentUser,
    dagster: DagsterDep,
) -> WorkflowPublic:
    """Change name, description or settings; a new definition becomes a new draft version.

    Concurrency settings (limit, one at a time per user) of a deployed workflow apply at once,
    to runs already queued too; nothing restarts.
    """
    workflow, warnings = service.update_workflow(
        session,
        user=user,
        workflow_id=workflow_id,
        definition=body.definition,
        name=body.name,
        description=body.description,
        settings=body.settings,
    )
    session.commit()
    changed = body.settings.model_fields_set if body.settings is not None else set()
    if (
        changed & {"concurrency_limit", "one_at_a_time_per_user"}
        and workflow.deployed_version is not None
        and (problem := _apply_limits(dagster, workflow))
    ):
        warnings = [*warnings, problem]
    return _public(workflow, warnings)


@router.delete("/{workflow_id}", status_code=status.HTTP_204_NO_CONTENT)
async def archive_workflow(
    workflow_id: str,
    request: Request,
    session: SessionDep,
    user: CurrentUser,
    settings: SettingsDep,
    dagster: DagsterDep,
) -> Response:
    """Archive (soft-delete): no new executions; running ones finish; its schedule stops."""

    def archive() -> None:
        service.archive_workflow(session, user=user, workflow_id=workflow_id)
        session.commit()

    await run_in_threadpool(archive)
    location = service.location_for(workflow_id, settings.code_location_shards)
    await on_dagster_threads(request, partial(_reload_soon, dagster, location))
    return Response(status_code=status.HTTP_204_NO_CONTENT)


async def on_dagster_threads(request: Request, call: Callable[[], T]) -> T:
    """Run a call that waits on Dagster (a reload: seconds) on the app's own threads for that,
    not on a request thread (`FLOWMAESTRO_API_DAGSTER_THREADS`)."""
    return await to_thread.run_sync(call, limiter=request.app.state.dagster_limiter)


def _reload_soon(dagster: DagsterClient, location: str) -> None:
    """Reload the location so what left it (a schedule) goes now; if Dagster does not answer,
    its next reload does it (a stale schedule's ticks are refused meanwhile)."""
    try:
        dagster.reload_location(location)
    except PlatformError as exc:
        log.warning("could not reload %s after archiving: %s", location, exc.detail)


@router.get("/{workflow_id}/versions", response_model=VersionList)
def list_versions(workflow_id: str, session: SessionDep, user: CurrentUser) -> VersionList:
    workflow = service.get_workflow(session, user=user, workflow_id=workflow_id)
    rows = service.list_versions(session, workflow=workflow)
    return VersionList(
        items=[
            VersionPublic.model_validate(r).model_copy(update={"definition": None}) for r in rows
        ]
    )


@router.get("/{workflow_id}/versions/{version}", response_model=VersionPublic)
def get_version(
    workflow_id: str, version: VersionNumber, session: SessionDep, user: CurrentUser
) -> VersionPublic:
    workflow = service.get_workflow(session, user=user, workflow_id=workflow_id)
    return VersionPublic.model_validate(
        service.get_version(session, workflow=workflow, version=version)
    )


@router.post("/{workflow_id}/versions/{version}/deploy", response_model=Deployment)
async def deploy_version(
    workflow_id: str,
    version: VersionNumber,
    request: Request,
    session: SessionDep,
    user: CurrentUser,
    settings: SettingsDep,
    dagster: DagsterDep,
) -> Deployment:
    """Deploy a version: it becomes the job new executions run; running ones keep theirs.

    The version's code location is reloaded (only that one); `runnable` says whether the job
    was visible in Dagster when this answered.
    """

    def mark() -> tuple[str, Any]:
        row = service.mark_deployed(session, user=user, workflow_id=workflow_id, version=version)
        session.commit()
        workflow = service.get_workflow(session, user=user, workflow_id=workflow_id)
        session.commit()  # no connection held while the deploy waits on Dagster
        return row.job_name, workflow

    job_name, workflow = await run_in_threadpool(mark)
    deployment = Deployment(
        workflow_id=workflow_id,
        version=version,
        job_name=job_name,
        location=service.location_for(workflow_id, settings.code_location_shards),
        runnable=False,
    )
    return await on_dagster_threads(
        request, partial(_deploy_in_dagster, dagster, workflow, deployment)
    )


def _deploy_in_dagster(dagster: DagsterClient, workflow: Any, deployment: Deployment) -> Deployment:
    """Dagster's part of a deploy: the workflow's limits, the location's reload, the job."""
    problem = _apply_limits(dagster, workflow)
    started = time.monotonic()
    try:
        dagster.reload_location(deployment.location)
        runnable = dagster.wait_for_job(deployment.location, deployment.job_name, timeout=30)
        detail = None if runnable else "the code location reloaded but the job is not visible yet"
    except PlatformError as exc:
        runnable, detail = (
            False,
            f"deployed; Dagster will pick it up on its next reload ({exc.detail})",
        )
    if problem is not None:
        detail = "; ".join(d for d in (detail, problem.message) if d)
    return deployment.model_copy(
        update={
            "runnable": runnable,
            "reload_seconds": round(time.monotonic() - started, 3),
            "detail": detail,
        }
    )


@router.post("/{workflow_id}/versions/{version}/archive", response_model=VersionPublic)
def archive_version(
    workflow_id: str, version: VersionNumber, session: SessionDep, user: CurrentUser
) -> VersionPublic:
    row = service.archive_version(session, user=user, workflow_id=workflow_id, version=version)
    session.commit()
    return VersionPublic.model_validate(row).model_copy(update={"definition": None})


@router.post(
    "/{workflow_id}/versions/{version}/revert",
    status_code=status.HTTP_201_CREATED,
    response_model=VersionPublic,
)
def revert_version(
    workflow_id: str, version: VersionNumber, session: SessionDep, user: CurrentUser
) -> VersionPublic:
    """A new draft version with the definition of an older one."""
    row = service.revert_to(session, user=user, workflow_id=workflow_id, version=version)
    session.commit()
    return VersionPublic.model_validate(row)


@router.get("/{workflow_id}/diff", response_model=VersionDiff)
def diff_versions(
    workflow_id: str,
    session: SessionDep,
    user: CurrentUser,
    from_version: Annotated[int, Query(alias="from", ge=1, le=MAX_VERSION)],
    to_version: Annotated[int, Query(alias="to", ge=1, le=MAX_VERSION)],
) -> VersionDiff:
    """Nodes, edges and config added, removed or changed (positions are ignored)."""
    workflow = service.get_workflow(session, user=user, workflow_id=workflow_id)
    old = service.get_version(session, workflow=workflow, version=from_version)
    new = service.get_version(session, workflow=workflow, version=to_version)
    diff = service.diff_definitions(old.definition, new.definition)
    return VersionDiff(
        workflow_id=workflow_id, from_version=from_version, to_version=to_version, **diff
    )
