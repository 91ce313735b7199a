"""API benchmark (`api` section): idempotent submissions per second and their latency, launch
excluded and included, on SQLite and PostgreSQL side by side; and submit → first node running,
through a real Dagster (`dagster dev` on a temporary home).

Open loop (issue 20, goal 2): POSTs at a fixed arrival rate (200/s) and GETs of executions
made before (50/s) to the API as deployed (2 workers, launch excluded), from a load generator in
its own process; latencies run from each request's *scheduled* send time, so a server that
stalls shows in them instead of slowing the offered load down (no coordinated omission). With
it, the CPU time the API's processes (and PostgreSQL's backends) spent per request, and the
database round trips of one submission and one read, counted in process.

Every phase has its own fresh platform database. (The launch-excluded phase leaves hundreds of
executions that were never launched; on a database a Dagster stack reads, the platform's launch
reconciler would launch them all, and the submit → running samples would queue behind them: the
"no median" failure this module had.)

`python -m bench.api [--quick] [--open-loop | --launch]` prints the result as JSON
(`--open-loop`: that phase alone, on both storages; `--launch`: submit → first node running and
run throughput alone, on both storages).
"""

import asyncio
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
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from dagster import DagsterRunStatus, RunsFilter
from sqlalchemy import event

from bench.common import (
    drop_pg,
    first_step_start,
    percentile,
    pg_database,
    postgres_server_pid,
    tree_cpu_seconds,
    user_key,
    wait_until,
)
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
# Each worker imports Dagster and the node catalogue (~4 s of CPU): minutes on a busy machine.
STARTUP_TIMEOUT_S = 300


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
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"flowmaestro api exited with {self.process.returncode}")
            try:
                if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                    return base
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.__exit__()  # not started in time: stopped, not left serving
        raise TimeoutError(f"flowmaestro api did not answer in {STARTUP_TIMEOUT_S} s")

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


THROUGHPUT_RUNS = 60  # executions submitted at once, spread over THROUGHPUT_USERS users
THROUGHPUT_USERS = 4  # the default per-user limit (3) would otherwise cap one user's burst


def run_throughput(stack: DagsterStack, settings: ApiSettings, runs: int) -> dict[str, Any]:
    """Issue 20, goal 5: runs started per second from a burst of `runs` submissions (of the
    2-node workflow, by 4 users, default queue limits), and the CPU seconds one run costs all
    processes together: the API, the webserver (its launch), the daemon (dequeue), the code
    servers, the run workers (through the forkserver) and, on PostgreSQL, the database server.
    Cores divided by that cost is the rate the machine could reach; the ratio says how close."""
    instance = stack.instance()
    postgres = settings.database_url.startswith("postgresql")
    server = ApiProcess(settings, stack.home, API_WORKERS)
    with server as base, httpx.Client(base_url=base, timeout=60) as http:
        assert server.process is not None and stack.process is not None
        targets = []
        for _ in range(THROUGHPUT_USERS):
            auth = user_key(settings.database_url)
            body = {"definition": WORKFLOW}
            workflow_id = http.post("/workflows", json=body, headers=auth).json()["id"]
            http.post(f"/workflows/{workflow_id}/versions/1/deploy", headers=auth)
            targets.append((workflow_id, auth))

        def submit(n: int) -> int:
            workflow_id, auth = targets[n % len(targets)]
            response = http.post(
                f"/workflows/{workflow_id}/executions",
                json={"inputs": {"who": f"b{n}"}},
                headers={**auth, "Idempotency-Key": str(uuid.uuid4())},
            )
            return response.status_code

        def finished_since(since: float) -> list[Any]:
            records = instance.get_run_records(RunsFilter(created_after=since_dt(since)))
            return [r for r in records if r.dagster_run.is_finished]

        # Warm-up, not measured: every user's first run end to end (the API workers compile,
        # the forkserver starts and preloads).
        warm = time.time()
        with ThreadPoolExecutor(max_workers=4) as pool:
            list(pool.map(submit, range(THROUGHPUT_USERS * 2)))
        wait_until(lambda: len(finished_since(warm)) >= THROUGHPUT_USERS * 2, timeout=300)
        time.sleep(2)

        pids = [server.process.pid, stack.process.pid]
        if stack.code_server_process is not None:
            pids.append(stack.code_server_process.pid)
        if postgres:
            pids.append(postgres_server_pid())

        def cpu() -> float:
            return sum(tree_cpu_seconds(pid, reaped=True) for pid in pids)

        cpu_before, load_before = cpu(), os.getloadavg()[0]
        started = time.time()
        with ThreadPoolExecutor(max_workers=4) as pool:
            statuses = Counter(pool.map(submit, range(runs)))
        submitted_s = time.time() - started
        wait_until(lambda: len(finished_since(started)) >= runs, timeout=900, interval=0.5)
        done_s = time.time() - started
        spent, load_after = cpu() - cpu_before, os.getloadavg()[0]
        records = finished_since(started)
    starts = sorted(r.start_time for r in records if r.start_time)
    succeeded = sum(r.dagster_run.status == DagsterRunStatus.SUCCESS for r in records)
    per_run = spent / runs
    cores = os.cpu_count() or 1
    started_per_s = (len(starts) - 1) / (starts[-1] - starts[0]) if len(starts) > 1 else 0.0
    return {
        "runs": runs,
        "users": THROUGHPUT_USERS,
        "statuses": dict(statuses),
        "succeeded": succeeded,
        "submitted_s": round(submitted_s, 2),
        "all_finished_s": round(done_s, 2),
        "started_per_second": round(started_per_s, 2),
        "finished_per_second": round(runs / done_s, 2),
        "cpu_s_per_run": round(per_run, 3),
        "cpu_bound_per_second": round(cores / per_run, 2),
        "of_cpu_bound": round(started_per_s * per_run / cores, 2),
        "cores": cores,
        "load_average_before": round(load_before, 2),
        "load_average_after": round(load_after, 2),
    }


def since_dt(timestamp: float) -> datetime:
    return datetime.fromtimestamp(timestamp, tz=UTC)


def fresh_database(kind: str, workdir: Path, phase: str, created: list[str]) -> str:
    """A new, migrated platform database for one phase (its name kept in `created` to drop)."""
    if kind == "sqlite":
        url = f"sqlite:///{workdir / f'{kind}-{phase}.db'}"
    else:
        name, url = pg_database()
        created.append(name)
    migrate(url)
    return url


# -- open loop: a fixed arrival rate, latency from the scheduled send time -----------------------

OPEN_LOOP_RATE = 200.0  # POST /workflows/{id}/executions a second
OPEN_LOOP_GET_RATE = 50.0  # GET /executions/{id} a second, interleaved
OPEN_LOOP_CONNECTIONS = 256  # the load generator's keep-alive connections, at most
OPEN_LOOP_READS = 20  # executions made before the load, read round robin during it
# Issue 20, goal 2: at 200 submissions a second on 2 API workers.
GOALS = {"post_p99_ms_max": 100.0, "get_p99_ms_max": 50.0, "rate_per_second": OPEN_LOOP_RATE}
ROOT = Path(__file__).resolve().parents[1]


class _Connections:
    """Keep-alive HTTP/1.1 connections to one server, opened as needed, at most `size` busy.

    A hand-written client, not httpx: at 250 requests a second on a 2-core machine, httpx's
    ~1 ms of CPU per request would be taken from the server under test. Bodies are read by
    `Content-Length` (what uvicorn sends for these answers)."""

    def __init__(self, host: str, port: int, size: int) -> None:
        self.host, self.port = host, port
        self.slots = asyncio.Semaphore(size)
        self.idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        self.opened = 0

    async def _open(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        self.opened += 1
        return await asyncio.open_connection(self.host, self.port)

    async def request(self, payload: bytes) -> tuple[int, bytes]:
        """Send one whole request; (status, body). A kept connection the server closed while
        idle is replaced once (every request here is safe to resend: POSTs carry a key)."""
        async with self.slots:
            reused = bool(self.idle)
            reader, writer = self.idle.pop() if reused else await self._open()
            try:
                writer.write(payload)
                head = await reader.readuntil(b"\r\n\r\n")
            except (asyncio.IncompleteReadError, ConnectionError):
                writer.close()
                if not reused:
                    raise
                reader, writer = await self._open()
                writer.write(payload)
                head = await reader.readuntil(b"\r\n\r\n")
            try:
                status, length, keep = _response_head(head)
                body = await reader.readexactly(length)
            except BaseException:
                writer.close()
                raise
            if keep:
                self.idle.append((reader, writer))
            else:
                writer.close()
            return status, body

    def close(self) -> None:
        for _, writer in self.idle:
            writer.close()
        self.idle.clear()


def _response_head(head: bytes) -> tuple[int, int, bool]:
    """(status, Content-Length, keep-alive) of an HTTP/1.1 response head."""
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    fields = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        fields[name.strip().lower()] = value.strip().lower()
    if "content-length" not in fields:
        raise ValueError(f"no Content-Length in the answer ({fields.get('transfer-encoding')})")
    return status, int(fields["content-length"]), fields.get("connection") != "close"


def _request(
    method: str, path: str, host: str, headers: dict[str, str], body: bytes = b""
) -> bytes:
    lines = [
        f"{method} {path} HTTP/1.1",
        f"Host: {host}",
        *(f"{k}: {v}" for k, v in headers.items()),
    ]
    if body or method == "POST":
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def _database_backends(database: str) -> dict[int, float]:
    """CPU seconds of each PostgreSQL backend now connected to `database` (by pid)."""
    import sqlalchemy as sa

    from bench.common import PG_ADMIN

    engine = sa.create_engine(PG_ADMIN, poolclass=sa.pool.NullPool)
    with engine.connect() as connection:
        pids = connection.execute(
            sa.text("SELECT pid FROM pg_stat_activity WHERE datname = :d"), {"d": database}
        ).scalars()
        return {pid: tree_cpu_seconds(pid) for pid in pids}


def _database_counters(database: str) -> dict[str, int]:
    """pg_stat_database's sessions opened and transactions committed of `database`."""
    import sqlalchemy as sa

    from bench.common import PG_ADMIN

    time.sleep(1.0)  # backends report their statistics at most once a second when idle
    engine = sa.create_engine(PG_ADMIN, poolclass=sa.pool.NullPool)
    with engine.connect() as connection:
        row = connection.execute(
            sa.text("SELECT sessions, xact_commit FROM pg_stat_database WHERE datname = :d"),
            {"d": database},
        ).one()
    return {"sessions": int(row[0]), "commits": int(row[1])}


async def _open_loop(plan: dict[str, Any]) -> dict[str, Any]:
    """The load of `plan` (see `open_loop`): every request due at a time fixed in advance,
    created as a task at that time whatever the answers to earlier ones."""
    host, port = plan["host"], plan["port"]
    address = f"{host}:{port}"
    auth = {"Authorization": plan["authorization"]}
    body = json.dumps({"inputs": {"who": "bench"}}).encode()
    post_path = f"/workflows/{plan['workflow_id']}/executions"
    reads = plan["execution_ids"]
    connections = _Connections(host, port, plan["connections"])
    found: dict[str, dict[str, Any]] = {
        kind: {"latencies": [], "lags": [], "statuses": Counter()} for kind in ("post", "get")
    }

    def payload(kind: str, n: int) -> bytes:
        if kind == "post":
            headers = {
                **auth,
                "Idempotency-Key": f"open-{n}-{uuid.uuid4().hex[:12]}",
                "Content-Type": "application/json",
            }
            return _request("POST", post_path, address, headers, body)
        return _request("GET", f"/executions/{reads[n % len(reads)]}", address, auth)

    async def one(kind: str, n: int, due: float, counted: bool = True) -> None:
        ok = 201 if kind == "post" else 200
        sent = time.perf_counter()
        try:
            status, _ = await connections.request(payload(kind, n))
        except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
            if counted:
                found[kind]["statuses"][type(exc).__name__] += 1
            return
        done = time.perf_counter()
        if not counted:
            return
        found[kind]["statuses"][str(status)] += 1
        if status == ok:
            found[kind]["latencies"].append(done - due)
            found[kind]["lags"].append(sent - due)

    # Warm-up, not counted: every connection the window may use opened (the kernel spreads
    # them over both workers), so each worker has served (and compiled for) its first POST and
    # GET before the window; twice, so the second round reuses what the first opened.
    for _ in range(2):
        now = time.perf_counter()
        await asyncio.gather(
            *(
                one(k, -1 - i, now, False)
                for i in range(plan["connections"] // 2)
                for k in ("post", "get")
            )
        )
    seconds = plan["seconds"]
    schedule = sorted(
        [(n / plan["post_rate"], "post", n) for n in range(round(plan["post_rate"] * seconds))]
        + [
            ((m + 0.5) / plan["get_rate"], "get", m)
            for m in range(round(plan["get_rate"] * seconds))
        ]
    )
    backends = _database_backends(plan["database"]) if plan["database"] else {}
    counters = _database_counters(plan["database"]) if plan["database"] else {}
    api_cpu, client_cpu = tree_cpu_seconds(plan["api_pid"]), time.process_time()
    load_before = os.getloadavg()[0]
    tasks: list[asyncio.Task[None]] = []
    start = time.perf_counter() + 0.05
    for offset, kind, n in schedule:
        due = start + offset
        pause = due - time.perf_counter()
        if pause > 0:
            await asyncio.sleep(pause)
        tasks.append(asyncio.create_task(one(kind, n, due)))
    last_send = time.perf_counter()
    await asyncio.gather(*tasks)
    finished = time.perf_counter()
    api_cpu = tree_cpu_seconds(plan["api_pid"]) - api_cpu
    client_cpu = time.process_time() - client_cpu
    load_after = os.getloadavg()[0]
    database: dict[str, Any] = {}
    if plan["database"]:
        after = _database_backends(plan["database"])
        spent = sum(cpu - backends.get(pid, 0.0) for pid, cpu in after.items())
        later = _database_counters(plan["database"])
        database = {
            "cpu_s": round(spent, 2),
            "sessions_opened": later["sessions"] - counters["sessions"],
            "commits": later["commits"] - counters["commits"],
        }
    connections.close()
    requests = len(schedule)
    summary: dict[str, Any] = {
        "requests": requests,
        "seconds": round(finished - start, 2),
        "sent_per_second": round(requests / max(last_send - start, 1e-9), 1),
        "api_cpu_s": round(api_cpu, 2),
        "api_cpu_ms_per_request": round(api_cpu * 1000 / requests, 2),
        "client_cpu_ms_per_request": round(client_cpu * 1000 / requests, 2),
        "connections_opened": connections.opened,
        "load_average_before": round(load_before, 2),
        "load_average_after": round(load_after, 2),
    }
    if database:
        summary["database"] = {
            **database,
            "cpu_ms_per_request": round(database["cpu_s"] * 1000 / requests, 2),
            "commits_per_request": round(database["commits"] / requests, 2),
        }
    for kind, rate_key in (("post", "post_rate"), ("get", "get_rate")):
        latencies, lags = found[kind]["latencies"], found[kind]["lags"]
        statuses: Counter[str] = found[kind]["statuses"]
        ok = "201" if kind == "post" else "200"
        sent = sum(1 for _, k, _ in schedule if k == kind)
        summary[kind] = {
            "offered_per_second": plan[rate_key],
            "sent": sent,
            "ok": len(latencies),
            "errors": {k: v for k, v in statuses.items() if k != ok},
            "achieved_per_second": round(len(latencies) / (finished - start), 1),
            **_figures(latencies),
            "client_lag_p99_ms": _ms(lags, 0.99) if lags else None,
        }
    return summary


def _ms(values: list[float], q: float) -> float:
    return round(percentile(values, q) * 1000, 1)


def _figures(latencies: list[float]) -> dict[str, float | None]:
    if not latencies:
        return {"p50_ms": None, "p99_ms": None, "max_ms": None}
    return {
        "p50_ms": _ms(latencies, 0.5),
        "p99_ms": _ms(latencies, 0.99),
        "max_ms": round(max(latencies) * 1000, 1),
    }


def load_generator() -> None:
    """`python -m bench.api --load-generator`: run the plan read from stdin (JSON), print the
    summary (JSON). Its own process: the measuring client's interpreter lock and CPU are not
    the benchmark's, and uvloop (uvicorn's) keeps its CPU per request low."""
    plan = json.loads(sys.stdin.read())
    try:
        import uvloop

        summary = uvloop.run(_open_loop(plan))
    except ImportError:
        summary = asyncio.run(_open_loop(plan))
    print(json.dumps(summary))


def open_loop(
    kind: str,
    workdir: Path,
    created: list[str],
    *,
    seconds: float,
    rate: float = OPEN_LOOP_RATE,
    get_rate: float = OPEN_LOOP_GET_RATE,
) -> dict[str, Any]:
    """`rate` POSTs and `get_rate` GETs a second for `seconds` to `flowmaestro api --workers 2`
    (launch excluded, no Dagster: the request path alone) on a fresh database, from a load
    generator in its own process; then the database round trips of one of each, in process."""
    url = fresh_database(kind, workdir, "open-loop", created)
    home = workdir / f"open-home-{kind}"
    home.mkdir(exist_ok=True)
    settings = ApiSettings(
        _env_file=None, database_url=url, dagster_graphql_url=UNREACHABLE, launch_on_submit=False
    )
    auth = user_key(url)
    server = ApiProcess(settings, home, API_WORKERS)
    with server as base, httpx.Client(base_url=base, timeout=60, headers=auth) as http:
        workflow_id = http.post("/workflows", json={"definition": WORKFLOW}).json()["id"]
        http.post(f"/workflows/{workflow_id}/versions/1/deploy")
        execution_ids = [
            http.post(
                f"/workflows/{workflow_id}/executions", json={"inputs": {"who": "read"}}
            ).json()["id"]
            for _ in range(OPEN_LOOP_READS)
        ]
        summary = run_load_generator(
            server,
            auth,
            workflow_id,
            execution_ids,
            post_rate=rate,
            get_rate=get_rate,
            seconds=seconds,
            connections=OPEN_LOOP_CONNECTIONS,
            database=url.rsplit("/", 1)[1] if kind == "postgres" else None,
            timeout=seconds * 20 + 120,
        )
    summary["round_trips"] = round_trips(url, workflow_id, auth, execution_ids[0])
    summary["goal_met"] = p99_goals_met(summary)
    return summary


def run_load_generator(
    server: ApiProcess,
    auth: dict[str, str],
    workflow_id: str,
    reads: list[str],
    *,
    post_rate: float,
    get_rate: float,
    seconds: float,
    connections: int,
    database: str | None,
    timeout: float,
) -> dict[str, Any]:
    """The open-loop load generator (`--load-generator`, its own process) against the running
    `server`: POSTs of `workflow_id` and GETs of `reads`; its summary (see `_open_loop`).
    `database`: a PostgreSQL database whose backends' CPU is counted too."""
    assert server.process is not None
    plan = {
        "host": "127.0.0.1",
        "port": server.port,
        "authorization": auth["Authorization"],
        "workflow_id": workflow_id,
        "execution_ids": reads,
        "post_rate": post_rate,
        "get_rate": get_rate,
        "seconds": seconds,
        "connections": connections,
        "api_pid": server.process.pid,
        "database": database,
    }
    generator = subprocess.run(
        [sys.executable, "-m", "bench.api", "--load-generator"],
        input=json.dumps(plan).encode(),
        capture_output=True,
        cwd=ROOT,
        timeout=timeout,
        check=False,
    )
    if generator.returncode != 0:
        raise RuntimeError(f"the load generator failed: {generator.stderr.decode()[-2000:]}")
    summary: dict[str, Any] = json.loads(generator.stdout)
    post, get = summary["post"], summary["get"]
    summary["post_p99_ms"], summary["get_p99_ms"] = post["p99_ms"], get["p99_ms"]
    summary["errors"] = sum(post["errors"].values()) + sum(get["errors"].values())
    return summary


def p99_goals_met(summary: dict[str, Any]) -> dict[str, bool]:
    """Goal 2's p99s on a load generator's summary: met only if every request was answered."""
    post, get, errors = summary["post"], summary["get"], summary["errors"]
    return {
        "post_p99": errors == 0
        and post["p99_ms"] is not None
        and post["p99_ms"] <= GOALS["post_p99_ms_max"],
        "get_p99": errors == 0
        and get["p99_ms"] is not None
        and get["p99_ms"] <= GOALS["get_p99_ms_max"],
    }


class RoundTrips:
    """What requests send to the platform database through `engine`, counted by SQLAlchemy's
    events: statements; transactions that ran one (psycopg2 sends a BEGIN before the first
    statement and a COMMIT or ROLLBACK at the end: two round trips more; a transaction that ran
    nothing sends neither); and pool pre-pings (one per checkout, when the engine pings)."""

    def __init__(self, engine: Any) -> None:
        self.statements = self.transactions = self.checkouts = 0
        self._running: set[int] = set()  # DBAPI connections inside a transaction that ran one
        self._pings = bool(getattr(engine.pool, "_pre_ping", False))
        event.listen(engine, "before_cursor_execute", self._statement)
        event.listen(engine, "commit", self._end)
        event.listen(engine, "rollback", self._end)
        event.listen(engine.pool, "checkout", self._checkout)
        self.engine = engine

    def remove(self) -> None:
        event.remove(self.engine, "before_cursor_execute", self._statement)
        event.remove(self.engine, "commit", self._end)
        event.remove(self.engine, "rollback", self._end)
        event.remove(self.engine.pool, "checkout", self._checkout)

    def _statement(self, connection: Any, *_: Any) -> None:
        self.statements += 1
        dbapi = id(connection.connection.dbapi_connection)
        if dbapi not in self._running:
            self._running.add(dbapi)
            self.transactions += 1

    def _end(self, connection: Any) -> None:
        self._running.discard(id(connection.connection.dbapi_connection))

    def _checkout(self, *_: Any) -> None:
        self.checkouts += 1

    def snapshot(self) -> dict[str, int]:
        pings = self.checkouts if self._pings else 0
        return {
            "statements": self.statements,
            "transactions": self.transactions,
            "pings": pings,
            "round_trips": self.statements + 2 * self.transactions + pings,
        }


def round_trips(
    url: str, workflow_id: str, auth: dict[str, str], execution_id: str, samples: int = 20
) -> dict[str, dict[str, float]]:
    """Per request, averaged over `samples` of each after a warm-up: what a new submission (a
    fresh Idempotency-Key), a replay (the same key and body again) and a read send to the
    platform database, in this process (FastAPI's test client, Dagster's storage an ephemeral
    instance: not counted)."""
    from dagster import DagsterInstance
    from fastapi.testclient import TestClient

    settings = ApiSettings(
        _env_file=None, database_url=url, dagster_graphql_url=UNREACHABLE, launch_on_submit=False
    )
    found: dict[str, dict[str, float]] = {}
    with DagsterInstance.ephemeral() as instance:
        app = create_app(settings, dagster=DagsterClient(UNREACHABLE, instance=instance))
        with TestClient(app) as http:
            path = f"/workflows/{workflow_id}/executions"
            body = {"inputs": {"who": "trips"}}

            def post(key: str) -> None:
                response = http.post(path, json=body, headers={**auth, "Idempotency-Key": key})
                if response.status_code not in (200, 201):
                    raise RuntimeError(f"submission refused: {response.text}")

            def get() -> None:
                if http.get(f"/executions/{execution_id}", headers=auth).status_code != 200:
                    raise RuntimeError("read refused")

            keys = [f"trips-{uuid.uuid4().hex}" for _ in range(samples)]
            post("warm-up")
            get()
            for name, call in (
                ("post", lambda n: post(keys[n])),
                ("replay", lambda n: post(keys[n])),
                ("get", lambda n: get()),
            ):
                counter = RoundTrips(get_engine(url))
                try:
                    for n in range(samples):
                        call(n)
                finally:
                    counter.remove()
                found[name] = {k: v / samples for k, v in counter.snapshot().items()}
    return found


@contextmanager
def launch_stack(
    kind: str, workdir: Path, created: list[str]
) -> Iterator[tuple[DagsterStack, ApiSettings, DagsterClient]]:
    """A real Dagster on a fresh platform database (its name kept in `created` to drop), with
    the API settings and client that launch on it; stopped after."""
    url = fresh_database(kind, workdir, "stack", created)
    stack = DagsterStack(workdir / f"home-{kind}", url)
    stack.start()
    try:
        settings = ApiSettings(
            database_url=url, dagster_graphql_url=stack.graphql_url, reconcile_after_seconds=3600
        )
        yield stack, settings, DagsterClient(stack.graphql_url, instance=stack.instance())
    finally:
        stack.stop()


def run_backend(
    kind: str,
    workdir: Path,
    created: list[str],
    *,
    seconds: float,
    clients: int,
    samples: int,
    launch_grace: float,
    open_seconds: float,
    throughput_runs: int = THROUGHPUT_RUNS,
) -> dict[str, Any]:
    """Every phase on one storage (`kind`); each phase's database named in `created`."""
    opened = open_loop(kind, workdir, created, seconds=open_seconds)
    url = fresh_database(kind, workdir, "excluded", created)
    home = workdir / f"idle-home-{kind}"
    home.mkdir(exist_ok=True)
    excluded = submissions(
        ApiSettings(database_url=url, dagster_graphql_url=UNREACHABLE, launch_on_submit=False),
        home,
        seconds=seconds,
        clients=clients,
    )
    with launch_stack(kind, workdir, created) as (stack, settings, client):
        running = submit_to_running(stack, settings, client, samples)
        throughput = run_throughput(stack, settings, throughput_runs)
        included = submissions(
            settings, stack.home, seconds=seconds, clients=clients, launch_grace=launch_grace
        )
    return {
        "open_loop": opened,
        "launch_excluded": excluded,
        "launch_included": included,
        "submit_to_node_running": running,
        "run_throughput": throughput,
    }


# Issue 20, goal 5: runs started per second before its work (commit 6bd7a50: dequeue every 1 s,
# run workers building their own Dagster instance, one PostgreSQL connection per storage
# operation, Dagster's tail + watcher processes per run), measured by `run_throughput` (this
# module's, run against that tree) on 2026-12-05 at load 2.5-8 (CPU per run 0.71 s SQLite,
# 0.97 s PostgreSQL). The same tree gave 1.71 / 2.09 at load 5-10: compare quiet runs.
LAUNCH_BASELINE: dict[str, Any] = {"sqlite": 2.94, "postgres": 2.2, "commit": "6bd7a50"}
FIRST_NODE_P50_S_MAX = 1.0  # goal 4


def launch_goals(found: dict[str, Any]) -> dict[str, Any]:
    """Goals 4 and 5 of issue 20 on both storages: submit → first node p50, and runs started
    per second against the baseline (2x)."""
    p50 = {k: found[k]["submit_to_node_running"]["p50_s"] for k in ("sqlite", "postgres")}
    rates = {k: found[k]["run_throughput"]["started_per_second"] for k in ("sqlite", "postgres")}
    ratios = {k: round(rates[k] / float(LAUNCH_BASELINE[k]), 2) for k in rates}
    return {
        "first_node_p50_s": p50,
        "first_node_p50_s_max": FIRST_NODE_P50_S_MAX,
        "first_node_met": max(p50.values()) <= FIRST_NODE_P50_S_MAX,
        "started_per_second": rates,
        "baseline_started_per_second": LAUNCH_BASELINE,
        "over_baseline": ratios,
        "throughput_met": min(ratios.values()) >= 2.0,
    }


def open_loop_goals(found: dict[str, Any]) -> dict[str, Any]:
    """The goals of issue 20 (goal 2) judged on both storages' open-loop figures: POST and GET
    p99 at the offered rate (every request answered), and PostgreSQL at least as fast as
    SQLite (its POST p99 no higher)."""
    sq, pg = found["sqlite"]["open_loop"], found["postgres"]["open_loop"]
    ratio = (
        round(pg["post_p99_ms"] / sq["post_p99_ms"], 2)
        if sq["post_p99_ms"] and pg["post_p99_ms"] is not None
        else None
    )
    return {
        **GOALS,
        "post_met": sq["goal_met"]["post_p99"] and pg["goal_met"]["post_p99"],
        "get_met": sq["goal_met"]["get_p99"] and pg["goal_met"]["get_p99"],
        "postgres_over_sqlite_post_p99": ratio,
        "postgres_met": ratio is not None and ratio <= 1.0,
    }


def on_both_storages(
    phase: Callable[[str, Path, list[str]], dict[str, Any]],
) -> dict[str, Any]:
    """`phase(kind, workdir, created)` on SQLite, then PostgreSQL; the PostgreSQL databases it
    names in `created` are dropped after it, whatever happened."""
    warnings.filterwarnings("ignore")
    found: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for kind in ("sqlite", "postgres"):
            created: list[str] = []
            try:
                found[kind] = phase(kind, Path(tmp), created)
            finally:
                for name in created:
                    drop_pg(name)
    return found


def open_loop_only(seconds: float) -> dict[str, Any]:
    """`--open-loop`: that phase alone, on both storages (before / after comparisons)."""
    found = on_both_storages(
        lambda kind, workdir, created: {
            "open_loop": open_loop(kind, workdir, created, seconds=seconds)
        }
    )
    found["goals"] = open_loop_goals(found)
    return found


def launch_only(samples: int, runs: int) -> dict[str, Any]:
    """`--launch`: submit → first node running and run throughput alone, on both storages
    (before / after comparisons of goals 4 and 5)."""

    def phase(kind: str, workdir: Path, created: list[str]) -> dict[str, Any]:
        with launch_stack(kind, workdir, created) as (stack, settings, client):
            return {
                "submit_to_node_running": submit_to_running(stack, settings, client, samples),
                "run_throughput": run_throughput(stack, settings, runs),
            }

    found = on_both_storages(phase)
    found["goals"] = launch_goals(found)
    return found


def main(
    seconds: float = 8,
    clients: int = 16,
    samples: int = 10,
    launch_grace: float = 15,
    open_seconds: float = 10,
    throughput_runs: int = THROUGHPUT_RUNS,
) -> dict[str, Any]:
    found = on_both_storages(
        lambda kind, workdir, created: run_backend(
            kind,
            workdir,
            created,
            seconds=seconds,
            clients=clients,
            samples=samples,
            launch_grace=launch_grace,
            open_seconds=open_seconds,
            throughput_runs=throughput_runs,
        )
    )
    found["postgres_over_sqlite_per_second"] = {
        phase: round(
            found["postgres"][phase]["per_second"] / found["sqlite"][phase]["per_second"], 2
        )
        for phase in ("launch_excluded", "launch_included")
        if found["sqlite"][phase]["per_second"]
    }
    found["goals"] = {**open_loop_goals(found), **launch_goals(found)}
    found["shape"] = {
        "api_workers": API_WORKERS,
        "seconds": seconds,
        "clients": clients,
        "samples": samples,
        "launch_grace_s": launch_grace,
        "open_loop": {
            "seconds": open_seconds,
            "post_per_second": OPEN_LOOP_RATE,
            "get_per_second": OPEN_LOOP_GET_RATE,
            "connections": OPEN_LOOP_CONNECTIONS,
            "reads": OPEN_LOOP_READS,
        },
    }
    return found


def run(quick: bool = False) -> dict[str, Any]:
    """The `api` section: full or smoke-sized (`quick`; the open loop keeps its rate, shorter)."""
    if quick:
        return main(
            seconds=3, clients=8, samples=3, launch_grace=5, open_seconds=4, throughput_runs=12
        )
    return main()


if __name__ == "__main__":
    if "--load-generator" in sys.argv:
        load_generator()
    elif "--launch" in sys.argv:
        quick = "--quick" in sys.argv
        print(
            json.dumps(launch_only(3 if quick else 10, 12 if quick else THROUGHPUT_RUNS), indent=2)
        )
    elif "--open-loop" in sys.argv:
        print(json.dumps(open_loop_only(4 if "--quick" in sys.argv else 10), indent=2))
    else:
        print(json.dumps(run("--quick" in sys.argv), indent=2))
