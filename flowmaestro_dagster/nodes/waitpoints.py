"""Waitpoint nodes: wait (a due time or a callback), humanReview (an approval), subworkflow.

A waitpoint that is not resolved parks: the executor returns `NodeResult(parked=...)`, the op
yields nothing, what follows is skipped and the run ends — no worker waits. When the
waitpoint resolves, a sensor re-executes this node and what follows it; this time the store
returns the resolution and the node produces its output. Short waits sleep in the op instead.

The store (`services["waitpoints"]`) is the platform database (store/waitpoints.py); without it
(a run outside the platform) only short waits can run.
"""

import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from flowmaestro_dagster.errors import (
    ConnectorNotConfiguredError,
    NodeConfigurationError,
    NodeExecutionError,
)
from flowmaestro_dagster.lang.expressions import to_number
from flowmaestro_dagster.nodes.base import Executor, NodeContext, NodeResult, Park, wrap_output
from flowmaestro_dagster.spec.configs import (
    HumanReviewConfig,
    SubworkflowConfig,
    WaitConfig,
    expiry_action,
    notify_targets,
)
from flowmaestro_dagster.spec.durations import to_milliseconds, wait_problem

DEFAULT_SLEEP_THRESHOLD_S = 30.0
RESOLVED = frozenset({"resolved", "resuming", "resumed"})


@dataclass(frozen=True)
class WaitpointRecord:
    id: str
    kind: str
    status: str
    resolution: Mapping[str, Any] | None = None
    due_at: datetime | None = None
    spec: Mapping[str, Any] | None = None  # what the node parked with (a video job's id)


class WaitpointStore(Protocol):
    """Where waitpoints live (the platform database)."""

    def park(
        self,
        *,
        execution_id: str,
        node_id: str,
        iteration: str,
        step_key: str,
        run_id: str,
        kind: str,
        spec: Mapping[str, Any],
        due_at: datetime | None = None,
        expires_at: datetime | None = None,
        on_expiry: str | None = None,
    ) -> WaitpointRecord:
        """The waitpoint of this node and iteration, created on first call."""
        ...

    def sleep_threshold_seconds(self) -> float:
        """Waits up to this long sleep in the op; longer ones park."""
        ...


def iteration_key(ctx: NodeContext) -> str:
    return ".".join(str(i) for i in ctx.iteration)


def step_key(ctx: NodeContext) -> str:
    return ctx.step_key or ctx.node_id


def _store(ctx: NodeContext, what: str) -> WaitpointStore:
    store = ctx.services.get("waitpoints")
    if store is None or not ctx.execution_id or not ctx.run_id:
        raise ctx.error(
            f"{what} needs the platform (start the workflow through the API so the execution "
            "can park and resume)",
            ConnectorNotConfiguredError,
        )
    return store


def _park(
    ctx: NodeContext, store: WaitpointStore, kind: str, spec: Mapping[str, Any], **kw: Any
) -> WaitpointRecord:
    return store.park(
        execution_id=str(ctx.execution_id),
        node_id=ctx.node_id,
        iteration=iteration_key(ctx),
        step_key=step_key(ctx),
        run_id=str(ctx.run_id),
        kind=kind,
        spec=spec,
        **kw,
    )


def _parked(ctx: NodeContext, record: WaitpointRecord, detail: str) -> NodeResult:
    return NodeResult(None, parked=Park(record.kind, record.id, detail, due_at=record.due_at))


# -- wait ----------------------------------------------------------------------------------------


def due_time(ctx: NodeContext, config: WaitConfig, now: datetime) -> datetime:
    """When a duration / until wait is due (all dialects; templates rendered)."""
    if config.wait_type == "until":
        value = ctx.render(config.timestamp)
        return _as_datetime(ctx, value, "timestamp")
    value = ctx.render(config.duration)
    if isinstance(value, str) and not value.strip():
        value = None
    number = to_number(value)
    if value is None or math.isnan(number) or number < 0:
        raise ctx.error(
            f"wait duration must be a number >= 0, got {value!r}", NodeConfigurationError
        )
    # A rendered duration gets the checks a literal one got at deploy (1e300 days overflows).
    if (why := wait_problem(number, config.duration_unit)) is not None:
        raise ctx.error(f"wait duration {why}", NodeConfigurationError)
    milliseconds = to_milliseconds(number, config.duration_unit)
    return now + timedelta(milliseconds=milliseconds)


def _as_datetime(ctx: NodeContext, value: Any, field: str) -> datetime:
    if isinstance(value, int | float) and not isinstance(value, bool):
        # epoch milliseconds (what `$now - 3600000` style templates produce)
        return datetime.fromtimestamp(float(value) / 1000, UTC)
    if isinstance(value, str):
        text = value.strip().replace("Z", "+00:00")
        try:
            moment = datetime.fromisoformat(text)
        except ValueError:
            number = to_number(text)
            if not math.isnan(number):
                return datetime.fromtimestamp(number / 1000, UTC)
            raise ctx.error(
                f"wait {field} {value!r} is not an ISO date", NodeConfigurationError
            ) from None
        return moment if moment.tzinfo else moment.replace(tzinfo=UTC)
    raise ctx.error(
        f"wait {field} must be an ISO date or epoch ms, got {value!r}", NodeConfigurationError
    )


def execute_wait(ctx: NodeContext) -> NodeResult:
    config = ctx.typed_config(WaitConfig)
    now = datetime.now(UTC)
    if config.wait_type == "webhook":
        return _callback(ctx, config)
    due = due_time(ctx, config, now)
    available = ctx.services.get("waitpoints")
    threshold = (
        available.sleep_threshold_seconds() if available is not None else DEFAULT_SLEEP_THRESHOLD_S
    )
    remaining = (due - now).total_seconds()
    if remaining <= threshold and (available is None or not ctx.execution_id):
        time.sleep(max(remaining, 0))
        return _waited(config, due, slept=True)
    store = _store(ctx, "a wait longer than the sleep threshold")
    record = _park(ctx, store, "datetime", {}, due_at=due)
    if record.status in RESOLVED:
        return _waited(config, record.due_at or due, slept=False)  # the due time it parked for
    if remaining <= threshold:
        time.sleep(max(remaining, 0))  # short: never park, but the waitpoint shows the wait
        return _waited(config, due, slept=True)
    return _parked(ctx, record, f"until {due.isoformat()}")


def _waited(config: WaitConfig, due: datetime, *, slept: bool) -> NodeResult:
    value = {
        "waited": True,
        "dueAt": due.isoformat(),
        "resumedAt": datetime.now(UTC).isoformat(),
        "slept": slept,
    }
    return NodeResult(wrap_output(value, config.output_variable, default_key="wait"))


def _callback(ctx: NodeContext, config: WaitConfig) -> NodeResult:
    store = _store(ctx, "a webhook wait")
    expires = config.extras().get("timeout") or config.extras().get("timeoutMs")
    expires_at = None
    if expires is not None and not math.isnan(to_number(expires)):
        expires_at = datetime.now(UTC) + timedelta(milliseconds=to_number(expires))
    spec = {"provider": config.provider, "event": config.event}
    record = _park(ctx, store, "callback", spec, expires_at=expires_at, on_expiry="fail")
    if record.status not in RESOLVED:
        return _parked(ctx, record, "for a callback")
    resolution = dict(record.resolution or {})
    if resolution.get("decision") == "expire":
        raise ctx.error("the callback did not arrive before the wait expired")
    payload = resolution.get("value")
    value = {"received": True, "payload": payload, "receivedAt": resolution.get("at")}
    output = wrap_output(value, config.output_variable, default_key="callback")
    return NodeResult(output)


# -- humanReview ---------------------------------------------------------------------------------


def execute_human_review(ctx: NodeContext) -> NodeResult:
    config = ctx.typed_config(HumanReviewConfig)
    store = _store(ctx, "a human review")
    expires_at = None
    if config.timeout_ms:
        expires_at = datetime.now(UTC) + timedelta(milliseconds=config.timeout_ms)
    spec = {
        "prompt": ctx.render_text(config.prompt or "Please review"),
        "input_type": config.input_type,
        "required": config.required,
        "default_value": config.default_value,
        "validation": config.validation,
        "placeholder": config.placeholder,
        "approvers": [ctx.render_text(a) for a in config.approvers],
        "label": ctx.label,
        "notify": _notify(ctx, config),
    }
    on_expiry = expiry_action(config.on_timeout) or "reject"
    record = _park(ctx, store, "approval", spec, expires_at=expires_at, on_expiry=on_expiry)
    if record.status not in RESOLVED:
        return _parked(ctx, record, f"for approval: {spec['prompt'][:80]}")
    return NodeResult(approval_output(ctx, config, dict(record.resolution or {})))


def _notify(ctx: NodeContext, config: HumanReviewConfig) -> list[dict[str, Any]]:
    """The notify targets with their templates rendered (`to: "{{manager}}"`); the sensor sends
    them (control/notifications.py), so the run does not wait on a mail server."""
    try:
        return notify_targets(ctx.render(config.notify))
    except ValueError as exc:
        raise ctx.error(f"notify: {exc}", NodeConfigurationError) from exc


# The decision a resolution records → the decision the node's output shows.
_SHOWN = {"expire_default": "respond", "expire_approve": "approve", "expire_timeout": "timeout"}


def approval_output(
    ctx: NodeContext, config: HumanReviewConfig, resolution: Mapping[str, Any]
) -> dict[str, Any]:
    """`{approved, decision, response, comment, decidedBy, decidedAt}`, at the top level and
    under the variable: one shape whatever the input type, so `{{approval.approved}}` and
    `{{approval.response}}` always resolve (a typed response used to replace the object)."""
    decision = str(resolution.get("decision", "approve"))
    if decision == "expire_fail":
        raise ctx.error("the review expired without a decision", NodeExecutionError)
    shown = _SHOWN.get(decision, decision)
    summary: dict[str, Any] = {
        "approved": shown in ("approve", "respond"),
        "decision": shown,
        "response": resolution.get("value"),
        "comment": resolution.get("comment"),
        "decidedBy": resolution.get("by"),
        "decidedAt": resolution.get("at"),
    }
    variable = config.variable_name or config.output_variable or "review"
    return {**summary, variable: dict(summary)}


# -- subworkflow ---------------------------------------------------------------------------------


def execute_subworkflow(ctx: NodeContext) -> NodeResult:
    config = ctx.typed_config(SubworkflowConfig)
    store = _store(ctx, "a subworkflow")
    if not config.workflow_id:
        raise ctx.error("a subworkflow needs workflowId", NodeConfigurationError)
    spec = {
        "workflow_id": ctx.render_text(config.workflow_id),
        "inputs": ctx.render(config.inputs or {}),
    }
    record = _park(ctx, store, "child", spec)
    if record.status not in RESOLVED:
        return _parked(ctx, record, f"for child workflow {spec['workflow_id']}")
    resolution = dict(record.resolution or {})
    if resolution.get("status") != "succeeded":
        raise ctx.error(
            f"child execution {resolution.get('child_execution_id')} "
            f"{resolution.get('status', 'failed')}: {resolution.get('error') or 'see its details'}",
            NodeExecutionError,
        )
    outputs = resolution.get("outputs") or {}
    value = {"outputs": outputs, "executionId": resolution.get("child_execution_id")}
    return NodeResult(wrap_output(value, config.output_variable, default_key="child"))


EXECUTORS: Mapping[str, Executor] = {
    "wait": execute_wait,
    "humanReview": execute_human_review,
    "subworkflow": execute_subworkflow,
}
