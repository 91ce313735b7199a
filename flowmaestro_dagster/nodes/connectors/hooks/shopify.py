"""Shopify: a time window (`since`/`until`, or `dateRange: last_24_hours`) as the orders
list's `created_at_min`/`created_at_max` (ISO 8601).
"""

from collections.abc import Mapping
from typing import Any

from flowmaestro_dagster.nodes.connectors.declarative import HookApi, PreparedRequest
from flowmaestro_dagster.nodes.connectors.hooks._time_range import bounds, iso_z


def created_window(
    prepared: PreparedRequest, params: Mapping[str, Any], api: HookApi
) -> PreparedRequest:
    """`created_at_min` and `created_at_max` from the node's window."""
    start, end = bounds(params)
    if start is not None:
        prepared.query.append(("created_at_min", iso_z(start)))
    if end is not None:
        prepared.query.append(("created_at_max", iso_z(end)))
    return prepared
