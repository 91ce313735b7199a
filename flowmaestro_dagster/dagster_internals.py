"""Every private Dagster name FlowMaestro uses: imported here, once, and nowhere else.

Dagster's public API has no extension points for what the threaded executor (engines/threaded.py),
the Celery step dispatch (engines/celery.py), the forkserver run launcher (engines/launcher.py),
in-process runs on a chosen executor (engines/local.py), the compiler's dynamic collect
(compile/compiler.py) and the shared code server (orchestration/code_server.py) do: they are
built on Dagster's own internals. One module makes a Dagster
upgrade a review of one file, each name saying why no public API serves; tests/test_architecture.py
fails if another module imports a private Dagster module. Anything Dagster exports (`dagster.X`)
is imported from `dagster` instead. Checked against Dagster 1.13.
"""

# launcher: what `dagster api execute_run` runs in a run worker (a CLI command body; Dagster has
# no public function that executes a launched run in the current process).
from dagster._cli.api import _execute_run_command_body as execute_run_command_body

# compiler: the dependency `.collect()` builds inside a composition function; the public API has
# no data form of it for a GraphDefinition built from a dependency dict.
from dagster._core.definitions.dependency import DynamicCollectDependencyDefinition

# local: `JobDefinition.execute_in_process` always swaps the job's executor for the in-process
# one; `core_execute_in_process` on an `InMemoryJob` is that call without the swap.
from dagster._core.definitions.job_base import InMemoryJob

# threaded, celery: the type `dagster.reconstructable()` returns (not exported); steps go to
# Celery only for a job a worker can rebuild.
from dagster._core.definitions.reconstruct import ReconstructableJob

# threaded: the payload of engine events (`DagsterEvent.engine_event` needs one).
from dagster._core.events import EngineEventData

# threaded: runs a plan iterator inside the run's execution context, as Dagster's in-process
# executor does. cli: `execute_plan_iterator` is what a Celery worker runs for a step (preloaded).
# celery worker: `create_execution_plan` builds the plan of the one step a task runs (Dagster
# exports no plan builder).
from dagster._core.execution.api import (
    ExecuteRunWithPlanIterable,
    create_execution_plan,
    execute_plan_iterator,
)

# threaded: the key of the run's captured stdout/stderr, as Dagster's executors name it.
# celery worker: `redirect_to_file` is Dagster's step capture without its `tail` mirror (below).
from dagster._core.execution.compute_logs import create_compute_log_file_key, redirect_to_file

# threaded, celery: the contexts an executor is handed and builds per step (`dagster.Executor`
# is public, its `execute` arguments are not; only StepExecutionContext is exported).
from dagster._core.execution.context.system import PlanExecutionContext, PlanOrchestrationContext

# threaded: opens the run's resources and loggers around the plan iterator.
from dagster._core.execution.context_creation_job import PlanExecutionContextManager

# local: `JobDefinition.execute_in_process` without its executor swap (see InMemoryJob).
from dagster._core.execution.execute_in_process import core_execute_in_process

# threaded: Dagster's plan state machine (readiness, skips, retries, fan-in, dynamic mapping).
from dagster._core.execution.plan.active import ActiveExecution

# threaded: the body of one step and of its hooks (`_trigger_hook` is module-private there).
from dagster._core.execution.plan.execute_plan import _trigger_hook as trigger_hook
from dagster._core.execution.plan.execute_plan import dagster_event_sequence_for_step

# threaded: the run's pool (op concurrency) claims, held as the in-process executor holds them.
from dagster._core.execution.plan.instance_concurrency_context import InstanceConcurrencyContext

# threaded: the payload of a step failure event (a step written off, a Celery worker lost).
from dagster._core.execution.plan.objects import ErrorSource, StepFailureData

# threaded, celery: the plan, its steps and the state a step starts from.
from dagster._core.execution.plan.plan import ExecutionPlan
from dagster._core.execution.plan.state import KnownExecutionState
from dagster._core.execution.plan.step import ExecutionStep, IExecutionStep

# threaded, celery: an executor's `retries` config and mode (`Executor.retries` returns one).
from dagster._core.execution.retries import RetryMode, get_retries_config

# celery worker: the instance reference a task carries; a worker keeps one instance per reference
# and swaps its compute-log manager (below) before opening it (`DagsterInstance.get_ref()`
# returns one; the type is not exported).
from dagster._core.instance.ref import InstanceRef

# launcher: the base of a run launcher and what Dagster hands it (only DefaultRunLauncher, a
# concrete launcher, is exported).
from dagster._core.launcher import (
    CheckRunHealthResult,
    LaunchRunContext,
    RunLauncher,
    WorkerStatus,
)

# engines/storage: Dagster's embedded storages, subclassed to check their schema once per process
# (`storage: custom:` in dagster.yaml takes any DagsterStorage); Dagster exports none of them,
# nor where the embedded storage keeps each part under its base directory. The event log's
# subclass overrides `_initdb` and `_connect` (per-run shard initialisation and connections), which
# no public method exposes; it connects with Dagster's busy timeout.
# celery worker: Dagster's local compute-log manager captures a step's stdout/stderr by starting
# two `tail -F` and two Python watcher processes per step (`mirror_stream_to_file`), about a
# third of a short step's time on a worker; the worker's subclass captures to the same files in
# process. No public compute-log API exists (manager, IO types, file extensions, context).
from dagster._core.storage.compute_log_manager import CapturedLogContext, ComputeIOType

# control/client: a cursor at a storage id, so a live-event follower reads a run's log after the
# last event it sent (`get_records_for_run` takes only Dagster's own cursor strings).
from dagster._core.storage.event_log.base import EventLogCursor
from dagster._core.storage.event_log.sqlite.sqlite_event_log import SqliteEventLogStorage

# control/client: taking tags off a run (a resumed run's waiting tags). Dagster has no public
# tag delete (`add_run_tags` only adds or overwrites); every run storage it ships (SQLite,
# PostgreSQL, MySQL, in-memory) is a SqlRunStorage whose tags live in these two tables, and a
# `storage:` section wraps it in a LegacyRunStorage.
from dagster._core.storage.legacy_storage import LegacyRunStorage

# celery worker: the local compute-log manager its own subclasses (why: compute_log_manager, above).
from dagster._core.storage.local_compute_log_manager import (
    IO_TYPE_EXTENSION,
    LocalComputeLogManager,
)

# control/client: the run tables a tag delete writes (why: legacy_storage, above).
from dagster._core.storage.runs.schema import RunsTable, RunTagsTable
from dagster._core.storage.runs.sql_run_storage import SqlRunStorage
from dagster._core.storage.runs.sqlite.sqlite_run_storage import SqliteRunStorage
from dagster._core.storage.schedules.sqlite.sqlite_schedule_storage import SqliteScheduleStorage
from dagster._core.storage.sqlite import SQLITE_BUSY_TIMEOUT_SECONDS
from dagster._core.storage.sqlite_storage import DagsterSqliteStorage
from dagster._core.storage.sqlite_storage import _event_logs_directory as event_logs_directory
from dagster._core.storage.sqlite_storage import _runs_directory as runs_directory
from dagster._core.storage.sqlite_storage import _schedule_directory as schedule_directory

# code_server: where a shard location's definitions come from (module and attribute), as
# `dagster api grpc -m ... -a ...` builds it for its servicer; Dagster exports no such type.
from dagster._core.types.loadable_target_origin import LoadableTargetOrigin

# code_server: the thread pool Dagster's gRPC server and its servicer share (not exported).
from dagster._core.utils import FuturesAwareThreadPoolExecutor

# code_server: the answers to the ReloadCode and ExternalJob calls (generated protobuf; not
# exported): a job's snapshot is served from the server's cache.
from dagster._grpc.__generated__.dagster_api_pb2 import ExternalJobReply, ReloadCodeReply

# code_server: one process serving every deployed-workflow shard location, each reloaded in
# process. Dagster's code server serves one location per process (`dagster api grpc`, whose
# ReloadCode is a no-op; `dagster code-server start` restarts that subprocess on each reload):
# `DagsterApiServer` is the servicer it runs, `LoadedRepositories` what the servicer loads,
# `DagsterGrpcServer` the gRPC server around it. None is exported.
from dagster._grpc.server import DagsterApiServer, DagsterGrpcServer, LoadedRepositories

# celery: the step a task runs (run, step key, known state, retry mode, instance reference), as
# dagster-celery's `execute_plan` task takes it; ours takes it as `dagster.serialize_value` text.
from dagster._grpc.types import ExecuteStepArgs

# launcher: how dagster.yaml instantiates a plug-in (`module:`, `class:`, `config:`).
# celery worker: the compute-log manager it swaps into an instance reference is one of those.
from dagster._serdes import ConfigurableClass, ConfigurableClassData

# threaded: the error of engine and step failure events.
from dagster._utils.error import SerializableErrorInfo, serializable_error_info_from_exc_info

# launcher: turns SIGINT into Dagster's interrupt in a run worker, as `dagster api execute_run`.
from dagster._utils.interrupts import capture_interrupts

# schedules: the slots of a cron string in a timezone, as the schedule daemon computes them (the
# triggers listing's next fire time must be the daemon's, daylight-saving rules included; Dagster
# exports no function for it).
from dagster._utils.schedules import cron_string_iterator

__all__ = [
    "IO_TYPE_EXTENSION",
    "SQLITE_BUSY_TIMEOUT_SECONDS",
    "ActiveExecution",
    "CapturedLogContext",
    "CheckRunHealthResult",
    "ComputeIOType",
    "ConfigurableClass",
    "ConfigurableClassData",
    "DagsterApiServer",
    "DagsterGrpcServer",
    "DagsterSqliteStorage",
    "DynamicCollectDependencyDefinition",
    "EngineEventData",
    "ErrorSource",
    "EventLogCursor",
    "ExecuteRunWithPlanIterable",
    "ExecuteStepArgs",
    "ExecutionPlan",
    "ExecutionStep",
    "ExternalJobReply",
    "FuturesAwareThreadPoolExecutor",
    "IExecutionStep",
    "InMemoryJob",
    "InstanceConcurrencyContext",
    "InstanceRef",
    "KnownExecutionState",
    "LaunchRunContext",
    "LegacyRunStorage",
    "LoadableTargetOrigin",
    "LoadedRepositories",
    "LocalComputeLogManager",
    "PlanExecutionContext",
    "PlanExecutionContextManager",
    "PlanOrchestrationContext",
    "ReconstructableJob",
    "ReloadCodeReply",
    "RetryMode",
    "RunLauncher",
    "RunTagsTable",
    "RunsTable",
    "SerializableErrorInfo",
    "SqlRunStorage",
    "SqliteEventLogStorage",
    "SqliteRunStorage",
    "SqliteScheduleStorage",
    "StepFailureData",
    "WorkerStatus",
    "capture_interrupts",
    "core_execute_in_process",
    "create_compute_log_file_key",
    "create_execution_plan",
    "cron_string_iterator",
    "dagster_event_sequence_for_step",
    "event_logs_directory",
    "execute_plan_iterator",
    "execute_run_command_body",
    "get_retries_config",
    "redirect_to_file",
    "runs_directory",
    "schedule_directory",
    "serializable_error_info_from_exc_info",
    "trigger_hook",
]
