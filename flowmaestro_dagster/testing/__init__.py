"""Helpers for testing workflows (shipped, so deployments can test their own workflows)."""

from collections.abc import Mapping
from typing import Any

from flowmaestro_dagster.adapter import SERVICES_RESOURCE
from flowmaestro_dagster.compiler import compile_workflow, default_resources
from flowmaestro_dagster.resources import static_services_resource
from flowmaestro_dagster.results import WorkflowRunResult
from flowmaestro_dagster.running import execute_locally
from flowmaestro_dagster.settings import Settings
from flowmaestro_dagster.testing.fake_llm import FakeLLMServer, FakeReply, RecordedRequest
from flowmaestro_dagster.testing.http_server import EchoRequest, EchoServer

__all__ = [
    "EchoRequest",
    "EchoServer",
    "FakeLLMServer",
    "FakeReply",
    "RecordedRequest",
    "resources_for",
    "run_workflow",
]


def resources_for(settings: Settings | None = None) -> dict[str, Any]:
    """The node ops' resources, with `settings` in place of the environment's."""
    resources = default_resources()
    if settings is not None:
        resources[SERVICES_RESOURCE] = static_services_resource(settings)
    return resources


def run_workflow(
    definition: Any,
    inputs: Mapping[str, Any] | None = None,
    *,
    settings: Settings | None = None,
    log_level: str = "WARNING",
    **compile_options: Any,
) -> WorkflowRunResult:
    """Compile and run a definition in process on an ephemeral instance."""
    compile_options.setdefault("resource_defs", resources_for(settings))
    compiled = compile_workflow(definition, **compile_options)
    return execute_locally(compiled, inputs, log_level=log_level)
