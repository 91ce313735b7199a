"""Issue 15, row 12: cancel and retry are claims, decided by the database.

Before: a cancel was lost while an execution was launching (the launch recorded its run after
the cancel) or waiting at a waitpoint (409 "already succeeded", and the waitpoint sensor resumed
it anyway); a cancel of a paused execution lost to a concurrent resume; two concurrent retries
started two runs. Now a cancel is a compare-and-set on `executions.cancelled_at` that every
launcher (first launch, retry, resume of a paused or a parked run) re-checks in the conditional
UPDATE that records its run: the loser terminates the run it just created. A retry claims the
execution's launch lease before it asks Dagster for a run; a concurrent one gets 409.

Every race runs on SQLite and on the local PostgreSQL (a missing server skips locally, fails
under CI=true), with threads and one session each, as API processes and sensors do. Dagster is
the recording client on a real instance; a race is forced by holding an action in it
(`before_send` / `after_run`) on a `threading.Event` while the other caller acts.
"""

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

import pytest
from dagster import DagsterInstance, DagsterRun, DagsterRunStatus, instance_for_test
from fastapi.testclient import TestClient
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from flowmaestro_api.main import create_app
from flowmaestro_api.settings import ApiSettings
from flowmaestro_dagster.control import lifecycle
from flowmaestro_dagster.control.client import RunInfo
from flowmaestro_dagster.control.executions import (
    launch_execution,
    refresh,
    run_tags,
    start_execution,
)
from flowmaestro_dagster.control.requests import ExecutionCreate
from flowmaestro_dagster.control.waitpoints import resume_run, tick
from flowmaestro_dagster.errors import Conflict
from flowmaestro_dagster.settings import Settings
from flowmaestro_dagster.store.db import get_engine, session_scope
from flowmaestro_dagster.store.models import Execution, User, Waitpoint, utcnow
from flowmaestro_dagster.tags import PAUSED_TAG, WAITING_TAG
from flowmaestro_dagster.testing.recording_client import RecordingDagsterClient
from tests.api.conftest import make_key
from tests.builders import chain, node
from tests.deploy import deploy, fresh_user

T = TypeVar("T")
HOLD = 20.0  # seconds a held action waits at most (only a broken test gets there)
ACTIVE = {"QUEUED", "NOT_STARTED", "STARTING", "MANAGED", "STARTED"}


def approval_flow() -> dict[str, Any]:
    """input → prep → an approval → output."""
    return chain(
        node("in", "input", inputName="who"),
        node("prep", "transform", transformType="template", template="prepared {{who}}", outputVariable="prepared"),
        node("review", "humanReview", reviewPrompt="Ship {{who}}?", outputVariable="approval"),
        node("out", "output", outputName="result", value="{{prepared}}"),
        name="Approval",
    )  # fmt: skip


# -- fixtures ------------------------------------------------------------------------------------


@pytest.fixture
def settings(database_url: str) -> Settings:
    return Settings(
        database_url=database_url,
        launch_lease_seconds=60,
        secret_key="claims-test-secret-0123456789",
        callback_signing_secret="claims-test-signing-0123456789",
    )


@pytest.fixture(scope="module")
def instance() -> Iterator[DagsterInstance]:
    """One Dagster instance for the module (tests/conftest's `client` records on it): every
    test looks only at the runs of its own executions."""
    with instance_for_test() as shared:
        yield shared


@pytest.fixture
def pool() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(max_workers=8, thread_name_prefix="caller") as executor:
        yield executor


# -- rows and runs -------------------------------------------------------------------------------


def committed(settings: Settings) -> str:
    """A deployed workflow's execution as the API commits it: no run yet."""
    with session_scope(get_engine(settings.database_url)) as session:
        user = fresh_user(session)
        workflow_id = deploy(session, user, approval_flow())
        session.commit()
        execution, _ = start_execution(
            session,
            user=user,
            workflow_id=workflow_id,
            body=ExecutionCreate(inputs={"who": "ada"}),
            idempotency_key=None,
            default_ttl_seconds=3600,
            shards=1,
        )
        return execution.id


def add_run(
    settings: Settings,
    instance: DagsterInstance,
    execution_id: str,
    status: DagsterRunStatus,
    **tags: str,
) -> str:
    """A run of the execution in `status`, recorded on the execution as a launch records it."""
    with session_scope(get_engine(settings.database_url)) as session:
        execution = session.get(Execution, execution_id)
        assert execution is not None
        run = DagsterRun(
            job_name=execution.job_name,
            run_id=str(uuid.uuid4()),
            run_config={},
            tags={**run_tags(execution), **tags},
            status=status,
        )
        instance.add_run(run)
        execution.run_id = execution.run_id or run.run_id
        execution.latest_run_id = run.run_id
        execution.launched_at = execution.launched_at or utcnow()
        return run.run_id


def waiting(settings: Settings, instance: DagsterInstance, *, decided: bool) -> tuple[str, str]:
    """(execution, parked run): the run ended at the review's approval; `decided`: approved,
    so the waitpoint sensor resumes it on its next tick."""
    execution_id = committed(settings)
    run_id = add_run(
        settings, instance, execution_id, DagsterRunStatus.SUCCESS, **{WAITING_TAG: "review"}
    )
    with session_scope(get_engine(settings.database_url)) as session:
        session.add(
            Waitpoint(
                execution_id=execution_id,
                node_id="review",
                step_key="review",
                run_id=run_id,
                kind="approval",
                status="resolved" if decided else "pending",
                resolution={"decision": "approve"} if decided else None,
            )
        )
        session.execute(
            update(Execution).where(Execution.id == execution_id).values(status="waiting")
        )
    return execution_id, run_id


def paused(settings: Settings, instance: DagsterInstance) -> str:
    """An execution whose run POST /pause terminated."""
    execution_id = committed(settings)
    run_id = add_run(
        settings, instance, execution_id, DagsterRunStatus.CANCELED, **{PAUSED_TAG: "true"}
    )
    with session_scope(get_engine(settings.database_url)) as session:
        session.execute(
            update(Execution)
            .where(Execution.id == execution_id)
            .values(paused_run_id=run_id, paused_at=utcnow(), status="paused")
        )
    return execution_id


def failed(settings: Settings, instance: DagsterInstance) -> tuple[str, str]:
    execution_id = committed(settings)
    return execution_id, add_run(settings, instance, execution_id, DagsterRunStatus.FAILURE)


def on(settings: Settings, execution_id: str, action: Callable[[Session, Execution], T]) -> T:
    """`action` on the execution in a session of its own (an API request, a sensor tick)."""
    with session_scope(get_engine(settings.database_url)) as session:
        execution = session.get(Execution, execution_id)
        assert execution is not None
        return action(session, execution)


def cancel(
    settings: Settings, client: RecordingDagsterClient, execution_id: str
) -> Callable[[], None]:
    return lambda: on(settings, execution_id, lambda s, e: lifecycle.cancel_execution(s, client, e))


def retry(
    settings: Settings, client: RecordingDagsterClient, execution_id: str
) -> Callable[[], str]:
    return lambda: on(
        settings,
        execution_id,
        lambda s, e: lifecycle.retry_execution(s, client, e),
    )


def shown(settings: Settings, client: RecordingDagsterClient, execution_id: str) -> str:
    """The status GET /executions/{id} shows."""
    return on(settings, execution_id, lambda s, e: refresh(s, client, e).execution.status)


def active_runs(instance: DagsterInstance, execution_id: str) -> list[str]:
    runs = instance.get_runs()
    return [
        r.run_id
        for r in runs
        if r.tags.get("flowmaestro/execution_id") == execution_id and r.status.value in ACTIVE
    ]


def waitpoint_status(settings: Settings, execution_id: str) -> str:
    with session_scope(get_engine(settings.database_url)) as session:
        status = session.scalar(
            select(Waitpoint.status).where(Waitpoint.execution_id == execution_id)
        )
        assert status is not None
        return status


class Hold:
    """Holds one recorded action until `release()`; `entered` is set once it is held."""

    def __init__(self, action: str) -> None:
        self.action = action
        self.entered = threading.Event()
        self.released = threading.Event()

    def __call__(self, action: str, _run_id: str | None = None) -> None:
        if action == self.action:
            self.entered.set()
            assert self.released.wait(HOLD), "the held action was never released"

    def reached(self) -> None:
        assert self.entered.wait(HOLD), f"{self.action} was never asked of Dagster"

    def release(self) -> None:
        self.released.set()


def outcome(future: Future[Any]) -> Any:
    """What the call returned, or the exception it raised."""
    try:
        return future.result(timeout=HOLD)
    except Exception as exc:  # noqa: BLE001 - the outcome is what the test looks at
        return exc


# -- retry ---------------------------------------------------------------------------------------


def test_eight_concurrent_retries_start_one_run_and_seven_get_409(
    settings: Settings,
    instance: DagsterInstance,
    client: RecordingDagsterClient,
    pool: ThreadPoolExecutor,
) -> None:
    execution_id, failed_run = failed(settings, instance)
    held = Hold("reexecute_from_failure")
    client.before_send = held  # the winner waits in Dagster until the others have answered
    retrying = lined_up(threading.Barrier(8), retry(settings, client, execution_id))

    futures = [pool.submit(retrying) for _ in range(8)]
    deadline = time.monotonic() + 10
    while sum(f.done() for f in futures) < 7 and time.monotonic() < deadline:
        time.sleep(0.02)
    held.release()
    outcomes = [outcome(f) for f in futures]

    run_ids = [o for o in outcomes if isinstance(o, str)]
    conflicts = [o for o in outcomes if isinstance(o, Conflict)]
    assert len(run_ids) == 1 and len(conflicts) == 7, outcomes
    assert all("already being retried" in str(c) for c in conflicts), conflicts
    [launch] = client.calls_to("reexecute_from_failure")
    assert (launch.run_id, launch.arguments["parent_run_id"]) == (run_ids[0], failed_run)
    assert shown(settings, client, execution_id) == "queued"


class ReadEarlier(RecordingDagsterClient):
    """A client whose first read of the runs is an earlier snapshot: a request that read the
    execution's runs before another retry launched its run, and claims after it finished."""

    def __init__(self, instance: DagsterInstance, snapshot: list[RunInfo]) -> None:
        super().__init__(instance)
        self.snapshot: list[RunInfo] | None = snapshot

    def runs_for_execution(self, execution_id: str) -> list[RunInfo]:
        snapshot, self.snapshot = self.snapshot, None
        return snapshot if snapshot is not None else super().runs_for_execution(execution_id)


def test_a_retry_that_read_the_runs_before_another_retry_finished_gets_409(
    settings: Settings, instance: DagsterInstance, client: RecordingDagsterClient
) -> None:
    execution_id, _ = failed(settings, instance)
    slower = ReadEarlier(instance, client.runs_for_execution(execution_id))
    retry(settings, client, execution_id)()

    with pytest.raises(Conflict, match="already retried"):
        retry(settings, slower, execution_id)()
    assert len(client.calls_to("reexecute_from_failure")) == 1
    assert slower.calls == []


def test_the_loser_of_two_concurrent_retries_gets_409_from_the_api(
    database_url: str,
    instance: DagsterInstance,
    client: RecordingDagsterClient,
    pool: ThreadPoolExecutor,
) -> None:
    settings = ApiSettings(
        database_url=database_url,
        dagster_graphql_url="http://127.0.0.1:9/graphql",
        launch_on_submit=False,
        secret_key="claims-test-secret-0123456789",
    )
    auth = make_key(database_url, "ada@example.com")
    with session_scope(get_engine(database_url)) as session:
        user = session.scalar(select(User).where(User.email == "ada@example.com"))
        assert user is not None
        workflow_id = deploy(session, user, approval_flow())
        session.commit()
        execution, _ = start_execution(
            session,
            user=user,
            workflow_id=workflow_id,
            body=ExecutionCreate(inputs={"who": "ada"}),
            idempotency_key=None,
            default_ttl_seconds=3600,
            shards=1,
        )
        execution_id = execution.id
    add_run(settings, instance, execution_id, DagsterRunStatus.FAILURE)
    held = Hold("reexecute_from_failure")
    client.before_send = held
    with TestClient(create_app(settings, dagster=client)) as api:
        first = pool.submit(api.post, f"/executions/{execution_id}/retry", headers=auth)
        held.reached()
        second = api.post(f"/executions/{execution_id}/retry", headers=auth)
        held.release()
        assert first.result(HOLD).status_code == 202

    assert second.status_code == 409, second.text
    assert "already being retried" in second.json()["detail"]
    assert len(client.calls_to("reexecute_from_failure")) == 1


# -- cancel vs launch ----------------------------------------------------------------------------


@pytest.mark.parametrize("hold", ["before the run exists", "after the run exists"])
def test_a_cancel_during_the_launch_wins_and_the_launched_run_is_stopped(
    hold: str,
    settings: Settings,
    instance: DagsterInstance,
    client: RecordingDagsterClient,
    pool: ThreadPoolExecutor,
) -> None:
    execution_id = committed(settings)
    held = Hold("launch")
    if hold == "before the run exists":
        client.before_send = held
    else:
        client.after_run = held

    def launch() -> str | None:
        with session_scope(get_engine(settings.database_url)) as session:
            return launch_execution(session, client, execution_id, lease_seconds=60)

    launcher = pool.submit(launch)
    held.reached()  # the launch lease is held and Dagster is being asked for the run
    cancel(settings, client, execution_id)()
    held.release()

    assert outcome(launcher) is None  # it launched nothing that runs
    [launched] = client.calls_to("launch")
    assert active_runs(instance, execution_id) == []
    assert launched.run_id in {c.arguments["run_id"] for c in client.calls_to("terminate")}
    assert shown(settings, client, execution_id) == "cancelled"


# -- cancel vs resume ----------------------------------------------------------------------------


@pytest.mark.parametrize("hold", ["before the run exists", "after the run exists"])
def test_a_cancel_wins_over_the_waitpoint_sensor_resuming_the_execution(
    hold: str,
    settings: Settings,
    instance: DagsterInstance,
    client: RecordingDagsterClient,
    pool: ThreadPoolExecutor,
) -> None:
    execution_id, parked_run = waiting(settings, instance, decided=True)
    held = Hold("reexecute_steps")
    if hold == "before the run exists":
        client.before_send = held
    else:
        client.after_run = held

    def resume() -> str | None:
        with session_scope(get_engine(settings.database_url)) as session:
            return resume_run(session, client, execution_id=execution_id, parked_run_id=parked_run)

    resumer = pool.submit(resume)
    held.reached()
    cancel(settings, client, execution_id)()
    held.release()

    assert outcome(resumer) is None
    assert active_runs(instance, execution_id) == []
    assert waitpoint_status(settings, execution_id) == "cancelled"
    assert shown(settings, client, execution_id) == "cancelled"


def lined_up(barrier: threading.Barrier, call: Callable[[], T]) -> Callable[[], T]:
    def waiting_for_the_others() -> T:
        barrier.wait(HOLD)
        return call()

    return waiting_for_the_others


@pytest.mark.parametrize("round_", range(5))
def test_cancel_and_resume_lined_up_on_a_barrier_end_cancelled_with_no_run(
    round_: int,
    settings: Settings,
    instance: DagsterInstance,
    client: RecordingDagsterClient,
    pool: ThreadPoolExecutor,
) -> None:
    execution_id, parked_run = waiting(settings, instance, decided=True)
    barrier = threading.Barrier(2)

    def resume() -> str | None:
        with session_scope(get_engine(settings.database_url)) as session:
            return resume_run(session, client, execution_id=execution_id, parked_run_id=parked_run)

    resumer = pool.submit(lined_up(barrier, resume))
    canceller = pool.submit(lined_up(barrier, cancel(settings, client, execution_id)))

    assert outcome(canceller) is None
    assert not isinstance(outcome(resumer), Exception), outcome(resumer)
    assert active_runs(instance, execution_id) == []
    assert shown(settings, client, execution_id) == "cancelled"


def test_a_cancel_wins_over_a_concurrent_resume_of_a_paused_execution(
    settings: Settings,
    instance: DagsterInstance,
    client: RecordingDagsterClient,
    pool: ThreadPoolExecutor,
) -> None:
    execution_id = paused(settings, instance)
    held = Hold("reexecute_from_failure")
    client.before_send = held

    def resume() -> str | None:
        with session_scope(get_engine(settings.database_url)) as session:
            execution = session.get(Execution, execution_id)
            assert execution is not None and execution.user_id
            user = session.get(User, execution.user_id)
            assert user is not None
            return lifecycle.resume_execution(
                session, client, execution, user=user, lease_seconds=60
            )

    resumer = pool.submit(resume)
    held.reached()
    cancel(settings, client, execution_id)()
    held.release()

    lost = outcome(resumer)
    assert isinstance(lost, Conflict) and "cancelled" in str(lost), lost
    assert active_runs(instance, execution_id) == []
    assert shown(settings, client, execution_id) == "cancelled"


def test_a_cancel_during_a_retry_wins_and_the_retried_run_is_stopped(
    settings: Settings,
    instance: DagsterInstance,
    client: RecordingDagsterClient,
    pool: ThreadPoolExecutor,
) -> None:
    execution_id, _ = failed(settings, instance)
    held = Hold("reexecute_from_failure")
    client.before_send = held

    retrier = pool.submit(retry(settings, client, execution_id))
    held.reached()
    cancel(settings, client, execution_id)()
    held.release()

    lost = outcome(retrier)
    assert isinstance(lost, Conflict) and "cancelled" in str(lost), lost
    assert active_runs(instance, execution_id) == []
    assert shown(settings, client, execution_id) == "cancelled"


# -- cancel in every state -----------------------------------------------------------------------


def in_state(state: str, settings: Settings, instance: DagsterInstance) -> str:
    if state == "queued":
        return committed(settings)
    if state == "launched, not started":
        execution_id = committed(settings)
        add_run(settings, instance, execution_id, DagsterRunStatus.NOT_STARTED)
        return execution_id
    if state == "running":
        execution_id = committed(settings)
        add_run(settings, instance, execution_id, DagsterRunStatus.STARTED)
        return execution_id
    if state == "waiting":
        return waiting(settings, instance, decided=False)[0]
    if state == "waiting, decided":
        return waiting(settings, instance, decided=True)[0]
    if state == "pausing":
        execution_id = committed(settings)
        add_run(
            settings, instance, execution_id, DagsterRunStatus.CANCELING, **{PAUSED_TAG: "true"}
        )
        return execution_id
    assert state == "paused"
    return paused(settings, instance)


STATES = [
    "queued",
    "launched, not started",
    "running",
    "waiting",
    "waiting, decided",
    "pausing",
    "paused",
]


@pytest.mark.parametrize("state", STATES)
def test_cancel_works_in_every_state(
    state: str, settings: Settings, instance: DagsterInstance, client: RecordingDagsterClient
) -> None:
    execution_id = in_state(state, settings, instance)
    before = shown(settings, client, execution_id)
    assert before == {"launched, not started": "queued", "waiting, decided": "waiting"}.get(
        state, state
    )

    cancel(settings, client, execution_id)()

    assert shown(settings, client, execution_id) == "cancelled"
    assert active_runs(instance, execution_id) == []
    if state.startswith("waiting"):
        assert waitpoint_status(settings, execution_id) == "cancelled"
        with session_scope(get_engine(settings.database_url)) as session:
            assert tick(session, client)["resumed"] == 0
        assert client.calls_to("reexecute_steps") == []
    with pytest.raises(Conflict, match="already cancelled"):
        cancel(settings, client, execution_id)()


def test_two_concurrent_cancels_cancel_once(
    settings: Settings,
    instance: DagsterInstance,
    client: RecordingDagsterClient,
    pool: ThreadPoolExecutor,
) -> None:
    execution_id = in_state("running", settings, instance)
    barrier = threading.Barrier(2)
    cancelling = lined_up(barrier, cancel(settings, client, execution_id))

    outcomes = [outcome(f) for f in [pool.submit(cancelling), pool.submit(cancelling)]]
    assert sorted(type(o).__name__ for o in outcomes) == ["Conflict", "NoneType"], outcomes
    assert shown(settings, client, execution_id) == "cancelled"
    assert active_runs(instance, execution_id) == []


def test_a_finished_execution_cannot_be_cancelled(
    settings: Settings, instance: DagsterInstance, client: RecordingDagsterClient
) -> None:
    execution_id = committed(settings)
    add_run(settings, instance, execution_id, DagsterRunStatus.SUCCESS)
    with pytest.raises(Conflict, match="already succeeded"):
        cancel(settings, client, execution_id)()
    assert shown(settings, client, execution_id) == "succeeded"
