"""`validate(definition)`: every problem a builder can show next to a node or field.

Errors stop a definition from becoming a job; warnings are advice (a branch handle that
matches no case, a reference nothing upstream provides, a connector this deployment lacks).
A workflow over FLOWMAESTRO_MAX_NODES / _MAX_EDGES gets that one problem and nothing else is
checked: the checks below, and Dagster's job building, grow faster than the graph.
"""

import itertools
import warnings
import zoneinfo
from collections.abc import Iterator
from typing import Any

import dagster as dg

from flowmaestro_dagster.errors import ExpressionError, PatternError
from flowmaestro_dagster.lang import expressions
from flowmaestro_dagster.lang.patterns import pattern_problem, wildcard
from flowmaestro_dagster.lang.state import INPUT_ALIAS
from flowmaestro_dagster.lang.templates import find_references
from flowmaestro_dagster.nodes import CONFIG_CHECKS
from flowmaestro_dagster.nodes.connectors import connector_problems
from flowmaestro_dagster.nodes.transform import jsonata_pattern_problem, looks_like_js
from flowmaestro_dagster.settings import get_settings
from flowmaestro_dagster.spec.configs import (
    APPROVAL_EXPIRY_ACTIONS,
    MISSED_TICK_POLICIES,
    OVERLAP_POLICIES,
    TRANSFORM_OPERATIONS,
    BatchConfig,
    ConditionalConfig,
    HumanReviewConfig,
    InputConfig,
    LoopConfig,
    QueueConfigConfig,
    RetryConfigConfig,
    SharedMemoryConfig,
    SubworkflowConfig,
    SwitchConfig,
    TransformConfig,
    TriggerConfig,
    WaitConfig,
    expiry_action,
    notify_targets,
)
from flowmaestro_dagster.spec.durations import wait_problem
from flowmaestro_dagster.spec.graph import (
    LOOP_BODY_HANDLES,
    WorkflowGraph,
    branch_key,
    is_error_edge,
)
from flowmaestro_dagster.spec.models import NodeSpec, WorkflowSpec
from flowmaestro_dagster.spec.node_types import (
    BRANCH_TYPES,
    REGION_TYPES,
    WAITPOINT_TYPES,
    resolve_type,
)
from flowmaestro_dagster.spec.parse import parse_workflow
from flowmaestro_dagster.spec.policies import parse_retry_defaults
from flowmaestro_dagster.spec.problems import Problem, error, warning
from flowmaestro_dagster.spec.providers import VERIFIED_HOOK_PROVIDERS, undeliverable_event

# Top-level keys a node type's output has when it has no outputVariable.
STANDARD_OUTPUT_KEYS: dict[str, frozenset[str]] = {
    "llm": frozenset({"text", "usage", "model", "provider"}),
    "router": frozenset({"route", "reason", "text", "usage", "model", "provider"}),
    "http": frozenset({"status", "headers", "data", "responseTime"}),
    "code": frozenset({"output", "stdout", "stderr", "metadata"}),
    "conditional": frozenset({"result", "branch"}),
    "switch": frozenset({"value", "matched", "branch"}),
    "loop": frozenset({"items", "count", "results"}),
    "shared-memory": frozenset({"key", "value", "operation", "results"}),
    "transform": frozenset({"result"}),
    "humanReview": frozenset(
        {"approved", "decision", "response", "comment", "decidedBy", "decidedAt"}
    ),
    "wait": frozenset({"waited", "resumedAt"}),
    "batch": frozenset({"results", "errors", "succeeded", "failed", "skipped", "total"}),
    "retryConfig": frozenset({"retry"}),
    "queueConfig": frozenset({"priority", "queue", "concurrencyKey"}),
    "checkpoint": frozenset({"checkpoint", "saved", "savedAt", "expiresAt", "paused"}),
}
# Outputs whose keys are only known at run time: references below them are not flagged.
_OPEN_OUTPUT_TYPES = frozenset({"trigger", "code", "integration", "database", "http"})
_NOT_SCANNED_FIELDS = frozenset({"code", "script"})
# Fields a node type shows but never renders (an input's help text may say `{{placeholders}}`).
_DISPLAY_FIELDS: dict[str, frozenset[str]] = {"input": frozenset({"description"})}
_PATH_FIELDS = {
    "loop": ("items", "arrayPath", "collection", "arrayVariable"),
    "batch": ("items", "arrayPath", "collection", "array", "arrayVariable"),
}
_MAX_REFERENCE_WARNINGS = 200
MAX_LOOP_NESTING = 16


def validate(
    definition: Any, *, max_nodes: int | None = None, max_edges: int | None = None
) -> list[Problem]:
    """All problems of a definition (JSON text, bytes, parsed data, or a `WorkflowSpec`)."""
    if isinstance(definition, WorkflowSpec):
        spec: WorkflowSpec | None = definition
        problems: list[Problem] = []
    else:
        spec, problems = parse_workflow(definition)
    if spec is None:
        return problems
    return problems + validate_spec(spec, max_nodes=max_nodes, max_edges=max_edges)


def validate_spec(
    spec: WorkflowSpec, *, max_nodes: int | None = None, max_edges: int | None = None
) -> list[Problem]:
    """Every problem of a parsed definition; the limits default to FLOWMAESTRO_MAX_NODES and
    FLOWMAESTRO_MAX_EDGES."""
    problems: list[Problem] = []
    if not spec.nodes:
        problems.append(error("empty_workflow", "the workflow has no nodes", path="$.nodes"))
        return problems
    too_large = list(_size_problems(spec, max_nodes, max_edges))
    if too_large:
        return too_large
    for edge in spec.edges:
        for end in ("source", "target"):
            node_id = getattr(edge, end)
            if node_id not in spec.nodes:
                problems.append(
                    error(
                        "edge_missing_node",
                        f"edge '{edge.id}' {end} '{node_id}' is not a node of this workflow",
                        field=end,
                        path=f"edges[{edge.id}].{end}",
                    )
                )
    if spec.entry_point is not None and spec.entry_point not in spec.nodes:
        problems.append(
            warning(
                "entry_point_missing",
                f"entryPoint '{spec.entry_point}' is not a node; start nodes are found from edges",
                field="entryPoint",
            )
        )
    graph = WorkflowGraph(spec)
    cycle = WorkflowGraph(spec, error_paths=False).find_cycle()
    if cycle is not None:
        path = " → ".join(cycle)
        problems.append(
            error(
                "cycle",
                f"the workflow has a cycle: {path}; loops must use a loop node",
                node_id=cycle[0],
                path="$.edges",
            )
        )
    else:
        cycle = graph.find_cycle()  # only an error edge or a goto can close it now
        if cycle is not None:
            problems.append(_error_path_cycle(graph, cycle))
    for node in spec.nodes.values():
        problems.extend(_node_config_problems(node))
        problems.extend(_handle_problems(spec, graph, node))
        problems.extend(_on_error_problems(spec, node))
    problems.extend(_settings_node_problems(spec))
    if cycle is None:
        problems.extend(_batch_body_problems(spec, graph))
        problems.extend(_nesting_problems(graph))
        problems.extend(_reference_problems(spec, graph))
    problems += connector_problems(spec)
    return problems


# -- node config ---------------------------------------------------------------------------------


def _missing(node: NodeSpec, field: str, message: str) -> Problem:
    return error("missing_config", message, node_id=node.id, field=field)


def _sets_nothing(node: NodeSpec, what: str, keys: str, field: str) -> Problem:
    message = f"the {what} configuration sets nothing ({keys})"
    return warning("empty_settings", message, node_id=node.id, field=field)


def _node_config_problems(node: NodeSpec) -> Iterator[Problem]:
    config = node.config
    if resolve_type(node.source_type) is None:
        return
    if isinstance(config, TransformConfig):
        yield from _transform_problems(node, config)
    elif isinstance(config, ConditionalConfig):
        if config.mode == "expression":
            yield from _expression_problems(node, config.expression, _field(node, "condition"))
        elif config.left_value is None:
            yield _missing(
                node,
                "condition",
                "a conditional needs a condition, an expression, or leftValue/operator/rightValue",
            )
    elif isinstance(config, SwitchConfig):
        if config.expression in (None, ""):
            yield _missing(node, "expression", "a switch needs an expression to match")
        if not config.cases:
            yield warning(
                "no_cases",
                "the switch has no cases: only its default branch can run",
                node_id=node.id,
                field="cases",
            )
        yield from _wildcard_problems(node, config)
    elif isinstance(config, HumanReviewConfig):
        rules = config.validation if isinstance(config.validation, dict) else {}
        if rules.get("pattern") is not None and (why := pattern_problem(rules["pattern"])):
            yield _invalid_pattern(node, "validation.pattern", why)
        yield from _review_problems(node, config)
    elif isinstance(config, LoopConfig):
        if config.loop_type == "forEach" and config.items in (None, ""):
            yield _missing(node, "items", "a forEach loop needs the list to iterate (arrayPath)")
        elif config.loop_type == "count" and config.count is None:
            yield _missing(node, "count", "a count loop needs count")
        elif config.loop_type == "while":
            if not config.condition:
                yield _missing(node, "condition", "a while loop needs a condition")
            else:
                yield from _expression_problems(node, config.condition, "condition")
    elif isinstance(config, BatchConfig):
        yield from _batch_problems(node, config)
    elif isinstance(config, RetryConfigConfig):
        keys, problems = parse_retry_defaults(
            config.retry, node_id=node.id, field=config.retry_field
        )
        yield from problems
        if not keys and not problems:
            field = config.retry_field or "maxAttempts"
            yield _sets_nothing(node, "retry", "maxAttempts, backoffStrategy, ...", field)
    elif isinstance(config, QueueConfigConfig) and not (
        config.priority is not None or config.queue or config.concurrency_key
    ):
        if not any(k in node.original_config for k in ("priority", "queue", "concurrencyKey")):
            yield _sets_nothing(node, "queue", "priority, queue, concurrencyKey", "priority")
    elif isinstance(config, TriggerConfig):
        yield from _trigger_problems(node, config)
    elif isinstance(config, SubworkflowConfig) and not config.workflow_id:
        yield _missing(node, "workflowId", "a subworkflow needs workflowId (the child workflow)")
    elif isinstance(config, SharedMemoryConfig) and config.operation != "search" and not config.key:
        yield _missing(node, "key", f"shared-memory {config.operation} needs a key")
    elif isinstance(config, WaitConfig):
        yield from _wait_problems(node, config)
    if (check := CONFIG_CHECKS.get(node.type)) is not None:
        yield from check(node)


def _size_problems(
    spec: WorkflowSpec, max_nodes: int | None, max_edges: int | None
) -> Iterator[Problem]:
    """More nodes or edges than a deployment takes: every later step costs more than linear
    time (Dagster's topological sort, execution plans), and a long chain nests deep calls."""
    if max_nodes is None or max_edges is None:
        settings = get_settings()
        max_nodes = settings.max_nodes if max_nodes is None else max_nodes
        max_edges = settings.max_edges if max_edges is None else max_edges
    if len(spec.nodes) > max_nodes:
        yield error(
            "too_many_nodes",
            f"the workflow has {len(spec.nodes)} nodes; at most {max_nodes} are allowed "
            "(FLOWMAESTRO_MAX_NODES)",
            path="$.nodes",
        )
    if len(spec.edges) > max_edges:
        yield error(
            "too_many_edges",
            f"the workflow has {len(spec.edges)} edges; at most {max_edges} are allowed "
            "(FLOWMAESTRO_MAX_EDGES)",
            path="$.edges",
        )


def _wait_problems(node: NodeSpec, config: WaitConfig) -> Iterator[Problem]:
    """A literal duration that cannot run: not a number, NaN, negative or beyond a year (a
    `{{reference}}` is checked when the node runs)."""
    value = config.duration
    if config.wait_type != "duration" or value is None:
        return
    if isinstance(value, str) and ("{{" in value or "${" in value):
        return
    why = wait_problem(value, config.duration_unit)
    if why is not None:
        yield error(
            "invalid_duration",
            f"wait duration {why}",
            node_id=node.id,
            field=_spelled(node, "duration", "durationValue"),
        )


def _review_problems(node: NodeSpec, config: HumanReviewConfig) -> Iterator[Problem]:
    """An expiry action or notify target the sensor could not carry out, refused at deploy."""
    if config.on_timeout is not None and expiry_action(config.on_timeout) is None:
        actions = ", ".join(APPROVAL_EXPIRY_ACTIONS)
        message = f"onTimeout {config.on_timeout!r} is not one of {actions}"
        yield error("invalid_config", message, node_id=node.id, field="onTimeout")
    try:
        notify_targets(config.notify)
    except ValueError as exc:
        yield error("invalid_config", str(exc), node_id=node.id, field="notify")


def _invalid_pattern(node: NodeSpec, field: str, why: str) -> Problem:
    """A regular expression RE2 cannot run (lang/patterns.py): refused before it reaches a run
    or the approval page, where it would only fail."""
    return error("invalid_pattern", why, node_id=node.id, field=field)


def _wildcard_problems(node: NodeSpec, config: SwitchConfig) -> Iterator[Problem]:
    for index, case in enumerate(config.cases):
        if "*" in case.value or "?" in case.value:
            try:
                wildcard(case.value)
            except PatternError as exc:
                yield _invalid_pattern(node, f"cases[{index}]", f"wildcard case: {exc}")


def _spelled(node: NodeSpec, *keys: str) -> str:
    """The field as the builder spelled it (the first alias present), for the problem."""
    return next((key for key in keys if key in node.original_config), keys[0])


def invalid_cron(cron: str) -> str | None:
    """Why Dagster's scheduler would refuse `cron` (5 fields, no February 30th), or None.

    Asks Dagster itself: a `ScheduleDefinition` checks its cron string when built."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # out-of-range intervals are advice, not errors
            dg.ScheduleDefinition(name="cron_check", cron_schedule=cron, job_name="cron_check")
    except dg.DagsterInvalidDefinitionError:
        return f"'{cron}' is not a cron schedule Dagster accepts (5 fields: m h dom mon dow)"
    return None


def unknown_timezone(name: str) -> bool:
    try:
        zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        return True
    return False


# Providers whose own webhook signature the hook URL verifies (control/hook_providers.py;
# a test keeps the two in step: the compiler may not import the control layer).


def _trigger_problems(node: NodeSpec, config: TriggerConfig) -> Iterator[Problem]:
    """A schedule trigger becomes a Dagster schedule on deploy: its cron string, timezone and
    overlap policy must be ones that schedule can take (docs/triggers.md). A webhook naming a
    provider whose signature is not verified is told the generic scheme applies, and one whose
    `event` its provider never delivers is told so."""
    if config.kind is None:
        yield warning(
            "unknown_trigger_type",
            f"trigger type '{config.trigger_type}' starts nothing here (schedule, cron, "
            "webhook, manual, or a provider with an event): the workflow starts only through "
            "the API",
            node_id=node.id,
            field=_spelled(node, "triggerType", "type"),
        )
        return
    if config.kind != "schedule":
        if config.kind == "webhook":
            yield from _hook_provider_problems(node, config)
        return
    cron_field = _spelled(node, "schedule", "cron", "cronExpression")
    if not config.schedule or not config.schedule.strip():
        yield _missing(node, cron_field, "a schedule trigger needs a cron schedule, e.g. 0 9 * * 1")
    elif (reason := invalid_cron(config.schedule.strip())) is not None:
        yield error("invalid_schedule", reason, node_id=node.id, field=cron_field)
    if config.timezone is not None and unknown_timezone(config.timezone):
        yield error(
            "invalid_timezone",
            f"unknown timezone '{config.timezone}' (an IANA name such as Europe/Paris)",
            node_id=node.id,
            field=_spelled(node, "timezone", "timeZone"),
        )
    if config.overlap is not None and config.overlap not in OVERLAP_POLICIES:
        yield error(
            "invalid_overlap",
            f"overlap '{config.overlap}' is not one of {', '.join(OVERLAP_POLICIES)}",
            node_id=node.id,
            field=_spelled(node, "overlap", "overlapPolicy"),
        )
    if config.missed is not None and config.missed not in MISSED_TICK_POLICIES:
        yield error(
            "invalid_missed_ticks",
            f"missed-tick policy '{config.missed}' is not one of {', '.join(MISSED_TICK_POLICIES)}",
            node_id=node.id,
            field=_spelled(node, "missedTicks", "missed"),
        )


def _hook_provider_problems(node: NodeSpec, config: TriggerConfig) -> Iterator[Problem]:
    """A provider nothing verifies (its `event` then filters only what the sender names in
    `X-FlowMaestro-Event`), or an `event` the verified provider never delivers. Warnings, like
    `unknown_trigger_type`: the builder saves such triggers (the upstream pattern library ships
    a Discord trigger on `message`), and the workflow still runs through the API."""
    provider = (config.provider or "").strip().lower()
    event = (config.event or "").strip()
    if not provider:
        return
    if provider not in VERIFIED_HOOK_PROVIDERS:
        unfiltered = (
            f"; its event '{event}' is not filtered unless the sender names it in "
            f"X-FlowMaestro-Event ({config.provider}'s own deliveries do not: each starts the "
            "workflow)"
            if event
            else ""
        )
        yield warning(
            "unverified_hook_provider",
            f"{config.provider} signatures are not verified: its deliveries must use "
            f"X-FlowMaestro-Signature or a bearer secret{unfiltered} (docs/triggers.md)",
            node_id=node.id,
            field=_spelled(node, "provider", "webhookProvider"),
        )
    elif event and (why := undeliverable_event(provider, event)) is not None:
        yield warning(
            "undeliverable_trigger_event",
            f"{why}: the event filter would ignore every {config.provider} event delivered, "
            "so the trigger never starts the workflow on one (docs/triggers.md)",
            node_id=node.id,
            field="event",
        )


def _batch_problems(node: NodeSpec, config: BatchConfig) -> Iterator[Problem]:
    given = any(k in node.original_config for k in _PATH_FIELDS["batch"])
    if config.items == "" or (config.items is None and not given):
        yield _missing(node, "items", "a batch needs items: an array or a {{reference}}")
    if (
        config.min_success is not None
        and isinstance(config.items, list)
        and config.min_success > len(config.items)
    ):
        yield error(
            "invalid_config",
            f"minSuccess: {config.min_success} is more than the {len(config.items)} item(s)",
            node_id=node.id,
            field="minSuccess",
        )


def _settings_node_problems(spec: WorkflowSpec) -> Iterator[Problem]:
    """One queueConfig per workflow: it applies when the execution starts, wherever it is."""
    queue_nodes = [n for n in spec.nodes.values() if n.type == "queueConfig"]
    for extra in queue_nodes[1:]:
        yield error(
            "duplicate_queue_config",
            f"the workflow already has a queue configuration ('{queue_nodes[0].id}'): keep one",
            node_id=extra.id,
            field="type",
        )


def _batch_body_problems(spec: WorkflowSpec, graph: WorkflowGraph) -> Iterator[Problem]:
    """A batch's body runs inside its op: nothing in it may park the execution."""
    regions = graph.loop_regions(graph.topological_order())
    for region in regions.values():
        if spec.nodes[region.loop_id].type != "batch":
            continue
        if not region.body:
            yield warning(
                "empty_batch",
                "nothing runs per item (no node downstream of the batch before an output or "
                "join): each item's result is the item itself",
                node_id=region.loop_id,
                field="items",
            )
        for member in region.body:
            if spec.nodes[member].type in WAITPOINT_TYPES:
                yield error(
                    "waitpoint_in_batch",
                    f"a {spec.nodes[member].type} node cannot run per item inside batch "
                    f"'{region.loop_id}': put it after the batch",
                    node_id=member,
                    field="type",
                )


def _nesting_problems(graph: WorkflowGraph) -> Iterator[Problem]:
    """Loops inside loops MAX_LOOP_NESTING deep at most: a nested body is planned, stored and
    run by recursion, one level per loop (a chain of 300 while loops inside one another
    crashed compile with RecursionError)."""
    regions = graph.loop_regions(graph.topological_order()).values()
    depth: dict[str, int] = {}
    for region in regions:
        for member in region.body:
            depth[member] = depth.get(member, 0) + 1
    for region in regions:
        if depth.get(region.loop_id, 0) >= MAX_LOOP_NESTING:
            yield error(
                "loops_nested_too_deeply",
                f"this loop is inside {depth[region.loop_id]} other loops: at most "
                f"{MAX_LOOP_NESTING} loops may nest in one another",
                node_id=region.loop_id,
                field="type",
            )
            return


def _field(node: NodeSpec, default: str) -> str:
    for key in ("condition", "expression"):
        if key in node.original_config:
            return key
    return default


def _expression_problems(node: NodeSpec, expression: str | None, field: str) -> Iterator[Problem]:
    if not expression or not expression.strip():
        yield _missing(node, field, "the condition is empty")
        return
    try:
        expressions.parse(expression)
    except ExpressionError as exc:
        yield error(
            "invalid_expression",
            f"cannot parse {field} {expression!r}: {exc}",
            node_id=node.id,
            field=field,
        )


def _transform_problems(node: NodeSpec, config: TransformConfig) -> Iterator[Problem]:
    operation = config.operation
    if operation not in TRANSFORM_OPERATIONS:
        yield warning(
            "unknown_operation",
            f"unknown transform operation '{operation}': the node passes its input through",
            node_id=node.id,
            field="operation",
        )
        return
    if operation == "template" and config.template is None and config.expression is None:
        yield _missing(node, "template", "a template transform needs a template")
    if operation in ("map", "filter", "reduce", "custom") and not config.expression:
        yield _missing(node, "expression", f"a {operation} transform needs an expression")
    elif (
        operation in ("map", "filter", "reduce", "custom")
        and isinstance(config.expression, str)
        and not looks_like_js(config.expression)
        and (why := jsonata_pattern_problem(config.expression.strip()))
    ):
        yield _invalid_pattern(node, _spelled(node, "expression", "jsonata"), why)


# -- edges and handles ---------------------------------------------------------------------------


def _handle_problems(spec: WorkflowSpec, graph: WorkflowGraph, node: NodeSpec) -> Iterator[Problem]:
    for edge in graph.outgoing.get(node.id, []):
        handle = edge.handle
        if handle is None or is_error_edge(edge):
            continue
        if node.type in BRANCH_TYPES:
            if branch_key(spec, node.id, handle) is None:
                yield warning(
                    "unknown_branch_handle",
                    f"edge '{edge.id}' leaves on handle '{handle}', which matches no "
                    f"{_choices(node)} of this {node.type}: '{edge.target}' never runs through it",
                    node_id=node.id,
                    field="sourceHandle",
                )
        elif node.type in REGION_TYPES and handle in LOOP_BODY_HANDLES:
            continue
        elif node.type not in REGION_TYPES:
            yield warning(
                "unknown_handle",
                f"edge '{edge.id}' has handle '{handle}'; a {node.type} node has no branches, "
                "so it is treated as a plain edge",
                node_id=node.id,
                field="sourceHandle",
            )


def _choices(node: NodeSpec) -> str:
    if isinstance(node.config, SwitchConfig):
        values = [c.value for c in node.config.cases] + ["default"]
        return "case (" + ", ".join(values) + ")"
    if node.type == "router":
        routes = [r.value for r in getattr(node.config, "routes", [])] + ["default"]
        return "route (" + ", ".join(routes) + ")"
    return "branch (true, false)"


def _on_error_problems(spec: WorkflowSpec, node: NodeSpec) -> Iterator[Problem]:
    on_error = node.on_error
    if on_error is None:
        return
    if on_error.strategy == "fallback" and "fallback_value" not in on_error.model_fields_set:
        yield warning(
            "fallback_without_value",
            "onError fallback has no fallbackValue: the node's value is null when it fails",
            node_id=node.id,
            field="onError.fallbackValue",
        )
    if on_error.strategy != "goto":
        return
    if not on_error.goto_node:
        yield _missing(node, "onError.gotoNode", "onError goto needs gotoNode")
    elif on_error.goto_node not in spec.nodes:
        yield error(
            "invalid_on_error",
            f"onError gotoNode '{on_error.goto_node}' is not a node of this workflow",
            node_id=node.id,
            field="onError.gotoNode",
        )


def _error_path_cycle(graph: WorkflowGraph, cycle: list[str]) -> Problem:
    """A cycle that only exists through an error edge or a goto: name the edge that closes it."""
    path = " → ".join(cycle)
    for source, target in itertools.pairwise(cycle):
        for edge in graph.outgoing[source]:
            if edge.target != target or not is_error_edge(edge):
                continue
            if edge.id.endswith(":onError.gotoNode"):
                return error(
                    "error_path_cycle",
                    f"onError goto '{target}' would create a cycle ({path}): a goto must lead "
                    "to a node that does not run before this one",
                    node_id=source,
                    field="onError.gotoNode",
                )
            return error(
                "error_path_cycle",
                f"the error edge '{edge.id}' to '{target}' would create a cycle ({path}): a "
                "fallback must be a node that does not run before this one",
                node_id=source,
                field="sourceHandle",
                path=f"edges[{edge.id}].sourceHandle",
            )
    return error("cycle", f"the workflow has a cycle: {path}", node_id=cycle[0], path="$.edges")


# -- references ----------------------------------------------------------------------------------


def _reference_problems(spec: WorkflowSpec, graph: WorkflowGraph) -> Iterator[Problem]:
    """A static data-flow check: every `{{reference}}` against what can provide it when the node
    runs, the way the runtime resolves names (lang/state.py): loop variables inside their loop's
    body, node ids and the names their outputs carry when the node runs after them, the inputs
    input nodes declare, `inputs` / `input`. A plain path under an input node or under the
    inputs (`{{input.category}}`) is checked one key deeper. Warnings only: the text stays as
    written when the node runs (unless the workflow says `unresolvedReferences: "error"`)."""
    input_names = {
        name
        for node in spec.nodes.values()
        if isinstance(node.config, InputConfig)
        for name in [*node.config.names, node.config.name]
        if name
    } | {
        str(node.config.extras()["inputVariable"])
        for node in spec.nodes.values()
        if node.type == "files" and node.config.extras().get("inputVariable")
    }
    # Inputs nothing declares can still arrive: a trigger's payload, an unnamed input node.
    open_inputs = any(
        node.type == "trigger" or _hands_on_inputs(node) for node in spec.nodes.values()
    )
    # Sets of nodes are bit masks over the topological order: the ancestors of every node
    # in one pass (sets per node were quadratic: seconds for a 1,000-node chain).
    order = graph.topological_order()
    bit = {node_id: 1 << index for index, node_id in enumerate(order)}
    above: dict[str, int] = {}
    for node_id in order:
        mask = 0
        for pred in graph.predecessors(node_id):
            mask |= above[pred] | bit[pred]
        above[node_id] = mask
    regions = graph.loop_regions(order).values()
    # A loop's exits (and what follows them) read its body nodes' per-item results.
    via_loop = [
        (bit[exit_id], sum(bit[b] for b in set(region.body)))
        for region in regions
        for exit_id in region.exits
    ]
    providers: dict[str, int] = {}  # name -> the nodes whose output provides it
    in_scope: dict[str, int] = {}  # loop variable -> the nodes (a loop's body) that see it
    open_outputs = 0  # nodes whose output keys are only known at run time
    for node_id in order:
        for name in _provided_names(spec.nodes[node_id]):
            providers[name] = providers.get(name, 0) | bit[node_id]
        if spec.nodes[node_id].type in _OPEN_OUTPUT_TYPES or _hands_on_inputs(spec.nodes[node_id]):
            open_outputs |= bit[node_id]
    for region in regions:
        config = spec.nodes[region.loop_id].config
        if isinstance(config, LoopConfig | BatchConfig):
            body = sum(bit[b] for b in set(region.body))
            # The variables, and the loop's own output in its body: `{item, index, count}`.
            for name in (config.item_variable, config.index_variable, "item", "index"):
                in_scope[name] = in_scope.get(name, 0) | body
    count = 0
    for node in spec.nodes.values():
        ancestors: int | None = None
        for field, root, text, key in _node_references(node):
            if ancestors is None:
                ancestors = above[node.id]
                for exit_bit, body in via_loop:
                    if exit_bit == bit[node.id] or ancestors & exit_bit:
                        ancestors |= body
            if root is None:
                problem: Problem | None = warning(
                    "invalid_reference",
                    f"cannot parse reference {text} in config.{field}; it stays as written",
                    node_id=node.id,
                    field=field,
                )
            elif in_scope.get(root, 0) & bit[node.id]:
                continue
            elif root == node.id or (root in spec.nodes and ancestors & bit[root]):
                problem = _key_problem(
                    spec.nodes[root], node, field, text, key, input_names, open_inputs
                )
            elif root in input_names or providers.get(root, 0) & ancestors:
                continue
            elif root in ("inputs", INPUT_ALIAS):
                problem = _key_problem(None, node, field, text, key, input_names, open_inputs)
            elif root in spec.nodes:
                problem = warning(
                    "reference_not_upstream",
                    f"config.{field} refers to node '{root}' ({text}), which does not run "
                    "before this node",
                    node_id=node.id,
                    field=field,
                )
            elif open_outputs & ancestors:
                continue
            else:
                problem = warning(
                    "unresolved_reference",
                    f"config.{field} refers to '{root}' ({text}), which no input, upstream "
                    "node or outputVariable provides; it stays as written",
                    node_id=node.id,
                    field=field,
                )
            if problem is None:
                continue
            yield problem
            count += 1
            if count >= _MAX_REFERENCE_WARNINGS:
                return


def _key_problem(
    source: NodeSpec | None,
    node: NodeSpec,
    field: str,
    text: str,
    key: str | None,
    input_names: set[str],
    open_inputs: bool,
) -> Problem | None:
    """`{{root.key}}` where root is a node that runs before (its output keys known only for
    input nodes), or the inputs (`inputs`, `input`): is `key` there?"""
    if key is None:
        return None
    if source is not None:
        config = source.config
        if not isinstance(config, InputConfig) or not config.name:
            return None  # keys known at run time only (or the whole inputs: any key)
        own = {n for n in [*config.names, config.name, config.output_variable] if n}
        if source.id in own or key in own:
            return None  # `{{topic.x}}` of a node `topic` reads its value; or a key it has
        if source.id != INPUT_ALIAS:
            outputs = ", ".join(f"'{n}'" for n in sorted(own))
            return warning(
                "unresolved_reference",
                f"config.{field} refers to '{key}' of input node '{source.id}' ({text}), which "
                f"outputs only {outputs}; it stays as written",
                node_id=node.id,
                field=field,
            )
    if key in input_names or open_inputs:
        return None
    declared = ", ".join(f"'{n}'" for n in sorted(input_names)) or "none"
    return warning(
        "unresolved_reference",
        f"config.{field} refers to the input '{key}' ({text}), which no input node declares "
        f"(declared: {declared}); it stays as written unless the execution's inputs carry it",
        node_id=node.id,
        field=field,
    )


def _hands_on_inputs(node: NodeSpec) -> bool:
    """An input node without a name: its output is the whole inputs object."""
    return isinstance(node.config, InputConfig) and not node.config.name


def reference_fields(node: NodeSpec) -> dict[str, str]:
    """Each reference's text -> the config field it is written in (the first, as the builder
    spells it): what a run-time warning about that reference names."""
    fields: dict[str, str] = {}
    for field, _root, text, _key in _node_references(node):
        fields.setdefault(text, field)
    return fields


def _provided_names(node: NodeSpec) -> set[str]:
    """The names a node's output makes readable downstream (its id among them)."""
    known = {node.id}
    config = node.config
    if config.output_variable:
        known.add(config.output_variable)
    else:
        known |= STANDARD_OUTPUT_KEYS.get(node.type, frozenset())
    if isinstance(config, InputConfig):
        known.update(n for n in [*config.names, config.name] if n)
    # A loop's item and index variables are seen only inside its body (`_reference_problems`).
    if isinstance(config, LoopConfig):
        known |= STANDARD_OUTPUT_KEYS["loop"]
    if isinstance(config, BatchConfig):
        known |= STANDARD_OUTPUT_KEYS["batch"]
    if isinstance(config, ConditionalConfig | SwitchConfig):
        known |= STANDARD_OUTPUT_KEYS[node.type]
    if isinstance(config, SharedMemoryConfig):
        known |= STANDARD_OUTPUT_KEYS["shared-memory"]
    if node.type == "output" and isinstance(config.extras(), dict):
        name = getattr(config, "name", None)
        if name:
            known.add(name)
    return known


def _node_references(node: NodeSpec) -> Iterator[tuple[str, str | None, str, str | None]]:
    """(field, root name or None if unparsable, reference text, the key after the root when
    the reference is a plain path `root.key...`) for every reference."""
    config = node.original_config
    display = _DISPLAY_FIELDS.get(node.type, frozenset())
    for key, value in config.items():
        if key in _NOT_SCANNED_FIELDS or key in display or key in ("retry", "onError"):
            continue
        if node.type == "conditional" and key in ("condition", "expression"):
            yield from _expression_roots(key, value)
            continue
        is_path = key in _PATH_FIELDS.get(node.type, ()) and isinstance(value, str)
        if is_path and "{{" not in value and "${" not in value:
            yield from _expression_roots(key, value)
            continue
        yield from _string_roots(key, value)


def _expression_roots(field: str, value: Any) -> Iterator[tuple[str, str | None, str, str | None]]:
    if not isinstance(value, str):
        return
    try:
        tree = expressions.parse(value)
    except ExpressionError:
        return  # reported as invalid_expression
    key = _first_key(tree)
    for name in dict.fromkeys(expressions.free_names(tree)):
        yield field, name, value, key


def _string_roots(field: str, value: Any) -> Iterator[tuple[str, str | None, str, str | None]]:
    if isinstance(value, str):
        if "{{" not in value and "${" not in value:
            return
        for _match, ref in find_references(value):
            try:
                tree = expressions.parse(ref.expression)
            except ExpressionError:
                yield field, None, ref.text, None
                continue
            key = _first_key(tree)
            for name in dict.fromkeys(expressions.free_names(tree)):
                yield field, name, ref.text, key
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _string_roots(f"{field}[{index}]", item)
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _string_roots(f"{field}.{key}", item)


def _first_key(tree: Any) -> str | None:
    """`category` of the plain path `input.category.x`; None for anything else."""
    path = expressions.path_of(tree)
    if path is None or len(path) < 2:
        return None
    return str(path[1])
