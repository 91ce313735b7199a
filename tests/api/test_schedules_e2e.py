"""Schedule triggers against a real Dagster: the daemon's own ticks, a stop, a double evaluation.

One stack for the module. Its fixture deploys three scheduled workflows before any test waits,
so the waits overlap:

* `stopped` (every minute), stopped through Dagster's GraphQL right after its deploy;
* `firing` (every minute), deployed after that stop, left as the deploy turned it on;
* `yearly` (`0 9 1 1 *`, never due while this runs), evaluated by hand (`scheduleDryRun`) for
  past slots (`missedTicks: run_once`, so a late evaluation still submits).

Timing (Dagster 1.13, dagster/_scheduler/scheduler.py): the scheduler loop wakes at each minute
boundary (`_get_next_scheduler_iteration_time`), not on a 30 s interval, and nothing in
dagster.yaml or the environment changes that. A schedule that is running by default gets its
state at the first iteration that sees it, with that iteration's time as its start, so its
first tick is the slot after: between one and two minutes after the deploy. The daemon sees a
deploy at once (its gRPC watch threads follow the code server the API's reload restarted).
"""

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from flowmaestro_dagster.control.client import REPOSITORY
from flowmaestro_dagster.control.schedules import schedule_name_for
from flowmaestro_dagster.store.db import get_engine, session_scope
from flowmaestro_dagster.store.models import Execution, IdempotencyKey, Workflow
from flowmaestro_dagster.testing.stack import DagsterStack
from tests.api import e2e
from tests.api.e2e import deployment, finished, new_user, wait_for
from tests.builders import chain, node

pytestmark = pytest.mark.slow

stack = e2e.stack_fixture("schedules")
settings = e2e.settings_fixture()
dagster_client, client = e2e.dagster_client, e2e.client

EVERY_MINUTE = "* * * * *"
YEARLY = "0 9 1 1 *"  # 1 January, 09:00 UTC
FIRST_TICK_TIMEOUT = 180  # deploy → first slot is 60 to 120 s, then the tick's submit

_SCHEDULE = """
query Schedule($selector: ScheduleSelector!) {
  scheduleOrError(scheduleSelector: $selector) {
    __typename
    ... on Schedule {
      id
      cronSchedule
      executionTimezone
      scheduleState { status ticks(limit: 20) { status timestamp skipReason } }
    }
    ... on Error { message }
  }
}
"""
_STOP = """
mutation Stop($id: String!) {
  stopRunningSchedule(id: $id) {
    __typename
    ... on ScheduleStateResult { scheduleState { status } }
    ... on Error { message }
  }
}
"""
_DRY_RUN = """
mutation DryRun($selector: ScheduleSelector!, $timestamp: Float!) {
  scheduleDryRun(selectorData: $selector, timestamp: $timestamp) {
    __typename
    ... on DryRunInstigationTick {
      evaluationResult { skipReason runRequests { runKey } error { message } }
    }
    ... on Error { message }
  }
}
"""
_DAEMON = """
{ instance { daemonHealth { daemonStatus(daemonType: "SCHEDULER") { required healthy } } } }
"""


def scheduled_flow(name: str, cron: str, **trigger: Any) -> dict[str, Any]:
    return chain(
        node("start", "trigger", triggerType="schedule", schedule=cron, **trigger),
        node("out", "output", outputName="done", value="ok"),
        name=name,
    )


# -- Dagster's GraphQL and the platform database ------------------------------------------------


def graphql(stack: DagsterStack, query: str, **variables: Any) -> dict[str, Any]:
    response = httpx.post(
        stack.graphql_url, json={"query": query, "variables": variables}, timeout=120
    )
    response.raise_for_status()
    body: dict[str, Any] = response.json()
    assert not body.get("errors"), body
    data: dict[str, Any] = body["data"]
    return data


@dataclass(frozen=True)
class Scheduled:
    """A deployed workflow and its Dagster schedule."""

    workflow_id: str
    deployed_at: datetime
    selector: dict[str, str]

    def state(self, stack: DagsterStack) -> dict[str, Any]:
        found = graphql(stack, _SCHEDULE, selector=self.selector)["scheduleOrError"]
        assert found["__typename"] == "Schedule", found
        return found


def deploy_scheduled(
    client: TestClient, auth: dict[str, str], stack: DagsterStack, definition: dict[str, Any]
) -> Scheduled:
    deployed_at = datetime.now(UTC)
    deployed = deployment(client, auth, definition)
    with session_scope(get_engine(stack.database_url)) as session:
        workflow = session.get(Workflow, deployed["workflow_id"])
        assert workflow is not None
        name = schedule_name_for(workflow)
    selector = {
        "repositoryLocationName": deployed["location"],
        "repositoryName": REPOSITORY,
        "scheduleName": name,
    }
    return Scheduled(deployed["workflow_id"], deployed_at, selector)


def slot_keys(stack: DagsterStack, workflow_id: str) -> dict[datetime, str]:
    """The workflow's schedule slots that submitted an execution: slot → execution id."""
    prefix = f"schedule:{workflow_id}:"
    with session_scope(get_engine(stack.database_url)) as session:
        rows = session.execute(
            select(IdempotencyKey.key, IdempotencyKey.execution_id).where(
                IdempotencyKey.workflow_id == workflow_id
            )
        ).all()
    assert all(key.startswith(prefix) for key, _ in rows), rows
    return {datetime.fromisoformat(key.removeprefix(prefix)): eid for key, eid in rows}


def execution_ids(stack: DagsterStack, workflow_id: str) -> list[str]:
    with session_scope(get_engine(stack.database_url)) as session:
        return list(
            session.scalars(select(Execution.id).where(Execution.workflow_id == workflow_id))
        )


# -- the module's workflows ------------------------------------------------------------------------


@dataclass(frozen=True)
class Deployed:
    auth: dict[str, str]
    stopped: Scheduled
    stopped_at: datetime
    firing: Scheduled
    yearly: Scheduled


@pytest.fixture(scope="module")
def deployed(client: TestClient, stack: DagsterStack) -> Deployed:
    """All three deployed (and `stopped` stopped) before any test waits for a slot."""
    auth = new_user(stack.database_url, "schedules")
    stopped = deploy_scheduled(
        client, auth, stack, scheduled_flow("Stopped Minutely", EVERY_MINUTE)
    )
    result = graphql(stack, _STOP, id=stopped.state(stack)["id"])["stopRunningSchedule"]
    assert result["__typename"] == "ScheduleStateResult", result
    assert result["scheduleState"]["status"] == "STOPPED", result
    stopped_at = datetime.now(UTC)
    firing = deploy_scheduled(client, auth, stack, scheduled_flow("Firing Minutely", EVERY_MINUTE))
    yearly = deploy_scheduled(
        client,
        auth,
        stack,
        scheduled_flow("Yearly Report", YEARLY, overlap="allow", missedTicks="run_once"),
    )
    return Deployed(auth, stopped, stopped_at, firing, yearly)


@pytest.fixture(scope="module")
def first_tick(deployed: Deployed, stack: DagsterStack) -> tuple[datetime, str]:
    """The first slot the daemon ran for `firing`, and its execution (waited for once)."""

    def fired() -> tuple[datetime, str] | None:
        slots = slot_keys(stack, deployed.firing.workflow_id)
        return min(slots.items()) if slots else None

    found: tuple[datetime, str] = wait_for(fired, timeout=FIRST_TICK_TIMEOUT, interval=1)
    return found


# -- the tests -------------------------------------------------------------------------------------


def test_two_evaluations_of_one_slot_submit_one_execution(
    client: TestClient, deployed: Deployed, stack: DagsterStack
) -> None:
    yearly = deployed.yearly
    assert yearly.state(stack)["cronSchedule"] == YEARLY
    slot = datetime(2025, 1, 1, 9, 0, tzinfo=UTC)

    def evaluate(when: datetime) -> str:
        # Dagster evaluates the first slot at or after `timestamp`: one second before `when`.
        before = when.timestamp() - 1
        answer = graphql(stack, _DRY_RUN, selector=yearly.selector, timestamp=before)
        answer = answer["scheduleDryRun"]
        assert answer["__typename"] == "DryRunInstigationTick", answer
        evaluation = answer["evaluationResult"]
        assert evaluation["error"] is None and not evaluation["runRequests"], evaluation
        reason: str = evaluation["skipReason"]
        return reason

    first = evaluate(slot)
    second = evaluate(slot)  # a retried tick, a second daemon, a UI "test schedule"

    ((when, execution_id),) = slot_keys(stack, yearly.workflow_id).items()
    assert when == slot
    assert f"submitted execution {execution_id}" in first
    assert second == f"{slot.isoformat()}: already submitted as execution {execution_id}"
    assert execution_ids(stack, yearly.workflow_id) == [execution_id]

    evaluate(slot.replace(year=2024))  # another slot is another execution
    assert set(slot_keys(stack, yearly.workflow_id)) == {slot, slot.replace(year=2024)}

    done = finished(client, deployed.auth, execution_id)
    assert done["status"] == "succeeded" and done["outputs"] == {"done": "ok"}, done


def test_an_every_minute_schedule_fires_and_its_execution_succeeds(
    client: TestClient, deployed: Deployed, stack: DagsterStack, first_tick: tuple[datetime, str]
) -> None:
    daemon = graphql(stack, _DAEMON)["instance"]["daemonHealth"]["daemonStatus"]
    assert daemon["required"] is True, daemon
    firing = deployed.firing
    slot, execution_id = first_tick
    assert slot.second == 0 and slot > firing.deployed_at  # a slot after the deploy, not before

    done = finished(client, deployed.auth, execution_id, timeout=90)  # the owner's execution
    assert done["status"] == "succeeded" and done["outputs"] == {"done": "ok"}, done
    assert done["workflow_id"] == firing.workflow_id and len(done["runs"]) == 1

    # The daemon ticked it (a dry run leaves no tick): its log says what it submitted.
    state = firing.state(stack)["scheduleState"]
    assert state["status"] == "RUNNING"
    ticks = {tick["timestamp"]: tick for tick in state["ticks"]}
    tick = ticks.get(slot.timestamp())
    assert tick is not None, (slot, state["ticks"])
    assert tick["status"] == "SKIPPED"  # a SkipReason: never a RunRequest of Dagster's
    assert f"submitted execution {execution_id}" in tick["skipReason"], tick


def test_a_stopped_schedule_does_not_fire(
    client: TestClient, deployed: Deployed, stack: DagsterStack, first_tick: tuple[datetime, str]
) -> None:
    stopped = deployed.stopped
    # `firing`, deployed after the stop with the same cron, ran a slot after it: the daemon
    # evaluated that slot for both, and `stopped` (deployed earlier) would have fired too.
    slot, _ = first_tick
    assert slot > deployed.stopped_at
    assert slot_keys(stack, stopped.workflow_id) == {}
    assert execution_ids(stack, stopped.workflow_id) == []
    state = stopped.state(stack)["scheduleState"]
    assert state["status"] == "STOPPED" and state["ticks"] == [], state
    listed = client.get(
        "/executions", params={"workflow_id": stopped.workflow_id}, headers=deployed.auth
    )
    assert listed.status_code == 200 and listed.json()["total"] == 0, listed.text
