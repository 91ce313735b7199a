"""Reading a definition: JSON text or data in either FlowMaestro shape → `WorkflowSpec`.

Never raises on bad input: every defect becomes a `Problem` that points at the JSON path (and
node / field when there is one), so a builder can show it and the API can answer 422.
"""

import json
import re
from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError

from flowmaestro_dagster.spec.configs import MediaConfig, NodeConfig, normalise_config
from flowmaestro_dagster.spec.models import (
    RUN_ON_VALUES,
    EdgeSpec,
    NodeSpec,
    WorkflowSettings,
    WorkflowSpec,
)
from flowmaestro_dagster.spec.node_types import COMMENT_TYPE, resolve_type
from flowmaestro_dagster.spec.policies import parse_on_error, parse_retry
from flowmaestro_dagster.spec.problems import Problem, error

MAX_NESTING = 200


class _ObjectWithDuplicates(dict[str, Any]):
    """A JSON object that remembers keys it saw more than once (a dict keeps only the last)."""

    duplicates: list[str]


def _pairs_hook(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    seen: dict[str, Any] = {}
    duplicates = []
    for key, value in pairs:
        if key in seen:
            duplicates.append(key)
        seen[key] = value
    if not duplicates:
        return seen
    obj = _ObjectWithDuplicates(seen)
    obj.duplicates = duplicates
    return obj


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def load_json(text: str | bytes) -> tuple[Any, list[Problem]]:
    """Parse JSON text; a malformed document gives one problem with line and column."""
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            return None, [error("malformed_json", f"not UTF-8 text: {exc.reason}", path="$")]
    try:
        return json.loads(text, object_pairs_hook=_pairs_hook, parse_constant=_reject_constant), []
    except json.JSONDecodeError as exc:
        return None, [
            error(
                "malformed_json",
                f"malformed JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}",
                path="$",
            )
        ]
    except (ValueError, RecursionError) as exc:
        message = "JSON nested too deeply" if isinstance(exc, RecursionError) else str(exc)
        return None, [error("malformed_json", message, path="$")]


# Text no database column or encoder can hold: NUL (PostgreSQL text/JSONB) and lone UTF-16
# surrogates (not UTF-8); and integers Python cannot even print (over 4,300 digits).
_BAD_TEXT = re.compile("[\x00\ud800-\udfff]")
_MAX_INT_BITS = 14_000


def _printable(key: Any) -> str:
    return _BAD_TEXT.sub(lambda m: f"\\u{ord(m.group()):04x}", key if isinstance(key, str) else "?")


def _shape_problem(value: Any, limit: int = MAX_NESTING) -> Problem | None:
    """The first place (depth first, iterative) the document is too deep, holds unstorable text
    or an unprintable integer: checked before anything else reads it."""
    stack: list[tuple[Any, str, int]] = [(value, "$", 0)]
    while stack:
        item, path, depth = stack.pop()
        if depth > limit:
            return error("invalid_type", f"nested deeper than {limit} levels", path="$")
        if isinstance(item, str):
            if _BAD_TEXT.search(item):
                return error(
                    "invalid_text",
                    "text holds a NUL character or a lone UTF-16 surrogate",
                    path=path,
                )
        elif isinstance(item, int) and not isinstance(item, bool):
            if item.bit_length() > _MAX_INT_BITS:
                return error("invalid_type", "an integer with more than 4,000 digits", path=path)
        elif isinstance(item, dict):
            for key, child in item.items():
                where = f"{path}.{_printable(key)}"
                if isinstance(key, str) and _BAD_TEXT.search(key):
                    return error(
                        "invalid_text",
                        "a key holds a NUL character or a lone UTF-16 surrogate",
                        path=where,
                    )
                stack.append((child, where, depth + 1))
        elif isinstance(item, list):
            stack.extend((child, f"{path}[{i}]", depth + 1) for i, child in enumerate(item))
    return None


def parse_workflow(source: Any) -> tuple[WorkflowSpec | None, list[Problem]]:
    """A spec (None if the document is not a workflow at all) and every problem found."""
    if isinstance(source, str | bytes):
        data, problems = load_json(source)
        if problems:
            return None, problems
    else:
        data = source
    if (shape := _shape_problem(data)) is not None:
        return None, [shape]
    if not isinstance(data, Mapping):
        return None, [error("invalid_type", "a workflow must be a JSON object", path="$")]
    return _Parser(data).parse()


class _Parser:
    def __init__(self, document: Mapping[str, Any]) -> None:
        self.document = document
        self.problems: list[Problem] = []
        self.prefix = "$"

    def problem(self, code: str, message: str, path: str, **where: str | None) -> None:
        self.problems.append(error(code, message, path=path, **where))

    def parse(self) -> tuple[WorkflowSpec | None, list[Problem]]:
        doc = self.document
        definition: Mapping[str, Any] = doc
        metadata: dict[str, Any] = {}
        wrapped = doc.get("definition")
        if "nodes" not in doc and wrapped is not None:
            if not isinstance(wrapped, Mapping):
                self.problem("invalid_type", "definition must be an object", "$.definition")
                return None, self.problems
            definition = wrapped
            self.prefix = "$.definition"
            metadata = {k: v for k, v in doc.items() if k != "definition"}

        raw_nodes = definition.get("nodes")
        if raw_nodes is None:
            self.problem("missing_field", "the workflow has no nodes", f"{self.prefix}.nodes")
            return None, self.problems
        if isinstance(raw_nodes, list):
            shape = "react-flow"
            node_entries = self._react_flow_nodes(raw_nodes)
        elif isinstance(raw_nodes, Mapping):
            shape = "backend"
            node_entries = self._backend_nodes(raw_nodes)
        else:
            self.problem(
                "invalid_type",
                "nodes must be a list (React-Flow shape) or an object keyed by node id",
                f"{self.prefix}.nodes",
            )
            return None, self.problems

        comments = {node_id for node_id, node in node_entries if node is None}
        nodes: dict[str, NodeSpec] = {}
        for node_id, node in node_entries:
            if node is not None:
                nodes.setdefault(node_id, node)
        edges = self._edges(definition.get("edges"), comments)
        settings = self._settings(definition.get("settings"))

        name = definition.get("name") or metadata.get("name") or "workflow"
        if not isinstance(name, str):
            self.problem("invalid_type", "name must be a string", f"{self.prefix}.name")
            name = "workflow"
        description = metadata.get("description", definition.get("description"))
        entry_point = definition.get("entryPoint")
        if entry_point is not None and not isinstance(entry_point, str):
            self.problem(
                "invalid_type", "entryPoint must be a node id", f"{self.prefix}.entryPoint"
            )
            entry_point = None
        spec = WorkflowSpec(
            name=name.strip() or "workflow",
            description=description if isinstance(description, str) else None,
            shape=shape,
            nodes=nodes,
            edges=edges,
            entry_point=entry_point,
            settings=settings,
            metadata=metadata,
        )
        return spec, self.problems

    # -- nodes -------------------------------------------------------------------------------

    def _react_flow_nodes(self, raw_nodes: list[Any]) -> list[tuple[str, NodeSpec | None]]:
        entries: list[tuple[str, NodeSpec | None]] = []
        seen: set[str] = set()
        for index, raw in enumerate(raw_nodes):
            path = f"{self.prefix}.nodes[{index}]"
            if not isinstance(raw, Mapping):
                self.problem("invalid_type", "a node must be an object", path)
                continue
            node_id = self._node_id(raw.get("id"), f"{path}.id")
            if node_id is None:
                continue
            if node_id in seen:
                self.problem(
                    "duplicate_node_id",
                    f"node id '{node_id}' is used by more than one node",
                    f"{path}.id",
                    node_id=node_id,
                )
                continue
            seen.add(node_id)
            data = self._node_object(raw, "data", path, node_id)
            label = data.get("label")
            config = {k: v for k, v in data.items() if k != "label"}
            on_error = config.pop("onError", None)
            node = self._node(
                node_id, raw.get("type"), label, config, raw.get("position"), on_error, path, "data"
            )
            entries.append((node_id, node))
        return entries

    def _node_object(
        self, raw: Mapping[str, Any], key: str, path: str, node_id: str
    ) -> Mapping[str, Any]:
        """A node's `data` (React Flow) or `config` (backend): missing is empty, and so is
        anything else than an object, with a problem."""
        value = raw.get(key)
        if value is None:
            return {}
        if not isinstance(value, Mapping):
            self.problem(
                "invalid_type", f"{key} must be an object", f"{path}.{key}", node_id=node_id
            )
            return {}
        return value

    def _backend_nodes(self, raw_nodes: Mapping[str, Any]) -> list[tuple[str, NodeSpec | None]]:
        for duplicate in getattr(raw_nodes, "duplicates", []):
            self.problem(
                "duplicate_node_id",
                f"node id '{duplicate}' appears more than once in nodes",
                f"{self.prefix}.nodes.{duplicate}",
                node_id=duplicate,
            )
        entries: list[tuple[str, NodeSpec | None]] = []
        for node_id, raw in raw_nodes.items():
            path = f"{self.prefix}.nodes.{node_id}"
            if not node_id.strip():
                self.problem("invalid_type", "a node id must not be empty", path)
                continue
            if not isinstance(raw, Mapping):
                self.problem("invalid_type", "a node must be an object", path, node_id=node_id)
                continue
            config = dict(self._node_object(raw, "config", path, node_id))
            on_error = raw.get("onError", config.pop("onError", None))
            label = raw.get("name") or raw.get("label")
            node = self._node(
                node_id,
                raw.get("type"),
                label,
                config,
                raw.get("position"),
                on_error,
                path,
                "config",
            )
            entries.append((node_id, node))
        return entries

    def _node_id(self, raw_id: Any, path: str) -> str | None:
        if isinstance(raw_id, int) and not isinstance(raw_id, bool):
            return str(raw_id)
        if not isinstance(raw_id, str) or not raw_id.strip():
            self.problem("invalid_type", "every node needs a non-empty string id", path)
            return None
        return raw_id

    def _node(
        self,
        node_id: str,
        raw_type: Any,
        label: Any,
        config: dict[str, Any],
        position: Any,
        raw_on_error: Any,
        path: str,
        config_key: str,
    ) -> NodeSpec | None:
        if not isinstance(raw_type, str) or not raw_type:
            self.problem(
                "invalid_type",
                "node type must be a non-empty string",
                f"{path}.type",
                node_id=node_id,
            )
            raw_type = str(raw_type) if raw_type else "unknown"
        if raw_type == COMMENT_TYPE:
            return None
        resolved = resolve_type(raw_type)
        if resolved is None:
            self.problem(
                "unknown_node_type",
                f"unknown node type '{raw_type}'",
                f"{path}.type",
                node_id=node_id,
                field="type",
            )
            node_type = raw_type
            canonical: NodeConfig = MediaConfig.model_validate({})
        else:
            node_type = resolved.type
            if resolved.provider and not config.get("provider"):
                config = {**config, "provider": resolved.provider}
            canonical, config_problems = normalise_config(node_type, config, node_id=node_id)
            for problem in config_problems:
                self.problems.append(
                    problem.model_copy(update={"path": f"{path}.{config_key}.{problem.field}"})
                )
        retry, retry_field, retry_problems = parse_retry(config, node_id=node_id)
        self.problems.extend(
            p.model_copy(update={"path": f"{path}.{config_key}.{p.field}"}) for p in retry_problems
        )
        on_error, on_error_problems = parse_on_error(raw_on_error, node_id=node_id)
        self.problems.extend(
            p.model_copy(update={"path": f"{path}.onError"}) for p in on_error_problems
        )
        run_on = config.get("runOn")
        if run_on not in (None, *RUN_ON_VALUES):
            self.problem(
                "invalid_run_on",
                f"runOn must be one of {', '.join(RUN_ON_VALUES)} (got {run_on!r})",
                f"{path}.{config_key}.runOn",
                node_id=node_id,
                field="runOn",
            )
            run_on = None
        if not isinstance(label, str) or not label.strip():
            label = _fallback_label(node_type, config)
        return NodeSpec(
            id=node_id,
            type=node_type,
            source_type=raw_type,
            label=label.strip(),
            config=canonical,
            original_config=config,
            position=position if isinstance(position, dict) else None,
            on_error=on_error,
            retry=retry,
            retry_field=retry_field,
            run_on=run_on,
        )

    # -- edges and settings ------------------------------------------------------------------

    def _edges(self, raw_edges: Any, comments: set[str]) -> list[EdgeSpec]:
        if raw_edges is None:
            return []
        if not isinstance(raw_edges, list):
            self.problem("invalid_type", "edges must be a list", f"{self.prefix}.edges")
            return []
        edges: list[EdgeSpec] = []
        for index, raw in enumerate(raw_edges):
            path = f"{self.prefix}.edges[{index}]"
            if not isinstance(raw, Mapping):
                self.problem("invalid_type", "an edge must be an object", path)
                continue
            ends = {}
            for end in ("source", "target"):
                value = raw.get(end)
                if isinstance(value, int) and not isinstance(value, bool):
                    value = str(value)
                if not isinstance(value, str) or not value:
                    self.problem("invalid_type", f"edge {end} must be a node id", f"{path}.{end}")
                ends[end] = value if isinstance(value, str) and value else None
            if ends["source"] is None or ends["target"] is None:
                continue
            if ends["source"] in comments or ends["target"] in comments:
                continue
            edge_id = raw.get("id")
            edges.append(
                EdgeSpec(
                    id=str(edge_id) if edge_id is not None else f"edge-{index}",
                    source=ends["source"],
                    target=ends["target"],
                    source_handle=_handle(raw.get("sourceHandle")),
                    target_handle=_handle(raw.get("targetHandle")),
                )
            )
        return edges

    def _settings(self, raw: Any) -> WorkflowSettings:
        if raw is None:
            return WorkflowSettings()
        if not isinstance(raw, Mapping):
            self.problem("invalid_type", "settings must be an object", f"{self.prefix}.settings")
            return WorkflowSettings()
        try:
            return WorkflowSettings.model_validate(raw)
        except ValidationError as exc:
            for err in exc.errors():
                field = ".".join(str(p) for p in err["loc"])
                self.problem(
                    "invalid_settings",
                    f"settings.{field}: {err['msg']}",
                    f"{self.prefix}.settings.{field}",
                    field=f"settings.{field}",
                )
            kept = {
                k: v
                for k, v in raw.items()
                if k not in {str(e["loc"][0]) for e in exc.errors() if e["loc"]}
            }
            return WorkflowSettings.model_validate(kept)


def _handle(value: Any) -> str | None:
    if value is None:
        return None
    return value if isinstance(value, str) else str(value)


def _fallback_label(node_type: str, config: Mapping[str, Any]) -> str:
    for key in ("inputName", "outputName", "variableName", "name"):
        value = config.get(key)
        if isinstance(value, str) and value.strip():
            return value
    return node_type
