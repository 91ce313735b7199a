"""Graph facts about a workflow: order, cycles, branch handles and loop regions.

Pure functions of a `WorkflowSpec`; the validator and the compiler both read them.
"""

import re
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Literal

from flowmaestro_dagster.spec.configs import LoopConfig, RouterConfig, SwitchConfig
from flowmaestro_dagster.spec.models import EdgeSpec, WorkflowSpec
from flowmaestro_dagster.spec.node_types import REGION_TYPES

# Edge handles that lead from a loop node into its body (everything else leaves the loop).
LOOP_BODY_HANDLES: frozenset[str] = frozenset({"body", "output-body", "loop-body", "loop"})
ERROR_HANDLE = "error"
_TRUE_HANDLES = {"true", "yes", "pass", "passed", "success"}
_FALSE_HANDLES = {"false", "no", "fail", "failed", "else"}
_CASE_INDEX = re.compile(r"^(?:case|route)[-_](\d+)$", re.IGNORECASE)
_CASE_PREFIX = re.compile(r"^(?:case|route)[-_]", re.IGNORECASE)


@dataclass(frozen=True)
class LoopRegion:
    """A loop (or batch) node, the nodes run once per item, and the nodes that receive the
    results.

    `dynamic` regions become Dagster DynamicOut → map → collect; `inline` ones (while loops,
    loops nested in another loop's body) run their body inside the loop's own op.
    """

    loop_id: str
    mode: Literal["dynamic", "inline"]
    body: tuple[str, ...]
    exits: tuple[str, ...]
    feeds: dict[str, tuple[str, ...]] = field(default_factory=dict)
    sinks: tuple[str, ...] = ()


def is_error_edge(edge: EdgeSpec) -> bool:
    """An edge taken only when its source fails for good (`sourceHandle: "error"`, or a goto)."""
    return edge.handle is not None and edge.handle.strip().lower() == ERROR_HANDLE


def goto_edges(spec: WorkflowSpec) -> list[EdgeSpec]:
    """`onError: {strategy: goto, gotoNode}` as the error edge it behaves like."""
    edges = []
    for node in spec.nodes.values():
        on_error = node.on_error
        if on_error is None or on_error.strategy != "goto" or not on_error.goto_node:
            continue
        if on_error.goto_node in spec.nodes:
            edges.append(
                EdgeSpec(
                    id=f"{node.id}:onError.gotoNode",
                    source=node.id,
                    target=on_error.goto_node,
                    source_handle=ERROR_HANDLE,
                )
            )
    return edges


class WorkflowGraph:
    """Adjacency of a spec (edges to unknown nodes are left out: validation reports them).

    Error paths (error edges and `onError` gotos) are edges with the `error` handle; with
    `error_paths=False` they are left out (to tell a drawn cycle from one a goto closes).
    """

    def __init__(self, spec: WorkflowSpec, *, error_paths: bool = True) -> None:
        self.spec = spec
        self.node_ids: list[str] = list(spec.nodes)
        self.position = {node_id: i for i, node_id in enumerate(self.node_ids)}
        self.incoming: dict[str, list[EdgeSpec]] = {n: [] for n in self.node_ids}
        self.outgoing: dict[str, list[EdgeSpec]] = {n: [] for n in self.node_ids}
        seen: set[tuple[str, str | None, str]] = set()
        edges = [*spec.edges, *goto_edges(spec)] if error_paths else spec.edges
        for edge in edges:
            if edge.source not in spec.nodes or edge.target not in spec.nodes:
                continue
            if not error_paths and is_error_edge(edge):
                continue
            key = (edge.source, edge.handle, edge.target)
            if key in seen:
                continue
            seen.add(key)
            self.outgoing[edge.source].append(edge)
            self.incoming[edge.target].append(edge)
        self._predecessors: dict[str, list[str]] = {}
        self._successors: dict[str, list[str]] = {}
        self._regions: dict[tuple[str, ...], dict[str, LoopRegion]] = {}

    # Neighbour lists are asked for again and again (loop bodies, ancestors): built once each,
    # and shared, so callers must not change them. Loop regions are kept per order likewise.

    def predecessors(self, node_id: str) -> list[str]:
        found = self._predecessors.get(node_id)
        if found is None:
            found = list(dict.fromkeys(e.source for e in self.incoming[node_id]))
            self._predecessors[node_id] = found
        return found

    def successors(self, node_id: str) -> list[str]:
        found = self._successors.get(node_id)
        if found is None:
            found = list(dict.fromkeys(e.target for e in self.outgoing[node_id]))
            self._successors[node_id] = found
        return found

    def start_nodes(self) -> list[str]:
        return [n for n in self.node_ids if not self.incoming[n]]

    def find_cycle(self) -> list[str] | None:
        """One cycle as a node path that starts and ends at the same node, or None."""
        white, grey, black = 0, 1, 2
        color = dict.fromkeys(self.node_ids, white)
        for root in self.node_ids:
            if color[root] != white:
                continue
            stack: list[tuple[str, int]] = [(root, 0)]
            path: list[str] = []
            while stack:
                node, index = stack.pop()
                if index == 0:
                    color[node] = grey
                    path.append(node)
                successors = self.successors(node)  # built once: a hub has thousands
                if index < len(successors):
                    stack.append((node, index + 1))
                    nxt = successors[index]
                    if color[nxt] == grey:
                        return [*path[path.index(nxt) :], nxt]
                    if color[nxt] == white:
                        stack.append((nxt, 0))
                else:
                    color[node] = black
                    path.pop()
        return None

    def topological_order(self) -> list[str]:
        """Kahn's order, ties broken by the order nodes were written in; needs an acyclic graph."""
        import heapq

        indegree = {n: len(self.predecessors(n)) for n in self.node_ids}
        ready = [(self.position[n], n) for n in self.node_ids if indegree[n] == 0]
        heapq.heapify(ready)
        order = []
        while ready:
            _, node = heapq.heappop(ready)
            order.append(node)
            for nxt in self.successors(node):
                indegree[nxt] -= 1
                if indegree[nxt] == 0:
                    heapq.heappush(ready, (self.position[nxt], nxt))
        if len(order) != len(self.node_ids):
            raise ValueError("the workflow graph has a cycle")
        return order

    def descendants(self, node_id: str) -> set[str]:
        return _reachable(node_id, self.successors)

    def ancestors(self, node_id: str) -> set[str]:
        return _reachable(node_id, self.predecessors)

    # -- loops -------------------------------------------------------------------------------

    def loop_regions(self, order: list[str]) -> dict[str, LoopRegion]:
        """Every loop's region, outer loops first (needs an acyclic graph)."""
        key = tuple(order)
        if key not in self._regions:
            self._regions[key] = self._find_regions(order)
        return dict(self._regions[key])

    def _find_regions(self, order: list[str]) -> dict[str, LoopRegion]:
        regions: dict[str, LoopRegion] = {}
        rank = {n: i for i, n in enumerate(order)}
        owner: dict[str, str] = {}  # node -> the dynamic loop whose body holds it
        inline_owned: set[str] = set()
        for loop_id in order:
            node = self.spec.nodes[loop_id]
            if node.type not in REGION_TYPES:
                continue
            config = node.config
            body, exits, feeds, sinks = self._loop_body(loop_id, order, rank)
            nested = loop_id in owner or loop_id in inline_owned
            # A batch runs its items inside its own op (chunks, concurrency, minSuccess).
            inline = not isinstance(config, LoopConfig) or config.loop_type == "while"
            mode: Literal["dynamic", "inline"] = "inline" if nested or inline else "dynamic"
            region = LoopRegion(loop_id, mode, body, exits, feeds, sinks)
            regions[loop_id] = region
            if mode == "inline":
                inline_owned.update(body)
            else:
                for member in body:
                    owner.setdefault(member, loop_id)
        return regions

    def _loop_body(
        self, loop_id: str, order: list[str], rank: dict[str, int]
    ) -> tuple[tuple[str, ...], tuple[str, ...], dict[str, tuple[str, ...]], tuple[str, ...]]:
        # An error edge of the loop node leads out of it, never into the body.
        outgoing = [e for e in self.outgoing[loop_id] if not is_error_edge(e)]
        handle_mode = any(e.handle in LOOP_BODY_HANDLES for e in outgoing)
        body_entry = {
            e.target for e in outgoing if not handle_mode or e.handle in LOOP_BODY_HANDLES
        }
        direct_exits = {
            e.target for e in outgoing if handle_mode and e.handle not in LOOP_BODY_HANDLES
        }
        downstream = self.descendants(loop_id)
        body: list[str] = []
        members: set[str] = set()
        exits: list[str] = []
        for node_id in order[rank[loop_id] + 1 :]:
            if node_id not in downstream:
                continue
            preds = self.incoming[node_id]
            inside = [
                e
                for e in preds
                if e.source in members or (e.source == loop_id and e.target in body_entry)
            ]
            if node_id in direct_exits:
                exits.append(node_id)
                continue
            if not inside:
                continue
            node = self.spec.nodes[node_id]
            if node.type == "output" or len(inside) < len(preds):
                exits.append(node_id)
            else:
                body.append(node_id)
                members.add(node_id)
        sinks = tuple(n for n in body if not any(s in members for s in self.successors(n)))
        feeds: dict[str, tuple[str, ...]] = {}
        for exit_id in exits:
            from_body = tuple(p for p in self.predecessors(exit_id) if p in members)
            feeds[exit_id] = from_body or sinks
        return tuple(body), tuple(exits), feeds, sinks


# -- branch handles ------------------------------------------------------------------------------


def branch_key(spec: WorkflowSpec, node_id: str, handle: str) -> str | None:
    """What a branch node's edge handle selects (`true`, `case-2`, `route-0`, `default`)."""
    node = spec.nodes[node_id]
    lowered = handle.strip().lower()
    if node.type == "conditional":
        if lowered in _TRUE_HANDLES:
            return "true"
        if lowered in _FALSE_HANDLES:
            return "false"
        return None
    if node.type in ("switch", "router"):
        config = node.config
        if lowered == "default":
            return "default"
        values: list[str]
        prefix: str
        if isinstance(config, SwitchConfig):
            values, prefix = [c.value for c in config.cases], "case"
        else:
            assert isinstance(config, RouterConfig)
            values, prefix = [r.value for r in config.routes], "route"
        for index, value in enumerate(values):
            if value == handle:
                return f"{prefix}-{index}"
        for index, value in enumerate(values):
            if value.strip().lower() == lowered:
                return f"{prefix}-{index}"
        # `case-<value>` (fixtures write `case-high` for the case `high`), then `case-<index>`.
        named = _CASE_PREFIX.sub("", lowered, count=1)
        if named != lowered:
            for index, value in enumerate(values):
                if value.strip().lower() == named:
                    return f"{prefix}-{index}"
        match = _CASE_INDEX.match(lowered)
        if match and int(match.group(1)) < len(values):
            return f"{prefix}-{int(match.group(1))}"
        return None
    return None


def unique_names(raw: Iterable[str]) -> list[str]:
    """De-duplicate names deterministically by suffixing `_2`, `_3`, ..."""
    used: set[str] = set()
    out = []
    for name in raw:
        candidate = name
        counter = 2
        while candidate in used:
            candidate = f"{name}_{counter}"
            counter += 1
        used.add(candidate)
        out.append(candidate)
    return out


def _reachable(node_id: str, neighbours: Callable[[str], Iterable[str]]) -> set[str]:
    """Every node reached from `node_id` by following `neighbours` (`node_id` itself only
    through a cycle)."""
    seen: set[str] = set()
    queue = deque(neighbours(node_id))
    while queue:
        node = queue.popleft()
        if node not in seen:
            seen.add(node)
            queue.extend(neighbours(node))
    return seen
