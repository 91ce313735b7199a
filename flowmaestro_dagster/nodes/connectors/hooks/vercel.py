"""Vercel: Web Analytics queries need both ends of their window (`since`, `until`); a
relative `dateRange` (default the last 7 days) gives them when the node does not."""

from collections.abc import Mapping
from typing import Any

from flowmaestro_dagster.nodes.connectors.declarative import HookApi, PreparedRequest
from flowmaestro_dagster.nodes.connectors.hooks._time_range import bounds, iso_z, window


def analytics_window(
    prepared: PreparedRequest, params: Mapping[str, Any], api: HookApi
) -> PreparedRequest:
    """getAnalytics: `since` and `until` as ISO 8601 UTC times."""
    start, end = bounds(params)
    if start is None or end is None:
        relative_start, relative_end = window(params.get("dateRange") or "last_7_days")
        start, end = start or relative_start, end or relative_end
    prepared.query += [("since", iso_z(start)), ("until", iso_z(end))]
    return prepared
