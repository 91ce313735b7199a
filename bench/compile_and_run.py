"""Compiler benchmark (`compile` section) and per-node run overhead (`overhead` section).

* compile: every corpus file (best of 3 per file) and a synthetic 500-node workflow;
* overhead: a 20-node chain of 10 ms nodes, compiled, on Dagster's in-process executor and on
  our threaded executor (the deployed default), against a hand-written Dagster job of the same
  shape (same sleep per node, in-process executor) and plain Python calls, on an ephemeral
  instance and on a persistent SQLite instance (Dagster's default storage under a temporary
  DAGSTER_HOME: every event is written to the run's SQLite event log). Runs are interleaved
  round by round so machine noise hits every variant alike.

`python -m bench.compile_and_run [--quick]` prints both sections as JSON.
"""

import json
import logging
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import dagster as dg

from bench.common import percentile
from flowmaestro_dagster.engines.jobs import build_job
from flowmaestro_dagster.engines.local import execute_in_process_with_executor, run_config_for
from flowmaestro_dagster.errors import InvalidWorkflowError

ROOT = Path(__file__).resolve().parents[1]
CORPUS = ROOT / "tests" / "corpus" / "flowmaestro"
NODE_SECONDS = 0.010
CHAIN = 20


def corpus_compile_times(repeats: int = 3) -> dict[str, Any]:
    texts = [p.read_bytes() for p in sorted(CORPUS.rglob("*.json"))]
    times: list[float] = []
    rejected = 0
    for text in texts:
        best = float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            try:
                build_job(text)
            except InvalidWorkflowError:
                rejected += 1 if _ == 0 else 0
            best = min(best, time.perf_counter() - start)
        times.append(best * 1000)
    return {
        "files": len(texts),
        "rejected": rejected,
        "min_ms": round(min(times), 2),
        "p50_ms": round(percentile(times, 0.5), 2),
        "p95_ms": round(percentile(times, 0.95), 2),
        "max_ms": round(max(times), 2),
    }


def synthetic(nodes: int) -> dict[str, Any]:
    """A layered workflow: branches, joins, templates, like a large real canvas."""
    spec_nodes: dict[str, Any] = {
        "input": {"type": "input", "name": "Input", "config": {"inputName": "x"}}
    }
    edges: list[dict[str, Any]] = []
    previous = ["input"]
    index = 0
    while len(spec_nodes) < nodes:
        layer = []
        for _ in range(min(5, nodes - len(spec_nodes))):
            node_id = f"step-{index}"
            index += 1
            spec_nodes[node_id] = {
                "type": "transform",
                "name": f"Step {index}",
                "config": {
                    "transformType": "template",
                    "template": f"{{{{x}}}} {node_id}",
                    "outputVariable": f"v{index}",
                },
            }
            for source in previous[:2]:
                edges.append({"id": f"e{len(edges)}", "source": source, "target": node_id})
            layer.append(node_id)
        previous = layer
    return {"name": f"synthetic {nodes}", "nodes": spec_nodes, "edges": edges}


def large_compile(nodes: int = 500, repeats: int = 3) -> dict[str, Any]:
    definition = json.dumps(synthetic(nodes))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        build_job(definition)
        times.append(time.perf_counter() - start)
    return {
        "nodes": nodes,
        "repeats": repeats,
        "best_s": round(min(times), 3),
        "median_s": round(statistics.median(times), 3),
        "max_s": round(max(times), 3),
    }


def chain_definition(length: int = CHAIN) -> dict[str, Any]:
    nodes: dict[str, Any] = {
        "n0": {"type": "input", "config": {"inputName": "x", "defaultValue": 1}}
    }
    edges = []
    for i in range(1, length):
        nodes[f"n{i}"] = {
            "type": "transform",
            "config": {"operation": "passthrough", "delayMs": NODE_SECONDS * 1000},
        }
        edges.append({"id": f"e{i}", "source": f"n{i - 1}", "target": f"n{i}"})
    return {"name": "chain", "nodes": nodes, "edges": edges}


def hand_written_chain(length: int = CHAIN) -> dg.JobDefinition:
    """The same shape written by hand: each op sleeps like a node and passes a dict on."""

    @dg.op
    def first() -> dict[str, Any]:
        return {"x": 1}

    @dg.op
    def step(upstream: dict[str, Any]) -> dict[str, Any]:
        time.sleep(NODE_SECONDS)
        return dict(upstream)

    @dg.job(executor_def=dg.in_process_executor)
    def hand_chain() -> None:
        value = first()
        for i in range(1, length):
            value = step.alias(f"n{i}")(value)

    return hand_chain


def plain_python_chain(length: int = CHAIN) -> None:
    value: dict[str, Any] = {"x": 1}
    for _ in range(1, length):
        time.sleep(NODE_SECONDS)
        value = dict(value)


def stats(times: list[float]) -> dict[str, float]:
    return {
        "median_s": round(statistics.median(times), 3),
        "min_s": round(min(times), 3),
        "max_s": round(max(times), 3),
    }


PERSISTENT_YAML = "telemetry:\n  enabled: false\n"  # storage: Dagster's SQLite default


@contextmanager
def instance_of(kind: str) -> Iterator[dg.DagsterInstance]:
    """`ephemeral` (in memory) or `persistent_sqlite` (SQLite files under a temporary home)."""
    if kind == "ephemeral":
        with dg.DagsterInstance.ephemeral() as instance:
            yield instance
        return
    with tempfile.TemporaryDirectory(prefix="bench-home-") as home:
        (Path(home) / "dagster.yaml").write_text(PERSISTENT_YAML)
        with dg.DagsterInstance.from_config(home) as instance:
            yield instance


VARIANTS = ("compiled_in_process", "compiled_threaded", "hand_written", "plain_python")


def chain_on(kind: str, repeats: int) -> dict[str, Any]:
    """The four variants on one instance kind, interleaved round by round after a warm-up."""
    compiled = build_job(chain_definition()).job  # its executor: threaded (the default)
    hand = hand_written_chain()
    quiet = {"loggers": {"console": {"config": {"log_level": "ERROR"}}}}
    config = {**run_config_for({}), **quiet}
    with instance_of(kind) as instance:

        def run_compiled_in_process() -> None:
            assert compiled.execute_in_process(run_config=config, instance=instance).success

        def run_compiled_threaded() -> None:
            result = execute_in_process_with_executor(
                compiled, run_config=config, instance=instance
            )
            assert result.success

        def run_hand() -> None:
            assert hand.execute_in_process(run_config=quiet, instance=instance).success

        runners: dict[str, Callable[[], None]] = {
            "compiled_in_process": run_compiled_in_process,
            "compiled_threaded": run_compiled_threaded,
            "hand_written": run_hand,
            "plain_python": plain_python_chain,
        }
        for run in runners.values():  # warm-up: imports, caches, the storage's tables
            run()
        times: dict[str, list[float]] = {name: [] for name in runners}
        for round_ in range(repeats):
            order = list(runners.items())
            for name, run in order if round_ % 2 == 0 else order[::-1]:
                start = time.perf_counter()
                run()
                times[name].append(time.perf_counter() - start)
    plain = statistics.median(times["plain_python"])
    found: dict[str, Any] = {}
    for name, values in times.items():
        found[name] = {
            **stats(values),
            "overhead_ms_per_node": round((statistics.median(values) - plain) / CHAIN * 1000, 2),
        }
    found["compiled_over_hand_written"] = round(
        found["compiled_in_process"]["median_s"] / found["hand_written"]["median_s"], 3
    )
    return found


OVERHEAD_GOALS = {"compiled_over_hand_written_max": 1.1, "persistent_ms_per_node_max": 40.0}


def overhead_section(quick: bool = False) -> dict[str, Any]:
    warnings.filterwarnings("ignore")
    logging.getLogger("dagster").setLevel(logging.ERROR)
    repeats = 3 if quick else 9
    instances = {kind: chain_on(kind, repeats) for kind in ("ephemeral", "persistent_sqlite")}
    persistent = instances["persistent_sqlite"]["compiled_threaded"]["overhead_ms_per_node"]
    ephemeral = instances["ephemeral"]["compiled_threaded"]["overhead_ms_per_node"]
    return {
        "nodes": CHAIN,
        "node_work_ms": NODE_SECONDS * 1000,
        "repeats": repeats,
        "instances": instances,
        "persistent_adds_ms_per_node": round(persistent - ephemeral, 2),
        "goals": {
            **OVERHEAD_GOALS,
            "compiled_over_hand_written_met": instances["ephemeral"]["compiled_over_hand_written"]
            <= OVERHEAD_GOALS["compiled_over_hand_written_max"],
            "persistent_met": persistent <= OVERHEAD_GOALS["persistent_ms_per_node_max"],
        },
    }


COMPILE_GOALS = {"corpus_p95_ms_max": 20.0, "large_median_s_max": 0.5}


def compile_section(quick: bool = False) -> dict[str, Any]:
    warnings.filterwarnings("ignore")
    corpus = corpus_compile_times(repeats=1 if quick else 3)
    large = large_compile(500, repeats=2 if quick else 5)
    return {
        "corpus_compile": corpus,
        "large_compile": large,
        "goals": {
            **COMPILE_GOALS,
            "corpus_met": corpus["p95_ms"] <= COMPILE_GOALS["corpus_p95_ms_max"],
            "large_met": large["median_s"] <= COMPILE_GOALS["large_median_s_max"],
        },
    }


if __name__ == "__main__":
    quick = "--quick" in sys.argv
    found = {"compile": compile_section(quick), "overhead": overhead_section(quick)}
    print(json.dumps(found, indent=2))
