"""Executors by node type. Plain functions of a `NodeContext`; no Dagster here."""

from collections.abc import Mapping

from flowmaestro_dagster.nodes import (
    charts,
    checkpoint,
    code,
    database,
    documents,
    file_nodes,
    generative,
    http,
    integration,
    knowledge,
    llm,
    sheets,
    waitpoints,
    web,
)
from flowmaestro_dagster.nodes.base import (
    ConfigCheck,
    Executor,
    MemoryOp,
    NodeContext,
    NodeResult,
    wrap_output,
)
from flowmaestro_dagster.nodes.config_nodes import execute_queue_config, execute_retry_config
from flowmaestro_dagster.nodes.io_nodes import (
    execute_files,
    execute_input,
    execute_output,
    execute_trigger,
)
from flowmaestro_dagster.nodes.logic import execute_conditional, execute_switch
from flowmaestro_dagster.nodes.loop import execute_loop
from flowmaestro_dagster.nodes.memory import execute_shared_memory
from flowmaestro_dagster.nodes.transform import execute_transform
from flowmaestro_dagster.nodes.unavailable import execute_unavailable

__all__ = [
    "CONFIG_CHECKS",
    "EXECUTORS",
    "Executor",
    "MemoryOp",
    "NodeContext",
    "NodeResult",
    "get_executor",
    "wrap_output",
]

EXECUTORS: Mapping[str, Executor] = {
    "input": execute_input,
    "files": execute_files,
    "trigger": execute_trigger,
    "output": execute_output,
    "transform": execute_transform,
    "conditional": execute_conditional,
    "switch": execute_switch,
    "loop": execute_loop,
    "shared-memory": execute_shared_memory,
    "retryConfig": execute_retry_config,
    "queueConfig": execute_queue_config,
    **llm.EXECUTORS,
    **http.EXECUTORS,
    **code.EXECUTORS,
    **database.EXECUTORS,
    **waitpoints.EXECUTORS,
    **checkpoint.EXECUTORS,
    **integration.EXECUTORS,  # integration, templateOutput; media types: a plug-in's connector
    # Media node types the platform runs itself (after integration's plug-in fallback):
    **file_nodes.EXECUTORS,  # fileRead, fileWrite, audioInput
    **web.EXECUTORS,  # url, webBrowse, fileDownload, webSearch, screenshotCapture
    **documents.EXECUTORS,  # pdfGeneration, pdfExtract, ocrExtraction
    **sheets.EXECUTORS,  # spreadsheetGeneration
    **charts.EXECUTORS,  # chartGeneration
    **generative.EXECUTORS,  # audioTranscription, audioOutput, audio, imageGeneration, video
    **knowledge.EXECUTORS,  # knowledgeBaseQuery
}


# Deploy-time checks of node types whose executors know their fields (media nodes).
CONFIG_CHECKS: Mapping[str, ConfigCheck] = {
    **file_nodes.CONFIG_CHECKS,
    **web.CONFIG_CHECKS,
    **documents.CONFIG_CHECKS,
    **sheets.CONFIG_CHECKS,
    **charts.CONFIG_CHECKS,
    **generative.CONFIG_CHECKS,
    **knowledge.CONFIG_CHECKS,
}


def get_executor(node_type: str, overrides: Mapping[str, Executor] | None = None) -> Executor:
    """The executor for a node type; types without one fail with 'no executor configured'."""
    if overrides and node_type in overrides:
        return overrides[node_type]
    return EXECUTORS.get(node_type, execute_unavailable)
