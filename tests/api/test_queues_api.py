"""The queue wiring of the API on a real, idle Dagster instance (no daemon, no webserver):
deploy and PATCH set the workflow's pool slots and re-tag its runs, GET /queues reads them back,
and an execution that is not in Dagster's queue yet says so."""

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from dagster import DagsterInstance
from fastapi.testclient import TestClient

from flowmaestro_api.settings import ApiSettings
from flowmaestro_dagster.tags import USER_TAG, USER_WORKFLOW_TAG, WORKFLOW_ID_TAG, workflow_pool
from tests.api.conftest import GREETER, UNREACHABLE_DAGSTER, patch_settings
from tests.api.e2e import api_on, rendered_instance
from tests.api.test_queues_support import store_run


@pytest.fixture
def database_url(platform_db: str) -> str:
    """A SQLite platform database of the test's own (conftest's `auth` reads it)."""
    return platform_db


@pytest.fixture
def settings(database_url: str) -> ApiSettings:
    return ApiSettings(
        _env_file=None,  # type: ignore[call-arg]
        database_url=database_url,
        dagster_graphql_url=UNREACHABLE_DAGSTER,
        graphql_timeout_seconds=1,
        launch_on_submit=False,
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


def deployed(client: TestClient, auth: dict[str, str], **settings: Any) -> str:
    body: dict[str, Any] = {"definition": GREETER, "settings": settings}
    workflow_id: str = client.post("/workflows", json=body, headers=auth).json()["id"]
    response = client.post(f"/workflows/{workflow_id}/versions/1/deploy", headers=auth)
    assert response.status_code == 200
    assert "Dagster does not enforce" not in (response.json()["detail"] or "")
    return workflow_id


def queued_run(instance: DagsterInstance, workflow_id: str, user: str) -> str:
    """A run as the API launches it, queued (nothing dequeues it: there is no daemon)."""
    return store_run(
        instance,
        {
            WORKFLOW_ID_TAG: workflow_id,
            USER_TAG: user,
            "flowmaestro/queue": "default",
        },
    )


def pools(instance: DagsterInstance) -> dict[str, int]:
    return {p.name: p.limit for p in instance.event_log_storage.get_pool_limits()}


def test_deploy_and_patch_set_the_workflow_pool(
    client: TestClient, instance: DagsterInstance, auth: dict[str, str]
) -> None:
    workflow_id = deployed(client, auth, concurrency_limit=2)
    pool = workflow_pool(workflow_id)
    assert pools(instance)[pool] == 2

    assert patch_settings(client, auth, workflow_id, concurrency_limit=5)["warnings"] == []
    assert pools(instance)[pool] == 5
    overview = client.get("/queues", headers=auth).json()
    (entry,) = overview["workflows"]
    assert (entry["concurrency_limit"], entry["applied_limit"]) == (5, 5)

    patch_settings(client, auth, workflow_id, concurrency_limit=None)
    assert pool not in pools(instance)
    (entry,) = client.get("/queues", headers=auth).json()["workflows"]
    assert (entry["concurrency_limit"], entry["applied_limit"]) == (None, None)


def test_the_one_at_a_time_switch_re_tags_queued_runs(
    client: TestClient, instance: DagsterInstance, auth: dict[str, str]
) -> None:
    workflow_id = deployed(client, auth)
    first, second = queued_run(instance, workflow_id, "u1"), queued_run(instance, workflow_id, "u2")

    def tag(run_id: str) -> str | None:
        run = instance.get_run_by_id(run_id)
        assert run is not None
        return run.tags.get(USER_WORKFLOW_TAG)

    patch_settings(client, auth, workflow_id, one_at_a_time_per_user=True)
    assert (tag(first), tag(second)) == (f"{workflow_id}:u1", f"{workflow_id}:u2")
    patch_settings(client, auth, workflow_id, one_at_a_time_per_user=False)
    assert (tag(first), tag(second)) == (f"off:{first}", f"off:{second}")


def test_get_queues_counts_queued_runs_per_queue_user_and_workflow(
    client: TestClient, instance: DagsterInstance, auth: dict[str, str]
) -> None:
    workflow_id = deployed(client, auth)
    me = client.get("/queues", headers=auth).json()["users"][0]["user_id"]
    queued_run(instance, workflow_id, me)
    queued_run(instance, "someone-elses-workflow", "someone-else")
    overview = client.get("/queues", headers=auth).json()
    assert (overview["max_concurrent_runs"], overview["queued"], overview["running"]) == (10, 2, 0)
    queues = {q["name"]: q for q in overview["queues"]}
    assert queues["default"] == {
        "name": "default",
        "limit": None,
        "paused": False,
        "queued": 2,
        "running": 0,
    }
    assert queues["ai-workflows"]["limit"] == 3
    assert overview["users"] == [
        {
            "user_id": me,
            "limit": 3,
            "queued": 1,
            "running": 0,
            "waiting": 0,
            "pending_launch": 0,
        }
    ]
    assert [(w["workflow_id"], w["queued"]) for w in overview["workflows"]] == [(workflow_id, 1)]


def test_an_execution_not_yet_in_dagsters_queue_says_so(
    client: TestClient, auth: dict[str, str]
) -> None:
    workflow_id = deployed(client, auth)
    created = client.post(
        f"/workflows/{workflow_id}/executions",
        json={"inputs": {"who": "x"}, "priority": "high", "queue": "ai-workflows"},
        headers=auth,
    ).json()
    assert created["queue_position"] is None
    assert created["queued_reason"] == (
        "submitted: not yet in Dagster's run queue (the launch is pending)"
    )
    assert client.get("/queues", headers=auth).json()["users"][0]["pending_launch"] == 1
