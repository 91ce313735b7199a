"""Running a compiled workflow in this process (CLI `run`, tests, benchmarks)."""

from collections.abc import Mapping
from typing import Any

from dagster import DagsterInstance

from flowmaestro_dagster.adapter import INPUTS_RESOURCE
from flowmaestro_dagster.compiler import CompiledWorkflow
from flowmaestro_dagster.results import WorkflowRunResult, output_states, summarize


def run_config_for(inputs: Mapping[str, Any], *, log_level: str | None = None) -> dict[str, Any]:
    """Run config that sets an execution's inputs (node plans come from the job's defaults)."""
    config: dict[str, Any] = {"resources": {INPUTS_RESOURCE: {"config": {"inputs": dict(inputs)}}}}
    if log_level:
        config["loggers"] = {"console": {"config": {"log_level": log_level}}}
    return config


def execute_locally(
    compiled: CompiledWorkflow,
    inputs: Mapping[str, Any] | None = None,
    *,
    instance: DagsterInstance | None = None,
    tags: Mapping[str, str] | None = None,
    log_level: str | None = None,
) -> WorkflowRunResult:
    """Execute in this process (on `instance`, else an ephemeral one) and summarise the run."""
    from flowmaestro_dagster.execution.local import execute_in_process_with_executor

    config = run_config_for(inputs or {}, log_level=log_level)
    # The job's own executor (threads by default); execute_in_process would force in-process.
    result = execute_in_process_with_executor(
        compiled.job, run_config=config, instance=instance, raise_on_error=False, tags=tags
    )
    states = output_states(
        compiled,
        result.output_for_node,
        list(compiled.aliases.values()),
    )
    return summarize(
        compiled,
        run_id=result.run_id,
        success=result.success,
        events=result.all_events,
        states=states,
    )
