"""The platform database: SQLAlchemy 2 models. Invariants live in constraints, not in code."""

import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    CheckConstraint,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.types import TypeDecorator

JsonType = JSON().with_variant(JSONB(), "postgresql")


class UtcDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite returns naive ones)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value.astimezone(UTC) if value is not None else None

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value


def new_id() -> str:
    return str(uuid.uuid4())


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    type_annotation_map = {datetime: UtcDateTime(), dict[str, Any]: JsonType}


class User(Base):
    __tablename__ = "users"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    email: Mapped[str] = mapped_column(String(320), unique=True)
    name: Mapped[str] = mapped_column(String(200), default="")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class ApiKey(Base):
    """An API key; only its SHA-256 is stored (keys are long random strings)."""

    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    prefix: Mapped[str] = mapped_column(String(16), unique=True)
    key_hash: Mapped[str] = mapped_column(String(64))
    name: Mapped[str] = mapped_column(String(200), default="")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_used_at: Mapped[datetime | None] = mapped_column(default=None)
    revoked_at: Mapped[datetime | None] = mapped_column(default=None)

    user: Mapped[User] = relationship()


class Workflow(Base):
    __tablename__ = "workflows"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    owner_id: Mapped[str] = mapped_column(ForeignKey("users.id"), index=True)
    name: Mapped[str] = mapped_column(String(300))
    description: Mapped[str | None] = mapped_column(Text, default=None)
    latest_version: Mapped[int] = mapped_column(Integer, default=0)
    deployed_version: Mapped[int | None] = mapped_column(Integer, default=None)
    priority: Mapped[int] = mapped_column(Integer, default=0)
    queue: Mapped[str | None] = mapped_column(String(100), default=None)
    concurrency_limit: Mapped[int | None] = mapped_column(Integer, default=None)
    one_at_a_time_per_user: Mapped[bool] = mapped_column(Boolean, default=False)
    idempotency_ttl_seconds: Mapped[int | None] = mapped_column(Integer, default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
    archived_at: Mapped[datetime | None] = mapped_column(default=None)


class WorkflowVersion(Base):
    __tablename__ = "workflow_versions"
    __table_args__ = (UniqueConstraint("workflow_id", "version", name="uq_workflow_version"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    workflow_id: Mapped[str] = mapped_column(ForeignKey("workflows.id", ondelete="CASCADE"))
    version: Mapped[int] = mapped_column(Integer)
    definition: Mapped[dict[str, Any]] = mapped_column(JsonType)
    status: Mapped[str] = mapped_column(String(20), default="draft")  # draft|deployed|archived
    source_version: Mapped[int | None] = mapped_column(Integer, default=None)
    job_name: Mapped[str] = mapped_column(String(200))
    created_by: Mapped[str] = mapped_column(ForeignKey("users.id"))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    deployed_at: Mapped[datetime | None] = mapped_column(default=None)


class Execution(Base):
    __tablename__ = "executions"
    __table_args__ = (
        Index("ix_executions_workflow_created", "workflow_id", "created_at"),
        Index("ix_executions_pending_launch", "launched_at", "status"),
        Index("ix_executions_status_queue", "status", "queue", "priority", "created_at"),
        # Workflow analytics (issue 20): a range of a workflow's executions read from the index
        # alone (status, duration, replays), never the rows; and the few whose facts are not
        # recorded yet (under way), whose node attempts analytics read instead.
        Index(
            "ix_executions_analytics",
            "workflow_id",
            "created_at",
            "status",
            "duration_ms",
            "replays",
        ),
        Index(
            "ix_executions_unsettled",
            "workflow_id",
            "created_at",
            sqlite_where=text("facts_recorded_at IS NULL"),
            postgresql_where=text("facts_recorded_at IS NULL"),
        ),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    workflow_id: Mapped[str] = mapped_column(ForeignKey("workflows.id"), index=True)
    version: Mapped[int] = mapped_column(Integer)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id"), index=True)
    status: Mapped[str] = mapped_column(String(20), default="queued")
    priority: Mapped[int] = mapped_column(Integer, default=0)
    queue: Mapped[str | None] = mapped_column(String(100), default=None)
    inputs: Mapped[dict[str, Any]] = mapped_column(JsonType, default=dict)
    job_name: Mapped[str] = mapped_column(String(200))
    location_name: Mapped[str] = mapped_column(String(200))
    run_id: Mapped[str | None] = mapped_column(String(64), default=None, index=True)
    latest_run_id: Mapped[str | None] = mapped_column(String(64), default=None)
    launch_token: Mapped[str | None] = mapped_column(String(36), default=None)
    launch_claimed_at: Mapped[datetime | None] = mapped_column(default=None)
    launch_attempts: Mapped[int] = mapped_column(Integer, default=0)
    # A failed launch waits until then for the reconciler's next attempt (backoff).
    launch_retry_at: Mapped[datetime | None] = mapped_column(default=None)
    launched_at: Mapped[datetime | None] = mapped_column(default=None)
    started_at: Mapped[datetime | None] = mapped_column(default=None)
    finished_at: Mapped[datetime | None] = mapped_column(default=None)
    error: Mapped[str | None] = mapped_column(Text, default=None)
    outputs: Mapped[dict[str, Any] | None] = mapped_column(JsonType, default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    # Pause (issue 10): the terminated run a resume re-executes; cleared by the one resume.
    paused_run_id: Mapped[str | None] = mapped_column(String(64), default=None)
    paused_at: Mapped[datetime | None] = mapped_column(default=None)
    resume_claimed_at: Mapped[datetime | None] = mapped_column(default=None)
    # Cancel (issue 15): set by the one cancel that wins; every launch, retry and resume records
    # its run only while it is unset, and a retry's claim clears it.
    cancelled_at: Mapped[datetime | None] = mapped_column(default=None)
    # Duplicates prevented (issue 21): requests answered with this execution as a replay of its
    # idempotency key, each one `UPDATE ... SET replays = replays + 1`. Kept here, not on the key,
    # which is deleted when it expires: analytics count replays after that.
    replays: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    last_replayed_at: Mapped[datetime | None] = mapped_column(default=None)
    # Analytics facts (issue 20), written where the status is synced (control/executions.py
    # `refresh`) each time the execution settles: submission to its last run's end (finished
    # executions only) and its nodes' numbers in `execution_node_stats`; None while a run is
    # under way (analytics then read its node attempts).
    duration_ms: Mapped[float | None] = mapped_column(Float, default=None)
    facts_recorded_at: Mapped[datetime | None] = mapped_column(default=None)


class IdempotencyKey(Base):
    """A request's Idempotency-Key: unique per user and workflow (a constraint, not a check)."""

    __tablename__ = "idempotency_keys"
    __table_args__ = (
        UniqueConstraint("user_id", "workflow_id", "key", name="uq_idempotency_key"),
        Index("ix_idempotency_expires", "expires_at"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    workflow_id: Mapped[str] = mapped_column(ForeignKey("workflows.id", ondelete="CASCADE"))
    key: Mapped[str] = mapped_column(String(255))
    request_hash: Mapped[str] = mapped_column(String(64))
    execution_id: Mapped[str] = mapped_column(ForeignKey("executions.id", ondelete="CASCADE"))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime] = mapped_column()


class NodeOutput(Base):
    """A step output (the execution state after a node), stored by the IO manager."""

    __tablename__ = "node_outputs"

    run_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    step_key: Mapped[str] = mapped_column(String(300), primary_key=True)
    output_name: Mapped[str] = mapped_column(String(200), primary_key=True)
    execution_id: Mapped[str | None] = mapped_column(String(36), index=True, default=None)
    node_id: Mapped[str | None] = mapped_column(String(300), default=None)
    mapping_key: Mapped[str | None] = mapped_column(String(200), default=None)
    value: Mapped[dict[str, Any]] = mapped_column(JsonType)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Waitpoint(Base):
    """A point where an execution parks: a due time, an approval, a callback, a child run.

    One row per (execution, node, loop iteration): re-running the node finds its waitpoint
    instead of creating another. Status: pending → resolved → resuming → resumed (or expired
    / cancelled); only a conditional UPDATE moves it, so each waitpoint resumes once.
    """

    __tablename__ = "waitpoints"
    __table_args__ = (
        UniqueConstraint("execution_id", "node_id", "iteration", name="uq_waitpoint_node"),
        Index("ix_waitpoints_status_due", "status", "due_at"),
        Index("ix_waitpoints_status_expires", "status", "expires_at"),
        Index("ix_waitpoints_execution", "execution_id", "status"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    execution_id: Mapped[str] = mapped_column(ForeignKey("executions.id", ondelete="CASCADE"))
    node_id: Mapped[str] = mapped_column(String(300))
    iteration: Mapped[str] = mapped_column(String(100), default="")
    step_key: Mapped[str] = mapped_column(String(400))
    run_id: Mapped[str] = mapped_column(String(64))
    kind: Mapped[str] = mapped_column(String(20))  # datetime | approval | callback | child
    status: Mapped[str] = mapped_column(String(20), default="pending")
    due_at: Mapped[datetime | None] = mapped_column(default=None)
    expires_at: Mapped[datetime | None] = mapped_column(default=None)
    on_expiry: Mapped[str | None] = mapped_column(String(20), default=None)
    token_hash: Mapped[str | None] = mapped_column(String(64), unique=True, default=None)
    link_token_hash: Mapped[str | None] = mapped_column(String(64), unique=True, default=None)
    child_execution_id: Mapped[str | None] = mapped_column(String(36), index=True, default=None)
    spec: Mapped[dict[str, Any]] = mapped_column(JsonType, default=dict)
    resolution: Mapped[dict[str, Any] | None] = mapped_column(JsonType, default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    resolved_at: Mapped[datetime | None] = mapped_column(default=None)
    resume_token: Mapped[str | None] = mapped_column(String(36), default=None)
    resume_claimed_at: Mapped[datetime | None] = mapped_column(default=None)
    resume_run_id: Mapped[str | None] = mapped_column(String(64), default=None)
    resumed_at: Mapped[datetime | None] = mapped_column(default=None)
    # Approver notifications: SQL NULL until the waitpoint sensor claims them (a conditional
    # UPDATE, so two ticks never send twice), then {state, claimedAt, attempts: [...]}.
    notifications: Mapped[dict[str, Any] | None] = mapped_column(
        JSON(none_as_null=True).with_variant(JSONB(none_as_null=True), "postgresql"),
        default=None,
    )


class Decision(Base):
    """The decision on an approval: one per waitpoint (a second one hits the constraint)."""

    __tablename__ = "decisions"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    waitpoint_id: Mapped[str] = mapped_column(
        ForeignKey("waitpoints.id", ondelete="CASCADE"), unique=True
    )
    user_id: Mapped[str | None] = mapped_column(ForeignKey("users.id"), default=None)
    via: Mapped[str] = mapped_column(String(20), default="api")  # api | link | callback | expiry
    decision: Mapped[str] = mapped_column(String(20))  # approve | reject | respond | expire
    value: Mapped[Any] = mapped_column(JsonType, default=None, nullable=True)
    comment: Mapped[str | None] = mapped_column(Text, default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Checkpoint(Base):
    """The state of an execution at a checkpoint node: every node output so far, kept until
    `expires_at` (then purged). One row per (execution, node, loop iteration); running the
    node again replaces it."""

    __tablename__ = "checkpoints"
    __table_args__ = (
        UniqueConstraint("execution_id", "node_id", "iteration", name="uq_checkpoint_node"),
        Index("ix_checkpoints_expires", "expires_at"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    execution_id: Mapped[str] = mapped_column(ForeignKey("executions.id", ondelete="CASCADE"))
    node_id: Mapped[str] = mapped_column(String(300))
    iteration: Mapped[str] = mapped_column(String(100), default="")
    name: Mapped[str] = mapped_column(String(300))
    run_id: Mapped[str] = mapped_column(String(64))
    step_key: Mapped[str] = mapped_column(String(400))
    pause_here: Mapped[bool] = mapped_column(Boolean, default=False)
    state: Mapped[dict[str, Any]] = mapped_column(JsonType)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    saved_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime] = mapped_column()


class WebhookDelivery(Base):
    """One delivery to a workflow's webhook trigger, whatever became of it: the log its owner
    reads to see why a provider's call did (not) start an execution. Nothing secret is kept."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (
        CheckConstraint(
            "outcome IN ('accepted', 'duplicate', 'rejected')", name="ck_webhook_delivery_outcome"
        ),
        Index("ix_webhook_deliveries_trigger", "workflow_id", "trigger_id", "received_at"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    workflow_id: Mapped[str] = mapped_column(ForeignKey("workflows.id", ondelete="CASCADE"))
    trigger_id: Mapped[str] = mapped_column(String(300))
    delivery_id: Mapped[str | None] = mapped_column(String(255), default=None)
    received_at: Mapped[datetime] = mapped_column(default=utcnow)
    outcome: Mapped[str] = mapped_column(String(20))  # accepted | duplicate | rejected
    reason: Mapped[str | None] = mapped_column(Text, default=None)
    execution_id: Mapped[str | None] = mapped_column(
        ForeignKey("executions.id", ondelete="SET NULL"), default=None
    )


class NodeAttempt(Base):
    """One attempt of one node (a loop item's, a resumed run's): what it was given, what it
    produced or why it failed, what it logged and what the retry policy decided. Written once
    by the op adapter when the attempt ends, so `GET /executions/{id}/nodes/{node}` reads a
    node's history in one query, also after Dagster's event log is purged."""

    __tablename__ = "node_attempts"
    __table_args__ = (
        UniqueConstraint("run_id", "step_key", "attempt", name="uq_node_attempt"),
        Index("ix_node_attempts_node", "execution_id", "node_id"),
        Index("ix_node_attempts_errors", "status", "error_class"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    execution_id: Mapped[str] = mapped_column(ForeignKey("executions.id", ondelete="CASCADE"))
    node_id: Mapped[str] = mapped_column(String(300))
    iteration: Mapped[str] = mapped_column(String(200), default="")  # "0", "1.2" in loops
    run_id: Mapped[str] = mapped_column(String(64))
    step_key: Mapped[str] = mapped_column(String(400))
    attempt: Mapped[int] = mapped_column(Integer)
    # succeeded | retrying | failed | handled (onError / an error edge) | parked
    status: Mapped[str] = mapped_column(String(20))
    started_at: Mapped[datetime] = mapped_column()
    finished_at: Mapped[datetime] = mapped_column()
    inputs: Mapped[Any] = mapped_column(JsonType, default=None, nullable=True)
    output: Mapped[Any] = mapped_column(JsonType, default=None, nullable=True)
    output_bytes: Mapped[int | None] = mapped_column(Integer, default=None)
    output_truncated: Mapped[bool] = mapped_column(Boolean, default=False)
    logs: Mapped[Any] = mapped_column(JsonType, default=list)
    logs_dropped: Mapped[int] = mapped_column(Integer, default=0)
    error_class: Mapped[str | None] = mapped_column(String(200), default=None)
    error_message: Mapped[str | None] = mapped_column(Text, default=None)
    error_stack: Mapped[str | None] = mapped_column(Text, default=None)
    retryable: Mapped[bool | None] = mapped_column(Boolean, default=None)
    retry_delay_seconds: Mapped[float | None] = mapped_column(Float, default=None)
    max_attempts: Mapped[int | None] = mapped_column(Integer, default=None)
    handled_by: Mapped[str | None] = mapped_column(String(20), default=None)


class ExecutionNodeStats(Base):
    """One node's numbers in one settled execution, rolled up from its node attempts when the
    execution's status is synced: failed attempts (`errors`: retried, final and handled),
    retry requests, and loop items / steps whose last attempt failed (`failures`). Only nodes
    with an error get a row; the workflow and creation time are copied from the execution so
    a workflow's range is one index scan (workflow analytics)."""

    __tablename__ = "execution_node_stats"
    __table_args__ = (
        Index(
            "ix_execution_node_stats_range",
            "workflow_id",
            "created_at",
            "node_id",
            "errors",
            "failures",
            "retries",
        ),
    )

    execution_id: Mapped[str] = mapped_column(
        ForeignKey("executions.id", ondelete="CASCADE"), primary_key=True
    )
    node_id: Mapped[str] = mapped_column(String(300), primary_key=True)
    workflow_id: Mapped[str] = mapped_column(String(36))
    created_at: Mapped[datetime] = mapped_column()
    errors: Mapped[int] = mapped_column(Integer, default=0)
    failures: Mapped[int] = mapped_column(Integer, default=0)
    retries: Mapped[int] = mapped_column(Integer, default=0)


class AlertRule(Base):
    """An alerting rule (docs/observability.md#alerts): a metric over the owner's workflows
    (or one of them), its limit, and the channel that hears when it fires and resolves."""

    __tablename__ = "alert_rules"
    __table_args__ = (
        CheckConstraint(
            "metric IN ('failure_rate', 'execution_stuck', 'queue_age', 'approval_wait')",
            name="ck_alert_rule_metric",
        ),
        CheckConstraint("window_seconds > 0", name="ck_alert_rule_window"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    owner_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    # None: every workflow of the owner.
    workflow_id: Mapped[str | None] = mapped_column(
        ForeignKey("workflows.id", ondelete="CASCADE"), default=None, index=True
    )
    name: Mapped[str] = mapped_column(String(200))
    metric: Mapped[str] = mapped_column(String(30))
    # failure_rate: the window the rate is computed over; the others: how long is too long.
    window_seconds: Mapped[int] = mapped_column(Integer)
    threshold: Mapped[float | None] = mapped_column(Float, default=None)  # failure_rate
    min_executions: Mapped[int | None] = mapped_column(Integer, default=None)  # failure_rate
    state: Mapped[str | None] = mapped_column(String(20), default=None)  # execution_stuck
    channel: Mapped[dict[str, Any]] = mapped_column(JsonType)
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class AlertState(Base):
    """What a rule found about one subject (a workflow, a queue): firing or resolved, and which
    of those its channel has heard. One row per (rule, subject): a state changes only by a
    conditional UPDATE, and a notification is due while `notified_status` lags `status`."""

    __tablename__ = "alert_states"
    __table_args__ = (
        UniqueConstraint("rule_id", "subject", name="uq_alert_state_subject"),
        CheckConstraint("status IN ('firing', 'resolved')", name="ck_alert_state_status"),
        Index("ix_alert_states_status", "status", "notified_status"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    rule_id: Mapped[str] = mapped_column(ForeignKey("alert_rules.id", ondelete="CASCADE"))
    subject: Mapped[str] = mapped_column(String(300))  # workflow:<id> | queue:<name>
    workflow_id: Mapped[str | None] = mapped_column(String(36), default=None)
    status: Mapped[str] = mapped_column(String(20))
    value: Mapped[float | None] = mapped_column(Float, default=None)
    summary: Mapped[str] = mapped_column(Text, default="")
    details: Mapped[dict[str, Any]] = mapped_column(JsonType, default=dict)
    fired_at: Mapped[datetime] = mapped_column(default=utcnow)
    resolved_at: Mapped[datetime | None] = mapped_column(default=None)
    evaluated_at: Mapped[datetime] = mapped_column(default=utcnow)
    # The last status the channel was told of (None: never told), when, and the last failure.
    notified_status: Mapped[str | None] = mapped_column(String(20), default=None)
    notified_at: Mapped[datetime | None] = mapped_column(default=None)
    notify_attempts: Mapped[int] = mapped_column(Integer, default=0)
    notify_error: Mapped[str | None] = mapped_column(Text, default=None)
    # A tick sending this notification holds it until then (two ticks never send it twice).
    claimed_until: Mapped[datetime | None] = mapped_column(default=None)


class PausedQueue(Base):
    """A run queue an operator paused (POST /queues/{name}/pause): its queued runs carry
    `flowmaestro/queue_paused: true`, which a limit of 0 keeps in Dagster's queue."""

    __tablename__ = "paused_queues"

    name: Mapped[str] = mapped_column(String(100), primary_key=True)
    paused_at: Mapped[datetime] = mapped_column(default=utcnow)
    paused_by: Mapped[str] = mapped_column(String(320), default="")  # the operator's email


class UserRunLimit(Base):
    """A user's own limit on runs in progress (PUT /queues/users/{id}/limit), below the
    instance's per-user limit; their runs carry the matching `user_limit` tag."""

    __tablename__ = "user_run_limits"

    user_id: Mapped[str] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), primary_key=True
    )
    run_limit: Mapped[int] = mapped_column(Integer)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_by: Mapped[str] = mapped_column(String(320), default="")


class ProviderConnection(Base):
    """A user's connection to a provider (docs/security.md#connections): its secrets encrypted
    with the connections key (`key_id` names which), what is not secret in the clear. The
    owner's names are unique, and an owner has at most one default connection per provider
    (the one a node that names none uses): both are constraints."""

    __tablename__ = "connections"
    __table_args__ = (
        UniqueConstraint("owner_id", "name", name="uq_connection_name"),
        CheckConstraint("auth_type IN ('credentials', 'oauth2')", name="ck_connection_auth_type"),
        CheckConstraint("status IN ('active', 'needs_reauth')", name="ck_connection_status"),
        Index("ix_connections_owner_provider", "owner_id", "provider"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    owner_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    provider: Mapped[str] = mapped_column(String(100))
    name: Mapped[str] = mapped_column(String(100))
    auth_type: Mapped[str] = mapped_column(String(20), default="credentials")
    is_default: Mapped[bool] = mapped_column(Boolean, default=False)
    # A Fernet token of the credentials' JSON; `key_id` fingerprints the key that made it.
    encrypted_credentials: Mapped[str] = mapped_column(Text)
    key_id: Mapped[str] = mapped_column(String(16))
    credential_keys: Mapped[Any] = mapped_column(JsonType, default=list)  # names, not values
    base_url: Mapped[str | None] = mapped_column(String(2048), default=None)
    scopes: Mapped[Any] = mapped_column(JsonType, default=list)
    account_label: Mapped[str | None] = mapped_column(String(200), default=None)
    token_expires_at: Mapped[datetime | None] = mapped_column(default=None)
    refreshed_at: Mapped[datetime | None] = mapped_column(default=None)
    status: Mapped[str] = mapped_column(String(20), default="active")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


Index(
    "uq_connection_default",
    ProviderConnection.owner_id,
    ProviderConnection.provider,
    unique=True,
    sqlite_where=ProviderConnection.is_default,
    postgresql_where=ProviderConnection.is_default,
)


# -- knowledge bases (issue 18): documents cut into chunks that knowledgeBaseQuery nodes search --
# The search indexes live beside these tables, made by migration 0013 (not models: they are
# dialect-specific): SQLite's FTS5 table `kb_chunks_fts` (kept by triggers) and vector table
# `kb_chunk_vectors`, PostgreSQL's GIN index on to_tsvector('english', text) and the pgvector
# table the store makes when the extension is there (flowmaestro_dagster/store/knowledge.py).


class KnowledgeBase(Base):
    """A user's knowledge base. `embedding_model` and `embedding_dimensions` are recorded when
    its first vectors are written: vectors of another model are not comparable, so a query
    embeds with that model or searches full text only."""

    __tablename__ = "knowledge_bases"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    owner_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    description: Mapped[str] = mapped_column(Text, default="")
    embedding_model: Mapped[str | None] = mapped_column(String(300), default=None)
    embedding_dimensions: Mapped[int | None] = mapped_column(Integer, default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class KnowledgeDocument(Base):
    """A document of a knowledge base: pasted text, an uploaded PDF or a fetched web page
    (`source`: the file name or URL). Written with all its chunks in one transaction."""

    __tablename__ = "kb_documents"
    __table_args__ = (
        CheckConstraint("source_kind IN ('text', 'pdf', 'url')", name="ck_kb_document_kind"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    knowledge_base_id: Mapped[str] = mapped_column(
        ForeignKey("knowledge_bases.id", ondelete="CASCADE"), index=True
    )
    title: Mapped[str] = mapped_column(String(500))
    source_kind: Mapped[str] = mapped_column(String(10))
    source: Mapped[str | None] = mapped_column(Text, default=None)
    # `metadata` is the declarative base's own attribute: the column keeps the name, not this.
    meta: Mapped[dict[str, Any]] = mapped_column("metadata", JsonType, default=dict)
    char_count: Mapped[int] = mapped_column(Integer, default=0)
    chunk_count: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class KnowledgeChunk(Base):
    """One chunk of a document, in document order (`ordinal`). The id is an integer: SQLite's
    FTS5 index refers to chunks by rowid, and an INTEGER PRIMARY KEY is the rowid itself (a
    VACUUM may renumber any other)."""

    __tablename__ = "kb_chunks"
    __table_args__ = (UniqueConstraint("document_id", "ordinal", name="uq_kb_chunk_ordinal"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    document_id: Mapped[str] = mapped_column(ForeignKey("kb_documents.id", ondelete="CASCADE"))
    knowledge_base_id: Mapped[str] = mapped_column(
        ForeignKey("knowledge_bases.id", ondelete="CASCADE"), index=True
    )
    ordinal: Mapped[int] = mapped_column(Integer)
    text: Mapped[str] = mapped_column(Text)
    char_count: Mapped[int] = mapped_column(Integer)
    token_count: Mapped[int] = mapped_column(Integer)  # words, as the full-text index counts them
