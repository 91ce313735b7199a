"""A Dagster executor that runs ready steps concurrently on threads inside the run process.

Core Dagster runs a plan either one step after another in the run process (`in_process`) or one
process per step (`multiprocess`, ~0.25-1 s of start-up per step). Workflow nodes mostly wait on
I/O (model calls, HTTP), so threads give the parallelism of the multiprocess executor at the
per-step cost of the in-process one.

The plan logic is Dagster's own: one `ActiveExecution` (readiness, skips from optional outputs,
fan-in, dynamic mapping, retries and their delays, abandoning steps downstream of a failure,
`max_concurrent`) is owned by the orchestrating thread, the one that iterates this executor.
Worker threads only run `dagster_event_sequence_for_step` (and the step's hooks) for one step
at a time and send every event back through a queue; the orchestrator yields the events and
feeds them to `ActiveExecution`, exactly as the in-process executor does. Nothing but the queue
is shared between threads that Dagster does not already make thread-safe: events are written
to the event log when they are created, through the run's log handler (a `logging.Handler`,
serialised by its lock); the built-in IO managers keep one file or dict entry per output.

Termination: the run worker's SIGINT is captured by Dagster in the orchestrating thread (signals
only reach the main thread). The executor then starts no more steps, gives the running ones
`TERMINATION_GRACE_SECONDS` to finish (their events are recorded as they happen), fails the
ones still running with an interrupt error, and ends the run as canceled. Unlike in process, an
op on a worker thread is not interrupted in the middle: Python cannot safely raise into another
thread. A step that is the only one able to run is run on the orchestrating thread, as in
process (no hand-offs for a chain; SIGINT interrupts it inside the op).

Scale-out: with `FLOWMAESTRO_CELERY_BROKER_URL` set, a worker thread hands the steps routed to
Celery (a node's `runOn`, or its type; `.celery`) to a dagster-celery worker and waits for their
events instead of running them; everything else above is unchanged for them.
"""

import asyncio
import os
import queue
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from functools import cache
from typing import Any, cast

from dagster import (
    DagsterEvent,
    DagsterExecutionInterruptedError,
    DagsterInvariantViolationError,
    Executor,
    ExecutorDefinition,
    Field,
    InitExecutorContext,
    Int,
    StepExecutionContext,
)

from flowmaestro_dagster.dagster_internals import (
    ActiveExecution,
    EngineEventData,
    ErrorSource,
    ExecuteRunWithPlanIterable,
    ExecutionPlan,
    ExecutionStep,
    InstanceConcurrencyContext,
    KnownExecutionState,
    PlanExecutionContext,
    PlanExecutionContextManager,
    PlanOrchestrationContext,
    ReconstructableJob,
    RetryMode,
    SerializableErrorInfo,
    StepFailureData,
    create_compute_log_file_key,
    dagster_event_sequence_for_step,
    get_retries_config,
    serializable_error_info_from_exc_info,
    trigger_hook,
)
from flowmaestro_dagster.engines.celery import (
    CeleryDispatch,
    CeleryRouting,
    platform_routing,
    wants_celery,
)
from flowmaestro_dagster.errors import CeleryWorkerLostError

DEFAULT_MAX_CONCURRENT = 10
# How often the orchestrator looks for a termination request while it waits for step events.
POLL_SECONDS = 0.1
# After a termination request, how long running steps get to stop before they are written off.
TERMINATION_GRACE_SECONDS = 10.0

_DONE = object()  # a worker finished a step (its last message for that step)

# A pause (POST /executions/{id}/pause): set from a signal handler in the run worker
# (launcher.py). Unlike SIGINT it interrupts no running node: the orchestrator starts no more
# steps, lets the running ones finish and ends the run canceled, at a node boundary.
_pause_requested = threading.Event()


def request_pause() -> None:
    _pause_requested.set()


@dataclass(frozen=True)
class _Raised:
    """A step let an exception escape (raise_on_error, an interrupt, a framework error)."""

    error: BaseException


@dataclass(frozen=True)
class _Job:
    """One step handed to a worker, with the plan state it starts from."""

    step: ExecutionStep
    known_state: KnownExecutionState


class _WorkerPool:
    """Daemon threads that run one step at a time, each with its own asyncio event loop.

    Threads are started lazily, never more than the number of steps in flight, and reused so a
    chain of steps pays for one thread. Daemon threads because a step that is still blocked
    when a terminated run gives up on it must not keep the process alive.
    """

    def __init__(
        self, job_context: PlanExecutionContext, dispatch: CeleryDispatch | None = None
    ) -> None:
        self._job_context = job_context
        self._dispatch = dispatch
        # (step key, events and markers in order); a step's last message ends with _DONE.
        self.inbox: queue.SimpleQueue[tuple[str, list[Any]]] = queue.SimpleQueue()
        self._work: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self.jobs: dict[str, _Job] = {}  # step key -> job, until the worker says _DONE
        self.settled: set[str] = set()  # steps of `jobs` whose outcome event was handled

    def submit(self, step: ExecutionStep, known_state: KnownExecutionState) -> None:
        if len(self.jobs) >= len(self._threads):
            thread = threading.Thread(
                target=self._work_loop,
                name=f"dagster-threaded-{len(self._threads)}",
                daemon=True,
            )
            self._threads.append(thread)
            thread.start()
        job = _Job(step, known_state)
        self.jobs[step.key] = job
        self._work.put(job)

    def remote(self, step: ExecutionStep) -> bool:
        """Whether the step runs on a Celery worker (its thread only waits for it)."""
        return self._dispatch is not None and self._dispatch.routing.wants(step)

    def revoke_remote(self) -> None:
        """Termination: Celery steps still in the queue are revoked."""
        if self._dispatch is not None:
            self._dispatch.revoke_all()

    def finished(self, step_key: str) -> None:
        self.jobs.pop(step_key, None)
        self.settled.discard(step_key)

    def wait(self, deadline: float) -> None:
        """Drop messages until every submitted step is done or `deadline` (monotonic) passes."""
        while self.jobs and time.monotonic() < deadline:
            try:
                key, items = self.inbox.get(timeout=max(deadline - time.monotonic(), 0.001))
            except queue.Empty:
                break
            if items[-1] is _DONE:
                self.finished(key)

    def close(self) -> None:
        """Stop the workers; wait for them unless one is still busy (given up on after a
        termination request: it exits when its call returns)."""
        for _ in self._threads:
            self._work.put(None)
        if not self.jobs:
            for thread in self._threads:
                thread.join(timeout=5.0)

    def _work_loop(self) -> None:
        loop = asyncio.new_event_loop()
        try:
            while (job := self._work.get()) is not None:
                if self.remote(job.step):
                    self._run_remote(job)
                else:
                    self._run(job, loop)
        finally:
            try:
                loop.run_until_complete(loop.shutdown_asyncgens())
            finally:
                loop.close()

    def _run(self, job: _Job, loop: asyncio.AbstractEventLoop) -> None:
        key = job.step.key
        batch: list[Any] = []  # events the orchestrator need not see at once, sent together
        try:
            step_context = _step_context(self._job_context, job.step, job.known_state, loop)
            events: list[DagsterEvent] = []
            for event in dagster_event_sequence_for_step(step_context):
                events.append(event)
                batch.append(event)
                if _changes_plan_state(event):
                    self.inbox.put((key, batch))
                    batch = []
            for event in trigger_hook(step_context, events):
                batch.append(event)
        # Whatever escapes (raise_on_error, a framework error) is re-raised by the orchestrator
        # thread, as it would escape the in-process executor.
        except BaseException as error:  # noqa: BLE001
            batch.append(_Raised(error))
        finally:
            batch.append(_DONE)
            self.inbox.put((key, batch))

    def _run_remote(self, job: _Job) -> None:
        """One step on a Celery worker: its events arrive together when it ends (the worker
        has already written them to the event log, and run the step's hooks)."""
        assert self._dispatch is not None
        key = job.step.key
        batch: list[Any] = []
        try:
            batch.extend(
                self._dispatch.run_step(
                    self._job_context, job.step, job.known_state, self._job_context.retry_mode
                )
            )
        except CeleryWorkerLostError as error:
            # The step never ended: fail it for the record, then the run (a run failure, not a
            # step failure, so the run retry re-executes it from failure).
            step_context = self._job_context.for_step(job.step, job.known_state)
            info = SerializableErrorInfo(str(error) + "\n", [], type(error).__name__)
            batch.append(
                DagsterEvent.step_failure_event(
                    step_context, StepFailureData(info, None, ErrorSource.FRAMEWORK_ERROR)
                )
            )
            batch.append(_Raised(error))
        except BaseException as error:  # noqa: BLE001 - re-raised by the orchestrator thread
            batch.append(_Raised(error))
        finally:
            batch.append(_DONE)
            self.inbox.put((key, batch))


def _changes_plan_state(event: DagsterEvent) -> bool:
    """Events `ActiveExecution.handle_event` acts on: the orchestrator gets them at once."""
    return (
        event.is_step_success
        or event.is_step_failure
        or event.is_step_up_for_retry
        or event.is_successful_output
        or event.is_resource_init_failure
    )


def _step_context(
    job_context: PlanExecutionContext,
    step: ExecutionStep,
    known_state: KnownExecutionState,
    loop: asyncio.AbstractEventLoop,
) -> StepExecutionContext:
    """`job_context.for_step(step, known_state)`, but with this worker's event loop.

    Async ops run on `context.event_loop`; one loop cannot run in two threads at once.
    """
    context = StepExecutionContext(
        plan_data=job_context.plan_data,
        execution_data=job_context._execution_data,
        log_manager=job_context.log.with_tags(**step.logging_tags),
        step=step,
        output_capture=job_context.output_capture,
        known_state=known_state,
        event_loop=loop,
    )
    _check_resources(context)
    return context


def _check_resources(context: StepExecutionContext) -> None:
    """What Dagster's step loop checks before it runs a step."""
    missing = [key for key in context.required_resource_keys if not hasattr(context.resources, key)]
    if missing:
        raise DagsterInvariantViolationError(
            f"Step {context.step.key} is missing resources {missing}."
        )


def _celery_dispatch(
    job_context: PlanExecutionContext, execution_plan: ExecutionPlan, routing: CeleryRouting | None
) -> tuple[CeleryDispatch | None, str | None]:
    """The run's Celery dispatch, or None and why steps that asked for Celery run here."""
    steps = execution_plan.get_steps_to_execute_in_topo_order()
    if routing is None:
        asked = [step.key for step in steps if wants_celery(step)]
        reason = "FLOWMAESTRO_CELERY_BROKER_URL is not set"
        return None, f"steps {', '.join(asked)} run in process: {reason}" if asked else None
    routed = [step.key for step in steps if routing.wants(step)]
    if not routed:
        return None, None
    if not isinstance(job_context.job, ReconstructableJob):
        return None, f"steps {', '.join(routed)} run in process: the job is not reconstructable"
    if not execution_plan.artifacts_persisted:
        return None, f"steps {', '.join(routed)} run in process: outputs are kept in memory"
    return CeleryDispatch(routing, job_context.job), None


def threaded_plan_iterator(
    job_context: PlanExecutionContext,
    execution_plan: ExecutionPlan,
    *,
    max_concurrent: int,
    celery: CeleryRouting | None = None,
) -> Iterator[DagsterEvent]:
    """`inner_plan_execution_iterator` with up to `max_concurrent` steps running at once (those
    routed to `celery`, if given, on Celery workers)."""
    compute_log_manager = job_context.instance.compute_log_manager
    step_keys = [step.key for step in execution_plan.get_steps_to_execute_in_topo_order()]
    with (
        InstanceConcurrencyContext(job_context.instance, job_context.dagster_run) as claims,
        ActiveExecution(
            execution_plan,
            retry_mode=job_context.retry_mode,
            max_concurrent=max_concurrent,
            instance_concurrency_context=claims,
            step_dependency_config=job_context.step_dependency_config,
        ) as active,
        ExitStack() as capture_stack,
    ):
        # Capture stdout/stderr for the whole process, like the in-process executor.
        log_key = compute_log_manager.build_log_key_for_run(
            job_context.run_id, create_compute_log_file_key()
        )
        try:
            log_context = capture_stack.enter_context(compute_log_manager.capture_logs(log_key))
            yield DagsterEvent.capture_logs(job_context, step_keys, log_key, log_context)
        except Exception:  # noqa: BLE001 - reported as an engine event, as Dagster does
            yield DagsterEvent.engine_event(
                job_context,
                "Exception while setting up compute log capture",
                EngineEventData(error=serializable_error_info_from_exc_info(sys.exc_info())),
            )
        dispatch, note = _celery_dispatch(job_context, execution_plan, celery)
        if note is not None:
            yield DagsterEvent.engine_event(job_context, f"Celery: {note}", EngineEventData())
        if dispatch is not None:
            routed = [s.key for s in execution_plan.get_steps_to_execute_in_topo_order()]
            routed = [
                k for k in routed if dispatch.routing.wants(execution_plan.get_step_by_key(k))
            ]
            yield DagsterEvent.engine_event(
                job_context,
                f"Celery: steps {', '.join(routed)} run on workers of queue "
                f"{dispatch.routing.queue!r}; the others on threads in process",
                EngineEventData(),
            )
        pool = _WorkerPool(job_context, dispatch)
        try:
            yield from _orchestrate(job_context, active, pool, max_concurrent)
        finally:
            if pool.jobs:  # leaving early (an error here, or the consumer stopped iterating):
                # let running steps finish before the run's resources are torn down
                pool.wait(time.monotonic() + TERMINATION_GRACE_SECONDS)
            pool.close()
            if dispatch is not None:
                dispatch.close()
        try:
            capture_stack.close()
        except Exception:  # noqa: BLE001 - reported as an engine event, as Dagster does
            yield DagsterEvent.engine_event(
                job_context,
                "Exception while cleaning up compute log capture",
                EngineEventData(error=serializable_error_info_from_exc_info(sys.exc_info())),
            )


def _orchestrate(
    job_context: PlanExecutionContext,
    active: ActiveExecution,
    pool: _WorkerPool,
    max_concurrent: int,
) -> Iterator[DagsterEvent]:
    """Launch ready steps, relay their events, until the plan is complete (or must stop)."""
    interrupted = False
    deadline = float("inf")
    raised: BaseException | None = None
    while pool.jobs or (not interrupted and raised is None and not active.is_complete):
        if not interrupted and (active.check_for_interrupts() or _pause_requested.is_set()):
            interrupted = True
            active.mark_interrupted()
            pool.revoke_remote()
            yield DagsterEvent.engine_event(
                job_context,
                "Threaded executor: received termination signal - starting no more steps, "
                f"waiting up to {TERMINATION_GRACE_SECONDS:g} s for the running ones",
                EngineEventData.interrupted(list(pool.jobs)),
            )
            deadline = time.monotonic() + TERMINATION_GRACE_SECONDS
        if interrupted and pool.jobs and time.monotonic() >= deadline:
            yield from _write_off(job_context, active, pool)
            break
        if not interrupted and raised is None:
            steps = active.get_steps_to_execute(limit=max_concurrent - len(pool.jobs))
            yield from active.concurrency_event_iterator(job_context)
            if (
                len(steps) == 1
                and not pool.jobs
                and active.sleep_interval() <= 0
                and not pool.remote(steps[0])
            ):
                # The only step that can run until it ends (nothing in flight, no retry or pool
                # claim due): run it here, as in process, and skip two thread hand-offs.
                yield from _run_inline(job_context, active, steps[0])
                continue
            for step in steps:
                pool.submit(step, active.get_known_state())
        messages = _receive(pool, _wait_seconds(active, pool, interrupted, deadline))
        for key, item in ((key, item) for key, items in messages for item in items):
            if isinstance(item, DagsterEvent):
                yield item
                active.handle_event(item)
                if item.is_step_success or item.is_step_failure or item.is_step_up_for_retry:
                    pool.settled.add(key)
            elif item is _DONE:
                pool.finished(key)
                active.verify_complete(job_context, key)
            elif isinstance(item, _Raised):
                is_interrupt = isinstance(
                    item.error, DagsterExecutionInterruptedError | KeyboardInterrupt
                )
                if raised is None and not (interrupted and is_interrupt):
                    raised = item.error
        if messages:
            yield from active.plan_events_iterator(job_context)
    if interrupted:
        yield DagsterEvent.engine_event(
            job_context, "Threaded executor: stopped after a termination request", EngineEventData()
        )
        raise DagsterExecutionInterruptedError()
    if raised is not None:
        raise raised


def _run_inline(
    job_context: PlanExecutionContext, active: ActiveExecution, step: ExecutionStep
) -> Iterator[DagsterEvent]:
    """One step on the orchestrating thread: the in-process executor's loop body."""
    step_context = job_context.for_step(step, active.get_known_state())
    _check_resources(step_context)
    events: list[DagsterEvent] = []
    for event in dagster_event_sequence_for_step(step_context):
        events.append(event)
        yield event
        active.handle_event(event)
    active.verify_complete(job_context, step.key)
    yield from active.plan_events_iterator(job_context)
    yield from trigger_hook(step_context, events)


def _wait_seconds(
    active: ActiveExecution, pool: _WorkerPool, interrupted: bool, deadline: float
) -> float:
    """Until the next event, retry time or termination check, whichever comes first."""
    if interrupted:
        return max(min(POLL_SECONDS, deadline - time.monotonic()), 0.0)
    pending = active.sleep_interval()  # a step waiting out its retry delay, a pool claim
    if pool.jobs:
        return min(POLL_SECONDS, pending) if pending > 0 else POLL_SECONDS
    # Nothing running: wake for the next retry (never spin flat out while nothing is due).
    return min(POLL_SECONDS, max(pending, 0.001))


def _receive(pool: _WorkerPool, timeout: float) -> list[tuple[str, list[Any]]]:
    """Every message already queued, waiting up to `timeout` for the first."""
    messages: list[tuple[str, list[Any]]] = []
    try:
        if timeout > 0:
            messages.append(pool.inbox.get(timeout=timeout))
        else:
            messages.append(pool.inbox.get_nowait())
        while True:
            messages.append(pool.inbox.get_nowait())
    except queue.Empty:
        pass
    return messages


def _write_off(
    job_context: PlanExecutionContext, active: ActiveExecution, pool: _WorkerPool
) -> Iterator[DagsterEvent]:
    """Fail the steps that did not stop within the grace period, so the run can end."""
    for key in list(pool.jobs):
        if key in pool.settled:  # done, only its hooks are still running
            pool.finished(key)
            continue
        step_context = job_context.for_step(active.get_step_by_key(key))
        error = SerializableErrorInfo(
            message=f"Step {key} was still running {TERMINATION_GRACE_SECONDS:g} s after the "
            "run was terminated; its thread was abandoned (it ends when its call returns).\n",
            stack=[],
            cls_name="DagsterExecutionInterruptedError",
        )
        event = DagsterEvent.step_failure_event(
            step_context, StepFailureData(error, None, ErrorSource.INTERRUPT)
        )
        yield event
        active.handle_event(event)
        pool.finished(key)


class ThreadedExecutor(Executor):
    """Runs up to `max_concurrent` ready steps at once, each on a thread of the run process."""

    def __init__(
        self,
        retries: RetryMode,
        max_concurrent: int = DEFAULT_MAX_CONCURRENT,
        celery: CeleryRouting | None = None,
    ) -> None:
        if not isinstance(retries, RetryMode):
            raise TypeError(f"retries must be a RetryMode, got {retries!r}")
        if max_concurrent < 1:
            raise ValueError(f"max_concurrent must be at least 1, got {max_concurrent}")
        self._retries = retries
        self._max_concurrent = max_concurrent
        self._celery = celery

    @property
    def retries(self) -> RetryMode:
        return self._retries

    @property
    def max_concurrent(self) -> int:
        return self._max_concurrent

    def execute(
        self, plan_context: PlanOrchestrationContext, execution_plan: ExecutionPlan
    ) -> Iterator[DagsterEvent]:
        step_keys = execution_plan.step_keys_to_execute
        pid = os.getpid()
        yield DagsterEvent.engine_event(
            plan_context,
            f"Executing steps on up to {self._max_concurrent} threads in process (pid: {pid})",
            event_specific_data=EngineEventData.in_process(pid, step_keys),
        )
        started = time.perf_counter()
        max_concurrent = self._max_concurrent
        celery = self._celery

        def iterator(
            job_context: PlanExecutionContext, execution_plan: ExecutionPlan
        ) -> Iterator[DagsterEvent]:
            return threaded_plan_iterator(
                job_context, execution_plan, max_concurrent=max_concurrent, celery=celery
            )

        yield from ExecuteRunWithPlanIterable(
            execution_plan=plan_context.execution_plan,
            iterator=iterator,
            execution_context_manager=PlanExecutionContextManager(
                job=plan_context.job,
                retry_mode=plan_context.retry_mode,
                execution_plan=plan_context.execution_plan,
                run_config=plan_context.run_config,
                dagster_run=plan_context.dagster_run,
                instance=plan_context.instance,
                raise_on_error=plan_context.raise_on_error,
                output_capture=plan_context.output_capture,
                step_dependency_config=self.step_dependency_config,
            ),
        )
        elapsed = time.perf_counter() - started
        yield DagsterEvent.engine_event(
            plan_context,
            f"Finished steps on threads in process (pid: {pid}) in {elapsed:.3f} s",
            event_specific_data=EngineEventData.in_process(pid, step_keys),
        )


def _config_schema(default_max_concurrent: int) -> Field:
    return Field(
        {
            "max_concurrent": Field(
                Int,
                default_value=default_max_concurrent,
                is_required=False,
                description="How many steps may run at once (FlowMaestro's maxConcurrentNodes).",
            ),
            "retries": get_retries_config(),
        },
        description="Execute ready steps concurrently on threads of the run process.",
    )


def _create_executor(init_context: InitExecutorContext) -> ThreadedExecutor:
    config = init_context.executor_config
    # Validated by Dagster against `_config_schema` before this is called.
    retries = RetryMode.from_config(cast(dict[str, dict[str, Any]], config["retries"]))
    max_concurrent = cast(int, config["max_concurrent"])
    if max_concurrent < 1:
        raise ValueError(f"threaded executor: max_concurrent must be ≥ 1, got {max_concurrent}")
    return ThreadedExecutor(
        retries=retries or RetryMode.ENABLED,
        max_concurrent=max_concurrent,
        celery=platform_routing(),  # FLOWMAESTRO_CELERY_*: read where the run executes
    )


def _definition(default_max_concurrent: int) -> ExecutorDefinition:
    return ExecutorDefinition(
        name="threaded",
        config_schema=_config_schema(default_max_concurrent),
        executor_creation_fn=_create_executor,
        description=(
            "Runs ready steps concurrently on threads inside the run process (I/O-bound ops "
            "overlap; Python work still shares one GIL)."
        ),
    )


threaded_executor: ExecutorDefinition = _definition(DEFAULT_MAX_CONCURRENT)


@cache
def threaded_executor_for(max_concurrent: int) -> ExecutorDefinition:
    """The threaded executor with `max_concurrent` as its default (run config may override)."""
    if max_concurrent < 1:
        raise ValueError(f"max_concurrent must be ≥ 1, got {max_concurrent}")
    if max_concurrent == DEFAULT_MAX_CONCURRENT:
        return threaded_executor
    return _definition(max_concurrent)


__all__ = [
    "DEFAULT_MAX_CONCURRENT",
    "ThreadedExecutor",
    "threaded_executor",
    "threaded_executor_for",
    "threaded_plan_iterator",
]
