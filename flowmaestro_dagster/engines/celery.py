"""Node steps on Celery workers, the rest on the run's threads (docs/deployment.md).

The threaded executor stays the job's executor and keeps Dagster's plan logic (readiness, skips,
retries, fan-in, dynamic mapping, concurrency); only the body of a step routed here changes. A
step's thread submits our `flowmaestro.execute_step` task and waits for its result: the worker
runs Dagster's `execute_plan_iterator` for that one step, writes its events to the event log and
returns them for the orchestrator. Retries are deferred to the orchestrator
(`RetryMode.for_inner_plan`), exactly as with dagster-celery's executor.

The task is dagster-celery's `execute_plan` made cheap to repeat. dagster-celery's task opens a
new `DagsterInstance` per step (storage, schema checks, connection pools never closed), reloads
the code location's repository whenever the previous task ran another job (Dagster keeps one
built job per process) and lets Dagster's compute-log manager start four processes per step.
A worker here keeps, per process, what every step reuses (`StepWorkerState`):

* one instance per instance reference, opened at its first task and closed when the process
  ends, whose compute-log manager captures in process (`WorkerComputeLogManager`);
* built jobs by (reconstructable job, the run's job snapshot id), least recently used out past
  `flowmaestro worker --job-cache` (`JobCache`): the snapshot id is Dagster's hash of the
  job's definition (for a workflow, every node's plan), so a changed definition under an
  unchanged job name is built again, never served stale;
* the modules every step imports, loaded before the pool forks (`flowmaestro worker`).

The task carries what the worker cannot know: the step (run id, step key, known state, retry
mode), the instance reference, the reconstructable job and its snapshot id. A worker still serves
dagster-celery's own task, which run processes of an earlier release send.

A step goes to Celery when its op tag `flowmaestro/run_on` (the node's `runOn`, else the
workflow's `settings.runOn`; set by the compiler) is `celery`, or, without the tag, when its node
type is in `FLOWMAESTRO_CELERY_NODE_TYPES`. Celery runs only when `FLOWMAESTRO_CELERY_BROKER_URL`
is set and the run can be rebuilt elsewhere (a launched run whose outputs are persisted, e.g. by
the platform's `NodeOutputIOManager`); otherwise every step runs locally and the run says why.

Failures are loud, never a hang:

* a broker that does not answer fails the step's submission (`CeleryUnavailableError`, naming
  the broker);
* some worker must consume the queue: checked once per run, while the run's first Celery step
  is already queued (the check waits half a second for every worker's answer, so it does not
  delay the first step; "nobody" is asked twice). A step still queued when the check finds no
  worker is revoked and the run fails, naming broker and queue; a worker that starts later
  skips a step whose run has ended (any worker does: no step runs for a finished or cancelled
  run);
* while a step waits in the queue, the check is repeated every `FLOWMAESTRO_CELERY_CHECK_SECONDS`
  (a step is failed when two checks in a row find no worker: a busy worker can answer late);
* while a step runs, the worker that started it (its hostname, from the task's STARTED state)
  must answer a ping; if it does not twice in a row (killed, machine lost), the step is failed
  and the run raises `CeleryWorkerLostError`, a run failure (not a step failure), so Dagster's
  run retries (`FLOWMAESTRO_RUN_RETRIES`) re-execute it from failure: finished nodes are kept.
"""

import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TextIO

from dagster import (
    DagsterEvent,
    DagsterInstance,
    DagsterRunStatus,
    JobDefinition,
    deserialize_value,
    serialize_value,
)

from flowmaestro_dagster.dagster_internals import (
    EngineEventData,
    ExecuteStepArgs,
    ExecutionStep,
    IExecutionStep,
    InMemoryJob,
    InstanceRef,
    KnownExecutionState,
    PlanExecutionContext,
    ReconstructableJob,
    RetryMode,
    create_execution_plan,
    execute_plan_iterator,
    redirect_to_file,
)
from flowmaestro_dagster.engines.compute_logs import InProcessComputeLogManager, with_compute_logs
from flowmaestro_dagster.errors import CeleryError, CeleryUnavailableError, CeleryWorkerLostError
from flowmaestro_dagster.tags import NODE_TYPE_TAG, RUN_ON_TAG

if TYPE_CHECKING:
    from celery import Celery, Task

    from flowmaestro_dagster.settings import Settings

WORKER_PREFIX = "flowmaestro"  # worker hostnames: flowmaestro-<name>@<host>
STEP_TASK_NAME = "flowmaestro.execute_step"
PING_TIMEOUT_SECONDS = 1.0
QUEUE_CHECK_TIMEOUT_SECONDS = 0.5
MISSED_PINGS = 2  # a worker is lost after this many unanswered pings in a row
DEFAULT_JOB_CACHE_SIZE = 64  # built jobs a worker process keeps (`flowmaestro worker --job-cache`)
# A run in one of these states has no orchestrator waiting for its steps any more.
ENDED_RUN_STATUSES = frozenset(
    {
        DagsterRunStatus.SUCCESS,
        DagsterRunStatus.FAILURE,
        DagsterRunStatus.CANCELED,
        DagsterRunStatus.CANCELING,
    }
)
# What a run process imports at its first Celery step (about 0.2-0.5 s on 2 busy cores, per run:
# the broker's transport pulls in redis-py). A forkserver that preloads them
# (`ForkserverRunLauncher`'s `preload`) saves that in every run that routes steps to Celery.
CLIENT_MODULES = ("celery", "kombu.transport.redis", "celery.backends.redis", "billiard.exceptions")


@dataclass(frozen=True)
class CeleryRouting:
    """Which steps go to Celery, and where: from the platform settings."""

    broker_url: str
    backend_url: str
    queue: str
    node_types: frozenset[str]
    check_seconds: float = 5.0

    @classmethod
    def from_settings(cls, settings: "Settings") -> "CeleryRouting | None":
        if settings.celery_broker_url is None:
            return None
        return cls(
            broker_url=settings.celery_broker_url,
            backend_url=settings.celery_backend or settings.celery_broker_url,
            queue=settings.celery_queue,
            node_types=frozenset(settings.celery_node_types),
            check_seconds=settings.celery_check_seconds,
        )

    def wants(self, step: IExecutionStep) -> bool:
        """The node's `runOn`, else the workflow's, else its type's default."""
        tags = step.tags or {}
        run_on = tags.get(RUN_ON_TAG)
        if run_on is not None:
            return run_on == "celery"
        return tags.get(NODE_TYPE_TAG, "") in self.node_types


def platform_routing() -> CeleryRouting | None:
    """The routing of this process's settings (None: Celery is off)."""
    from flowmaestro_dagster.settings import get_settings

    return CeleryRouting.from_settings(get_settings())


def wants_celery(step: IExecutionStep) -> bool:
    """Whether a step asks for Celery explicitly (its `runOn`)."""
    return (step.tags or {}).get(RUN_ON_TAG) == "celery"


def make_celery_app(
    *, broker_url: str, backend_url: str, queue: str, serve_earlier_releases: bool = False
) -> "Celery":
    """The Celery app of both sides: its broker is always the one given (never Celery's AMQP
    default), and it registers the step task, routed to `queue`; a worker's app
    (`serve_earlier_releases`) also serves dagster-celery's `execute_plan`, which run processes
    of an earlier release send."""
    from celery import Celery
    from dagster_celery.config import TASK_EXECUTE_PLAN_NAME

    app = Celery("flowmaestro", broker=broker_url, backend=backend_url, set_as_current=False)
    app.conf.update(
        task_default_queue=queue,
        task_routes={
            STEP_TASK_NAME: {"queue": queue},
            TASK_EXECUTE_PLAN_NAME: {"queue": queue},
        },
        task_track_started=True,  # STARTED carries the worker's hostname: it can be pinged
        task_acks_late=False,  # a lost step is re-run by Dagster's run retry, not redelivered
        worker_prefetch_multiplier=1,
        # A worker takes a step only while it has an idle pool process: with early acks, a
        # prefetch limit alone lets a busy worker take a step another worker could start now.
        worker_disable_prefetch=True,
        broker_connection_retry_on_startup=True,
        broker_transport_options={"max_retries": 3, "interval_start": 0, "interval_step": 0.2},
        result_expires=86_400,
        worker_hijack_root_logger=False,
    )
    app.task(bind=True, name=STEP_TASK_NAME)(execute_step)
    if serve_earlier_releases:
        from dagster_celery.tasks import create_task

        create_task(app)
    return app


# -- the worker side: what a worker process keeps across tasks ---------------------------------


class WorkerComputeLogManager(InProcessComputeLogManager):
    """Dagster's local compute-log manager without the `tail` mirror of every step: the step's
    output goes to its log files only (the UI reads them alike). Dagster's would start a
    `tail -F` plus a Python watcher per stream for every step, four processes. With the
    `threads` pool (several steps at once in one process) output is not redirected."""

    def redirect(self, stream: TextIO, path: str) -> AbstractContextManager[None]:
        return redirect_to_file(stream, path)


def worker_instance_ref(ref: InstanceRef) -> InstanceRef:
    """The instance reference a worker opens: Dagster's local compute-log manager becomes
    `WorkerComputeLogManager` (same configuration); any other manager is kept."""
    return with_compute_logs(ref, WorkerComputeLogManager)


def load_job(job: ReconstructableJob) -> JobDefinition:
    """Build `job` from its code location, as Dagster does, but past Dagster's per-process
    cache of the last job built (`ReconstructableJob.get_definition`): a miss here must see
    the code location's current definition."""
    repository = job.repository.get_definition()
    return repository.get_maybe_subset_job_def(
        job.job_name,
        op_selection=job.op_selection,
        asset_selection=job.asset_selection,
        asset_check_selection=job.asset_check_selection,
    )


class JobCache:
    """Built jobs by (reconstructable job, job snapshot id), at most `max_size` of them.

    The snapshot id (the run's `job_snapshot_id`) is Dagster's hash of the job's definition, so
    a job whose definition changed under the same name is a different entry. A run without one
    is never cached.
    """

    def __init__(
        self, max_size: int = DEFAULT_JOB_CACHE_SIZE, load: Callable[..., JobDefinition] = load_job
    ) -> None:
        if max_size < 0:
            raise ValueError(f"the job cache size must be ≥ 0, got {max_size}")
        self.max_size = max_size
        self._load = load
        self._jobs: OrderedDict[tuple[ReconstructableJob, str], JobDefinition] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.builds = 0

    def __len__(self) -> int:
        return len(self._jobs)

    def get(self, job: ReconstructableJob, snapshot_id: str | None) -> tuple[JobDefinition, bool]:
        """The built job, and whether it came from the cache."""
        key = (job, snapshot_id) if snapshot_id else None
        if key is not None:
            with self._lock:
                found = self._jobs.get(key)
                if found is not None:
                    self._jobs.move_to_end(key)
                    self.hits += 1
                    return found, True
        built = self._load(job)  # outside the lock: other threads' hits do not wait for it
        with self._lock:
            self.builds += 1
            if key is not None and self.max_size:
                self._jobs[key] = built
                self._jobs.move_to_end(key)
                while len(self._jobs) > self.max_size:
                    self._jobs.popitem(last=False)
        return built, False


class StepWorkerState:
    """What one worker process keeps across the steps it runs: the instances it opened (one per
    instance reference) and its job cache."""

    def __init__(self, job_cache_size: int = DEFAULT_JOB_CACHE_SIZE) -> None:
        self.jobs = JobCache(job_cache_size)
        self._instances: dict[str, DagsterInstance] = {}
        self._lock = threading.Lock()

    def instance(self, ref: InstanceRef) -> DagsterInstance:
        key = serialize_value(ref)
        with self._lock:
            found = self._instances.get(key)
            if found is None:
                found = DagsterInstance.from_ref(worker_instance_ref(ref))
                self._instances[key] = found
            return found

    def close(self) -> None:
        with self._lock:
            instances, self._instances = list(self._instances.values()), {}
        for instance in instances:
            instance.dispose()


_state: StepWorkerState | None = None
_state_lock = threading.Lock()
_job_cache_size = DEFAULT_JOB_CACHE_SIZE


def configure_worker(*, job_cache_size: int = DEFAULT_JOB_CACHE_SIZE) -> None:
    """Called by `flowmaestro worker` before its pool starts: the job cache's size, and the
    instances closed when a pool process ends."""
    from celery.signals import worker_process_shutdown, worker_shutdown

    global _job_cache_size
    if job_cache_size < 0:
        raise ValueError(f"the job cache size must be ≥ 0, got {job_cache_size}")
    _job_cache_size = job_cache_size
    worker_process_shutdown.connect(close_worker_state, weak=False)
    worker_shutdown.connect(close_worker_state, weak=False)
    os.register_at_fork(after_in_child=_forget_worker_state)


def _forget_worker_state() -> None:
    """In a forked pool process: never use the parent's instances (their connections belong
    to the parent); the child opens its own at its first task."""
    global _state
    _state = None


def worker_state() -> StepWorkerState:
    """This process's state, created at its first task (after the pool forked: an instance's
    connections are never shared between processes)."""
    global _state
    with _state_lock:
        if _state is None:
            _state = StepWorkerState(_job_cache_size)
        return _state


def close_worker_state(**_: Any) -> None:
    """Close this process's instances and forget its jobs (a pool process ends; tests)."""
    global _state
    with _state_lock:
        state, _state = _state, None
    if state is not None:
        state.close()


def execute_step(
    task: "Task",
    step_args: str,
    job: Mapping[str, Any],
    job_snapshot_id: str | None = None,
) -> list[str]:
    """The Celery task: run one step of a run, return its events (serialized, in order).

    `step_args`: Dagster's `ExecuteStepArgs`, serialized; `job`: the reconstructable job
    (`ReconstructableJob.to_dict()`); `job_snapshot_id`: the run's, the job cache's key.
    """
    args = deserialize_value(step_args, ExecuteStepArgs)
    if args.instance_ref is None:
        raise CeleryError(f"the step task of run {args.run_id} carries no instance reference")
    state = worker_state()
    instance = state.instance(args.instance_ref)
    run = instance.get_run_by_id(args.run_id)
    if run is None:
        raise CeleryError(f"run {args.run_id} is not in the worker's Dagster instance")
    step_keys = list(args.step_keys_to_execute or [])
    host = task.request.hostname or "?"
    if run.status in ENDED_RUN_STATUSES:  # queued before the run ended: nobody waits for it
        instance.report_engine_event(
            f"Celery: step {', '.join(step_keys)} not run by worker {host}: the run is "
            f"{run.status.value}",
            run,
            EngineEventData({"step_keys": ", ".join(step_keys), "Celery worker": host}),
            step_key=step_keys[0] if len(step_keys) == 1 else None,
        )
        return []
    job_def, cached = state.jobs.get(ReconstructableJob.from_dict(job), job_snapshot_id)
    job_in_memory = InMemoryJob(job_def)
    plan = create_execution_plan(
        job_in_memory,
        run.run_config,
        step_keys_to_execute=step_keys,
        known_state=args.known_state,
    )
    keys = ", ".join(step_keys)
    started = instance.report_engine_event(
        f"Executing steps {keys} in celery worker",
        run,
        EngineEventData(
            {
                "step_keys": keys,
                "Celery worker": host,
                "worker pid": str(os.getpid()),
                "job": "cached" if cached else "built",
            }
        ),
        step_key=plan.step_handle_for_single_step_plans().to_key(),  # type: ignore[union-attr]
    )
    events = [started]
    events.extend(
        execute_plan_iterator(
            execution_plan=plan,
            job=job_in_memory,
            dagster_run=run,
            instance=instance,
            retry_mode=args.retry_mode,
            run_config=run.run_config,
        )
    )
    return [serialize_value(event) for event in events]


# -- the orchestrator side: a run's steps on Celery ----------------------------------------------


class CeleryDispatch:
    """Runs routed steps of one run on Celery; shared by the run's step threads."""

    def __init__(self, routing: CeleryRouting, job: ReconstructableJob) -> None:
        self.routing = routing
        self.job = job
        self.app = make_celery_app(
            broker_url=routing.broker_url, backend_url=routing.backend_url, queue=routing.queue
        )
        self._lock = threading.Lock()
        self._checked = False
        self._check: Future[list[str]] | None = None
        self._checker: ThreadPoolExecutor | None = None
        self._job_dict: Mapping[str, Any] | None = None
        self._in_flight: dict[str, Any] = {}  # step key -> AsyncResult

    def revoke_all(self) -> None:
        """Termination: steps still queued are never started (running ones finish, as with
        dagster-celery's executor; the run gives them its grace period)."""
        for result in list(self._in_flight.values()):
            result.revoke()

    def close(self) -> None:
        self.revoke_all()
        if self._checker is not None:
            self._checker.shutdown(wait=False, cancel_futures=True)
        self.app.close()

    # -- checks --------------------------------------------------------------------------------

    def consumers(self) -> list[str]:
        """Hostnames of the workers that consume the queue (raises if the broker is down)."""
        try:
            with self.app.connection_for_write() as connection:
                connection.ensure_connection(max_retries=1, timeout=5)
        except Exception as exc:
            raise self._unreachable(exc) from exc
        replies = self.app.control.inspect(timeout=QUEUE_CHECK_TIMEOUT_SECONDS).active_queues()
        return sorted(
            host
            for host, queues in (replies or {}).items()
            if any(queue.get("name") == self.routing.queue for queue in queues)
        )

    def ensure_workers(self) -> None:
        """Fail now, with a clear message, rather than queue steps nobody takes."""
        with self._lock:
            if self._checked:
                return
        if not self.consumers():
            raise self._nobody_consumes()
        with self._lock:
            self._checked = True

    def _start_check(self) -> "Future[list[str]]":
        """The run's consumer check, started by its first Celery step, in the background."""
        with self._lock:
            if self._check is None:
                self._checker = ThreadPoolExecutor(1, thread_name_prefix="celery-check")
                self._check = self._checker.submit(self.consumers)
            return self._check

    def _check_failure(self, check: "Future[list[str]]") -> CeleryUnavailableError | None:
        """What the run's consumer check found wrong (nobody on the queue, the broker gone), if
        anything; a step is failed for it only while no worker has taken the step."""
        try:
            # An answer can be late on a busy machine: "nobody" is asked a second time.
            consumers = check.result() or self.consumers()
        except CeleryUnavailableError as exc:
            return exc
        if not consumers:
            return self._nobody_consumes()
        self._checked = True
        return None

    def _nobody_consumes(self) -> CeleryUnavailableError:
        return CeleryUnavailableError(
            f"no Celery worker consumes queue {self.routing.queue!r} on broker "
            f"{_redacted(self.routing.broker_url)}; start one with `flowmaestro worker` "
            "(same FLOWMAESTRO_CELERY_* settings), or unset FLOWMAESTRO_CELERY_BROKER_URL "
            "to run every node in the run process"
        )

    def _unreachable(self, exc: BaseException) -> CeleryUnavailableError:
        return CeleryUnavailableError(
            f"the Celery broker {_redacted(self.routing.broker_url)} is unreachable: {exc}"
        )

    def alive(self, hostname: str) -> bool:
        replies = self.app.control.ping(destination=[hostname], timeout=PING_TIMEOUT_SECONDS)
        return any(hostname in reply for reply in replies or [])

    # -- one step ------------------------------------------------------------------------------

    def submit(
        self,
        job_context: PlanExecutionContext,
        step: ExecutionStep,
        known_state: KnownExecutionState,
        retry_mode: RetryMode,
    ) -> Any:
        """Queue the step task: the step, the instance reference, the job and its snapshot id
        (the worker's job cache key)."""
        args = ExecuteStepArgs(
            job_origin=self.job.get_python_origin(),
            run_id=job_context.run_id,
            step_keys_to_execute=[step.key],
            instance_ref=job_context.instance.get_ref(),
            retry_mode=retry_mode.for_inner_plan(),
            known_state=known_state,
            print_serialized_events=False,
        )
        if self._job_dict is None:
            self._job_dict = self.job.to_dict()
        signature = self.app.signature(
            STEP_TASK_NAME,
            kwargs={
                "step_args": serialize_value(args),
                "job": self._job_dict,
                "job_snapshot_id": job_context.dagster_run.job_snapshot_id,
            },
        )
        try:
            return signature.apply_async(queue=self.routing.queue)
        except Exception as exc:  # kombu's OperationalError and the like: the broker is down
            raise self._unreachable(exc) from exc

    def run_step(
        self,
        job_context: PlanExecutionContext,
        step: ExecutionStep,
        known_state: KnownExecutionState,
        retry_mode: RetryMode,
    ) -> list[DagsterEvent]:
        """Run one step on a worker; its events (already in the event log) in order."""
        from billiard.exceptions import WorkerLostError
        from celery.exceptions import TimeoutError as ResultTimeout

        check = None if self._checked else self._start_check()
        result = self.submit(job_context, step, known_state, retry_mode)
        self._in_flight[step.key] = result
        missed = unconsumed = 0  # unanswered pings, checks finding no worker: in a row
        try:
            while True:
                # Until the run's consumer check has answered, wake up to read its answer.
                wait = self.routing.check_seconds
                if check is not None:
                    wait = min(wait, 2 * QUEUE_CHECK_TIMEOUT_SECONDS)
                try:
                    events = result.get(timeout=wait, propagate=True)
                except ResultTimeout:
                    pass
                except WorkerLostError as exc:  # the process running it died, its worker lives
                    raise CeleryWorkerLostError(
                        f"the Celery worker process running step {step.key} died ({exc}); the "
                        "run fails so that it is retried from failure"
                    ) from exc
                else:
                    result.forget()
                    return [deserialize_value(event, DagsterEvent) for event in events]
                state, info = result.state, result.info
                if check is not None and check.done():
                    failure, check = self._check_failure(check), None
                    if failure is not None and state == "PENDING":
                        raise failure
                elif state == "STARTED" and isinstance(info, dict) and info.get("hostname"):
                    hostname = str(info["hostname"])
                    missed = 0 if self.alive(hostname) else missed + 1
                    if missed >= MISSED_PINGS:
                        raise CeleryWorkerLostError(
                            f"Celery worker {hostname} (pid {info.get('pid')}) stopped answering "
                            f"while it ran step {step.key}; the run fails so that it is retried "
                            "from failure"
                        )
                elif state == "PENDING" and check is None:
                    unconsumed = 0 if self.consumers() else unconsumed + 1
                    if unconsumed >= MISSED_PINGS:
                        raise CeleryUnavailableError(
                            f"step {step.key} is queued on {self.routing.queue!r} but no Celery "
                            "worker consumes that queue any more; start one with "
                            "`flowmaestro worker`"
                        )
        except BaseException:
            result.revoke()
            raise
        finally:
            self._in_flight.pop(step.key, None)


def _redacted(url: str) -> str:
    """A broker URL without its password."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - not a URL SQLAlchemy can parse: show its scheme only
        return url.split("://", 1)[0] + "://..."


def worker_hostname(name: str) -> str:
    """A worker's Celery node name (`%h`: this host's name, expanded by Celery)."""
    return f"{WORKER_PREFIX}-{name}@%h"


__all__ = [
    "CLIENT_MODULES",
    "DEFAULT_JOB_CACHE_SIZE",
    "NODE_TYPE_TAG",
    "RUN_ON_TAG",
    "STEP_TASK_NAME",
    "CeleryDispatch",
    "CeleryRouting",
    "JobCache",
    "StepWorkerState",
    "WorkerComputeLogManager",
    "close_worker_state",
    "configure_worker",
    "execute_step",
    "load_job",
    "make_celery_app",
    "platform_routing",
    "wants_celery",
    "worker_hostname",
    "worker_instance_ref",
    "worker_state",
]
