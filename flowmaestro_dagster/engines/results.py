"""What happened in a run, per node: read from Dagster's events and the nodes' output states."""

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from dagster import DagsterEvent, DagsterEventType

from flowmaestro_dagster.compile.compiler import CompiledWorkflow
from flowmaestro_dagster.lang.state import ExecutionState
from flowmaestro_dagster.spec.graph import WorkflowGraph

NodeStatus = Literal["succeeded", "failed", "skipped", "not_run", "running", "waiting"]
RunStatus = Literal["succeeded", "failed"]


@dataclass
class NodeRun:
    node_id: str
    label: str
    type: str
    status: NodeStatus
    attempts: int = 0
    iterations: int | None = None
    output: Any = None
    error: str | None = None


@dataclass
class WorkflowRunResult:
    run_id: str
    status: RunStatus
    nodes: dict[str, NodeRun] = field(default_factory=dict)
    outputs: dict[str, Any] = field(default_factory=dict)

    @property
    def ran(self) -> set[str]:
        return {n for n, r in self.nodes.items() if r.status == "succeeded"}

    @property
    def skipped(self) -> set[str]:
        return {n for n, r in self.nodes.items() if r.status in ("skipped", "not_run")}

    def output(self, node_id: str) -> Any:
        return self.nodes[node_id].output

    def to_dict(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "status": self.status,
            "nodes": {k: asdict(v) for k, v in self.nodes.items()},
            "outputs": self.outputs,
        }


def _step_node(step_key: str) -> tuple[str, str | None]:
    """`llm_1[3]` → ('llm_1', '3')."""
    if step_key.endswith("]") and "[" in step_key:
        alias, _, key = step_key[:-1].partition("[")
        return alias, key
    return step_key, None


def summarize(
    compiled: CompiledWorkflow,
    *,
    run_id: str,
    success: bool,
    events: Iterable[DagsterEvent],
    states: Mapping[str, ExecutionState | Mapping[str, ExecutionState]],
) -> WorkflowRunResult:
    """Per-node status, attempts, outputs and the final outputs of a run.

    `states` maps op alias to the state its `result` output carried (or, for ops in a loop
    body, mapping key → state).
    """
    by_alias: dict[str, dict[str, Any]] = {}
    for event in events:
        if not event.step_key:
            continue
        step_alias, _ = _step_node(event.step_key)
        info = by_alias.setdefault(
            step_alias, {"success": 0, "failure": 0, "skipped": 0, "retries": 0}
        )
        kind = event.event_type
        if kind == DagsterEventType.STEP_SUCCESS:
            info["success"] += 1
        elif kind == DagsterEventType.STEP_FAILURE:
            info["failure"] += 1
            data = event.event_specific_data
            error = getattr(data, "error", None)
            user = getattr(error, "cause", None) or error
            description = getattr(getattr(data, "user_failure_data", None), "description", None)
            info["error"] = description or (getattr(user, "message", None) or "").strip()
        elif kind == DagsterEventType.STEP_SKIPPED:
            info["skipped"] += 1
        elif kind == DagsterEventType.STEP_UP_FOR_RETRY:
            info["retries"] += 1
        elif kind == DagsterEventType.STEP_OUTPUT:
            # A failure that onError / an error edge handled (see adapter._handled_outputs).
            metadata = getattr(event.event_specific_data, "metadata", None) or {}
            handled = metadata.get("flowmaestro/error")
            if handled is not None:
                info["handled"] = str(getattr(handled, "value", handled))
    spec = compiled.spec
    nodes: dict[str, NodeRun] = {}
    for node_id, node in spec.nodes.items():
        run = NodeRun(node_id, node.label, node.source_type, "not_run")
        nodes[node_id] = run
        alias = compiled.aliases.get(node_id)
        if alias is None:
            continue  # runs inside its loop's op; filled from the loop's state below
        info = by_alias.get(alias, {})
        state = states.get(alias)
        run.attempts = info.get("success", 0) + info.get("failure", 0) + info.get("retries", 0)
        if info.get("failure"):
            run.status, run.error = "failed", info.get("error")
        elif info.get("handled") is not None and state is None:
            run.status, run.error = "failed", info["handled"]  # only its error path ran
        elif isinstance(state, Mapping):
            per_item = [state[k] for k in sorted(state)]
            run.iterations = len(per_item)
            live = [s for s in per_item if not s.skipped]
            run.status = "succeeded" if live else "skipped"
            run.output = [None if s.skipped else s.outputs.get(node_id) for s in per_item]
        elif isinstance(state, ExecutionState):
            run.status = "skipped" if state.skipped else "succeeded"
            run.output = None if state.skipped else state.outputs.get(node_id)
        elif info.get("success"):
            run.status = "skipped"  # the step ran but yielded nothing: nothing reached it
        elif info.get("skipped"):
            run.status = "skipped"
        if info.get("handled") is not None:
            run.error = info["handled"]  # continue / fallback: it has a value, and an error
    _fill_inline(compiled, nodes, states)
    outputs = final_outputs(compiled, nodes)
    return WorkflowRunResult(run_id, "succeeded" if success else "failed", nodes, outputs)


def _fill_inline(
    compiled: CompiledWorkflow,
    nodes: dict[str, NodeRun],
    states: Mapping[str, ExecutionState | Mapping[str, ExecutionState]],
) -> None:
    """Nodes that ran inside their loop's op: their per-item outputs are in later states."""
    for node_id, run in nodes.items():
        if node_id in compiled.aliases:
            continue
        for state in _all_states(states):
            value = state.outputs.get(node_id)
            if value is not None:
                run.output = value
                run.status = "succeeded" if any(v is not None for v in value) else "skipped"
                run.iterations = len(value) if isinstance(value, list) else None
                break


def _all_states(
    states: Mapping[str, ExecutionState | Mapping[str, ExecutionState]],
) -> Iterable[ExecutionState]:
    for value in states.values():
        if isinstance(value, ExecutionState):
            yield value
        else:
            yield from value.values()


def final_outputs(compiled: CompiledWorkflow, nodes: Mapping[str, NodeRun]) -> dict[str, Any]:
    """Merge of every output node's `{outputName: value}`, else of the nodes with no dependents."""
    spec = compiled.spec
    graph = WorkflowGraph(spec)
    order = graph.topological_order()
    outputs_nodes = [n for n in order if spec.nodes[n].type == "output"]
    chosen = outputs_nodes or [n for n in order if not graph.outgoing[n]]
    merged: dict[str, Any] = {}
    for node_id in chosen:
        run = nodes.get(node_id)
        if run is None or run.status != "succeeded":
            continue
        if isinstance(run.output, dict):
            merged.update(run.output)
        else:
            merged[node_id] = run.output
    return merged


def output_states(
    compiled: CompiledWorkflow, get_output: Any, aliases: Sequence[str]
) -> dict[str, ExecutionState | dict[str, ExecutionState]]:
    """States of the `result` outputs, via `get_output(alias)` (absent ones are left out)."""
    found: dict[str, ExecutionState | dict[str, ExecutionState]] = {}
    for alias in aliases:
        try:
            value = get_output(alias)
        except Exception:  # noqa: BLE001 - Dagster raises several types for "no output"
            continue
        if isinstance(value, ExecutionState):
            found[alias] = value
        elif isinstance(value, Mapping):
            found[alias] = {k: v for k, v in value.items() if isinstance(v, ExecutionState)}
    return found
