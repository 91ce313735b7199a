"""Approver notifications and approval expiry, one waitpoint-sensor tick at a time.

The approval is real: the workflow runs in process on a test Dagster instance with the
database waitpoint store and parks, as a run worker does. The tick (`control.waitpoints.tick`,
what the `waitpoint_resumer` sensor runs) then sends through the real connectors to a real
SMTP server (aiosmtpd) and a local HTTP server standing in for Slack's incoming webhook and a
webhook receiver. The only fake is the webserver (`RecordingDagsterClient`). The same with a
real Dagster stack: tests/api/test_waitpoints_e2e.py.
"""

import json
import re
from datetime import timedelta
from email import message_from_string, policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from dagster import DagsterEventType, DagsterInstance
from sqlalchemy import select, update

from flowmaestro_dagster.adapter.ops import INPUTS_RESOURCE, SERVICES_RESOURCE
from flowmaestro_dagster.adapter.resources import (
    static_services_resource,
    workflow_inputs_resource,
)
from flowmaestro_dagster.compile.validation import validate
from flowmaestro_dagster.control.executions import run_tags, start_execution, version_row
from flowmaestro_dagster.control.notifications import NOTIFY_RETRY, notify_approvers
from flowmaestro_dagster.control.requests import ExecutionCreate
from flowmaestro_dagster.control.waitpoints import tick, verify_token
from flowmaestro_dagster.engines.jobs import build_job
from flowmaestro_dagster.engines.local import execute_workflow
from flowmaestro_dagster.lang.state import ExecutionState
from flowmaestro_dagster.nodes.base import NodeContext
from flowmaestro_dagster.nodes.waitpoints import approval_output
from flowmaestro_dagster.settings import HttpSettings, Settings
from flowmaestro_dagster.spec.configs import HumanReviewConfig
from flowmaestro_dagster.store.db import get_engine, session_scope
from flowmaestro_dagster.store.models import Execution, User, Waitpoint, utcnow
from flowmaestro_dagster.store.waitpoints import DatabaseWaitpointStore
from flowmaestro_dagster.tags import EVENT_DATA_METADATA, EVENT_KIND_METADATA
from flowmaestro_dagster.testing import EchoServer
from flowmaestro_dagster.testing.recording_client import RecordingDagsterClient
from tests.builders import chain, node
from tests.conftest import SmtpInbox
from tests.deploy import deploy

SECRET = "notify-test-secret-0123456789"
APPROVER = "boss@corp.eu"
LINK = re.compile(r"https://flows\.corp\.eu/approve/([\w.-]+)")


def settings_for(platform_db: str, **connections: Any) -> Settings:
    return Settings(
        database_url=platform_db,
        wait_sleep_threshold_seconds=0,
        secret_key=SECRET,
        callback_signing_secret="notify-test-signing-0123456789",
        public_api_url="https://flows.corp.eu/",
        http=HttpSettings(allow_loopback=True),
        connections=connections,
    )


def email_connection(port: int) -> dict[str, Any]:
    return {"host": "127.0.0.1", "port": port, "security": "none", "from_address": "flows@corp.eu"}


def review_flow(**review: Any) -> dict[str, Any]:
    """input → a review → output `{{approval.decision}}:{{approval.approved}}`."""
    return chain(
        node("in", "input", inputName="who"),
        node("review", "humanReview", label="Release", reviewPrompt="Ship {{who}}?", outputVariable="approval", **review),
        node("out", "output", outputName="result", value="{{approval.decision}}:{{approval.approved}}"),
        name="Review",
    )  # fmt: skip


def parked(settings: Settings, instance: DagsterInstance, definition: dict[str, Any]) -> str:
    """An execution whose run (in process, on `instance`) parked at its review; its id."""
    with session_scope(get_engine(settings.database_url)) as session:
        user = User(email="owner@corp.eu")
        session.add(user)
        session.flush()
        workflow_id = deploy(session, user, definition)
        session.commit()
        execution, _ = start_execution(
            session,
            user=user,
            workflow_id=workflow_id,
            body=ExecutionCreate(inputs={"who": "v2"}),
            idempotency_key=None,
            default_ttl_seconds=3600,
            shards=1,
        )
        execution_id, tags = execution.id, run_tags(execution)
        version = version_row(session, execution)
        assert version is not None
        job_name, committed = execution.job_name, dict(version.definition)
    store = DatabaseWaitpointStore(settings.database_url, sleep_threshold_seconds=0)
    compiled = build_job(
        committed,
        job_name=job_name,
        resource_defs={
            INPUTS_RESOURCE: workflow_inputs_resource,
            SERVICES_RESOURCE: static_services_resource(settings, waitpoints=store),
        },
    )
    result = execute_workflow(compiled, {"who": "v2"}, instance=instance, tags=tags)
    with session_scope(get_engine(settings.database_url)) as session:
        session.execute(
            update(Execution)
            .where(Execution.id == execution_id)
            .values(run_id=result.run_id, latest_run_id=result.run_id, status="waiting")
        )
    return execution_id


def waitpoint(settings: Settings, execution_id: str) -> Waitpoint:
    with session_scope(get_engine(settings.database_url)) as session:
        row = session.scalar(select(Waitpoint).where(Waitpoint.execution_id == execution_id))
        assert row is not None
        session.expunge(row)
        return row


def run_tick(settings: Settings, client: RecordingDagsterClient) -> dict[str, int]:
    with session_scope(get_engine(settings.database_url)) as session:
        return tick(session, client, settings=settings)


def platform_events(instance: DagsterInstance, run_id: str, kind: str) -> list[dict[str, Any]]:
    """The data of the platform events of `kind` in a run's Dagster event log."""
    found = []
    for record in instance.get_records_for_run(
        run_id, of_type=DagsterEventType.ENGINE_EVENT
    ).records:
        event = record.event_log_entry.dagster_event
        metadata = event.engine_event_data.metadata if event is not None else {}
        if (kind_value := metadata.get(EVENT_KIND_METADATA)) and kind_value.value == kind:
            data = metadata[EVENT_DATA_METADATA].value
            assert isinstance(data, dict)
            found.append(data)
    return found


def page_token(text: str) -> str:
    match = LINK.search(text)
    assert match is not None, text
    return match.group(1)


# -- notifications -------------------------------------------------------------------------------


def test_the_tick_emails_the_signed_link_to_the_approvers_once(
    platform_db: str,
    instance: DagsterInstance,
    client: RecordingDagsterClient,
    smtp: tuple[SmtpInbox, int],
) -> None:
    inbox, port = smtp
    settings = settings_for(platform_db, email=email_connection(port))
    execution_id = parked(
        settings, instance, review_flow(assignee=APPROVER, notify=[{"channel": "email"}])
    )
    assert run_tick(settings, client)["notified"] == 1
    assert run_tick(settings, client)["notified"] == 0  # claimed once: never sent twice
    [mail] = inbox.messages
    assert mail["to"] == [APPROVER]
    message = message_from_string(mail["data"], policy=policy.default)
    assert isinstance(message, EmailMessage)
    assert message["Subject"] == "Approval requested: Release"
    assert message["From"] == "flows@corp.eu"
    body = message.get_content().replace("\r\n", "\n")
    assert body.startswith("Ship v2?\n\nApprove or reject: https://flows.corp.eu/approve/")
    row = waitpoint(settings, execution_id)
    assert verify_token(SECRET, "approve", page_token(body)) == row.id
    notifications = row.notifications
    assert notifications is not None and notifications["state"] == "sent"
    [attempt] = notifications["attempts"]
    assert attempt | {"at": None} == {
        "channel": "email",
        "to": APPROVER,
        "attempt": 1,
        "ok": True,
        "error": None,
        "at": None,
    }
    assert platform_events(instance, row.run_id, "approval.notified") == [
        {"waitpoint_id": row.id, "channel": "email", "to": APPROVER, "ok": True, "error": None}
    ]


def test_slack_gets_the_link_and_a_workflow_webhook_url_only_the_api_url(
    platform_db: str, instance: DagsterInstance, client: RecordingDagsterClient, echo: EchoServer
) -> None:
    settings = settings_for(platform_db, slack={"url": echo.url("/services/T0/B0/secret-hook")})
    targets = [
        {"channel": "slack", "to": "#releases"},
        {"channel": "webhook", "url": echo.url("/hooks/approvals")},
    ]
    execution_id = parked(settings, instance, review_flow(notify=targets))
    run_tick(settings, client)
    row = waitpoint(settings, execution_id)
    slack, hook = echo.requests
    assert (slack.method, slack.path) == ("POST", "/services/T0/B0/secret-hook")
    text = json.loads(slack.body)["text"]
    assert text.startswith("*Approval requested: Release*\nShip v2?\n<https://flows.corp.eu/")
    assert text.endswith("|Approve or reject>")
    assert verify_token(SECRET, "approve", page_token(text)) == row.id
    sent = json.loads(hook.body)
    assert hook.path == "/hooks/approvals"
    assert sent["approvalUrl"] == f"https://flows.corp.eu/approvals/{row.id}"
    assert "pageUrl" not in sent and "/approve/" not in hook.text  # not the workflow's to hold
    assert (sent["event"], sent["executionId"], sent["prompt"]) == (
        "approval.requested",
        execution_id,
        "Ship v2?",
    )
    assert row.notifications is not None and row.notifications["state"] == "sent"
    shown = [(a["channel"], a["to"], a["ok"]) for a in row.notifications["attempts"]]
    assert shown == [("slack", "#releases", True), ("webhook", echo.url("/hooks/approvals"), True)]


def test_a_failing_channel_is_retried_with_backoff_and_recorded(
    platform_db: str, instance: DagsterInstance, client: RecordingDagsterClient, echo: EchoServer
) -> None:
    settings = settings_for(platform_db, slack={"url": echo.url("/status/503")})
    execution_id = parked(settings, instance, review_flow(notify="slack"))
    waits: list[float] = []
    with session_scope(get_engine(settings.database_url)) as session:
        assert notify_approvers(session, client, settings, sleep=waits.append) == 1
    assert len(echo.requests) == NOTIFY_RETRY.max_attempts == 3
    assert 0.3 <= waits[0] <= 0.7 and 0.7 <= waits[1] <= 1.3  # 0.5 s, 1 s (±25 %)
    row = waitpoint(settings, execution_id)
    assert row.notifications is not None and row.notifications["state"] == "failed"
    attempts = row.notifications["attempts"]
    assert [(a["attempt"], a["ok"]) for a in attempts] == [(1, False), (2, False), (3, False)]
    assert attempts[-1]["error"] == "the connection's URL answered 503"
    [event] = platform_events(instance, row.run_id, "approval.notified")
    assert event == {
        "waitpoint_id": row.id,
        "channel": "slack",
        "to": "slack",
        "ok": False,
        "error": "the connection's URL answered 503",
    }


def test_the_link_is_not_emailed_to_someone_who_may_not_decide(
    platform_db: str,
    instance: DagsterInstance,
    client: RecordingDagsterClient,
    smtp: tuple[SmtpInbox, int],
) -> None:
    inbox, port = smtp
    settings = settings_for(platform_db, email=email_connection(port))
    review = review_flow(approvers=[APPROVER], notify=["mallory@elsewhere.eu", "email"])
    execution_id = parked(settings, instance, review)
    run_tick(settings, client)
    assert [m["to"] for m in inbox.messages] == [[APPROVER]]  # the approvers; not mallory
    row = waitpoint(settings, execution_id)
    assert row.notifications is not None and row.notifications["state"] == "partial"
    refused, sent = row.notifications["attempts"]
    assert (refused["to"], refused["ok"], sent["to"], sent["ok"]) == (
        "mallory@elsewhere.eu",
        False,
        APPROVER,
        True,
    )
    assert refused["error"].startswith("mallory@elsewhere.eu may not decide this review")


def test_an_approval_without_notify_is_claimed_quietly(
    platform_db: str, instance: DagsterInstance, client: RecordingDagsterClient
) -> None:
    settings = settings_for(platform_db)
    execution_id = parked(settings, instance, review_flow())
    assert run_tick(settings, client)["notified"] == 0
    row = waitpoint(settings, execution_id)
    assert row.notifications is not None and row.notifications["state"] == "none"
    assert platform_events(instance, row.run_id, "approval.notified") == []


# -- expiry --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("on_timeout", "decision", "approved"),
    [("reject", "reject", False), ("approve", "approve", True), ("route", "timeout", False)],
)
def test_expiry_runs_the_configured_action_and_logs_it(
    platform_db: str,
    instance: DagsterInstance,
    client: RecordingDagsterClient,
    on_timeout: str,
    decision: str,
    approved: bool,
) -> None:
    settings = settings_for(platform_db)
    execution_id = parked(settings, instance, review_flow(timeout=3_600_000, onTimeout=on_timeout))
    with session_scope(get_engine(settings.database_url)) as session:
        session.execute(
            update(Waitpoint)
            .where(Waitpoint.execution_id == execution_id)
            .values(expires_at=utcnow() - timedelta(seconds=1))
        )
    counts = run_tick(settings, client)
    assert (counts["expired"], counts["resumed"]) == (1, 1)
    row = waitpoint(settings, execution_id)
    assert row.resolution is not None and row.resolution["by"] == "expiry"
    [event] = platform_events(instance, row.run_id, "waitpoint.expired")
    assert event["waitpoint_id"] == row.id and event["kind"] == "approval"
    config = HumanReviewConfig(output_variable="approval")
    output = approval_output(_ctx(config), config, row.resolution)
    assert (output["decision"], output["approved"], output["decidedBy"]) == (
        decision,
        approved,
        "expiry",
    )


# -- the output ----------------------------------------------------------------------------------


def _ctx(config: HumanReviewConfig) -> NodeContext:
    return NodeContext(
        node_id="review",
        node_type="humanReview",
        label="Review",
        config=config,
        state=ExecutionState.start({}),
    )


@pytest.mark.parametrize(
    ("input_type", "resolution", "response"),
    [
        ("text", {"decision": "approve"}, None),
        ("boolean", {"decision": "approve", "value": True}, True),
        ("number", {"decision": "respond", "value": 3}, 3),
        ("json", {"decision": "reject", "comment": "no"}, None),
    ],
)
def test_the_output_has_one_shape_whatever_the_response_type(
    input_type: str, resolution: dict[str, Any], response: Any
) -> None:
    config = HumanReviewConfig(input_type=input_type, output_variable="approval")
    at = {"by": APPROVER, "at": "2030-01-01T00:00:00+00:00"}
    output = approval_output(_ctx(config), config, {**resolution, **at})
    shape = {
        "approved": resolution["decision"] != "reject",
        "decision": resolution["decision"],
        "response": response,
        "comment": resolution.get("comment"),
        "decidedBy": APPROVER,
        "decidedAt": "2030-01-01T00:00:00+00:00",
    }
    assert output == {**shape, "approval": shape}


def test_deploy_refuses_an_unknown_expiry_action_or_notify_channel() -> None:
    definition = review_flow(onTimeout="shrug", notify=[{"channel": "pager"}])
    problems = {
        (p.node_id, p.field): p.message for p in validate(definition) if p.severity == "error"
    }
    assert problems == {
        ("review", "onTimeout"): (
            "onTimeout 'shrug' is not one of reject, approve, default, fail, timeout"
        ),
        ("review", "notify"): "notify channel 'pager' is not one of email, slack, webhook",
    }


# -- the examples (workflows/examples, the README's walkthrough) ----------------------------------

EXAMPLES = Path(__file__).resolve().parent.parent / "workflows" / "examples"


@pytest.mark.parametrize("name", ["approval.json", "wait-until.json", "callback.json"])
def test_the_waitpoint_examples_validate_and_compile(name: str) -> None:
    definition = json.loads((EXAMPLES / name).read_text())
    assert validate(definition) == []
    assert build_job(definition).job is not None


def test_the_approval_example_emails_its_owner_the_link(
    platform_db: str,
    instance: DagsterInstance,
    client: RecordingDagsterClient,
    smtp: tuple[SmtpInbox, int],
) -> None:
    inbox, port = smtp
    settings = settings_for(platform_db, email=email_connection(port))
    definition = json.loads((EXAMPLES / "approval.json").read_text())
    execution_id = parked(settings, instance, definition)
    run_tick(settings, client)
    [mail] = inbox.messages
    assert mail["to"] == ["owner@corp.eu"]  # no approvers named: the owner decides
    body = message_from_string(mail["data"], policy=policy.default)
    assert isinstance(body, EmailMessage)
    assert body["Subject"] == "Approval requested: Manager Approval"
    row = waitpoint(settings, execution_id)
    assert verify_token(SECRET, "approve", page_token(body.get_content())) == row.id
    assert row.spec["prompt"] == "Ann asks for 420 EUR: conference ticket. Approve?"
