"""Alert rules, evaluated and notified (control/alerts.py), and the `alert_evaluator` sensor.

Evaluation reads real rows on SQLite and PostgreSQL (the window edges are datetime comparisons
in SQL); live states read real Dagster runs on a test instance. Notifications go through the
real connectors to local servers: an EchoServer standing in for a webhook receiver and Slack,
and a real SMTP server (aiosmtpd). The sensor test runs a real failure sequence: executions of
one workflow run in process, failing then succeeding, each outcome written back by the status
sensor as in production, and the alert sensor ticks between them.
"""

import json
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from dagster import (
    DagsterEventType,
    DagsterInstance,
    DagsterRun,
    DagsterRunStatus,
    SkipReason,
    build_run_status_sensor_context,
    build_sensor_context,
)
from sqlalchemy import select, update

from flowmaestro_dagster.adapter.ops import INPUTS_RESOURCE, SERVICES_RESOURCE
from flowmaestro_dagster.adapter.resources import (
    static_services_resource,
    workflow_inputs_resource,
)
from flowmaestro_dagster.control.alerts import (
    MAX_NOTIFY_ATTEMPTS,
    AlertRuleCreate,
    Finding,
    measure,
    notify_alerts,
    record,
)
from flowmaestro_dagster.control.alerts import create_rule as create_alert_rule
from flowmaestro_dagster.control.executions import run_tags, start_execution, version_row
from flowmaestro_dagster.control.requests import ExecutionCreate
from flowmaestro_dagster.engines.jobs import build_job
from flowmaestro_dagster.engines.local import execute_workflow
from flowmaestro_dagster.orchestration.sensors import (
    make_alert_sensor,
    make_execution_status_sensor,
)
from flowmaestro_dagster.settings import HttpSettings, Settings
from flowmaestro_dagster.store.db import get_engine, session_scope
from flowmaestro_dagster.store.models import (
    AlertRule,
    AlertState,
    Execution,
    User,
    Waitpoint,
    Workflow,
    utcnow,
)
from flowmaestro_dagster.store.waitpoints import DatabaseWaitpointStore
from flowmaestro_dagster.tags import EXECUTION_TAG
from flowmaestro_dagster.testing import EchoServer
from flowmaestro_dagster.testing.recording_client import RecordingDagsterClient
from tests.builders import chain, node
from tests.conftest import SmtpInbox
from tests.deploy import deploy, fresh_user
from tests.services import database_from, migrated_template

HOUR = 3600


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def db_template(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, str]]:
    kind = request.param
    with migrated_template(kind, tmp_path_factory.mktemp(f"alerts-{kind}")) as template:
        yield kind, template


@pytest.fixture
def database_url(db_template: tuple[str, str], tmp_path: Path) -> Iterator[str]:
    """A migrated platform database of this test alone, on SQLite and on PostgreSQL."""
    kind, template = db_template
    with database_from(kind, template, tmp_path) as url:
        yield url


def settings_for(database_url: str, **connections: Any) -> Settings:
    return Settings(
        database_url=database_url,
        wait_sleep_threshold_seconds=0,
        secret_key="alerts-test-secret-0123456789",
        callback_signing_secret="alerts-test-signing-0123456789",
        public_api_url="https://flows.corp.eu",
        http=HttpSettings(allow_loopback=True),
        connections=connections,
    )


def parse_flow() -> dict[str, Any]:
    """in → parse `raw` as JSON → out: fails (for good) on input that is not JSON."""
    return chain(
        node("in", "input", inputName="raw"),
        node("parse", "transform", operation="parseJSON", inputData="{{raw}}", outputVariable="data"),
        node("out", "output", outputName="said", value="{{data}}"),
        name="Parser",
    )  # fmt: skip


# -- rows ----------------------------------------------------------------------------------------


class Platform:
    """A user with deployed workflows, and executions of them as rows (statuses set by hand)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.engine = get_engine(settings.database_url)
        with session_scope(self.engine) as session:
            self.user_id = fresh_user(session).id
            session.commit()

    def user(self, session: Any) -> User:
        user = session.get(User, self.user_id)
        assert user is not None
        return user

    def workflow(self, name: str = "Parser", *, user_id: str | None = None) -> str:
        with session_scope(self.engine) as session:
            owner = session.get(User, user_id or self.user_id)
            assert owner is not None
            workflow_id = deploy(session, owner, parse_flow(), name=name)
            session.commit()
            return workflow_id

    def execution(self, workflow_id: str, **values: Any) -> str:
        with session_scope(self.engine) as session:
            workflow = session.get(Workflow, workflow_id)
            assert workflow is not None
            owner = session.get(User, workflow.owner_id)
            assert owner is not None
            execution, _ = start_execution(
                session,
                user=owner,
                workflow_id=workflow_id,
                body=ExecutionCreate(inputs={"raw": "{}"}),
                idempotency_key=None,
                default_ttl_seconds=3600,
                shards=1,
            )
            for key, value in values.items():
                setattr(execution, key, value)
            session.commit()
            return execution.id

    def finished(self, workflow_id: str, status: str, at: Any) -> str:
        return self.execution(workflow_id, status=status, finished_at=at)

    def rule(self, **fields: Any) -> str:
        body = AlertRuleCreate.model_validate(
            {"name": "r", "channel": {"type": "webhook", "connection": "ops"}, **fields}
        )
        with session_scope(self.engine) as session:
            return create_alert_rule(
                session, user=self.user(session), settings=self.settings, body=body
            ).id

    def measure(self, rule_id: str, *, now: Any, client: Any = None) -> list[Finding]:
        with session_scope(self.engine) as session:
            rule = session.get(AlertRule, rule_id)
            assert rule is not None
            return measure(session, rule, now=now, client=client)

    def record(self, rule_id: str, findings: list[Finding], *, now: Any) -> tuple[int, int]:
        with session_scope(self.engine) as session:
            rule = session.get(AlertRule, rule_id)
            assert rule is not None
            return record(session, rule, findings, now=now)

    def states(self) -> list[AlertState]:
        with session_scope(self.engine) as session:
            return list(session.scalars(select(AlertState).order_by(AlertState.subject)))


@pytest.fixture
def echo() -> Iterator[EchoServer]:
    with EchoServer() as server:
        yield server


@pytest.fixture
def platform(database_url: str, echo: EchoServer) -> Platform:
    return Platform(settings_for(database_url, ops={"url": echo.url("/hooks/ops")}))


# -- failure_rate --------------------------------------------------------------------------------


def test_failure_rate_counts_executions_finished_inside_the_window_edges_included(
    platform: Platform,
) -> None:
    workflow_id = platform.workflow("Nightly")
    now = utcnow().replace(microsecond=0)
    rule_id = platform.rule(metric="failure_rate", window_seconds=HOUR, threshold=0.5)
    platform.finished(workflow_id, "failed", now - timedelta(seconds=HOUR))  # on the edge: in
    platform.finished(workflow_id, "succeeded", now - timedelta(seconds=HOUR + 1))  # out
    platform.finished(workflow_id, "succeeded", now + timedelta(seconds=1))  # not yet: out
    platform.finished(workflow_id, "cancelled", now - timedelta(seconds=10))  # not counted

    [finding] = platform.measure(rule_id, now=now)

    assert (finding.subject, finding.value, finding.workflow_id) == (
        f"workflow:{workflow_id}",
        1.0,
        workflow_id,
    )
    assert finding.summary == (
        "1 of 1 executions of workflow 'Nightly' failed in the last 60 min (100%, the limit is 50%)"
    )
    # One second later the failure leaves the window: nothing finished in it.
    assert platform.measure(rule_id, now=now + timedelta(seconds=1)) == []


def test_failure_rate_waits_for_min_executions_and_fires_at_the_threshold(
    platform: Platform,
) -> None:
    workflow_id = platform.workflow()
    now = utcnow()
    rule_id = platform.rule(
        metric="failure_rate", window_seconds=HOUR, threshold=0.5, min_executions=3
    )
    platform.finished(workflow_id, "failed", now - timedelta(minutes=5))
    platform.finished(workflow_id, "failed", now - timedelta(minutes=4))
    assert platform.measure(rule_id, now=now) == []  # 2 finished, 3 needed
    platform.finished(workflow_id, "succeeded", now - timedelta(minutes=3))
    [finding] = platform.measure(rule_id, now=now)
    assert finding.value == pytest.approx(2 / 3)
    platform.finished(workflow_id, "succeeded", now - timedelta(minutes=2))
    [at_threshold] = platform.measure(rule_id, now=now)  # 2 of 4: 50% fires
    assert at_threshold.value == 0.5
    platform.finished(workflow_id, "succeeded", now - timedelta(minutes=1))
    assert platform.measure(rule_id, now=now) == []  # 2 of 5


def test_a_rule_for_every_workflow_has_a_subject_per_workflow_of_its_owner_only(
    platform: Platform,
) -> None:
    now = utcnow()
    first, second = platform.workflow("First"), platform.workflow("Second")
    with session_scope(platform.engine) as session:
        stranger = fresh_user(session).id
        session.commit()
    theirs = platform.workflow("Theirs", user_id=stranger)
    for workflow_id in (first, second, theirs):
        platform.finished(workflow_id, "failed", now - timedelta(minutes=1))
    every = platform.rule(metric="failure_rate", window_seconds=HOUR)
    one = platform.rule(metric="failure_rate", window_seconds=HOUR, workflow_id=second)

    assert sorted(f.subject for f in platform.measure(every, now=now)) == sorted(
        [f"workflow:{first}", f"workflow:{second}"]
    )
    assert [f.subject for f in platform.measure(one, now=now)] == [f"workflow:{second}"]


# -- execution_stuck, queue_age, approval_wait ---------------------------------------------------


def started_run(instance: DagsterInstance, execution_id: str) -> None:
    """A STARTED run of the execution in Dagster's storage (its row still says queued)."""
    run = DagsterRun(
        job_name="crawl",
        run_id=f"run-{execution_id}",
        tags={EXECUTION_TAG: execution_id},
        status=DagsterRunStatus.STARTED,
    )
    instance.add_run(run)


def test_stuck_and_queue_age_read_the_live_state_from_the_runs(
    platform: Platform, instance: DagsterInstance
) -> None:
    client = RecordingDagsterClient(instance)
    workflow_id = platform.workflow("Crawler")
    running = platform.execution(workflow_id)  # its row says queued; its run has started
    started_run(instance, running)
    queued = platform.execution(workflow_id, queue="ai-workflows")
    stuck = platform.rule(metric="execution_stuck", state="running", window_seconds=HOUR)
    aged = platform.rule(metric="queue_age", window_seconds=HOUR)
    later = utcnow() + timedelta(hours=2)

    [finding] = platform.measure(stuck, now=later, client=client)
    assert finding.subject == f"workflow:{workflow_id}"
    assert finding.details["executions"] == [running]
    assert finding.summary.startswith(
        "1 execution of workflow 'Crawler' has been running longer than 60 min (the oldest 2"
    )
    [queue] = platform.measure(aged, now=later, client=client)
    assert (queue.subject, queue.details["executions"]) == ("queue:ai-workflows", [queued])
    # Not long enough yet; and without the runs the rows say both are queued.
    assert platform.measure(stuck, now=utcnow() + timedelta(minutes=30), client=client) == []
    assert platform.measure(stuck, now=later) == []
    assert sorted(f.subject for f in platform.measure(aged, now=later)) == [
        "queue:ai-workflows",
        "queue:default",
    ]


def test_waiting_and_approval_wait_fire_on_old_pending_waitpoints_only(
    platform: Platform,
) -> None:
    workflow_id = platform.workflow("Release")
    now = utcnow()
    execution_id = platform.execution(
        workflow_id, status="waiting", created_at=now - timedelta(hours=3)
    )
    with session_scope(platform.engine) as session:
        for node_id, kind, age, status in [
            ("review", "approval", 2 * HOUR, "pending"),
            ("fresh", "approval", 60, "pending"),
            ("done", "approval", 3 * HOUR, "resolved"),
        ]:
            session.add(
                Waitpoint(execution_id=execution_id, node_id=node_id, step_key=node_id,
                          run_id="r", kind=kind, status=status,
                          created_at=now - timedelta(seconds=age))
            )  # fmt: skip
    approvals = platform.rule(metric="approval_wait", window_seconds=HOUR)
    waiting = platform.rule(metric="execution_stuck", state="waiting", window_seconds=HOUR)

    [finding] = platform.measure(approvals, now=now)
    assert finding.details["count"] == 1 and finding.value == pytest.approx(2 * HOUR, abs=2)
    assert finding.summary.startswith("1 approval of workflow 'Release' has waited longer")
    [parked] = platform.measure(waiting, now=now)
    assert parked.details["executions"] == [execution_id]
    with session_scope(platform.engine) as session:
        session.execute(update(Waitpoint).where(Waitpoint.node_id == "review").values(status="resolved"))  # fmt: skip
    assert platform.measure(approvals, now=now) == []


# -- firing and resolving, once each -------------------------------------------------------------


def finding(subject: str = "workflow:w", value: float = 1.0) -> Finding:
    return Finding(subject=subject, label="workflow 'W'", value=value, summary=f"at {value}")


def test_a_subject_fires_once_while_found_and_resolves_once_when_it_clears(
    platform: Platform,
) -> None:
    rule_id = platform.rule(metric="failure_rate", window_seconds=HOUR)
    now = utcnow()
    assert platform.record(rule_id, [finding()], now=now) == (1, 0)
    assert platform.record(rule_id, [finding(value=0.9)], now=now) == (0, 0)  # still firing
    [state] = platform.states()
    assert (state.status, state.value, state.summary) == ("firing", 0.9, "at 0.9")
    assert platform.record(rule_id, [], now=now) == (0, 1)
    assert platform.record(rule_id, [], now=now) == (0, 0)
    assert platform.record(rule_id, [finding()], now=now) == (1, 0)  # fires again
    assert platform.record(rule_id, [finding(), finding("workflow:x")], now=now) == (1, 0)
    assert [(s.subject, s.status) for s in platform.states()] == [
        ("workflow:w", "firing"),
        ("workflow:x", "firing"),
    ]


def test_each_transition_is_notified_once_and_an_unheard_firing_is_not_resolved(
    platform: Platform, echo: EchoServer
) -> None:
    rule_id = platform.rule(name="Parser failing", metric="failure_rate", window_seconds=HOUR)
    now = utcnow()

    def notify() -> tuple[int, int]:
        with session_scope(platform.engine) as session:
            return notify_alerts(session, platform.settings, now=utcnow())

    platform.record(rule_id, [finding()], now=now)
    assert notify() == (1, 0)
    assert notify() == (0, 0)
    platform.record(rule_id, [], now=now)
    assert notify() == (1, 0)
    events = [json.loads(r.body) for r in echo.requests]
    assert [(e["event"], e["rule"], e["subject"]) for e in events] == [
        ("alert.firing", "Parser failing", "workflow:w"),
        ("alert.resolved", "Parser failing", "workflow:w"),
    ]
    assert events[0]["text"].startswith("FIRING: Parser failing: workflow 'W'\nat 1.0\n")
    assert events[1]["text"].startswith("RESOLVED: Parser failing: workflow 'W'\nBack within")
    # Fires and clears before a tick could tell anyone: nothing to say.
    platform.record(rule_id, [finding("workflow:x")], now=now)
    platform.record(rule_id, [], now=now)
    assert notify() == (0, 0)
    assert len(echo.requests) == 2


def test_a_failed_send_is_retried_on_later_ticks_then_given_up(
    platform: Platform, echo: EchoServer
) -> None:
    rule_id = platform.rule(metric="failure_rate", window_seconds=HOUR)
    with session_scope(platform.engine) as session:
        session.execute(update(AlertRule).values(channel={"type": "webhook", "connection": "down"}))
    settings = settings_for(
        platform.settings.database_url,
        ops={"url": echo.url("/hooks/ops")},
        down={"url": echo.url("/status/503")},
    )
    platform.record(rule_id, [finding()], now=utcnow())
    for _ in range(MAX_NOTIFY_ATTEMPTS + 2):
        with session_scope(platform.engine) as session:
            notify_alerts(session, settings, now=utcnow())
    assert len(echo.requests) == MAX_NOTIFY_ATTEMPTS
    [state] = platform.states()
    assert (state.notified_status, state.notify_attempts) == (None, MAX_NOTIFY_ATTEMPTS)
    assert state.notify_error == "the connection's URL answered 503"


def test_an_email_channel_mails_the_firing_and_the_resolve(
    database_url: str, smtp: tuple[SmtpInbox, int]
) -> None:
    inbox, port = smtp
    email = {
        "host": "127.0.0.1",
        "port": port,
        "security": "none",
        "from_address": "alerts@corp.eu",
    }
    platform = Platform(settings_for(database_url, email=email))
    rule_id = platform.rule(
        name="Parser failing",
        metric="failure_rate",
        window_seconds=HOUR,
        channel={"type": "email", "to": ["Ops <ops@corp.eu>"]},
    )
    for found in ([finding()], []):
        platform.record(rule_id, found, now=utcnow())
        with session_scope(platform.engine) as session:
            assert notify_alerts(session, platform.settings, now=utcnow()) == (1, 0)
    firing, resolved = (message["data"] for message in inbox.messages)
    assert "Subject: [FlowMaestro] FIRING: Parser failing: workflow 'W'" in firing
    assert "To: ops@corp.eu" in firing
    assert "Subject: [FlowMaestro] RESOLVED: Parser failing: workflow 'W'" in resolved


# -- the sensor, on a real failure sequence ------------------------------------------------------


def run_execution(
    settings: Settings, instance: DagsterInstance, client: RecordingDagsterClient, workflow_id: str,
    raw: str,
) -> str:  # fmt: skip
    """Submit, run in process as a run worker does, and let the status sensor write back the
    outcome, as in production; the execution's status."""
    engine = get_engine(settings.database_url)
    with session_scope(engine) as session:
        owner = session.scalar(select(User).join(AlertRule, AlertRule.owner_id == User.id))
        assert owner is not None
        execution, _ = start_execution(
            session, user=owner, workflow_id=workflow_id, body=ExecutionCreate(inputs={"raw": raw}),
            idempotency_key=None, default_ttl_seconds=3600, shards=1,
        )  # fmt: skip
        execution_id, tags = execution.id, run_tags(execution)
        version = version_row(session, execution)
        assert version is not None
        job_name, definition = execution.job_name, dict(version.definition)
    store = DatabaseWaitpointStore(settings.database_url, sleep_threshold_seconds=0)
    compiled = build_job(
        definition,
        job_name=job_name,
        resource_defs={
            INPUTS_RESOURCE: workflow_inputs_resource,
            SERVICES_RESOURCE: static_services_resource(settings, waitpoints=store),
        },
    )
    result = execute_workflow(
        compiled, {"raw": raw}, instance=instance, tags=tags, log_level="ERROR"
    )
    with session_scope(engine) as session:
        session.execute(
            update(Execution).where(Execution.id == execution_id)
            .values(run_id=result.run_id, latest_run_id=result.run_id, launched_at=utcnow())
        )  # fmt: skip
    failed = result.status == "failed"
    status = DagsterRunStatus.FAILURE if failed else DagsterRunStatus.SUCCESS
    event_type = DagsterEventType.RUN_FAILURE if failed else DagsterEventType.RUN_SUCCESS
    sensor = make_execution_status_sensor(
        status, settings=settings, client_factory=lambda _: client
    )
    run = instance.get_run_by_id(result.run_id)
    [event_record] = instance.get_records_for_run(result.run_id, of_type=event_type).records
    event = event_record.event_log_entry.dagster_event
    assert run is not None and event is not None
    sensor(build_run_status_sensor_context(
        sensor_name=sensor.name, dagster_event=event, dagster_instance=instance, dagster_run=run
    ))  # fmt: skip
    with session_scope(engine) as session:
        row = session.get(Execution, execution_id)
        assert row is not None
        return row.status


def test_alert_fires_once_and_resolves_once_on_a_real_failure_sequence(
    platform_db: str, instance: DagsterInstance, echo: EchoServer
) -> None:
    settings = settings_for(platform_db, ops={"url": echo.url("/hooks/ops")})
    client = RecordingDagsterClient(instance)
    platform = Platform(settings)
    workflow_id = platform.workflow("Parser")
    platform.rule(
        name="Parser failing",
        metric="failure_rate",
        workflow_id=workflow_id,
        window_seconds=HOUR,
        threshold=0.5,
        min_executions=2,
    )
    sensor = make_alert_sensor(settings=settings, client_factory=lambda _: client)

    def alert_tick() -> str:
        result = sensor(build_sensor_context(instance=instance, sensor_name=sensor.name))
        assert isinstance(result, SkipReason)
        return str(result.skip_message)

    outcomes = []
    ticks = []
    for raw in ["{not json", "{not json", "{}", "{}", "{}"]:
        outcomes.append(run_execution(settings, instance, client, workflow_id, raw))
        ticks.append(alert_tick())
        ticks.append(alert_tick())  # a second look changes nothing
    assert outcomes == ["failed", "failed", "succeeded", "succeeded", "succeeded"]

    events = [json.loads(r.body) for r in echo.requests]
    assert [(r.method, r.path) for r in echo.requests] == [("POST", "/hooks/ops")] * 2
    assert [e["event"] for e in events] == ["alert.firing", "alert.resolved"]
    assert events[0]["summary"] == (
        "2 of 2 executions of workflow 'Parser' failed in the last 60 min (100%, the limit is 50%)"
    )
    assert (events[0]["workflowId"], events[0]["value"]) == (workflow_id, 1.0)
    assert ticks[2] == "rules 1, fired 1, resolved 0, errors 0, notified 1, failed 0, firing 1"
    assert ticks[3] == "rules 1, fired 0, resolved 0, errors 0, notified 0, failed 0, firing 1"
    assert ticks[8] == "rules 1, fired 0, resolved 1, errors 0, notified 1, failed 0, firing 0"
    [state] = platform.states()
    assert (state.status, state.notified_status) == ("resolved", "resolved")
