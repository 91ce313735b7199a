"""Node steps on dagster-celery workers, the rest on the run's threads (docs/deployment.md).

The threaded executor stays the job's executor and keeps Dagster's plan logic (readiness, skips,
retries, fan-in, dynamic mapping, concurrency); only the body of a step routed here changes. A
step's thread submits dagster-celery's own `execute_plan` task (`dagster_celery.tasks
.create_task`: `execute_plan_iterator` for that one step, the events written to the event log
by the worker and returned for the orchestrator) and waits for its result. Retries are deferred
to the orchestrator (`RetryMode.for_inner_plan`), exactly as with dagster-celery's executor.

A step goes to Celery when its op tag `flowmaestro/run_on` (the node's `runOn`, else the
workflow's `settings.runOn`; set by the compiler) is `celery`, or, without the tag, when its node
type is in `FLOWMAESTRO_CELERY_NODE_TYPES`. Celery runs only when `FLOWMAESTRO_CELERY_BROKER_URL`
is set and the run can be rebuilt elsewhere (a launched run whose outputs are persisted, e.g. by
the platform's `NodeOutputIOManager`); otherwise every step runs locally and the run says why.

Failures are loud, never a hang:

* before the first Celery step of a run, the broker must answer and some worker must consume
  the queue (`CeleryUnavailableError`: the run fails, naming broker and queue);
* while a step waits in the queue, the check is repeated every `FLOWMAESTRO_CELERY_CHECK_SECONDS`;
* while a step runs, the worker that started it (its hostname, from the task's STARTED state)
  must answer a ping; if it does not twice in a row (killed, machine lost), the step is failed
  and the run raises `CeleryWorkerLostError`, a run failure (not a step failure), so Dagster's
  run retries (`FLOWMAESTRO_RUN_RETRIES`) re-execute it from failure: finished nodes are kept.
"""

import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from dagster import DagsterEvent, deserialize_value

from flowmaestro_dagster.dagster_internals import (
    ExecuteStepArgs,
    ExecutionStep,
    IExecutionStep,
    KnownExecutionState,
    PlanExecutionContext,
    ReconstructableJob,
    RetryMode,
    pack_value,
)
from flowmaestro_dagster.errors import CeleryUnavailableError, CeleryWorkerLostError
from flowmaestro_dagster.tags import NODE_TYPE_TAG, RUN_ON_TAG

if TYPE_CHECKING:
    from celery import Celery

    from flowmaestro_dagster.settings import Settings

WORKER_PREFIX = "flowmaestro"  # worker hostnames: flowmaestro-<name>@<host>
PING_TIMEOUT_SECONDS = 1.0
QUEUE_CHECK_TIMEOUT_SECONDS = 0.5
MISSED_PINGS = 2  # a worker is lost after this many unanswered pings in a row


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


def make_celery_app(*, broker_url: str, backend_url: str, queue: str) -> "Celery":
    """The Celery app of both sides: its broker is always the one given (never Celery's AMQP
    default), and it registers dagster-celery's `execute_plan` task, routed to `queue`."""
    from celery import Celery
    from dagster_celery.config import TASK_EXECUTE_PLAN_NAME
    from dagster_celery.tasks import create_task

    app = Celery("flowmaestro", broker=broker_url, backend=backend_url, set_as_current=False)
    app.conf.update(
        task_default_queue=queue,
        task_routes={TASK_EXECUTE_PLAN_NAME: {"queue": queue}},
        task_track_started=True,  # STARTED carries the worker's hostname: it can be pinged
        task_acks_late=False,  # a lost step is re-run by Dagster's run retry, not redelivered
        worker_prefetch_multiplier=1,  # a worker holds only the steps it runs
        broker_connection_retry_on_startup=True,
        broker_transport_options={"max_retries": 3, "interval_start": 0, "interval_step": 0.2},
        result_expires=86_400,
        worker_hijack_root_logger=False,
    )
    create_task(app)
    return app


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
        self._in_flight: dict[str, Any] = {}  # step key -> AsyncResult

    def revoke_all(self) -> None:
        """Termination: steps still queued are never started (running ones finish, as with
        dagster-celery's executor; the run gives them its grace period)."""
        for result in list(self._in_flight.values()):
            result.revoke()

    def close(self) -> None:
        self.revoke_all()
        self.app.close()

    # -- checks --------------------------------------------------------------------------------

    def consumers(self) -> list[str]:
        """Hostnames of the workers that consume the queue (raises if the broker is down)."""
        try:
            with self.app.connection_for_write() as connection:
                connection.ensure_connection(max_retries=1, timeout=5)
        except Exception as exc:
            raise CeleryUnavailableError(
                f"the Celery broker {_redacted(self.routing.broker_url)} is unreachable: {exc}"
            ) from exc
        replies = self.app.control.inspect(timeout=QUEUE_CHECK_TIMEOUT_SECONDS).active_queues()
        return sorted(
            host
            for host, queues in (replies or {}).items()
            if any(queue.get("name") == self.routing.queue for queue in queues)
        )

    def ensure_workers(self) -> None:
        """Once per run: fail now, with a clear message, rather than queue steps nobody takes."""
        with self._lock:
            if self._checked:
                return
            if not self.consumers():
                raise CeleryUnavailableError(
                    f"no Celery worker consumes queue {self.routing.queue!r} on broker "
                    f"{_redacted(self.routing.broker_url)}; start one with `flowmaestro worker` "
                    "(same FLOWMAESTRO_CELERY_* settings), or unset FLOWMAESTRO_CELERY_BROKER_URL "
                    "to run every node in the run process"
                )
            self._checked = True

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
        """dagster-celery's `_submit_task`, for this run's job and our queue."""
        from dagster_celery.config import TASK_EXECUTE_PLAN_NAME

        args = ExecuteStepArgs(
            job_origin=self.job.get_python_origin(),
            run_id=job_context.run_id,
            step_keys_to_execute=[step.key],
            instance_ref=job_context.instance.get_ref(),
            retry_mode=retry_mode.for_inner_plan(),
            known_state=known_state,
            print_serialized_events=True,
        )
        task = self.app.tasks[TASK_EXECUTE_PLAN_NAME]
        return task.si(
            execute_step_args_packed=pack_value(args), executable_dict=self.job.to_dict()
        ).apply_async(queue=self.routing.queue)

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

        self.ensure_workers()
        result = self.submit(job_context, step, known_state, retry_mode)
        self._in_flight[step.key] = result
        missed = 0
        try:
            while True:
                try:
                    events = result.get(timeout=self.routing.check_seconds, propagate=True)
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
                if state == "STARTED" and isinstance(info, dict) and info.get("hostname"):
                    hostname = str(info["hostname"])
                    missed = 0 if self.alive(hostname) else missed + 1
                    if missed >= MISSED_PINGS:
                        raise CeleryWorkerLostError(
                            f"Celery worker {hostname} (pid {info.get('pid')}) stopped answering "
                            f"while it ran step {step.key}; the run fails so that it is retried "
                            "from failure"
                        )
                elif state == "PENDING" and not self.consumers():
                    raise CeleryUnavailableError(
                        f"step {step.key} is queued on {self.routing.queue!r} but no Celery "
                        "worker consumes that queue any more; start one with `flowmaestro worker`"
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
    "NODE_TYPE_TAG",
    "RUN_ON_TAG",
    "CeleryDispatch",
    "CeleryRouting",
    "make_celery_app",
    "platform_routing",
    "wants_celery",
    "worker_hostname",
]
