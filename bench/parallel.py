"""Parallel nodes inside one run (issue 9): W1, W2, W3 on four runners, side by side.

* W3: 8 branches of 0.5 s I/O (a sleep) between a start node and a join;
* W1: a 20-node chain of 10 ms nodes;
* W2: 1 -> 8 -> 1 nodes of 10 ms each.

Runners: the compiled workflow on our threaded executor and on Dagster's in-process executor
(each on one ephemeral instance for all its runs, as a deployment has one instance), Prefect 3
with its thread-pool task runner (in its own virtualenv, `bench/.prefect-venv`, created on first
use), and a plain `ThreadPoolExecutor` running the same sleeps (the floor). Dagster runs are
interleaved round by round so machine noise hits every variant alike; Prefect runs in one
subprocess after them (its own warm-up, the same shapes and rounds). Times are wall time of one
whole run: for Dagster the `execute_in_process`-style call (run creation, plan, events, the
run's end), for Prefect the flow call, for the floor submitting and joining the work.

`python -m bench.parallel [--repeats N] [--no-prefect] [--prefect-database-url URL]` prints the
results as JSON.
"""

import argparse
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from dagster import DagsterInstance, JobDefinition

from flowmaestro_dagster.engines import threaded_executor_for
from flowmaestro_dagster.engines.jobs import build_job
from flowmaestro_dagster.engines.local import execute_in_process_with_executor, run_config_for

ROOT = Path(__file__).resolve().parents[1]
PREFECT_VENV = ROOT / "bench" / ".prefect-venv"
PREFECT_REQUIREMENT = "prefect>=3,<4"
NODE_S = 0.010
BRANCH_S = 0.5
WIDTH = 8
CHAIN = 20
MAX_CONCURRENT = 10
GOALS = {"W3_threaded_max_s": 0.68, "W1_threaded_over_in_process_max": 1.1}


# -- the workloads as FlowMaestro definitions -------------------------------------------------


def _node(node_id: str, delay_s: float, **config: Any) -> tuple[str, dict[str, Any]]:
    body = {"operation": "passthrough", "inputData": node_id, **config}
    if delay_s:
        body["delayMs"] = delay_s * 1000
    return node_id, {"type": "transform", "config": body}


def _definition(
    name: str, nodes: list[tuple[str, dict[str, Any]]], edges: list[tuple[str, str]]
) -> dict[str, Any]:
    return {
        "name": name,
        "nodes": dict(nodes),
        "edges": [{"id": f"e{i}", "source": s, "target": t} for i, (s, t) in enumerate(edges)],
        "settings": {"maxConcurrentNodes": MAX_CONCURRENT},
    }


def w1_definition() -> dict[str, Any]:
    """A chain of CHAIN nodes of NODE_S each."""
    nodes = [_node(f"n{i}", NODE_S) for i in range(CHAIN)]
    edges = [(f"n{i - 1}", f"n{i}") for i in range(1, CHAIN)]
    return _definition("w1 chain", nodes, edges)


def _fan(name: str, edge_s: float, branch_s: float) -> dict[str, Any]:
    nodes = [_node("start", edge_s)]
    edges = []
    for i in range(WIDTH):
        nodes.append(_node(f"b{i}", branch_s, outputVariable=f"v{i}"))
        edges += [("start", f"b{i}"), (f"b{i}", "join")]
    join_id, join = _node("join", edge_s)
    join["config"] = {k: v for k, v in join["config"].items() if k != "inputData"}
    join["config"]["operation"] = "merge"
    nodes.append((join_id, join))
    return _definition(name, nodes, edges)


def w2_definition() -> dict[str, Any]:
    """1 -> WIDTH -> 1, every node NODE_S."""
    return _fan("w2 fan", NODE_S, NODE_S)


def w3_definition() -> dict[str, Any]:
    """WIDTH branches of BRANCH_S between a start node and a join."""
    return _fan("w3 io fan", 0.0, BRANCH_S)


WORKLOADS: dict[str, Callable[[], dict[str, Any]]] = {
    "W1": w1_definition,
    "W2": w2_definition,
    "W3": w3_definition,
}


# -- runners -----------------------------------------------------------------------------------


def _timed(fn: Callable[[], Any], cpu: list[float] | None = None) -> float:
    """Wall time of `fn()`; its CPU time (all threads of this process) goes to `cpu`."""
    start, start_cpu = time.perf_counter(), time.process_time()
    fn()
    if cpu is not None:
        cpu.append(time.process_time() - start_cpu)
    return time.perf_counter() - start


def dagster_runs(repeats: int) -> dict[str, dict[str, list[float]]]:
    """Workload -> {"threaded": [s...], "in_process": [s...], "threaded_cpu": ...}.

    Interleaved round by round (and which goes first alternates), so load hits both alike; CPU
    time is kept too, as it hardly depends on what else the machine is doing.
    """
    config = run_config_for({}, log_level="ERROR")
    jobs: dict[str, tuple[JobDefinition, JobDefinition]] = {
        name: (
            build_job(build(), executor_def=threaded_executor_for(MAX_CONCURRENT)).job,
            build_job(build()).job,
        )
        for name, build in WORKLOADS.items()
    }
    times: dict[str, dict[str, list[float]]] = {
        name: {"threaded": [], "in_process": [], "threaded_cpu": [], "in_process_cpu": []}
        for name in WORKLOADS
    }
    with DagsterInstance.ephemeral() as ours, DagsterInstance.ephemeral() as theirs:

        def run_threaded(job: JobDefinition) -> None:
            assert execute_in_process_with_executor(job, run_config=config, instance=ours).success

        def run_in_process(job: JobDefinition) -> None:
            assert job.execute_in_process(run_config=config, instance=theirs).success

        for threaded_job, in_process_job in jobs.values():  # warm-up: imports, caches
            run_threaded(threaded_job)
            run_in_process(in_process_job)
        for round_ in range(repeats):
            for name, (threaded_job, in_process_job) in jobs.items():
                pair = [
                    ("threaded", lambda j=threaded_job: run_threaded(j)),
                    ("in_process", lambda j=in_process_job: run_in_process(j)),
                ]
                for variant, fn in pair if round_ % 2 == 0 else pair[::-1]:
                    times[name][variant].append(_timed(fn, times[name][f"{variant}_cpu"]))
    return times


def _floor_w1(pool: ThreadPoolExecutor) -> None:
    for _ in range(CHAIN):  # each node once the previous one is done
        pool.submit(time.sleep, NODE_S).result()


def _floor_fan(pool: ThreadPoolExecutor, edge_s: float, branch_s: float) -> None:
    pool.submit(time.sleep, edge_s).result()
    branches = [pool.submit(time.sleep, branch_s) for _ in range(WIDTH)]
    for branch in branches:
        branch.result()
    pool.submit(time.sleep, edge_s).result()


def floor_runs(repeats: int) -> dict[str, list[float]]:
    """The same sleeps with the same dependencies on a plain thread pool."""
    shapes: dict[str, Callable[[ThreadPoolExecutor], None]] = {
        "W1": _floor_w1,
        "W2": lambda pool: _floor_fan(pool, NODE_S, NODE_S),
        "W3": lambda pool: _floor_fan(pool, 0.0, BRANCH_S),
    }
    times: dict[str, list[float]] = {name: [] for name in shapes}
    for _ in range(repeats):
        for name, shape in shapes.items():

            def one(shape: Callable[[ThreadPoolExecutor], None] = shape) -> None:
                with ThreadPoolExecutor(max_workers=MAX_CONCURRENT) as pool:
                    shape(pool)

            times[name].append(_timed(one))
    return times


PREFECT_SCRIPT = """
import json, sys, time
from prefect import flow, task
from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings
from prefect.task_runners import ThreadPoolTaskRunner

shape = json.loads(sys.argv[1])
NODE_S, BRANCH_S, WIDTH, CHAIN, WORKERS = (
    shape["node_s"], shape["branch_s"], shape["width"], shape["chain"], shape["workers"]
)

@task
def work(seconds: float, *upstream: int) -> int:
    if seconds:
        time.sleep(seconds)
    return 1

@flow(task_runner=ThreadPoolTaskRunner(max_workers=WORKERS))
def w1() -> int:
    future = work.submit(NODE_S)
    for _ in range(CHAIN - 1):
        future = work.submit(NODE_S, future)
    return future.result()

def fan(edge_s: float, branch_s: float) -> int:
    start = work.submit(edge_s)
    branches = [work.submit(branch_s, start) for _ in range(WIDTH)]
    return work.submit(edge_s, *branches).result()

@flow(task_runner=ThreadPoolTaskRunner(max_workers=WORKERS))
def w2() -> int:
    return fan(NODE_S, NODE_S)

@flow(task_runner=ThreadPoolTaskRunner(max_workers=WORKERS))
def w3() -> int:
    return fan(0.0, BRANCH_S)

flows = {"W1": w1, "W2": w2, "W3": w3}
times = {name: [] for name in flows}
with temporary_settings({PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
    for run in flows.values():  # warm-up: the ephemeral API server, imports
        run()
    for _ in range(shape["repeats"]):
        for name, run in flows.items():
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
import prefect
print(json.dumps({"version": prefect.__version__, "times": times}))
"""


def ensure_prefect_venv() -> Path:
    """bench/.prefect-venv with Prefect 3 (its own virtualenv: its pins clash with Dagster's)."""
    python = PREFECT_VENV / "bin" / "python"
    if not python.exists():
        subprocess.run(["python3.11", "-m", "venv", str(PREFECT_VENV)], check=True)
    check = subprocess.run(
        [str(python), "-c", "import prefect"], capture_output=True, text=True, check=False
    )
    if check.returncode != 0:
        subprocess.run(
            [str(python), "-m", "pip", "install", "-q", PREFECT_REQUIREMENT],
            check=True,
        )
    return python


def prefect_runs(repeats: int, database_url: str | None = None) -> dict[str, Any]:
    """Prefect 3 on a local ephemeral API server, flow heartbeats and log shipping off.

    The server's database is Prefect's default SQLite file unless `database_url` names another
    (`postgresql+asyncpg://...`): with SQLite, creating a flow run now and then gets a 503
    ("database is locked" while the server records task runs) and the client retries ~2 s later.
    """
    try:
        python = ensure_prefect_venv()
    except (OSError, subprocess.CalledProcessError) as exc:
        return {"error": f"could not set up {PREFECT_VENV}: {exc}"}
    shape = {
        "node_s": NODE_S,
        "branch_s": BRANCH_S,
        "width": WIDTH,
        "chain": CHAIN,
        "workers": MAX_CONCURRENT,
        "repeats": repeats,
    }
    with tempfile.TemporaryDirectory(prefix="prefect-home-") as home:
        env = {
            **os.environ,
            "PREFECT_HOME": home,
            "PREFECT_LOGGING_LEVEL": "WARNING",
            "PREFECT_LOGGING_TO_API_ENABLED": "false",
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180",
        }
        if database_url:
            env["PREFECT_API_DATABASE_CONNECTION_URL"] = database_url
        done = subprocess.run(
            [str(python), "-c", PREFECT_SCRIPT, json.dumps(shape)],
            capture_output=True,
            text=True,
            env=env,
            check=False,
            timeout=1800,
        )
    if done.returncode != 0:
        return {"error": done.stderr.strip().splitlines()[-1] if done.stderr else "failed"}
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    result["database"] = database_url.split("://")[0] if database_url else "sqlite (default)"
    return result


# -- the report --------------------------------------------------------------------------------


def summary(times: list[float], cpu: list[float] | None = None) -> dict[str, Any]:
    found: dict[str, Any] = {
        "median_s": round(statistics.median(times), 3),
        "min_s": round(min(times), 3),
        "max_s": round(max(times), 3),
        "runs": len(times),
    }
    if cpu:
        found["cpu_median_s"] = round(statistics.median(cpu), 3)
    return found


def main(
    repeats: int = 7, prefect: bool = True, prefect_database_url: str | None = None
) -> dict[str, Any]:
    warnings.filterwarnings("ignore")
    logging.getLogger("dagster").setLevel(logging.ERROR)
    load_before = os.getloadavg()
    dagster = dagster_runs(repeats)
    floor = floor_runs(repeats)
    prefect_result: dict[str, Any] = (
        prefect_runs(repeats, prefect_database_url)
        if prefect
        else {"error": "skipped (--no-prefect)"}
    )
    workloads: dict[str, dict[str, Any]] = {}
    for name in WORKLOADS:
        variants = {
            "threaded": summary(dagster[name]["threaded"], dagster[name]["threaded_cpu"]),
            "in_process": summary(dagster[name]["in_process"], dagster[name]["in_process_cpu"]),
            "thread_pool_floor": summary(floor[name]),
        }
        if "times" in prefect_result:
            variants["prefect"] = summary(prefect_result["times"][name])
        workloads[name] = variants
    ratios = {
        name: round(
            workloads[name]["threaded"]["median_s"] / workloads[name]["in_process"]["median_s"], 3
        )
        for name in WORKLOADS
    }
    cpu_ratios = {
        name: round(
            workloads[name]["threaded"]["cpu_median_s"]
            / workloads[name]["in_process"]["cpu_median_s"],
            3,
        )
        for name in WORKLOADS
    }
    w3 = workloads["W3"]["threaded"]["median_s"]
    return {
        "shape": {
            "width": WIDTH,
            "branch_s": BRANCH_S,
            "chain": CHAIN,
            "node_s": NODE_S,
            "max_concurrent": MAX_CONCURRENT,
            "repeats": repeats,
        },
        "workloads": workloads,
        "threaded_over_in_process": ratios,
        "threaded_over_in_process_cpu": cpu_ratios,
        "prefect": {k: v for k, v in prefect_result.items() if k != "times"},
        "goals": {
            **GOALS,
            "W3_met": w3 <= GOALS["W3_threaded_max_s"],
            "W1_met": ratios["W1"] <= GOALS["W1_threaded_over_in_process_max"],
        },
        "load_average": {"before": load_before, "after": os.getloadavg()},
    }


def run(quick: bool = False) -> dict[str, Any]:
    """The `parallel` section: 7 rounds, or 2 for a smoke run (`quick`); Prefect included, its
    server on a fresh PostgreSQL database when the local server answers (on its default SQLite
    a flow run now and then waits ~2 s on a 503, which would be measuring SQLite, not Prefect)."""
    import sqlalchemy as sa

    admin = "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres"
    name = f"fm_prefect_{os.getpid()}"
    try:
        engine = sa.create_engine(admin, isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool)
        with engine.connect() as connection:
            connection.execute(sa.text(f"CREATE DATABASE {name}"))
    except sa.exc.SQLAlchemyError:
        return main(repeats=2 if quick else 7)
    try:
        url = f"postgresql+asyncpg://postgres@127.0.0.1:5432/{name}"
        return main(repeats=2 if quick else 7, prefect_database_url=url)
    finally:
        with engine.connect() as connection:
            connection.execute(sa.text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--no-prefect", action="store_true")
    parser.add_argument(
        "--prefect-database-url",
        help="database of Prefect's API server (default: its SQLite file), e.g. "
        "postgresql+asyncpg://postgres@127.0.0.1:5432/prefect_bench (an empty database)",
    )
    args = parser.parse_args()
    results = main(args.repeats, not args.no_prefect, args.prefect_database_url)
    json.dump(results, sys.stdout, indent=2)
    print()
