"""Celery section: the parallel workload (W1, W2, W3 of `bench.parallel`) with its node steps on
Celery workers, side by side with the same workflows on the run's own threads.

It measures only when

1. `flowmaestro_dagster.engines` exposes the Celery executor (a public name containing
   "celery", or its `flowmaestro_dagster.engines.celery` module),
2. the `flowmaestro worker` command exists, and
3. the broker (Redis, `BROKER`) answers;

otherwise, or if a run fails or its steps did not go to Celery, the section records
`not measured: <reason>`: it never reports a figure it did not measure.

Celery routes steps only in launched runs whose outputs are persisted, so the workload runs on a
real Dagster (`dagster dev`, `flowmaestro_dagster.testing.stack`) with the broker set and
`WORKERS` `flowmaestro worker` processes of `CONCURRENCY` pool processes each on a queue of its
own (`WORKERS * CONCURRENCY` = W3's width: all its branches can run at once, as on the run's
threads). Each workflow is deployed twice through the API: with `runOn: "celery"` in its
settings (every node to Celery) and without (every node on the run's threads); executions of the
two alternate, one at a time, and a figure is the run's own duration (Dagster's run start to
end). Every Celery run is checked for the executor's engine event saying which steps went to the
workers.

Goals (issue 20): the per-step overhead on Celery ≤ 100 ms, measured on the W1 chain as the
median time from one step's start to the next one's, less the node's own 10 ms (the same figure
is given for threads); and W3 on the two workers within 1.5x of the threaded executor. The
workers' engine events also say whether each step's job came from the worker's job cache.

`python -m bench.celery_workers [--quick] [--postgres]` prints the result as JSON (`--postgres`:
the platform database and Dagster's storage in a new PostgreSQL database instead of SQLite).
"""

import contextlib
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

BROKER = "redis://127.0.0.1:6379/13"
WORKERS = 2
CONCURRENCY = 4  # steps at once per worker: WORKERS * CONCURRENCY = W3's 8 branches
POOL = "prefork"  # `flowmaestro worker --pool`
GOALS = {"per_step_overhead_ms_max": 100.0, "W3_celery_over_threads_max": 1.5}


def not_measured(reason: str) -> dict[str, Any]:
    return {"measured": False, "reason": reason}


def exposed_executor() -> str | None:
    """The name under which `flowmaestro_dagster.engines` exposes a Celery executor, if any."""
    import importlib

    from flowmaestro_dagster import engines as execution

    names = getattr(execution, "__all__", None) or [n for n in dir(execution) if n[0] != "_"]
    found = next((n for n in names if "celery" in n.lower()), None)
    if found is not None:
        return f"flowmaestro_dagster.engines.{found}"
    try:
        importlib.import_module("flowmaestro_dagster.engines.celery")
    except ImportError:
        return None
    return "flowmaestro_dagster.engines.celery"


def worker_command() -> list[str] | None:
    flowmaestro = Path(sys.executable).with_name("flowmaestro")
    if not flowmaestro.exists():
        found = shutil.which("flowmaestro")
        if found is None:
            return None
        flowmaestro = Path(found)
    probe = subprocess.run(
        [str(flowmaestro), "worker", "--help"], capture_output=True, text=True, check=False
    )
    if probe.returncode != 0:
        return None
    return [str(flowmaestro), "worker", "--concurrency", str(CONCURRENCY), "--pool", POOL]


def broker_answers(url: str = BROKER) -> bool:
    host, port = url.split("//", 1)[1].split("/", 1)[0].split(":")
    try:
        with socket.create_connection((host, int(port)), timeout=2) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


@contextmanager
def workers(command: list[str], env: dict[str, str], log_dir: Path) -> Iterator[None]:
    processes = []
    try:
        for i in range(WORKERS):
            log = (log_dir / f"worker-{i}.log").open("wb")
            processes.append(
                subprocess.Popen(
                    command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
                )
            )
        time.sleep(5)  # let them connect and consume the queue
        for process in processes:
            if process.poll() is not None:
                raise RuntimeError(
                    f"a worker exited ({process.returncode}): "
                    + (log_dir / "worker-0.log").read_text()[-1000:]
                )
        yield
    finally:
        for process in processes:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
        for process in processes:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=10)


def _run_facts(instance: Any, run_id: str) -> dict[str, Any]:
    """The run's duration, whether the executor said steps went to Celery workers, when each
    step started, and how the workers got the job (from their cache or built)."""
    from dagster import DagsterEventType

    record = instance.get_run_records(filters=_runs_filter(run_id))[0]
    records = instance.get_records_for_run(run_id).records
    messages, starts, jobs = [], {}, {"cached": 0, "built": 0}
    for entry in (r.event_log_entry for r in records):
        event = entry.dagster_event
        if event is None:
            continue
        if event.event_type == DagsterEventType.STEP_START and entry.step_key:
            starts[entry.step_key] = entry.timestamp
        elif event.event_type == DagsterEventType.ENGINE_EVENT:
            messages.append(entry.message or "")
            source = event.engine_event_data.metadata.get("job")
            if "in celery worker" in (entry.message or "") and source is not None:
                jobs[str(source.value)] = jobs.get(str(source.value), 0) + 1
    routed = any(m.startswith("Celery: steps") for m in messages)
    if not routed:
        notes = [m for m in messages if m.startswith("Celery:")]
        if notes:
            raise RuntimeError(f"the steps stayed local: {notes[0]}")
    return {
        "seconds": float(record.end_time - record.start_time),
        "routed": routed,
        "starts": starts,
        "jobs": jobs,
    }


def _chain_overheads_ms(starts: dict[str, float], length: int, node_s: float) -> list[float]:
    """Per step of a chain `n0 → n1 → ...`: from its start to the next one's, less the node's
    own time (what a step costs beyond its work), in ms."""
    return [
        (starts[f"n{i + 1}"] - starts[f"n{i}"] - node_s) * 1000
        for i in range(length - 1)
        if f"n{i}" in starts and f"n{i + 1}" in starts
    ]


def _failure(instance: Any, run_id: str) -> str:
    """Why a run failed, from its failure event (for the `not measured` reason)."""
    from dagster import DagsterEventType

    records = instance.get_records_for_run(run_id, of_type=DagsterEventType.RUN_FAILURE).records
    for record in records:
        data = record.event_log_entry.dagster_event.event_specific_data
        error = getattr(data, "error", None)
        if error is not None:
            return f"{error.cls_name}: {error.message.strip()[:300]}"
        return (record.event_log_entry.message or "")[:300]
    return "no failure event"


def _runs_filter(run_id: str) -> Any:
    from dagster import RunsFilter

    return RunsFilter(run_ids=[run_id])


def measure(command: list[str], repeats: int, backend: str = "sqlite") -> dict[str, Any]:
    """One backend's figures: the platform database and Dagster's storage on SQLite files, or
    both in one new PostgreSQL database (what workers on other machines need)."""
    from fastapi.testclient import TestClient

    from bench import parallel
    from bench.common import deploy, drop_pg, pg_database, stack_settings, submit, user_key
    from flowmaestro_api.main import create_app
    from flowmaestro_dagster.control.client import DagsterClient
    from flowmaestro_dagster.store.db import dispose_engines, migrate
    from flowmaestro_dagster.testing.stack import DagsterStack

    queue = f"bench-{uuid.uuid4().hex[:8]}"
    times: dict[str, dict[str, list[float]]] = {
        name: {"threads": [], "celery": []} for name in parallel.WORKLOADS
    }
    overheads: dict[str, list[float]] = {"threads": [], "celery": []}
    jobs: dict[str, int] = {}
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="bench-celery-") as tmp:
        database = None
        if backend == "postgres":
            database, url = pg_database()
        else:
            url = f"sqlite:///{Path(tmp) / 'platform.db'}"
        migrate(url)
        broker = {"FLOWMAESTRO_CELERY_BROKER_URL": BROKER, "FLOWMAESTRO_CELERY_QUEUE": queue}
        stack = DagsterStack(Path(tmp) / "home", url, extra_env=broker)
        stack.start()
        try:
            settings = stack_settings(url, stack, reconcile_after_seconds=3600)
            dagster = DagsterClient(stack.graphql_url, instance=stack.instance())
            auth = user_key(url)
            with (
                workers(command, stack.env(), Path(tmp)),
                TestClient(create_app(settings, dagster=dagster)) as http,
            ):

                def once(workflow_id: str) -> str:
                    execution_id = submit(http, auth, workflow_id, {})
                    deadline = time.monotonic() + 300
                    while time.monotonic() < deadline:
                        runs = dagster.runs_for_execution(execution_id)
                        if runs and runs[-1].status in ("SUCCESS", "FAILURE", "CANCELED"):
                            if runs[-1].status != "SUCCESS":
                                failure = _failure(dagster.instance, runs[-1].run_id)
                                raise RuntimeError(
                                    f"run {runs[-1].run_id}: {runs[-1].status}: {failure}"
                                )
                            return runs[-1].run_id
                        time.sleep(0.1)
                    raise TimeoutError(f"execution {execution_id} did not finish in 300 s")

                workflows: dict[str, dict[str, str]] = {}
                for name, build in parallel.WORKLOADS.items():
                    on_celery = build()
                    on_celery["name"] += " on celery"
                    on_celery["settings"] = {**on_celery.get("settings", {}), "runOn": "celery"}
                    workflows[name] = {
                        "threads": deploy(http, auth, build()),
                        "celery": deploy(http, auth, on_celery),
                    }
                for round_ in range(repeats + 1):  # round 0 warms up
                    for name, variants in workflows.items():
                        order = list(variants.items())
                        for variant, workflow_id in order if round_ % 2 == 0 else order[::-1]:
                            facts = _run_facts(dagster.instance, once(workflow_id))
                            if variant == "celery" and not facts["routed"]:
                                raise RuntimeError(f"{name}: no step was sent to Celery")
                            if not round_:
                                continue
                            times[name][variant].append(facts["seconds"])
                            if name == "W1":
                                overheads[variant] += _chain_overheads_ms(
                                    facts["starts"], parallel.CHAIN, parallel.NODE_S
                                )
                            for source, count in facts["jobs"].items():
                                jobs[source] = jobs.get(source, 0) + count
        finally:
            stack.stop()
            dispose_engines()
            if database is not None:
                drop_pg(database)
    workloads = {
        name: {
            variant: {
                "median_s": round(statistics.median(values), 3),
                "min_s": round(min(values), 3),
                "max_s": round(max(values), 3),
                "runs": len(values),
            }
            for variant, values in variants.items()
        }
        for name, variants in times.items()
    }
    ratios = {
        name: round(v["celery"]["median_s"] / v["threads"]["median_s"], 2)
        for name, v in workloads.items()
    }
    per_step = {
        variant: round(statistics.median(values), 1) for variant, values in overheads.items()
    }
    return {
        "measured": True,
        "workers": WORKERS,
        "concurrency": CONCURRENCY,
        "pool": POOL,
        "broker": BROKER,
        "repeats": repeats,
        "workloads": workloads,
        "celery_over_threads": ratios,
        "per_step_overhead_ms": per_step,
        "worker_jobs": jobs,
        "goals": {
            **GOALS,
            "per_step_met": per_step["celery"] <= GOALS["per_step_overhead_ms_max"],
            "W3_met": ratios["W3"] <= GOALS["W3_celery_over_threads_max"],
        },
        "load_average": {"before": list(load_before), "after": list(os.getloadavg())},
    }


def run(quick: bool = False, backend: str = "sqlite") -> dict[str, Any]:
    """The `celery` section: measured when the Celery executor exists, else `not measured`;
    `backend`: "sqlite" (as `dagster dev` runs) or "postgres" (what workers on other machines
    need)."""
    warnings.filterwarnings("ignore")
    name = exposed_executor()
    if name is None:
        return not_measured(
            "flowmaestro_dagster.engines exposes no Celery executor (no public name containing "
            "'celery', no engines.celery module)"
        )
    command = worker_command()
    if command is None:
        return not_measured(f"{name} exists, but there is no `flowmaestro worker` command")
    if not broker_answers():
        return not_measured(f"the Celery broker {BROKER} does not answer (scripts/services.sh)")
    try:
        found = measure(command, repeats=2 if quick else 5, backend=backend)
    except Exception as exc:  # noqa: BLE001 - recorded as the reason, never as a figure
        return not_measured(f"{name} exists, but the runs failed: {type(exc).__name__}: {exc}")
    found["executor"] = name
    found["backend"] = backend
    return found


if __name__ == "__main__":
    backend = "postgres" if "--postgres" in sys.argv else "sqlite"
    print(json.dumps(run("--quick" in sys.argv, backend), indent=2))
