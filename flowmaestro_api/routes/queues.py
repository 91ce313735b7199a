"""The run queue: queued and running counts per queue, for the caller, per workflow; and the
queue controls: pause and resume a queue (operators), change the priority of queued
executions, give a user a run limit of their own (operators). docs/queues.md."""

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Path
from pydantic import BaseModel, ConfigDict, Field, field_validator

from flowmaestro_api.deps import (
    CurrentUser,
    DagsterDep,
    Operator,
    OwnExecution,
    SessionDep,
    SessionRoute,
    SettingsDep,
)
from flowmaestro_dagster.control import queues as service
from flowmaestro_dagster.control.requests import parse_priority
from flowmaestro_dagster.control.workflows import get_workflow
from flowmaestro_dagster.errors import Forbidden
from flowmaestro_dagster.store.models import PausedQueue

router = APIRouter(route_class=SessionRoute, tags=["queues"])


class QueueCounts(BaseModel):
    queued: int = Field(description="runs waiting in Dagster's run queue")
    running: int = Field(description="runs starting, running or being cancelled")


class QueuePublic(QueueCounts):
    name: str
    limit: int | None = Field(description="runs of this queue in progress at once (None: none)")
    paused: bool = Field(
        default=False, description="an operator paused it: its queued runs wait until resumed"
    )


class UserQueuePublic(QueueCounts):
    user_id: str
    limit: int | None = Field(description="the per-user limit (None: none)")
    waiting: int = Field(description="executions parked at a waitpoint: they hold no slot")
    pending_launch: int = Field(description="executions submitted but not in the queue yet")


class WorkflowQueuePublic(QueueCounts):
    workflow_id: str
    name: str
    concurrency_limit: int | None = Field(description="the workflow's setting")
    applied_limit: int | None = Field(
        description="the limit Dagster enforces now (its pool's slots); equals the setting "
        "unless applying it failed"
    )
    one_at_a_time_per_user: bool
    waiting: int


class QueuesPublic(QueueCounts):
    max_concurrent_runs: int | None = Field(description="the instance limit (None: none)")
    queues: list[QueuePublic]
    users: list[UserQueuePublic] = Field(description="the caller")
    workflows: list[WorkflowQueuePublic] = Field(description="the caller's deployed workflows")


@router.get("/queues", response_model=QueuesPublic)
def get_queues(session: SessionDep, user: CurrentUser, dagster: DagsterDep) -> QueuesPublic:
    """Queued and running runs: on the instance and per queue (everyone's runs, counts only),
    for the caller, and per workflow of the caller's. `GET /executions/{id}` says why a queued
    execution waits."""
    overview = service.overview(session, dagster.instance, user)
    return QueuesPublic(
        max_concurrent_runs=overview.max_concurrent_runs,
        queued=overview.queued,
        running=overview.running,
        queues=[QueuePublic(**q) for q in overview.queues],
        users=[UserQueuePublic(**u) for u in overview.users],
        workflows=[WorkflowQueuePublic(**w) for w in overview.workflows],
    )


# -- queue controls -------------------------------------------------------------------------------

QueueName = Annotated[str, Path(min_length=1, max_length=100)]


class QueueControlPublic(BaseModel):
    name: str
    paused: bool
    paused_at: datetime | None = None
    paused_by: str | None = Field(default=None, description="the operator's email")
    queued_runs: int = Field(description="queued runs the pause now holds, or the resume released")


def _control(session: Any, name: str, queued_runs: int) -> QueueControlPublic:
    row = session.get(PausedQueue, name)
    return QueueControlPublic(
        name=name,
        paused=row is not None,
        paused_at=row.paused_at if row is not None else None,
        paused_by=row.paused_by if row is not None else None,
        queued_runs=queued_runs,
    )


@router.post("/queues/{name}/pause", response_model=QueueControlPublic)
def pause_queue(
    name: QueueName,
    session: SessionDep,
    operator: Operator,
    dagster: DagsterDep,
    settings: SettingsDep,
) -> QueueControlPublic:
    """Pause a queue (operators): its queued runs stay queued, running ones finish, new ones
    queue behind the pause; Dagster keeps them queued under a limit of 0 on the run tag
    `flowmaestro/queue_paused: true`. Idempotent; an unknown queue is 404."""
    held = service.pause_queue(session, dagster.instance, settings, name=name, by=operator.email)
    return _control(session, name, held)


@router.post("/queues/{name}/resume", response_model=QueueControlPublic)
def resume_queue(
    name: QueueName,
    session: SessionDep,
    operator: Operator,
    dagster: DagsterDep,
    settings: SettingsDep,
) -> QueueControlPublic:
    """Resume a paused queue (operators): its runs start at the next dequeue pass, each once,
    in priority then FIFO order. Idempotent; an unknown queue is 404."""
    released = service.resume_queue(session, dagster.instance, settings, name=name)
    return _control(session, name, released)


class PriorityChange(BaseModel):
    model_config = ConfigDict(extra="forbid")

    priority: int | str = Field(
        description="low / normal / high (-10 / 0 / 10) or an integer in -1000..1000"
    )

    @field_validator("priority", mode="before")
    @classmethod
    def _priority(cls, value: Any) -> int:
        return parse_priority(value)  # before pydantic's coercion: `true` is no priority


class PriorityChanged(BaseModel):
    priority: int
    execution_ids: list[str] = Field(
        description="executions whose priority changed (queued, or not yet handed to Dagster)"
    )
    queued_runs: int = Field(description="runs in Dagster's queue re-tagged `dagster/priority`")


def _changed(priority: int, result: tuple[list[str], int]) -> PriorityChanged:
    return PriorityChanged(priority=priority, execution_ids=result[0], queued_runs=result[1])


@router.post("/executions/{execution_id}/priority", response_model=PriorityChanged)
def change_execution_priority(
    body: PriorityChange, execution: OwnExecution, session: SessionDep, dagster: DagsterDep
) -> PriorityChanged:
    """Change the priority of a queued (or waiting, or paused) execution: its run in Dagster's
    queue is re-tagged and moves at the next dequeue pass; its later runs keep the new value.
    A finished execution is 409."""
    priority = int(body.priority)
    return _changed(
        priority,
        service.set_priority(session, dagster.instance, priority=priority, execution=execution),
    )


@router.post("/workflows/{workflow_id}/queued/priority", response_model=PriorityChanged)
def change_workflow_queued_priority(
    workflow_id: str,
    body: PriorityChange,
    session: SessionDep,
    user: CurrentUser,
    dagster: DagsterDep,
) -> PriorityChanged:
    """Change the priority of every queued execution of one of the caller's workflows."""
    workflow = get_workflow(session, user=user, workflow_id=workflow_id)
    priority = int(body.priority)
    return _changed(
        priority,
        service.set_priority(session, dagster.instance, priority=priority, workflow_id=workflow.id),
    )


@router.post("/queues/users/{user_id}/priority", response_model=PriorityChanged)
def change_user_queued_priority(
    user_id: str,
    body: PriorityChange,
    session: SessionDep,
    user: CurrentUser,
    dagster: DagsterDep,
    settings: SettingsDep,
) -> PriorityChanged:
    """Change the priority of every queued execution of a user: the caller's own (`me` or their
    id), anyone's for operators."""
    target = user.id if user_id == "me" else user_id
    if target != user.id and not settings.is_operator(user.email):
        raise Forbidden("operators only: another user's executions")
    priority = int(body.priority)
    return _changed(
        priority, service.set_priority(session, dagster.instance, priority=priority, user_id=target)
    )


class UserLimitChange(BaseModel):
    model_config = ConfigDict(extra="forbid")

    limit: int | None = Field(
        description="runs the user may have in progress at once, below the instance's "
        "per-user limit (0 holds all their runs queued); null: back to the instance's"
    )


class UserLimitPublic(BaseModel):
    user_id: str
    limit: int | None = Field(description="the limit in force for this user (None: none)")
    own_limit: bool = Field(description="the user has a limit of their own")
    instance_limit: int | None = Field(description="FLOWMAESTRO_USER_RUN_LIMIT")


@router.put("/queues/users/{user_id}/limit", response_model=UserLimitPublic)
def set_user_limit(
    user_id: str,
    body: UserLimitChange,
    session: SessionDep,
    operator: Operator,
    dagster: DagsterDep,
    settings: SettingsDep,
) -> UserLimitPublic:
    """Give a user a run limit of their own (operators), at once: their queued and running runs
    are re-tagged, so the limit counts running ones too. Above the instance's per-user limit is
    422 (that one is instance configuration: a restart)."""
    limit = service.set_user_limit(
        session, dagster.instance, settings, user_id=user_id, limit=body.limit, by=operator.email
    )
    return UserLimitPublic(
        user_id=user_id,
        limit=limit,
        own_limit=body.limit is not None,
        instance_limit=settings.user_run_limit,
    )
