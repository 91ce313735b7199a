"""The threaded executor: Dagster's semantics, with ready steps running at the same time.

Concurrency is asserted without wall-clock thresholds: ops meet at `threading.Barrier`s (which
only open if the steps really run at once, and time out otherwise), a thread-safe counter
records how many ops run at once, and step start/end events from the run's event log give the
overlaps and orderings the Dagster UI's Gantt chart shows.
"""

import _thread
import asyncio
import json
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from dagster import (
    DagsterEventType,
    DagsterInstance,
    DagsterRunStatus,
    DynamicOut,
    DynamicOutput,
    ExecuteInProcessResult,
    FilesystemIOManager,
    HookContext,
    In,
    JobDefinition,
    Nothing,
    OpDefinition,
    OpExecutionContext,
    Out,
    Output,
    RetryPolicy,
    RetryRequested,
    execute_job,
    in_process_executor,
    job,
    op,
    reconstructable,
    success_hook,
)

import tests.test_semantics as semantics
from flowmaestro_dagster.engines import (
    DEFAULT_MAX_CONCURRENT,
    ThreadedExecutor,
    threaded_executor,
    threaded_executor_for,
)
from flowmaestro_dagster.engines import threaded as threaded_module
from flowmaestro_dagster.engines.jobs import build_job
from flowmaestro_dagster.engines.local import (
    execute_in_process_with_executor,
    execute_workflow,
    run_workflow_threaded,
)
from flowmaestro_dagster.engines.results import WorkflowRunResult
from flowmaestro_dagster.testing import resources_for
from tests.builders import chain, flow, node

ROOT = Path(__file__).resolve().parents[1]
WAIT = 30.0  # seconds a barrier waits before it breaks: only reached when something is wrong
STARTS = (DagsterEventType.STEP_START, DagsterEventType.STEP_RESTARTED)
ENDS = (
    DagsterEventType.STEP_SUCCESS,
    DagsterEventType.STEP_FAILURE,
    DagsterEventType.STEP_UP_FOR_RETRY,
)


# -- every semantic test of the compiler, on the threaded executor -----------------------------

for _name, _test in vars(semantics).items():
    if _name.startswith("test_") and callable(_test):
        globals()[_name] = _test  # collected here again, with the `run` fixture below


@pytest.fixture
def run() -> Callable[..., WorkflowRunResult]:
    """`run(definition, inputs)` on the threaded executor (limit: the workflow's setting)."""

    def _run(definition: Any, inputs: dict[str, Any] | None = None, **kw: Any) -> WorkflowRunResult:
        return run_workflow_threaded(definition, inputs or {}, **kw)

    return _run


def run_in_process(definition: Any, inputs: dict[str, Any]) -> WorkflowRunResult:
    """The same workflow on Dagster's in-process executor, whatever the compiler's default."""
    compiled = build_job(
        definition, executor_def=in_process_executor, resource_defs=resources_for()
    )
    return execute_workflow(compiled, inputs, log_level="WARNING")


def _summary(result: WorkflowRunResult) -> dict[str, Any]:
    nodes = {
        node_id: (n.status, n.output, n.error, n.iterations) for node_id, n in result.nodes.items()
    }
    return {"status": result.status, "nodes": nodes, "outputs": result.outputs}


@pytest.mark.parametrize(
    "path",
    sorted((ROOT / "workflows").rglob("*.json")),
    ids=lambda p: p.relative_to(ROOT / "workflows").as_posix(),
)
def test_workflows_give_identical_results_on_both_executors(path: Path) -> None:
    definition = json.loads(path.read_text())
    in_process = run_in_process(definition, {})
    threaded = run_workflow_threaded(definition, {})
    assert _summary(threaded) == _summary(in_process)


# -- helpers -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def instance() -> Iterator[DagsterInstance]:
    with DagsterInstance.ephemeral() as shared:
        yield shared


def execute(
    job_def: JobDefinition,
    instance: DagsterInstance,
    max_concurrent: int | None = None,
    **kw: Any,
) -> ExecuteInProcessResult:
    config: dict[str, Any] = {"loggers": {"console": {"config": {"log_level": "ERROR"}}}}
    if max_concurrent is not None:
        config["execution"] = {"config": {"max_concurrent": max_concurrent}}
    kw.setdefault("raise_on_error", False)
    return execute_in_process_with_executor(job_def, run_config=config, instance=instance, **kw)


def step_events(
    instance: DagsterInstance, run_id: str
) -> list[tuple[float, str, DagsterEventType]]:
    """(timestamp, step key, event type) of every step event, in event-log order."""
    return [
        (entry.timestamp, entry.step_key, entry.dagster_event.event_type)
        for entry in instance.all_logs(run_id)
        if entry.dagster_event is not None and entry.step_key
    ]


def intervals(instance: DagsterInstance, run_id: str) -> dict[str, list[tuple[float, float]]]:
    """Step key -> [(start, end)] per attempt, as the UI's Gantt chart draws them."""
    spans: dict[str, list[tuple[float, float]]] = {}
    started: dict[str, float] = {}
    for timestamp, key, kind in step_events(instance, run_id):
        if kind in STARTS:
            started[key] = timestamp
        elif kind in ENDS and key in started:
            spans.setdefault(key, []).append((started.pop(key), timestamp))
    return spans


def max_overlap(spans: dict[str, list[tuple[float, float]]], keys: list[str] | None = None) -> int:
    """The most attempts running at one moment (an end at t comes before a start at t)."""
    points = [
        (time_, delta)
        for key, attempts in spans.items()
        if keys is None or key in keys
        for start, end in attempts
        for time_, delta in ((start, 1), (end, -1))
    ]
    running = peak = 0
    for _, delta in sorted(points):
        running += delta
        peak = max(peak, running)
    return peak


def first(events: list[tuple[float, str, DagsterEventType]], key: str, kind: Any) -> int:
    """Index in the event log of the first `kind` event of step `key`."""
    return next(i for i, (_, k, t) in enumerate(events) if k == key and t == kind)


def statuses(result: ExecuteInProcessResult) -> dict[str, str]:
    """Step key -> its last terminal event type (success, failure, skipped)."""
    found: dict[str, str] = {}
    for event in result.all_events:
        if event.step_key and event.event_type in (
            DagsterEventType.STEP_SUCCESS,
            DagsterEventType.STEP_FAILURE,
            DagsterEventType.STEP_SKIPPED,
        ):
            found[event.step_key] = event.event_type.value
    return found


class Gauge:
    """How many ops are inside `with gauge:` right now, and the most there ever were."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.now = 0
        self.peak = 0

    def __enter__(self) -> None:
        with self._lock:
            self.now += 1
            self.peak = max(self.peak, self.now)

    def __exit__(self, *_: object) -> None:
        with self._lock:
            self.now -= 1


# -- concurrency -------------------------------------------------------------------------------


def fan_out_job(width: int, barrier: threading.Barrier, gauge: Gauge) -> JobDefinition:
    @op
    def start() -> int:
        return 1

    @op
    def branch(value: int) -> int:
        with gauge:
            barrier.wait()  # opens only when `width` branches are running at once
        return value

    @op(ins={"values": In(list[int])})
    def join(values: list[int]) -> int:
        return sum(values)

    @job(executor_def=threaded_executor)
    def fan_out() -> None:
        value = start()
        join([branch.alias(f"b{i}")(value) for i in range(width)])

    return fan_out


def test_parallel_branches_run_at_the_same_time(instance: DagsterInstance) -> None:
    gauge = Gauge()
    result = execute(fan_out_job(8, threading.Barrier(8, timeout=WAIT), gauge), instance)
    assert result.success
    assert result.output_for_node("join") == 8
    assert gauge.peak == 8
    assert not [t for t in threading.enumerate() if t.name.startswith("dagster-threaded")]
    spans = intervals(instance, result.run_id)
    branches = [f"b{i}" for i in range(8)]
    assert max_overlap(spans, branches) == 8  # the Gantt chart shows eight overlapping bars
    events = step_events(instance, result.run_id)
    join_start = first(events, "join", DagsterEventType.STEP_START)
    assert all(first(events, b, DagsterEventType.STEP_SUCCESS) < join_start for b in branches)


def test_the_barrier_test_fails_when_steps_run_one_after_another(instance: DagsterInstance) -> None:
    """With one step at a time the branches never meet: the test above can fail."""
    gauge = Gauge()
    job_def = fan_out_job(2, threading.Barrier(2, timeout=0.3), gauge)
    result = execute(job_def, instance, max_concurrent=1)
    assert not result.success
    assert gauge.peak == 1
    assert statuses(result)["b0"] == "STEP_FAILURE"


def test_max_concurrent_is_never_exceeded_and_is_reached(instance: DagsterInstance) -> None:
    gauge = Gauge()
    barrier = threading.Barrier(3, timeout=WAIT)  # 12 steps pass it three at a time
    result = execute(fan_out_job(12, barrier, gauge), instance, max_concurrent=3)
    assert result.success
    assert gauge.peak == 3
    spans = intervals(instance, result.run_id)
    assert max_overlap(spans) == 3


def test_dynamic_mapped_steps_run_concurrently_up_to_the_limit(instance: DagsterInstance) -> None:
    gauge = Gauge()
    barrier = threading.Barrier(4, timeout=WAIT)

    @op(out=DynamicOut(int))
    def items() -> Iterator[DynamicOutput[int]]:
        for i in range(12):
            yield DynamicOutput(i, mapping_key=str(i))

    @op
    def square(value: int) -> int:
        with gauge:
            barrier.wait()
        return value * value

    @op
    def total(values: list[int]) -> int:
        return sum(values)

    @job(executor_def=threaded_executor)
    def mapped() -> None:
        total(items().map(square).collect())

    result = execute(mapped, instance, max_concurrent=4)
    assert result.success
    assert result.output_for_node("total") == sum(i * i for i in range(12))
    assert gauge.peak == 4
    spans = intervals(instance, result.run_id)
    mapped_keys = [key for key in spans if key.startswith("square[")]
    assert len(mapped_keys) == 12
    assert max_overlap(spans, mapped_keys) == 4


def test_async_ops_run_on_their_own_event_loops_at_the_same_time(
    instance: DagsterInstance,
) -> None:
    barrier = threading.Barrier(3, timeout=WAIT)
    loops: set[int] = set()

    @op
    async def fetch() -> int:
        loops.add(id(asyncio.get_running_loop()))
        await asyncio.sleep(0.01)
        barrier.wait()  # blocks this thread's loop only
        return 1

    @job(executor_def=threaded_executor)
    def async_job() -> None:
        for i in range(3):
            fetch.alias(f"f{i}")()

    result = execute(async_job, instance)
    assert result.success
    assert len(loops) == 3


# -- retries -----------------------------------------------------------------------------------


def retry_job(barrier: threading.Barrier, attempts: Counter[str], explicit: bool) -> JobDefinition:
    """`flaky` fails once and retries after a delay while `steady` keeps running.

    Both meet at the barrier in flaky's first attempt and again in its retry: only possible
    if steady runs through flaky's failure, retry delay and second attempt.
    """

    @op(retry_policy=None if explicit else RetryPolicy(max_retries=2, delay=0.2))
    def flaky() -> str:
        attempts["flaky"] += 1
        barrier.wait()
        if attempts["flaky"] == 1:
            if explicit:
                raise RetryRequested(max_retries=2, seconds_to_wait=0.2)
            raise ConnectionError("transient")
        return "ok"

    @op
    def steady() -> str:
        barrier.wait()
        barrier.wait()
        return "steady"

    @job(executor_def=threaded_executor)
    def retrying() -> None:
        flaky()
        steady()

    return retrying


@pytest.mark.parametrize("explicit", [False, True], ids=["RetryPolicy", "RetryRequested"])
def test_a_step_waiting_for_its_retry_does_not_block_other_branches(
    instance: DagsterInstance, explicit: bool
) -> None:
    attempts: Counter[str] = Counter()
    result = execute(retry_job(threading.Barrier(2, timeout=WAIT), attempts, explicit), instance)
    assert result.success
    assert attempts["flaky"] == 2
    events = step_events(instance, result.run_id)
    retry = first(events, "flaky", DagsterEventType.STEP_UP_FOR_RETRY)
    restart = first(events, "flaky", DagsterEventType.STEP_RESTARTED)
    assert first(events, "steady", DagsterEventType.STEP_START) < retry < restart
    assert restart < first(events, "steady", DagsterEventType.STEP_SUCCESS)


def test_the_retry_delay_does_not_hold_a_slot(instance: DagsterInstance) -> None:
    """With one slot, another step runs while the failed one waits out its delay."""
    failed_once = threading.Event()
    attempts: Counter[str] = Counter()

    @op(retry_policy=RetryPolicy(max_retries=1, delay=1.0), tags={"dagster/priority": "1"})
    def flaky() -> str:
        attempts["flaky"] += 1
        if attempts["flaky"] == 1:
            failed_once.set()
            raise ConnectionError("transient")
        return "ok"

    @op
    def other() -> str:
        assert failed_once.wait(WAIT)  # flaky goes first (priority), so this never waits long
        return "other"

    @job(executor_def=threaded_executor)
    def one_slot() -> None:
        flaky()
        other()

    result = execute(one_slot, instance, max_concurrent=1)
    assert result.success
    events = step_events(instance, result.run_id)
    retry = first(events, "flaky", DagsterEventType.STEP_UP_FOR_RETRY)
    restart = first(events, "flaky", DagsterEventType.STEP_RESTARTED)
    assert retry < first(events, "other", DagsterEventType.STEP_START)
    assert first(events, "other", DagsterEventType.STEP_SUCCESS) < restart


def test_retries_disabled_by_config_fail_the_step(instance: DagsterInstance) -> None:
    attempts: Counter[str] = Counter()
    job_def = retry_job(threading.Barrier(1), attempts, explicit=False)
    config = {"execution": {"config": {"retries": {"disabled": {}}}}}
    result = execute_in_process_with_executor(
        job_def, run_config=config, instance=instance, raise_on_error=False
    )
    assert attempts["flaky"] == 1
    assert statuses(result)["flaky"] == "STEP_FAILURE"


# -- failures, skips, fan-in -------------------------------------------------------------------


def test_a_failing_branch_does_not_stop_the_others(instance: DagsterInstance) -> None:
    meet = threading.Barrier(2, timeout=WAIT)
    failed = threading.Event()

    @op
    def broken() -> int:
        meet.wait()  # runs alongside `healthy`
        failed.set()
        raise ValueError("boom")

    @op
    def healthy() -> int:
        meet.wait()
        assert failed.wait(WAIT)  # keeps running after the other branch failed
        return 1

    @op
    def after_broken(value: int) -> int:
        return value

    @op
    def after_healthy(value: int) -> int:
        return value + 1

    @job(executor_def=threaded_executor)
    def partly_broken() -> None:
        after_broken(broken())
        after_healthy(healthy())

    result = execute(partly_broken, instance)
    assert not result.success
    assert statuses(result) == {
        "broken": "STEP_FAILURE",
        "healthy": "STEP_SUCCESS",
        "after_healthy": "STEP_SUCCESS",
    }
    events = step_events(instance, result.run_id)
    assert not any(key == "after_broken" for _, key, _ in events)  # downstream: never started
    assert first(events, "broken", DagsterEventType.STEP_FAILURE) < first(
        events, "after_healthy", DagsterEventType.STEP_START
    )
    assert result.dagster_run.status == DagsterRunStatus.FAILURE


def branching_job(executor: Any) -> JobDefinition:
    """Optional outputs (one untaken), a fan-in join, dynamic fan-out and a failure."""

    @op(out={"yes": Out(is_required=False), "no": Out(is_required=False)})
    def decide() -> Iterator[Output[int]]:
        yield Output(2, "yes")

    @op
    def taken(value: int) -> int:
        return value * 10

    @op
    def untaken(value: int) -> int:
        return value

    @op
    def after_untaken(value: int) -> int:
        return value

    @op(ins={"values": In(list[int])})
    def join(values: list[int]) -> int:
        return sum(values)

    @op(out=DynamicOut(int))
    def spread(value: int) -> Iterator[DynamicOutput[int]]:
        for i in range(value + 3):
            yield DynamicOutput(i, mapping_key=f"k{i}")

    @op
    def each(value: int) -> int:
        if value == 3:
            raise ValueError("item 3 is bad")
        return value

    @op
    def gather(values: list[int]) -> int:
        return sum(values)

    @op(ins={"start": In(Nothing)})
    def independent() -> str:
        return "ran"

    @job(executor_def=executor)
    def branching() -> None:
        yes, no = decide()
        total = join([taken(yes), after_untaken(untaken(no))])
        gather(spread(total).map(each).collect())
        independent(start=total)

    return branching


def test_skips_fan_in_dynamic_outputs_and_failures_match_the_in_process_executor(
    instance: DagsterInstance,
) -> None:
    ours = execute(branching_job(threaded_executor), instance)
    theirs = branching_job(in_process_executor).execute_in_process(
        instance=instance, raise_on_error=False
    )
    assert statuses(ours) == statuses(theirs)
    assert statuses(ours)["untaken"] == "STEP_SKIPPED"
    assert statuses(ours)["after_untaken"] == "STEP_SKIPPED"
    assert statuses(ours)["join"] == "STEP_SUCCESS"
    assert statuses(ours)["each[k3]"] == "STEP_FAILURE"
    assert "gather" not in statuses(ours)
    assert ours.output_for_node("join") == theirs.output_for_node("join") == 20
    assert ours.output_for_node("independent") == "ran"

    def kinds(result: ExecuteInProcessResult) -> Counter[tuple[str, str]]:
        return Counter(
            (e.step_key, e.event_type_value) for e in result.all_events if e.step_key is not None
        )

    assert kinds(ours) == kinds(theirs)  # every step event, none lost or doubled


def test_raise_on_error_raises_the_step_error_after_running_steps_finish(
    instance: DagsterInstance,
) -> None:
    meet = threading.Barrier(2, timeout=WAIT)
    finished: list[str] = []

    @op
    def broken() -> None:
        meet.wait()
        raise KeyError("boom")

    @op
    def slow() -> None:
        meet.wait()
        time.sleep(0.05)
        finished.append("slow")

    @job(executor_def=threaded_executor)
    def raising() -> None:
        broken()
        slow()

    with pytest.raises(KeyError, match="boom"):
        execute(raising, instance, raise_on_error=True)
    assert finished == ["slow"]  # no step left running behind the exception


# -- events, IO managers, hooks, thread-safety -------------------------------------------------


def test_many_concurrent_steps_keep_every_event_in_order_on_a_sqlite_instance(
    tmp_path: Path,
) -> None:
    width = 16

    @op
    def source() -> int:
        return 1

    @op
    def noisy(context: OpExecutionContext, value: int) -> int:
        for i in range(3):
            context.log.info(f"line {i}")
        return value + 1

    @op(ins={"values": In(list[int])})
    def total(values: list[int]) -> int:
        return sum(values)

    @job(executor_def=threaded_executor, resource_defs={"io_manager": FilesystemIOManager()})
    def wide() -> None:
        value = source()
        total([noisy.alias(f"n{i}")(value) for i in range(width)])

    (tmp_path / "home").mkdir()
    with DagsterInstance.local_temp(str(tmp_path / "home")) as sqlite_instance:
        result = execute(wide, sqlite_instance, max_concurrent=8)
        assert result.success
        assert result.output_for_node("total") == 2 * width
        events = step_events(sqlite_instance, result.run_id)
        logs = [
            entry
            for entry in sqlite_instance.all_logs(result.run_id)
            if entry.dagster_event is None and entry.user_message.startswith("line ")
        ]
    assert len(logs) == 3 * width
    assert Counter(entry.step_key for entry in logs) == {f"n{i}": 3 for i in range(width)}
    for i in range(width):
        key = f"n{i}"
        kinds = [kind for _, k, kind in events if k == key]
        assert kinds[0] == DagsterEventType.STEP_START
        assert kinds[-1] == DagsterEventType.STEP_SUCCESS
        assert kinds.count(DagsterEventType.STEP_SUCCESS) == 1
        assert DagsterEventType.HANDLED_OUTPUT in kinds
    assert len(intervals(sqlite_instance, result.run_id)) == width + 2


def test_hooks_run_for_each_step(instance: DagsterInstance) -> None:
    seen: list[str] = []
    lock = threading.Lock()

    @success_hook
    def record(context: HookContext) -> None:
        with lock:
            seen.append(context.op.name)

    @op
    def work() -> int:
        return 1

    @job(executor_def=threaded_executor, hooks={record})
    def hooked() -> None:
        for i in range(4):
            work.alias(f"w{i}")()

    result = execute(hooked, instance)
    assert result.success
    assert sorted(seen) == ["w0", "w1", "w2", "w3"]
    hook_events = [e for e in result.all_events if e.event_type == DagsterEventType.HOOK_COMPLETED]
    assert len(hook_events) == 4


# -- termination -------------------------------------------------------------------------------


def request_termination(context: OpExecutionContext) -> None:
    """What terminating a run does: mark it CANCELING, then SIGINT the run worker."""
    context.instance.report_run_canceling(context.dagster_run)
    _thread.interrupt_main()


def then_after(first: OpDefinition, *alongside: OpDefinition) -> JobDefinition:
    """`first`, then `after`, which needs its output; `alongside` run independently. Without
    them `first` is the only step ready, so it runs on the orchestrating thread."""

    @op
    def after(value: int) -> int:
        return value

    @job(executor_def=threaded_executor)
    def first_then_after() -> None:
        after(first())
        for other in alongside:
            other()

    return first_then_after


def seen_by_executor(context: OpExecutionContext) -> bool:
    """Wait until the executor has logged that it got the termination request."""
    for _ in range(int(WAIT / 0.01)):
        if any(
            "received termination signal" in (entry.user_message or "")
            for entry in context.instance.all_logs(context.run_id)
        ):
            return True
        time.sleep(0.01)
    return False


def test_termination_starts_no_more_steps_and_cancels_the_run(instance: DagsterInstance) -> None:
    started = threading.Barrier(2, timeout=WAIT)
    observed = threading.Event()

    @op
    def running() -> int:
        started.wait()
        assert observed.wait(WAIT)
        return 1  # finishes within the grace period: recorded as it happened

    @op
    def terminate(context: OpExecutionContext) -> None:
        started.wait()
        request_termination(context)
        if seen_by_executor(context):
            observed.set()

    result = execute(then_after(running, terminate), instance)
    assert observed.is_set()
    assert result.dagster_run.status == DagsterRunStatus.CANCELED
    assert statuses(result) == {"running": "STEP_SUCCESS", "terminate": "STEP_SUCCESS"}
    assert not any(key == "after" for _, key, _ in step_events(instance, result.run_id))


def test_a_step_running_alone_is_interrupted_like_in_process(instance: DagsterInstance) -> None:
    """A lone ready step runs on the orchestrating thread, where SIGINT reaches it."""

    naps: list[int] = []

    @op
    def alone(context: OpExecutionContext) -> int:
        threading.Thread(target=request_termination, args=(context,), daemon=True).start()
        for i in range(600):  # 30 s unless interrupted
            naps.append(i)
            time.sleep(0.05)
        return 1

    result = execute(then_after(alone), instance)
    assert len(naps) < 600  # stopped in the middle of its loop
    assert result.dagster_run.status == DagsterRunStatus.CANCELED
    assert statuses(result) == {"alone": "STEP_FAILURE"}
    failure = next(e for e in result.all_events if e.is_step_failure)
    error = failure.step_failure_data.error
    assert error is not None and error.cls_name == "DagsterExecutionInterruptedError"


def test_a_pause_lets_the_running_step_finish_and_starts_no_more(
    instance: DagsterInstance,
) -> None:
    """A pause (launcher.py turns SIGUSR1 into request_pause) interrupts no node: the lone
    step running on the orchestrating thread finishes, the next one never starts."""
    naps: list[int] = []

    @op
    def alone(context: OpExecutionContext) -> int:
        context.instance.report_run_canceling(context.dagster_run)
        threaded_module.request_pause()
        for i in range(10):
            naps.append(i)
            time.sleep(0.02)
        return 1

    try:
        result = execute(then_after(alone), instance)
    finally:
        threaded_module._pause_requested.clear()
    assert len(naps) == 10  # not interrupted
    assert result.dagster_run.status == DagsterRunStatus.CANCELED
    assert statuses(result) == {"alone": "STEP_SUCCESS"}


def test_steps_still_running_after_the_grace_period_are_written_off(
    instance: DagsterInstance, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(threaded_module, "TERMINATION_GRACE_SECONDS", 0.2)
    release = threading.Event()
    started = threading.Barrier(2, timeout=WAIT)

    @op
    def stuck() -> None:
        started.wait()
        release.wait(WAIT)

    @op
    def terminate(context: OpExecutionContext) -> None:
        started.wait()
        request_termination(context)

    @job(executor_def=threaded_executor)
    def hanging() -> None:
        stuck()
        terminate()

    try:
        result = execute(hanging, instance)
        assert not release.is_set()  # the run ended while the step was still blocked
        assert result.dagster_run.status == DagsterRunStatus.CANCELED
        failure = next(e for e in result.all_events if e.is_step_failure)
        assert failure.step_key == "stuck"
        error = failure.step_failure_data.error
        assert error is not None and "abandoned" in error.message
    finally:
        release.set()


# -- configuration and FlowMaestro workflows ---------------------------------------------------


def test_configuration_defaults_and_limits() -> None:
    assert threaded_executor.name == "threaded"
    assert threaded_executor_for(DEFAULT_MAX_CONCURRENT) is threaded_executor
    assert threaded_executor_for(3) is threaded_executor_for(3)
    with pytest.raises(ValueError, match="max_concurrent"):
        threaded_executor_for(0)
    with pytest.raises(Exception, match="max_concurrent"):
        ThreadedExecutor(retries=threaded_module.RetryMode.ENABLED, max_concurrent=0)


def test_run_config_max_concurrent_must_be_positive(instance: DagsterInstance) -> None:
    gauge = Gauge()
    job_def = fan_out_job(1, threading.Barrier(1), gauge)
    with pytest.raises(ValueError, match="max_concurrent must be"):
        execute(job_def, instance, max_concurrent=0)
    assert gauge.peak == 0


def delay_branches(width: int, delay_ms: int, limit: int | None = None) -> dict[str, Any]:
    nodes: list[dict[str, Any]] = [{"id": "in", "type": "input", "inputName": "x"}]
    edges: list[tuple[Any, ...]] = []
    for i in range(width):
        nodes.append(
            {
                "id": f"b{i}",
                "type": "transform",
                "operation": "passthrough",
                "inputData": f"{{{{x}}}}-{i}",
                "delayMs": delay_ms,
                "outputVariable": f"v{i}",
            }
        )
        edges += [("in", f"b{i}"), (f"b{i}", "join")]
    nodes.append({"id": "join", "type": "transform", "operation": "merge"})
    definition = flow(nodes, edges)
    if limit is not None:
        definition["settings"] = {"maxConcurrentNodes": limit}
    return definition


def run_on(
    definition: dict[str, Any], instance: DagsterInstance, **kw: Any
) -> tuple[WorkflowRunResult, dict[str, list[tuple[float, float]]]]:
    result = run_workflow_threaded(definition, {"x": "v"}, instance=instance, **kw)
    return result, intervals(instance, result.run_id)


def test_workflow_branches_overlap_in_the_gantt_chart(instance: DagsterInstance) -> None:
    result, spans = run_on(delay_branches(8, 600), instance)
    assert result.status == "succeeded"
    assert result.output("join") == {f"v{i}": f"v-{i}" for i in range(8)}
    branches = [f"b{i}" for i in range(8)]
    assert max_overlap(spans, branches) == 8  # every branch started before any one finished
    assert max(end for b in branches for _, end in spans[b]) <= spans["join"][0][0]


def test_workflow_max_concurrent_nodes_limits_the_branches(instance: DagsterInstance) -> None:
    result, spans = run_on(delay_branches(6, 300, limit=2), instance)
    assert result.status == "succeeded"
    assert max_overlap(spans) == 2
    result, spans = run_on(delay_branches(6, 300, limit=2), instance, max_concurrent=1)
    assert result.status == "succeeded"
    assert max_overlap(spans) == 1


def test_workflow_loop_items_run_concurrently_up_to_the_limit(instance: DagsterInstance) -> None:
    definition = chain(
        node("in", "input", inputName="xs", inputType="json"),
        node("loop", "loop", items="{{xs}}", itemVariable="x"),
        node("slow", "transform", operation="passthrough", inputData="{{x}}", delayMs=300, outputVariable="value"),
        node("out", "output", outputName="values", value="{{loop.results}}"),
        react=True,
    )  # fmt: skip
    definition["settings"] = {"maxConcurrentNodes": 3}
    result = run_workflow_threaded(definition, {"xs": list(range(7))}, instance=instance)
    assert result.status == "succeeded"
    assert [r["value"] for r in result.outputs["values"]] == list(range(7))
    spans = intervals(instance, result.run_id)
    mapped = [key for key in spans if key.startswith("slow[")]
    assert len(mapped) == 7
    assert max_overlap(spans, mapped) == 3


def parallel_js_definition() -> dict[str, Any]:
    """Eight JavaScript and JSONata transforms at once (embedded V8 in several threads)."""
    nodes: list[dict[str, Any]] = [
        {"id": "in", "type": "input", "inputName": "xs", "inputType": "json"}
    ]
    edges: list[tuple[Any, ...]] = []
    for i in range(8):
        expression = (
            f"x => x * {i} + [1, 2, 3].reduce((a, b) => a + b, 0)"
            if i % 2
            else f"$map($, function($v) {{ $v * {i} + 6 }})"
        )
        nodes.append(
            {
                "id": f"m{i}",
                "type": "transform",
                "operation": "map" if i % 2 else "custom",
                "inputData": "{{xs}}",
                "expression": expression,
                "outputVariable": f"v{i}",
            }
        )
        edges += [("in", f"m{i}"), (f"m{i}", "join")]
    nodes.append({"id": "join", "type": "transform", "operation": "merge"})
    return flow(nodes, edges)


def test_parallel_javascript_and_jsonata_transforms_match_in_process() -> None:
    definition = parallel_js_definition()
    inputs = {"xs": list(range(40))}
    threaded = run_workflow_threaded(definition, inputs)
    assert threaded.status == "succeeded"
    assert threaded.output("join") == {f"v{i}": [x * i + 6 for x in range(40)] for i in range(8)}
    assert _summary(threaded) == _summary(run_in_process(definition, inputs))


def launched_job() -> JobDefinition:
    """A compiled workflow as a code location would load it (reconstructable by name)."""
    return build_job(delay_branches(3, 50), executor_def=threaded_executor_for(2)).job


def test_a_launched_run_uses_the_threaded_executor_on_a_persistent_instance(
    tmp_path: Path,
) -> None:
    """The path of a run launched from the UI: job reloaded by name, SQLite, pickled outputs."""
    (tmp_path / "home").mkdir()
    config = {"resources": {"workflow_inputs": {"config": {"inputs": {"x": "v"}}}}}
    with (
        DagsterInstance.local_temp(str(tmp_path / "home")) as sqlite_instance,
        execute_job(
            reconstructable(launched_job), instance=sqlite_instance, run_config=config
        ) as result,
    ):
        assert result.success
        assert result.output_for_node("join").outputs["join"] == {
            f"v{i}": f"v-{i}" for i in range(3)
        }
        messages = [e.message or "" for e in result.all_events if e.is_engine_event]
        assert any("up to 2 threads" in message for message in messages)
        spans = intervals(sqlite_instance, result.run_id)
        assert max_overlap(spans) == 2


def test_compiled_job_carries_the_executor_and_its_limit() -> None:
    compiled = build_job(delay_branches(2, 0, limit=4), executor_def=threaded_executor_for(4))
    assert compiled.job.executor_def.name == "threaded"
    config_field = compiled.job.executor_def.config_schema.as_field()
    assert config_field.config_type.fields["max_concurrent"].default_value == 4
