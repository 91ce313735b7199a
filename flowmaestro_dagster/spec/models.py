"""The workflow spec: one typed model of a definition, whichever shape it was saved in."""

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from flowmaestro_dagster.spec.configs import NodeConfig
from flowmaestro_dagster.spec.policies import OnErrorSettings, RetrySettings

# Where a node's step runs (docs/deployment.md): "celery" on a `flowmaestro worker` process when
# the platform has Celery, "local" on the run's own threads.
RunOn = Literal["celery", "local"]
RUN_ON_VALUES: tuple[str, ...] = ("celery", "local")


class NodeSpec(BaseModel):
    """A node: canonical type and config, with the original config kept for display."""

    model_config = ConfigDict(frozen=True)

    id: str
    type: str
    source_type: str
    label: str
    config: NodeConfig
    original_config: dict[str, Any] = Field(default_factory=dict)
    position: dict[str, Any] | None = None
    on_error: OnErrorSettings | None = None
    retry: RetrySettings | None = None
    retry_field: str | None = None
    run_on: RunOn | None = None  # config `runOn`; None: the workflow's, else the platform's

    @property
    def provider(self) -> str | None:
        return getattr(self.config, "provider", None)


class EdgeSpec(BaseModel):
    model_config = ConfigDict(frozen=True)

    id: str
    source: str
    target: str
    source_handle: str | None = None
    target_handle: str | None = None

    @property
    def handle(self) -> str | None:
        """The branch handle, or None for a plain edge (fixtures write "output" on plain ones)."""
        handle = self.source_handle
        if handle is None or handle in PLAIN_HANDLES:
            return None
        return handle


# Handles that mark an ordinary edge, not a branch.
PLAIN_HANDLES: frozenset[str] = frozenset({"", "output", "out", "source", "bottom", "right"})


class WorkflowSettings(BaseModel):
    model_config = ConfigDict(frozen=True, extra="allow", populate_by_name=True)

    timeout_ms: float | None = Field(default=None, gt=0, alias="timeout")
    max_concurrent_nodes: int = Field(default=10, ge=1, le=1000, alias="maxConcurrentNodes")
    run_on: RunOn | None = Field(default=None, alias="runOn")
    # A `{{reference}}` nothing provides at run time: warn (the default), or fail the node.
    # None: the platform's FLOWMAESTRO_UNRESOLVED_REFERENCES.
    unresolved_references: Literal["warn", "error"] | None = Field(
        default=None, alias="unresolvedReferences"
    )


class WorkflowSpec(BaseModel):
    """A whole definition; `nodes` keeps the order the nodes were written in."""

    model_config = ConfigDict(frozen=True)

    name: str
    description: str | None = None
    shape: Literal["react-flow", "backend"]
    nodes: dict[str, NodeSpec]
    edges: list[EdgeSpec]
    entry_point: str | None = None
    settings: WorkflowSettings = Field(default_factory=WorkflowSettings)
    metadata: dict[str, Any] = Field(default_factory=dict)
