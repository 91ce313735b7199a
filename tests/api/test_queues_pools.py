"""The pools measurement: with pool granularity `op`, a workflow limit of 1 is not one run at a
time. The run coordinator holds a second run only while an op of the first holds (or waits for)
the pool's slot; whenever the first run holds none — between two ops, or while one of its nodes
waits to be retried — a dequeue pass launches the second, and from then on the two runs' ops
take turns. The retry wait makes that window seconds long, so it is measured here without
luck. `run` granularity (the default) keeps the second run queued until the first ends:
test_queues_limits.py runs the same workflow. See docs/queues.md.
"""

import pytest

from tests.api.test_queues_support import (
    QueueStack,
    max_overlap,
    most_at_once,
    queue_stack_fixture,
    two_retrying_runs,
)

pytestmark = pytest.mark.slow


stack = queue_stack_fixture("queues-op-pools", user_run_limit=None, pool_granularity="op")


def test_op_granularity_limits_ops_not_runs(stack: QueueStack) -> None:
    runs = two_retrying_runs(stack, "pools")
    # Both in progress at once: the second was dequeued while the first waited to retry ...
    assert runs[1].dequeued < runs[0].end
    assert max_overlap(runs) == 2

    # Attempts, not steps: a retried step's span covers its waits, when it holds no slot.
    steps = [
        (attempt.start_time, attempt.end_time)
        for run in runs
        for stat in stack.instance.get_run_step_stats(run.run_id)
        for attempt in stat.attempts_list
        if attempt.start_time is not None and attempt.end_time is not None
    ]
    assert len(steps) == 2 * 4  # in and three attempts of the call (out is skipped), per run
    assert most_at_once(steps) == 1  # ... while their ops (all in the workflow's pool) took turns
