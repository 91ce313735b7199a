"""The compiler: workflow JSON → a Dagster job. Pure: no I/O, same input → same job.

One op per node (an alias of its type's op definition, with the node's plan as op config),
edges as dependencies, branch handles as optional outputs (an untaken branch is SKIPPED),
OR-joins as fan-in inputs (a join runs with the branches that ran), loops as DynamicOut →
map → collect, and a RetryPolicy per op from the node's retry settings.
"""

import sys
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import FrameType
from typing import Any

from dagster import (
    DependencyDefinition,
    ExecutorDefinition,
    GraphDefinition,
    JobDefinition,
    MultiDependencyDefinition,
    NodeInvocation,
)

from flowmaestro_dagster.adapter.ops import (
    ERROR,
    INPUTS_RESOURCE,
    ITEMS,
    RESULT,
    STANDARD_HANDLES,
    UPSTREAM,
    OpShape,
    collect_input,
    join_input,
    node_op,
)
from flowmaestro_dagster.adapter.retries import effective_retry, retry_defaults, retry_policy
from flowmaestro_dagster.compile.naming import job_name_for, label_slug, labelled_aliases, sanitize
from flowmaestro_dagster.compile.validation import reference_fields, validate_spec

# Public API has no data form of collect(); this is the class `.collect()` builds.
from flowmaestro_dagster.dagster_internals import DynamicCollectDependencyDefinition
from flowmaestro_dagster.errors import InvalidWorkflowError
from flowmaestro_dagster.nodes.io_nodes import _MISSING, input_value
from flowmaestro_dagster.runtime.plan import (
    CollectPlan,
    InlineEdge,
    InlineRegion,
    LoopPlan,
    LoopSummary,
    NodePlan,
)
from flowmaestro_dagster.spec.configs import BatchConfig, InputConfig, LoopConfig, QueueConfigConfig
from flowmaestro_dagster.spec.graph import LoopRegion, WorkflowGraph, branch_key, is_error_edge
from flowmaestro_dagster.spec.models import EdgeSpec, NodeSpec, WorkflowSpec
from flowmaestro_dagster.spec.node_types import BRANCH_TYPES, REGION_TYPES
from flowmaestro_dagster.spec.parse import _fallback_label, parse_workflow
from flowmaestro_dagster.spec.problems import Problem, has_errors
from flowmaestro_dagster.tags import CONCURRENCY_KEY_TAG, PRIORITY_TAG, QUEUE_TAG, RUN_ON_TAG

TAG_PREFIX = "flowmaestro"
_RECURSION_LOCK = threading.Lock()
_RECURSION_MARGIN = 200  # frames GraphDefinition's own calls take around the walk


@dataclass(frozen=True)
class QueueSettings:
    """What a queueConfig node asks of the execution when it starts (None: not set).

    `concurrency_key` may hold `{{references}}` to the execution's inputs: the API renders it.
    """

    node_id: str
    priority: int | None = None
    queue: str | None = None
    concurrency_key: str | None = None


@dataclass(frozen=True)
class CompiledWorkflow:
    spec: WorkflowSpec
    job: JobDefinition
    aliases: dict[str, str]  # node id -> op alias (step key)
    warnings: list[Problem] = field(default_factory=list)
    queue_settings: QueueSettings | None = None  # from the workflow's queueConfig node

    @property
    def job_name(self) -> str:
        return self.job.name

    @property
    def node_ids(self) -> dict[str, str]:
        """Op alias -> node id."""
        return {alias: node_id for node_id, alias in self.aliases.items()}


def queue_job_tags(settings: QueueSettings) -> dict[str, str]:
    """Job tags from a queueConfig node; a key with references is left to the API."""
    tags: dict[str, str] = {}
    if settings.priority is not None:
        tags[PRIORITY_TAG] = str(settings.priority)
    if settings.queue:
        tags[QUEUE_TAG] = settings.queue
    key = settings.concurrency_key
    if key and "{{" not in key and "${" not in key:
        tags[CONCURRENCY_KEY_TAG] = key
    return tags


def compile_workflow(
    definition: Any,
    *,
    job_name: str | None = None,
    resource_defs: Mapping[str, Any] | None = None,
    executor_def: ExecutorDefinition | None = None,
    tags: Mapping[str, str] | None = None,
    op_tags: Mapping[str, str] | None = None,
) -> CompiledWorkflow:
    """Compile a definition (JSON text, data or spec) into a Dagster job.

    `tags` become job (run) tags; `op_tags` are added to every op invocation (e.g. a pool).
    """
    spec, warnings = _spec_and_warnings(definition)
    return _Compiler(spec).build(
        job_name=job_name or job_name_for(spec.name),
        resource_defs=dict(resource_defs or {}),
        executor_def=executor_def,
        tags=dict(tags or {}),
        op_tags=dict(op_tags or {}),
        warnings=warnings,
    )


def queue_settings_of(spec: WorkflowSpec) -> QueueSettings | None:
    """The (single: validation rejects a second) queueConfig node's settings."""
    for node_id, node in spec.nodes.items():
        config = node.config
        if isinstance(config, QueueConfigConfig):
            return QueueSettings(
                node_id=node_id,
                priority=config.priority,
                queue=config.queue,
                concurrency_key=config.concurrency_key,
            )
    return None


def load_spec(definition: Any) -> WorkflowSpec:
    """Parse and validate; raises `InvalidWorkflowError` listing every problem."""
    return _spec_and_warnings(definition)[0]


def _spec_and_warnings(definition: Any) -> tuple[WorkflowSpec, list[Problem]]:
    if isinstance(definition, WorkflowSpec):
        spec: WorkflowSpec | None = definition
        problems: list[Problem] = []
    else:
        spec, problems = parse_workflow(definition)
    if spec is not None:
        problems = problems + validate_spec(spec)
    if spec is None or has_errors(problems):
        raise InvalidWorkflowError(problems)
    return spec, problems


class _Compiler:
    def __init__(self, spec: WorkflowSpec) -> None:
        self.spec = spec
        self.graph = WorkflowGraph(spec)
        self.order = self.graph.topological_order()
        self.rank = {node_id: index for index, node_id in enumerate(self.order)}
        self.regions = self.graph.loop_regions(self.order)
        self.owner: dict[str, str] = {}  # node inside an inline loop -> that (outermost) loop
        for loop_id in self.order:
            region = self.regions.get(loop_id)
            if region is not None and region.mode == "inline" and loop_id not in self.owner:
                for member in region.body:
                    self.owner.setdefault(member, loop_id)
        self.mapped_by: dict[str, LoopRegion] = {}  # node in a dynamic body -> its loop
        for region in self.regions.values():
            if region.mode == "dynamic" and region.loop_id not in self.owner:
                for member in region.body:
                    if member not in self.owner:
                        self.mapped_by[member] = region
        self.compiled = [n for n in self.order if n not in self.owner]
        self.aliases = labelled_aliases((n, self._own_label(n)) for n in self.compiled)
        self.handles = {n: self._handle_outputs(n) for n in self.order}
        self.retry_keys = retry_defaults(spec, self.graph)  # from retryConfig nodes
        # Ops with an `error` output: sources of error edges / gotos (an inline loop stands in
        # for its inner nodes: their failure fails the loop op).
        self.error_sources: set[str] = set()
        for node_id in self.order:
            for edge in self.graph.outgoing[node_id]:
                source = self.owner.get(node_id, node_id)
                if is_error_edge(edge) and self.owner.get(edge.target) != source:
                    self.error_sources.add(source)

    # -- per node facts ------------------------------------------------------------------------

    def _own_label(self, node_id: str) -> str | None:
        """The label the author gave the node, or None when it only repeats its id or type."""
        node = self.spec.nodes[node_id]
        generic = {
            label_slug(node.type),
            label_slug(node.source_type),
            label_slug(_fallback_label(node.type, node.original_config)),
        }
        return None if label_slug(node.label) in generic else node.label

    def _branch_key(self, source: str, handle: str) -> str:
        return branch_key(self.spec, source, handle) or f"unmatched:{handle}"

    def _handle_outputs(self, node_id: str) -> dict[str, str]:
        """Branch output name -> branch key: one optional output per distinct branch."""
        node = self.spec.nodes[node_id]
        if node.type not in BRANCH_TYPES:
            return {}
        standard = STANDARD_HANDLES.get(node.type, ())
        outputs: dict[str, str] = {name: name for name in standard}
        taken = set(outputs) | {RESULT, ITEMS, UPSTREAM, ERROR}
        for edge in self.graph.outgoing[node_id]:
            if edge.handle is None or is_error_edge(edge):
                continue
            key = self._branch_key(node_id, edge.handle)
            if key in outputs.values():
                continue
            name = base = sanitize(edge.handle.lower(), reserved=(RESULT, ITEMS, UPSTREAM, ERROR))
            counter = 2
            while name in taken:
                name = f"{base}_{counter}"
                counter += 1
            outputs[name] = key
            taken.add(name)
        return outputs

    def _edge_output(self, edge: EdgeSpec) -> str:
        """Which output of `edge.source` the edge leaves from."""
        source = edge.source
        if is_error_edge(edge):
            return ERROR
        region = self.regions.get(source)
        if region is not None and region.mode == "dynamic" and region.body:
            return ITEMS if edge.target in region.body else RESULT
        if edge.handle is not None and self.handles[source]:
            key = self._branch_key(source, edge.handle)
            for name, candidate in self.handles[source].items():
                if candidate == key:
                    return name
        return RESULT

    def _plan(self, node_id: str, *, in_body: bool) -> NodePlan:
        node = self.spec.nodes[node_id]
        return NodePlan(
            node_id=node_id,
            type=node.type,
            label=node.label,
            rank=self.rank[node_id],
            config=node.config.model_dump(mode="json"),
            branches=self.handles[node_id] if node_id in self.aliases else {},
            in_body=in_body,
            loop=self._loop_plan(node) if node.type in REGION_TYPES else None,
            retry=effective_retry(node, self.retry_keys.get(node_id)),
            on_error=node.on_error,
            error_output=node_id in self.error_sources,
            references=reference_fields(node),
            unresolved_references=self.spec.settings.unresolved_references,
        )

    def _loop_plan(self, node: NodeSpec) -> LoopPlan:
        config = node.config
        assert isinstance(config, LoopConfig | BatchConfig)
        region = self.regions[node.id]
        common = {
            "item_variable": config.item_variable,
            "index_variable": config.index_variable,
            "output_variable": config.output_variable,
        }
        if region.mode == "inline":
            return LoopPlan(mode="inline", inline=self._inline_region(region), **common)
        return LoopPlan(mode="dynamic" if region.body else "empty", **common)

    def _owners_within(self, body: tuple[str, ...]) -> dict[str, str]:
        """Nodes of `body` that belong to an inline loop inside it -> that (outermost) loop."""
        owned: dict[str, str] = {}
        for member in body:
            region = self.regions.get(member)
            if region is not None and region.mode == "inline" and member not in owned:
                for inner in region.body:
                    owned.setdefault(inner, member)
        return owned

    def _inline_region(self, region: LoopRegion) -> InlineRegion:
        owned = self._owners_within(region.body)
        members = [m for m in region.body if m not in owned]
        member_set = set(members)
        edges: list[InlineEdge] = []
        for target in members:
            for edge in self.graph.incoming[target]:
                source = owned.get(edge.source, edge.source)
                if source not in member_set and source != region.loop_id:
                    continue
                branch = None
                if is_error_edge(edge):
                    # Inside an inline body a node's failure fails the loop op: never taken.
                    branch = ERROR
                elif source == edge.source and edge.handle is not None and self.handles[source]:
                    branch = self._branch_key(source, edge.handle)
                inline_edge = InlineEdge(source=source, target=target, branch=branch)
                if inline_edge not in edges:
                    edges.append(inline_edge)
        wanted = [*region.sinks, *(n for feed in region.feeds.values() for n in feed)]
        result_nodes = list(dict.fromkeys(owned.get(n, n) for n in wanted))
        return InlineRegion(
            nodes=[self._plan(n, in_body=True) for n in members],
            edges=edges,
            result_nodes=[n for n in result_nodes if n in member_set],
        )

    # -- the job -------------------------------------------------------------------------------

    def build(
        self,
        *,
        job_name: str,
        resource_defs: dict[str, Any],
        executor_def: ExecutorDefinition | None,
        tags: dict[str, str],
        op_tags: dict[str, str],
        warnings: list[Problem],
    ) -> CompiledWorkflow:
        dependencies: dict[NodeInvocation, dict[str, Any]] = {}
        op_config: dict[str, Any] = {}
        node_defs = {}
        for node_id in self.compiled:
            node = self.spec.nodes[node_id]
            alias = self.aliases[node_id]
            deps, plan, shape = self._wire(node_id)
            definition = node_op(shape)
            node_defs[definition.name] = definition
            invocation = NodeInvocation(
                name=definition.name,
                alias=alias,
                tags={
                    **op_tags,
                    f"{TAG_PREFIX}/node_id": node_id,
                    f"{TAG_PREFIX}/label": node.label,
                    f"{TAG_PREFIX}/type": node.source_type,
                    **self._run_on_tag(node),
                },
                retry_policy=retry_policy(effective_retry(node, self.retry_keys.get(node_id))),
            )
            dependencies[invocation] = deps
            op_config[alias] = {"config": plan.model_dump(mode="json")}
        _make_room_for(len(dependencies))
        graph = GraphDefinition(
            name=job_name,
            node_defs=list(node_defs.values()),
            dependencies=dependencies,
            description=self.spec.description or self.spec.name,
        )
        queue_settings = queue_settings_of(self.spec)
        job_tags = {f"{TAG_PREFIX}/workflow": self.spec.name[:255], **tags}
        if queue_settings is not None:  # runs launched outside the API (the UI) get them too
            job_tags.update(queue_job_tags(queue_settings))
        if self.spec.settings.timeout_ms:
            job_tags.setdefault("dagster/max_runtime", str(self.spec.settings.timeout_ms / 1000))
        run_config = {
            "ops": op_config,
            "resources": {INPUTS_RESOURCE: {"config": {"inputs": self._default_inputs()}}},
        }
        job = graph.to_job(
            name=job_name,
            resource_defs=resource_defs,
            executor_def=executor_def,
            config=run_config,
            tags=job_tags,
            metadata={"flowmaestro/nodes": {a: n for n, a in self.aliases.items()}},
        )
        return CompiledWorkflow(self.spec, job, dict(self.aliases), warnings, queue_settings)

    def _run_on_tag(self, node: NodeSpec) -> dict[str, str]:
        """Where the node's step runs, when the node or the workflow says (else the executor
        decides by node type: docs/deployment.md)."""
        run_on = node.run_on or self.spec.settings.run_on
        return {RUN_ON_TAG: run_on} if run_on else {}

    def _default_inputs(self) -> dict[str, Any]:
        defaults: dict[str, Any] = {}
        for node in self.spec.nodes.values():
            if (
                isinstance(node.config, InputConfig)
                and node.config.has_default
                and node.config.name
            ):
                value = input_value(node.config, {})
                if value is not _MISSING:
                    defaults[node.config.name] = value
        return defaults

    def _wire(self, node_id: str) -> tuple[dict[str, Any], NodePlan, OpShape]:
        node = self.spec.nodes[node_id]
        region = self.mapped_by.get(node_id)
        in_body = region is not None
        sources: list[tuple[str, str]] = []  # (alias, output) feeding the node
        collects: list[CollectPlan] = []
        collect_deps: list[DynamicCollectDependencyDefinition] = []
        summaries: list[LoopSummary] = []
        exit_of = [
            r
            for r in self.regions.values()
            if r.mode == "dynamic" and r.body and node_id in r.exits and r.loop_id not in self.owner
        ]
        for edge in self.graph.incoming[node_id]:
            source = self.owner.get(edge.source, edge.source)
            if any(source in r.body for r in exit_of):
                continue  # collected below
            if source == edge.source or is_error_edge(edge):
                output = self._edge_output(edge)
            else:
                output = RESULT
            pair = (self.aliases[source], output)
            if pair not in sources:
                sources.append(pair)
        for loop_region in exit_of:
            loop_alias = self.aliases[loop_region.loop_id]
            if (loop_alias, RESULT) not in sources:
                sources.append((loop_alias, RESULT))
            feeds = dict.fromkeys(self.owner.get(f, f) for f in loop_region.feeds.get(node_id, ()))
            for feed in feeds:
                feed_edge = next(
                    (e for e in self.graph.incoming[node_id] if e.source == feed), None
                )
                output = self._edge_output(feed_edge) if feed_edge is not None else RESULT
                name = collect_input(len(collects))
                collects.append(CollectPlan(input=name, loop_id=loop_region.loop_id, source=feed))
                collect_deps.append(DynamicCollectDependencyDefinition(self.aliases[feed], output))
            loop_config = self.spec.nodes[loop_region.loop_id].config
            assert isinstance(loop_config, LoopConfig)
            summaries.append(
                LoopSummary(
                    loop_id=loop_region.loop_id,
                    loop_rank=self.rank[loop_region.loop_id],
                    body=list(loop_region.body),
                    body_ranks={b: self.rank[b] for b in loop_region.body},
                    item_variable=loop_config.item_variable,
                    index_variable=loop_config.index_variable,
                    output_variable=loop_config.output_variable,
                )
            )
        deps: dict[str, Any] = {}
        joins = 0
        if in_body:
            # Dagster forbids fan-in below a dynamic output: one input per upstream node.
            for index, (alias, output) in enumerate(sources):
                name = UPSTREAM if index == 0 else join_input(index)
                deps[name] = DependencyDefinition(alias, output)
            joins = max(len(sources) - 1, 0)
        elif sources:
            deps[UPSTREAM] = MultiDependencyDefinition(
                [DependencyDefinition(alias, output) for alias, output in sources]
            )
        for index, dep in enumerate(collect_deps):
            deps[collect_input(index)] = dep
        plan = self._plan(node_id, in_body=in_body).model_copy(
            update={"collects": collects, "loops": summaries}
        )
        loop_region_here = self.regions.get(node_id)
        dynamic = bool(
            loop_region_here is not None
            and loop_region_here.mode == "dynamic"
            and loop_region_here.body
        )
        shape = OpShape(
            node_type=node.type,
            joins=joins,
            collects=len(collects),
            handles=tuple(self.handles[node_id]),
            dynamic=dynamic,
            error=node_id in self.error_sources,
        )
        return deps, plan, shape


def _make_room_for(ops: int) -> None:
    """Let Dagster's `GraphDefinition` walk a long chain of `ops`.

    It finds its topological order with a recursive walk (`create_adjacency_lists`): one
    Python frame per op up a chain, starting from whichever op a set yields first. A chain
    of about a thousand ops therefore passed Python's default limit of 1,000 frames and
    compile failed with RecursionError inside Dagster. The limit becomes what this graph can
    need (the ops are at most FLOWMAESTRO_MAX_NODES: validation refuses more); it is never
    lowered again, since another thread may be compiling a larger graph at the same time.
    """
    depth = 0
    frame: FrameType | None = sys._getframe()
    while frame is not None:
        depth += 1
        frame = frame.f_back
    needed = depth + ops + _RECURSION_MARGIN
    with _RECURSION_LOCK:
        if sys.getrecursionlimit() < needed:
            sys.setrecursionlimit(needed)
