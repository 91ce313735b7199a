"""The checkpoint node: keeps the execution's state durably until it expires, and may pause.

A checkpoint saves every node output reached so far (with the execution inputs and shared
memory) in the platform's checkpoint store, one row per (execution, node, loop iteration),
replaced when the node runs again. The API shows it (`GET /executions/{id}/checkpoints`), a
retry of a later failure re-executes from it, and it is purged when it expires.

With `pauseHere` the node is also a manual waitpoint without an approver: the execution parks
here (like a human review) until someone resumes it (`POST /executions/{id}/resume`). A pause
that nobody resumes before the checkpoint expires fails the node.

Outside the platform (no store: `execute_in_process`, the CLI) a checkpoint without a pause
passes its input through and says it saved nothing.
"""

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from flowmaestro_dagster.nodes.base import Executor, NodeContext, NodeResult, wrap_output
from flowmaestro_dagster.nodes.waitpoints import (
    RESOLVED,
    _park,
    _parked,
    _store,
    iteration_key,
    step_key,
)
from flowmaestro_dagster.spec.configs import CheckpointConfig


class CheckpointStore(Protocol):
    """Where checkpoints live (the platform database)."""

    def save(
        self,
        *,
        execution_id: str,
        node_id: str,
        iteration: str,
        name: str,
        run_id: str,
        step_key: str,
        state: Mapping[str, Any],
        expires_at: datetime,
        pause_here: bool,
    ) -> None:
        """Create or replace the checkpoint of this node and iteration."""
        ...


def checkpoint_state(ctx: NodeContext) -> dict[str, Any]:
    """What a checkpoint keeps: the inputs, every node output so far and shared memory."""
    state = ctx.state
    return {
        "inputs": dict(state.inputs),
        "outputs": dict(state.outputs),
        "shared": state.memory_view(),
        "iteration": list(state.iteration),
    }


def execute_checkpoint(ctx: NodeContext) -> NodeResult:
    config = ctx.typed_config(CheckpointConfig)
    now = datetime.now(UTC)
    expires_at = now + timedelta(seconds=config.expiry_seconds)
    name = ctx.render_text(config.name) if config.name else ctx.node_id
    store: CheckpointStore | None = ctx.services.get("checkpoints")
    saved = store is not None and bool(ctx.execution_id) and bool(ctx.run_id)
    if store is not None and saved:
        store.save(
            execution_id=str(ctx.execution_id),
            node_id=ctx.node_id,
            iteration=iteration_key(ctx),
            name=name,
            run_id=str(ctx.run_id),
            step_key=step_key(ctx),
            state=checkpoint_state(ctx),
            expires_at=expires_at,
            pause_here=config.pause_here,
        )
    value: dict[str, Any] = {
        "checkpoint": name,
        "saved": saved,
        "savedAt": now.isoformat(),
        "expiresAt": expires_at.isoformat(),
        "paused": False,
    }
    if config.pause_here:
        waitpoints = _store(ctx, "a checkpoint with pauseHere")
        spec = {"checkpoint": name, "label": ctx.label, "reason": "pause at checkpoint"}
        record = _park(ctx, waitpoints, "manual", spec, expires_at=expires_at, on_expiry="fail")
        if record.status not in RESOLVED:
            return _parked(ctx, record, f"at checkpoint {name} (resume through the API)")
        resolution = dict(record.resolution or {})
        if resolution.get("decision") in ("expire_fail", "reject", "expire"):
            raise ctx.error(f"checkpoint {name} expired before anyone resumed the execution")
        value.update(paused=True, resumedBy=resolution.get("by"), resumedAt=resolution.get("at"))
    return NodeResult(wrap_output(value, config.output_variable))


EXECUTORS: Mapping[str, Executor] = {"checkpoint": execute_checkpoint}
