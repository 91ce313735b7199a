"""Request and response schemas (XCreate / XUpdate / XPublic / XList).

`ExecutionCreate` and `WorkflowSettingsIn` are the control plane's (control/requests.py), and so
are `AlertRuleCreate` / `AlertRuleUpdate` (control/alerts.py).
"""

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from flowmaestro_dagster.control.requests import WorkflowSettingsIn

ExecutionStatus = Literal[
    "queued", "running", "waiting", "pausing", "paused", "succeeded", "failed", "cancelled"
]


class _Schema(BaseModel):
    model_config = ConfigDict(from_attributes=True)


class WorkflowCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(default=None, max_length=300)
    description: str | None = Field(default=None, max_length=10_000)
    definition: dict[str, Any]
    settings: WorkflowSettingsIn | None = None


class WorkflowUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(default=None, max_length=300)
    description: str | None = Field(default=None, max_length=10_000)
    definition: dict[str, Any] | None = None
    settings: WorkflowSettingsIn | None = None


class WorkflowPublic(_Schema):
    id: str
    name: str
    description: str | None
    latest_version: int
    deployed_version: int | None
    priority: int
    queue: str | None
    concurrency_limit: int | None
    one_at_a_time_per_user: bool
    idempotency_ttl_seconds: int | None
    created_at: datetime
    updated_at: datetime
    archived_at: datetime | None
    warnings: list[dict[str, Any]] = Field(default_factory=list)


class WorkflowList(BaseModel):
    items: list[WorkflowPublic]
    total: int


class VersionPublic(_Schema):
    version: int
    status: str
    job_name: str
    source_version: int | None
    created_at: datetime
    deployed_at: datetime | None
    definition: dict[str, Any] | None = None


class VersionList(BaseModel):
    items: list[VersionPublic]


class Deployment(BaseModel):
    workflow_id: str
    version: int
    job_name: str
    location: str
    runnable: bool
    reload_seconds: float | None = None
    detail: str | None = None


class DiffChange(BaseModel):
    id: str
    changes: dict[str, dict[str, Any]]


class DiffSection(BaseModel):
    added: list[Any] = Field(default_factory=list)
    removed: list[Any] = Field(default_factory=list)
    changed: list[DiffChange] = Field(default_factory=list)


class VersionDiff(BaseModel):
    workflow_id: str
    from_version: int
    to_version: int
    nodes: DiffSection
    edges: DiffSection
    settings: dict[str, dict[str, Any]] = Field(default_factory=dict)


class NodeStatusPublic(BaseModel):
    node_id: str
    label: str
    type: str
    status: str
    attempts: int = 0
    iterations: int | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    duration_ms: float | None = None
    output: Any = None
    error: str | None = None


class RunPublic(BaseModel):
    run_id: str
    status: str
    parent_run_id: str | None = None
    created_at: datetime | None = None
    url: str


class WaitpointPublic(BaseModel):
    id: str
    node_id: str
    iteration: str
    kind: str
    status: str
    created_at: datetime
    due_at: datetime | None = None
    expires_at: datetime | None = None
    resolved_at: datetime | None = None
    callback_url: str | None = None
    child_execution_id: str | None = None
    approval_url: str | None = Field(
        default=None, description="an approval in the API: GET it, POST .../decision"
    )
    page_url: str | None = Field(
        default=None,
        description="the signed approval page, for a pending approval the caller may decide "
        "(the link decides without an API key, so it is not shown to an owner who is not "
        "an approver)",
    )
    notifications: dict[str, Any] | None = Field(
        default=None, description="approver notifications: state and every attempt"
    )


class WaitpointList(BaseModel):
    items: list[WaitpointPublic]


class CheckpointPublic(BaseModel):
    """A checkpoint: when its state was saved, when it expires, which nodes it holds."""

    model_config = ConfigDict(from_attributes=True)

    node_id: str
    iteration: str
    name: str
    run_id: str
    pause_here: bool
    saved_at: datetime
    expires_at: datetime
    nodes: list[str] = Field(default_factory=list)


class CheckpointDetail(CheckpointPublic):
    """A checkpoint with its state: `{inputs, outputs (by node id), shared, iteration}`."""

    state: dict[str, Any]


class CheckpointList(BaseModel):
    items: list[CheckpointPublic]


class NodeProgressPublic(BaseModel):
    """A batch node's items: done of total, as its latest progress report said."""

    done: int
    total: int
    succeeded: int = 0
    failed: int = 0
    skipped: int = 0
    finished: bool = False


class ExecutionPublic(_Schema):
    id: str
    workflow_id: str
    version: int
    status: ExecutionStatus
    priority: int
    queue: str | None
    inputs: dict[str, Any]
    outputs: dict[str, Any] | None = None
    error: str | None = None
    created_at: datetime
    launched_at: datetime | None = None
    paused_at: datetime | None = None  # set while the execution is paused (POST /pause)
    started_at: datetime | None = None
    finished_at: datetime | None = None
    run_id: str | None = None
    url: str | None = None
    runs: list[RunPublic] = Field(default_factory=list)
    nodes: list[NodeStatusPublic] = Field(default_factory=list)
    queue_position: int | None = None
    queued_reason: str | None = None
    waitpoints: list[WaitpointPublic] = Field(default_factory=list)
    progress: dict[str, NodeProgressPublic] = Field(
        default_factory=dict, description="node id -> progress of its items (batch nodes)"
    )
    idempotent_replayed: bool = Field(
        default=False,
        description="true on the answer to a repeated Idempotency-Key (the earlier execution, "
        "not a new one; header `Idempotent-Replayed: true`); false everywhere else",
    )


class ExecutionList(BaseModel):
    items: list[ExecutionPublic]
    total: int


# -- webhook triggers (docs/webhooks.md) ---------------------------------------------------------


class TriggerSchedule(BaseModel):
    cron: str
    timezone: str = Field(description="the trigger's, else FLOWMAESTRO_SCHEDULE_TIMEZONE")
    overlap: str
    missed_ticks: str
    dagster_schedule: str = Field(description="the schedule's name in the Dagster UI")
    next_fire_at: datetime | None = Field(
        default=None,
        description="the next slot while deployed (unless an operator stopped the schedule)",
    )


class TriggerPublic(BaseModel):
    id: str
    type: str
    provider: str | None = None
    event: str | None = None
    output_variable: str | None = None
    webhook: bool
    url: str | None = Field(default=None, description="where a webhook trigger is delivered")
    secret: str | None = Field(
        default=None, description="the webhook's signing / bearer secret (derived, not stored)"
    )
    schedule: TriggerSchedule | None = Field(
        default=None, description="a schedule trigger's schedule (the one a deploy turns on)"
    )


class TriggerList(BaseModel):
    items: list[TriggerPublic]
    version: int | None = Field(description="the version read: the deployed one, else the latest")
    live: bool = Field(description="the workflow is deployed: its webhook URLs accept deliveries")


class HookAccepted(BaseModel):
    status: Literal["accepted", "duplicate"]
    execution_id: str


class DeliveryPublic(_Schema):
    id: str
    trigger_id: str
    delivery_id: str | None
    received_at: datetime
    outcome: Literal["accepted", "duplicate", "rejected"]
    reason: str | None
    execution_id: str | None


class DeliveryList(BaseModel):
    items: list[DeliveryPublic]


class AttemptTiming(BaseModel):
    """Where an attempt's time went, derived from the attempt rows (docs/observability.md)."""

    queued_ms: float | None = Field(
        default=None,
        description="the latest end of its upstream nodes' attempts in the same run to this "
        "attempt's start (first attempts only; null for a node with no upstream in the run)",
    )
    running_ms: float = Field(description="the attempt's start to its end, in the op")
    backoff_ms: float | None = Field(
        default=None, description="a retried attempt's end to the next attempt's start"
    )
    waiting_ms: float | None = Field(
        default=None,
        description="a parked attempt's end to the resumed attempt's start (up to now while "
        "nothing resumed it)",
    )


class RetryDecisionPublic(BaseModel):
    retryable: bool | None = Field(description="whether another attempt may succeed")
    retried: bool = Field(description="whether another attempt was scheduled")
    delay_seconds: float | None = Field(description="the wait chosen before the next attempt")
    max_attempts: int | None = None
    handled_by: str | None = Field(
        default=None,
        description="after the last attempt: continue | fallback | goto | error_edge | fail",
    )


class AttemptError(BaseModel):
    error_class: str
    message: str | None = None
    stack: str | None = None


class NodeAttemptPublic(BaseModel):
    attempt: int
    iteration: str = Field(description="the loop iteration (`0`, `1.2`); empty outside loops")
    run_id: str
    step_key: str
    status: Literal["succeeded", "retrying", "failed", "handled", "parked"]
    started_at: datetime
    finished_at: datetime
    inputs: Any = Field(
        description="`config`: the node's settings with `{{...}}` resolved, credentials shown "
        "as `***`; `upstream`: the nodes whose output it received"
    )
    output: Any = Field(description="the node's output; a preview when output_truncated")
    output_bytes: int | None = None
    output_truncated: bool = False
    output_url: str | None = Field(
        default=None, description="where the whole output is served, when it was truncated"
    )
    logs: list[dict[str, Any]] = Field(description="lines the node logged (at, level, message)")
    logs_dropped: int = Field(default=0, description="lines past the cap, not kept")
    error: AttemptError | None = None
    retry: RetryDecisionPublic | None = None
    timing: AttemptTiming


class NodeDetail(BaseModel):
    execution_id: str
    node_id: str
    attempts: list[NodeAttemptPublic]


# -- alerts (docs/observability.md#alerts) --------------------------------------------------------


class AlertRulePublic(_Schema):
    id: str
    name: str
    metric: str
    workflow_id: str | None = Field(description="None: every workflow of the owner")
    window_seconds: int
    threshold: float | None = Field(description="failure_rate: the failed fraction that fires")
    min_executions: int | None = Field(description="failure_rate: finished ones before it may")
    state: str | None = Field(description="execution_stuck: the state")
    channel: dict[str, Any] = Field(description="{type: email|slack|webhook, connection, to}")
    enabled: bool
    created_at: datetime
    updated_at: datetime


class AlertRuleList(BaseModel):
    items: list[AlertRulePublic]


class AlertPublic(BaseModel):
    id: str
    rule_id: str
    rule: str = Field(description="the rule's name")
    metric: str
    subject: str = Field(description="workflow:<id> or queue:<name>")
    label: str
    workflow_id: str | None
    status: Literal["firing", "resolved"]
    value: float | None = Field(description="the failed fraction, or the oldest age in seconds")
    summary: str
    details: dict[str, Any]
    fired_at: datetime
    resolved_at: datetime | None
    evaluated_at: datetime
    notified_status: str | None = Field(description="the status the channel was last told of")
    notified_at: datetime | None
    notify_attempts: int
    notify_error: str | None


class AlertList(BaseModel):
    items: list[AlertPublic]
