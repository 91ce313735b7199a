"""Running a compiled workflow in this process on its own executor (CLI `run`, tests, benchmarks).

`JobDefinition.execute_in_process` always swaps the job's executor for the in-process one, so
it cannot run a job on the threaded executor. `execute_in_process_with_executor` is the same
call (ephemeral instance unless one is given, in-memory IO manager, outputs captured) that keeps
the job's executor, for executors that run every step inside this process.
"""

from collections.abc import Mapping
from typing import Any

from dagster import DagsterInstance, ExecuteInProcessResult, ExecutorDefinition, JobDefinition

from flowmaestro_dagster.adapter.ops import INPUTS_RESOURCE
from flowmaestro_dagster.adapter.resources import resources_for
from flowmaestro_dagster.compile.compiler import CompiledWorkflow
from flowmaestro_dagster.dagster_internals import InMemoryJob, core_execute_in_process
from flowmaestro_dagster.engines.jobs import build_job
from flowmaestro_dagster.engines.results import WorkflowRunResult, output_states, summarize
from flowmaestro_dagster.engines.threaded import threaded_executor_for
from flowmaestro_dagster.settings import Settings


def run_config_for(inputs: Mapping[str, Any], *, log_level: str | None = None) -> dict[str, Any]:
    """Run config that sets an execution's inputs (node plans come from the job's defaults)."""
    config: dict[str, Any] = {"resources": {INPUTS_RESOURCE: {"config": {"inputs": dict(inputs)}}}}
    if log_level:
        config["loggers"] = {"console": {"config": {"log_level": log_level}}}
    return config


def execute_in_process_with_executor(
    job: JobDefinition,
    *,
    executor_def: ExecutorDefinition | None = None,
    run_config: Mapping[str, Any] | None = None,
    instance: DagsterInstance | None = None,
    raise_on_error: bool = True,
    tags: Mapping[str, str] | None = None,
) -> ExecuteInProcessResult:
    """`job.execute_in_process(...)` on `executor_def` (default: the job's own executor)."""
    executor = executor_def or job.executor_def
    config = dict(run_config or {})
    execution = config.get("execution", {}).get("config", {})
    if executor.get_requirements(execution):
        raise ValueError(
            f"executor '{executor.name}' runs steps outside this process; launch the run instead"
        )
    ephemeral = job.as_ephemeral_job(resource_defs={}, input_values={}).with_executor_def(executor)
    return core_execute_in_process(
        run_config=config,
        job=InMemoryJob(job_def=ephemeral),
        instance=instance,
        output_capturing_enabled=True,
        raise_on_error=raise_on_error,
        # Dagster's `merge_run_tags` without a partition: the job's run tags, then `tags`.
        run_tags={**job.run_tags, **(tags or {})},
        asset_selection=frozenset(),
    )


def execute_workflow(
    compiled: CompiledWorkflow,
    inputs: Mapping[str, Any] | None = None,
    *,
    instance: DagsterInstance | None = None,
    tags: Mapping[str, str] | None = None,
    log_level: str | None = None,
) -> WorkflowRunResult:
    """Execute in this process (on `instance`, else an ephemeral one) on the job's own
    executor (threads by default), and summarise the run."""
    result = execute_in_process_with_executor(
        compiled.job,
        run_config=run_config_for(inputs or {}, log_level=log_level),
        instance=instance,
        raise_on_error=False,
        tags=tags,
    )
    states = output_states(compiled, result.output_for_node, list(compiled.aliases.values()))
    return summarize(
        compiled,
        run_id=result.run_id,
        success=result.success,
        events=result.all_events,
        states=states,
    )


def run_workflow_threaded(
    definition: Any,
    inputs: Mapping[str, Any] | None = None,
    *,
    max_concurrent: int | None = None,
    settings: Settings | None = None,
    log_level: str = "WARNING",
    instance: DagsterInstance | None = None,
    **compile_options: Any,
) -> WorkflowRunResult:
    """`testing.run_workflow` on `instance`, with `max_concurrent` threads in place of the
    workflow's `settings.maxConcurrentNodes` (`build_job`'s default)."""
    compile_options.setdefault("resource_defs", resources_for(settings))
    if max_concurrent is not None:
        compile_options.setdefault("executor_def", threaded_executor_for(max_concurrent))
    compiled = build_job(definition, **compile_options)
    return execute_workflow(compiled, inputs, instance=instance, log_level=log_level)
