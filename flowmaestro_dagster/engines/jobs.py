"""A compiled workflow made runnable: bound to an engine and to the node resources.

The compiler (compile/) builds the job's graph and config only; which executor runs its steps
and which services its ops get are decided here, when a job is wired for a code location, a
test or the CLI.
"""

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from dagster import ExecutorDefinition

from flowmaestro_dagster.adapter.resources import default_resources
from flowmaestro_dagster.compile.compiler import CompiledWorkflow, compile_workflow
from flowmaestro_dagster.engines.threaded import threaded_executor_for


def build_job(
    definition: Any,
    *,
    resource_defs: Mapping[str, Any] | None = None,
    executor_def: ExecutorDefinition | None = None,
    **compile_options: Any,
) -> CompiledWorkflow:
    """Compile `definition` into a job on `executor_def` (default: threads, up to the
    workflow's maxConcurrentNodes) with `resource_defs` (default: the node resources from
    settings): what every runnable job goes through."""
    resources = dict(resource_defs) if resource_defs is not None else default_resources()
    compiled = compile_workflow(definition, resource_defs=resources, **compile_options)
    limit = compiled.spec.settings.max_concurrent_nodes
    executor = executor_def or threaded_executor_for(limit)
    return replace(compiled, job=compiled.job.with_executor_def(executor))
