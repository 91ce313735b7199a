"""Queue controls on a real, idle Dagster instance (no daemon): pause and resume a queue,
change priorities, a user's own run limit — what the API writes (run tags, rows) and what
Dagster's own dequeue decision (`_get_runs_to_dequeue`) makes of it. The same controls on a
running `dagster dev`: test_queue_controls_e2e.py."""

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from dagster import DagsterInstance, DagsterRunStatus
from dagster._daemon.run_coordinator.queued_run_coordinator_daemon import (
    QueuedRunCoordinatorDaemon,
)
from fastapi.testclient import TestClient

from flowmaestro_api.settings import ApiSettings
from flowmaestro_dagster.control.queues import read_snapshot, simulate
from flowmaestro_dagster.tags import (
    EXECUTION_TAG,
    QUEUE_PAUSED_TAG,
    USER_TAG,
    WORKFLOW_ID_TAG,
    user_limit_tag,
)
from tests.api.conftest import GREETER, UNREACHABLE_DAGSTER, make_key
from tests.api.e2e import api_on, rendered_instance
from tests.api.test_queues_support import store_run

OPERATOR = "ops@example.com"


@pytest.fixture
def database_url(platform_db: str) -> str:
    return platform_db


@pytest.fixture
def settings(database_url: str) -> ApiSettings:
    return ApiSettings(
        _env_file=None,  # type: ignore[call-arg]
        database_url=database_url,
        dagster_graphql_url=UNREACHABLE_DAGSTER,
        graphql_timeout_seconds=1,
        launch_on_submit=False,
        operator_emails=OPERATOR,
        queue_limits={"batch": 5},
    )


@pytest.fixture
def instance(tmp_path: Path, settings: ApiSettings) -> Iterator[DagsterInstance]:
    """A Dagster instance configured as the API renders it (its queues and limits)."""
    configured = rendered_instance(tmp_path / "dagster", settings)
    yield configured
    configured.dispose()


@pytest.fixture
def client(settings: ApiSettings, instance: DagsterInstance) -> Iterator[TestClient]:
    with api_on(settings, instance) as test_client:
        yield test_client


@pytest.fixture
def operator(database_url: str) -> dict[str, str]:
    return make_key(database_url, OPERATOR)


def queued(instance: DagsterInstance, *, queue: str = "batch", **tags: str) -> str:
    return store_run(instance, {"flowmaestro/queue": queue, USER_TAG: "u1", **tags})


def tags_of(instance: DagsterInstance, run_id: str) -> dict[str, str]:
    run = instance.get_run_by_id(run_id)
    assert run is not None
    return dict(run.tags)


def dagster_picks(instance: DagsterInstance) -> list[str]:
    """What the daemon's next pass would launch (its own code, without launching)."""
    daemon = QueuedRunCoordinatorDaemon(interval_seconds=1)
    runs = daemon._get_runs_to_dequeue(
        instance, instance.get_concurrency_config(), fixed_iteration_time=None
    )
    return [run.run_id for run in runs]


def submitted(client: TestClient, auth: dict[str, str], **body: Any) -> tuple[str, str]:
    """(workflow id, execution id): an execution not handed to Dagster (launch_on_submit off)."""
    workflow_id = client.post("/workflows", json={"definition": GREETER}, headers=auth).json()["id"]
    assert client.post(f"/workflows/{workflow_id}/versions/1/deploy", headers=auth).is_success
    response = client.post(
        f"/workflows/{workflow_id}/executions", json={"inputs": {"who": "x"}, **body}, headers=auth
    )
    assert response.status_code == 201, response.text
    return workflow_id, response.json()["id"]


def test_pausing_a_queue_holds_its_queued_runs_and_resuming_releases_them(
    client: TestClient, instance: DagsterInstance, operator: dict[str, str]
) -> None:
    held = [queued(instance, **{USER_TAG: f"u{n}"}) for n in range(3)]
    elsewhere = queued(instance, queue="default", **{USER_TAG: "u9"})

    paused = client.post("/queues/batch/pause", headers=operator)
    assert paused.status_code == 200, paused.text
    body = paused.json()
    assert (body["paused"], body["paused_by"], body["queued_runs"]) == (True, OPERATOR, 3)
    assert all(tags_of(instance, r)[QUEUE_PAUSED_TAG] == "true" for r in held)
    assert dagster_picks(instance) == [elsewhere]  # Dagster itself keeps them queued
    verdict = simulate(read_snapshot(instance))[held[0]]
    assert verdict.reason == "queue 'batch' is paused (limit 0)"
    queues = {q["name"]: q for q in client.get("/queues", headers=operator).json()["queues"]}
    assert queues["batch"]["paused"] and queues["batch"]["queued"] == 3
    assert client.post("/queues/batch/pause", headers=operator).json()["paused"]  # idempotent

    resumed = client.post("/queues/batch/resume", headers=operator).json()
    assert (resumed["paused"], resumed["queued_runs"]) == (False, 3)
    assert all(QUEUE_PAUSED_TAG not in tags_of(instance, r) for r in held)
    assert sorted(dagster_picks(instance)) == sorted([*held, elsewhere])


def test_a_run_launched_into_a_paused_queue_is_tagged_paused(
    client: TestClient, operator: dict[str, str], database_url: str
) -> None:
    from flowmaestro_dagster.control.executions import run_tags
    from flowmaestro_dagster.store.db import get_engine, session_scope
    from flowmaestro_dagster.store.models import Execution

    _, execution_id = submitted(client, operator, queue="batch")
    client.post("/queues/batch/pause", headers=operator)
    with session_scope(get_engine(database_url)) as session:
        execution = session.get(Execution, execution_id)
        assert execution is not None
        assert run_tags(execution)[QUEUE_PAUSED_TAG] == "true"
    client.post("/queues/batch/resume", headers=operator)
    with session_scope(get_engine(database_url)) as session:
        execution = session.get(Execution, execution_id)
        assert execution is not None
        assert QUEUE_PAUSED_TAG not in run_tags(execution)


def test_pausing_an_unknown_queue_is_404_and_only_operators_may(
    client: TestClient, operator: dict[str, str], auth: dict[str, str]
) -> None:
    unknown = client.post("/queues/nowhere/pause", headers=operator)
    assert unknown.status_code == 404
    assert unknown.headers["content-type"].startswith("application/problem+json")
    assert "nowhere" in unknown.json()["detail"]
    assert client.post("/queues/nowhere/resume", headers=operator).status_code == 404
    refused = client.post("/queues/batch/pause", headers=auth)
    assert refused.status_code == 403
    assert refused.json()["code"] == "forbidden"
    assert client.post("/queues/default/pause", headers=operator).status_code == 200


def test_a_priority_change_re_tags_the_queued_run_and_dagster_takes_it_first(
    client: TestClient, instance: DagsterInstance, auth: dict[str, str]
) -> None:
    workflow_id, execution_id = submitted(client, auth)
    me = client.get("/queues", headers=auth).json()["users"][0]["user_id"]
    first = queued(instance, queue="default", **{USER_TAG: "someone"})
    mine = queued(
        instance,
        queue="default",
        **{EXECUTION_TAG: execution_id, WORKFLOW_ID_TAG: workflow_id, USER_TAG: me},
    )
    instance.add_run_tags(first, {"dagster/priority": "0"})
    instance.add_run_tags(mine, {"dagster/priority": "0"})
    assert simulate(read_snapshot(instance))[mine].position == 2

    changed = client.post(
        f"/executions/{execution_id}/priority", json={"priority": "high"}, headers=auth
    )
    assert changed.status_code == 200, changed.text
    assert changed.json() == {"priority": 10, "execution_ids": [execution_id], "queued_runs": 1}
    assert tags_of(instance, mine)["dagster/priority"] == "10"
    assert dagster_picks(instance)[0] == mine
    assert simulate(read_snapshot(instance))[mine].position == 1
    assert client.get(f"/executions/{execution_id}", headers=auth).json()["priority"] == 10

    by_workflow = client.post(
        f"/workflows/{workflow_id}/queued/priority", json={"priority": -5}, headers=auth
    ).json()
    assert (by_workflow["execution_ids"], by_workflow["queued_runs"]) == ([execution_id], 1)
    assert tags_of(instance, mine)["dagster/priority"] == "-5"
    by_user = client.post("/queues/users/me/priority", json={"priority": 7}, headers=auth).json()
    assert (by_user["execution_ids"], by_user["queued_runs"]) == ([execution_id], 1)
    assert tags_of(instance, first)["dagster/priority"] == "0"  # another user's: untouched


@pytest.mark.parametrize("priority", [1001, -1001, "urgent", True])
def test_a_priority_outside_the_range_is_422(
    client: TestClient, auth: dict[str, str], priority: Any
) -> None:
    workflow_id, execution_id = submitted(client, auth)
    for path in (
        f"/executions/{execution_id}/priority",
        f"/workflows/{workflow_id}/queued/priority",
        "/queues/users/me/priority",
    ):
        response = client.post(path, json={"priority": priority}, headers=auth)
        assert response.status_code == 422, (path, response.text)
        assert response.json()["problems"][0]["field"] == "priority"


def test_another_users_priorities_are_operators_only(
    client: TestClient, auth: dict[str, str], other_auth: dict[str, str], operator: dict[str, str]
) -> None:
    other = client.get("/queues", headers=other_auth).json()["users"][0]["user_id"]
    path = f"/queues/users/{other}/priority"
    assert client.post(path, json={"priority": 1}, headers=auth).status_code == 403
    assert client.post(path, json={"priority": 1}, headers=operator).status_code == 200


def test_a_users_own_limit_re_tags_their_runs_at_once(
    client: TestClient, instance: DagsterInstance, operator: dict[str, str], auth: dict[str, str]
) -> None:
    me = client.get("/queues", headers=auth).json()["users"][0]["user_id"]
    running = store_run(instance, {USER_TAG: me}, DagsterRunStatus.STARTED)
    waiting = [queued(instance, queue="default", **{USER_TAG: me}) for _ in range(2)]
    assert dagster_picks(instance) == waiting  # instance per-user limit 3: both fit

    answer = client.put(f"/queues/users/{me}/limit", json={"limit": 1}, headers=operator)
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"user_id": me, "limit": 1, "own_limit": True, "instance_limit": 3}
    assert all(tags_of(instance, r)[user_limit_tag(1)] == me for r in [running, *waiting])
    assert dagster_picks(instance) == []  # the running one fills the user's 1
    reason = simulate(read_snapshot(instance))[waiting[0]].reason
    assert reason == "per-user limit: this user has 1 run(s) in progress; the limit is 1"
    assert client.get("/queues", headers=auth).json()["users"][0]["limit"] == 1

    client.put(f"/queues/users/{me}/limit", json={"limit": 2}, headers=operator)
    assert user_limit_tag(1) not in tags_of(instance, running)
    assert dagster_picks(instance) == waiting[:1]

    back = client.put(f"/queues/users/{me}/limit", json={"limit": None}, headers=operator).json()
    assert (back["limit"], back["own_limit"]) == (3, False)
    assert not any(
        k.startswith(".dagster/flowmaestro/user_limit/") for k in tags_of(instance, running)
    )
    assert dagster_picks(instance) == waiting


def test_a_user_limit_at_or_above_the_instance_limit_is_422(
    client: TestClient, operator: dict[str, str], auth: dict[str, str]
) -> None:
    me = client.get("/queues", headers=auth).json()["users"][0]["user_id"]
    for limit in (3, 10, -1):
        response = client.put(f"/queues/users/{me}/limit", json={"limit": limit}, headers=operator)
        assert response.status_code == 422, response.text
        assert response.json()["problems"][0]["field"] == "limit"
    assert (
        client.put(f"/queues/users/{me}/limit", json={"limit": 1}, headers=auth).status_code == 403
    )
    missing = client.put("/queues/users/nobody/limit", json={"limit": 1}, headers=operator)
    assert missing.status_code == 404
