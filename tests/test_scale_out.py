"""Scale-out: node steps on Celery workers (Redis), the Dagster instance on PostgreSQL.

The end-to-end tests share one stack: `dagster dev` on a PostgreSQL instance (the API database
and Dagster's storage in one database), two real `flowmaestro worker` processes on a queue of
their own, and the API in process.
"""

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from dagster import DagsterEventType, RunsFilter
from fastapi.testclient import TestClient
from sqlalchemy import select

from flowmaestro_api.security import ensure_user
from flowmaestro_api.settings import ApiSettings
from flowmaestro_dagster.compile.compiler import RUN_ON_TAG
from flowmaestro_dagster.control.client import DagsterClient
from flowmaestro_dagster.engines.celery import CeleryDispatch, CeleryRouting, make_celery_app
from flowmaestro_dagster.engines.jobs import build_job
from flowmaestro_dagster.errors import CeleryUnavailableError, InvalidWorkflowError
from flowmaestro_dagster.store.db import get_engine, session_scope
from flowmaestro_dagster.store.models import NodeOutput
from tests.api.conftest import make_key
from tests.api.e2e import (
    api_client,
    celery_workers,
    finished,
    stack_settings,
    start,
    step_statuses,
    wait_for,
)
from tests.deploy import deploy
from tests.services import (
    REDIS_URL,
    DagsterStack,
    migrated_template,
    pg_url,
    require_redis,
)


def _code(node_id: str, code: str, **extra: Any) -> dict[str, Any]:
    return {
        "id": node_id,
        "type": "code",
        "position": {"x": 0, "y": 0},
        "data": {"label": node_id, "language": "python", "code": code, **extra},
    }


def _input(name: str = "n") -> dict[str, Any]:
    return {
        "id": "in",
        "type": "input",
        "position": {"x": 0, "y": 0},
        "data": {"label": "N", "inputName": name, "inputType": "number", "defaultValue": 1},
    }


def _output(value: str) -> dict[str, Any]:
    return {
        "id": "out",
        "type": "output",
        "position": {"x": 0, "y": 0},
        "data": {"label": "Out", "outputName": "result", "value": value},
    }


def _edges(*pairs: tuple[str, str]) -> list[dict[str, str]]:
    return [{"id": f"{a}-{b}", "source": a, "target": b} for a, b in pairs]


# Three Python nodes go to Celery by type; `local` is a code node pinned to the run process.
FAN_OUT = {
    "name": "Scale-out fan-out",
    "nodes": [
        _input(),
        *[
            _code(f"c{k}", f"import time\ntime.sleep(1)\nresult = inputs['n'] * {k}")
            for k in (1, 2, 3)
        ],
        _code("local", "result = inputs['n'] * 10", runOn="local"),
        _output("{{c1.output}}-{{c2.output}}-{{c3.output}}-{{local.output}}"),
    ],
    "edges": _edges(
        *[("in", node) for node in ("c1", "c2", "c3", "local")],
        *[(node, "out") for node in ("c1", "c2", "c3", "local")],
    ),
}

# `first` (local) finishes, `slow` (Celery) is killed with its worker, `out` follows.
KILLED = {
    "name": "Scale-out killed worker",
    "settings": {"runOn": "local"},
    "nodes": [
        _input(),
        _code("first", "result = inputs['n'] + 1"),
        _code("slow", "import time\ntime.sleep(4)\nresult = inputs['n'] * 7", runOn="celery"),
        _output("{{first.output}}/{{slow.output}}"),
    ],
    "edges": _edges(("in", "first"), ("first", "slow"), ("slow", "out")),
}


# -- routing in the compiled job (no services) --------------------------------------------------


def _tags(definition: dict[str, Any]) -> dict[str, str | None]:
    job = build_job(definition).job
    return {node.name: node.tags.get(RUN_ON_TAG) for node in job.graph.nodes}


def test_run_on_is_an_op_tag_the_node_overrides_the_workflow() -> None:
    assert _tags(FAN_OUT) == {
        "in": None,
        "c1": None,
        "c2": None,
        "c3": None,
        "local": "local",
        "out": None,
    }
    assert _tags(KILLED) == {"in": "local", "first": "local", "slow": "celery", "out": "local"}


def test_bad_run_on_values_name_the_node_and_the_field() -> None:
    bad_node = {
        **KILLED,
        "nodes": [
            *KILLED["nodes"][:2],
            _code("slow", "result = 1", runOn="gpu"),
            KILLED["nodes"][3],
        ],
    }
    with pytest.raises(InvalidWorkflowError) as caught:
        build_job(bad_node)
    (problem,) = [p for p in caught.value.problems if p.severity == "error"]
    assert (problem.code, problem.node_id, problem.field) == ("invalid_run_on", "slow", "runOn")
    assert "gpu" in problem.message
    bad_workflow = {**KILLED, "settings": {"runOn": "everywhere"}}
    with pytest.raises(InvalidWorkflowError) as caught:
        build_job(bad_workflow)
    (problem,) = [p for p in caught.value.problems if p.severity == "error"]
    assert problem.field == "settings.runOn"


def test_routing_follows_run_on_then_the_platform_node_types() -> None:
    routing = CeleryRouting.from_settings(
        ApiSettings(_env_file=None, celery_broker_url=REDIS_URL, celery_node_types=["code"])  # type: ignore[call-arg]
    )
    assert routing is not None
    plan_steps = {
        step.key: step
        for step in _plan_steps(FAN_OUT)  # c1-c3 by type, `local` pinned, input/output by type
    }
    assert {key for key, step in plan_steps.items() if routing.wants(step)} == {"c1", "c2", "c3"}
    assert CeleryRouting.from_settings(ApiSettings(_env_file=None)) is None  # type: ignore[call-arg]


def test_a_broker_that_is_not_redis_is_refused() -> None:
    with pytest.raises(ValueError, match="redis://"):
        ApiSettings(_env_file=None, celery_broker_url="amqp://guest@localhost//")  # type: ignore[call-arg]


def _plan_steps(definition: dict[str, Any]) -> list[Any]:
    from dagster._core.execution.api import create_execution_plan

    job = build_job(definition).job
    return list(create_execution_plan(job).get_steps_to_execute_in_topo_order())


@pytest.mark.redis
def test_no_worker_on_the_queue_is_a_clear_error_not_a_hang() -> None:
    require_redis()
    routing = CeleryRouting(REDIS_URL, REDIS_URL, f"fm-nobody-{uuid.uuid4().hex[:8]}", frozenset())
    from dagster import reconstructable

    dispatch = CeleryDispatch(routing, reconstructable(_a_job))
    started = time.monotonic()
    try:
        with pytest.raises(
            CeleryUnavailableError, match="no Celery worker consumes queue 'fm-nobody"
        ):
            dispatch.ensure_workers()
    finally:
        dispatch.close()
    assert time.monotonic() - started < 10


def _a_job() -> Any:
    return build_job(FAN_OUT).job


def test_an_unreachable_broker_is_a_clear_error() -> None:
    routing = CeleryRouting("redis://127.0.0.1:9/0", "redis://127.0.0.1:9/0", "q", frozenset())
    from dagster import reconstructable

    dispatch = CeleryDispatch(routing, reconstructable(_a_job))
    try:
        with pytest.raises(CeleryUnavailableError, match="unreachable"):
            dispatch.ensure_workers()
    finally:
        dispatch.close()


# -- the stack: Dagster on PostgreSQL, two Celery workers ---------------------------------------


@dataclass
class Scaled:
    stack: DagsterStack
    client: TestClient
    auth: dict[str, str]
    dagster: DagsterClient
    workers: dict[str, subprocess.Popen[bytes]]  # hostname -> process
    queue: str
    workflows: dict[str, str]  # name -> id, deployed before the stack started


EMAIL = "scale@example.com"


def _deployed(url: str, definitions: dict[str, dict[str, Any]]) -> dict[str, str]:
    """Workflows deployed before Dagster starts: its shard loads them, no reload per test."""
    with session_scope(get_engine(url)) as session:
        user = ensure_user(session, email=EMAIL)
        ids = {}
        for name, definition in definitions.items():
            ids[name] = deploy(session, user, definition)
    return ids


def _start_worker(name: str, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    flowmaestro = Path(sys.executable).with_name("flowmaestro")
    return subprocess.Popen(
        [str(flowmaestro), "worker", "--name", name, "--concurrency", "1", "--loglevel", "INFO"],
        env=env,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own group: SIGKILL takes the pool child and the sandbox too
    )


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)


@pytest.fixture(scope="module")
def scaled(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scaled]:
    require_redis()
    workdir = tmp_path_factory.mktemp("scale-out")
    queue = f"fm-test-{uuid.uuid4().hex[:10]}"
    celery_env = {
        "FLOWMAESTRO_CELERY_BROKER_URL": REDIS_URL,
        "FLOWMAESTRO_CELERY_QUEUE": queue,
        "FLOWMAESTRO_CELERY_CHECK_SECONDS": "1",
    }
    with migrated_template("postgres", workdir) as database:
        url = pg_url(database)
        workflows = _deployed(url, {"fan_out": FAN_OUT, "killed": KILLED})
        stack = DagsterStack(workdir / "home", url, extra_env=celery_env)
        env = stack.env()
        workers = {
            # Names unique to this run: Celery's broadcasts (pings, inspect) reach every worker
            # on the Redis database, so another run's `w1` would answer for ours.
            f"flowmaestro-w{i}-{queue[-10:]}@": _start_worker(
                f"w{i}-{queue[-10:]}", env, workdir / f"worker-{i}.log"
            )
            for i in (1, 2)
        }
        try:
            stack.start()
            app = make_celery_app(broker_url=REDIS_URL, backend_url=REDIS_URL, queue=queue)

            def consuming() -> dict[str, subprocess.Popen[bytes]] | None:
                replies = app.control.inspect(timeout=0.5).active_queues() or {}
                hosts = {h for h, qs in replies.items() if any(q["name"] == queue for q in qs)}
                found = {
                    host: process
                    for prefix, process in workers.items()
                    for host in hosts
                    if host.startswith(prefix)
                }
                return found if len(found) == 2 else None

            by_host = wait_for(consuming, timeout=60)
            app.close()
            settings = stack_settings(
                stack, **{k.removeprefix("FLOWMAESTRO_").lower(): v for k, v in celery_env.items()}
            )
            dagster = DagsterClient(settings.dagster_graphql_url, instance=stack.instance())
            with api_client(settings, dagster) as client:
                auth = make_key(url, EMAIL)
                yield Scaled(stack, client, auth, dagster, by_host, queue, workflows)
        finally:
            for process in workers.values():
                _stop(process)
            stack.stop()


def _execute(scaled: Scaled, workflow: str, inputs: dict[str, Any]) -> str:
    return start(scaled.client, scaled.auth, scaled.workflows[workflow], inputs)


def _finished(scaled: Scaled, execution_id: str, timeout: float = 120) -> dict[str, Any]:
    return finished(scaled.client, scaled.auth, execution_id, timeout)


def _runs(scaled: Scaled, execution_id: str) -> list[Any]:
    runs = scaled.dagster.instance.get_runs(
        RunsFilter(tags={"flowmaestro/execution_id": execution_id})
    )
    return sorted(runs, key=lambda run: run.tags.get("dagster/retry_number", "0"))


@pytest.mark.postgres
@pytest.mark.redis
@pytest.mark.slow
def test_steps_run_on_two_celery_workers_and_their_outputs_are_stored(scaled: Scaled) -> None:
    execution_id = _execute(scaled, "fan_out", {"n": 5})
    execution = _finished(scaled, execution_id)
    assert execution["status"] == "succeeded", execution
    assert execution["outputs"] == {"result": "5-10-15-50"}
    (run,) = _runs(scaled, execution_id)
    hosts = celery_workers(scaled.dagster.instance, run.run_id)
    assert set(hosts) == {"c1", "c2", "c3"}  # `local` (runOn) and input/output stayed in the run
    assert set(hosts.values()) == set(scaled.workers)  # both workers served steps
    # The workers' outputs went through the platform database (NodeOutputIOManager), where the
    # run process read them back for `out`.
    with session_scope(get_engine(scaled.stack.database_url)) as session:
        stored = set(
            session.scalars(select(NodeOutput.step_key).where(NodeOutput.run_id == run.run_id))
        )
    assert {"c1", "c2", "c3", "local", "in"} <= stored


@pytest.mark.postgres
@pytest.mark.redis
@pytest.mark.slow
def test_a_worker_killed_mid_step_retries_the_run_from_failure(scaled: Scaled) -> None:
    execution_id = _execute(scaled, "killed", {"n": 3})
    run = wait_for(lambda: next(iter(_runs(scaled, execution_id)), None), timeout=60)
    host = wait_for(
        lambda: celery_workers(scaled.dagster.instance, run.run_id).get("slow"), timeout=60
    )
    victim = scaled.workers.pop(host)
    os.killpg(victim.pid, signal.SIGKILL)  # the worker, its pool child and the sandbox
    victim.wait(timeout=10)
    # The failed run is FAILURE a moment before Dagster tags it `will_retry`: wait for the retry.
    wait_for(lambda: len(_runs(scaled, execution_id)) == 2, timeout=90)
    execution = _finished(scaled, execution_id, timeout=120)
    assert execution["status"] == "succeeded", execution
    assert execution["outputs"] == {"result": "4/21"}
    first, retry = _runs(scaled, execution_id)
    assert retry.parent_run_id == first.run_id
    failure = scaled.dagster.instance.get_run_by_id(first.run_id)
    assert failure is not None and failure.tags.get("dagster/failure_reason") == "RUN_EXCEPTION"
    stats = step_statuses(scaled.dagster.instance, retry.run_id)
    assert "first" not in stats and "in" not in stats  # finished nodes are not re-run
    assert stats["slow"] == "SUCCESS" and stats["out"] == "SUCCESS"
    assert (
        celery_workers(scaled.dagster.instance, retry.run_id)["slow"] in scaled.workers
    )  # the survivor


@pytest.mark.postgres
@pytest.mark.redis
@pytest.mark.slow
def test_with_no_worker_left_a_run_fails_at_once_saying_so(scaled: Scaled) -> None:
    for host in list(scaled.workers):
        worker = scaled.workers.pop(host)
        worker.send_signal(signal.SIGTERM)  # `flowmaestro worker` is the worker: a warm shutdown
        assert worker.wait(timeout=30) == 0
    execution_id = _execute(scaled, "killed", {"n": 1})

    def failed_run() -> Any:
        runs = [run for run in _runs(scaled, execution_id) if run.status.value == "FAILURE"]
        return runs[0] if runs else None

    run = wait_for(failed_run, timeout=60)
    records = scaled.dagster.instance.get_records_for_run(
        run.run_id, of_type=DagsterEventType.RUN_FAILURE
    ).records
    error = records[0].event_log_entry.dagster_event.event_specific_data.error
    assert (
        "CeleryUnavailableError" in error.cls_name or "CeleryUnavailableError" in error.to_string()
    )
    assert f"no Celery worker consumes queue '{scaled.queue}'" in error.to_string()
    stats = step_statuses(scaled.dagster.instance, run.run_id)
    assert stats["first"] == "SUCCESS" and "slow" not in stats  # never submitted
