"""Per-workflow limits, "one at a time per user", named queues, "why queued", parked runs —
on a real Dagster (daemon running), changed through the API while it runs.

Asserted from Dagster's run storage: how many runs of a workflow overlapped before and after
a PATCH, which limit GET /executions/{id} names, and that a run which parked at a waitpoint
(simulated: it ended with the `flowmaestro/waiting` tag, as the adapter leaves it — waitpoint
nodes are another issue's and not merged yet) leaves its slot to the next run.
"""

import time

import pytest
from dagster import RunsFilter

from flowmaestro_dagster.control.executions import compiled_for, run_tags, version_row
from flowmaestro_dagster.engines.local import run_config_for
from flowmaestro_dagster.store.db import get_engine, session_scope
from flowmaestro_dagster.store.models import Execution
from tests.api.e2e import execution, wait_for
from tests.api.test_queues_support import (
    QueueStack,
    deploy,
    dequeued_while_another_ran,
    facts,
    finished,
    max_overlap,
    new_user,
    queue_stack_fixture,
    run_statuses,
    slow_workflow,
    submit,
    two_retrying_runs,
)

pytestmark = pytest.mark.slow


stack = queue_stack_fixture(
    "queues-limits",
    user_run_limit=None,
    max_concurrent_runs=10,
    queue_limits={"ai-workflows": 1, "data-processing": 5},
)


def workflow_entry(stack: QueueStack, auth: dict[str, str], workflow_id: str) -> dict[str, object]:
    overview = stack.client.get("/queues", headers=auth).json()
    entry: dict[str, object] = next(
        w for w in overview["workflows"] if w["workflow_id"] == workflow_id
    )
    return entry


def test_a_workflow_limit_changed_from_1_to_3_takes_effect_at_once(stack: QueueStack) -> None:
    client, instance = stack.client, stack.instance
    auth = new_user(stack, "limits")
    workflow_id = deploy(
        client, auth, slow_workflow("limited", 8000), settings={"concurrency_limit": 1}
    )
    ids = [submit(client, auth, workflow_id) for _ in range(5)]
    wait_for(lambda: sorted(run_statuses(instance, ids)).count("QUEUED") == 4)
    wait_for(lambda: "STARTED" in run_statuses(instance, ids))

    waiting = [e for e, s in zip(ids, run_statuses(instance, ids), strict=True) if s == "QUEUED"]
    body = execution(client, auth, waiting[-1])
    assert body["status"] == "queued" and body["queue_position"] == 4
    assert body["queued_reason"] == (
        "workflow concurrency limit: 1 run(s) of this workflow in progress; the limit is 1"
    )
    entry = workflow_entry(stack, auth, workflow_id)
    assert (entry["concurrency_limit"], entry["applied_limit"]) == (1, 1)
    assert (entry["running"], entry["queued"]) == (1, 4)

    changed_at = time.time()
    patched = client.patch(
        f"/workflows/{workflow_id}", json={"settings": {"concurrency_limit": 3}}, headers=auth
    )
    assert patched.status_code == 200 and patched.json()["warnings"] == [], patched.text
    assert workflow_entry(stack, auth, workflow_id)["applied_limit"] == 3

    def held_by_three() -> bool:
        statuses = run_statuses(instance, ids)
        queued = [e for e, s in zip(ids, statuses, strict=True) if s == "QUEUED"]
        reasons = [execution(client, auth, e)["queued_reason"] or "" for e in queued]
        return any(r.endswith("of this workflow in progress; the limit is 3") for r in reasons)

    wait_for(held_by_three, interval=0.2)
    finished(client, auth, *ids)

    runs = [facts(instance, e) for e in ids]
    before = [r for r in runs if r.dequeued < changed_at]
    after = [r for r in runs if r.dequeued >= changed_at]
    assert len(before) == 1  # with limit 1, the other four waited
    assert not dequeued_while_another_ran(before)
    assert dequeued_while_another_ran(after)  # the new limit let several run at once ...
    assert 2 <= max_overlap(runs) <= 3  # ... and never more than 3


def test_one_at_a_time_per_user_switched_on_and_off_while_runs_wait(stack: QueueStack) -> None:
    client, instance = stack.client, stack.instance
    auth = new_user(stack, "solo")
    workflow_id = deploy(
        client, auth, slow_workflow("solo", 6000), settings={"one_at_a_time_per_user": True}
    )
    ids = [submit(client, auth, workflow_id) for _ in range(4)]
    wait_for(lambda: sorted(run_statuses(instance, ids)).count("QUEUED") == 3)
    wait_for(lambda: "STARTED" in run_statuses(instance, ids))
    queued = [e for e, s in zip(ids, run_statuses(instance, ids), strict=True) if s == "QUEUED"]
    reason = execution(client, auth, queued[0])["queued_reason"]
    assert reason == "one at a time per user: this user's run of this workflow is still in progress"

    switched_at = time.time()
    patched = client.patch(
        f"/workflows/{workflow_id}",
        json={"settings": {"one_at_a_time_per_user": False}},
        headers=auth,
    )
    assert patched.status_code == 200 and patched.json()["warnings"] == []
    finished(client, auth, *ids)
    runs = [facts(instance, e) for e in ids]
    before = [r for r in runs if r.dequeued < switched_at]
    after = [r for r in runs if r.dequeued >= switched_at]
    assert len(before) == 1 and len(after) == 3
    assert max_overlap(after) == 3  # the three that waited all started once it was off


def test_a_named_queue_has_its_own_limit(stack: QueueStack) -> None:
    client, instance = stack.client, stack.instance
    auth = new_user(stack, "ai")
    workflow_id = deploy(
        client, auth, slow_workflow("ai", 5000), settings={"queue": "ai-workflows"}
    )
    other = deploy(client, auth, slow_workflow("elsewhere", 10))
    first, second = submit(client, auth, workflow_id), submit(client, auth, workflow_id)
    elsewhere = submit(client, auth, other, queue="data-processing")
    wait_for(lambda: sorted(run_statuses(instance, [first, second])) == ["QUEUED", "STARTED"])
    held = first if run_statuses(instance, [first])[0] == "QUEUED" else second
    assert execution(client, auth, held)["queued_reason"] == (
        "queue 'ai-workflows' is full: 1 run(s) in progress; the limit is 1"
    )
    queues = {q["name"]: q for q in client.get("/queues", headers=auth).json()["queues"]}
    assert (queues["ai-workflows"]["limit"], queues["ai-workflows"]["queued"]) == (1, 1)
    assert queues["ai-workflows"]["running"] == 1
    finished(client, auth, first, second, elsewhere)
    runs = [facts(instance, e) for e in (first, second)]
    assert max_overlap(runs) == 1
    other_run = facts(instance, elsewhere)
    assert other_run.dequeued < max(r.start for r in runs)  # another queue did not wait


def test_a_parked_execution_frees_its_slot(stack: QueueStack) -> None:
    """A limit of 1: A parks (its run ends, tagged waiting), B starts without waiting for A's
    resume; A's resume run then queues for the slot like any run, with the same tags."""
    client, instance = stack.client, stack.instance
    auth = new_user(stack, "park")
    workflow_id = deploy(
        client, auth, slow_workflow("parks", 6000), settings={"concurrency_limit": 1}
    )
    parked = submit(client, auth, workflow_id)
    wait_for(lambda: run_statuses(instance, [parked]) == ["STARTED"])
    other = submit(client, auth, workflow_id)
    wait_for(lambda: run_statuses(instance, [other]) == ["QUEUED"])
    assert execution(client, auth, other)["queued_reason"].startswith("workflow concurrency limit")
    parked_run = instance.get_runs(RunsFilter(tags={"flowmaestro/execution_id": parked}))[0]
    instance.add_run_tags(parked_run.run_id, {"flowmaestro/waiting": "true"})  # as the adapter
    finished(client, auth, other)

    first, second = facts(instance, parked), facts(instance, other)
    assert second.dequeued >= first.end  # it waited for the run, not for the execution
    entry = workflow_entry(stack, auth, workflow_id)
    assert (entry["running"], entry["queued"]) == (0, 0)  # the parked one holds nothing

    # The resume: a re-execution of the slow node and the rest, launched with the execution's
    # tags; whichever of it and the next execution starts first holds the slot for seconds.
    with session_scope(get_engine(stack.settings.database_url)) as session:
        row = session.get(Execution, parked)
        assert row is not None
        version = version_row(session, row)
        assert version is not None
        tags = {**run_tags(row), "flowmaestro/resume_of": parked_run.run_id}
        resume_id = stack.dagster.reexecute_steps(
            location=row.location_name,
            job=row.job_name,
            parent_run_id=parked_run.run_id,
            root_run_id=parked_run.run_id,
            step_keys=[compiled_for(version).aliases[node] for node in ("slow0", "out")],
            run_config=run_config_for(row.inputs),
            tags=tags,
        )
    later = submit(client, auth, workflow_id)

    def one_waits_for_the_other() -> str | None:
        resume_status = instance.get_run_by_id(resume_id).status.value  # type: ignore[union-attr]
        later_status = run_statuses(instance, [later])[0]
        if {resume_status, later_status} == {"QUEUED", "STARTED"}:
            return parked if resume_status == "QUEUED" else later
        return None

    waiting = wait_for(one_waits_for_the_other, interval=0.2)
    assert execution(client, auth, waiting)["queued_reason"] == (
        "workflow concurrency limit: 1 run(s) of this workflow in progress; the limit is 1"
    )
    finished(client, auth, later)
    wait_for(lambda: instance.get_run_by_id(resume_id).is_finished)  # type: ignore[union-attr]
    resume = facts(instance, parked, index=1)
    assert resume.run_id == resume_id
    assert max_overlap([first, second, resume, facts(instance, later)]) == 1


def test_a_run_waiting_to_retry_keeps_its_workflow_slot(stack: QueueStack) -> None:
    """The same workflow as the op-granularity measurement (test_queues_pools.py): at run
    granularity the second run stays queued through the first's retry waits."""
    earlier, later = two_retrying_runs(stack, "retries")
    assert later.dequeued >= earlier.end
    assert max_overlap([earlier, later]) == 1
