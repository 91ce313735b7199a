"""GET /executions/{id}/events: the wire format, and what a follower costs the server.

Dagster is scripted here (one run, its records, a status the test sets) so the stream can be
held open, many times over, and cut; test_end_to_end and test_execution_control_nodes_api read
it from real runs.
"""

import asyncio
import json
import threading
import time
from collections.abc import Sequence
from contextlib import AsyncExitStack
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from dagster import DagsterEventType
from fastapi import FastAPI
from fastapi.testclient import TestClient

from flowmaestro_api.main import create_app
from flowmaestro_api.settings import ApiSettings
from flowmaestro_dagster.control.client import DagsterClient, RunInfo
from flowmaestro_dagster.store.db import get_engine, migrate, session_scope
from flowmaestro_dagster.store.models import Execution
from tests.api.conftest import UNREACHABLE_DAGSTER, deployed_workflow, make_key
from tests.api.e2e import serving, wait_for


class ScriptedDagster(DagsterClient):
    """One run of every execution, with the given event records and status."""

    def __init__(self, status: str, records: Sequence[Any] = ()) -> None:
        super().__init__(UNREACHABLE_DAGSTER)
        self.status = status
        self.records = list(records)
        self.reads = 0
        self.log_reads = 0
        self.lock = threading.Lock()

    def _run(self, execution_id: str) -> RunInfo:
        tags = {"flowmaestro/execution_id": execution_id}
        return RunInfo("run-1", self.status, tags, None, None, None, None, None)

    def runs_for_execution(self, execution_id: str) -> list[RunInfo]:
        with self.lock:
            self.reads += 1
        return [self._run(execution_id)]

    def runs_for_executions(
        self, execution_ids: Sequence[str], *, updated_after: Any = None
    ) -> list[RunInfo]:
        with self.lock:
            self.reads += 1
        return [self._run(execution_id) for execution_id in execution_ids]

    def event_records_after(self, run_id: str, after: int | None, limit: int = 500) -> list[Any]:
        with self.lock:
            self.log_reads += 1
        return [r for r in self.records if after is None or r.storage_id > after][:limit]

    def last_storage_id(self, run_id: str) -> int | None:
        return max((r.storage_id for r in self.records), default=None)


def step_start(storage_id: int, step_key: str) -> Any:
    event = SimpleNamespace(
        event_type=DagsterEventType.STEP_START, step_key=step_key, event_specific_data=None
    )
    entry = SimpleNamespace(dagster_event=event, timestamp=1.5, user_message="", step_key=step_key)
    return SimpleNamespace(storage_id=storage_id, event_log_entry=entry)


@pytest.fixture
def settings(database_url: str) -> ApiSettings:
    return ApiSettings(
        database_url=database_url, dagster_graphql_url=UNREACHABLE_DAGSTER, launch_on_submit=False
    )


def started(
    settings: ApiSettings, auth: dict[str, str], dagster: ScriptedDagster
) -> tuple[FastAPI, str]:
    """The API on `dagster`, and the id of an execution started through it."""
    app = create_app(settings, dagster=dagster)
    with TestClient(app) as client:
        workflow_id = deployed_workflow(client, auth)
        response = client.post(
            f"/workflows/{workflow_id}/executions", json={"inputs": {"who": "x"}}, headers=auth
        )
    assert response.status_code == 201, response.text
    execution_id: str = response.json()["id"]
    return app, execution_id


def test_events_are_framed_with_ids_names_and_json_data(
    settings: ApiSettings, auth: dict[str, str]
) -> None:
    dagster = ScriptedDagster("SUCCESS", [step_start(7, "out")])
    app, execution_id = started(settings, auth, dagster)
    with TestClient(app) as client:
        response = client.get(f"/executions/{execution_id}/events", headers=auth)
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/event-stream; charset=utf-8"
    assert response.headers["cache-control"] == "no-cache"
    started_data = {
        "execution_id": execution_id,
        "run_id": "run-1",
        "timestamp": 1.5,
        "node_id": "out",
        "step_key": "out",
    }
    end_data = {"execution_id": execution_id, "status": "succeeded"}
    assert response.text == (
        f"id: {execution_id[:8]}.0.7\nevent: node.started\ndata: {json.dumps(started_data)}\n\n"
        f"event: end\ndata: {json.dumps(end_data)}\n\n"
    )


def test_a_client_that_goes_away_stops_the_polling(
    settings: ApiSettings, auth: dict[str, str]
) -> None:
    dagster = ScriptedDagster("STARTED", [step_start(1, "out")])
    app, execution_id = started(settings, auth, dagster)
    with (
        serving(app) as base,
        httpx.stream("GET", f"{base}/executions/{execution_id}/events", headers=auth) as stream,
    ):
        lines = stream.iter_lines()  # dropping the iterator would close the connection now
        assert next(lines) == f"id: {execution_id[:8]}.0.1"
        wait_for(lambda: dagster.reads >= 3, timeout=10, interval=0.05)  # it polls
    time.sleep(1.0)  # the server notices the disconnect; a read under way may finish
    reads = dagster.reads
    time.sleep(1.5)  # three poll intervals
    assert dagster.reads == reads


def test_followers_hold_no_thread_and_no_connection(
    settings: ApiSettings, auth: dict[str, str]
) -> None:
    """More open streams than the thread pool has threads (40) and the database pool has
    connections (15 on SQLite), and sync routes still answer."""
    dagster = ScriptedDagster("STARTED", [step_start(1, "out")])
    app, execution_id = started(settings, auth, dagster)

    async def follow_many(base: str) -> int:
        async with (
            httpx.AsyncClient(base_url=base, headers=auth, timeout=30) as client,
            AsyncExitStack() as streams,
        ):
            followers = []  # kept: a dropped line iterator closes its connection
            # a follower blocked in a worker thread would wait for a free one (a heartbeat)
            async with asyncio.timeout(10):
                for _ in range(50):
                    response = await streams.enter_async_context(
                        client.stream("GET", f"/executions/{execution_id}/events")
                    )
                    followers.append(response.aiter_lines())
                    assert await anext(followers[-1]) == f"id: {execution_id[:8]}.0.1"
                health = await client.get("/health")
            return health.status_code

    with serving(app) as base:
        assert asyncio.run(follow_many(base)) == 200


def test_idle_subscribers_share_one_feed(tmp_path: Path) -> None:
    """200 open streams on one execution that emits nothing: each got the history, the feed
    reads Dagster once per tick for all of them (not per subscriber), streams opened together
    share one read of the log, /metrics shows them, and other requests still answer. On SQLite
    only: the feed is the same on both databases. 1,000 subscribers: bench/events.py."""
    database_url = f"sqlite:///{tmp_path}/events.sqlite"
    migrate(database_url)
    settings = ApiSettings(
        database_url=database_url, dagster_graphql_url=UNREACHABLE_DAGSTER, launch_on_submit=False
    )
    auth = make_key(database_url, "follower@example.com")
    dagster = ScriptedDagster("STARTED", [step_start(1, "out")])
    app, execution_id = started(settings, auth, dagster)

    async def follow_many(base: str) -> tuple[int, int, int, int, str]:
        limits = httpx.Limits(max_connections=300, max_keepalive_connections=0)
        async with (
            httpx.AsyncClient(base_url=base, headers=auth, timeout=60, limits=limits) as client,
            AsyncExitStack() as streams,
        ):
            followers = []

            async def one() -> None:
                response = await streams.enter_async_context(
                    client.stream("GET", f"/executions/{execution_id}/events")
                )
                followers.append(response.aiter_lines())
                assert await anext(followers[-1]) == f"id: {execution_id[:8]}.0.1"

            for _ in range(5):  # 40 at a time: a connection storm is not what this measures
                await asyncio.gather(*(one() for _ in range(40)))
            feed = app.state.events
            ticks, reads = feed.ticks, dagster.reads
            await asyncio.sleep(1.0)
            per_tick = (dagster.reads - reads) / max(1, feed.ticks - ticks)
            health = await client.get("/health")
            metrics = (await client.get("/metrics")).text
            return len(followers), health.status_code, round(per_tick), dagster.log_reads, metrics

    with serving(app) as base:
        opened, health, per_tick, log_reads, metrics = asyncio.run(follow_many(base))
    assert opened == 200 and health == 200
    assert per_tick == 1  # one runs query per tick, whatever the number of subscribers
    # The joiners of a tick share one replay: far fewer log reads than streams.
    assert log_reads < 100, log_reads
    assert "flowmaestro_event_subscribers 200.0" in metrics
    assert "flowmaestro_event_feed_followed_executions 1.0" in metrics
    assert "flowmaestro_event_feed_joining 0.0" in metrics


class RunlessDagster(ScriptedDagster):
    """Executions whose launch never happened: no run at all."""

    def runs_for_execution(self, execution_id: str) -> list[RunInfo]:
        return []

    def runs_for_executions(
        self, execution_ids: Sequence[str], *, updated_after: Any = None
    ) -> list[RunInfo]:
        with self.lock:
            self.reads += 1
        return []


def test_an_execution_whose_launch_was_given_up_ends_its_stream(
    settings: ApiSettings, auth: dict[str, str]
) -> None:
    """No run will ever come: the feed notices the execution's own status (one query for all
    run-less executions per tick) and ends the stream."""
    dagster = RunlessDagster("QUEUED")
    app, execution_id = started(settings, auth, dagster)

    def give_up() -> None:
        time.sleep(1.0)  # the stream is open and waiting by now
        with session_scope(get_engine(settings.database_url)) as session:
            row = session.get(Execution, execution_id)
            assert row is not None
            row.status = "failed"

    giver = threading.Thread(target=give_up)
    with serving(app) as base:
        giver.start()
        with httpx.stream(
            "GET", f"{base}/executions/{execution_id}/events", headers=auth, timeout=30
        ) as stream:
            text = "".join(stream.iter_text())
        giver.join()
    assert text.endswith(
        f"event: end\ndata: {json.dumps({'execution_id': execution_id, 'status': 'failed'})}\n\n"
    )
