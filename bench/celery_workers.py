"""Celery section (HOOK): the parallel workload (W1, W2, W3 of `bench.parallel`) with its node
steps on Celery workers, side by side with the same workflows on the run's own threads.

This is a hook for the Celery executor another engineer is adding. It measures only when

1. `flowmaestro_dagster.engines` exposes it (a public name containing "celery", or its
   `flowmaestro_dagster.engines.celery` module),
2. the `flowmaestro worker` command exists, and
3. the broker (Redis, `BROKER`) answers;

otherwise, or if a run fails or its steps did not go to Celery, the section records
`not measured: <reason>`: it never reports a figure it did not measure.

Celery routes steps only in launched runs whose outputs are persisted, so the workload runs on a
real Dagster (`dagster dev`, `flowmaestro_dagster.testing.stack`) with the broker set and
`WORKERS` `flowmaestro worker` processes on a queue of its own. Each workflow is deployed twice
through the API: with `runOn: "celery"` in its settings (every node to Celery) and without (every
node on the run's threads); executions of the two alternate, one at a time, and a figure is the
run's own duration (Dagster's run start to end). Every Celery run is checked for the executor's
engine event saying which steps went to the workers.

`python -m bench.celery_workers [--quick]` prints the result as JSON.
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
    return [str(flowmaestro), "worker"] if probe.returncode == 0 else None


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


def _run_seconds(instance: Any, run_id: str) -> tuple[float, bool]:
    """The run's duration and whether the executor said steps went to Celery workers."""
    from dagster import DagsterEventType

    record = instance.get_run_records(filters=_runs_filter(run_id))[0]
    events = instance.get_records_for_run(run_id, of_type=DagsterEventType.ENGINE_EVENT).records
    messages = [r.event_log_entry.message or "" for r in events]
    routed = any(m.startswith("Celery: steps") for m in messages)
    if not routed:
        notes = [m for m in messages if m.startswith("Celery:")]
        if notes:
            raise RuntimeError(f"the steps stayed local: {notes[0]}")
    return float(record.end_time - record.start_time), routed


def _runs_filter(run_id: str) -> Any:
    from dagster import RunsFilter

    return RunsFilter(run_ids=[run_id])


def measure(command: list[str], repeats: int) -> dict[str, Any]:
    from fastapi.testclient import TestClient

    from bench import parallel
    from bench.common import deploy, stack_settings, submit, user_key
    from flowmaestro_api.main import create_app
    from flowmaestro_dagster.control.client import DagsterClient
    from flowmaestro_dagster.store.db import dispose_engines, migrate
    from flowmaestro_dagster.testing.stack import DagsterStack

    queue = f"bench-{uuid.uuid4().hex[:8]}"
    times: dict[str, dict[str, list[float]]] = {
        name: {"threads": [], "celery": []} for name in parallel.WORKLOADS
    }
    with tempfile.TemporaryDirectory(prefix="bench-celery-") as tmp:
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
                                raise RuntimeError(f"run {runs[-1].run_id}: {runs[-1].status}")
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
                            seconds, routed = _run_seconds(dagster.instance, once(workflow_id))
                            if variant == "celery" and not routed:
                                raise RuntimeError(f"{name}: no step was sent to Celery")
                            if round_:
                                times[name][variant].append(seconds)
        finally:
            stack.stop()
            dispose_engines()
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
    return {
        "measured": True,
        "workers": WORKERS,
        "broker": BROKER,
        "repeats": repeats,
        "workloads": workloads,
        "celery_over_threads": {
            name: round(v["celery"]["median_s"] / v["threads"]["median_s"], 2)
            for name, v in workloads.items()
        },
    }


def run(quick: bool = False) -> dict[str, Any]:
    """The `celery` section: measured when the Celery executor exists, else `not measured`."""
    warnings.filterwarnings("ignore")
    name = exposed_executor()
    if name is None:
        return not_measured(
            "flowmaestro_dagster.engines exposes no Celery executor yet (no public name "
            "containing 'celery', no execution.celery module; another engineer is adding it)"
        )
    command = worker_command()
    if command is None:
        return not_measured(f"{name} exists, but there is no `flowmaestro worker` command")
    if not broker_answers():
        return not_measured(f"the Celery broker {BROKER} does not answer (scripts/services.sh)")
    try:
        found = measure(command, repeats=2 if quick else 5)
    except Exception as exc:  # noqa: BLE001 - recorded as the reason, never as a figure
        return not_measured(f"{name} exists, but the runs failed: {type(exc).__name__}: {exc}")
    found["executor"] = name
    return found


if __name__ == "__main__":
    print(json.dumps(run("--quick" in sys.argv), indent=2))
