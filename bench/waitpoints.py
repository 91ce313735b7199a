"""Waitpoint benchmark (`waitpoints` section): approval → resumed run's first node started,
due time → resumed, on a real Dagster (`dagster dev`, the waitpoint sensor every second); and
the sensor's tick with 10,000 parked executions, none due, on SQLite and PostgreSQL.

`python -m bench.waitpoints [--quick]` prints the result as JSON.
"""

import json
import statistics
import sys
import tempfile
import time
import uuid
import warnings
from datetime import timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from dagster import DagsterInstance
from fastapi.testclient import TestClient

from bench.common import (
    deploy,
    drop_pg,
    first_step_start,
    percentile,
    pg_database,
    submit,
    user_key,
    wait_until,
)
from flowmaestro_api.main import create_app
from flowmaestro_api.settings import ApiSettings
from flowmaestro_dagster.control.client import DagsterClient
from flowmaestro_dagster.control.waitpoints import tick
from flowmaestro_dagster.store.db import get_engine, migrate, session_scope
from flowmaestro_dagster.store.models import (
    Execution,
    User,
    Waitpoint,
    Workflow,
    WorkflowVersion,
    utcnow,
)
from flowmaestro_dagster.testing.stack import INSTANCE_YAML, DagsterStack

SECRET = "bench-secret-key-0123456789"
STEP_TIMEOUT_S = 180
APPROVAL = {
    "name": "Bench approval",
    "nodes": [
        {"id": "in", "type": "input", "data": {"inputName": "who"}},
        {
            "id": "ask",
            "type": "humanReview",
            "data": {"reviewPrompt": "ok {{who}}?", "outputVariable": "a"},
        },
        {"id": "out", "type": "output", "data": {"outputName": "r", "value": "{{a.decision}}"}},
    ],
    "edges": [
        {"id": "e1", "source": "in", "target": "ask"},
        {"id": "e2", "source": "ask", "target": "out"},
    ],
}
TIMER = {
    "name": "Bench timer",
    "nodes": {
        "in": {"type": "input", "config": {"inputName": "who"}},
        "pause": {"type": "wait", "config": {"durationValue": 3, "durationUnit": "seconds"}},
        "out": {"type": "output", "config": {"outputName": "r", "value": "{{who}}"}},
    },
    "edges": [
        {"id": "e1", "source": "in", "target": "pause"},
        {"id": "e2", "source": "pause", "target": "out"},
    ],
}


def resume_latency(workdir: Path, samples: int) -> dict[str, Any]:
    url = f"sqlite:///{workdir / 'resume.db'}"
    migrate(url)
    env = {
        "FLOWMAESTRO_SECRET_KEY": SECRET,
        "FLOWMAESTRO_WAIT_SLEEP_THRESHOLD_SECONDS": "0.5",
        "FLOWMAESTRO_WAITPOINT_INTERVAL_SECONDS": "1",
    }
    stack = DagsterStack(workdir / "home", url, extra_env=env)
    stack.start()
    try:
        instance = stack.instance()
        settings = ApiSettings(
            database_url=url,
            dagster_graphql_url=stack.graphql_url,
            secret_key=SECRET,
            wait_sleep_threshold_seconds=0.5,
        )
        client = DagsterClient(stack.graphql_url, instance=instance)
        app = create_app(settings, dagster=client)
        auth = user_key(url)
        approval_delays: list[float] = []
        due_delays: list[float] = []
        with TestClient(app) as http:
            approval_id = deploy(http, auth, APPROVAL)
            timer_id = deploy(http, auth, TIMER)
            for _ in range(samples):
                execution_id = submit(http, auth, approval_id, {"who": "b"})
                waitpoint = wait_until(
                    lambda eid=execution_id: _approval_of(http, auth, eid), STEP_TIMEOUT_S
                )
                decided = time.time()
                http.post(
                    f"/approvals/{waitpoint}/decision", json={"decision": "approve"}, headers=auth
                )
                started = wait_until(
                    lambda eid=execution_id: _resumed_start(client, instance, eid), STEP_TIMEOUT_S
                )
                approval_delays.append(started - decided)
            for _ in range(max(3, samples // 2)):
                execution_id = submit(http, auth, timer_id, {"who": "b"})
                due = wait_until(lambda eid=execution_id: _due_at(url, eid), STEP_TIMEOUT_S)
                started = wait_until(
                    lambda eid=execution_id: _resumed_start(client, instance, eid), STEP_TIMEOUT_S
                )
                due_delays.append(started - due)
    finally:
        stack.stop()
    return {
        "approval_to_resumed_step": _summary(approval_delays),
        "due_to_resumed_step": _summary(due_delays),
    }


def _summary(values: list[float]) -> dict[str, Any]:
    return {
        "samples": len(values),
        "p50_s": round(statistics.median(values), 2),
        "p95_s": round(percentile(values, 0.95), 2),
        "min_s": round(min(values), 2),
        "max_s": round(max(values), 2),
    }


def _approval_of(http: TestClient, auth: dict[str, str], execution_id: str) -> str | None:
    items = http.get("/approvals", headers=auth).json()["items"]
    return next((a["id"] for a in items if a["execution_id"] == execution_id), None)


def _due_at(url: str, execution_id: str) -> float | None:
    with session_scope(get_engine(url)) as session:
        row = session.scalar(sa.select(Waitpoint).where(Waitpoint.execution_id == execution_id))
        return row.due_at.timestamp() if row is not None and row.due_at is not None else None


def _resumed_start(
    client: DagsterClient, instance: DagsterInstance, execution_id: str
) -> float | None:
    runs = client.runs_for_execution(execution_id)
    if len(runs) < 2:
        return None
    return first_step_start(instance, runs[-1].run_id)


def parked_tick(url: str, parked: int = 10_000) -> dict[str, Any]:
    """The sensor's tick with `parked` waiting executions, none of them due."""
    migrate(url)
    engine = get_engine(url)
    with session_scope(engine) as session:
        user = User(email=f"bench-{uuid.uuid4().hex[:6]}@example.com")
        session.add(user)
        session.flush()
        workflow = Workflow(owner_id=user.id, name="parked", latest_version=1, deployed_version=1)
        session.add(workflow)
        session.flush()
        session.add(
            WorkflowVersion(
                workflow_id=workflow.id,
                version=1,
                definition=APPROVAL,
                status="deployed",
                job_name="parked_v1",
                created_by=user.id,
            )
        )
        now = utcnow()
        executions: list[dict[str, Any]] = []
        waitpoints: list[dict[str, Any]] = []
        for i in range(parked):
            execution_id = str(uuid.uuid4())
            executions.append(
                {
                    "id": execution_id,
                    "workflow_id": workflow.id,
                    "version": 1,
                    "user_id": user.id,
                    "status": "waiting",
                    "priority": 0,
                    "inputs": {},
                    "job_name": "parked_v1",
                    "location_name": "x",
                    "launch_attempts": 0,
                    "created_at": now,
                }
            )
            kind = "approval" if i % 2 else "datetime"
            waitpoints.append(
                {
                    "id": str(uuid.uuid4()),
                    "execution_id": execution_id,
                    "node_id": "ask",
                    "iteration": "",
                    "step_key": "ask",
                    "run_id": str(uuid.uuid4()),
                    "kind": kind,
                    "status": "pending",
                    "due_at": now + timedelta(days=1) if kind == "datetime" else None,
                    "expires_at": now + timedelta(days=7),
                    "spec": {},
                    "created_at": now,
                }
            )
        session.execute(sa.insert(Execution), executions)
        session.execute(sa.insert(Waitpoint), waitpoints)
    with tempfile.TemporaryDirectory() as home:
        (Path(home) / "dagster.yaml").write_text(INSTANCE_YAML)
        instance = DagsterInstance.from_config(home)
        client = DagsterClient("http://127.0.0.1:9/graphql", timeout=1, instance=instance)
        times = []
        for _ in range(5):
            with session_scope(engine) as session:
                start = time.perf_counter()
                counts = tick(session, client)
                times.append(time.perf_counter() - start)
        instance.dispose()
    return {
        "parked": parked,
        "ticks": len(times),
        "tick_median_s": round(statistics.median(times), 3),
        "tick_min_s": round(min(times), 3),
        "tick_max_s": round(max(times), 3),
        "last_tick": counts,
    }


def main(samples: int = 8) -> dict[str, Any]:
    warnings.filterwarnings("ignore")
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        results["sqlite_tick"] = parked_tick(f"sqlite:///{workdir / 'parked.db'}")
        name, pg_url = pg_database()
        try:
            results["postgres_tick"] = parked_tick(pg_url)
        finally:
            drop_pg(name)
        results["resume"] = resume_latency(workdir, samples)
    approval = results["resume"]["approval_to_resumed_step"]["p50_s"]
    worst_tick = max(results[k]["tick_median_s"] for k in ("sqlite_tick", "postgres_tick"))
    results["goals"] = {
        **GOALS,
        "approval_met": approval <= GOALS["approval_p50_s_max"],
        "tick_met": worst_tick <= GOALS["tick_s_max"],
    }
    results["samples"] = samples
    return results


GOALS = {"approval_p50_s_max": 6.0, "tick_s_max": 1.0}


def run(quick: bool = False) -> dict[str, Any]:
    """The `waitpoints` section: full or smoke-sized (`quick`; still 10,000 parked)."""
    return main(samples=3 if quick else 8)


if __name__ == "__main__":
    print(json.dumps(run("--quick" in sys.argv), indent=2))
