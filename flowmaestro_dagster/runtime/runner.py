"""Running one node on a state: shared by the Dagster adapter and inline loop bodies."""

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from flowmaestro_dagster.errors import ExpressionError, NodeConfigurationError
from flowmaestro_dagster.lang.expressions import Budget, Evaluator, parse, truthy
from flowmaestro_dagster.lang.state import ExecutionState, MemoryWrite
from flowmaestro_dagster.nodes import NodeContext, NodeResult, get_executor
from flowmaestro_dagster.nodes.loop import loop_items
from flowmaestro_dagster.runtime.batch import batch_node_result, run_batch
from flowmaestro_dagster.runtime.plan import InlineRegion, LoopPlan, NodePlan
from flowmaestro_dagster.spec.configs import BatchConfig, LoopConfig

_log = logging.getLogger("flowmaestro.runtime")


@dataclass(frozen=True)
class NodeOutcome:
    state: ExecutionState
    result: NodeResult
    item_states: tuple[ExecutionState, ...] = ()


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


def run_node(
    plan: NodePlan, state: ExecutionState, upstream: tuple[str, ...], run: RunContext
) -> NodeOutcome:
    """Execute a node's executor and add its output (and memory writes) to the state."""
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
