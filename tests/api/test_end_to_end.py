"""The API with a real Dagster (webserver + daemon + code locations), on SQLite and PostgreSQL.

Covers the exactly-once guarantees: a storm of requests with one Idempotency-Key, a crash
between commit and launch, and version pinning while another version is deployed.
"""

import copy
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi.testclient import TestClient

from flowmaestro_api.main import create_app
from flowmaestro_api.security import ensure_user
from flowmaestro_api.settings import ApiSettings
from flowmaestro_dagster.control.client import DagsterClient
from flowmaestro_dagster.control.executions import reconcile_launches, start_execution
from flowmaestro_dagster.control.requests import ExecutionCreate
from flowmaestro_dagster.store.db import get_engine, session_scope
from flowmaestro_dagster.store.models import Execution
from tests.api import e2e
from tests.api.conftest import GREETER, example
from tests.api.e2e import deploy, finished, wait_for
from tests.builders import chain, node
from tests.services import DagsterStack, free_port

pytestmark = pytest.mark.slow


stack = e2e.stack_fixture("stack", "sqlite", "postgres")
settings = e2e.settings_fixture(reconcile_after_seconds=2)
dagster_client, client, auth = e2e.dagster_client, e2e.client, e2e.auth


def runs_of(dagster_client: DagsterClient, execution_id: str) -> list[Any]:
    return e2e.runs_of(dagster_client.instance, execution_id)


def test_the_dagster_instance_is_stored_where_the_platform_database_is(
    stack: DagsterStack,
) -> None:
    """One setting: a PostgreSQL database URL puts Dagster's runs and events there too."""
    from dagster._core.storage.runs import SqliteRunStorage
    from dagster_postgres import PostgresRunStorage

    expected = (
        PostgresRunStorage if stack.database_url.startswith("postgresql") else SqliteRunStorage
    )
    with stack.instance() as instance:
        assert isinstance(instance.run_storage, expected)


def test_execution_runs_with_node_statuses_outputs_and_events(
    client: TestClient, auth: dict[str, str]
) -> None:
    workflow_id = deploy(client, auth, example("lead-qualification.json"))
    lead = {
        "name": "Ann",
        "email": "ann@corp.eu",
        "employees": 500,
        "budget": 90000,
        "region": "EU-West",
    }
    created = client.post(
        f"/workflows/{workflow_id}/executions", json={"inputs": {"lead": lead}}, headers=auth
    )
    assert created.status_code == 201
    execution = finished(client, auth, created.json()["id"])
    assert execution["status"] == "succeeded"
    assert execution["outputs"] == {
        "assignment": {"team": "emea-sales", "lead": "Ann", "score": 100}
    }
    nodes = {n["node_id"]: n for n in execution["nodes"]}
    assert (
        nodes["transform-eu"]["status"] == "succeeded"
        and nodes["transform-us"]["status"] == "skipped"
    )
    assert nodes["transform-score"]["output"] == {
        "score": {"value": 100}
    }  # JSONata drops undefined
    assert nodes["output-1"]["attempts"] == 1 and nodes["output-1"]["duration_ms"] is not None
    assert len(execution["runs"]) == 1 and execution["url"].endswith(execution["runs"][0]["run_id"])
    with client.stream("GET", f"/executions/{execution['id']}/events", headers=auth) as stream:
        text = "".join(stream.iter_text())
    events = [
        line.removeprefix("event: ") for line in text.splitlines() if line.startswith("event: ")
    ]
    assert events[-1] == "end"
    assert "node.started" in events and "node.skipped" in events and "run.succeeded" in events
    started = [json.loads(line[6:]) for line in text.splitlines() if line.startswith("data: ")]
    assert any(e.get("node_id") == "input-lead" for e in started)


class _Server:
    def __init__(self, app: Any) -> None:
        self.port = free_port()
        self.server = uvicorn.Server(
            uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning")
        )
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        wait_for(lambda: self.server.started, timeout=30, interval=0.05)
        return f"http://127.0.0.1:{self.port}"

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


def test_a_hundred_concurrent_requests_with_one_key_start_one_execution_and_one_run(
    client: TestClient,
    auth: dict[str, str],
    settings: ApiSettings,
    dagster_client: DagsterClient,
    stack: DagsterStack,
) -> None:
    workflow_id = deploy(client, auth, GREETER)
    app = create_app(settings, dagster=dagster_client)
    with _Server(app) as base, httpx.Client(base_url=base, timeout=60) as http:

        def post(_: int) -> httpx.Response:
            return http.post(
                f"/workflows/{workflow_id}/executions",
                json={"inputs": {"who": "storm"}},
                headers={**auth, "Idempotency-Key": "storm-1"},
            )

        with ThreadPoolExecutor(max_workers=32) as pool:
            responses = list(pool.map(post, range(100)))
    statuses = sorted(r.status_code for r in responses)
    assert statuses.count(201) == 1 and statuses.count(200) == 99, statuses
    ids = {r.json()["id"] for r in responses}
    assert len(ids) == 1
    execution_id = ids.pop()
    with session_scope(get_engine(stack.database_url)) as session:
        assert session.query(Execution).filter(Execution.workflow_id == workflow_id).count() == 1
    assert finished(client, auth, execution_id)["status"] == "succeeded"
    time.sleep(5)  # give the reconciler sensor a couple of ticks to (not) launch it again
    assert len(runs_of(dagster_client, execution_id)) == 1


def test_an_execution_committed_but_never_launched_is_launched_exactly_once(
    client: TestClient,
    auth: dict[str, str],
    settings: ApiSettings,
    dagster_client: DagsterClient,
    stack: DagsterStack,
) -> None:
    workflow_id = deploy(client, auth, GREETER)
    engine = get_engine(stack.database_url)
    with session_scope(engine) as session:
        user = ensure_user(session, email=_email_of(client, auth))
        # The API process "dies" right after this commit: nobody launches it.
        execution, replayed = start_execution(
            session,
            user=user,
            workflow_id=workflow_id,
            body=ExecutionCreate(inputs={"who": "crash"}),
            idempotency_key=None,
            default_ttl_seconds=3600,
            shards=settings.code_location_shards,
        )
        execution_id = execution.id
    assert not replayed
    time.sleep(2.5)  # older than reconcile_after_seconds

    def reconcile(_: int) -> dict[str, int]:
        with session_scope(engine) as session:
            return reconcile_launches(
                session, dagster_client, older_than_seconds=2, lease_seconds=60
            )

    with ThreadPoolExecutor(max_workers=3) as pool:  # three reconcilers race the sensor
        outcomes = list(pool.map(reconcile, range(3)))
    assert finished(client, auth, execution_id)["status"] == "succeeded"
    time.sleep(5)
    assert len(runs_of(dagster_client, execution_id)) == 1
    assert sum(o["launched"] for o in outcomes) <= 1


def _email_of(client: TestClient, auth: dict[str, str]) -> str:
    from flowmaestro_api.security import authenticate

    settings: ApiSettings = client.app.state.settings  # type: ignore[attr-defined]
    with session_scope(get_engine(settings.database_url)) as session:
        return authenticate(session, auth["Authorization"].removeprefix("Bearer ")).email


def slow_version(label: str, delay_ms: int) -> dict[str, Any]:
    definition = copy.deepcopy(GREETER)
    definition["nodes"].insert(
        2,
        {
            "id": "slow",
            "type": "transform",
            "position": {"x": 100, "y": 0},
            "data": {"operation": "passthrough", "delayMs": delay_ms},
        },
    )
    definition["edges"] = [
        {"id": "e1", "source": "in", "target": "slow"},
        {"id": "e2", "source": "slow", "target": "out"},
        {"id": "e3", "source": "n", "target": "out"},
    ]
    definition["nodes"][3]["data"]["value"] = f"{label} {{{{who}}}}"
    return definition


def test_an_execution_runs_on_the_version_deployed_when_it_started(
    client: TestClient, auth: dict[str, str], dagster_client: DagsterClient
) -> None:
    workflow_id = deploy(client, auth, slow_version("v1", 4000))
    first = client.post(
        f"/workflows/{workflow_id}/executions", json={"inputs": {"who": "a"}}, headers=auth
    ).json()
    wait_for(
        lambda: client.get(f"/executions/{first['id']}", headers=auth).json()["status"] == "running"
    )
    client.patch(
        f"/workflows/{workflow_id}", json={"definition": slow_version("v2", 10)}, headers=auth
    )
    deploy(client, auth, {}, version=2, workflow_id=workflow_id)
    second = client.post(
        f"/workflows/{workflow_id}/executions", json={"inputs": {"who": "b"}}, headers=auth
    ).json()
    assert (first["version"], second["version"]) == (1, 2)
    done_first = finished(client, auth, first["id"])
    done_second = finished(client, auth, second["id"])
    assert done_first["outputs"] == {"greeting": "v1 a"}
    assert done_second["outputs"] == {"greeting": "v2 b"}
    jobs = {run.job_name for run in runs_of(dagster_client, first["id"])}
    assert jobs == {done_first_job(client, auth, workflow_id, 1)}


def done_first_job(client: TestClient, auth: dict[str, str], workflow_id: str, version: int) -> str:
    job: str = client.get(f"/workflows/{workflow_id}/versions/{version}", headers=auth).json()[
        "job_name"
    ]
    return job


def test_retry_re_executes_from_failure_without_redoing_finished_nodes(
    client: TestClient, auth: dict[str, str], dagster_client: DagsterClient
) -> None:
    definition = chain(
        node("in", "input", inputName="raw"),
        node("echo", "transform", transformType="template", template="got {{raw}}"),
        node("parse", "transform", operation="parseJSON", inputData="{{raw}}"),
        name="Parse",
    )
    workflow_id = deploy(client, auth, definition)
    created = client.post(
        f"/workflows/{workflow_id}/executions", json={"inputs": {"raw": "{broken"}}, headers=auth
    ).json()
    failed = finished(client, auth, created["id"])
    assert failed["status"] == "failed"
    assert {n["node_id"]: n["status"] for n in failed["nodes"]}["parse"] == "failed"
    retried = client.post(f"/executions/{created['id']}/retry", headers=auth)
    assert retried.status_code == 202
    wait_for(lambda: len(runs_of(dagster_client, created["id"])) == 2)
    again = finished(client, auth, created["id"])
    assert again["status"] == "failed" and len(again["runs"]) == 2
    second = again["runs"][1]
    assert second["parent_run_id"] == again["runs"][0]["run_id"]
    executed = {s.step_key for s in dagster_client.step_stats(second["run_id"])}
    assert executed == {"parse"}  # in and echo were not run again
    assert client.post(f"/executions/{created['id']}/cancel", headers=auth).status_code == 409


def test_cancel_terminates_a_running_execution(client: TestClient, auth: dict[str, str]) -> None:
    workflow_id = deploy(client, auth, slow_version("slow", 30000))
    execution = client.post(
        f"/workflows/{workflow_id}/executions", json={"inputs": {"who": "x"}}, headers=auth
    ).json()
    wait_for(
        lambda: (
            client.get(f"/executions/{execution['id']}", headers=auth).json()["status"] == "running"
        )
    )
    assert client.post(f"/executions/{execution['id']}/cancel", headers=auth).status_code == 202
    assert finished(client, auth, execution["id"])["status"] == "cancelled"


def test_stack_logs_are_kept(stack: DagsterStack) -> None:
    assert Path(stack.log).exists()
