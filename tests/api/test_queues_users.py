"""Per-user limit 1, priorities and fairness, on a real Dagster (daemon running).

Everything is asserted from Dagster's run storage and event log: per user the runs never
overlap, start in priority order (FIFO among equal priorities), and one user's backlog of 100
queued runs does not hold another user's run.
"""

from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from dagster import DagsterRunStatus, RunsFilter

from flowmaestro_dagster.tags import WORKFLOW_ID_TAG
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


stack = queue_stack_fixture("queues-users", user_run_limit=1, max_concurrent_runs=10)


def test_one_run_per_user_at_a_time_in_priority_order(stack: QueueStack) -> None:
    client, instance = stack.client, stack.instance
    plans = {
        "ann": ["low", "high", 5, "normal", "high"],
        "grace": [0, "low", "high", -3],
    }
    users = {name: new_user(stack, name) for name in plans}
    workflows = {
        name: deploy(client, users[name], slow_workflow(f"{name} work", 1500)) for name in plans
    }
    blocker_workflows = {  # the blockers run long so everything else is queued behind them
        name: deploy(client, users[name], slow_workflow(f"{name} blocker", 12_000))
        for name in plans
    }
    blockers = {name: submit(client, users[name], blocker_workflows[name]) for name in plans}
    for name, execution_id in blockers.items():
        wait_for(
            lambda e=execution_id, n=name: execution(client, users[n], e)["status"] == "running"
        )
    queued = {
        name: [
            submit(client, users[name], workflows[name], priority=priority)
            for priority in plans[name]
        ]
        for name in plans
    }
    every = [e for ids in queued.values() for e in ids]
    wait_for(lambda: set(run_statuses(instance, every)) == {"QUEUED"})

    # While the blockers run: each queued execution says the per-user limit holds it.
    for name, ids in queued.items():
        body = execution(client, users[name], ids[0])
        assert body["status"] == "queued" and body["queue_position"] is not None
        assert body["queued_reason"].startswith("per-user limit: this user has 1 run(s)")
        overview = client.get("/queues", headers=users[name]).json()
        assert overview["users"] == [
            {
                "user_id": user_id(stack, users[name]),
                "limit": 1,
                "queued": len(ids),
                "running": 1,
                "waiting": 0,
                "pending_launch": 0,
            }
        ]
        mine = {w["workflow_id"]: w for w in overview["workflows"]}
        assert mine[workflows[name]]["queued"] == len(ids)
        assert mine[blocker_workflows[name]]["running"] == 1

    for name in plans:
        finished(client, users[name], blockers[name], *queued[name])
    for name in plans:
        blocker = facts(instance, blockers[name])
        runs = [facts(instance, e) for e in queued[name]]
        # Everything was queued before the blocker ended: the daemon chose among all of them.
        assert max(r.enqueued for r in runs) < blocker.end
        assert max_overlap([blocker, *runs]) == 1  # never two running for one user
        started = [r.execution_id for r in sorted(runs, key=lambda r: r.start)]
        by_priority = [
            r.execution_id for r in sorted(runs, key=lambda r: (-r.priority, r.storage_id))
        ]
        assert started == by_priority  # higher first; FIFO (enqueue order) among equals
        assert [r.execution_id for r in sorted(runs, key=lambda r: r.dequeued)] == by_priority
    everyone = [facts(instance, e) for e in [*blockers.values(), *every]]
    assert max_overlap(everyone) == 2  # the two users did run side by side


def test_a_backlog_of_100_does_not_keep_another_users_run_waiting(stack: QueueStack) -> None:
    client, instance = stack.client, stack.instance
    ann, grace = new_user(stack, "busy"), new_user(stack, "light")
    backlog_workflow = deploy(client, ann, slow_workflow("backlog", 60_000, 60_000, 60_000))
    blocker = submit(client, ann, backlog_workflow)
    wait_for(lambda: execution(client, ann, blocker)["status"] == "running")
    with ThreadPoolExecutor(max_workers=4) as pool:
        backlog = list(pool.map(lambda _: submit(client, ann, backlog_workflow), range(100)))
    wait_for(lambda: set(run_statuses(instance, backlog)) == {"QUEUED"}, timeout=180)

    newest = max(
        instance.get_run_records(RunsFilter(tags={WORKFLOW_ID_TAG: backlog_workflow})),
        key=lambda r: r.storage_id,
    )
    last = execution(client, ann, newest.dagster_run.tags["flowmaestro/execution_id"])
    assert last["queue_position"] == 100  # enqueued last, same priority: last in line
    assert last["queued_reason"].startswith("per-user limit: this user has 1 run(s) in progress")

    quick = deploy(client, grace, slow_workflow("quick", 10))
    mine = submit(client, grace, quick)
    finished(client, grace, mine)
    assert execution(client, grace, mine)["status"] == "succeeded"
    light = facts(instance, mine)
    # Grace's run went ahead of ann's backlog: it was enqueued last and nothing of ann's was
    # dequeued while it waited (ann's only slot was taken by the blocker all along).
    backlog_runs = instance.get_runs(RunsFilter(tags={WORKFLOW_ID_TAG: backlog_workflow}))
    queued = [r for r in backlog_runs if r.status == DagsterRunStatus.QUEUED]
    assert len(queued) == 100
    ann_blocker = facts_of_running(stack, blocker)
    assert ann_blocker.start_time is not None and ann_blocker.start_time < light.enqueued
    assert ann_blocker.end_time is None  # still running: ann's slot was never free

    # Clean up: the queued backlog is cancelled, the blocker terminated.
    for run in queued:
        instance.report_run_canceled(run, message="test cleanup")
    assert client.post(f"/executions/{blocker}/cancel", headers=ann).status_code == 202
    wait_for(lambda: execution(client, ann, blocker)["status"] == "cancelled")


def facts_of_running(stack: QueueStack, execution_id: str) -> Any:
    records = stack.instance.get_run_records(
        RunsFilter(tags={"flowmaestro/execution_id": execution_id})
    )
    return records[0]
