"""Pause, resume, checkpoints and retry from a checkpoint, end to end: the API on one real
Dagster stack (webserver, daemon, sensors) shared by every test of this module.

What finished must not run again: checked in Dagster's step stats of the resumed runs.
"""

import time
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from flowmaestro_api.main import create_app
from flowmaestro_api.settings import ApiSettings
from flowmaestro_dagster.control.client import DagsterClient
from flowmaestro_dagster.engines.jobs import build_job
from flowmaestro_dagster.testing.stack import DagsterStack
from tests.api.conftest import make_key
from tests.api.e2e import deploy, execution, start, status_is, wait_for
from tests.services import migrated_template

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DagsterStack]:
    workdir = tmp_path_factory.mktemp("control")
    with migrated_template("sqlite", workdir) as template:
        dagster = DagsterStack(
            workdir / "home",
            f"sqlite:///{template}",
            extra_env={"FLOWMAESTRO_WAITPOINT_INTERVAL_SECONDS": "1"},
        )
        dagster.start()
        try:
            yield dagster
        finally:
            dagster.stop()


@pytest.fixture(scope="module")
def client(stack: DagsterStack) -> Iterator[TestClient]:
    settings = ApiSettings(
        database_url=stack.database_url,
        dagster_graphql_url=stack.graphql_url,
        dagster_ui_url=stack.ui_url,
    )
    dagster = DagsterClient(settings.dagster_graphql_url, instance=stack.instance())
    with TestClient(
        create_app(settings, dagster=dagster), raise_server_exceptions=False
    ) as test_client:
        yield test_client


@pytest.fixture
def auth(stack: DagsterStack) -> dict[str, str]:
    return make_key(stack.database_url, f"user-{time.monotonic_ns()}@example.com")


def node_status(body: dict[str, Any]) -> dict[str, str]:
    return {n["node_id"]: n["status"] for n in body["nodes"]}


def steps(stack: DagsterStack, run_id: str) -> set[str]:
    return {s.step_key for s in stack.instance().get_run_step_stats(run_id)}


def checkpoint_flow() -> dict[str, Any]:
    """React-Flow shape: in → prep → review point (checkpoint, pause here) → out."""
    return {
        "name": "Checkpoint",
        "nodes": [
            {"id": "in", "type": "input", "data": {"inputName": "who"}},
            {
                "id": "prep",
                "type": "transform",
                "data": {
                    "transformType": "template",
                    "template": "prepared {{who}}",
                    "outputVariable": "prepared",
                },
            },
            {
                "id": "cp",
                "type": "checkpoint",
                "data": {
                    "label": "Review point",
                    "checkpointName": "after-prep",
                    "expiresIn": "1h",
                    "pauseHere": True,
                },
            },
            {
                "id": "out",
                "type": "output",
                "data": {"outputName": "result", "value": "{{prepared}}"},
            },
        ],
        "edges": [
            {"id": "a", "source": "in", "target": "prep"},
            {"id": "b", "source": "prep", "target": "cp"},
            {"id": "c", "source": "cp", "target": "out"},
        ],
    }


def test_a_pause_here_checkpoint_parks_shows_its_state_and_resumes_through_the_api(
    client: TestClient, auth: dict[str, str], stack: DagsterStack
) -> None:
    workflow_id = deploy(client, auth, checkpoint_flow())
    execution_id = start(client, auth, workflow_id, {"who": "ada"})
    waiting = status_is(client, auth, execution_id, "waiting")
    assert node_status(waiting)["cp"] == "waiting" and node_status(waiting)["out"] == "skipped"
    assert waiting["waitpoints"][0]["kind"] == "manual"
    parked_run = waiting["runs"][0]["run_id"]
    assert stack.instance().get_run_by_id(parked_run).tags["flowmaestro/waiting"] == "true"

    listed = client.get(f"/executions/{execution_id}/checkpoints", headers=auth)
    assert listed.status_code == 200, listed.text
    [summary] = listed.json()["items"]
    assert summary["name"] == "after-prep" and summary["pause_here"] is True
    assert summary["nodes"] == ["in", "prep"]
    detail = client.get(f"/executions/{execution_id}/checkpoints/cp", headers=auth).json()
    assert detail["state"]["outputs"]["prep"] == {"prepared": "prepared ada"}
    assert detail["state"]["inputs"] == {"who": "ada"}
    assert (
        client.get(f"/executions/{execution_id}/checkpoints/prep", headers=auth).status_code == 404
    )

    stranger = make_key(stack.database_url, f"other-{time.monotonic_ns()}@example.com")
    for path in ("checkpoints", "checkpoints/cp"):
        assert client.get(f"/executions/{execution_id}/{path}", headers=stranger).status_code == 404
    for action in ("pause", "resume"):
        assert (
            client.post(f"/executions/{execution_id}/{action}", headers=stranger).status_code == 404
        )
    assert client.post("/executions/no-such-id/resume", headers=auth).status_code == 404
    refused = client.post(f"/executions/{execution_id}/pause", headers=auth)
    assert refused.status_code == 409 and "waitpoint" in refused.json()["detail"]

    resumed = client.post(f"/executions/{execution_id}/resume", headers=auth)
    assert resumed.status_code == 202, resumed.text
    done = status_is(client, auth, execution_id, "succeeded", "failed")
    assert done["status"] == "succeeded" and done["outputs"] == {"result": "prepared ada"}
    assert len(done["runs"]) == 2 and done["runs"][1]["parent_run_id"] == parked_run
    aliases = build_job(checkpoint_flow()).aliases
    again = steps(stack, done["runs"][1]["run_id"])
    assert aliases["cp"] in again and aliases["out"] in again
    assert aliases["prep"] not in again and aliases["in"] not in again
    twice = client.post(f"/executions/{execution_id}/resume", headers=auth)
    assert twice.status_code == 409 and "succeeded" in twice.json()["detail"]
    finished = client.post(f"/executions/{execution_id}/pause", headers=auth)
    assert finished.status_code == 409 and "succeeded" in finished.json()["detail"]


def slow_flow(delay_ms: int) -> dict[str, Any]:
    """Backend shape: in → first → slow (sleeps) → last → out."""
    return {
        "name": "Slow",
        "nodes": {
            "in": {"type": "input", "config": {"inputName": "who"}},
            "first": {
                "type": "transform",
                "config": {
                    "operation": "template",
                    "template": "1:{{who}}",
                    "outputVariable": "one",
                },
            },
            "slow": {
                "type": "transform",
                "config": {
                    "operation": "template",
                    "template": "2:{{one}}",
                    "delayMs": delay_ms,
                    "outputVariable": "two",
                },
            },
            "last": {
                "type": "transform",
                "config": {
                    "operation": "template",
                    "template": "3:{{two}}",
                    "outputVariable": "three",
                },
            },
            "out": {"type": "output", "config": {"outputName": "result", "value": "{{three}}"}},
        },
        "edges": [
            {"id": "a", "source": "in", "target": "first"},
            {"id": "b", "source": "first", "target": "slow"},
            {"id": "c", "source": "slow", "target": "last"},
            {"id": "d", "source": "last", "target": "out"},
        ],
    }


def test_pause_stops_a_running_execution_and_resume_does_not_redo_finished_nodes(
    client: TestClient, auth: dict[str, str], stack: DagsterStack
) -> None:
    definition = slow_flow(2500)
    workflow_id = deploy(client, auth, definition)
    execution_id = start(client, auth, workflow_id, {"who": "bo"})
    wait_for(lambda: node_status(execution(client, auth, execution_id)).get("slow") == "running")
    paused = client.post(f"/executions/{execution_id}/pause", headers=auth)
    assert paused.status_code == 202, paused.text
    assert paused.json()["status"] in ("pausing", "paused")
    body = status_is(client, auth, execution_id, "paused")
    run_id = body["runs"][0]["run_id"]
    run = stack.instance().get_run_by_id(run_id)
    assert run.status.value == "CANCELED" and run.tags["flowmaestro/paused"] == "true"
    assert body["paused_at"] is not None
    nodes = node_status(body)
    # The node in flight when the pause came finished; the next one never started.
    assert nodes["first"] == "succeeded" and nodes["slow"] == "succeeded"
    assert nodes["last"] == "not_run"
    again = client.post(f"/executions/{execution_id}/pause", headers=auth)  # idempotent
    assert again.status_code == 202 and again.json()["status"] == "paused"
    time.sleep(1.5)  # a daemon tick: no run retry, still paused, still one run
    body = execution(client, auth, execution_id)
    assert body["status"] == "paused" and len(body["runs"]) == 1

    resumed = client.post(f"/executions/{execution_id}/resume", headers=auth)
    assert resumed.status_code == 202, resumed.text
    assert client.post(f"/executions/{execution_id}/resume", headers=auth).status_code == 409
    done = status_is(client, auth, execution_id, "succeeded", "failed")
    assert done["status"] == "succeeded" and done["outputs"] == {"result": "3:2:1:bo"}
    assert len(done["runs"]) == 2 and done["runs"][1]["parent_run_id"] == run_id
    aliases = build_job(definition).aliases
    second = steps(stack, done["runs"][1]["run_id"])
    assert not {aliases["in"], aliases["first"], aliases["slow"]} & set(second)  # not re-run
    assert aliases["last"] in second
    assert (
        stack.instance().get_run_by_id(done["runs"][1]["run_id"]).tags["flowmaestro/paused"]
        == "false"
    )


def test_a_retry_after_a_later_failure_restarts_from_the_latest_checkpoint(
    client: TestClient, auth: dict[str, str], stack: DagsterStack
) -> None:
    definition = {
        "name": "Restart",
        "nodes": {
            "in": {"type": "input", "config": {"inputName": "who"}},
            "first": {
                "type": "transform",
                "config": {
                    "operation": "template",
                    "template": "1:{{who}}",
                    "outputVariable": "one",
                },
            },
            "cp": {"type": "checkpoint", "config": {"name": "good state"}},
            "enrich": {
                "type": "transform",
                "config": {
                    "operation": "template",
                    "template": "2:{{one}}",
                    "outputVariable": "two",
                },
            },
            "boom": {
                "type": "code",
                "config": {"language": "javascript", "code": "throw new Error('boom ' + two)"},
            },
        },
        "edges": [
            {"id": "a", "source": "in", "target": "first"},
            {"id": "b", "source": "first", "target": "cp"},
            {"id": "c", "source": "cp", "target": "enrich"},
            {"id": "d", "source": "enrich", "target": "boom"},
        ],
    }
    workflow_id = deploy(client, auth, definition)
    execution_id = start(client, auth, workflow_id, {"who": "cy"})
    failed = status_is(client, auth, execution_id, "failed", "succeeded")
    assert failed["status"] == "failed" and node_status(failed)["boom"] == "failed"
    retried = client.post(f"/executions/{execution_id}/retry", headers=auth)
    assert retried.status_code == 202, retried.text
    again = status_is(client, auth, execution_id, "failed", "succeeded")
    assert len(again["runs"]) == 2
    aliases = build_job(definition).aliases
    second = steps(stack, again["runs"][1]["run_id"])
    # Everything after the checkpoint runs again (enrich had succeeded); nothing before it.
    assert second == {aliases["enrich"], aliases["boom"]}
    tags = stack.instance().get_run_by_id(again["runs"][1]["run_id"]).tags
    assert tags["flowmaestro/from_checkpoint"] == "cp"
