"""The triggers listing shows a schedule trigger's schedule: cron, timezone, policies, the
Dagster schedule's name and the next fire time (only while deployed)."""

from datetime import UTC, datetime, timedelta
from typing import Any

from fastapi.testclient import TestClient

from tests.api.conftest import deployed_workflow
from tests.builders import flow, node

SCHEDULED = flow(
    [
        node("hook", "trigger", triggerType="webhook"),
        node("nightly", "trigger", triggerType="cron", cron="30 2 * * *", timeZone="Asia/Tokyo"),
        node("out", "output", outputName="done", value="ok"),
    ],
    [("hook", "out"), ("nightly", "out")],
    name="Nightly Report",
)


def listing(client: TestClient, auth: dict[str, str], workflow_id: str) -> dict[str, Any]:
    response = client.get(f"/workflows/{workflow_id}/triggers", headers=auth)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def test_a_deployed_schedule_lists_its_next_fire_time(
    client: TestClient, auth: dict[str, str]
) -> None:
    workflow_id = deployed_workflow(client, auth, SCHEDULED)
    items = {t["id"]: t for t in listing(client, auth, workflow_id)["items"]}
    assert items["hook"]["schedule"] is None
    schedule = items["nightly"]["schedule"]
    assert schedule["cron"] == "30 2 * * *" and schedule["timezone"] == "Asia/Tokyo"
    assert (schedule["overlap"], schedule["missed_ticks"]) == ("skip", "run_once")
    assert schedule["dagster_schedule"] == f"nightly_report_{workflow_id[:8]}_schedule"

    fire = datetime.fromisoformat(schedule["next_fire_at"])
    now = datetime.now(UTC)
    assert now <= fire <= now + timedelta(days=1)
    assert fire.astimezone(UTC).strftime("%H:%M") == "17:30"  # 02:30 in Tokyo (UTC+9)


def test_an_archived_workflow_lists_its_schedule_without_a_next_fire_time(
    client: TestClient, auth: dict[str, str]
) -> None:
    workflow_id = deployed_workflow(client, auth, SCHEDULED)
    assert client.delete(f"/workflows/{workflow_id}", headers=auth).status_code == 204
    body = listing(client, auth, workflow_id)
    assert body["live"] is False
    (schedule,) = [t["schedule"] for t in body["items"] if t["schedule"]]
    assert schedule["cron"] == "30 2 * * *" and schedule["next_fire_at"] is None
