"""The run queue: queued and running counts per queue, for the caller, per workflow."""

from fastapi import APIRouter
from pydantic import BaseModel, Field

from flowmaestro_api.deps import CurrentUser, DagsterDep, SessionDep
from flowmaestro_dagster.control import queues as service

router = APIRouter(tags=["queues"])


class QueueCounts(BaseModel):
    queued: int = Field(description="runs waiting in Dagster's run queue")
    running: int = Field(description="runs starting, running or being cancelled")


class QueuePublic(QueueCounts):
    name: str
    limit: int | None = Field(description="runs of this queue in progress at once (None: none)")


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
