"""The executor interface: plain Python, no Dagster.

An executor takes a `NodeContext` (the node's canonical config, the execution state upstream of
it, and the platform services) and returns a `NodeResult`. `flowmaestro_dagster.adapter.ops` turns
executors into ops; tests call them as functions.
"""

import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from functools import cached_property
from typing import TYPE_CHECKING, Any, TypeVar

from flowmaestro_dagster.errors import NodeConfigurationError, NodeExecutionError
from flowmaestro_dagster.lang import templates
from flowmaestro_dagster.lang.expressions import Budget, Limits
from flowmaestro_dagster.lang.state import ExecutionState
from flowmaestro_dagster.settings import Settings, get_settings
from flowmaestro_dagster.spec.configs import NodeConfig

if TYPE_CHECKING:
    from flowmaestro_dagster.spec.models import NodeSpec
    from flowmaestro_dagster.spec.problems import Problem

ConfigT = TypeVar("ConfigT", bound=NodeConfig)
_log = logging.getLogger("flowmaestro.executors")


def settings_of(services: Mapping[str, Any]) -> Settings:
    """The `settings` service (a test's, an embedding's), else the environment's."""
    settings = services.get("settings")
    return settings if isinstance(settings, Settings) else get_settings()


@dataclass(frozen=True)
class NodeContext:
    node_id: str
    node_type: str
    label: str
    config: NodeConfig
    state: ExecutionState
    rank: int = 0
    upstream: tuple[str, ...] = ()
    attempt: int = 1
    services: Mapping[str, Any] = field(default_factory=dict)
    run_id: str | None = None
    execution_id: str | None = None
    run_tags: Mapping[str, str] = field(default_factory=dict)
    step_key: str | None = None
    log: logging.Logger = _log

    @property
    def iteration(self) -> tuple[int, ...]:
        """Loop iteration indices (outermost first); () outside loops."""
        return self.state.iteration

    @property
    def settings(self) -> Settings:
        """The settings the run was given (the services resource), else the environment's."""
        return settings_of(self.services)

    def typed_config(self, model: type[ConfigT]) -> ConfigT:
        if not isinstance(self.config, model):
            raise NodeConfigurationError(
                f"expected {model.__name__}, got {type(self.config).__name__}",
                node_id=self.node_id,
                node_type=self.node_type,
            )
        return self.config

    @property
    def limits(self) -> Limits:
        """FLOWMAESTRO_EXPRESSION_MAX_STEPS / _MAX_SIZE, from the run's settings."""
        return Limits.from_settings(self.settings)

    @cached_property
    def budget(self) -> Budget:
        """One budget for every template and expression this node execution evaluates: many
        small references cannot add up to more than one expression may do."""
        return Budget(self.limits)

    def render(self, value: Any) -> Any:
        """Resolve `{{...}}` references in a config value against the upstream state."""
        return templates.render(value, self.state, budget=self.budget)

    def render_text(self, value: Any) -> str:
        return templates.render_string(value, self.state, budget=self.budget)

    def upstream_value(self) -> Any:
        """The output of the direct predecessor(s): one value, or an object keyed by node id."""
        values = {n: self.state.outputs[n] for n in self.upstream if n in self.state.outputs}
        if len(values) == 1:
            return next(iter(values.values()))
        return values or None

    def error(
        self, message: str, cls: type[NodeExecutionError] = NodeExecutionError, **kw: Any
    ) -> NodeExecutionError:
        return cls(message, node_id=self.node_id, node_type=self.node_type, **kw)


@dataclass(frozen=True)
class MemoryOp:
    operation: str  # store | append | delete
    key: str
    value: Any = None


@dataclass(frozen=True)
class Park:
    """A waitpoint that is not resolved yet: the node yields nothing and the run ends; a
    sensor re-executes the node (and what follows it) once the waitpoint resolves."""

    kind: str  # datetime | approval | callback | child
    waitpoint_id: str
    detail: str = ""
    due_at: datetime | None = None  # a datetime wait's due time (operators see it as a tag)


@dataclass(frozen=True)
class NodeResult:
    """What a node produced: its output, and for branch / loop nodes what to do next."""

    output: Any
    branches: frozenset[str] | None = None
    items: Sequence[Any] | None = None
    memory: Sequence[MemoryOp] = ()
    parked: Park | None = None


def wrap_output(value: Any, output_variable: str | None, default_key: str = "result") -> Any:
    """A node's output: under `outputVariable` when set, else the value (objects) or `result`."""
    if output_variable:
        return {output_variable: value}
    if isinstance(value, dict):
        return value
    return {default_key: value}


Executor = Callable[[NodeContext], NodeResult]
ConfigCheck = Callable[["NodeSpec"], Iterable["Problem"]]
"""A node type's deploy-time checks (compile/validation.py calls them): what can be known
before the node runs (an unknown chart type) is a problem naming the node and field."""
