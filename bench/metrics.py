"""Metrics scrape benchmark (`metrics` section): `GET /metrics` (flowmaestro_api/services/
metrics.py) at 10,000 executions, on SQLite and on PostgreSQL.

The history is seeded directly in the databases, not run: 10,000 executions over 20 workflows
and 10 users in a realistic mix of statuses (70 % succeeded, 10 % failed, 5 % each cancelled,
queued, running, waiting), 5 node attempts each (1 in 20 failed, retried or handled with an
error class), a waitpoint for each waiting execution (approvals, timers, callbacks), and a
decided approval for 1 in 10 succeeded ones; and in Dagster's storage one run per launched
execution, with the platform's tags, in the status its execution has (NOT_STARTED for queued:
a QUEUED run needs a code location). Dagster's storage is where the platform keeps it: SQLite
under a temporary DAGSTER_HOME, or the platform's PostgreSQL database (`dagster` schema).

The API is built in this process (`create_app`, its Dagster client opening the instance of
DAGSTER_HOME as in production) and scraped through FastAPI's test client, one scrape at a time:

* cold: the first scrapes after the API starts. The node duration histogram reads every
  finished run it has not seen yet (at most 2,000 a scrape), so a new API process catches up
  over the first few scrapes; their count and times are reported;
* warm: then `scrapes` scrapes, p50/p99 — what Prometheus sees every scrape interval.

`python -m bench.metrics [--quick]` prints the result as JSON.
"""

import json
import os
import random
import statistics
import sys
import tempfile
import time
import uuid
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from dagster import DagsterInstance, DagsterRun, DagsterRunStatus
from fastapi.testclient import TestClient

from bench.common import drop_pg, percentile, pg_database
from flowmaestro_api.main import create_app
from flowmaestro_api.settings import ApiSettings
from flowmaestro_dagster.orchestration.instance_config import (
    prepare_storage,
    render_instance_yaml,
)
from flowmaestro_dagster.store.db import dispose_engines, get_engine, migrate, session_scope
from flowmaestro_dagster.store.models import (
    Decision,
    Execution,
    NodeAttempt,
    User,
    Waitpoint,
    Workflow,
    utcnow,
)
from flowmaestro_dagster.tags import (
    EXECUTION_TAG,
    USER_TAG,
    WORKFLOW_ID_TAG,
    WORKFLOW_NAME_TAG,
)

UNREACHABLE = "http://127.0.0.1:9/graphql"  # /metrics reads storage, never GraphQL
WORKFLOWS = 20
USERS = 10
ATTEMPTS = 5  # node attempts per execution
STATUSES = (
    ("succeeded", 0.70),
    ("failed", 0.10),
    ("cancelled", 0.05),
    ("queued", 0.05),
    ("running", 0.05),
    ("waiting", 0.05),
)
RUN_STATUS = {
    "succeeded": DagsterRunStatus.SUCCESS,
    "failed": DagsterRunStatus.FAILURE,
    "cancelled": DagsterRunStatus.CANCELED,
    "queued": DagsterRunStatus.NOT_STARTED,
    "running": DagsterRunStatus.STARTED,
    "waiting": DagsterRunStatus.SUCCESS,  # a parked run ends green
}
ERRORS = ("HttpError", "TimeoutError", "ExpressionError", "ConnectorError")
CHUNK = 2000
HISTOGRAM_RUNS_PER_SCRAPE = 2000  # NodeDurationHistogram: 4 batches of 500
# On Dagster's SQLite storage each run's event log is a file of its own, created when first
# read: the histogram's catch-up over seeded runs (which have none) costs ~0.25 s a run here
# (~40 min for 10,000), a cost of seeding, not of scraping. So on SQLite the seeded runs lack
# the workflow-name tag and the histogram skips them; warm scrapes run the same queries.
SQLITE_UNNAMED = True


def _chunks(rows: list[dict[str, Any]]) -> Iterator[list[dict[str, Any]]]:
    for start in range(0, len(rows), CHUNK):
        yield rows[start : start + CHUNK]


def seed_platform(url: str, executions: int, rng: random.Random) -> list[dict[str, Any]]:
    """The platform rows; the executions (id, workflow, user, status) for the Dagster runs."""
    now = utcnow()
    users = [{"id": str(uuid.uuid4()), "email": f"bench-{i}@example.com"} for i in range(USERS)]
    workflows = [
        {
            "id": str(uuid.uuid4()),
            "owner_id": users[i % USERS]["id"],
            "name": f"Bench metrics {i}",
            "latest_version": 1,
            "deployed_version": 1,
        }
        for i in range(WORKFLOWS)
    ]
    names, weights = zip(*STATUSES, strict=True)
    rows: list[dict[str, Any]] = []
    attempts: list[dict[str, Any]] = []
    waitpoints: list[dict[str, Any]] = []
    decisions: list[dict[str, Any]] = []
    for i in range(executions):
        workflow = workflows[i % WORKFLOWS]
        status = rng.choices(names, weights)[0]
        created = now - timedelta(seconds=rng.uniform(60, 30 * 86400))
        launched = status != "queued" or rng.random() < 0.5
        finished = status in ("succeeded", "failed", "cancelled")
        execution = {
            "id": str(uuid.uuid4()),
            "workflow_id": workflow["id"],
            "version": 1,
            "user_id": workflow["owner_id"],
            "status": status,
            "priority": rng.choice((0, 0, 0, 5, 10)),
            "queue": rng.choice((None, None, "ai-workflows", "data-processing")),
            "inputs": {"n": i},
            "job_name": f"bench_metrics_{i % WORKFLOWS}",
            "location_name": "flowmaestro-workflows-0",
            "run_id": str(uuid.uuid4()) if launched else None,
            "launched_at": created + timedelta(seconds=1) if launched else None,
            "launch_attempts": 1 if launched else rng.choice((0, 0, 2)),
            "created_at": created,
            "started_at": created + timedelta(seconds=2) if status != "queued" else None,
            "finished_at": created + timedelta(seconds=rng.uniform(3, 600)) if finished else None,
        }
        rows.append(execution)
        if status == "queued":
            continue
        for n in range(ATTEMPTS):
            failing = rng.random() < 0.05
            attempts.append(
                {
                    "id": str(uuid.uuid4()),
                    "execution_id": execution["id"],
                    "node_id": f"n{n}",
                    "iteration": "",
                    "run_id": execution["run_id"],
                    "step_key": f"n{n}",
                    "attempt": 1,
                    "status": rng.choice(("failed", "retrying", "handled"))
                    if failing
                    else "succeeded",
                    "started_at": created,
                    "finished_at": created + timedelta(seconds=1),
                    "error_class": rng.choice(ERRORS) if failing else None,
                    "logs": [],
                    "logs_dropped": 0,
                    "output_truncated": False,
                }
            )
        approval = status == "succeeded" and rng.random() < 0.1
        if status == "waiting" or approval:
            waitpoint_id = str(uuid.uuid4())
            kind = "approval" if approval else rng.choice(("approval", "datetime", "callback"))
            waitpoints.append(
                {
                    "id": waitpoint_id,
                    "execution_id": execution["id"],
                    "node_id": "wait",
                    "iteration": "",
                    "step_key": "wait",
                    "run_id": execution["run_id"],
                    "kind": kind,
                    "status": "resumed" if approval else "pending",
                    "spec": {},
                    "created_at": created + timedelta(seconds=2),
                }
            )
            if approval:
                decisions.append(
                    {
                        "id": str(uuid.uuid4()),
                        "waitpoint_id": waitpoint_id,
                        "via": "api",
                        "decision": "approve",
                        "created_at": created + timedelta(seconds=rng.uniform(5, 86400)),
                    }
                )
    with session_scope(get_engine(url)) as session:
        session.execute(sa.insert(User), users)
        session.execute(sa.insert(Workflow), workflows)
        for model, batch in (
            (Execution, rows),
            (NodeAttempt, attempts),
            (Waitpoint, waitpoints),
            (Decision, decisions),
        ):
            for chunk in _chunks(batch):
                session.execute(sa.insert(model), chunk)
    return rows


def seed_dagster(instance: DagsterInstance, rows: list[dict[str, Any]], *, named: bool) -> int:
    """One run per launched execution, tagged as a launch tags it, in its execution's status.
    `named`: with the workflow-name tag, which makes the node duration histogram read each
    finished run's step stats once (see SQLITE_UNNAMED)."""
    runs = 0
    for row in rows:
        if row["run_id"] is None:
            continue
        tags = {
            EXECUTION_TAG: row["id"],
            WORKFLOW_ID_TAG: row["workflow_id"],
            USER_TAG: row["user_id"],
        }
        if named:
            tags[WORKFLOW_NAME_TAG] = f"Bench metrics {row['job_name'].rsplit('_', 1)[1]}"
        instance.add_run(
            DagsterRun(
                job_name=row["job_name"],
                run_id=row["run_id"],
                status=RUN_STATUS[row["status"]],
                tags=tags,
            )
        )
        runs += 1
    return runs


@contextmanager
def platform(backend: str, workdir: Path) -> Iterator[tuple[str, Path]]:
    """A migrated platform database and a DAGSTER_HOME whose storage sits beside it."""
    home = workdir / f"home-{backend}"
    home.mkdir()
    if backend == "sqlite":
        url = f"sqlite:///{workdir / 'platform.db'}"
        name = None
    else:
        name, url = pg_database()
    try:
        settings = ApiSettings(_env_file=None, database_url=url)
        migrate(url)
        prepare_storage(settings)
        (home / "dagster.yaml").write_text(render_instance_yaml(settings))
        yield url, home
    finally:
        dispose_engines()
        if name is not None:
            drop_pg(name)


def scrape(http: TestClient) -> tuple[float, str]:
    started = time.perf_counter()
    response = http.get("/metrics")
    seconds = time.perf_counter() - started
    if response.status_code != 200:
        raise RuntimeError(f"/metrics answered {response.status_code}: {response.text[:200]}")
    return seconds, response.text


def measure(backend: str, executions: int, scrapes: int, workdir: Path) -> dict[str, Any]:
    rng = random.Random(21)
    with platform(backend, workdir) as (url, home):
        started = time.perf_counter()
        rows = seed_platform(url, executions, rng)
        with DagsterInstance.from_config(str(home)) as instance:
            runs = seed_dagster(instance, rows, named=not (backend == "sqlite" and SQLITE_UNNAMED))
        seed_s = time.perf_counter() - started
        print(f"[metrics] {backend}: seeded {executions} executions, {runs} runs", flush=True)
        os.environ["DAGSTER_HOME"] = str(home)
        settings = ApiSettings(_env_file=None, database_url=url, dagster_graphql_url=UNREACHABLE)
        with TestClient(create_app(settings)) as http:
            # The histogram reads at most HISTOGRAM_RUNS_PER_SCRAPE finished runs a scrape.
            finished = sum(
                1 for r in rows if r["run_id"] and r["status"] not in ("queued", "running")
            )
            cold: list[float] = []
            text = ""
            for _ in range(finished // HISTOGRAM_RUNS_PER_SCRAPE + 1):
                seconds, text = scrape(http)
                cold.append(seconds)
            if "flowmaestro_dagster_up 1.0" not in text:
                raise RuntimeError("/metrics could not read Dagster's storage")
            warm = [scrape(http)[0] for _ in range(scrapes)]
    return {
        "executions": executions,
        "node_attempts": sum(1 for r in rows if r["status"] != "queued") * ATTEMPTS,
        "dagster_runs": runs,
        "histogram_reads_runs": not (backend == "sqlite" and SQLITE_UNNAMED),
        "seed_s": round(seed_s, 1),
        "response_bytes": len(text.encode()),
        "samples": len(warm),
        "cold_scrapes": len(cold),
        "cold_first_ms": round(cold[0] * 1000, 1),
        "cold_total_s": round(sum(cold), 2),
        "p50_ms": round(statistics.median(warm) * 1000, 1),
        "p99_ms": round(percentile(warm, 0.99) * 1000, 1),
        "max_ms": round(max(warm) * 1000, 1),
    }


def main(executions: int = 10_000, scrapes: int = 200) -> dict[str, Any]:
    warnings.filterwarnings("ignore")
    found: dict[str, Any] = {}
    for backend in ("sqlite", "postgres"):
        with tempfile.TemporaryDirectory() as tmp:
            found[backend] = measure(backend, executions, scrapes, Path(tmp))
        print(
            f"[metrics] {backend}: p50 {found[backend]['p50_ms']} ms, "
            f"p99 {found[backend]['p99_ms']} ms",
            flush=True,
        )
    return {"backends": found, "shape": {"workflows": WORKFLOWS, "users": USERS}}


def run(quick: bool = False) -> dict[str, Any]:
    """The `metrics` section: full (10,000 executions) or smoke-sized (`quick`)."""
    return main(executions=1000, scrapes=30) if quick else main()


if __name__ == "__main__":
    print(json.dumps(run("--quick" in sys.argv), indent=2))
