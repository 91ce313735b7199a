"""The one adapter between executors and Dagster: op definitions and their compute function.

There is one op definition per node type (`llm_node`, `transform_node`, ...), invoked under an
alias per node with the node's `NodePlan` as op config, so any number of workflows share one
code location without op-name collisions. A few shapes need their own variant of a type's
definition: loop-body joins (`_j3`: Dagster forbids fan-in below a dynamic output), loop exits
(`_c2`: collect inputs), branch nodes (one optional output per handle) and loops with a
dynamic body (`items`). Variants are memoised by shape, so equal shapes share one definition.
"""

import hashlib
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from functools import cache
from typing import Any

from dagster import (
    DagsterError,
    DynamicOut,
    DynamicOutput,
    Failure,
    In,
    MetadataValue,
    OpDefinition,
    OpExecutionContext,
    Out,
    Output,
    Permissive,
    RetryRequested,
)

from flowmaestro_dagster.adapter.attempts import Attempt, CapturingLogger
from flowmaestro_dagster.adapter.attempts import begin as begin_attempt
from flowmaestro_dagster.adapter.events import report_platform_event
from flowmaestro_dagster.adapter.retries import decide, error_summary
from flowmaestro_dagster.adapter.waiting import waiting_event, waiting_tags
from flowmaestro_dagster.lang.state import ExecutionState
from flowmaestro_dagster.nodes.base import Park, settings_of, wrap_output
from flowmaestro_dagster.nodes.notify import failure_payload, notify_failure
from flowmaestro_dagster.runtime.plan import NodePlan
from flowmaestro_dagster.runtime.runner import NodeOutcome, RunContext, run_node
from flowmaestro_dagster.spec.policies import OnErrorSettings, RetrySettings
from flowmaestro_dagster.tags import ERROR_METADATA, EXECUTION_TAG, HANDLED_METADATA, NODE_TYPE_TAG

UPSTREAM = "upstream"
RESULT = "result"
ITEMS = "items"
ERROR = "error"  # yielded only when the node failed its last attempt (error edges, goto)
INPUTS_RESOURCE = "workflow_inputs"
SERVICES_RESOURCE = "flowmaestro"
METADATA_PREVIEW_BYTES = 4096


@dataclass(frozen=True)
class OpShape:
    """Everything that distinguishes one op definition of a node type from another."""

    node_type: str
    joins: int = 0  # extra single inputs in_1..in_n (loop-body joins)
    collects: int = 0  # collect_0..collect_n inputs (loop exits)
    handles: tuple[str, ...] = ()  # branch outputs besides `result`
    dynamic: bool = False  # an `items` DynamicOut (loops with a mapped body)
    error: bool = False  # an `error` output (the node has error edges or an onError goto)

    @property
    def name(self) -> str:
        base = self.node_type.replace("-", "_") + "_node"
        if self.joins:
            base += f"_j{self.joins + 1}"
        if self.collects:
            base += f"_c{self.collects}"
        if self.dynamic:
            base += "_map"
        if self.error:
            base += "_e"
        if self.handles and self.handles != STANDARD_HANDLES.get(self.node_type):
            digest = hashlib.sha1("\0".join(self.handles).encode()).hexdigest()[:8]
            base += f"_{digest}"
        return base


# Conditional nodes always have both outputs, so they share one definition.
STANDARD_HANDLES: dict[str, tuple[str, ...]] = {"conditional": ("true", "false")}


def join_input(index: int) -> str:
    return f"in_{index}"


def collect_input(index: int) -> str:
    return f"collect_{index}"


@cache
def node_op(shape: OpShape) -> OpDefinition:
    """The (memoised) op definition for a shape: equal shapes give the same object."""
    ins = {UPSTREAM: In(default_value=[], description="states of the upstream nodes")}
    for index in range(1, shape.joins + 1):
        ins[join_input(index)] = In(description="state of another upstream body node")
    for index in range(shape.collects):
        ins[collect_input(index)] = In(description="per-item states of a loop body node")
    outs: dict[str, Out] = {RESULT: Out(is_required=False, description="state after this node")}
    for handle in shape.handles:
        outs[handle] = Out(is_required=False, description=f"branch output {handle}")
    if shape.dynamic:
        outs[ITEMS] = DynamicOut(description="one state per loop item")
    if shape.error:
        outs[ERROR] = Out(is_required=False, description="state after a failure (error edges)")
    return OpDefinition(
        name=shape.name,
        ins=ins,
        outs=outs,
        compute_fn=_compute,
        config_schema=Permissive(),
        required_resource_keys={INPUTS_RESOURCE, SERVICES_RESOURCE},
        description=f"Runs a FlowMaestro '{shape.node_type}' node (its plan is the op config).",
        tags={NODE_TYPE_TAG: shape.node_type},
    )


def _compute(context: OpExecutionContext, inputs: Mapping[str, Any]) -> Iterator[Any]:
    plan = NodePlan.model_validate(context.op_config)
    incoming = _incoming_states(inputs)
    live = [s for s in incoming if not s.skipped]
    if incoming and not live:
        # Inside a loop body every branch output is yielded; untaken ones carry a skip marker.
        marker = incoming[0].as_skipped(plan.node_id)
        context.log.info(f"{plan.node_id}: not run in this iteration (branch not taken)")
        yield from _outputs(plan, marker, None, skipped=True)
        return
    if live:
        state = ExecutionState.merge(live)
    else:
        state = ExecutionState.start(getattr(context.resources, INPUTS_RESOURCE))
    upstream = tuple(s.producer for s in live if s.producer)
    state, reached = _fold_loops(plan, state, inputs)
    outside = [p for p in upstream if p not in {summary.loop_id for summary in plan.loops}]
    if reached is False or (reached is None and not outside):
        # Some loop items are parked at a waitpoint (missing), or no item reached this exit:
        # yield nothing, so what follows waits (resume) or is skipped, like any untaken branch.
        why = "loop items still waiting" if reached is False else "no loop item reached it"
        context.log.info(f"{plan.node_id}: not run ({why})")
        return
    tags = _run_tags(context)
    log = CapturingLogger(context.log)  # what the node logs is also kept for its attempt's row
    run = RunContext(
        services=getattr(context.resources, SERVICES_RESOURCE).services(),
        run_id=context.run_id,
        execution_id=tags.get(EXECUTION_TAG),
        run_tags=tags,
        step_key=_step_key(context),
        attempt=_attempt(context),
        log=log,
    )
    attempt = begin_attempt(plan, state, upstream, run, log)
    try:
        outcome = run_node(plan, state, upstream, run)
    except (DagsterError, RetryRequested, Failure):
        raise
    except Exception as exc:  # noqa: BLE001 - every node error is retried, handled or failed below
        yield from _failed(context, plan, state, exc, run, attempt)
        return
    if attempt is not None:
        attempt.finished(outcome)
    _report_warnings(context, outcome)
    parked = outcome.result.parked
    if parked is not None:
        # Nothing is yielded: what follows is skipped and the run ends; a sensor resumes it.
        context.log.info(f"{plan.node_id}: waiting ({parked.kind}) {parked.detail}".rstrip())
        _mark_waiting(context, plan, parked, settings_of(run.services).public_api_url)
        return
    yield from _outputs(plan, outcome.state, outcome, skipped=False)


def _failed(
    context: OpExecutionContext,
    plan: NodePlan,
    state: ExecutionState,
    exc: Exception,
    run: RunContext,
    attempt: Attempt | None = None,
) -> Iterator[Any]:
    """After a failed attempt: retry with our own wait, or apply onError after the last one.

    Retries raise `RetryRequested` with the wait from `retries.decide` (schedule, cap, jitter,
    Retry-After), never Dagster's backoff. After the last attempt: `continue` / `fallback`
    yield the normal outputs with null / the fallback value; error edges and a goto get the
    `error` output (the normal outputs are not yielded, so the normal successors are
    skipped); otherwise the step fails with `Failure(allow_retries=False)`.
    """
    settings = plan.retry or RetrySettings()
    decision = decide(settings, exc, run.attempt, node_type=plan.type)
    if decision.retry:
        if attempt is not None:
            attempt.failed(exc, decision, "retry")
        why = " (Retry-After)" if decision.retry_after_seconds is not None else ""
        context.log.warning(
            f"{plan.node_id}: attempt {decision.attempt}/{decision.max_attempts} failed: {exc}; "
            f"retrying in {decision.wait_seconds:.3f}s{why}"
        )
        raise RetryRequested(
            max_retries=settings.max_attempts - 1, seconds_to_wait=decision.wait_seconds
        ) from exc
    on_error = plan.on_error or OnErrorSettings()
    strategy = on_error.strategy
    handled_by: str
    if strategy in ("continue", "fallback"):
        handled_by = strategy
    elif plan.error_output:
        handled_by = "goto" if strategy == "goto" else "error_edge"
    else:
        handled_by = "fail"
    summary = error_summary(exc, decision)
    if attempt is not None:
        attempt.failed(exc, decision, handled_by)
    target = on_error.notify_target()
    if target is not None:
        payload = failure_payload(
            node_id=plan.node_id,
            node_type=plan.type,
            label=plan.label,
            error=summary,
            handled_by=handled_by,
            run_id=run.run_id,
            run_tags=run.run_tags,
        )
        notify_failure(target, payload, services=run.services, state=state, log=context.log)
    details = getattr(exc, "details", None)
    metadata = {
        "node_id": plan.node_id,
        "node_type": plan.type,
        "attempts": decision.attempt,
        **_safe(details if isinstance(details, Mapping) else {}),
    }
    if handled_by == "fail":
        raise Failure(description=str(exc), metadata=metadata, allow_retries=False) from exc
    context.log.error(
        f"{plan.node_id} failed after {decision.attempt} attempt(s): {exc}; onError: {handled_by}"
    )
    yield from _handled_outputs(plan, state, on_error, summary, handled_by)


def _handled_outputs(
    plan: NodePlan,
    state: ExecutionState,
    on_error: OnErrorSettings,
    summary: Mapping[str, Any],
    handled_by: str,
) -> Iterator[Any]:
    """The outputs of a node whose failure onError or an error edge handles."""
    marks = {
        ERROR_METADATA: MetadataValue.text(str(summary.get("message", ""))),
        HANDLED_METADATA: MetadataValue.text(handled_by),
    }
    if handled_by in ("continue", "fallback"):
        value = on_error.fallback_value if handled_by == "fallback" else None
        output = wrap_output(value, plan.config.get("output_variable"))
        after = state.with_output(plan.node_id, plan.rank, output)
        yield Output(after, RESULT, metadata={**_metadata(plan, output, False), **marks})
    elif plan.in_body:
        yield Output(state.as_skipped(plan.node_id), RESULT, metadata=marks)
    if plan.in_body:  # no branch is taken; a mapped step must still yield every output
        for output_name in plan.branches:
            yield Output(state.as_skipped(plan.node_id), output_name)
    if plan.error_output:
        failed = state.with_output(plan.node_id, plan.rank, {"error": dict(summary)})
        yield Output(failed, ERROR, metadata={"node_id": plan.node_id, **marks})


def _run_tags(context: OpExecutionContext) -> dict[str, str]:
    try:
        return dict(context.run.tags)
    except (AttributeError, DagsterError):  # build_op_context: no run to read tags from
        return {}


def _step_key(context: OpExecutionContext) -> str | None:
    try:
        return context.get_step_execution_context().step.key
    except (AttributeError, DagsterError):
        return None


def _mark_waiting(
    context: OpExecutionContext, plan: NodePlan, parked: Park, public_api_url: str
) -> None:
    """Tag the run and log a `waiting` event, so operators find the parked run in the Dagster UI
    (filter `flowmaestro/waiting=<kind>`) and read there where to approve it."""
    label = plan.label or plan.node_id
    try:
        context.instance.add_run_tags(context.run_id, waiting_tags(parked, label, public_api_url))
    except Exception as exc:  # noqa: BLE001 - a tag is for display; never fail the node for it
        context.log.warning(f"could not tag run as waiting: {exc}")
    data, message = waiting_event(parked, plan.node_id, label, public_api_url)
    try:
        report_platform_event(
            context.instance, context.run_id, "waiting", data, message, step_key=_step_key(context)
        )
    except Exception as exc:  # noqa: BLE001 - the event is for display; never fail the node
        context.log.warning(f"could not log the waiting event: {exc}")


def _attempt(context: OpExecutionContext) -> int:
    try:
        return context.retry_number + 1
    except AttributeError:  # a context built with build_op_context has no step to retry
        return 1


def _incoming_states(inputs: Mapping[str, Any]) -> list[ExecutionState]:
    states: list[ExecutionState] = []
    for name, value in inputs.items():
        if name.startswith("collect_"):
            continue
        values = value if isinstance(value, list) else [value]
        states.extend(v for v in values if isinstance(v, ExecutionState))
    return states


def _fold_loops(
    plan: NodePlan, state: ExecutionState, inputs: Mapping[str, Any]
) -> tuple[ExecutionState, bool | None]:
    """At a loop exit: turn each loop's collected per-item states into lists of results.

    Also says whether the exit was reached: True, False if some items are missing (parked at a
    waitpoint), None if the loop had items and none of them reached this exit.
    """
    reached: bool | None = True
    for summary in plan.loops:
        per_input = [
            sorted(inputs[c.input], key=lambda s: s.iteration[-1] if s.iteration else 0)
            for c in plan.collects
            if c.loop_id == summary.loop_id
        ]
        count = max((len(states) for states in per_input), default=0)
        items: list[ExecutionState | None] = []
        for index in range(count):
            live = [
                states[index]
                for states in per_input
                if index < len(states) and not states[index].skipped
            ]
            items.append(ExecutionState.merge(live) if live else None)
        current = state.outputs.get(summary.loop_id)
        base = dict(current) if isinstance(current, dict) else {}
        expected = base.get("count")
        if isinstance(expected, int) and count < expected:
            reached = False
        elif expected and all(item is None for item in items) and reached is True:
            reached = None
        if summary.output_variable:
            base["__output_variable__"] = summary.output_variable
        state = state.with_collected(
            loop_id=summary.loop_id,
            loop_rank=summary.loop_rank,
            loop_output=base,
            body=summary.body,
            body_ranks=summary.body_ranks,
            items=items,
            result_nodes=[c.source for c in plan.collects if c.loop_id == summary.loop_id],
            scope_names=(summary.item_variable, summary.index_variable),
        )
    return state, reached


def _outputs(
    plan: NodePlan, state: ExecutionState, outcome: NodeOutcome | None, *, skipped: bool
) -> Iterator[Any]:
    node_output = state.outputs.get(plan.node_id) if not skipped else None
    metadata = _metadata(plan, node_output, skipped)
    yield Output(state, RESULT, metadata=metadata)
    chosen = outcome.result.branches if outcome is not None else None
    for output_name, branch in plan.branches.items():
        taken = not skipped and chosen is not None and branch in chosen
        if taken:
            yield Output(state, output_name)
        elif plan.in_body:
            yield Output(state.as_skipped(plan.node_id), output_name)
    if plan.error_output and plan.in_body:
        yield Output(state.as_skipped(plan.node_id), ERROR)
    if plan.loop is not None and plan.loop.mode == "dynamic" and outcome is not None:
        width = len(str(max(len(outcome.item_states) - 1, 0)))
        for index, item_state in enumerate(outcome.item_states):
            yield DynamicOutput(item_state, mapping_key=str(index).zfill(width), output_name=ITEMS)


def _metadata(plan: NodePlan, node_output: Any, skipped: bool) -> dict[str, Any]:
    metadata: dict[str, Any] = {"node_id": plan.node_id, "label": plan.label}
    if skipped:
        metadata["skipped"] = "branch not taken in this iteration"
        return metadata
    try:
        text = json.dumps(node_output, ensure_ascii=False, default=str)
    except (TypeError, ValueError):
        return metadata
    if len(text) <= METADATA_PREVIEW_BYTES:
        metadata["output"] = MetadataValue.json(node_output if node_output is not None else {})
    else:
        metadata["output_preview"] = text[:METADATA_PREVIEW_BYTES] + "..."
    return metadata


def _report_warnings(context: OpExecutionContext, outcome: NodeOutcome) -> None:
    """A `node.warning` platform event per unresolved reference (the node's log has them)."""
    for found in outcome.warnings:
        try:
            report_platform_event(
                context.instance,
                context.run_id,
                "node.warning",
                found.to_dict(),
                found.message,
                step_key=_step_key(context),
            )
        except Exception as exc:  # noqa: BLE001 - the event is for display; never fail the node
            context.log.warning(f"could not log the node.warning event: {exc}")


def _safe(details: Mapping[str, Any]) -> dict[str, Any]:
    safe: dict[str, Any] = {}
    for key, value in details.items():
        if isinstance(value, str | int | float | bool):
            safe[key] = value
        else:
            safe[key] = json.dumps(value, default=str)[:1000]
    return safe


__all__ = ["ERROR", "OpShape", "node_op"]
