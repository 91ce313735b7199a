"""API benchmark (`api` section): idempotent submissions per second and their latency, launch
excluded and included, on SQLite and PostgreSQL side by side; and submit → first node running,
through a real Dagster (`dagster dev` on a temporary home).

Every phase has its own fresh platform database. (The launch-excluded phase leaves hundreds of
executions that were never launched; on a database a Dagster stack reads, the platform's launch
reconciler would launch them all, and the submit → running samples would queue behind them: the
"no median" failure this module had.)

`python -m bench.api [--quick]` prints the result as JSON.
"""

import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import uvicorn

from bench.common import drop_pg, first_step_start, percentile, pg_database, user_key
from flowmaestro_api.main import create_app
from flowmaestro_api.settings import ApiSettings
from flowmaestro_dagster.control.client import DagsterClient
from flowmaestro_dagster.store.db import get_engine, migrate, session_scope
from flowmaestro_dagster.store.models import Execution
from flowmaestro_dagster.testing.stack import DagsterStack, free_port

UNREACHABLE = "http://127.0.0.1:9/graphql"
WORKFLOW = {
    "name": "Bench greeter",
    "nodes": [
        {"id": "in", "type": "input", "data": {"inputName": "who"}},
        {"id": "out", "type": "output", "data": {"outputName": "greeting", "value": "hi {{who}}"}},
    ],
    "edges": [{"id": "e", "source": "in", "target": "out"}],
}


class Server:
    def __init__(self, app: Any) -> None:
        self.port = free_port()
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="error")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        while not self.server.started:
            time.sleep(0.05)
        return f"http://127.0.0.1:{self.port}"

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


API_WORKERS = 2  # uvicorn worker processes: one per core of the benchmark machine


class ApiProcess:
    """`flowmaestro api --workers N` in its own processes, as deployed: the load generator
    (this process) does not share their interpreter lock."""

    def __init__(self, settings: ApiSettings, dagster_home: Path, workers: int) -> None:
        self.port = free_port()
        self.env = {
            **os.environ,
            "DAGSTER_HOME": str(dagster_home),
            "FLOWMAESTRO_DATABASE_URL": settings.database_url,
            "FLOWMAESTRO_DAGSTER_GRAPHQL_URL": settings.dagster_graphql_url,
            "FLOWMAESTRO_LAUNCH_ON_SUBMIT": str(settings.launch_on_submit).lower(),
            "FLOWMAESTRO_RECONCILE_AFTER_SECONDS": str(settings.reconcile_after_seconds),
        }
        self.workers = workers
        self.process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> str:
        command = [str(Path(sys.executable).with_name("flowmaestro")), "api"]
        command += ["--port", str(self.port), "--workers", str(self.workers)]
        self.process = subprocess.Popen(
            command, env=self.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        base = f"http://127.0.0.1:{self.port}"
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"flowmaestro api exited with {self.process.returncode}")
            try:
                if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                    return base
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise TimeoutError("flowmaestro api did not answer in 120 s")

    def __exit__(self, *exc: object) -> None:
        if self.process is not None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)


def launched_count(url: str) -> int:
    with session_scope(get_engine(url)) as session:
        return session.query(Execution).filter(Execution.launched_at.isnot(None)).count()


def submissions(
    settings: ApiSettings,
    dagster_home: Path,
    *,
    seconds: float,
    clients: int,
    launch_grace: float = 0.0,
) -> dict[str, Any]:
    """`clients` threads submitting for `seconds` to the API in its own processes; launches
    (if on) are counted until `launch_grace` seconds after the window, and those not started by
    then are dropped (the launch rate is Dagster's, a few a second: waiting for hundreds would
    take minutes)."""
    auth = user_key(settings.database_url)
    launched_before = launched_count(settings.database_url)
    latencies: list[float] = []
    errors = 0
    lock = threading.Lock()
    server = ApiProcess(settings, dagster_home, API_WORKERS)
    with server as base, httpx.Client(base_url=base, timeout=60) as http:
        workflow_id = http.post("/workflows", json={"definition": WORKFLOW}, headers=auth).json()[
            "id"
        ]
        deployed = http.post(f"/workflows/{workflow_id}/versions/1/deploy", headers=auth).json()
        started = time.perf_counter()
        deadline = started + seconds

        def worker(_: int) -> None:
            nonlocal errors
            with httpx.Client(base_url=base, timeout=60) as own:
                while time.perf_counter() < deadline:
                    t0 = time.perf_counter()
                    response = own.post(
                        f"/workflows/{workflow_id}/executions",
                        json={"inputs": {"who": "bench"}},
                        headers={**auth, "Idempotency-Key": str(uuid.uuid4())},
                    )
                    elapsed = time.perf_counter() - t0
                    with lock:
                        if response.status_code == 201:
                            latencies.append(elapsed)
                        else:
                            errors += 1

        with ThreadPoolExecutor(max_workers=clients) as pool:
            list(pool.map(worker, range(clients)))
        wall = time.perf_counter() - started
        time.sleep(launch_grace)
        launched = launched_count(settings.database_url) - launched_before
        launch_wall = time.perf_counter() - started
    return {
        "submissions": len(latencies),
        "errors": errors,
        "clients": clients,
        "seconds": round(wall, 1),
        "per_second": round(len(latencies) / wall, 1),
        "min_ms": round(min(latencies) * 1000, 1),
        "p50_ms": round(percentile(latencies, 0.5) * 1000, 1),
        "p99_ms": round(percentile(latencies, 0.99) * 1000, 1),
        "launched": launched,
        "launched_per_second": round(launched / launch_wall, 1) if launched else 0.0,
        "launch_window_s": round(launch_wall, 1),
        "deploy_runnable": deployed.get("runnable"),
        "api_workers": API_WORKERS,
    }


def submit_to_running(
    stack: DagsterStack, settings: ApiSettings, client: DagsterClient, samples: int
) -> dict[str, Any]:
    app = create_app(settings, dagster=client)
    auth = user_key(settings.database_url)
    instance = client.instance
    delays: list[float] = []
    timed_out = 0
    with Server(app) as base, httpx.Client(base_url=base, timeout=60) as http:
        workflow_id = http.post("/workflows", json={"definition": WORKFLOW}, headers=auth).json()[
            "id"
        ]
        http.post(f"/workflows/{workflow_id}/versions/1/deploy", headers=auth)
        for _ in range(samples):
            submitted = time.time()
            execution_id = http.post(
                f"/workflows/{workflow_id}/executions", json={"inputs": {"who": "x"}}, headers=auth
            ).json()["id"]
            first_step = None
            deadline = time.monotonic() + 120
            while first_step is None and time.monotonic() < deadline:
                runs = client.runs_for_execution(execution_id)
                if runs:
                    first_step = first_step_start(instance, runs[0].run_id)
                time.sleep(0.05)
            if first_step is not None:
                delays.append(first_step - submitted)
            else:
                timed_out += 1
            time.sleep(1)  # let the run finish before the next sample
    if not delays:
        raise RuntimeError(f"no run started a node within 120 s ({timed_out} samples timed out)")
    return {
        "samples": len(delays),
        "timed_out": timed_out,
        "p50_s": round(statistics.median(delays), 2),
        "p95_s": round(percentile(delays, 0.95), 2),
        "min_s": round(min(delays), 2),
        "max_s": round(max(delays), 2),
    }


def fresh_database(kind: str, workdir: Path, phase: str, created: list[str]) -> str:
    """A new, migrated platform database for one phase (its name kept in `created` to drop)."""
    if kind == "sqlite":
        url = f"sqlite:///{workdir / f'{kind}-{phase}.db'}"
    else:
        name, url = pg_database()
        created.append(name)
    migrate(url)
    return url


def run_backend(
    kind: str,
    workdir: Path,
    *,
    seconds: float,
    clients: int,
    samples: int,
    launch_grace: float,
) -> dict[str, Any]:
    created: list[str] = []
    try:
        url = fresh_database(kind, workdir, "excluded", created)
        home = workdir / f"idle-home-{kind}"
        home.mkdir(exist_ok=True)
        excluded = submissions(
            ApiSettings(database_url=url, dagster_graphql_url=UNREACHABLE, launch_on_submit=False),
            home,
            seconds=seconds,
            clients=clients,
        )
        url = fresh_database(kind, workdir, "stack", created)
        stack = DagsterStack(workdir / f"home-{kind}", url)
        stack.start()
        try:
            settings = ApiSettings(
                database_url=url,
                dagster_graphql_url=stack.graphql_url,
                reconcile_after_seconds=3600,
            )
            client = DagsterClient(stack.graphql_url, instance=stack.instance())
            running = submit_to_running(stack, settings, client, samples)
            included = submissions(
                settings, stack.home, seconds=seconds, clients=clients, launch_grace=launch_grace
            )
        finally:
            stack.stop()
        return {
            "launch_excluded": excluded,
            "launch_included": included,
            "submit_to_node_running": running,
        }
    finally:
        for name in created:
            drop_pg(name)


def main(
    seconds: float = 8, clients: int = 16, samples: int = 10, launch_grace: float = 15
) -> dict[str, Any]:
    warnings.filterwarnings("ignore")
    with tempfile.TemporaryDirectory() as tmp:
        found: dict[str, Any] = {
            kind: run_backend(
                kind,
                Path(tmp),
                seconds=seconds,
                clients=clients,
                samples=samples,
                launch_grace=launch_grace,
            )
            for kind in ("sqlite", "postgres")
        }
    found["postgres_over_sqlite_per_second"] = {
        phase: round(
            found["postgres"][phase]["per_second"] / found["sqlite"][phase]["per_second"], 2
        )
        for phase in ("launch_excluded", "launch_included")
        if found["sqlite"][phase]["per_second"]
    }
    found["shape"] = {
        "api_workers": API_WORKERS,
        "seconds": seconds,
        "clients": clients,
        "samples": samples,
        "launch_grace_s": launch_grace,
    }
    return found


def run(quick: bool = False) -> dict[str, Any]:
    """The `api` section: full or smoke-sized (`quick`)."""
    if quick:
        return main(seconds=3, clients=8, samples=3, launch_grace=5)
    return main()


if __name__ == "__main__":
    print(json.dumps(run("--quick" in sys.argv), indent=2))
