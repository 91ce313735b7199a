"""What each op needs to know at run time, as plain data (it travels in op config).

The compiler writes one `NodePlan` per node into the job's default run config; the adapter
reads it back. Keeping it JSON means an operator can read (and override) a node's settings in
the Dagster launchpad, and a run can be re-executed on any worker.
"""

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from flowmaestro_dagster.spec.configs import (
    BatchConfig,
    CheckpointConfig,
    CodeConfig,
    ConditionalConfig,
    DatabaseConfig,
    HttpConfig,
    HumanReviewConfig,
    InputConfig,
    IntegrationConfig,
    LLMConfig,
    LoopConfig,
    MediaConfig,
    NodeConfig,
    OutputConfig,
    QueueConfigConfig,
    RetryConfigConfig,
    RouterConfig,
    SharedMemoryConfig,
    SubworkflowConfig,
    SwitchConfig,
    TransformConfig,
    TriggerConfig,
    WaitConfig,
)
from flowmaestro_dagster.spec.policies import OnErrorSettings, RetrySettings

CONFIG_MODELS: dict[str, type[NodeConfig]] = {
    "input": InputConfig,
    "output": OutputConfig,
    "trigger": TriggerConfig,
    "transform": TransformConfig,
    "conditional": ConditionalConfig,
    "switch": SwitchConfig,
    "router": RouterConfig,
    "loop": LoopConfig,
    "wait": WaitConfig,
    "humanReview": HumanReviewConfig,
    "code": CodeConfig,
    "http": HttpConfig,
    "llm": LLMConfig,
    "integration": IntegrationConfig,
    "database": DatabaseConfig,
    "shared-memory": SharedMemoryConfig,
    "subworkflow": SubworkflowConfig,
    "batch": BatchConfig,
    "retryConfig": RetryConfigConfig,
    "queueConfig": QueueConfigConfig,
    "checkpoint": CheckpointConfig,
}


def config_model(node_type: str) -> type[NodeConfig]:
    return CONFIG_MODELS.get(node_type, MediaConfig)


class _Plan(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")


class InlineEdge(_Plan):
    source: str
    target: str
    branch: str | None = None  # the branch key the edge needs, None for a plain edge


class InlineRegion(_Plan):
    """A loop body run inside its loop's op: nodes in order, edges, and the result nodes."""

    nodes: list["NodePlan"]
    edges: list[InlineEdge]
    result_nodes: list[str]


class LoopPlan(_Plan):
    mode: Literal["dynamic", "inline", "empty"]
    item_variable: str = "item"
    index_variable: str = "index"
    output_variable: str | None = None
    inline: InlineRegion | None = None


class CollectPlan(_Plan):
    """An exit's input that gathers the per-item states of one body node of a loop."""

    input: str
    loop_id: str
    source: str


class LoopSummary(_Plan):
    """What an exit needs to fold a dynamic loop's per-item results back into one state."""

    loop_id: str
    loop_rank: int
    body: list[str]
    body_ranks: dict[str, int]
    item_variable: str
    index_variable: str
    output_variable: str | None = None


class NodePlan(_Plan):
    node_id: str
    type: str
    label: str
    rank: int
    config: dict[str, Any]
    branches: dict[str, str] = Field(default_factory=dict)  # output name -> branch key
    in_body: bool = False
    loop: LoopPlan | None = None
    collects: list[CollectPlan] = Field(default_factory=list)
    loops: list[LoopSummary] = Field(default_factory=list)
    # Failure handling (issue #7): the adapter decides retries and onError at run time.
    retry: RetrySettings | None = None
    on_error: OnErrorSettings | None = None
    error_output: bool = False  # an `error` output feeds error edges / the goto node
    # Unresolved references (issue 16): where each `{{reference}}` is written (reference text
    # -> config field, as the builder spells it), and the workflow's setting (None: platform's).
    references: dict[str, str] = Field(default_factory=dict)
    unresolved_references: Literal["warn", "error"] | None = None

    def typed_config(self) -> NodeConfig:
        return config_model(self.type).model_validate(self.config)


InlineRegion.model_rebuild()
