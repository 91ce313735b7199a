"""The pools measurement: with pool granularity `op`, a workflow limit of 1 is not one run at a
time. The run coordinator holds a second run only while an op of the first holds (or waits for)
the pool's slot; whenever the first run holds none — between two ops, or while one of its nodes
waits to be retried — a dequeue pass launches the second, and from then on the two runs' ops
take turns. The retry wait makes that window seconds long, so it is measured here without
luck. `run` granularity (the default) keeps the second run queued until the first ends:
test_queues_limits.py runs the same workflow. See docs/queues.md.
"""

from collections.abc import Iterator

import pytest

from tests.api.test_queues_support import (
    QueueStack,
    deploy,
    facts,
    finished,
    max_overlap,
    new_user,
    queue_stack,
    retrying_workflow,
    run_statuses,
    submit,
    wait_for,
)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[QueueStack]:
    with queue_stack(
        tmp_path_factory.mktemp("queues-op-pools"), user_run_limit=None, pool_granularity="op"
    ) as started:
        yield started


def test_op_granularity_limits_ops_not_runs(stack: QueueStack) -> None:
    client, instance = stack.client, stack.instance
    auth = new_user(stack, "pools")
    workflow_id = deploy(
        client, auth, retrying_workflow("retries"), settings={"concurrency_limit": 1}
    )
    first = submit(client, auth, workflow_id)
    wait_for(lambda: run_statuses(instance, [first]) == ["STARTED"])
    second = submit(client, auth, workflow_id)
    finished(client, auth, first, second)
    runs = [facts(instance, first), facts(instance, second)]
    # Both in progress at once: the second was dequeued while the first waited to retry ...
    assert runs[1].dequeued < runs[0].end
    assert max_overlap(runs) == 2

    # Attempts, not steps: a retried step's span covers its waits, when it holds no slot.
    steps = [
        (attempt.start_time, attempt.end_time)
        for run in runs
        for stat in instance.get_run_step_stats(run.run_id)
        for attempt in stat.attempts_list
        if attempt.start_time is not None and attempt.end_time is not None
    ]
    assert len(steps) == 2 * 4  # in and three attempts of the call (out is skipped), per run
    points = sorted([(s, 1) for s, _ in steps] + [(e, -1) for _, e in steps])
    current = most = 0
    for _, step in points:
        current += step
        most = max(most, current)
    assert most == 1  # ... while their ops (all in the workflow's pool) took turns
