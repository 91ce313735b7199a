"""Request threads: few (FLOWMAESTRO_API_THREADS), and a deploy's wait on Dagster's reload
runs on threads of its own (FLOWMAESTRO_API_DAGSTER_THREADS), so it cannot take them all."""

import asyncio
import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
from anyio import to_thread
from fastapi.testclient import TestClient

from flowmaestro_api.main import create_app
from flowmaestro_api.settings import ApiSettings
from flowmaestro_dagster.control.client import DagsterClient
from tests.api.conftest import UNREACHABLE_DAGSTER
from tests.api.e2e import serving
from tests.api.test_event_stream import ScriptedDagster, started
from tests.builders import flow


class SlowReload(DagsterClient):
    """A Dagster whose code-location reload waits until the test lets it go."""

    def __init__(self) -> None:
        super().__init__(UNREACHABLE_DAGSTER)
        self.reloading = threading.Event()
        self.release = threading.Event()

    def reload_location(self, location: str, *, timeout: float = 120.0) -> None:
        self.reloading.set()
        assert self.release.wait(30), "the test never released the reload"

    def wait_for_job(self, location: str, job: str, *, timeout: float = 60.0) -> bool:
        return True

    @property
    def instance(self) -> Any:  # the deploy applies pool limits to it: nothing to apply here
        raise RuntimeError("no Dagster instance in this test")


def test_the_request_threads_are_the_setting(database_url: str) -> None:
    settings = ApiSettings(
        database_url=database_url, dagster_graphql_url=UNREACHABLE_DAGSTER, api_threads=3
    )
    with TestClient(create_app(settings)) as client:
        total = client.portal.call(_tokens)
    assert total == 3


async def _tokens() -> float:
    return to_thread.current_default_thread_limiter().total_tokens


def test_a_deploy_waiting_on_dagster_holds_no_request_thread(
    database_url: str, auth: dict[str, str]
) -> None:
    """With one request thread, a deploy stuck in Dagster's reload still lets /health and a
    workflow listing answer; the deploy answers once the reload ends."""
    settings = ApiSettings(
        database_url=database_url,
        dagster_graphql_url=UNREACHABLE_DAGSTER,
        api_threads=1,
        launch_on_submit=False,
    )
    dagster = SlowReload()
    with (
        TestClient(create_app(settings, dagster=dagster)) as client,
        ThreadPoolExecutor(max_workers=1) as pool,
    ):
        definition = flow([{"id": "in", "type": "input", "inputName": "x"}], [])
        workflow_id = client.post("/workflows", json={"definition": definition}, headers=auth)
        workflow_id = workflow_id.json()["id"]
        deploying = pool.submit(
            client.post, f"/workflows/{workflow_id}/versions/1/deploy", headers=auth
        )
        assert dagster.reloading.wait(30)
        health = client.get("/health")
        listing = client.get("/workflows", headers=auth)
        assert not deploying.done()  # still in the reload
        dagster.release.set()
        deployed = deploying.result(timeout=30)
    assert health.status_code == 200
    assert listing.status_code == 200 and listing.json()["items"][0]["id"] == workflow_id
    assert deployed.status_code == 200, deployed.text
    body = deployed.json()
    assert body["runnable"] is True and body["version"] == 1
    # The pool limits could not be applied without an instance: the deploy says so.
    assert "concurrency settings are stored" in (body["detail"] or "")


def test_requests_waiting_for_a_thread_hold_no_database_connection(
    database_url: str, auth: dict[str, str]
) -> None:
    """One request thread, 100 requests at once, each loading the caller's execution in one
    thread hop and answering in the next: none holds a database connection while it waits for
    the thread, so none waits for a connection a waiting request holds (the pool has 30; before,
    they ran out and requests answered 503 after its 30 s timeout)."""
    settings = ApiSettings(
        database_url=database_url,
        dagster_graphql_url=UNREACHABLE_DAGSTER,
        api_threads=1,
        launch_on_submit=False,
    )
    app, execution_id = started(settings, auth, ScriptedDagster("STARTED"))

    async def many(base: str) -> Counter[int]:
        limits = httpx.Limits(max_connections=100)
        async with httpx.AsyncClient(
            base_url=base, headers=auth, timeout=120, limits=limits
        ) as client:
            path = f"/executions/{execution_id}/checkpoints"
            answers = await asyncio.gather(*(client.get(path) for _ in range(100)))
        return Counter(answer.status_code for answer in answers)

    with serving(app) as base:
        statuses = asyncio.run(many(base))
    assert statuses == Counter({200: 100})
