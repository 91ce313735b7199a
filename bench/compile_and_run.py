"""Compiler benchmark: corpus compile times, a 500-node workflow, and per-node run overhead.

Run time of a compiled 20-node chain is compared, in the same process and run, with a
hand-written Dagster job of the same shape (same sleep per node, same executor and instance)
and with plain Python function calls.
"""

import json
import logging
import statistics
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import dagster as dg

from flowmaestro_dagster.compiler import compile_workflow
from flowmaestro_dagster.errors import InvalidWorkflowError
from flowmaestro_dagster.running import run_config_for

ROOT = Path(__file__).resolve().parents[1]
CORPUS = ROOT / "tests" / "corpus" / "flowmaestro"
NODE_SECONDS = 0.010
CHAIN = 20


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


def corpus_compile_times(repeats: int = 3) -> dict[str, Any]:
    texts = [p.read_bytes() for p in sorted(CORPUS.rglob("*.json"))]
    times: list[float] = []
    rejected = 0
    for text in texts:
        best = float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            try:
                compile_workflow(text)
            except InvalidWorkflowError:
                rejected += 1 if _ == 0 else 0
            best = min(best, time.perf_counter() - start)
        times.append(best * 1000)
    return {
        "files": len(texts),
        "rejected": rejected,
        "p50_ms": round(percentile(times, 0.5), 2),
        "p95_ms": round(percentile(times, 0.95), 2),
        "max_ms": round(max(times), 2),
    }


def synthetic(nodes: int) -> dict[str, Any]:
    """A layered workflow: branches, joins, templates, like a large real canvas."""
    spec_nodes: dict[str, Any] = {
        "input": {"type": "input", "name": "Input", "config": {"inputName": "x"}}
    }
    edges = []
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
        compile_workflow(definition)
        times.append(time.perf_counter() - start)
    return {
        "nodes": nodes,
        "best_s": round(min(times), 3),
        "median_s": round(statistics.median(times), 3),
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


def timed(fn: Callable[[], Any], repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def chain_run_times(repeats: int = 9) -> dict[str, Any]:
    compiled = compile_workflow(chain_definition()).job
    hand = hand_written_chain()
    quiet = {"loggers": {"console": {"config": {"log_level": "ERROR"}}}}
    config = {**run_config_for({}), **quiet}

    def run_compiled() -> None:
        assert compiled.execute_in_process(run_config=config).success

    def run_hand() -> None:
        assert hand.execute_in_process(run_config=quiet).success

    run_compiled(), run_hand()  # warm both up
    compiled_times, hand_times, plain_times = [], [], []
    for _ in range(repeats):  # interleave so machine noise hits both alike
        compiled_times += timed(run_compiled, 1)
        hand_times += timed(run_hand, 1)
        plain_times += timed(plain_python_chain, 1)
    compiled_s = statistics.median(compiled_times)
    hand_s = statistics.median(hand_times)
    plain_s = statistics.median(plain_times)
    return {
        "nodes": CHAIN,
        "node_work_ms": NODE_SECONDS * 1000,
        "compiled_s": round(compiled_s, 3),
        "hand_written_s": round(hand_s, 3),
        "plain_python_s": round(plain_s, 3),
        "compiled_over_hand_written": round(compiled_s / hand_s, 3),
        "compiled_overhead_ms_per_node": round((compiled_s - plain_s) / CHAIN * 1000, 2),
        "hand_written_overhead_ms_per_node": round((hand_s - plain_s) / CHAIN * 1000, 2),
        "compiled_min_max_s": [round(min(compiled_times), 3), round(max(compiled_times), 3)],
        "hand_written_min_max_s": [round(min(hand_times), 3), round(max(hand_times), 3)],
    }


def main() -> dict[str, Any]:
    warnings.filterwarnings("ignore")
    logging.getLogger("dagster").setLevel(logging.ERROR)
    return {
        "corpus_compile": corpus_compile_times(),
        "large_compile": large_compile(),
        "chain_run": chain_run_times(),
    }


if __name__ == "__main__":
    print(json.dumps(main(), indent=2))
