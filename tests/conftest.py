import json
import logging
import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from flowmaestro_dagster.engines.results import WorkflowRunResult
from flowmaestro_dagster.testing import run_workflow

ROOT = Path(__file__).resolve().parents[1]
CORPUS = Path(os.environ.get("FLOWMAESTRO_CORPUS", ROOT / "tests" / "corpus" / "flowmaestro"))
# Definitions with a back-edge (retry / escalation loops drawn as cycles).
CYCLIC = {
    "advanced-logic/retry-with-exponential-backoff.json",
    "advanced-logic/retry-with-exponential-backoff-2.json",
    "advanced-logic/multi-stage-approval-workflow.json",
    "patterns/basic/quality-reviewer.json",
}

warnings.filterwarnings("ignore", module="dagster")
logging.getLogger("dagster").setLevel(logging.WARNING)


def corpus_files() -> list[Path]:
    return sorted(CORPUS.rglob("*.json"))


def corpus_id(path: Path) -> str:
    return path.relative_to(CORPUS).as_posix()


def load_corpus(relative: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((CORPUS / relative).read_text())
    return data


@pytest.fixture
def run() -> Callable[..., WorkflowRunResult]:
    """Run a definition in process: `run(definition, inputs)`."""

    def _run(definition: Any, inputs: dict[str, Any] | None = None, **kw: Any) -> WorkflowRunResult:
        return run_workflow(definition, inputs or {}, **kw)

    return _run


def flow(
    nodes: list[dict[str, Any]], edges: list[tuple[Any, ...]], name: str = "t"
) -> dict[str, Any]:
    """A React-Flow definition from compact node and edge lists.

    Node: {"id", "type", **data}; edge: (source, target) or (source, target, sourceHandle).
    """
    return {
        "name": name,
        "nodes": [
            {
                "id": n["id"],
                "type": n["type"],
                "position": {"x": 0, "y": 0},
                "data": {k: v for k, v in n.items() if k not in ("id", "type")},
            }
            for n in nodes
        ],
        "edges": [
            {
                "id": f"e{i}",
                "source": e[0],
                "target": e[1],
                **({"sourceHandle": e[2]} if len(e) > 2 else {}),
            }
            for i, e in enumerate(edges)
        ],
    }
