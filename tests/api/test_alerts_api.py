"""`/alerts/rules` (CRUD) and `/alerts`, on SQLite and PostgreSQL: a rule that cannot work is a
422 naming the field, and nothing is stored."""

from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from flowmaestro_api.main import create_app
from flowmaestro_api.settings import ApiSettings
from flowmaestro_dagster.control.alerts import Finding, record
from flowmaestro_dagster.store.db import get_engine, session_scope
from flowmaestro_dagster.store.models import AlertRule, utcnow
from tests.api.conftest import UNREACHABLE_DAGSTER, deployed_workflow, row_counts


@pytest.fixture
def client(database_url: str) -> Iterator[TestClient]:
    settings = ApiSettings(
        database_url=database_url,
        dagster_graphql_url=UNREACHABLE_DAGSTER,
        graphql_timeout_seconds=2,
        connections={
            "email": {"host": "smtp.corp.eu", "port": 587},
            "slack": {"url": "https://hooks.slack.com/services/T/B/x"},
            "ops": {"url": "https://ops.corp.eu/hooks/alerts"},
            "nohost": {"connector": "smtp"},
            "empty": {},
        },
    )
    with TestClient(create_app(settings), raise_server_exceptions=False) as test_client:
        yield test_client


def rule(**fields: Any) -> dict[str, Any]:
    return {
        "name": "Failing",
        "metric": "failure_rate",
        "window_seconds": 600,
        "channel": {"type": "webhook", "connection": "ops"},
        **fields,
    }


def problem_fields(response: Any) -> list[str]:
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == "application/problem+json"
    return [p.get("field") for p in response.json()["problems"]]


def test_a_rule_is_created_read_listed_changed_and_deleted(
    client: TestClient, auth: dict[str, str]
) -> None:
    workflow_id = deployed_workflow(client, auth)
    created = client.post(
        "/alerts/rules",
        json=rule(workflow_id=workflow_id, threshold=0.25, min_executions=4),
        headers=auth,
    )
    assert created.status_code == 201, created.text
    body = created.json()
    assert {k: body[k] for k in ("metric", "workflow_id", "threshold", "min_executions")} == {
        "metric": "failure_rate",
        "workflow_id": workflow_id,
        "threshold": 0.25,
        "min_executions": 4,
    }
    assert (body["state"], body["enabled"]) == (None, True)
    assert body["channel"] == {"type": "webhook", "connection": "ops"}
    rule_id = body["id"]
    assert client.get(f"/alerts/rules/{rule_id}", headers=auth).json() == body
    assert [r["id"] for r in client.get("/alerts/rules", headers=auth).json()["items"]] == [rule_id]

    patched = client.patch(
        f"/alerts/rules/{rule_id}",
        json={"metric": "execution_stuck", "window_seconds": 3600, "enabled": False},
        headers=auth,
    )
    assert patched.status_code == 200, patched.text
    changed = patched.json()
    assert (changed["metric"], changed["window_seconds"], changed["enabled"]) == (
        "execution_stuck",
        3600,
        False,
    )
    # The failure rate's own fields went with its metric; the stuck state got its default.
    assert (changed["threshold"], changed["min_executions"], changed["state"]) == (
        None,
        None,
        "running",
    )
    assert changed["workflow_id"] == workflow_id and changed["name"] == "Failing"

    assert client.delete(f"/alerts/rules/{rule_id}", headers=auth).status_code == 204
    assert client.get(f"/alerts/rules/{rule_id}", headers=auth).status_code == 404
    assert client.get("/alerts/rules", headers=auth).json()["items"] == []


def test_channels_email_slack_and_defaults(client: TestClient, auth: dict[str, str]) -> None:
    email = client.post(
        "/alerts/rules",
        json=rule(metric="queue_age", channel={"type": "email", "to": ["Ops <ops@corp.eu>"]}),
        headers=auth,
    )
    assert email.status_code == 201, email.text
    assert email.json()["channel"] == {"type": "email", "to": ["ops@corp.eu"]}
    slack = client.post(
        "/alerts/rules",
        json=rule(metric="approval_wait", channel={"type": "slack"}),
        headers=auth,
    )
    assert slack.status_code == 201, slack.text


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"metric": "latency_p99"}, "metric"),
        ({"window_seconds": 0}, "window_seconds"),
        ({"window_seconds": -5}, "window_seconds"),
        ({"threshold": 0}, "threshold"),
        ({"threshold": 1.5}, "threshold"),
        ({"metric": "queue_age", "threshold": 0.5}, "threshold"),
        ({"metric": "approval_wait", "state": "running"}, "state"),
        ({"metric": "execution_stuck", "state": "sleeping"}, "state"),
        ({"channel": {"type": "webhook", "connection": "nowhere"}}, "channel.connection"),
        ({"channel": {"type": "webhook", "connection": "empty"}}, "channel.connection"),
        ({"channel": {"type": "email", "to": ["a@b.eu"], "connection": "nohost"}}, "channel.connection"),
        ({"channel": {"type": "slack", "connection": "ops-missing"}}, "channel.connection"),
        ({"channel": {"type": "email", "to": ["not-an-address"]}}, "channel.email.to"),
        ({"channel": {"type": "email", "to": []}}, "channel.email.to"),
        ({"channel": {"type": "pager", "connection": "ops"}}, "channel"),
        ({"workflow_id": "00000000-0000-0000-0000-000000000000"}, "workflow_id"),
    ],
)  # fmt: skip
def test_an_invalid_rule_is_a_422_naming_the_field_and_stores_nothing(
    client: TestClient,
    auth: dict[str, str],
    database_url: str,
    fields: dict[str, Any],
    field: str,
) -> None:
    before = row_counts(database_url)
    response = client.post("/alerts/rules", json=rule(**fields), headers=auth)
    assert field in problem_fields(response)
    assert row_counts(database_url) == before


def test_another_users_workflow_and_rules_are_not_yours(
    client: TestClient, auth: dict[str, str], other_auth: dict[str, str]
) -> None:
    theirs = deployed_workflow(client, other_auth)
    response = client.post("/alerts/rules", json=rule(workflow_id=theirs), headers=auth)
    assert problem_fields(response) == ["workflow_id"]
    rule_id = client.post("/alerts/rules", json=rule(), headers=other_auth).json()["id"]
    assert client.get(f"/alerts/rules/{rule_id}", headers=auth).status_code == 404
    assert client.patch(f"/alerts/rules/{rule_id}", json={}, headers=auth).status_code == 404
    assert client.delete(f"/alerts/rules/{rule_id}", headers=auth).status_code == 404
    assert client.get("/alerts/rules", headers=auth).json()["items"] == []


def test_a_patch_that_breaks_the_rule_is_a_422_and_changes_nothing(
    client: TestClient, auth: dict[str, str]
) -> None:
    created = client.post("/alerts/rules", json=rule(), headers=auth).json()
    path = f"/alerts/rules/{created['id']}"
    assert problem_fields(client.patch(path, json={"window_seconds": 0}, headers=auth)) == [
        "window_seconds"
    ]
    assert problem_fields(client.patch(path, json={"metric": None}, headers=auth)) == ["metric"]
    unknown = {"channel": {"type": "slack", "connection": "nowhere"}}
    assert problem_fields(client.patch(path, json=unknown, headers=auth)) == ["channel.connection"]
    stuck = {"metric": "queue_age", "min_executions": 3}
    assert problem_fields(client.patch(path, json=stuck, headers=auth)) == ["min_executions"]
    assert client.get(path, headers=auth).json() == created


def test_alerts_lists_firing_then_resolved_with_what_the_channel_heard(
    client: TestClient, auth: dict[str, str], other_auth: dict[str, str], database_url: str
) -> None:
    rule_id = client.post("/alerts/rules", json=rule(name="Mine"), headers=auth).json()["id"]
    client.post("/alerts/rules", json=rule(name="Theirs"), headers=other_auth)
    with session_scope(get_engine(database_url)) as session:
        for row in session.query(AlertRule).all():
            found = [
                Finding(subject="workflow:a", label="workflow 'A'", value=1.0, summary="a"),
                Finding(subject="workflow:b", label="workflow 'B'", value=0.5, summary="b"),
            ]
            record(session, row, found, now=utcnow())
            record(session, row, found[1:], now=utcnow())  # a resolves

    items = client.get("/alerts", headers=auth).json()["items"]
    assert [(a["rule"], a["subject"], a["status"]) for a in items] == [
        ("Mine", "workflow:b", "firing"),
        ("Mine", "workflow:a", "resolved"),
    ]
    assert items[0]["label"] == "workflow 'B'" and items[0]["notified_status"] is None
    firing = client.get("/alerts", params={"status": "firing", "rule_id": rule_id}, headers=auth)
    assert [a["subject"] for a in firing.json()["items"]] == ["workflow:b"]
    assert client.get("/alerts", params={"status": "paging"}, headers=auth).status_code == 422
