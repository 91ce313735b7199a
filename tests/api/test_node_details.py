"""GET /executions/{id}/nodes/{node_id}: every attempt of a node, from the `node_attempts` rows
the op adapter writes (SQLite and PostgreSQL).

The execution starts through the API and its Dagster run runs in process on an ephemeral
instance, tagged as the API tags it, with the platform's attempt store bound as a run worker
binds it: an llm node that fails once (503) and then answers, and an http node whose bearer
token comes from the inputs.
"""

from typing import Any

from dagster import DagsterInstance
from fastapi.testclient import TestClient
from sqlalchemy import select

from flowmaestro_dagster.adapter.io_manager import NodeOutputIOManager
from flowmaestro_dagster.adapter.ops import INPUTS_RESOURCE, SERVICES_RESOURCE
from flowmaestro_dagster.adapter.resources import (
    static_services_resource,
    workflow_inputs_resource,
)
from flowmaestro_dagster.engines.jobs import build_job
from flowmaestro_dagster.engines.local import execute_workflow
from flowmaestro_dagster.settings import HttpSettings, Settings
from flowmaestro_dagster.store.attempts import DatabaseAttemptStore
from flowmaestro_dagster.store.db import get_engine, session_scope
from flowmaestro_dagster.store.models import NodeAttempt
from flowmaestro_dagster.testing import EchoServer, FakeLLMServer, FakeReply
from tests.api.conftest import deployed_workflow
from tests.builders import chain, node

TOKEN = "tok-9f8e7d6c5b4a"


def flow(echo: EchoServer) -> dict[str, Any]:
    return chain(
        node("in", "input", inputName="topic"),
        node("key", "input", inputName="token"),
        node("ask", "llm", label="Ask", model="gpt-4o", prompt="Tell me about {{topic}}", retry={"maxAttempts": 3, "backoffStrategy": "fixed", "minDelayMs": 200}),
        node("call", "http", method="GET", url=echo.url("/check"), authType="bearer", authCredentials={"token": "{{token}}"}),
        node("out", "output", outputName="answer", value="{{ask.text}}"),
        name="Details",
        react=True,
    )  # fmt: skip


def run(
    api: TestClient,
    auth: dict[str, str],
    instance: DagsterInstance,
    database_url: str,
    definition: dict[str, Any],
    settings: Any,
) -> str:
    """Start an execution through the API and run it in process as a run worker would."""
    workflow_id = deployed_workflow(api, auth, definition)
    inputs = {"topic": "owls", "token": TOKEN}
    created = api.post(
        f"/workflows/{workflow_id}/executions", json={"inputs": inputs}, headers=auth
    )
    assert created.status_code == 201, created.text
    execution_id: str = created.json()["id"]
    services = static_services_resource(settings, attempts=DatabaseAttemptStore(database_url))
    compiled = build_job(
        definition,
        resource_defs={INPUTS_RESOURCE: workflow_inputs_resource, SERVICES_RESOURCE: services},
    )
    tags = {"flowmaestro/execution_id": execution_id, "flowmaestro/workflow_id": workflow_id}
    result = execute_workflow(compiled, inputs, instance=instance, tags=tags, log_level="ERROR")
    assert result.status == "succeeded", result.nodes
    return execution_id


def test_node_details_show_each_attempt_with_its_error_retry_output_and_redacted_inputs(
    api: TestClient,
    auth: dict[str, str],
    other_auth: dict[str, str],
    instance: DagsterInstance,
    database_url: str,
    llm: FakeLLMServer,
    echo: EchoServer,
) -> None:
    llm.enqueue(FakeReply.error(503), "Owls are birds.")
    settings = llm.settings().model_copy(update={"http": HttpSettings(allow_loopback=True)})
    execution_id = run(api, auth, instance, database_url, flow(echo), settings)

    response = api.get(f"/executions/{execution_id}/nodes/ask", headers=auth)
    assert response.status_code == 200, response.text
    first, second = response.json()["attempts"]
    assert (first["attempt"], first["status"], second["attempt"], second["status"]) == (
        1,
        "retrying",
        2,
        "succeeded",
    )
    assert first["run_id"] == second["run_id"] and first["step_key"] == second["step_key"]
    assert first["error"]["error_class"] == "TransientNodeError"
    assert "503" in first["error"]["message"]
    assert (
        "Traceback" in first["error"]["stack"] and "TransientNodeError" in first["error"]["stack"]
    )
    assert first["retry"] == {
        "retryable": True,
        "retried": True,
        "delay_seconds": 0.2,
        "max_attempts": 3,
        "handled_by": None,
    }
    assert first["output"] is None and second["error"] is None and second["retry"] is None
    assert second["output"]["text"] == "Owls are birds." and not second["output_truncated"]
    assert second["inputs"]["config"]["prompt"] == "Tell me about owls"  # resolved
    assert second["inputs"]["upstream"] == ["key"]
    assert any("answered" in line["message"] for line in second["logs"])
    # Timing: the backoff after the retried attempt covers at least the 200 ms chosen.
    assert first["timing"]["backoff_ms"] >= 200
    assert second["timing"]["backoff_ms"] is None and second["timing"]["running_ms"] >= 0
    assert first["timing"]["queued_ms"] is not None and second["timing"]["queued_ms"] is None

    call = api.get(f"/executions/{execution_id}/nodes/call", headers=auth).json()["attempts"]
    assert [a["status"] for a in call] == ["succeeded"]
    text = str(call[0])
    assert TOKEN not in text, text
    assert call[0]["inputs"]["config"]["auth_credentials"] == "***"
    # The Authorization header the echo server sent back, scrubbed in the output.
    assert call[0]["output"]["data"]["headers"]["authorization"] == "Bearer ***"

    full = api.get(f"/executions/{execution_id}/nodes/ask/output", headers=auth)
    # In process the IO manager is Dagster's own: no stored state to serve the whole value from.
    assert full.status_code == 404

    unknown = api.get(f"/executions/{execution_id}/nodes/nope", headers=auth)
    assert unknown.status_code == 404 and unknown.json()["code"] == "not_found"
    assert api.get(f"/executions/{execution_id}/nodes/ask", headers=other_auth).status_code == 404
    assert api.get("/executions/nope/nodes/ask", headers=auth).status_code == 404


def test_every_node_of_a_run_gets_one_row_per_attempt(
    api: TestClient,
    auth: dict[str, str],
    instance: DagsterInstance,
    database_url: str,
    llm: FakeLLMServer,
    echo: EchoServer,
) -> None:
    llm.enqueue("Owls hoot.")
    settings = llm.settings().model_copy(update={"http": HttpSettings(allow_loopback=True)})
    execution_id = run(api, auth, instance, database_url, flow(echo), settings)
    with session_scope(get_engine(database_url)) as session:
        rows = session.scalars(
            select(NodeAttempt.node_id).where(NodeAttempt.execution_id == execution_id)
        ).all()
    assert sorted(rows) == ["ask", "call", "in", "key", "out"]
    body = api.get(f"/executions/{execution_id}/nodes/ask", headers=auth).json()
    assert [a["status"] for a in body["attempts"]] == ["succeeded"]


def test_a_large_output_is_capped_and_served_whole_from_the_stored_state(
    api: TestClient, auth: dict[str, str], instance: DagsterInstance, database_url: str
) -> None:
    definition = chain(
        node("in", "input", inputName="text"),
        node("copy", "transform", transformType="template", template="{{text}}", outputVariable="copied"),
        name="Large",
        react=True,
    )  # fmt: skip
    workflow_id = deployed_workflow(api, auth, definition)
    text = "x" * (100 * 1024)
    created = api.post(
        f"/workflows/{workflow_id}/executions", json={"inputs": {"text": text}}, headers=auth
    )
    execution_id = created.json()["id"]
    services = static_services_resource(Settings(), attempts=DatabaseAttemptStore(database_url))
    compiled = build_job(
        definition,
        resource_defs={
            INPUTS_RESOURCE: workflow_inputs_resource,
            SERVICES_RESOURCE: services,
            "io_manager": NodeOutputIOManager(database_url=database_url),  # as deployed
        },
    )
    tags = {"flowmaestro/execution_id": execution_id}
    result = execute_workflow(
        compiled, {"text": text}, instance=instance, tags=tags, log_level="ERROR"
    )
    assert result.status == "succeeded", result.nodes

    (attempt,) = api.get(f"/executions/{execution_id}/nodes/copy", headers=auth).json()["attempts"]
    assert attempt["output_truncated"] and attempt["output_bytes"] > 100 * 1024
    assert attempt["output"]["truncated"] and len(attempt["output"]["preview"]) == 64 * 1024
    assert attempt["inputs"]["config"]["truncated"] is True  # the resolved template, capped too
    full = api.get(attempt["output_url"], headers=auth)
    assert full.status_code == 200, full.text
    assert full.json() == {"copied": text}
    latest = api.get(f"/executions/{execution_id}/nodes/copy/output", headers=auth)
    assert latest.json() == {"copied": text}
    wrong = api.get(f"/executions/{execution_id}/nodes/copy/output?run_id=nope", headers=auth)
    assert wrong.status_code == 404
