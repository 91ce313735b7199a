"""`python -m bench`: run every benchmark and write docs/benchmarks.md (and bench/results/*.json)."""

import json
import platform
import subprocess
import sys
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path
from typing import Any

from bench import compile_and_run

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
REPORT = ROOT / "docs" / "benchmarks.md"


def machine() -> dict[str, Any]:
    try:
        cpu = subprocess.run(
            ["sh", "-c", "grep -m1 'model name' /proc/cpuinfo | cut -d: -f2"],
            capture_output=True,
            text=True,
            check=False,
        ).stdout.strip()
    except OSError:
        cpu = platform.processor()
    import os

    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": cpu or platform.machine(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "dagster": version("dagster"),
        "platform": platform.platform(),
    }


def render(results: dict[str, Any]) -> str:
    m = results["machine"]
    c = results["compiler"]
    corpus, large, chain = c["corpus_compile"], c["large_compile"], c["chain_run"]
    lines = [
        "# Benchmarks",
        "",
        "Written by `scripts/bench.sh` (`python -m bench`); do not edit by hand. Every figure below",
        "comes from one run on one machine; ratios compare things measured side by side in that run.",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores; Python {m['python']}, Dagster {m['dagster']};",
        f"{m['platform']}; {m['date']}.",
        "",
        "## Compiler",
        "",
        "| measure | result | goal |",
        "|---|---|---|",
        f"| corpus compile time, {corpus['files']} files ({corpus['rejected']} rejected: cycles), "
        f"best of 3 per file | p50 {corpus['p50_ms']} ms, p95 {corpus['p95_ms']} ms, "
        f"max {corpus['max_ms']} ms | p95 ≤ 20 ms |",
        f"| synthetic {large['nodes']}-node workflow | best {large['best_s']} s, "
        f"median {large['median_s']} s | ≤ 0.5 s |",
        "",
        f"## Run time of a {chain['nodes']}-node chain ({chain['node_work_ms']:.0f} ms of work per node)",
        "",
        "In-process executor, ephemeral instance; median of 9 interleaved runs after a warm-up.",
        "",
        "| variant | median | min / max | overhead per node |",
        "|---|---|---|---|",
        f"| compiled FlowMaestro workflow | {chain['compiled_s']} s | "
        f"{chain['compiled_min_max_s'][0]} / {chain['compiled_min_max_s'][1]} s | "
        f"{chain['compiled_overhead_ms_per_node']} ms |",
        f"| hand-written Dagster job, same shape | {chain['hand_written_s']} s | "
        f"{chain['hand_written_min_max_s'][0]} / {chain['hand_written_min_max_s'][1]} s | "
        f"{chain['hand_written_overhead_ms_per_node']} ms |",
        f"| plain Python function calls | {chain['plain_python_s']} s | | 0 |",
        "",
        f"Compiled / hand-written: **{chain['compiled_over_hand_written']}** (goal ≤ 1.1). Most of the",
        "per-node cost is Dagster's own step machinery (events, IO manager, input loading), which",
        "the hand-written job pays too; the compiled op adds its plan parsing, the state merge and",
        "the output preview shown in the UI (about 1 ms per node in a profile).",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    results = {"machine": machine(), "compiler": compile_and_run.main()}
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    (RESULTS / f"{stamp}.json").write_text(json.dumps(results, indent=2))
    REPORT.write_text(render(results))
    json.dump(results, sys.stdout, indent=2)
    print()


if __name__ == "__main__":
    main()
