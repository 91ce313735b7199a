"""Shared pieces of the run-queue end-to-end tests (no tests here).

Each test module starts one real Dagster (`dagster dev`: webserver + daemon + code locations)
whose dagster.yaml is rendered by `instance_config` from the settings under test, and reads
what happened from Dagster's run storage and event log (enqueue, dequeue, start, end).
"""

import contextlib
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from dagster import DagsterEventType, DagsterInstance, DagsterRun, DagsterRunStatus, RunsFilter
from dagster._core.remote_origin import (
    RegisteredCodeLocationOrigin,
    RemoteJobOrigin,
    RemoteRepositoryOrigin,
)
from fastapi.testclient import TestClient

from flowmaestro_api.settings import ApiSettings
from flowmaestro_dagster.control.client import DagsterClient
from flowmaestro_dagster.orchestration.instance_config import render_instance_yaml
from flowmaestro_dagster.store.db import get_engine, session_scope
from flowmaestro_dagster.tags import USER_TAG
from flowmaestro_dagster.testing.stack import dagster_home
from tests.api import e2e
from tests.api.e2e import api_client, running_stack, start, wait_for
from tests.builders import chain, node
from tests.services import DagsterStack, free_port


@dataclass
class QueueStack:
    stack: DagsterStack
    settings: ApiSettings
    client: TestClient
    dagster: DagsterClient

    @property
    def instance(self) -> DagsterInstance:
        instance: DagsterInstance = self.dagster.instance
        return instance


@contextlib.contextmanager
def queue_stack(
    workdir: Path, *, extra_env: dict[str, str] | None = None, **queue_settings: Any
) -> Iterator[QueueStack]:
    """A Dagster on a dagster.yaml rendered from `queue_settings`, and the API on it."""
    rendered = ApiSettings(_env_file=None, **queue_settings)  # type: ignore[call-arg]
    with (
        running_stack(
            workdir,
            instance_yaml=render_instance_yaml(rendered),
            extra_env={"FLOWMAESTRO_HTTP__ALLOW_LOOPBACK": "true", **(extra_env or {})},
        ) as stack,
        dagster_home(stack.home),  # GET /executions/{id} reads the queue from there
    ):
        settings = ApiSettings(
            _env_file=None,  # type: ignore[call-arg]
            database_url=stack.database_url,
            dagster_graphql_url=stack.graphql_url,
            dagster_ui_url=stack.ui_url,
            reconcile_after_seconds=2,
            **queue_settings,
        )
        dagster = DagsterClient(settings.dagster_graphql_url, instance=stack.instance())
        with api_client(settings, dagster) as client:
            yield QueueStack(stack, settings, client, dagster)


def queue_stack_fixture(name: str, **queue_settings: Any) -> Any:
    """A module-scoped `stack` fixture: `queue_stack` with `queue_settings`, in a fresh directory."""

    @pytest.fixture(scope="module")
    def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[QueueStack]:
        with queue_stack(tmp_path_factory.mktemp(name), **queue_settings) as started:
            yield started

    return stack


def new_user(stack: QueueStack, name: str) -> dict[str, str]:
    return e2e.new_user(stack.settings.database_url, name)


def user_id(stack: QueueStack, auth: dict[str, str]) -> str:
    from flowmaestro_api.security import authenticate

    with session_scope(get_engine(stack.settings.database_url)) as session:
        return authenticate(session, auth["Authorization"].removeprefix("Bearer ")).id


def slow_workflow(name: str, *delays_ms: int) -> dict[str, Any]:
    """input → one passthrough node per delay → output: a run that lasts about sum(delays)."""
    return chain(
        node("in", "input", inputName="who"),
        *(
            node(f"slow{index}", "transform", operation="passthrough", delayMs=delay)
            for index, delay in enumerate(delays_ms)
        ),
        node("out", "output", outputName="done", value="{{who}}"),
        name=name,
    )


def retrying_workflow(name: str, delay_ms: int = 4000) -> dict[str, Any]:
    """input → an HTTP call to a closed port, retried twice `delay_ms` apart → output: a run
    that spends 2 x delay_ms waiting between attempts of one node (and then fails)."""
    url = f"http://127.0.0.1:{free_port()}/nobody-listens"
    retry = {"maxAttempts": 3, "backoffStrategy": "fixed", "minDelayMs": delay_ms}
    return chain(
        node("in", "input", inputName="who"),
        node("call", "http", method="GET", url=url, retry=retry),
        node("out", "output", outputName="done", value="{{who}}"),
        name=name,
    )


def deploy(
    client: TestClient,
    auth: dict[str, str],
    definition: dict[str, Any],
    settings: dict[str, Any] | None = None,
) -> str:
    deployed = e2e.deployment(client, auth, definition, settings=settings)
    assert deployed["detail"] is None, deployed  # the limits were applied
    workflow_id: str = deployed["workflow_id"]
    return workflow_id


def submit(client: TestClient, auth: dict[str, str], workflow_id: str, **body: Any) -> str:
    return start(client, auth, workflow_id, {"who": "x"}, **body)


def finished(client: TestClient, auth: dict[str, str], *execution_ids: str) -> None:
    for execution_id in execution_ids:
        e2e.finished(client, auth, execution_id, timeout=240)


def run_statuses(instance: DagsterInstance, execution_ids: list[str]) -> list[str]:
    statuses = []
    for execution_id in execution_ids:
        runs = instance.get_runs(RunsFilter(tags={"flowmaestro/execution_id": execution_id}))
        statuses.append(runs[0].status.value if runs else "NONE")
    return statuses


@dataclass(frozen=True)
class RunFacts:
    """One run, from Dagster's run storage and event log."""

    execution_id: str
    run_id: str
    storage_id: int  # enqueue order (the daemon scans the queue in this order)
    priority: int
    user: str
    enqueued: float
    dequeued: float  # RUN_STARTING: the daemon chose it
    start: float  # RUN_START: its worker began
    end: float


def _event_time(instance: DagsterInstance, run_id: str, kind: DagsterEventType) -> float:
    records = instance.get_records_for_run(run_id, of_type=kind).records
    assert records, f"run {run_id} has no {kind.value} event"
    return float(records[0].event_log_entry.timestamp)


def facts(instance: DagsterInstance, execution_id: str, index: int = 0) -> RunFacts:
    """The `index`-th run (oldest first) of an execution."""
    records = sorted(
        instance.get_run_records(RunsFilter(tags={"flowmaestro/execution_id": execution_id})),
        key=lambda r: r.storage_id,
    )
    record = records[index]
    run = record.dagster_run
    assert record.start_time is not None and record.end_time is not None, run.status
    return RunFacts(
        execution_id=execution_id,
        run_id=run.run_id,
        storage_id=record.storage_id,
        priority=int(run.tags["dagster/priority"]),
        user=run.tags[USER_TAG],
        enqueued=_event_time(instance, run.run_id, DagsterEventType.RUN_ENQUEUED),
        dequeued=_event_time(instance, run.run_id, DagsterEventType.RUN_STARTING),
        start=record.start_time,
        end=record.end_time,
    )


def most_at_once(spans: list[tuple[float, float]]) -> int:
    """The most (start, end) spans in progress at one moment."""
    points = sorted([(start, 1) for start, _ in spans] + [(end, -1) for _, end in spans])
    most = current = 0
    for _, step in points:  # at a tie an end (-1) sorts first: touching is not overlapping
        current += step
        most = max(most, current)
    return most


def max_overlap(runs: list[RunFacts], *, active: bool = True) -> int:
    """The most runs in progress at one moment: from dequeue (RUN_STARTING: the daemon counts
    a run against every limit from then on) to end; with `active=False`, from RUN_START."""
    return most_at_once([(r.dequeued if active else r.start, r.end) for r in runs])


def two_retrying_runs(stack: QueueStack, user: str) -> list[RunFacts]:
    """Two runs of `retrying_workflow` under a workflow limit of 1, the second submitted once
    the first has started; their facts, once both have finished."""
    client, instance = stack.client, stack.instance
    auth = new_user(stack, user)
    workflow_id = deploy(
        client, auth, retrying_workflow("retries"), settings={"concurrency_limit": 1}
    )
    first = submit(client, auth, workflow_id)
    wait_for(lambda: run_statuses(instance, [first]) == ["STARTED"])
    second = submit(client, auth, workflow_id)
    finished(client, auth, first, second)
    return [facts(instance, first), facts(instance, second)]


def dequeued_while_another_ran(runs: list[RunFacts]) -> bool:
    """Some run was dequeued while another was in progress (impossible under a limit of 1)."""
    return any(
        other is not run and other.dequeued <= run.dequeued < other.end
        for run in runs
        for other in runs
    )


def store_run(
    instance: DagsterInstance,
    tags: dict[str, str],
    status: DagsterRunStatus = DagsterRunStatus.QUEUED,
    **fields: Any,
) -> str:
    """A run as the API launches it (job `job` of the first code location), only stored in
    `instance`: without a daemon nothing dequeues it. Its run id."""
    run_id = str(uuid.uuid4())
    origin = RemoteJobOrigin(
        repository_origin=RemoteRepositoryOrigin(
            code_location_origin=RegisteredCodeLocationOrigin("flowmaestro-workflows-0"),
            repository_name="__repository__",
        ),
        job_name="job",
    )
    run = DagsterRun(
        job_name="job",
        run_id=run_id,
        status=status,
        tags=tags,
        remote_job_origin=origin,
        **fields,
    )
    instance.add_run(run)
    return run_id
