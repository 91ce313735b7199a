"""Workflow analytics at scale (`analytics` section): `GET /workflows/{id}/analytics` over
1,000,000 stored executions, on SQLite and on PostgreSQL.

The history is generated straight into the platform database (`seed`), as the platform
records it when executions settle (control/executions.py `record_facts`): 1,000,000
executions of 20 workflows of one user over the last 90 days, the workflows' shares skewed
(Zipf, s = 1: the busiest holds 28 %, ~3,100 executions a day; the median one ~ 5 %). Statuses:
85 % succeeded, 8 % failed, 3 % cancelled, 2.5 % waiting, 1.5 % paused, with durations drawn
log-normally (median 2 s); the last 10 minutes' executions are still running or queued, so
their node numbers are not rolled up and analytics read their node attempts. Every failed
execution has a node that failed (some after retries), 4 % of succeeded ones a node that was
retried, 2 % one whose error was handled: one `execution_node_stats` row each, and the node
attempts behind them.

The API is built in this process (`create_app`, Dagster unreachable: analytics do not read it)
and asked through FastAPI's test client for the busiest workflow and the median one, ranges of
1 day and 30 days ending now, `queries` times each (p50 / p99, and the CPU time of this
process: on SQLite what a request costs, whatever else the machine does). The answer is also checked
against a count of the seeded rows (every execution counted). Goal: ≤ 200 ms.

`python -m bench.analytics [--quick]` prints the result as JSON.
"""

import csv
import io
import json
import math
import os
import random
import statistics
import sys
import tempfile
import time
import uuid
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from fastapi.testclient import TestClient

from bench.common import drop_pg, percentile, pg_database
from flowmaestro_api.main import create_app
from flowmaestro_api.security import create_api_key, ensure_user
from flowmaestro_api.settings import ApiSettings
from flowmaestro_dagster.store.db import dispose_engines, get_engine, migrate, session_scope
from flowmaestro_dagster.store.models import Workflow

UNREACHABLE = "http://127.0.0.1:9/graphql"
GOAL_MS = 200.0
WORKFLOWS = 20
HISTORY_DAYS = 90
UNDER_WAY_SECONDS = 600  # executions created this recently are running or queued
NODES = 6
STATUSES: tuple[tuple[str, float], ...] = (
    ("succeeded", 0.85),
    ("failed", 0.08),
    ("cancelled", 0.03),
    ("waiting", 0.025),
    ("paused", 0.015),
)
TERMINAL = ("succeeded", "failed", "cancelled")
RANGES = {"1d": 1, "30d": 30}
CHUNK = 20_000

EXECUTION_COLUMNS = (
    "id",
    "workflow_id",
    "version",
    "user_id",
    "status",
    "priority",
    "inputs",
    "job_name",
    "location_name",
    "run_id",
    "launch_attempts",
    "created_at",
    "finished_at",
    "duration_ms",
    "replays",
    "facts_recorded_at",
)
STATS_COLUMNS = (
    "execution_id",
    "node_id",
    "workflow_id",
    "created_at",
    "errors",
    "failures",
    "retries",
)
ATTEMPT_COLUMNS = (
    "id",
    "execution_id",
    "node_id",
    "iteration",
    "run_id",
    "step_key",
    "attempt",
    "status",
    "started_at",
    "finished_at",
    "output_truncated",
    "logs",
    "logs_dropped",
)


def _stamp(moment: datetime) -> str:
    """How the platform stores a UTC time on SQLite (SQLAlchemy's text); PostgreSQL's COPY
    reads it in the session's time zone, set to UTC."""
    return moment.strftime("%Y-%m-%d %H:%M:%S.%f")


def _uuid(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def _failing_node(rng: random.Random, status: str) -> tuple[int, int, int] | None:
    """(errors, failures, retries) of the one node with an error, or None."""
    if status == "failed":
        retries = rng.choice((0, 0, 1, 2))
        return retries + 1, 1, retries
    draw = rng.random()
    if status == "succeeded" and draw < 0.04:
        retries = rng.choice((1, 1, 2))
        return retries, 0, retries
    if status == "succeeded" and draw < 0.06:
        return 1, 0, 0  # handled by onError
    return None


def _attempt_statuses(numbers: tuple[int, int, int]) -> list[str]:
    """The node attempts behind one node's numbers: retries, then a final failure or handled."""
    errors, failures, retries = numbers
    last = "failed" if failures else "handled"
    return ["retrying" if n < retries else last for n in range(errors)]


def generate(
    executions: int, workflow_ids: Sequence[str], user_id: str, now: datetime, seed: int = 20
) -> Iterator[tuple[str, list[tuple[Any, ...]]]]:
    """(table, rows) batches of the history, oldest executions first (deterministic)."""
    rng = random.Random(seed)
    weights = [1 / (k + 1) for k in range(len(workflow_ids))]
    names, shares = [n for n, _ in STATUSES], [w for _, w in STATUSES]
    span = HISTORY_DAYS * 86400.0
    offsets = sorted((rng.random() * span for _ in range(executions)), reverse=True)
    rows: list[tuple[Any, ...]] = []
    stats: list[tuple[Any, ...]] = []
    attempts: list[tuple[Any, ...]] = []
    for i, offset in enumerate(offsets):
        created = now - timedelta(seconds=offset)
        workflow = rng.choices(range(len(workflow_ids)), weights)[0]
        under_way = offset < UNDER_WAY_SECONDS
        status = rng.choice(("running", "queued")) if under_way else rng.choices(names, shares)[0]
        execution_id, run_id = _uuid(rng), _uuid(rng)
        duration = round(rng.lognormvariate(math.log(2000), 1.0), 3)
        finished = status in TERMINAL
        numbers = _failing_node(rng, "failed" if status == "running" else status)
        node = f"node_{rng.randrange(NODES)}"
        rows.append(
            (
                execution_id,
                workflow_ids[workflow],
                1,
                user_id,
                status,
                0,
                "{}",
                f"bench_analytics_{workflow}",
                "flowmaestro-workflows-0",
                None if status == "queued" else run_id,
                0 if status == "queued" else 1,
                _stamp(created),
                _stamp(created + timedelta(milliseconds=duration)) if finished else None,
                duration if finished else None,
                1 if rng.random() < 0.01 else 0,
                None if under_way else _stamp(created + timedelta(milliseconds=duration)),
            )
        )
        if numbers is not None and status != "queued":
            if not under_way:
                stats.append(
                    (execution_id, node, workflow_ids[workflow], _stamp(created), *numbers)
                )
            for n, outcome in enumerate(_attempt_statuses(numbers), start=1):
                stamp = _stamp(created + timedelta(seconds=n))
                row = (_uuid(rng), execution_id, node, "", run_id, node, n, outcome, stamp)
                attempts.append((*row, stamp, False, "[]", 0))
        if len(rows) >= CHUNK or i == executions - 1:
            yield "executions", rows
            yield "execution_node_stats", stats
            yield "node_attempts", attempts
            rows, stats, attempts = [], [], []


def _copy(connection: Any, table: str, columns: Sequence[str], rows: list[tuple[Any, ...]]) -> None:
    """PostgreSQL: COPY the rows in as CSV (`\\N`: NULL)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    for row in rows:
        writer.writerow(
            ["\\N" if v is None else str(v).lower() if isinstance(v, bool) else v for v in row]
        )
    buffer.seek(0)
    with connection.cursor() as cursor:
        cursor.copy_expert(
            f"COPY {table} ({', '.join(columns)}) FROM STDIN WITH (FORMAT csv, NULL '\\N')",
            buffer,
        )


def seed(url: str, executions: int, now: datetime) -> tuple[dict[str, str], list[str]]:
    """A user with an API key, WORKFLOWS workflows, and the generated history; the user's
    Authorization header and the workflow ids, busiest first."""
    with session_scope(get_engine(url)) as session:
        user = ensure_user(session, email="analytics-bench@example.com")
        key = create_api_key(session, user=user)
        workflows = [
            Workflow(owner_id=user.id, name=f"Bench analytics {k}", latest_version=1)
            for k in range(WORKFLOWS)
        ]
        session.add_all(workflows)
        session.flush()
        workflow_ids, user_id = [w.id for w in workflows], user.id
    columns = {
        "executions": EXECUTION_COLUMNS,
        "execution_node_stats": STATS_COLUMNS,
        "node_attempts": ATTEMPT_COLUMNS,
    }
    engine = get_engine(url)
    raw = engine.raw_connection()
    try:
        cursor = raw.cursor()
        if engine.dialect.name == "sqlite":
            cursor.execute("PRAGMA cache_size=-400000")  # 400 MB: index inserts stay in memory
        else:
            cursor.execute("SET TIME ZONE 'UTC'")  # the stamps are UTC
        for table, rows in generate(executions, workflow_ids, user_id, now):
            if not rows:
                continue
            if engine.dialect.name == "postgresql":
                _copy(raw, table, columns[table], rows)
            else:
                marks = ", ".join("?" for _ in columns[table])
                cursor.executemany(
                    f"INSERT INTO {table} ({', '.join(columns[table])}) VALUES ({marks})", rows
                )
            raw.commit()
    finally:
        raw.close()
    if engine.dialect.name == "postgresql":
        # What autovacuum does after a bulk load: statistics, and the visibility map that lets
        # the analytics queries read the index alone. SQLite gets no ANALYZE (nothing runs it
        # in production): its plans must hold without statistics.
        vacuum = sa.create_engine(url, isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool)
        with vacuum.connect() as connection:
            connection.exec_driver_sql("VACUUM ANALYZE")
        vacuum.dispose()
    return {"Authorization": f"Bearer {key}"}, workflow_ids


@contextmanager
def platform(backend: str, workdir: Path) -> Iterator[str]:
    """A migrated, empty platform database."""
    if backend == "sqlite":
        url, name = f"sqlite:///{workdir / 'platform.db'}", None
    else:
        name, url = pg_database()
    try:
        migrate(url)
        yield url
    finally:
        dispose_engines()
        if name is not None:
            drop_pg(name)


def stored(url: str, workflow_id: str, start: datetime, end: datetime) -> tuple[int, int]:
    """The seeded executions of the range and their node errors, counted directly: the rows
    settled executions rolled up and the failed attempts of those under way (the answer must
    equal both)."""
    stamp = sa.DateTime(timezone=True)
    within = "workflow_id = :w AND created_at >= :s AND created_at < :e"
    params = {"w": workflow_id, "s": start, "e": end}
    with session_scope(get_engine(url)) as session:

        def count(sql: str) -> int:
            statement = sa.text(sql).bindparams(
                sa.bindparam("s", type_=stamp), sa.bindparam("e", type_=stamp)
            )
            return int(session.scalar(statement, params) or 0)

        executions = count(f"SELECT COUNT(*) FROM executions WHERE {within}")
        errors = count(f"SELECT SUM(errors) FROM execution_node_stats WHERE {within}")
        errors += count(
            "SELECT COUNT(*) FROM node_attempts a JOIN executions e ON e.id = a.execution_id"
            " WHERE e.workflow_id = :w AND e.created_at >= :s AND e.created_at < :e"
            " AND e.facts_recorded_at IS NULL AND a.status IN ('retrying', 'failed', 'handled')"
        )
    return executions, errors


def ask(
    http: TestClient, auth: dict[str, str], workflow_id: str, start: datetime, end: datetime
) -> tuple[float, float, dict[str, Any]]:
    """One request: its wall time, this process's CPU time meanwhile (the API and SQLite run
    here; PostgreSQL's own work does not), and the answer."""
    params = {"from": start.isoformat(), "to": end.isoformat()}
    began, cpu = time.perf_counter(), time.process_time()
    response = http.get(f"/workflows/{workflow_id}/analytics", params=params, headers=auth)
    seconds, cpu_seconds = time.perf_counter() - began, time.process_time() - cpu
    if response.status_code != 200:
        raise RuntimeError(f"analytics answered {response.status_code}: {response.text[:300]}")
    body: dict[str, Any] = response.json()
    return seconds, cpu_seconds, body


def measure(backend: str, executions: int, queries: int, workdir: Path) -> dict[str, Any]:
    """Seed one backend, then ask for the busiest and the median workflow over each range."""
    now = datetime.now(UTC).replace(microsecond=0)
    with platform(backend, workdir) as url:
        began = time.perf_counter()
        auth, workflow_ids = seed(url, executions, now)
        seed_s = time.perf_counter() - began
        print(
            f"[analytics] {backend}: seeded {executions:,} executions in {seed_s:.0f} s", flush=True
        )
        settings = ApiSettings(_env_file=None, database_url=url, dagster_graphql_url=UNREACHABLE)
        end = now + timedelta(seconds=1)
        history = end - timedelta(days=HISTORY_DAYS + 1)
        cases: dict[str, Any] = {}
        workflows = {"busiest": workflow_ids[0], "median": workflow_ids[len(workflow_ids) // 2]}
        with TestClient(create_app(settings)) as http:
            for which, workflow_id in workflows.items():
                for label, days in RANGES.items():
                    start = end - timedelta(days=days)
                    expected, errors = stored(url, workflow_id, start, end)
                    ask(http, auth, workflow_id, start, end)  # the first: caches warm
                    times: list[float] = []
                    cpu: list[float] = []
                    body: dict[str, Any] = {}
                    for _ in range(queries):
                        seconds, cpu_seconds, body = ask(http, auth, workflow_id, start, end)
                        times.append(seconds * 1000)
                        cpu.append(cpu_seconds * 1000)
                    case = cases[f"{which}_{label}"] = {
                        "workflow": which,
                        "range_days": days,
                        "workflow_executions": stored(url, workflow_id, history, end)[0],
                        "range_executions": body["executions"],
                        "all_counted": body["executions"] == expected
                        and body["errors"] == errors
                        and sum(d["executions"] for d in body["by_day"]) == expected,
                        "nodes": len(body["nodes"]),
                        "samples": len(times),
                        "p50_ms": round(statistics.median(times), 1),
                        "p99_ms": round(percentile(times, 0.99), 1),
                        "max_ms": round(max(times), 1),
                        "cpu_p50_ms": round(statistics.median(cpu), 1),
                    }
                    print(
                        f"[analytics] {backend} {which} {label}: {body['executions']:,} in range,"
                        f" p50 {case['p50_ms']} ms, p99 {case['p99_ms']} ms",
                        flush=True,
                    )
    return {"executions": executions, "seed_s": round(seed_s, 1), "cases": cases}


def main(executions: int = 1_000_000, queries: int = 100) -> dict[str, Any]:
    warnings.filterwarnings("ignore")
    load_before = os.getloadavg()
    found: dict[str, Any] = {}
    for backend in ("sqlite", "postgres"):
        with tempfile.TemporaryDirectory() as tmp:
            found[backend] = measure(backend, executions, queries, Path(tmp))
    cases = [case for backend in found.values() for case in backend["cases"].values()]
    worst = max(case["p99_ms"] for case in cases)
    counted = all(case["all_counted"] for case in cases)
    return {
        "backends": found,
        "shape": {"workflows": WORKFLOWS, "history_days": HISTORY_DAYS, "queries": queries},
        "load": {"before": list(load_before), "after": list(os.getloadavg())},
        "goals": {
            "p99_ms_max": GOAL_MS,
            "worst_p99_ms": worst,
            "all_counted": counted,
            "met": worst <= GOAL_MS and counted,
        },
    }


def run(quick: bool = False) -> dict[str, Any]:
    """The `analytics` section: 1,000,000 executions (`quick`: 50,000, a smoke run)."""
    return main(executions=50_000, queries=10) if quick else main()


if __name__ == "__main__":
    print(json.dumps(run("--quick" in sys.argv), indent=2))
