"""What the benchmark sections share: statistics, waiting, platform databases and users, and
workflows deployed and started through the API."""

import contextlib
import os
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from dagster import DagsterEventType, DagsterInstance
from fastapi.testclient import TestClient

from flowmaestro_api.security import create_api_key, ensure_user
from flowmaestro_api.settings import ApiSettings
from flowmaestro_dagster.store.db import dispose_engines, get_engine, session_scope
from flowmaestro_dagster.testing.stack import DagsterStack

PG_ADMIN = "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def wait_until(
    predicate: Callable[..., Any],
    timeout: float,
    interval: float = 0.1,
    error: type[Exception] = TimeoutError,
) -> Any:
    """The first truthy value of `predicate`, polled every `interval` s; `error` after
    `timeout` s (the tests' `wait_for` raises AssertionError)."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise error(f"condition not met in {timeout} s (last: {last!r})")


# -- databases and users -------------------------------------------------------------------------


def _pg_admin() -> sa.Engine:
    return sa.create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool)


def pg_database() -> tuple[str, str]:
    """A new, empty PostgreSQL database: (name, URL)."""
    name = f"fm_bench_{uuid.uuid4().hex[:8]}"
    with _pg_admin().connect() as connection:
        connection.execute(sa.text(f"CREATE DATABASE {name}"))
    return name, PG_ADMIN.rsplit("/", 1)[0] + f"/{name}"


def drop_pg(name: str) -> None:
    dispose_engines()
    with _pg_admin().connect() as connection:
        connection.execute(sa.text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))


def user_key(url: str) -> dict[str, str]:
    """The Authorization header of a new user of the platform database at `url`."""
    with session_scope(get_engine(url)) as session:
        user = ensure_user(session, email=f"bench-{uuid.uuid4().hex[:6]}@example.com")
        key = create_api_key(session, user=user)
    return {"Authorization": f"Bearer {key}"}


# -- the API on a Dagster stack ------------------------------------------------------------------


def stack_settings(url: str, stack: DagsterStack, **values: Any) -> ApiSettings:
    """The API's settings on `stack` and the platform database `url` (no .env file read)."""
    return ApiSettings(
        _env_file=None,
        database_url=url,
        dagster_graphql_url=stack.graphql_url,
        dagster_ui_url=stack.ui_url,
        **values,
    )


def deploy(
    http: TestClient, auth: dict[str, str], definition: dict[str, Any], **settings: Any
) -> str:
    """Create a workflow (with `settings`, if any) and deploy it; its id once it is runnable."""
    body: dict[str, Any] = {"definition": definition}
    if settings:
        body["settings"] = settings
    workflow_id: str = http.post("/workflows", json=body, headers=auth).json()["id"]
    deployed = http.post(f"/workflows/{workflow_id}/versions/1/deploy", headers=auth).json()
    if not deployed.get("runnable"):
        raise RuntimeError(f"deploy failed: {deployed}")
    return workflow_id


def submit(
    http: TestClient, auth: dict[str, str], workflow_id: str, inputs: dict[str, Any], **body: Any
) -> str:
    """Start an execution; its id."""
    response = http.post(
        f"/workflows/{workflow_id}/executions", json={"inputs": inputs, **body}, headers=auth
    )
    if response.status_code != 201:
        raise RuntimeError(f"submission refused: {response.text}")
    execution_id: str = response.json()["id"]
    return execution_id


def first_step_start(instance: DagsterInstance, run_id: str) -> float | None:
    """When the run's first step started (None before any did)."""
    starts = [
        r.event_log_entry.timestamp
        for r in instance.get_records_for_run(run_id).records
        if r.event_log_entry.dagster_event
        and r.event_log_entry.dagster_event.event_type == DagsterEventType.STEP_START
    ]
    return min(starts) if starts else None


def echo_flow(name: str, output: str, value: str) -> dict[str, Any]:
    """The smallest workflow: input `who` → output `output` = `value` (backend shape)."""
    return {
        "name": name,
        "nodes": {
            "in": {"type": "input", "config": {"inputName": "who"}},
            "out": {"type": "output", "config": {"outputName": output, "value": value}},
        },
        "edges": [{"id": "e", "source": "in", "target": "out"}],
    }


# -- CPU time of other processes -----------------------------------------------------------------


def _stat_fields(pid: int) -> list[str]:
    """/proc/<pid>/stat from the field after the command name (which may hold spaces)."""
    text = Path(f"/proc/{pid}/stat").read_text()
    return text[text.rindex(")") + 2 :].split()


def process_tree(pid: int) -> set[int]:
    """Process `pid` and its living descendants (Linux /proc)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, ValueError, IndexError):
                parents[int(entry.name)] = int(_stat_fields(int(entry.name))[1])
    tree, grown = {pid}, True
    while grown:
        more = {child for child, parent in parents.items() if parent in tree} - tree
        tree |= more
        grown = bool(more)
    return tree


def started_at_ticks(pid: int) -> int | None:
    """When process `pid` started (clock ticks after boot): tells it from a later process that
    reuses its id. None: no such process."""
    try:
        return int(_stat_fields(pid)[19])
    except (OSError, ValueError, IndexError):
        return None


def tree_cpu_seconds(pid: int, *, reaped: bool = False) -> float:
    """User + system CPU seconds of process `pid` and its living descendants: what an API's
    uvicorn supervisor and workers spent, on a machine where wall times are noisy. `reaped`:
    also what their children that have exited and been waited for spent (a forkserver's run
    workers, PostgreSQL's backends): compare two readings, the difference is the work done."""
    ticks = 0
    last = 15 if reaped else 13  # utime, stime (, cutime, cstime)
    for member in process_tree(pid):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = _stat_fields(member)
            ticks += sum(int(value) for value in fields[11:last])
    return ticks / os.sysconf("SC_CLK_TCK")


def postgres_server_pid() -> int:
    """The PostgreSQL server's main process (its data directory's postmaster.pid)."""
    engine = sa.create_engine(PG_ADMIN, poolclass=sa.pool.NullPool)
    with engine.connect() as connection:
        data = connection.execute(sa.text("SHOW data_directory")).scalar_one()
    return int((Path(data) / "postmaster.pid").read_text().split()[0])
