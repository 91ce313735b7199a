"""The execution state that travels along a workflow's edges.

Every op receives the states of its upstream nodes, merges them, adds its node's output and
passes the result on. A state therefore holds exactly what a node may read: the execution's
inputs, the outputs of the nodes upstream of it (by node id), loop variables, and the writes to
shared memory made upstream. It is plain data (`to_dict` / `from_dict`) so any IO manager can
store it and any worker can resume from it.

Names resolve in this order (see docs/semantics.md): loop variables (innermost first), node
ids (a node whose outputVariable equals its id resolves to that variable), execution inputs,
then the top-level keys of node outputs in topological order (the first writer wins), then
`inputs` (the whole inputs object). `input` is the workflow's inputs too (`{{input.topic}}`):
a node `input` (the builder's input node) reads as the inputs with its own output on top.
"""

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from flowmaestro_dagster.lang.expressions import Unresolved

STATE_VERSION = 1
# The builder names its input node `input`, and definitions read the workflow's inputs through
# it (`{{input.category}}` with inputs `{"category": ...}`), whatever its inputName: the name
# reads as the inputs, with the node's own output (when there is one) on top.
INPUT_ALIAS = "input"
# The builder's triggers hand their payload on as `trigger` (`{{trigger.ticketId}}` of a
# webhook); a trigger's payload is the execution's inputs, so with no node of that id the name
# reads as the inputs, like `input`.
TRIGGER_ALIAS = "trigger"


@dataclass(frozen=True, slots=True)
class MemoryWrite:
    """One write to shared memory, ordered by the writer's rank and loop iteration."""

    rank: int
    iteration: tuple[int, ...]
    seq: int
    node_id: str
    operation: str  # store | append | delete
    key: str
    value: Any = None

    @property
    def order(self) -> tuple[int, tuple[int, ...], int]:
        return (self.rank, self.iteration, self.seq)


@dataclass(frozen=True, slots=True)
class ExecutionState:
    inputs: Mapping[str, Any]
    outputs: Mapping[str, Any] = field(default_factory=dict)
    ranks: Mapping[str, int] = field(default_factory=dict)
    collected: frozenset[str] = frozenset()
    scope: Mapping[str, Any] = field(default_factory=dict)
    memory: tuple[MemoryWrite, ...] = ()
    iteration: tuple[int, ...] = ()
    skipped: bool = False
    producer: str | None = None
    _names: dict[str, Any] | None = field(default=None, compare=False, repr=False)

    # -- building --------------------------------------------------------------------------

    @classmethod
    def start(cls, inputs: Mapping[str, Any]) -> "ExecutionState":
        return cls(inputs=dict(inputs))

    @classmethod
    def merge(cls, states: Sequence["ExecutionState"]) -> "ExecutionState":
        """Union of upstream states (a join); skip markers only count when all are skipped."""
        if not states:
            raise ValueError("merge needs at least one state")
        live = [s for s in states if not s.skipped] or list(states[:1])
        if len(live) == 1:
            return live[0]
        first = live[0]
        outputs: dict[str, Any] = {}
        ranks: dict[str, int] = {}
        scope: dict[str, Any] = {}
        collected: set[str] = set()
        for state in live:
            outputs.update(state.outputs)
            ranks.update(state.ranks)
            scope.update(state.scope)
            collected |= state.collected
        return replace(
            first,
            outputs=outputs,
            ranks=ranks,
            scope=scope,
            collected=frozenset(collected),
            memory=_union_memory(s.memory for s in live),
            _names=None,
        )

    def with_output(
        self, node_id: str, rank: int, value: Any, memory: Sequence[MemoryWrite] = ()
    ) -> "ExecutionState":
        return replace(
            self,
            outputs={**self.outputs, node_id: value},
            ranks={**self.ranks, node_id: rank},
            memory=self.memory + tuple(memory) if memory else self.memory,
            producer=node_id,
            skipped=False,
            _names=None,
        )

    def with_scope(self, values: Mapping[str, Any], iteration: int) -> "ExecutionState":
        return replace(
            self,
            scope={**self.scope, **values},
            iteration=(*self.iteration, iteration),
            _names=None,
        )

    def at_iteration(self, iteration: tuple[int, ...]) -> "ExecutionState":
        return replace(self, iteration=iteration, _names=None)

    def as_skipped(self, node_id: str) -> "ExecutionState":
        """A marker that `node_id` did not run (inside loop bodies, where Dagster cannot skip)."""
        return replace(self, skipped=True, producer=node_id)

    def with_collected(
        self,
        *,
        loop_id: str,
        loop_rank: int,
        loop_output: Mapping[str, Any],
        body: Sequence[str],
        body_ranks: Mapping[str, int],
        items: Sequence["ExecutionState | None"],
        result_nodes: Sequence[str],
        scope_names: Iterable[str] = (),
    ) -> "ExecutionState":
        """This state after a loop: per-item results as lists, loop variables out of scope.

        `items` holds one state per iteration (None for an iteration that reached none of
        `result_nodes`); each body node's output becomes the list of its per-item outputs and
        the loop's output gets `results`: per item, the output of the body node that led here.
        """
        outputs = dict(self.outputs)
        ranks = dict(self.ranks)
        results: list[Any] = []
        for state in items:
            if state is None:
                results.append(None)
                continue
            reached = [n for n in result_nodes if n in state.outputs]
            if not reached:
                results.append(None)
            elif len(reached) == 1:
                results.append(state.outputs[reached[0]])
            else:
                results.append({n: state.outputs[n] for n in reached})
        for node_id in body:
            outputs[node_id] = [
                state.outputs.get(node_id) if state is not None else None for state in items
            ]
            ranks[node_id] = body_ranks[node_id]
        output = dict(loop_output)
        output["results"] = results
        variable = output.pop("__output_variable__", None)
        if variable:
            output[variable] = results
        outputs[loop_id] = output
        ranks[loop_id] = loop_rank
        scope = {k: v for k, v in self.scope.items() if k not in set(scope_names)}
        memory = _union_memory([self.memory, *(s.memory for s in items if s is not None)])
        return replace(
            self,
            outputs=outputs,
            ranks=ranks,
            scope=scope,
            collected=self.collected | frozenset(body),
            memory=memory,
            iteration=self.iteration,
            skipped=False,
            _names=None,
        )

    # -- reading ---------------------------------------------------------------------------

    def lookup(self, name: str) -> Any:
        """Value of a root name for templates and expressions; raises `Unresolved`."""
        if name in self.scope:
            return self.scope[name]
        if name in self.outputs:
            output = self.outputs[name]
            if name in self.collected and isinstance(output, list):
                items = [i for i in output if i is not None]
                if items and all(isinstance(i, dict) and name in i for i in items):
                    return [None if i is None else i[name] for i in output]
                return output
            if isinstance(output, dict) and name in output:
                return output[name]  # a node named like its own outputVariable
            if name == INPUT_ALIAS and isinstance(output, dict):
                return {**self.inputs, **output}  # `{{input.category}}`: an input it lacks
            return output
        if name in self.inputs:
            return self.inputs[name]
        names = self._name_index()
        if name in names:
            return names[name]
        if name in ("inputs", INPUT_ALIAS, TRIGGER_ALIAS):
            return dict(self.inputs)
        raise Unresolved(name)

    def has(self, name: str) -> bool:
        try:
            self.lookup(name)
        except Unresolved:
            return False
        return True

    def _name_index(self) -> dict[str, Any]:
        if self._names is not None:
            return self._names
        index: dict[str, Any] = {}
        per_item: set[str] = set()  # keys whose value is a list of per-item values
        for node_id in sorted(self.outputs, key=lambda n: (self.ranks.get(n, 0), n)):
            value = self.outputs[node_id]
            if node_id in self.collected and isinstance(value, list):
                # After a loop: a key is the list of its per-item values; alternative
                # branches of the body fill each other's gaps.
                for position, item in enumerate(value):
                    if not isinstance(item, dict):
                        continue
                    for key, item_value in item.items():
                        if key not in index:
                            index[key] = [None] * len(value)
                            per_item.add(key)
                        if key in per_item and index[key][position] is None:
                            index[key][position] = item_value
            elif isinstance(value, dict):
                for key, item in value.items():
                    index.setdefault(key, item)
        object.__setattr__(self, "_names", index)
        return index

    def memory_view(self) -> dict[str, Any]:
        """Shared memory as upstream writes left it, replayed in order."""
        view: dict[str, Any] = {}
        for write in sorted(self.memory, key=lambda w: w.order):
            if write.operation == "store":
                view[write.key] = write.value
            elif write.operation == "append":
                current = view.get(write.key)
                if current is None:
                    current = []
                elif not isinstance(current, list):
                    current = [current]
                view[write.key] = [*current, write.value]
            elif write.operation == "delete":
                view.pop(write.key, None)
        return view

    # -- storage ---------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return {
            "v": STATE_VERSION,
            "inputs": dict(self.inputs),
            "outputs": dict(self.outputs),
            "ranks": dict(self.ranks),
            "collected": sorted(self.collected),
            "scope": dict(self.scope),
            "memory": [
                [w.rank, list(w.iteration), w.seq, w.node_id, w.operation, w.key, w.value]
                for w in self.memory
            ],
            "iteration": list(self.iteration),
            "skipped": self.skipped,
            "producer": self.producer,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "ExecutionState":
        return cls(
            inputs=data.get("inputs", {}),
            outputs=data.get("outputs", {}),
            ranks=data.get("ranks", {}),
            collected=frozenset(data.get("collected", ())),
            scope=data.get("scope", {}),
            memory=tuple(
                MemoryWrite(w[0], tuple(w[1]), w[2], w[3], w[4], w[5], w[6])
                for w in data.get("memory", ())
            ),
            iteration=tuple(data.get("iteration", ())),
            skipped=bool(data.get("skipped", False)),
            producer=data.get("producer"),
        )


def _union_memory(groups: Iterable[Sequence[MemoryWrite]]) -> tuple[MemoryWrite, ...]:
    seen: dict[tuple[str, tuple[int, ...], int], MemoryWrite] = {}
    for group in groups:
        for write in group:
            seen.setdefault((write.node_id, write.iteration, write.seq), write)
    return tuple(sorted(seen.values(), key=lambda w: w.order))
