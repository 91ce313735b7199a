"""Shared pieces of the run-queue end-to-end tests (no tests here).

Each test module starts one real Dagster (`dagster dev`: webserver + daemon + code locations)
whose dagster.yaml is rendered by `instance_config` from the settings under test, and reads
what happened from Dagster's run storage and event log (enqueue, dequeue, start, end).
"""

import contextlib
import os
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dagster import DagsterEventType, DagsterInstance, RunsFilter
from fastapi.testclient import TestClient

from flowmaestro_api.main import create_app
from flowmaestro_api.security import create_api_key, ensure_user
from flowmaestro_api.settings import ApiSettings
from flowmaestro_dagster.control.client import DagsterClient
from flowmaestro_dagster.orchestration.instance_config import render_instance_yaml
from flowmaestro_dagster.store.db import get_engine, session_scope
from tests.services import DagsterStack, free_port, migrated_template

TERMINAL = ("succeeded", "failed", "cancelled")


@dataclass
class QueueStack:
    stack: DagsterStack
    settings: ApiSettings
    client: TestClient
    dagster: DagsterClient

    @property
    def instance(self) -> DagsterInstance:
        instance: DagsterInstance = self.dagster.instance
        return instance


@contextlib.contextmanager
def queue_stack(
    workdir: Path, *, extra_env: dict[str, str] | None = None, **queue_settings: Any
) -> Iterator[QueueStack]:
    """A Dagster on a dagster.yaml rendered from `queue_settings`, and the API on it."""
    with migrated_template("sqlite", workdir) as template:
        url = f"sqlite:///{template}"
        rendered = ApiSettings(_env_file=None, **queue_settings)  # type: ignore[call-arg]
        stack = DagsterStack(
            workdir / "home",
            url,
            instance_yaml=render_instance_yaml(rendered),
            extra_env={"FLOWMAESTRO_HTTP__ALLOW_LOOPBACK": "true", **(extra_env or {})},
        )
        stack.start()
        previous_home = os.environ.get("DAGSTER_HOME")
        # The API reads the queue from DAGSTER_HOME's instance (GET /executions/{id}).
        os.environ["DAGSTER_HOME"] = str(stack.home)
        try:
            settings = ApiSettings(
                _env_file=None,  # type: ignore[call-arg]
                database_url=url,
                dagster_graphql_url=stack.graphql_url,
                dagster_ui_url=stack.ui_url,
                reconcile_after_seconds=2,
                **queue_settings,
            )
            dagster = DagsterClient(settings.dagster_graphql_url, instance=stack.instance())
            with TestClient(
                create_app(settings, dagster=dagster), raise_server_exceptions=False
            ) as client:
                yield QueueStack(stack, settings, client, dagster)
        finally:
            if previous_home is None:
                os.environ.pop("DAGSTER_HOME", None)
            else:
                os.environ["DAGSTER_HOME"] = previous_home
            stack.stop()


def new_user(stack: QueueStack, name: str) -> dict[str, str]:
    with session_scope(get_engine(stack.settings.database_url)) as session:
        user = ensure_user(session, email=f"{name}-{uuid.uuid4().hex[:6]}@example.com")
        key = create_api_key(session, user=user)
    return {"Authorization": f"Bearer {key}"}


def user_id(stack: QueueStack, auth: dict[str, str]) -> str:
    from flowmaestro_api.security import authenticate

    with session_scope(get_engine(stack.settings.database_url)) as session:
        return authenticate(session, auth["Authorization"].removeprefix("Bearer ")).id


def slow_workflow(name: str, *delays_ms: int) -> dict[str, Any]:
    """input → one passthrough node per delay → output: a run that lasts about sum(delays)."""
    nodes: dict[str, Any] = {"in": {"type": "input", "config": {"inputName": "who"}}}
    edges = []
    previous = "in"
    for index, delay in enumerate(delays_ms):
        node = f"slow{index}"
        nodes[node] = {
            "type": "transform",
            "config": {"operation": "passthrough", "delayMs": delay},
        }
        edges.append({"id": f"e{index}", "source": previous, "target": node})
        previous = node
    nodes["out"] = {"type": "output", "config": {"outputName": "done", "value": "{{who}}"}}
    edges.append({"id": "last", "source": previous, "target": "out"})
    return {"name": name, "nodes": nodes, "edges": edges}


def retrying_workflow(name: str, delay_ms: int = 4000) -> dict[str, Any]:
    """input → an HTTP call to a closed port, retried twice `delay_ms` apart → output: a run
    that spends 2 x delay_ms waiting between attempts of one node (and then fails)."""
    url = f"http://127.0.0.1:{free_port()}/nobody-listens"
    retry = {"maxAttempts": 3, "backoffStrategy": "fixed", "minDelayMs": delay_ms}
    return {
        "name": name,
        "nodes": {
            "in": {"type": "input", "config": {"inputName": "who"}},
            "call": {"type": "http", "config": {"method": "GET", "url": url, "retry": retry}},
            "out": {"type": "output", "config": {"outputName": "done", "value": "{{who}}"}},
        },
        "edges": [
            {"id": "a", "source": "in", "target": "call"},
            {"id": "b", "source": "call", "target": "out"},
        ],
    }


def deploy(
    client: TestClient,
    auth: dict[str, str],
    definition: dict[str, Any],
    settings: dict[str, Any] | None = None,
) -> str:
    body: dict[str, Any] = {"definition": definition}
    if settings:
        body["settings"] = settings
    created = client.post("/workflows", json=body, headers=auth)
    assert created.status_code == 201, created.text
    workflow_id: str = created.json()["id"]
    deployed = client.post(f"/workflows/{workflow_id}/versions/1/deploy", headers=auth)
    assert deployed.status_code == 200 and deployed.json()["runnable"], deployed.text
    assert deployed.json()["detail"] is None, deployed.text  # the limits were applied
    return workflow_id


def submit(client: TestClient, auth: dict[str, str], workflow_id: str, **body: Any) -> str:
    response = client.post(
        f"/workflows/{workflow_id}/executions",
        json={"inputs": {"who": "x"}, **body},
        headers=auth,
    )
    assert response.status_code == 201, response.text
    execution_id: str = response.json()["id"]
    return execution_id


def wait_for(predicate: Callable[[], Any], timeout: float = 120, interval: float = 0.5) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"condition not met in {timeout} s")


def execution(client: TestClient, auth: dict[str, str], execution_id: str) -> dict[str, Any]:
    response = client.get(f"/executions/{execution_id}", headers=auth)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def finished(client: TestClient, auth: dict[str, str], *execution_ids: str) -> None:
    for execution_id in execution_ids:
        wait_for(
            lambda eid=execution_id: execution(client, auth, eid)["status"] in TERMINAL,
            timeout=240,
        )


def run_statuses(instance: DagsterInstance, execution_ids: list[str]) -> list[str]:
    statuses = []
    for execution_id in execution_ids:
        runs = instance.get_runs(RunsFilter(tags={"flowmaestro/execution_id": execution_id}))
        statuses.append(runs[0].status.value if runs else "NONE")
    return statuses


@dataclass(frozen=True)
class RunFacts:
    """One run, from Dagster's run storage and event log."""

    execution_id: str
    run_id: str
    storage_id: int  # enqueue order (the daemon scans the queue in this order)
    priority: int
    user: str
    enqueued: float
    dequeued: float  # RUN_STARTING: the daemon chose it
    start: float  # RUN_START: its worker began
    end: float


def _event_time(instance: DagsterInstance, run_id: str, kind: DagsterEventType) -> float:
    records = instance.get_records_for_run(run_id, of_type=kind).records
    assert records, f"run {run_id} has no {kind.value} event"
    return float(records[0].event_log_entry.timestamp)


def facts(instance: DagsterInstance, execution_id: str, index: int = 0) -> RunFacts:
    """The `index`-th run (oldest first) of an execution."""
    records = sorted(
        instance.get_run_records(RunsFilter(tags={"flowmaestro/execution_id": execution_id})),
        key=lambda r: r.storage_id,
    )
    record = records[index]
    run = record.dagster_run
    assert record.start_time is not None and record.end_time is not None, run.status
    return RunFacts(
        execution_id=execution_id,
        run_id=run.run_id,
        storage_id=record.storage_id,
        priority=int(run.tags["dagster/priority"]),
        user=run.tags["flowmaestro/user"],
        enqueued=_event_time(instance, run.run_id, DagsterEventType.RUN_ENQUEUED),
        dequeued=_event_time(instance, run.run_id, DagsterEventType.RUN_STARTING),
        start=record.start_time,
        end=record.end_time,
    )


def max_overlap(runs: list[RunFacts], *, active: bool = True) -> int:
    """The most runs in progress at one moment: from dequeue (RUN_STARTING: the daemon counts
    a run against every limit from then on) to end; with `active=False`, from RUN_START."""
    points = sorted(
        [(r.dequeued if active else r.start, 1) for r in runs] + [(r.end, -1) for r in runs]
    )
    most = current = 0
    for _, step in points:  # at a tie an end (-1) sorts first: touching is not overlapping
        current += step
        most = max(most, current)
    return most


def dequeued_while_another_ran(runs: list[RunFacts]) -> bool:
    """Some run was dequeued while another was in progress (impossible under a limit of 1)."""
    return any(
        other is not run and other.dequeued <= run.dequeued < other.end
        for run in runs
        for other in runs
    )
