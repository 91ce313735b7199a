"""A run launcher that starts run workers warm: forked from a server that has already imported
Dagster and the code locations.

Dagster's default launcher asks the code server to *spawn* a fresh interpreter per run, which
re-imports Dagster and the workflow code (seconds per run on a 2-core machine). Here the
launcher (in the daemon) keeps a multiprocessing *forkserver* whose process has preloaded those
modules; each run is a fork of it, so a run worker starts in milliseconds and runs exactly what
`dagster api execute_run` runs. It is a single-host launcher: runs execute on the machine of
the daemon (use Dagster's default launcher, or Celery for steps, across machines).

Configure in dagster.yaml:

    run_launcher:
      module: flowmaestro_dagster.engines.launcher
      class: ForkserverRunLauncher
"""

import multiprocessing
import os
import signal
import socket
import threading
from collections.abc import Mapping, Sequence
from multiprocessing.context import ForkServerContext
from typing import Any, Self

from dagster import DagsterRun, Field

from flowmaestro_dagster.dagster_internals import (
    CheckRunHealthResult,
    ConfigurableClass,
    ConfigurableClassData,
    LaunchRunContext,
    RunLauncher,
    WorkerStatus,
    capture_interrupts,
    execute_run_command_body,
)
from flowmaestro_dagster.engines.celery import CLIENT_MODULES
from flowmaestro_dagster.tags import HOST_TAG, PAUSED_TAG, PID_TAG

PAUSE_SIGNAL = signal.SIGUSR1
DEFAULT_PRELOAD: tuple[str, ...] = (
    "flowmaestro_dagster.dagster_internals",  # the run worker's body: `dagster api execute_run`
    "flowmaestro_dagster.definitions",
    "flowmaestro_dagster.adapter.io_manager",
    "flowmaestro_dagster.control.waitpoints",
    "flowmaestro_dagster.nodes.connectors.preload",  # the parsed connector catalogue
    # What a run worker's first job load still imported (0.1 s a run): the run's resources
    # (stores, connection decryption), PostgreSQL storage, file paths.
    "flowmaestro_dagster.orchestration.resources",
    "flowmaestro_dagster.control.schedules",
    "dagster_postgres",
    "upath",
    *CLIENT_MODULES,  # the Celery client a run's first step on a worker needs (0.2-0.5 s)
)
# Imported after the preloads, always: builds the instance once in the forkserver.
WARM_INSTANCE = "flowmaestro_dagster.engines.warm_instance"


def run_worker(run_id: str, instance_ref: Any, keep_connections: bool = True) -> None:
    """The body of a run worker process: what `dagster api execute_run` does."""
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(PAUSE_SIGNAL, _pause_requested)
    from flowmaestro_dagster.engines import warm_instance  # the forkserver's, already built

    with capture_interrupts(), warm_instance.instance_for(instance_ref) as instance:
        if keep_connections:
            warm_instance.keep_connections(instance)
        execute_run_command_body(
            run_id, instance, lambda _event: None, set_exit_code_on_failure=False
        )


def _pause_requested(_signo: int, _frame: Any) -> None:
    """A pause: unlike SIGINT, nothing is raised inside the running node (Dagster's interrupt
    flag would fail it at its next framework call); the threaded executor sees the request
    between steps, starts no more and lets the running ones finish."""
    from flowmaestro_dagster.engines.threaded import request_pause

    request_pause()


class ForkserverRunLauncher(RunLauncher, ConfigurableClass):
    """Launches each run in a process forked from a warm, preloaded forkserver."""

    def __init__(
        self,
        inst_data: ConfigurableClassData | None = None,
        preload: Sequence[str] | None = None,
        keep_connections: bool = True,
    ) -> None:
        self._inst_data = inst_data
        self._preload = list(preload) if preload is not None else list(DEFAULT_PRELOAD)
        self._keep_connections = keep_connections
        self._context: ForkServerContext | None = None
        self._lock = threading.Lock()
        self._processes: dict[str, multiprocessing.process.BaseProcess] = {}
        super().__init__()

    @property
    def inst_data(self) -> ConfigurableClassData | None:
        return self._inst_data

    @classmethod
    def config_type(cls) -> Mapping[str, Any]:
        return {
            "preload": Field(
                [str],
                is_required=False,
                description="Modules the forkserver imports once (defaults cover Dagster and "
                "the FlowMaestro code locations).",
            ),
            "keep_connections": Field(
                bool,
                is_required=False,
                default_value=True,
                description="Run workers keep their PostgreSQL storage connections for the run "
                "(two per running run) instead of one per storage operation.",
            ),
        }

    @classmethod
    def from_config_value(
        cls, inst_data: ConfigurableClassData, config_value: Mapping[str, Any]
    ) -> Self:
        return cls(
            inst_data=inst_data,
            preload=config_value.get("preload"),
            keep_connections=config_value.get("keep_connections", True),
        )

    def _forkserver(self) -> ForkServerContext:
        with self._lock:
            if self._context is None:
                context = multiprocessing.get_context("forkserver")
                context.set_forkserver_preload([*self._preload, WARM_INSTANCE])
                self._context = context
            return self._context

    def launch_run(self, context: LaunchRunContext) -> None:
        run = context.dagster_run
        process = self._forkserver().Process(
            target=run_worker,
            args=(run.run_id, self._instance.get_ref(), self._keep_connections),
            name=f"dagster-run-{run.run_id[:8]}",
        )
        process.start()
        with self._lock:
            self._reap()
            self._processes[run.run_id] = process
        self._instance.add_run_tags(
            run.run_id, {PID_TAG: str(process.pid), HOST_TAG: socket.gethostname()}
        )

    def _reap(self) -> None:
        for run_id, process in list(self._processes.items()):
            if not process.is_alive():
                process.join(timeout=0)
                del self._processes[run_id]

    def _pid(self, run: DagsterRun | None) -> int | None:
        if run is None or run.tags.get(HOST_TAG) not in (None, socket.gethostname()):
            return None
        value = run.tags.get(PID_TAG)
        return int(value) if value and value.isdigit() else None

    def terminate(self, run_id: str) -> bool:
        run = self._instance.get_run_by_id(run_id)
        pid = self._pid(run)
        if run is None or pid is None or not _alive(pid):
            return False
        self._instance.report_run_canceling(run)
        if run.tags.get(PAUSED_TAG) == "true":
            os.kill(pid, PAUSE_SIGNAL)  # stop at the next node boundary, the running node finishes
        else:
            os.kill(pid, signal.SIGINT)  # the run worker turns this into a clean cancellation
        return True

    @property
    def supports_check_run_worker_health(self) -> bool:
        return True

    def check_run_worker_health(self, run: DagsterRun) -> CheckRunHealthResult:
        pid = self._pid(run)
        if pid is None:
            return CheckRunHealthResult(WorkerStatus.UNKNOWN, "no run worker pid recorded")
        if _alive(pid):
            return CheckRunHealthResult(WorkerStatus.RUNNING)
        return CheckRunHealthResult(WorkerStatus.FAILED, f"run worker process {pid} is gone")

    def dispose(self) -> None:
        with self._lock:
            self._reap()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie has exited: read its state
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True
