"""Helpers of the end-to-end API tests: a real Dagster stack behind a TestClient.

The fixtures below are defined once here and bound by the modules that use them, by assignment
(pytest registers a fixture under the module attribute's name):

    stack = e2e.stack_fixture("control", FLOWMAESTRO_WAITPOINT_INTERVAL_SECONDS="1")
    settings = e2e.settings_fixture()
    dagster_client, client, auth = e2e.dagster_client, e2e.client, e2e.auth

A module whose stack needs other fixtures (a fake LLM's URL in its environment) writes its own
`stack` fixture around `running_stack`.
"""

import shutil
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from dagster import DagsterEventType, DagsterInstance, EventRecordsFilter, RunsFilter
from fastapi.testclient import TestClient

from bench.common import wait_until
from flowmaestro_api.main import create_app
from flowmaestro_api.settings import ApiSettings
from flowmaestro_dagster.control.client import DagsterClient
from flowmaestro_dagster.orchestration.instance_config import render_instance_yaml
from flowmaestro_dagster.tags import WAIT_KINDS, WAITING_TAG
from flowmaestro_dagster.testing.stack import DagsterStack, free_port
from tests.api.conftest import make_key
from tests.services import migrated_template, pg_url

TERMINAL = ("succeeded", "failed", "cancelled")


def wait_for(predicate: Callable[[], Any], timeout: float = 120, interval: float = 0.25) -> Any:
    """The first truthy value of `predicate`; AssertionError after `timeout` s."""
    return wait_until(predicate, timeout, interval, AssertionError)


# -- the stack and the API on it --------------------------------------------------------------


@contextmanager
def running_stack(workdir: Path, kind: str = "sqlite", **options: Any) -> Iterator[DagsterStack]:
    """A migrated platform database (`kind`: sqlite or postgres) and `dagster dev` started on
    it, stopped on exit; `options` go to DagsterStack (extra_env, instance_yaml, shards)."""
    with migrated_template(kind, workdir) as template:
        url = f"sqlite:///{template}" if kind == "sqlite" else pg_url(template)
        stack = DagsterStack(workdir / "home", url, **options)
        stack.start()
        try:
            yield stack
        finally:
            stack.stop()


def stack_settings(stack: DagsterStack, **values: Any) -> ApiSettings:
    """The API's settings on `stack`, with `values` on top."""
    return ApiSettings(
        database_url=stack.database_url,
        dagster_graphql_url=stack.graphql_url,
        dagster_ui_url=stack.ui_url,
        **values,
    )


@contextmanager
def api_client(settings: ApiSettings, dagster: DagsterClient) -> Iterator[TestClient]:
    """The API in process (server exceptions answer 500, as a deployed API would)."""
    app = create_app(settings, dagster=dagster)
    with TestClient(app, raise_server_exceptions=False) as test_client:
        yield test_client


def new_user(database_url: str, name: str = "user") -> dict[str, str]:
    """The Authorization header of a new user (a unique email per call)."""
    return make_key(database_url, f"{name[:40]}-{time.monotonic_ns()}@example.com")


def stack_fixture(name: str, *kinds: str, **env: str) -> Any:
    """A module-scoped `stack` fixture: `running_stack` in a fresh directory, `env` in its
    processes' environment; parametrized over `kinds` when there are several (default sqlite)."""
    choices = kinds or ("sqlite",)

    @pytest.fixture(scope="module", params=choices if len(choices) > 1 else None)
    def stack(
        request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
    ) -> Iterator[DagsterStack]:
        kind = getattr(request, "param", choices[0])
        workdir = tmp_path_factory.mktemp(f"{name}-{kind}")
        with running_stack(workdir, kind, extra_env=env) as started:
            yield started

    return stack


def settings_fixture(**values: Any) -> Any:
    """A module-scoped `settings` fixture: `stack_settings(stack, **values)`."""

    @pytest.fixture(scope="module")
    def settings(stack: DagsterStack) -> ApiSettings:
        return stack_settings(stack, **values)

    return settings


@pytest.fixture(scope="module")
def dagster_client(stack: DagsterStack, settings: ApiSettings) -> DagsterClient:
    return DagsterClient(settings.dagster_graphql_url, instance=stack.instance())


@pytest.fixture(scope="module")
def client(settings: ApiSettings, dagster_client: DagsterClient) -> Iterator[TestClient]:
    with api_client(settings, dagster_client) as test_client:
        yield test_client


@pytest.fixture
def auth(stack: DagsterStack, request: pytest.FixtureRequest) -> dict[str, str]:
    """A new user for each test."""
    return new_user(stack.database_url, request.node.name)


# -- workflows and executions through the API ---------------------------------------------------


def deployment(
    client: TestClient,
    auth: dict[str, str],
    definition: dict[str, Any],
    *,
    settings: dict[str, Any] | None = None,
    version: int = 1,
    workflow_id: str | None = None,
) -> dict[str, Any]:
    """Deploy `version` (of a new workflow unless `workflow_id`): the runnable deployment."""
    if workflow_id is None:
        body: dict[str, Any] = {"definition": definition}
        if settings:
            body["settings"] = settings
        created = client.post("/workflows", json=body, headers=auth)
        assert created.status_code == 201, created.text
        workflow_id = created.json()["id"]
    deployed = client.post(f"/workflows/{workflow_id}/versions/{version}/deploy", headers=auth)
    assert deployed.status_code == 200 and deployed.json()["runnable"], deployed.text
    found: dict[str, Any] = deployed.json()
    return found


def deploy(
    client: TestClient, auth: dict[str, str], definition: dict[str, Any], **options: Any
) -> str:
    """Create the workflow and deploy its first version (see `deployment`); the workflow id."""
    workflow_id: str = deployment(client, auth, definition, **options)["workflow_id"]
    return workflow_id


def start(
    client: TestClient,
    auth: dict[str, str],
    workflow_id: str,
    inputs: dict[str, Any],
    **body: Any,
) -> str:
    response = client.post(
        f"/workflows/{workflow_id}/executions", json={"inputs": inputs, **body}, headers=auth
    )
    assert response.status_code == 201, response.text
    execution_id: str = response.json()["id"]
    return execution_id


def execution(client: TestClient, auth: dict[str, str], execution_id: str) -> dict[str, Any]:
    response = client.get(f"/executions/{execution_id}", headers=auth)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def reaches(
    client: TestClient,
    auth: dict[str, str],
    execution_id: str,
    check: Callable[[dict[str, Any]], bool],
    timeout: float = 120,
) -> dict[str, Any]:
    """Wait until the execution's body passes `check`; the body then."""

    def probe() -> dict[str, Any] | None:
        body = execution(client, auth, execution_id)
        return body if check(body) else None

    result: dict[str, Any] = wait_for(probe, timeout)
    return result


def status_is(
    client: TestClient,
    auth: dict[str, str],
    execution_id: str,
    *statuses: str,
    timeout: float = 120,
) -> dict[str, Any]:
    """Wait until the execution has one of `statuses`; its body then."""
    return reaches(client, auth, execution_id, lambda body: body["status"] in statuses, timeout)


def finished(
    client: TestClient, auth: dict[str, str], execution_id: str, timeout: float = 120
) -> dict[str, Any]:
    """Wait until the execution succeeded, failed or was cancelled; its body then."""
    return status_is(client, auth, execution_id, *TERMINAL, timeout=timeout)


def node_statuses(body: dict[str, Any]) -> dict[str, str]:
    return {n["node_id"]: n["status"] for n in body["nodes"]}


def approvals_of(
    client: TestClient, auth: dict[str, str], execution_id: str
) -> list[dict[str, Any]]:
    """The execution's pending approvals (GET /approvals)."""
    items: list[dict[str, Any]] = client.get("/approvals", headers=auth).json()["items"]
    return [a for a in items if a["execution_id"] == execution_id]


def decide(client: TestClient, auth: dict[str, str], approval_id: str, **decision: Any) -> None:
    response = client.post(f"/approvals/{approval_id}/decision", json=decision, headers=auth)
    assert response.status_code == 200, response.text


# -- what Dagster ran ----------------------------------------------------------------------------


def runs_of(instance: DagsterInstance, execution_id: str) -> list[Any]:
    """The execution's Dagster runs (in the order Dagster lists them)."""
    return list(instance.get_runs(RunsFilter(tags={"flowmaestro/execution_id": execution_id})))


def step_statuses(instance: DagsterInstance, run_id: str) -> dict[str, str | None]:
    """Step key -> its status in the run (Dagster's step stats)."""
    stats = instance.get_run_step_stats(run_id)
    return {s.step_key: s.status.value if s.status else None for s in stats}


def celery_workers(instance: DagsterInstance, run_id: str) -> dict[str, str]:
    """Step key -> the Celery worker that ran it, from the workers' own engine events."""
    records = instance.get_event_records(
        EventRecordsFilter(event_type=DagsterEventType.ENGINE_EVENT), limit=1000
    )
    workers = {}
    for record in records:
        entry = record.event_log_entry
        if entry.run_id != run_id or entry.dagster_event is None:
            continue
        metadata = entry.dagster_event.engine_event_data.metadata
        if "Celery worker" in metadata and entry.step_key:
            workers[entry.step_key] = str(metadata["Celery worker"].value)
    return workers


def step_keys(instance: DagsterInstance, run_id: str) -> set[str]:
    """The steps a run executed (Dagster's step stats)."""
    return {s.step_key for s in instance.get_run_step_stats(run_id)}


def parked_run(stack: DagsterStack, body: dict[str, Any]) -> str:
    """The run a waiting execution parked (its first), tagged waiting for operators to see."""
    run_id: str = body["runs"][0]["run_id"]
    assert stack.instance().get_run_by_id(run_id).tags.get(WAITING_TAG) in WAIT_KINDS
    return run_id


def rerun_steps(stack: DagsterStack, body: dict[str, Any], parent_run_id: str) -> set[str]:
    """The steps of the execution's second run, checked a re-execution of `parent_run_id`."""
    assert len(body["runs"]) == 2 and body["runs"][1]["parent_run_id"] == parent_run_id
    return step_keys(stack.instance(), body["runs"][1]["run_id"])


@contextmanager
def serving(app: Any) -> Iterator[str]:
    """An ASGI app behind a real uvicorn in a thread (connections a client can hold or cut);
    its base URL."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_for(lambda: server.started, timeout=30, interval=0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def rendered_instance(home: Path, settings: ApiSettings) -> DagsterInstance:
    """A Dagster instance in `home` configured as the platform renders it for `settings` (its
    queues, tag limits and pools); the caller disposes of it."""
    home.mkdir(parents=True, exist_ok=True)
    (home / "dagster.yaml").write_text(render_instance_yaml(settings, home=home))
    return DagsterInstance.from_config(str(home))


@contextmanager
def api_on(settings: ApiSettings, instance: DagsterInstance) -> Iterator[TestClient]:
    """The API reading Dagster's storage from `instance` (GraphQL unreachable)."""
    app = create_app(
        settings, dagster=DagsterClient(settings.dagster_graphql_url, instance=instance)
    )
    with TestClient(app) as client:
        yield client


@contextmanager
def chromium_page(**options: Any) -> Iterator[Any]:
    """A page of Debian's chromium driven by playwright, headless (the browser closed after)."""
    from playwright.sync_api import sync_playwright

    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.fail("Debian's chromium is required (scripts/system-deps.sh installs it)")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=chromium,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
            ],
        )
        try:
            yield browser.new_page(**options)
        finally:
            browser.close()
