"""Execution-control nodes through the API (issue 10): a queueConfig node's priority, queue and
concurrency key on the execution and its run tags; a batch's progress in GET /executions/{id}
and in the event stream. No Dagster processes: runs execute in process on an ephemeral
instance, tagged as the API tags them (as in test_observability.py)."""

from typing import Any

from dagster import DagsterInstance
from fastapi.testclient import TestClient

from flowmaestro_dagster.control.executions import run_tags
from flowmaestro_dagster.engines.jobs import build_job
from flowmaestro_dagster.engines.local import execute_workflow
from flowmaestro_dagster.store.db import get_engine, session_scope
from flowmaestro_dagster.store.models import Execution
from flowmaestro_dagster.tags import WORKFLOW_ID_TAG
from flowmaestro_dagster.testing import resources_for
from tests.api.conftest import deployed_workflow, make_key, patch_settings
from tests.builders import chain, node

QUEUED = chain(
    node("in", "input", inputName="customer", required=True),
    node("q", "queueConfig", label="Urgent, one per customer", priority="high", queue="ai-workflows", concurrencyKey="customer-{{customer}}"),
    node("out", "output", outputName="who", value="{{customer}}"),
    name="Per customer",
)  # fmt: skip

BATCH = chain(
    node("in", "input", inputName="xs", inputType="json"),
    node("batch", "batch", label="Invert", items="{{xs}}", itemVariable="x", batchSize=2, concurrency=2, onItemError="continue", outputVariable="inverted"),
    node("inv", "transform", operation="custom", inputData="{{x}}", expression="1 / $"),
    node("out", "output", outputName="n", value="{{batch.failed}}"),
    name="Invert all",
    react=True,
)  # fmt: skip


def start(client: TestClient, auth: dict[str, str], workflow_id: str, body: dict[str, Any]) -> Any:
    response = client.post(f"/workflows/{workflow_id}/executions", json=body, headers=auth)
    assert response.status_code == 201, response.text
    return response.json()


def test_queue_config_sets_priority_queue_and_concurrency_key_of_the_run(
    client: TestClient, auth: dict[str, str], database_url: str
) -> None:
    workflow_id = deployed_workflow(client, auth, QUEUED)
    execution = start(client, auth, workflow_id, {"inputs": {"customer": "acme"}})
    assert (execution["priority"], execution["queue"]) == (10, "ai-workflows")
    with session_scope(get_engine(database_url)) as session:
        row = session.get(Execution, execution["id"])
        assert row is not None
        tags = run_tags(row)
    assert tags["dagster/priority"] == "10"
    assert tags["flowmaestro/queue"] == "ai-workflows"
    assert tags["flowmaestro/concurrency_key"] == "customer-acme"


def test_a_request_s_priority_and_queue_win_over_the_queue_config(
    client: TestClient, auth: dict[str, str]
) -> None:
    workflow_id = deployed_workflow(client, auth, QUEUED)
    body = {"inputs": {"customer": "acme"}, "priority": "low", "queue": "data-processing"}
    execution = start(client, auth, workflow_id, body)
    assert (execution["priority"], execution["queue"]) == (-10, "data-processing")


def test_the_queue_config_wins_over_the_workflow_settings(
    client: TestClient, auth: dict[str, str]
) -> None:
    workflow_id = deployed_workflow(client, auth, QUEUED)
    patch_settings(client, auth, workflow_id, priority="low", queue="default")
    execution = start(client, auth, workflow_id, {"inputs": {"customer": "x"}})
    assert (execution["priority"], execution["queue"]) == (10, "ai-workflows")


def test_without_queue_config_no_concurrency_key_tag(
    client: TestClient, auth: dict[str, str], database_url: str
) -> None:
    workflow_id = deployed_workflow(client, auth)
    execution = start(client, auth, workflow_id, {"inputs": {"who": "Ada"}})
    assert execution["priority"] == 0
    with session_scope(get_engine(database_url)) as session:
        row = session.get(Execution, execution["id"])
        assert row is not None
        assert "flowmaestro/concurrency_key" not in run_tags(row)


def test_an_invalid_queue_config_is_rejected_with_node_and_field(
    client: TestClient, auth: dict[str, str]
) -> None:
    definition = {
        **QUEUED,
        "nodes": {**QUEUED["nodes"], "q": {"type": "queueConfig", "config": {"priority": "asap"}}},
    }
    response = client.post("/workflows", json={"definition": definition}, headers=auth)
    assert response.status_code == 422, response.text
    problems = [(p["code"], p["node_id"], p["field"]) for p in response.json()["problems"]]
    assert problems == [("invalid_config", "q", "priority")]


# -- batch progress --------------------------------------------------------------------------


def test_batch_progress_shows_in_the_execution_and_its_event_stream(
    api: TestClient, database_url: str, instance: DagsterInstance
) -> None:
    auth = make_key(database_url, "batcher@example.com")
    workflow_id = deployed_workflow(api, auth, BATCH)
    inputs = {"xs": [1, 2, 0, 4]}
    execution_id = start(api, auth, workflow_id, {"inputs": inputs})["id"]
    tags = {
        "flowmaestro/execution_id": execution_id,
        WORKFLOW_ID_TAG: workflow_id,
        "flowmaestro/version": "1",
    }
    compiled = build_job(BATCH, resource_defs=resources_for())
    result = execute_workflow(compiled, inputs, instance=instance, tags=tags, log_level="ERROR")
    assert result.status == "succeeded"

    body = api.get(f"/executions/{execution_id}", headers=auth).json()
    assert body["status"] == "succeeded"
    assert body["progress"] == {
        "batch": {
            "done": 4,
            "total": 4,
            "succeeded": 3,
            "failed": 1,
            "skipped": 0,
            "finished": True,
        }
    }

    stream = api.get(f"/executions/{execution_id}/events", headers=auth)
    assert stream.status_code == 200
    progress_events = [
        block for block in stream.text.split("\n\n") if "event: node.progress" in block
    ]
    assert progress_events, stream.text[:2000]
    assert '"done": 0' in progress_events[0] and '"total": 4' in progress_events[0]
    assert '"done": 4' in progress_events[-1] and '"node_id": "batch"' in progress_events[-1]
