"""Pipedrive: a `filters` object (`{status: open, pipeline_id: 1}`, as templates write it)
spread into the deals list's query, beside the parameters the node gives by name.
"""

import re
from collections.abc import Mapping
from typing import Any

from flowmaestro_dagster.nodes.connectors.declarative import (
    HookApi,
    ParameterError,
    PreparedRequest,
)

_NAME = re.compile(r"[a-z][a-z0-9_]{0,40}")
_RESERVED = frozenset({"cursor", "limit"})


def filter_object(
    prepared: PreparedRequest, params: Mapping[str, Any], api: HookApi
) -> PreparedRequest:
    """getDeals: each `filters` entry as a query parameter (a named parameter wins)."""
    filters = params.get("filters") or {}
    present = {name for name, _ in prepared.query}
    for name, value in filters.items():
        key = str(name)
        if not _NAME.fullmatch(key) or key in _RESERVED:
            raise ParameterError("filters", f"parameters.filters has an unknown filter {key!r}")
        if key in present or value in (None, ""):
            continue
        items = value if isinstance(value, list) else [value]
        prepared.query.append((key, ",".join(str(i) for i in items)))
    return prepared
