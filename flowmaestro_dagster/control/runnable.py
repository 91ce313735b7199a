"""Can this deployment run a workflow? (`flowmaestro runnable`)

Validation says whether a definition is well formed; this says whether every node of it can
actually run here. Two kinds of answers, kept apart because an operator acts on them
differently:

* **blockers** — a node the platform cannot run at all: a node type without an executor, a
  provider or an operation without a connector. Only a code change (a plug-in) fixes these.
* **needs** — what this deployment lacks for a node that could otherwise run: an LLM provider
  (`FLOWMAESTRO_LLM__PROVIDERS__<NAME>__...`), a provider connection (`POST /connections` or
  `FLOWMAESTRO_CONNECTIONS__<NAME>__...`), a database, a search provider, a system program
  (chromium, tesseract). Configuration fixes these.
"""

import shutil
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

from flowmaestro_dagster.compile.validation import validate_spec
from flowmaestro_dagster.nodes import get_executor
from flowmaestro_dagster.nodes.connectors import (
    ConnectorRegistry,
    declarative,
    default_registry,
    describe,
    resolve_connection,
)
from flowmaestro_dagster.nodes.integration import execute_media
from flowmaestro_dagster.nodes.unavailable import execute_unavailable
from flowmaestro_dagster.settings import Settings
from flowmaestro_dagster.spec.models import NodeSpec, WorkflowSpec
from flowmaestro_dagster.spec.parse import load_json, parse_workflow

# Node types that call an OpenAI-compatible provider (FLOWMAESTRO_LLM__PROVIDERS__...).
LLM_TYPES = frozenset(
    {
        "llm",
        "router",
        "vision",
        "embeddings",
        "audioTranscription",
        "audioOutput",
        "audio",
        "imageGeneration",
        "videoGeneration",
    }
)
# Node types that need a program on the machine that runs their step.
SYSTEM_PROGRAMS: dict[str, tuple[str, str]] = {
    "screenshotCapture": ("chromium", "apt-get install chromium (scripts/system-deps.sh)"),
    "ocrExtraction": ("tesseract", "apt-get install tesseract-ocr (scripts/system-deps.sh)"),
}

HasConnection = Callable[[str | None, str], bool]
"""(connection id, provider) -> whether the owner has that connection in the platform store."""


@dataclass(frozen=True)
class Blocker:
    node_id: str
    node_type: str
    reason: str


@dataclass(frozen=True)
class Need:
    node_id: str
    kind: str  # llm_provider | connection | parameter | database | search_provider | program
    name: str
    how: str


@dataclass
class Report:
    source: str
    valid: bool = True
    errors: list[str] = field(default_factory=list)
    blockers: list[Blocker] = field(default_factory=list)
    needs: list[Need] = field(default_factory=list)

    @property
    def runnable(self) -> bool:
        return self.valid and not self.blockers and not self.needs

    def to_dict(self) -> dict[str, Any]:
        return {
            "file": self.source,
            "runnable": self.runnable,
            "valid": self.valid,
            "errors": self.errors,
            "blockers": [asdict(b) for b in self.blockers],
            "needs": [asdict(n) for n in self.needs],
        }


def check_definition(
    source: str,
    text: str | bytes,
    settings: Settings,
    *,
    registry: ConnectorRegistry | None = None,
    has_connection: HasConnection | None = None,
) -> Report:
    """The report of one definition (a file's text)."""
    report = Report(source)
    document, problems = load_json(text)
    spec, more = (None, []) if document is None else parse_workflow(document)
    problems += more
    if spec is not None and not any(p.severity == "error" for p in problems):
        problems += validate_spec(spec)  # a cycle, a bad expression: nothing can run it
    errors = [p for p in problems if p.severity == "error"]
    if spec is None or errors:
        report.valid = False
        report.errors = [p.message for p in errors] or ["not a workflow definition"]
        return report
    check_spec(spec, settings, report, registry=registry, has_connection=has_connection)
    return report


def check_spec(
    spec: WorkflowSpec,
    settings: Settings,
    report: Report,
    *,
    registry: ConnectorRegistry | None = None,
    has_connection: HasConnection | None = None,
) -> Report:
    registry = registry or default_registry()
    for node in spec.nodes.values():
        report.blockers += _blockers(node, registry)
        if not any(b.node_id == node.id for b in report.blockers):
            report.needs += _needs(node, settings, registry, has_connection)
    report.needs = _unique(report.needs)
    return report


def _blockers(node: NodeSpec, registry: ConnectorRegistry) -> Iterator[Blocker]:
    if node.type == "integration":
        provider, operation = _provider_operation(node)
        if not provider:  # the author's to fill in (a need), not something we cannot run
            return
        if registry.find(provider, operation) is None:
            reason = f"no connector for {describe(provider, operation)}"
            yield Blocker(node.id, node.source_type, reason)
        return
    executor = get_executor(node.type)
    if executor is execute_unavailable:
        yield Blocker(node.id, node.source_type, f"no executor for node type '{node.type}'")
    elif executor is execute_media:  # served only by a plug-in registered under the type
        operation = getattr(node.config, "operation", None)
        if registry.find(node.type, operation) is None:
            yield Blocker(node.id, node.source_type, f"no executor for node type '{node.type}'")


def _needs(
    node: NodeSpec,
    settings: Settings,
    registry: ConnectorRegistry,
    has_connection: HasConnection | None,
) -> Iterator[Need]:
    config: Any = node.config
    if node.type in LLM_TYPES:
        name = (getattr(config, "provider", None) or "").strip() or settings.llm.default_provider
        if "{{" not in name and settings.llm.provider(name) is None:
            key = name.upper().replace("-", "_")
            yield Need(
                node.id,
                "llm_provider",
                name,
                f"set FLOWMAESTRO_LLM__PROVIDERS__{key}__BASE_URL and __API_KEY "
                "(docs/providers.md)",
            )
    if node.type in SYSTEM_PROGRAMS:
        program, how = SYSTEM_PROGRAMS[node.type]
        if shutil.which(program) is None:
            yield Need(node.id, "program", program, how)
    if node.type == "database":
        wanted = [n for n in (config.connection_id, config.provider) if isinstance(n, str) and n]
        if not any("{{" in n or n in settings.databases for n in wanted):
            name = wanted[0] if wanted else "(none named)"
            yield Need(
                node.id,
                "database",
                name,
                "add it to FLOWMAESTRO_DATABASES (name -> SQLAlchemy URL; docs/node-types.md)",
            )
    if node.type == "integration":
        provider, operation = _provider_operation(node)
        if not provider:
            yield Need(
                node.id,
                "parameter",
                "provider",
                "the node names no provider (and no operation): choose one in the builder",
            )
            return
        spec = registry.find(provider, operation)
        if spec is not None and spec.needs_connection and provider:
            yield from _connection_need(node, provider, settings, has_connection)
        if spec is not None and isinstance(spec.run, declarative.DeclarativeConnector):
            yield from _parameter_needs(node, spec.run.provider, operation)
    if node.type == "webSearch":
        yield from _search_need(node, settings)


def _connection_need(
    node: NodeSpec, provider: str, settings: Settings, has_connection: HasConnection | None
) -> Iterator[Need]:
    connection_id = getattr(node.config, "connection_id", None)
    connection_id = str(connection_id) if connection_id else None
    if connection_id and "{{" in connection_id:
        return
    _, configured = resolve_connection(settings, connection_id, provider)
    if configured is not None:
        return
    if has_connection is not None and has_connection(connection_id, provider):
        return
    name = connection_id or provider
    yield Need(
        node.id,
        "connection",
        name,
        f"add a {provider} connection (POST /connections, provider {provider}) or set "
        f"FLOWMAESTRO_CONNECTIONS__{name.upper().replace('-', '_')}__... (docs/providers.md)",
    )


def _parameter_needs(
    node: NodeSpec, provider: "declarative.ProviderSpec", operation: str | None
) -> Iterator[Need]:
    """Required parameters the node leaves empty: builder templates leave them for the user,
    and the node would fail naming them when it runs."""
    parameters = getattr(node.config, "parameters", None)
    values = parameters if isinstance(parameters, dict) else {}
    for problem in declarative.node_problems(node.id, provider, operation, values, strict=False):
        if problem.code == "missing_parameter":
            yield Need(node.id, "parameter", problem.field or "parameters", problem.message)


def _search_need(node: NodeSpec, settings: Settings) -> Iterator[Need]:
    extras = node.config.extras()
    wanted = getattr(node.config, "provider", None) or extras.get("connectionId")
    search = getattr(settings, "web_search", None)
    default = getattr(search, "provider", None) if search is not None else None
    name = str(wanted or default or "")
    if not name:
        yield Need(
            node.id,
            "search_provider",
            "web search",
            "set FLOWMAESTRO_WEB_SEARCH__PROVIDER and a connection named like it "
            "(docs/nodes.md, webSearch)",
        )
        return
    if "{{" in name:
        return
    _, connection = resolve_connection(settings, name, None)
    if connection is None:
        yield Need(
            node.id,
            "search_provider",
            name,
            f"set FLOWMAESTRO_CONNECTIONS__{name.upper()}__API_KEY (or __BASE_URL for SearXNG)",
        )


def _provider_operation(node: NodeSpec) -> tuple[str | None, str | None]:
    return getattr(node.config, "provider", None), getattr(node.config, "operation", None)


def _unique(needs: Iterable[Need]) -> list[Need]:
    seen: dict[tuple[str, str, str], Need] = {}
    for need in needs:
        seen.setdefault((need.node_id, need.kind, need.name), need)
    return list(seen.values())


__all__ = ["Blocker", "HasConnection", "Need", "Report", "check_definition", "check_spec"]
