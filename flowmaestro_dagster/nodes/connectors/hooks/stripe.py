"""Stripe: a time window (`since`/`until`, or `dateRange: last_24_hours`) as the list
endpoints' `created[gte]`/`created[lte]` (Unix seconds).
"""

from collections.abc import Mapping
from typing import Any

from flowmaestro_dagster.nodes.connectors.declarative import HookApi, PreparedRequest
from flowmaestro_dagster.nodes.connectors.hooks._time_range import bounds


def created_window(
    prepared: PreparedRequest, params: Mapping[str, Any], api: HookApi
) -> PreparedRequest:
    """`created[gte]` and `created[lte]` from the node's window."""
    start, end = bounds(params)
    if start is not None:
        prepared.query.append(("created[gte]", str(int(start.timestamp()))))
    if end is not None:
        prepared.query.append(("created[lte]", str(int(end.timestamp()))))
    return prepared
