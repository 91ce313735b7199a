"""Helpers for tests of workflows (shipped, so deployments can test their own workflows)."""

from collections.abc import Mapping
from typing import Any

from flowmaestro_dagster.compiler import compile_workflow
from flowmaestro_dagster.results import WorkflowRunResult
from flowmaestro_dagster.running import execute_locally

__all__ = ["run_workflow"]


def run_workflow(
    definition: Any,
    inputs: Mapping[str, Any] | None = None,
    *,
    log_level: str = "WARNING",
    **compile_options: Any,
) -> WorkflowRunResult:
    """Compile and run a definition in process on an ephemeral instance."""
    compiled = compile_workflow(definition, **compile_options)
    return execute_locally(compiled, inputs, log_level=log_level)
