"""The node types a FlowMaestro definition may contain, and what each one is."""

from dataclasses import dataclass

from flowmaestro_dagster.spec.providers import PROVIDER_IDS

MEDIA_TYPES: frozenset[str] = frozenset(
    {
        "vision",
        "embeddings",
        "knowledgeBaseQuery",
        "imageGeneration",
        "videoGeneration",
        "files",
        "url",
        "audioInput",
        "audioOutput",
        "audio",
        "chartGeneration",
        "spreadsheetGeneration",
        "audioTranscription",
        "ocrExtraction",
        "pdfGeneration",
        "screenshotCapture",
        "webSearch",
        "webBrowse",
        "pdfExtract",
        "fileDownload",
        "fileRead",
        "fileWrite",
        "templateOutput",
    }
)

CORE_TYPES: frozenset[str] = frozenset(
    {
        "trigger",
        "llm",
        "router",
        "conditional",
        "switch",
        "loop",
        "code",
        "wait",
        "humanReview",
        "input",
        "transform",
        "shared-memory",
        "output",
        "http",
        "database",
        "integration",
        "subworkflow",  # a platform extension: a child execution of another workflow
        "checkpoint",  # a platform extension: durable state, optionally a pause (issue 10)
        # Execution control (issue 10): platform extensions, not in the builder's registry.
        "batch",
        "retryConfig",
        "queueConfig",
    }
    | MEDIA_TYPES
)

# Spellings the builder (or older definitions) use for a core type.
TYPE_ALIASES: dict[str, str] = {
    "userInput": "input",
    "kbQuery": "knowledgeBaseQuery",
    "action": "integration",
    "childWorkflow": "subworkflow",
    "executeWorkflow": "subworkflow",
    "retryConfiguration": "retryConfig",
    "queueConfiguration": "queueConfig",
}

BRANCH_TYPES: frozenset[str] = frozenset({"conditional", "switch", "router"})
WAITPOINT_TYPES: frozenset[str] = frozenset({"wait", "humanReview", "subworkflow", "checkpoint"})
# Nodes whose downstream nodes run once per item (a loop region, docs/semantics.md).
REGION_TYPES: frozenset[str] = frozenset({"loop", "batch"})
# Settings-only nodes: a passthrough at run time; the compiler reads their settings.
SETTINGS_TYPES: frozenset[str] = frozenset({"retryConfig", "queueConfig"})

# Node types whose executors ship with the compiler itself (pure, no external service).
CORE_RUNNABLE: frozenset[str] = frozenset(
    {
        "input",
        "files",
        "output",
        "trigger",
        "transform",
        "conditional",
        "switch",
        "loop",
        "shared-memory",
        "batch",
        "retryConfig",
        "queueConfig",
    }
)

# Sticky notes on the canvas: dropped, with the edges that touch them.
COMMENT_TYPE = "comment"


@dataclass(frozen=True)
class ResolvedType:
    """A node's canonical type; `provider` is set when the type was a provider id."""

    type: str
    provider: str | None = None


def resolve_type(raw_type: str) -> ResolvedType | None:
    """Canonical type of a node, or None if the builder does not know the type."""
    if raw_type in CORE_TYPES:
        return ResolvedType(raw_type)
    if raw_type in TYPE_ALIASES:
        return ResolvedType(TYPE_ALIASES[raw_type])
    if raw_type in PROVIDER_IDS:
        return ResolvedType("integration", provider=raw_type)
    return None
