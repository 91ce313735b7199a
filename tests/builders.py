"""Workflow definitions for tests, from compact nodes and edges.

A compact node is `{"id", "type", **data}` (`node(id, type, **data)` writes one); an edge is
`(source, target)` or `(source, target, sourceHandle)`. `flow` gives the React-Flow shape (a
list of nodes with `data`), `backend_flow` the backend shape (nodes keyed by id, with `config`;
a `label` becomes the node's name), and `chain` wires nodes one after the other in either.
`node_context` builds the context a test calls one node's executor with, as a plain function.
"""

from collections.abc import Mapping
from itertools import pairwise
from typing import Any

from flowmaestro_dagster.lang.state import ExecutionState
from flowmaestro_dagster.nodes import NodeContext
from flowmaestro_dagster.spec.configs import normalise_config

Edge = tuple[Any, ...]


def node(node_id: str, node_type: str, **data: Any) -> dict[str, Any]:
    """A compact node."""
    return {"id": node_id, "type": node_type, **data}


def _data(compact: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in compact.items() if k not in ("id", "type")}


def _edges(edges: list[Edge]) -> list[dict[str, Any]]:
    return [
        {
            "id": f"e{i}",
            "source": e[0],
            "target": e[1],
            **({"sourceHandle": e[2]} if len(e) > 2 else {}),
        }
        for i, e in enumerate(edges)
    ]


def flow(nodes: list[dict[str, Any]], edges: list[Edge], name: str = "t") -> dict[str, Any]:
    """A React-Flow definition from compact node and edge lists."""
    return {
        "name": name,
        "nodes": [
            {"id": n["id"], "type": n["type"], "position": {"x": 0, "y": 0}, "data": _data(n)}
            for n in nodes
        ],
        "edges": _edges(edges),
    }


def backend_flow(nodes: list[dict[str, Any]], edges: list[Edge], name: str = "t") -> dict[str, Any]:
    """A backend-shape definition from compact node and edge lists."""

    def backend(compact: dict[str, Any]) -> dict[str, Any]:
        config = _data(compact)
        label = config.pop("label", None)
        return {"type": compact["type"], "config": config} | ({"name": label} if label else {})

    return {"name": name, "nodes": {n["id"]: backend(n) for n in nodes}, "edges": _edges(edges)}


def chain(*nodes: dict[str, Any], name: str = "t", react: bool = False) -> dict[str, Any]:
    """The nodes wired one after the other: backend shape, or React-Flow's with `react`."""
    edges: list[Edge] = list(pairwise(n["id"] for n in nodes))
    return (flow if react else backend_flow)(list(nodes), edges, name)


def node_context(
    node_type: str,
    raw: dict[str, Any],
    services: Mapping[str, Any],
    *,
    inputs: dict[str, Any] | None = None,
    upstream: dict[str, Any] | None = None,
    **fields: Any,
) -> NodeContext:
    """Node `n`'s context, as the engine would give it: `raw` normalised (it must be clean),
    `inputs` as the run's data, `upstream` (predecessor id -> its output) in rank order, and
    other `NodeContext` fields (`execution_id`, `run_tags`, ...) as given."""
    config, problems = normalise_config(node_type, raw, node_id="n")
    assert problems == [], problems
    state = ExecutionState.start(inputs or {})
    for rank, (node_id, output) in enumerate((upstream or {}).items()):
        state = state.with_output(node_id, rank, output)
    return NodeContext(
        node_id="n",
        node_type=node_type,
        label="n",
        config=config,
        state=state,
        rank=len(upstream or {}),
        upstream=tuple(upstream or {}),
        services=services,
        **fields,
    )
