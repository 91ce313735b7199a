"""Pause, resume, checkpoints and retry from a checkpoint, end to end: the API on one real
Dagster stack (webserver, daemon, sensors) shared by every test of this module.

What finished must not run again: checked in Dagster's step stats of the resumed runs.
"""

import time
from typing import Any

import pytest
from fastapi.testclient import TestClient

from flowmaestro_dagster.engines.jobs import build_job
from flowmaestro_dagster.testing.stack import DagsterStack
from tests.api import e2e
from tests.api.e2e import (
    approvals_of,
    deploy,
    execution,
    new_user,
    node_statuses,
    parked_run,
    rerun_steps,
    start,
    status_is,
    step_keys,
    wait_for,
)
from tests.builders import chain, node

pytestmark = pytest.mark.slow

stack = e2e.stack_fixture("control", FLOWMAESTRO_WAITPOINT_INTERVAL_SECONDS="1")
settings = e2e.settings_fixture()
dagster_client, client, auth = e2e.dagster_client, e2e.client, e2e.auth


def checkpoint_flow() -> dict[str, Any]:
    """React-Flow shape: in → prep → review point (checkpoint, pause here) → out."""
    return chain(
        node("in", "input", inputName="who"),
        node("prep", "transform", transformType="template", template="prepared {{who}}", outputVariable="prepared"),
        node("cp", "checkpoint", label="Review point", checkpointName="after-prep", expiresIn="1h", pauseHere=True),
        node("out", "output", outputName="result", value="{{prepared}}"),
        name="Checkpoint",
        react=True,
    )  # fmt: skip


def test_a_pause_here_checkpoint_parks_shows_its_state_and_resumes_through_the_api(
    client: TestClient, auth: dict[str, str], stack: DagsterStack
) -> None:
    workflow_id = deploy(client, auth, checkpoint_flow())
    execution_id = start(client, auth, workflow_id, {"who": "ada"})
    waiting = status_is(client, auth, execution_id, "waiting")
    assert node_statuses(waiting)["cp"] == "waiting" and node_statuses(waiting)["out"] == "skipped"
    assert waiting["waitpoints"][0]["kind"] == "manual"
    parked = parked_run(stack, waiting)

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

    stranger = new_user(stack.database_url, "other")
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
    aliases = build_job(checkpoint_flow()).aliases
    again = rerun_steps(stack, done, parked)
    assert aliases["cp"] in again and aliases["out"] in again
    assert aliases["prep"] not in again and aliases["in"] not in again
    twice = client.post(f"/executions/{execution_id}/resume", headers=auth)
    assert twice.status_code == 409 and "succeeded" in twice.json()["detail"]
    finished = client.post(f"/executions/{execution_id}/pause", headers=auth)
    assert finished.status_code == 409 and "succeeded" in finished.json()["detail"]


def slow_flow(delay_ms: int) -> dict[str, Any]:
    """Backend shape: in → first → slow (sleeps) → last → out."""
    return chain(
        node("in", "input", inputName="who"),
        node("first", "transform", operation="template", template="1:{{who}}", outputVariable="one"),
        node("slow", "transform", operation="template", template="2:{{one}}", delayMs=delay_ms, outputVariable="two"),
        node("last", "transform", operation="template", template="3:{{two}}", outputVariable="three"),
        node("out", "output", outputName="result", value="{{three}}"),
        name="Slow",
    )  # fmt: skip


def test_pause_stops_a_running_execution_and_resume_does_not_redo_finished_nodes(
    client: TestClient, auth: dict[str, str], stack: DagsterStack
) -> None:
    definition = slow_flow(2500)
    workflow_id = deploy(client, auth, definition)
    execution_id = start(client, auth, workflow_id, {"who": "bo"})
    wait_for(lambda: node_statuses(execution(client, auth, execution_id)).get("slow") == "running")
    paused = client.post(f"/executions/{execution_id}/pause", headers=auth)
    assert paused.status_code == 202, paused.text
    assert paused.json()["status"] in ("pausing", "paused")
    body = status_is(client, auth, execution_id, "paused")
    run_id = body["runs"][0]["run_id"]
    run = stack.instance().get_run_by_id(run_id)
    assert run.status.value == "CANCELED" and run.tags["flowmaestro/paused"] == "true"
    assert body["paused_at"] is not None
    nodes = node_statuses(body)
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
    aliases = build_job(definition).aliases
    second = rerun_steps(stack, done, run_id)
    assert not {aliases["in"], aliases["first"], aliases["slow"]} & set(second)  # not re-run
    assert aliases["last"] in second
    assert (
        stack.instance().get_run_by_id(done["runs"][1]["run_id"]).tags["flowmaestro/paused"]
        == "false"
    )


def test_a_retry_after_a_later_failure_restarts_from_the_latest_checkpoint(
    client: TestClient, auth: dict[str, str], stack: DagsterStack
) -> None:
    definition = chain(
        node("in", "input", inputName="who"),
        node("first", "transform", operation="template", template="1:{{who}}", outputVariable="one"),
        node("cp", "checkpoint", name="good state"),
        node("enrich", "transform", operation="template", template="2:{{one}}", outputVariable="two"),
        node("boom", "code", language="javascript", code="throw new Error('boom ' + two)"),
        name="Restart",
    )  # fmt: skip
    workflow_id = deploy(client, auth, definition)
    execution_id = start(client, auth, workflow_id, {"who": "cy"})
    failed = status_is(client, auth, execution_id, "failed", "succeeded")
    assert failed["status"] == "failed" and node_statuses(failed)["boom"] == "failed"
    retried = client.post(f"/executions/{execution_id}/retry", headers=auth)
    assert retried.status_code == 202, retried.text
    again = status_is(client, auth, execution_id, "failed", "succeeded")
    assert len(again["runs"]) == 2
    aliases = build_job(definition).aliases
    second = step_keys(stack.instance(), again["runs"][1]["run_id"])
    # Everything after the checkpoint runs again (enrich had succeeded); nothing before it.
    assert second == {aliases["enrich"], aliases["boom"]}
    tags = stack.instance().get_run_by_id(again["runs"][1]["run_id"]).tags
    assert tags["flowmaestro/from_checkpoint"] == "cp"


def test_cancel_while_waiting_at_an_approval_resumes_nothing_and_the_approval_is_410(
    client: TestClient, auth: dict[str, str], stack: DagsterStack
) -> None:
    review = chain(
        node("in", "input", inputName="who"),
        node("review", "humanReview", reviewPrompt="Ship {{who}}?", outputVariable="approval"),
        node("out", "output", outputName="result", value="{{approval.approved}}"),
        name="Cancelled review",
    )  # fmt: skip
    execution_id = start(client, auth, deploy(client, auth, review), {"who": "cy"})
    waiting = status_is(client, auth, execution_id, "waiting")
    parked = parked_run(stack, waiting)
    approval = wait_for(lambda: approvals_of(client, auth, execution_id))[0]

    cancelled = client.post(f"/executions/{execution_id}/cancel", headers=auth)
    assert cancelled.status_code == 202, cancelled.text
    assert cancelled.json()["status"] == "cancelled"
    late = client.post(
        f"/approvals/{approval['id']}/decision", json={"decision": "approve"}, headers=auth
    )
    assert late.status_code == 410, late.text
    assert "was cancelled by" in late.json()["detail"]
    assert stack.instance().get_run_by_id(parked).tags["flowmaestro/cancelled"] == "true"
    time.sleep(3.5)  # the waitpoint sensor ticks every second: a few ticks, no resume
    body = execution(client, auth, execution_id)
    assert body["status"] == "cancelled" and [r["run_id"] for r in body["runs"]] == [parked]
    assert body["waitpoints"][0]["status"] == "cancelled"
