"""knowledgeBaseQuery (alias kbQuery): search one of the run's user's knowledge bases.

The knowledge bases live in the platform database (flowmaestro_dagster/store/knowledge.py);
a node reaches them through `ctx.services["knowledge_bases"]`, anything with the
`KnowledgeBaseService` method, so the executor never opens a database itself. Only the
knowledge bases of the user who started the run (run tag `USER_TAG`) are found: another
user's is "not found", exactly like one that does not exist.

Config (builder spellings): `knowledgeBaseId`, `queryText` (older: `query`), `topK` (default
5, at most 100), `similarityThreshold` (0..1, default 0), `includeMetadata` (default false),
`outputVariable`; each may be a `{{template}}`. Output: `{query, results, count,
knowledgeBaseId}` under `outputVariable`, each result `{documentId, documentTitle, chunkId,
chunkIndex, text, score, source}` (and the document's `metadata` with `includeMetadata`).
"""

import math
from collections.abc import Callable, Mapping
from typing import Any, Protocol, TypeVar

from flowmaestro_dagster.errors import NodeConfigurationError, NotFound
from flowmaestro_dagster.nodes.base import (
    ConfigCheck,
    Executor,
    NodeContext,
    NodeResult,
    wrap_output,
)
from flowmaestro_dagster.spec.models import NodeSpec
from flowmaestro_dagster.spec.problems import Problem, error, warning
from flowmaestro_dagster.tags import USER_TAG

SERVICE = "knowledge_bases"
DEFAULT_TOP_K = 5
MAX_TOP_K = 100
MAX_QUERY_CHARS = 10_000
_KB_KEYS = ("knowledgeBaseId", "knowledgeBase", "kbId")
_QUERY_KEYS = ("queryText", "query")
T = TypeVar("T")


class KnowledgeBaseNotFound(NotFound):
    """Knowledge base not found."""


class KnowledgeBaseService(Protocol):
    """What the node needs of the platform: a scored search of one owner's knowledge base.

    Raises `KnowledgeBaseNotFound` for a knowledge base that does not exist or is not
    `owner_id`'s; returns at most `top_k` results scoring `threshold` or more, best first,
    each with the fields of the node's results (and `metadata`, the document's).
    """

    def query(
        self, owner_id: str | None, kb_id: str, text: str, top_k: int, threshold: float
    ) -> list[dict[str, Any]]: ...


def _spelled(extras: Mapping[str, Any], keys: tuple[str, ...]) -> tuple[str, Any]:
    """(the key the builder used, its value), else (the canonical key, None)."""
    for key in keys:
        if extras.get(key) is not None:
            return key, extras[key]
    return keys[0], None


def _is_template(value: Any) -> bool:
    return isinstance(value, str) and ("{{" in value or "${" in value)


def top_k_of(value: Any) -> int | None:
    """A topK as an int (1.. , capped at MAX_TOP_K); None when it is not a positive integer."""
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            return None
    if not isinstance(value, int | float) or not math.isfinite(value) or value != int(value):
        return None
    return min(int(value), MAX_TOP_K) if value >= 1 else None


def threshold_of(value: Any) -> float | None:
    """A similarityThreshold in 0..1; None when it is not a number in that range."""
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            return None
    if not isinstance(value, int | float) or not 0 <= value <= 1:
        return None
    return float(value)


def config_problems(node: NodeSpec) -> list[Problem]:
    """Deploy-time checks: what is wrong before any `{{template}}` resolves (a template is
    checked when the node runs)."""
    extras = node.config.extras()
    problems: list[Problem] = []
    kb_field, kb_id = _spelled(extras, _KB_KEYS)
    if kb_id is None or (isinstance(kb_id, str) and not kb_id.strip()):
        # A warning: builder templates leave the knowledge base for the user to pick, and the
        # workflow may be deployed before it is; the node fails naming the field until then.
        problems.append(
            warning(
                "missing_config",
                "a knowledge base query needs knowledgeBaseId (the node fails without one)",
                node_id=node.id,
                field=kb_field,
            )
        )
    query_field, query = _spelled(extras, _QUERY_KEYS)
    if query is None or (isinstance(query, str) and not query.strip()):
        problems.append(
            error(
                "missing_config",
                "a knowledge base query needs queryText (the text to search for)",
                node_id=node.id,
                field=query_field,
            )
        )
    top_k = extras.get("topK")
    if top_k is not None and not _is_template(top_k) and top_k_of(top_k) is None:
        problems.append(
            error(
                "invalid_config",
                f"topK must be a positive integer (got {top_k!r})",
                node_id=node.id,
                field="topK",
            )
        )
    threshold = extras.get("similarityThreshold")
    if threshold is not None and not _is_template(threshold) and threshold_of(threshold) is None:
        problems.append(
            error(
                "invalid_config",
                f"similarityThreshold must be a number from 0 to 1 (got {threshold!r})",
                node_id=node.id,
                field="similarityThreshold",
            )
        )
    return problems


def execute_knowledge_base_query(ctx: NodeContext) -> NodeResult:
    """Search the knowledge base; the best-scoring chunks first."""
    extras = ctx.config.extras()
    kb_field, raw_kb = _spelled(extras, _KB_KEYS)
    kb_id = ctx.render_text(raw_kb).strip() if raw_kb is not None else ""
    if not kb_id:
        raise ctx.error(
            f"{kb_field}: no knowledge base named (set knowledgeBaseId)",
            NodeConfigurationError,
            details={"field": kb_field},
        )
    query_field, raw_query = _spelled(extras, _QUERY_KEYS)
    query = ctx.render_text(raw_query).strip() if raw_query is not None else ""
    if not query:
        raise ctx.error(
            f"{query_field}: the query text is empty",
            NodeConfigurationError,
            details={"field": query_field},
        )
    if len(query) > MAX_QUERY_CHARS:
        raise ctx.error(
            f"{query_field}: the query text has {len(query)} characters; at most "
            f"{MAX_QUERY_CHARS} are searched",
            NodeConfigurationError,
            details={"field": query_field},
        )
    top_k = _setting(ctx, extras, "topK", DEFAULT_TOP_K, top_k_of, "a positive integer")
    threshold = _setting(
        ctx, extras, "similarityThreshold", 0.0, threshold_of, "a number from 0 to 1"
    )
    service: KnowledgeBaseService | None = ctx.services.get(SERVICE)
    if service is None:
        raise ctx.error(
            "knowledge bases are not available to this run (no knowledge_bases service: runs "
            "of the platform's code locations have one)",
            NodeConfigurationError,
        )
    owner_id = ctx.run_tags.get(USER_TAG)
    try:
        results = service.query(owner_id, kb_id, query, top_k, threshold)
    except KnowledgeBaseNotFound as exc:
        raise ctx.error(
            f"{kb_field}: knowledge base '{kb_id}' not found (or not the run's user's)",
            NodeConfigurationError,
            details={"field": kb_field, "knowledgeBaseId": kb_id},
        ) from exc
    if not _truthy(ctx.render(extras.get("includeMetadata"))):
        results = [{k: v for k, v in hit.items() if k != "metadata"} for hit in results]
    output = {"query": query, "results": results, "count": len(results), "knowledgeBaseId": kb_id}
    return NodeResult(wrap_output(output, ctx.config.output_variable))


def _truthy(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("true", "1", "yes", "on")
    return bool(value)


def _setting(
    ctx: NodeContext,
    extras: Mapping[str, Any],
    field: str,
    default: T,
    parse: Callable[[Any], T | None],
    expected: str,
) -> T:
    raw = extras.get(field)
    if raw is None:
        return default
    value = ctx.render(raw)
    if value is None or value == "":
        return default
    parsed = parse(value)
    if parsed is None:
        raise ctx.error(
            f"{field} must be {expected} (got {value!r})",
            NodeConfigurationError,
            details={"field": field},
        )
    return parsed


EXECUTORS: Mapping[str, Executor] = {"knowledgeBaseQuery": execute_knowledge_base_query}
CONFIG_CHECKS: Mapping[str, ConfigCheck] = {"knowledgeBaseQuery": config_problems}

__all__ = [
    "CONFIG_CHECKS",
    "EXECUTORS",
    "KnowledgeBaseNotFound",
    "KnowledgeBaseService",
    "config_problems",
    "execute_knowledge_base_query",
]
