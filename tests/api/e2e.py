"""Helpers of the end-to-end API tests: a real Dagster stack behind a TestClient."""

import time
from collections.abc import Callable
from typing import Any

from fastapi.testclient import TestClient


def wait_for(predicate: Callable[[], Any], timeout: float = 120, interval: float = 0.25) -> Any:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"condition not met in {timeout} s (last: {last!r})")


def deploy(client: TestClient, auth: dict[str, str], definition: dict[str, Any]) -> str:
    """Create the workflow and deploy its first version; the workflow id."""
    created = client.post("/workflows", json={"definition": definition}, headers=auth)
    assert created.status_code == 201, created.text
    workflow_id: str = created.json()["id"]
    deployed = client.post(f"/workflows/{workflow_id}/versions/1/deploy", headers=auth)
    assert deployed.status_code == 200 and deployed.json()["runnable"], deployed.text
    return workflow_id


def start(
    client: TestClient, auth: dict[str, str], workflow_id: str, inputs: dict[str, Any]
) -> str:
    response = client.post(
        f"/workflows/{workflow_id}/executions", json={"inputs": inputs}, headers=auth
    )
    assert response.status_code == 201, response.text
    execution_id: str = response.json()["id"]
    return execution_id


def execution(client: TestClient, auth: dict[str, str], execution_id: str) -> dict[str, Any]:
    body: dict[str, Any] = client.get(f"/executions/{execution_id}", headers=auth).json()
    return body


def status_is(
    client: TestClient, auth: dict[str, str], execution_id: str, *statuses: str
) -> dict[str, Any]:
    """Wait until the execution has one of `statuses`; its body then."""

    def check() -> dict[str, Any] | None:
        body = execution(client, auth, execution_id)
        return body if body["status"] in statuses else None

    result: dict[str, Any] = wait_for(check)
    return result
