"""Queue controls on a real Dagster (`dagster dev`, daemon running), through the API: a queue
paused with runs queued keeps them queued while running ones finish, and on resume each runs
once; a priority change moves a queued execution ahead; a user's own limit changes at once.

Asserted from Dagster's run storage and event log (enqueue, dequeue, start, end)."""

import time

import pytest
from dagster import RunsFilter

from tests.api.conftest import make_key
from tests.api.e2e import execution, wait_for
from tests.api.test_queues_support import (
    QueueStack,
    deploy,
    facts,
    finished,
    max_overlap,
    new_user,
    queue_stack_fixture,
    run_statuses,
    slow_workflow,
    submit,
    user_id,
)

pytestmark = pytest.mark.slow

OPERATOR = "ops-e2e@example.com"

stack = queue_stack_fixture(
    "queue-controls",
    max_concurrent_runs=10,
    user_run_limit=3,
    queue_limits={"batch": 5, "solo": 1},
    operator_emails=OPERATOR,
)


def operator(stack: QueueStack) -> dict[str, str]:
    return make_key(stack.settings.database_url, OPERATOR)


def still_queued_after_passes(stack: QueueStack, ids: list[str], passes: int = 3) -> None:
    """Once every run is in the queue, several dequeue passes go by and each is still queued.

    The API launches in the background and the webserver creates a run (NOT_STARTED) before it
    enqueues it, so the passes are counted from the moment all of them are QUEUED: on a loaded
    machine that moment can come later than the passes themselves."""
    queued = ["QUEUED"] * len(ids)
    wait_for(lambda: run_statuses(stack.instance, ids) == queued)
    time.sleep(passes * stack.settings.dequeue_interval_seconds + 0.5)
    assert run_statuses(stack.instance, ids) == queued


def test_a_paused_queue_keeps_its_runs_until_resumed_then_each_runs_once(
    stack: QueueStack,
) -> None:
    client, instance, ops = stack.client, stack.instance, operator(stack)
    auth = new_user(stack, "pause")
    workflow_id = deploy(client, auth, slow_workflow("paused", 3000), settings={"queue": "batch"})
    running = submit(client, auth, workflow_id)
    wait_for(lambda: run_statuses(instance, [running]) == ["STARTED"])

    paused = client.post("/queues/batch/pause", headers=ops)
    assert paused.status_code == 200 and paused.json()["paused"], paused.text
    ids = [submit(client, auth, workflow_id) for _ in range(3)]
    finished(client, auth, running)  # a running run finishes
    still_queued_after_passes(stack, ids)
    for execution_id in ids:
        body = execution(client, auth, execution_id)
        assert body["status"] == "queued"
        assert body["queued_reason"] == "queue 'batch' is paused (limit 0)"

    resumed_at = time.time()
    resumed = client.post("/queues/batch/resume", headers=ops)
    assert resumed.status_code == 200 and resumed.json()["queued_runs"] == 3, resumed.text
    finished(client, auth, *ids)
    for execution_id in ids:
        runs = instance.get_runs(RunsFilter(tags={"flowmaestro/execution_id": execution_id}))
        assert len(runs) == 1  # each ran once
        assert execution(client, auth, execution_id)["status"] == "succeeded"
        assert facts(instance, execution_id).dequeued >= resumed_at
    assert facts(instance, running).end <= min(facts(instance, e).dequeued for e in ids)


def test_a_priority_change_moves_a_queued_execution_ahead(stack: QueueStack) -> None:
    client, instance = stack.client, stack.instance
    auth = new_user(stack, "priority")
    blocker_flow = deploy(client, auth, slow_workflow("blocker", 4000), settings={"queue": "solo"})
    quick_flow = deploy(client, auth, slow_workflow("quick", 10), settings={"queue": "solo"})
    blocker = submit(client, auth, blocker_flow)
    wait_for(lambda: run_statuses(instance, [blocker]) == ["STARTED"])
    ids = [submit(client, auth, quick_flow) for _ in range(3)]
    wait_for(lambda: run_statuses(instance, ids) == ["QUEUED"] * 3)
    # The daemon's order (launches are asynchronous: not always the order of submission).
    first, second, last = sorted(ids, key=lambda e: execution(client, auth, e)["queue_position"])
    assert execution(client, auth, last)["queue_position"] == 3

    changed = client.post(f"/executions/{last}/priority", json={"priority": "high"}, headers=auth)
    assert changed.status_code == 200 and changed.json()["queued_runs"] == 1, changed.text
    assert execution(client, auth, last)["queue_position"] == 1
    finished(client, auth, blocker, *ids)
    order = sorted(ids, key=lambda e: facts(instance, e).dequeued)
    assert order == [last, first, second]
    assert facts(instance, last).priority == 10


def test_a_users_own_limit_changes_at_once(stack: QueueStack) -> None:
    client, instance, ops = stack.client, stack.instance, operator(stack)
    auth = new_user(stack, "limited-user")
    me = user_id(stack, auth)
    workflow_id = deploy(client, auth, slow_workflow("limited-user", 3000))
    held = client.put(f"/queues/users/{me}/limit", json={"limit": 0}, headers=ops)
    assert held.status_code == 200, held.text
    ids = [submit(client, auth, workflow_id) for _ in range(3)]
    still_queued_after_passes(stack, ids)
    reason = execution(client, auth, ids[0])["queued_reason"]
    assert reason == "per-user limit: this user has 0 run(s) in progress; the limit is 0"

    raised = client.put(f"/queues/users/{me}/limit", json={"limit": 2}, headers=ops)
    assert raised.json()["limit"] == 2
    finished(client, auth, *ids)
    assert max_overlap([facts(instance, e) for e in ids]) == 2
    client.put(f"/queues/users/{me}/limit", json={"limit": None}, headers=ops)
