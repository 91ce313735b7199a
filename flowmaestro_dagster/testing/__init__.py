"""Helpers for testing workflows (shipped, so deployments can test their own workflows)."""

from collections.abc import Mapping
from typing import Any

from flowmaestro_dagster.adapter.resources import resources_for
from flowmaestro_dagster.engines.jobs import build_job
from flowmaestro_dagster.engines.local import execute_workflow
from flowmaestro_dagster.engines.results import WorkflowRunResult
from flowmaestro_dagster.settings import Settings
from flowmaestro_dagster.testing.fake_llm import FakeLLMServer, FakeReply, RecordedRequest
from flowmaestro_dagster.testing.http_server import EchoRequest, EchoServer
from flowmaestro_dagster.testing.recording_client import RecordingDagsterClient

__all__ = [
    "EchoRequest",
    "EchoServer",
    "FakeLLMServer",
    "FakeReply",
    "RecordedRequest",
    "RecordingDagsterClient",
    "resources_for",
    "run_workflow",
]


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
    compiled = build_job(definition, **compile_options)
    return execute_workflow(compiled, inputs, log_level=log_level)
