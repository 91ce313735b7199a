"""Cancelling a waiting or paused execution (issue 16, item 4), on SQLite and PostgreSQL.

The execution starts through the API and its run parks for real (run in process on an
ephemeral instance with the database waitpoint store, tagged as the API tags it); Dagster's
actions go to the recording client. A cancel closes the waitpoints with who and when; every
later decision, page, callback or due time is 410 with that reason and resumes nothing; the
parked run is tagged `flowmaestro/cancelled=true` and its event log says so.
"""

import json
import time
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from dagster import DagsterEventType, DagsterInstance, DagsterRun, DagsterRunStatus
from fastapi.testclient import TestClient
from sqlalchemy import select, update

from flowmaestro_api.main import create_app
from flowmaestro_api.settings import ApiSettings
from flowmaestro_dagster.adapter.ops import INPUTS_RESOURCE, SERVICES_RESOURCE
from flowmaestro_dagster.adapter.resources import (
    static_services_resource,
    workflow_inputs_resource,
)
from flowmaestro_dagster.control.executions import run_tags
from flowmaestro_dagster.control.waitpoints import (
    decide,
    resolve_due,
    sign,
    signed_token,
    tick,
)
from flowmaestro_dagster.engines.jobs import build_job
from flowmaestro_dagster.engines.local import execute_workflow
from flowmaestro_dagster.errors import DagsterUnavailable, Gone
from flowmaestro_dagster.store.db import get_engine, session_scope
from flowmaestro_dagster.store.models import Execution, Waitpoint, utcnow
from flowmaestro_dagster.store.waitpoints import DatabaseWaitpointStore
from flowmaestro_dagster.tags import (
    CANCELLED_TAG,
    EVENT_DATA_METADATA,
    EVENT_KIND_METADATA,
    PAUSED_TAG,
    WAITING_TAG,
)
from flowmaestro_dagster.testing.recording_client import RecordingDagsterClient
from tests.api.conftest import UNREACHABLE_DAGSTER, deployed_workflow, make_key
from tests.builders import chain, node

SECRET = "cancel-test-secret-0123456789"
SIGNING = "cancel-test-signing-0123456789"


def review_flow() -> dict[str, Any]:
    return chain(
        node("in", "input", inputName="who"),
        node("review", "humanReview", reviewPrompt="Ship {{who}}?", outputVariable="approval"),
        node("out", "output", outputName="result", value="{{approval.approved}}"),
        name="Review",
    )  # fmt: skip


def callback_flow() -> dict[str, Any]:
    return chain(
        node("in", "input", inputName="who"),
        node("signed", "wait", waitType="webhook", outputVariable="signature"),
        node("out", "output", outputName="result", value="{{signature.payload}}"),
        name="Callback",
    )  # fmt: skip


class _NoWebserver(RecordingDagsterClient):
    """Records actions; a query (a deploy's job list) finds no webserver, as in production
    when Dagster is down: the deploy stands and the code location loads later."""

    def _graphql(
        self, query: str, variables: dict[str, Any], *, timeout: float | None = None
    ) -> Any:
        raise DagsterUnavailable("no webserver in this test")


@pytest.fixture
def dagster(instance: DagsterInstance) -> RecordingDagsterClient:
    return _NoWebserver(instance)


@pytest.fixture
def api(database_url: str, dagster: RecordingDagsterClient) -> Iterator[TestClient]:
    settings = ApiSettings(
        database_url=database_url,
        dagster_graphql_url=UNREACHABLE_DAGSTER,
        launch_on_submit=False,
        secret_key=SECRET,
        callback_signing_secret=SIGNING,
    )
    with TestClient(create_app(settings, dagster=dagster), raise_server_exceptions=False) as c:
        yield c


def parked(
    api: TestClient,
    auth: dict[str, str],
    instance: DagsterInstance,
    database_url: str,
    definition: dict[str, Any],
) -> tuple[str, str, str]:
    """(execution, parked run, waitpoint): started through the API, run until it parks."""
    workflow_id = deployed_workflow(api, auth, definition)
    created = api.post(
        f"/workflows/{workflow_id}/executions", json={"inputs": {"who": "ada"}}, headers=auth
    )
    assert created.status_code == 201, created.text
    execution_id: str = created.json()["id"]
    engine = get_engine(database_url)
    with session_scope(engine) as session:
        row = session.get(Execution, execution_id)
        assert row is not None
        tags = run_tags(row)
    store = DatabaseWaitpointStore(database_url, sleep_threshold_seconds=0)
    services = static_services_resource(api.app.state.settings, waitpoints=store)  # type: ignore[attr-defined]
    compiled = build_job(
        definition,
        resource_defs={INPUTS_RESOURCE: workflow_inputs_resource, SERVICES_RESOURCE: services},
    )
    result = execute_workflow(
        compiled, {"who": "ada"}, instance=instance, tags=tags, log_level="ERROR"
    )
    with session_scope(engine) as session:
        session.execute(
            update(Execution)
            .where(Execution.id == execution_id)
            .values(run_id=result.run_id, latest_run_id=result.run_id, launched_at=utcnow())
        )
        waitpoint_id = session.scalar(
            select(Waitpoint.id).where(Waitpoint.execution_id == execution_id)
        )
    assert waitpoint_id is not None
    assert api.get(f"/executions/{execution_id}", headers=auth).json()["status"] == "waiting"
    return execution_id, result.run_id, waitpoint_id


def platform_events(instance: DagsterInstance, run_id: str) -> list[tuple[str, Any]]:
    records = instance.get_records_for_run(run_id, of_type=DagsterEventType.ENGINE_EVENT).records
    events = []
    for record in records:
        event = record.event_log_entry.dagster_event
        metadata = event.engine_event_data.metadata if event is not None else {}
        if EVENT_KIND_METADATA in metadata:
            kind = str(metadata[EVENT_KIND_METADATA].value)
            events.append((kind, metadata[EVENT_DATA_METADATA].value))
    return events


def waitpoint_row(database_url: str, waitpoint_id: str) -> Waitpoint:
    with session_scope(get_engine(database_url)) as session:
        row = session.get(Waitpoint, waitpoint_id)
        assert row is not None
        return row


def test_cancel_while_waiting_closes_the_approval_and_a_later_decision_is_410(
    api: TestClient,
    auth: dict[str, str],
    instance: DagsterInstance,
    dagster: RecordingDagsterClient,
    database_url: str,
) -> None:
    execution_id, run_id, waitpoint_id = parked(api, auth, instance, database_url, review_flow())

    cancelled = api.post(f"/executions/{execution_id}/cancel", headers=auth)
    assert cancelled.status_code == 202, cancelled.text
    assert cancelled.json()["status"] == "cancelled"

    row = waitpoint_row(database_url, waitpoint_id)
    assert row.status == "cancelled"
    assert row.resolution is not None and row.resolution["by"] == "ada@example.com"
    reason = row.resolution["reason"]
    assert reason.startswith("the execution was cancelled by ada@example.com at ")

    decision = api.post(
        f"/approvals/{waitpoint_id}/decision", json={"decision": "approve"}, headers=auth
    )
    assert decision.status_code == 410, decision.text
    problem = decision.json()
    assert (problem["code"], problem["detail"]) == ("gone", reason)
    assert problem["cancelled_by"] == "ada@example.com"
    link = f"/approve/{signed_token(SECRET, 'approve', waitpoint_id)}"
    page = api.get(link)
    assert page.status_code == 410 and "cancelled by ada@example.com" in page.text
    assert api.post(link, data={"decision": "approve"}).status_code == 410
    assert api.get(f"/executions/{execution_id}", headers=auth).json()["status"] == "cancelled"

    # The parked run shows the cancel: a tag, and the events in its log.
    run = instance.get_run_by_id(run_id)
    assert run is not None and run.tags[CANCELLED_TAG] == "true"
    assert WAITING_TAG not in run.tags  # off the runs page's waiting filter
    events = platform_events(instance, run_id)
    user_id = row.resolution["user_id"]
    assert ("execution.cancelled", {"by": user_id, "email": "ada@example.com", "waitpoints": [waitpoint_id]}) in events  # fmt: skip
    assert any(k == "waitpoint.cancelled" and d["waitpoint_id"] == waitpoint_id for k, d in events)

    # Nothing resumes it: the sensor's tick launches no run.
    with session_scope(get_engine(database_url)) as session:
        assert tick(session, dagster)["resumed"] == 0
    assert dagster.calls_to("reexecute_steps") == []
    assert api.post(f"/executions/{execution_id}/cancel", headers=auth).status_code == 409


def test_a_callback_on_a_cancelled_wait_is_410_and_changes_nothing(
    api: TestClient, auth: dict[str, str], instance: DagsterInstance, database_url: str
) -> None:
    execution_id, _, waitpoint_id = parked(api, auth, instance, database_url, callback_flow())
    assert api.post(f"/executions/{execution_id}/cancel", headers=auth).status_code == 202
    token = signed_token(SECRET, "callback", waitpoint_id)
    body = json.dumps({"signed": True}).encode()
    signature = sign(SIGNING, body, int(time.time()), bound_to=token)
    response = api.post(
        f"/callbacks/{token}",
        content=body,
        headers={"content-type": "application/json", "FlowMaestro-Signature": signature},
    )
    assert response.status_code == 410, response.text
    assert "cancelled by ada@example.com" in response.json()["detail"]
    assert waitpoint_row(database_url, waitpoint_id).status == "cancelled"


def test_a_decision_that_read_the_approval_before_the_cancel_loses_with_410(
    api: TestClient, auth: dict[str, str], instance: DagsterInstance, database_url: str
) -> None:
    execution_id, _, waitpoint_id = parked(api, auth, instance, database_url, review_flow())
    with session_scope(get_engine(database_url)) as session:
        stale = session.get(Waitpoint, waitpoint_id)  # read while pending
        assert stale is not None and stale.status == "pending"
        assert api.post(f"/executions/{execution_id}/cancel", headers=auth).status_code == 202
        with pytest.raises(Gone, match=r"cancelled by ada@example\.com"):
            decide(
                session,
                waitpoint=stale,
                user=None,
                via="api",
                decision="approve",
                value=None,
                comment=None,
            )
    assert waitpoint_row(database_url, waitpoint_id).status == "cancelled"


def test_a_waitpoint_parked_after_the_cancel_is_closed_and_its_due_time_resumes_nothing(
    api: TestClient,
    auth: dict[str, str],
    instance: DagsterInstance,
    dagster: RecordingDagsterClient,
    database_url: str,
) -> None:
    execution_id, run_id, _ = parked(api, auth, instance, database_url, review_flow())
    assert api.post(f"/executions/{execution_id}/cancel", headers=auth).status_code == 202
    engine = get_engine(database_url)
    with session_scope(engine) as session:  # as if the run parked once more after the cancel
        late = Waitpoint(
            execution_id=execution_id,
            node_id="later",
            step_key="later",
            run_id=run_id,
            kind="datetime",
            due_at=utcnow() - timedelta(seconds=1),
        )
        session.add(late)
        session.flush()
        late_id = late.id
    with session_scope(engine) as session:
        assert resolve_due(session, now=utcnow()) == 0
        assert tick(session, dagster)["resumed"] == 0
    row = waitpoint_row(database_url, late_id)
    assert row.status == "cancelled" and row.resolution is not None
    assert "parked after the cancel" in row.resolution["reason"]
    assert dagster.calls_to("reexecute_steps") == []


def test_cancelling_a_paused_execution_tags_its_paused_run(
    api: TestClient, auth: dict[str, str], instance: DagsterInstance, database_url: str
) -> None:
    workflow_id = deployed_workflow(api, auth, review_flow())
    created = api.post(
        f"/workflows/{workflow_id}/executions", json={"inputs": {"who": "ada"}}, headers=auth
    )
    execution_id = created.json()["id"]
    with session_scope(get_engine(database_url)) as session:
        execution = session.get(Execution, execution_id)
        assert execution is not None
        run = DagsterRun(
            job_name=execution.job_name,
            run_id=f"paused-{execution_id[:8]}",
            run_config={},
            tags={**run_tags(execution), PAUSED_TAG: "true"},
            status=DagsterRunStatus.CANCELED,
        )
        instance.add_run(run)
        execution.run_id = execution.latest_run_id = run.run_id
        execution.launched_at = execution.paused_at = utcnow()
        execution.paused_run_id = run.run_id
    assert api.get(f"/executions/{execution_id}", headers=auth).json()["status"] == "paused"
    assert api.post(f"/executions/{execution_id}/cancel", headers=auth).status_code == 202
    tags = instance.get_run_by_id(run.run_id).tags  # type: ignore[union-attr]
    assert (tags[CANCELLED_TAG], tags[PAUSED_TAG]) == ("true", "false")
    kinds = [k for k, _ in platform_events(instance, run.run_id)]
    assert kinds == ["execution.cancelled"]


def test_someone_else_cannot_cancel(
    api: TestClient, auth: dict[str, str], instance: DagsterInstance, database_url: str
) -> None:
    execution_id, _, waitpoint_id = parked(api, auth, instance, database_url, review_flow())
    other = make_key(database_url, "eve@example.com")
    assert api.post(f"/executions/{execution_id}/cancel", headers=other).status_code == 404
    assert waitpoint_row(database_url, waitpoint_id).status == "pending"
