"""YouTube: a video's watch address beside its id, the authorized channel unless a node names
one, and analytics over a time window (`dateRange: last_24_hours`) as YouTube's dates, with
the report's rows also as objects (`table`) and, for a report without dimensions, `totals`.
"""

from collections.abc import Mapping
from datetime import date, timedelta
from typing import Any

from flowmaestro_dagster.nodes.connectors.declarative import (
    HookApi,
    ParameterError,
    PreparedRequest,
)
from flowmaestro_dagster.nodes.connectors.hooks._time_range import window

WATCH_URL = "https://www.youtube.com/watch?v={id}"


def video_output(data: Any, params: Mapping[str, Any]) -> Any:
    """A video (or a list answer's videos) with its watch `url`."""
    if isinstance(data, Mapping) and isinstance(data.get("items"), list):
        return {**data, "items": [video_output(item, params) for item in data["items"]]}
    if isinstance(data, Mapping) and data.get("kind") == "youtube#video" and data.get("id"):
        return {**data, "url": WATCH_URL.format(id=data["id"])}
    return data


def mine_unless_named(
    prepared: PreparedRequest, params: Mapping[str, Any], api: HookApi
) -> PreparedRequest:
    """getChannel: the authorized user's channel (`mine=true`) when no id is given."""
    if not params.get("channelId"):
        prepared.query = [*prepared.query, ("mine", "true")]
    return prepared


def _day(value: Any, field: str) -> date:
    try:
        return date.fromisoformat(str(value).strip()[:10])
    except ValueError:
        raise ParameterError(field, f"parameters.{field} must be a date (YYYY-MM-DD)") from None


def analytics_window(
    prepared: PreparedRequest, params: Mapping[str, Any], api: HookApi
) -> PreparedRequest:
    """getChannelAnalytics: `startDate`/`endDate` (YouTube's days), from the node's dates or
    its `dateRange` ending at `endDate` (default today, UTC)."""
    start, end = params.get("startDate"), params.get("endDate")
    if start and end:
        return prepared
    until = _day(end, "endDate") if end else None
    if start:
        first = _day(start, "startDate")
        last = until or date.today()
    else:
        since, now = window(params.get("dateRange") or "last_28_days")
        last = until or now.date()
        first = last - timedelta(days=max((now - since).days, 1))
    if first > last:
        raise ParameterError("startDate", "parameters.startDate is after parameters.endDate")
    dates = [("startDate", first.isoformat()), ("endDate", last.isoformat())]
    prepared.query = [(k, v) for k, v in prepared.query if k not in ("startDate", "endDate")]
    prepared.query = [*prepared.query[:1], *dates, *prepared.query[1:]]
    return prepared


def report_output(data: Any, params: Mapping[str, Any]) -> Any:
    """The report, its rows as objects (`table`), and `totals` for a report of one row without
    dimensions."""
    if not isinstance(data, Mapping):
        return data
    headers = data.get("columnHeaders") or []
    names = [str(h.get("name")) for h in headers if isinstance(h, Mapping)]
    rows = [r for r in data.get("rows") or [] if isinstance(r, list)]
    table = [dict(zip(names, row, strict=False)) for row in rows]
    out = {**data, "table": table}
    dimensional = any(
        isinstance(h, Mapping) and h.get("columnType") == "DIMENSION" for h in headers
    )
    if len(table) == 1 and not dimensional:
        out["totals"] = table[0]
    return out
