""" "Why is this queued" replays the daemon's dequeue pass: checked against Dagster's own.

Runs are stored in a real instance (rendered dagster.yaml, pools with slots), then Dagster's
QueuedRunCoordinatorDaemon picks what it would launch and `simulate` must pick the same; the
reasons it gives for the others must name the limit that blocks them.
"""

import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from dagster import DagsterInstance, DagsterRunStatus
from dagster._core.storage.dagster_run import RunOpConcurrency
from dagster._daemon.run_coordinator.queued_run_coordinator_daemon import (
    QueuedRunCoordinatorDaemon,
)

from flowmaestro_api.settings import ApiSettings
from flowmaestro_dagster.control.queues import read_snapshot, simulate
from flowmaestro_dagster.tags import USER_TAG, USER_WORKFLOW_TAG, WORKFLOW_ID_TAG, workflow_pool
from tests.api.e2e import rendered_instance
from tests.api.test_queues_support import store_run


@pytest.fixture
def make_instance(tmp_path: Path) -> Iterator[Any]:
    opened: list[DagsterInstance] = []

    def make(**values: Any) -> DagsterInstance:
        settings = ApiSettings(_env_file=None, **values)  # type: ignore[call-arg]
        instance = rendered_instance(tmp_path / f"home-{len(opened)}", settings)
        opened.append(instance)
        return instance

    yield make
    for instance in opened:
        instance.dispose()


def add_run(
    instance: DagsterInstance,
    *,
    user: str,
    priority: int = 0,
    queue: str = "default",
    workflow: str = "wf",
    status: DagsterRunStatus = DagsterRunStatus.QUEUED,
    one_at_a_time: bool = False,
) -> str:
    tags = {
        USER_TAG: user,
        WORKFLOW_ID_TAG: workflow,
        "flowmaestro/queue": queue,
        "dagster/priority": str(priority),
    }
    if one_at_a_time:
        tags[USER_WORKFLOW_TAG] = f"{workflow}:{user}"
    pool = workflow_pool(workflow)
    concurrency = RunOpConcurrency(
        root_key_counts={pool: 1}, has_unconstrained_root_nodes=False, all_pools={pool}
    )
    return store_run(instance, tags, status, run_op_concurrency=concurrency)


def dagster_picks(instance: DagsterInstance) -> list[str]:
    daemon = QueuedRunCoordinatorDaemon(interval_seconds=1)
    runs = daemon._get_runs_to_dequeue(  # the daemon's own decision, without launching
        instance, instance.get_concurrency_config(), fixed_iteration_time=None
    )
    return [run.run_id for run in runs]


def our_picks(instance: DagsterInstance, page_size: int = 100) -> tuple[list[str], dict[str, Any]]:
    verdicts = simulate(read_snapshot(instance), page_size=page_size)
    launching = sorted((v for v in verdicts.values() if not v.holds), key=lambda v: v.position)
    return [v.run_id for v in launching], verdicts


def test_priority_first_then_fifo_and_the_user_limit(make_instance: Any) -> None:
    instance = make_instance(user_run_limit=1, max_concurrent_runs=10)
    running = add_run(instance, user="ann", status=DagsterRunStatus.STARTED)
    low = add_run(instance, user="bob", priority=-10)
    first_high = add_run(instance, user="bob", priority=10)
    second_high = add_run(instance, user="bob", priority=10)
    ann_next = add_run(instance, user="ann", priority=100)
    picks, verdicts = our_picks(instance)
    assert picks == dagster_picks(instance) == [first_high]
    assert [verdicts[r].position for r in (ann_next, first_high, second_high, low)] == [1, 2, 3, 4]
    assert "per-user limit: this user has 1 run(s) in progress; the limit is 1" in (
        verdicts[ann_next].reason
    )
    assert "0 run(s) in progress and 1 ahead of it in the queue" in verdicts[second_high].reason
    assert running not in verdicts


def test_fairness_a_backlog_of_one_user_does_not_hold_another_users_run(
    make_instance: Any,
) -> None:
    instance = make_instance(user_run_limit=2, max_concurrent_runs=4)
    for _ in range(2):
        add_run(instance, user="ann", status=DagsterRunStatus.STARTED)
    for _ in range(150):  # more than a page of the daemon's queue scan
        add_run(instance, user="ann")
    grace = add_run(instance, user="grace")
    picks, verdicts = our_picks(instance)
    assert picks == dagster_picks(instance) == [grace]
    assert verdicts[grace].position == 151  # last in line, yet the next to start


def test_workflow_pool_counts_runs_and_queues_have_their_own_limit(make_instance: Any) -> None:
    instance = make_instance(queue_limits={"ai-workflows": 1}, max_concurrent_runs=10)
    instance.event_log_storage.set_concurrency_slots(workflow_pool("limited"), 2)
    add_run(instance, user="a", workflow="limited", status=DagsterRunStatus.STARTED)
    second = add_run(instance, user="b", workflow="limited")
    third = add_run(instance, user="c", workflow="limited")
    add_run(instance, user="d", queue="ai-workflows", status=DagsterRunStatus.STARTED)
    ai = add_run(instance, user="e", queue="ai-workflows")
    one = add_run(instance, user="f", workflow="solo", one_at_a_time=True)
    two = add_run(instance, user="f", workflow="solo", one_at_a_time=True)
    picks, verdicts = our_picks(instance)
    assert sorted(picks) == sorted(dagster_picks(instance)) == sorted([second, one])
    assert verdicts[third].reason.startswith("workflow concurrency limit: 1 run(s) of this")
    assert "1 ahead of it in the queue; the limit is 2" in verdicts[third].reason
    assert verdicts[ai].reason.startswith("queue 'ai-workflows' is full: 1 run(s) in progress")
    assert verdicts[two].reason.startswith("one at a time per user")


def test_instance_limit(make_instance: Any) -> None:
    instance = make_instance(max_concurrent_runs=2, user_run_limit=1)
    add_run(instance, user="a", status=DagsterRunStatus.STARTED)
    b = add_run(instance, user="b")
    c = add_run(instance, user="c")
    picks, verdicts = our_picks(instance)
    assert picks == dagster_picks(instance) == [b]
    assert verdicts[c].reason == (
        "instance limit: 1 run(s) in progress and 1 ahead of it in the queue; "
        "max_concurrent_runs is 2"
    )
    add_run(instance, user="d", status=DagsterRunStatus.STARTED)
    picks, verdicts = our_picks(instance)
    assert picks == dagster_picks(instance) == []
    assert verdicts[b].reason.startswith("instance limit: 2 run(s) in progress")


@pytest.mark.parametrize("seed", range(6))
def test_random_queues_match_the_daemon(make_instance: Any, seed: int) -> None:
    rng = random.Random(seed)
    instance = make_instance(
        max_concurrent_runs=rng.choice([-1, 6, 12]),
        user_run_limit=rng.choice([None, 1, 2]),
        queue_limits={"ai-workflows": rng.choice([0, 1, 2]), "data-processing": 3},
    )
    for workflow in ("w1", "w2"):
        instance.event_log_storage.set_concurrency_slots(workflow_pool(workflow), rng.randint(1, 3))
    users = ["u1", "u2", "u3", "u4"]
    for _ in range(rng.randint(0, 5)):
        add_run(
            instance,
            user=rng.choice(users),
            workflow=rng.choice(["w1", "w2", "w3"]),
            queue=rng.choice(["default", "ai-workflows", "data-processing"]),
            status=DagsterRunStatus.STARTED,
        )
    for _ in range(rng.randint(20, 140)):
        add_run(
            instance,
            user=rng.choice(users),
            priority=rng.choice([-10, 0, 0, 10, 3]),
            workflow=rng.choice(["w1", "w2", "w3"]),
            queue=rng.choice(["default", "ai-workflows", "data-processing"]),
            one_at_a_time=rng.random() < 0.2,
        )
    ours, verdicts = our_picks(instance)
    assert sorted(ours) == sorted(dagster_picks(instance))
    assert all(v.holds for v in verdicts.values() if v.run_id not in ours)
