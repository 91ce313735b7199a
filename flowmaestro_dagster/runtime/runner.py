"""Running one node on a state: shared by the Dagster adapter and inline loop bodies."""

import logging
from collections.abc import Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field, replace
from typing import Any

from flowmaestro_dagster.errors import (
    ExpressionError,
    NodeConfigurationError,
    UnresolvedReferenceError,
)
from flowmaestro_dagster.lang import templates
from flowmaestro_dagster.lang.expressions import Budget, Evaluator, parse, truthy
from flowmaestro_dagster.lang.state import ExecutionState, MemoryWrite
from flowmaestro_dagster.nodes import NodeContext, NodeResult, get_executor
from flowmaestro_dagster.nodes.base import settings_of
from flowmaestro_dagster.nodes.loop import loop_items
from flowmaestro_dagster.runtime.batch import batch_node_result, run_batch
from flowmaestro_dagster.runtime.plan import InlineRegion, LoopPlan, NodePlan
from flowmaestro_dagster.spec.configs import BatchConfig, LoopConfig

_log = logging.getLogger("flowmaestro.runtime")


@dataclass(frozen=True)
class ReferenceWarning:
    """A `{{reference}}` a node's render left as written (nothing provided it)."""

    node_id: str
    field: str  # the config field it is written in, as the builder spells it
    reference: str
    message: str

    def to_dict(self) -> dict[str, str]:
        return {
            "node_id": self.node_id,
            "field": self.field,
            "reference": self.reference,
            "message": self.message,
        }


@dataclass(frozen=True)
class NodeOutcome:
    state: ExecutionState
    result: NodeResult
    item_states: tuple[ExecutionState, ...] = ()
    # This node's unresolved references, and those of the nodes its op ran inline (loop bodies).
    warnings: tuple[ReferenceWarning, ...] = ()


# The warnings of the node an op runs, and of every node it runs inline (a loop body's).
_OP_WARNINGS: ContextVar[list[ReferenceWarning] | None] = ContextVar(
    "flowmaestro_op_warnings", default=None
)


@dataclass(frozen=True)
class RunContext:
    """Per-run facts every node sees (services come from the Dagster resource)."""

    services: Mapping[str, Any]
    run_id: str | None = None
    execution_id: str | None = None
    run_tags: Mapping[str, str] = field(default_factory=dict)
    step_key: str | None = None
    attempt: int = 1
    log: logging.Logger = _log


def node_context(
    plan: NodePlan, config: Any, state: ExecutionState, upstream: tuple[str, ...], run: RunContext
) -> NodeContext:
    """What an executor sees of its node and of the run."""
    return NodeContext(
        node_id=plan.node_id,
        node_type=plan.type,
        label=plan.label,
        config=config,
        state=state,
        rank=plan.rank,
        upstream=upstream,
        attempt=run.attempt,
        services=run.services,
        run_id=run.run_id,
        execution_id=run.execution_id,
        run_tags=run.run_tags,
        step_key=run.step_key,
        log=run.log,
    )


def unresolved_mode(plan: NodePlan, services: Mapping[str, Any]) -> str:
    """`warn` or `error`: the workflow's `settings.unresolvedReferences`, else the platform's
    FLOWMAESTRO_UNRESOLVED_REFERENCES."""
    if plan.unresolved_references is not None:
        return plan.unresolved_references
    return settings_of(services).unresolved_references


def reference_field(plan: NodePlan, reference: str) -> str:
    """Where a reference is written in the node's config (the compiler's map, else a search of
    the config the node ran with); "" when it is in none (text a render produced)."""
    if reference in plan.references:
        return plan.references[reference]
    return _find_field(plan.config, reference, "") or ""


def _config_path(field_name: str) -> str:
    return f"config.{field_name}" if field_name else "config"


def _find_field(value: Any, reference: str, path: str) -> str | None:
    if isinstance(value, str):
        return path if reference in value else None
    if isinstance(value, dict):
        for key, item in value.items():
            found = _find_field(item, reference, f"{path}.{key}" if path else str(key))
            if found is not None:
                return found
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found = _find_field(item, reference, f"{path}[{index}]")
            if found is not None:
                return found
    return None


def run_node(
    plan: NodePlan, state: ExecutionState, upstream: tuple[str, ...], run: RunContext
) -> NodeOutcome:
    """Execute a node's executor and add its output (and memory writes) to the state.

    Every `{{reference}}` its renders leave as written is a warning on the node (its log, and
    `NodeOutcome.warnings` for the platform), or, when the mode is `error`, the node's failure
    at the render that met it (`UnresolvedReferenceError`: nothing is sent from the verbatim
    text, and it is not retried)."""
    warnings = _OP_WARNINGS.get()
    token = None
    if warnings is None:  # the op's own node (not one of a loop body it runs inline)
        warnings = []
        token = _OP_WARNINGS.set(warnings)
    try:
        strict = unresolved_mode(plan, run.services) == "error"

        def refuse(reference: str) -> None:
            field_name = reference_field(plan, reference)
            raise UnresolvedReferenceError(
                f"{_config_path(field_name)}: {reference} resolves to nothing (no input, "
                "upstream node or variable provides it) and unresolvedReferences is 'error'",
                field=field_name,
                reference=reference,
                node_id=plan.node_id,
                node_type=plan.type,
            )

        with templates.collect_misses(refuse if strict else None) as misses:
            outcome = _run_node(plan, state, upstream, run)
        for reference in misses.references:
            found = _reference_warning(plan, reference)
            run.log.warning(found.message)
            warnings.append(found)
    finally:
        if token is not None:
            _OP_WARNINGS.reset(token)
    if token is not None and warnings:
        return replace(outcome, warnings=tuple(warnings))
    return outcome


def _reference_warning(plan: NodePlan, reference: str) -> ReferenceWarning:
    field_name = reference_field(plan, reference)
    message = (
        f"{plan.node_id}: {_config_path(field_name)}: {reference} resolves to nothing (no input, "
        "upstream node or variable provides it); it stays as written"
    )
    return ReferenceWarning(plan.node_id, field_name, reference, message)


def _run_node(
    plan: NodePlan, state: ExecutionState, upstream: tuple[str, ...], run: RunContext
) -> NodeOutcome:
    if plan.type == "loop" and plan.loop is not None and plan.loop.mode == "inline":
        return run_inline_loop(plan, state, upstream, run)
    if plan.type == "batch" and plan.loop is not None and plan.loop.inline is not None:
        return run_batch_node(plan, state, upstream, run)
    config = plan.typed_config()
    ctx = node_context(plan, config, state, upstream, run)
    executors = run.services.get("executors")
    result = get_executor(plan.type, executors)(ctx)
    if result.parked is not None:
        return NodeOutcome(state, result)
    writes = [
        MemoryWrite(plan.rank, state.iteration, seq, plan.node_id, op.operation, op.key, op.value)
        for seq, op in enumerate(result.memory)
    ]
    output = result.output
    if plan.type == "loop" and plan.loop is not None and plan.loop.mode == "empty":
        output = _empty_body_output(output, plan.loop)
    new_state = state.with_output(plan.node_id, plan.rank, output, writes)
    items: tuple[ExecutionState, ...] = ()
    if plan.type == "loop" and plan.loop is not None and plan.loop.mode == "dynamic":
        values = list(result.items or [])
        items = tuple(
            enter_iteration(new_state, plan, plan.loop, value, index, len(values))
            for index, value in enumerate(values)
        )
    return NodeOutcome(new_state, result, items)


def _empty_body_output(output: Any, loop: LoopPlan) -> Any:
    """A loop with nothing in its body: the items are its results."""
    if not isinstance(output, dict):
        return output
    results = list(output.get("items", []))
    extra = {loop.output_variable: results} if loop.output_variable else {}
    return {**output, "results": results, **extra}


def enter_iteration(
    state: ExecutionState, plan: NodePlan, loop: LoopPlan, item: Any, index: int, count: int
) -> ExecutionState:
    """The state one iteration of a loop body starts from."""
    scoped = state.with_scope(
        {loop.item_variable: item, loop.index_variable: index}, iteration=index
    )
    return scoped.with_output(
        plan.node_id, plan.rank, {"item": item, "index": index, "count": count}
    )


def loop_output_base(plan: NodePlan, state: ExecutionState) -> dict[str, Any]:
    """The loop node's own output before results are folded in."""
    current = state.outputs.get(plan.node_id)
    base = dict(current) if isinstance(current, dict) else {}
    base.pop("item", None)
    base.pop("index", None)
    if plan.loop is not None and plan.loop.output_variable:
        base["__output_variable__"] = plan.loop.output_variable
    return base


def run_inline_loop(
    plan: NodePlan, state: ExecutionState, upstream: tuple[str, ...], run: RunContext
) -> NodeOutcome:
    """A loop whose body runs inside this op: while loops, loops nested in a loop body."""
    assert plan.loop is not None and plan.loop.inline is not None
    config = plan.typed_config()
    assert isinstance(config, LoopConfig)
    region = plan.loop.inline
    ctx = node_context(plan, config, state, upstream, run)
    item_states: list[ExecutionState | None] = []
    items: list[Any] = []
    if config.loop_type == "while":
        current = state
        while len(items) < config.max_iterations and _while_holds(ctx, config, current):
            index = len(items)
            items.append(index)
            base = current.at_iteration(state.iteration)
            start = enter_iteration(base, plan, plan.loop, index, index, index + 1)
            end = _run_region(region, plan.node_id, start, run)
            item_states.append(end)
            if end is not None:
                current = end
    else:
        items = loop_items(ctx, config)
        base = state.with_output(plan.node_id, plan.rank, {"items": items, "count": len(items)})
        for index, item in enumerate(items):
            start = enter_iteration(base, plan, plan.loop, item, index, len(items))
            item_states.append(_run_region(region, plan.node_id, start, run))
    loop_state = state.with_output(plan.node_id, plan.rank, {"items": items, "count": len(items)})
    final = loop_state.with_collected(
        loop_id=plan.node_id,
        loop_rank=plan.rank,
        loop_output=loop_output_base(plan, loop_state),
        body=[n.node_id for n in region.nodes],
        body_ranks={n.node_id: n.rank for n in region.nodes},
        items=item_states,
        result_nodes=region.result_nodes,
        scope_names=(plan.loop.item_variable, plan.loop.index_variable),
    )
    result = NodeResult(final.outputs[plan.node_id])
    return NodeOutcome(final, result)


def run_batch_node(
    plan: NodePlan, state: ExecutionState, upstream: tuple[str, ...], run: RunContext
) -> NodeOutcome:
    """A batch: its body once per item inside this op (chunks, concurrency, minSuccess)."""
    assert plan.loop is not None and plan.loop.inline is not None
    loop, region = plan.loop, plan.loop.inline
    config = plan.typed_config()
    assert isinstance(config, BatchConfig)
    ctx = node_context(plan, config, state, upstream, run)

    def run_item(start: ExecutionState) -> ExecutionState | None:
        return _run_region(region, plan.node_id, start, run) if region.nodes else start

    def enter(base: ExecutionState, item: Any, index: int, count: int) -> ExecutionState:
        return enter_iteration(base, plan, loop, item, index, count)

    base, item_states, summary = run_batch(ctx, plan, state, run_item, enter)
    collected = base.with_collected(
        loop_id=plan.node_id,
        loop_rank=plan.rank,
        loop_output={},
        body=[n.node_id for n in region.nodes],
        body_ranks={n.node_id: n.rank for n in region.nodes},
        items=item_states,
        result_nodes=region.result_nodes,
        scope_names=(loop.item_variable, loop.index_variable),
    )
    if region.nodes:
        summary["results"] = collected.outputs[plan.node_id]["results"]
    else:  # no body: an item's result is the item
        items = base.outputs[plan.node_id]["items"]
        summary["results"] = [
            items[i] if end is not None else None for i, end in enumerate(item_states)
        ]
    result = batch_node_result(summary, config.output_variable)
    return NodeOutcome(collected.with_output(plan.node_id, plan.rank, result.output), result)


def _while_holds(ctx: NodeContext, config: LoopConfig, state: ExecutionState) -> bool:
    if not config.condition:
        raise ctx.error("a while loop needs a condition", NodeConfigurationError)
    try:
        # One check, one expression: a fresh budget each time the condition is read.
        evaluator = Evaluator(state, lenient=True, budget=Budget(ctx.limits))
        return truthy(evaluator.evaluate(parse(config.condition)))
    except ExpressionError as exc:
        raise ctx.error(f"while condition: {exc}", NodeConfigurationError) from exc


def _run_region(
    region: InlineRegion, loop_id: str, start: ExecutionState, run: RunContext
) -> ExecutionState | None:
    """One pass over an inline body; the merged state of the result nodes that ran."""
    states: dict[str, ExecutionState] = {}
    taken: dict[str, frozenset[str] | None] = {}
    incoming: dict[str, list[tuple[str, str | None]]] = {}
    for edge in region.edges:
        incoming.setdefault(edge.target, []).append((edge.source, edge.branch))
    for node in region.nodes:
        live: list[ExecutionState] = []
        for source, branch in incoming.get(node.node_id, []):
            if source == loop_id:
                live.append(start)
                continue
            source_state = states.get(source)
            if source_state is None or source_state.skipped:
                continue
            chosen = taken.get(source)
            if branch is not None and (chosen is None or branch not in chosen):
                continue
            live.append(source_state)
        if not live:
            states[node.node_id] = start.as_skipped(node.node_id)
            continue
        merged = ExecutionState.merge(live)
        producers = tuple(s.producer for s in live if s.producer)
        outcome = run_node(node, merged, producers, run)
        states[node.node_id] = outcome.state
        taken[node.node_id] = outcome.result.branches
    finals = [states[n] for n in region.result_nodes if n in states and not states[n].skipped]
    return ExecutionState.merge(finals) if finals else None
