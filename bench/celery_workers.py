"""Celery section (HOOK): the parallel workload (W1, W2, W3 of `bench.parallel`) with its node
steps on Celery workers, side by side with the same workflows on the run's own threads.

This is a hook for the Celery executor another engineer is adding. It measures only when

1. `flowmaestro_dagster.execution` exposes it (a public name containing "celery"),
2. the `flowmaestro worker` command exists, and
3. the broker (Redis, `BROKER`) answers;

otherwise, or if the run itself fails, the section records `not measured: <reason>`: it never
reports a figure it did not measure. When it measures, it starts `WORKERS` `flowmaestro worker`
processes on a queue of its own, sets `runOn: "celery"` in each workflow's settings (every node
goes to Celery, as the settings document), and runs the workflows in this process on a
persistent SQLite instance (a temporary DAGSTER_HOME the workers share), interleaved with the
same workflows without `runOn` (every step on the run's threads).

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
    """The public name of the Celery executor in `flowmaestro_dagster.execution`, if any."""
    from flowmaestro_dagster import execution

    names = getattr(execution, "__all__", None) or [n for n in dir(execution) if n[0] != "_"]
    return next((n for n in names if "celery" in n.lower()), None)


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


def measure(command: list[str], repeats: int) -> dict[str, Any]:
    from bench import parallel

    queue = f"bench-{uuid.uuid4().hex[:8]}"
    with tempfile.TemporaryDirectory(prefix="bench-celery-") as tmp:
        home = Path(tmp)
        (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
        env_vars = {
            "DAGSTER_HOME": str(home),
            "FLOWMAESTRO_CELERY_BROKER_URL": BROKER,
            "FLOWMAESTRO_CELERY_QUEUE": queue,
        }
        os.environ.update(env_vars)  # this process (the run) reads the same settings
        for module in ("flowmaestro_dagster.settings", "flowmaestro_api.settings"):
            for getter in ("get_settings", "get_api_settings"):
                cached = getattr(sys.modules.get(module), getter, None)
                if cached is not None and hasattr(cached, "cache_clear"):
                    cached.cache_clear()
        from dagster import DagsterInstance

        from flowmaestro_dagster.compiler import compile_workflow
        from flowmaestro_dagster.execution.local import execute_in_process_with_executor
        from flowmaestro_dagster.running import run_config_for

        config = run_config_for({}, log_level="ERROR")
        jobs = {}
        for name, build in parallel.WORKLOADS.items():
            on_celery = build()
            on_celery["settings"] = {**on_celery.get("settings", {}), "runOn": "celery"}
            jobs[name] = {
                "threads": compile_workflow(build()).job,
                "celery": compile_workflow(on_celery).job,
            }
        times: dict[str, dict[str, list[float]]] = {
            name: {"threads": [], "celery": []} for name in jobs
        }
        with (
            workers(command, {**os.environ, **env_vars}, home),
            DagsterInstance.from_config(str(home)) as instance,
        ):
            for round_ in range(repeats + 1):  # round 0 warms up
                for name, variants in jobs.items():
                    order = list(variants.items())
                    for variant, job in order if round_ % 2 == 0 else order[::-1]:
                        started = time.perf_counter()
                        result = execute_in_process_with_executor(
                            job, run_config=config, instance=instance, raise_on_error=False
                        )
                        elapsed = time.perf_counter() - started
                        if not result.success:
                            raise RuntimeError(f"{name} on {variant} failed")
                        if round_:
                            times[name][variant].append(elapsed)
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
            "flowmaestro_dagster.execution exposes no Celery executor yet (no public name "
            "containing 'celery'; another engineer is adding it)"
        )
    command = worker_command()
    if command is None:
        return not_measured(
            f"flowmaestro_dagster.execution exposes {name}, but there is no `flowmaestro worker`"
        )
    if not broker_answers():
        return not_measured(f"the Celery broker {BROKER} does not answer (scripts/services.sh)")
    try:
        found = measure(command, repeats=2 if quick else 5)
    except Exception as exc:  # noqa: BLE001 - recorded as the reason, never as a figure
        return not_measured(f"{name} is exposed, but the run failed: {type(exc).__name__}: {exc}")
    found["executor"] = name
    return found


if __name__ == "__main__":
    print(json.dumps(run("--quick" in sys.argv), indent=2))
