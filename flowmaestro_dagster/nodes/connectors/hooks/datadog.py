"""Datadog: time windows in POSIX seconds (workflows often give `{{$now}}`, an ISO time, or
epoch milliseconds), metric series in the v2 intake shape, incidents' impact flag, and a
monitor's mute as a v2 downtime (the v1 mute endpoint is gone from the reference).
"""

import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from flowmaestro_dagster.nodes.connectors.declarative import (
    HookApi,
    ParameterError,
    PreparedRequest,
)

DEFAULT_WINDOW_S = 3600
"""A window the node leaves open is the last hour."""
MAX_SERIES = 500
"""Points submitted in one node run (Datadog takes 500 KB a payload)."""
_MS_THRESHOLD = 100_000_000_000  # later than 5138 in seconds: the number is milliseconds
_METRIC_TYPES = {"unspecified": 0, "count": 1, "rate": 2, "gauge": 3}


def epoch_seconds(value: Any, name: str) -> int:
    """A time as POSIX seconds: seconds, milliseconds, or an ISO-8601 text."""
    if isinstance(value, bool):
        raise ParameterError(name, f"parameters.{name} must be a time")
    if isinstance(value, int | float):
        number = float(value)
    else:
        text = str(value).strip()
        try:
            number = float(text)
        except ValueError:
            try:
                parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
            except ValueError:
                raise ParameterError(
                    name, f"parameters.{name} must be epoch seconds or an ISO-8601 time"
                ) from None
            if parsed.tzinfo is None:
                parsed = parsed.replace(tzinfo=UTC)
            return int(parsed.timestamp())
    if number > _MS_THRESHOLD:
        number /= 1000
    return int(number)


def _window(prepared: PreparedRequest, params: Mapping[str, Any], start: str, end: str) -> None:
    now = int(time.time())
    until = epoch_seconds(params[end], end) if params.get(end) is not None else now
    since = (
        epoch_seconds(params[start], start)
        if params.get(start) is not None
        else until - DEFAULT_WINDOW_S
    )
    if since > until:
        raise ParameterError(start, f"parameters.{start} is after parameters.{end}")
    kept = [(k, v) for k, v in prepared.query if k not in (start, end)]
    prepared.query = [(start, str(since)), (end, str(until)), *kept]


def metric_window(
    prepared: PreparedRequest, params: Mapping[str, Any], api: HookApi
) -> PreparedRequest:
    """queryMetrics: `from`/`to` as POSIX seconds (default: the last hour)."""
    _window(prepared, params, "from", "to")
    return prepared


def event_window(
    prepared: PreparedRequest, params: Mapping[str, Any], api: HookApi
) -> PreparedRequest:
    """listEvents: `start`/`end` as POSIX seconds (default: the last hour)."""
    _window(prepared, params, "start", "end")
    return prepared


def _metric_type(value: Any) -> int | None:
    if value in (None, ""):
        return None
    if isinstance(value, int) and value in _METRIC_TYPES.values():
        return value
    kind = _METRIC_TYPES.get(str(value).strip().lower())
    if kind is None:
        raise ParameterError("type", "parameters.type must be gauge, count, rate or unspecified")
    return kind


def _value(value: Any, field: str) -> float:
    try:
        if isinstance(value, bool):
            raise ValueError
        return float(value)
    except (TypeError, ValueError):
        raise ParameterError(field, f"parameters.{field}: {value!r} is not a number") from None


def _points(raw: Any, field: str, now: int) -> list[dict[str, Any]]:
    """`[[timestamp, value], ...]`, `[{timestamp, value}, ...]` or one value (now)."""
    if not isinstance(raw, list):
        return [{"timestamp": now, "value": _value(raw, field)}]
    points = []
    for item in raw:
        if isinstance(item, list | tuple) and len(item) == 2:
            stamp, value = item
        elif isinstance(item, Mapping) and "value" in item:
            stamp, value = item.get("timestamp", now), item["value"]
        else:
            raise ParameterError(
                field, f"parameters.{field} holds [timestamp, value] pairs or {{timestamp, value}}"
            )
        points.append({"timestamp": epoch_seconds(stamp, field), "value": _value(value, field)})
    return points


def _series(item: Mapping[str, Any], field: str, now: int) -> dict[str, Any]:
    name = item.get("metric") or item.get("name")
    if not name:
        raise ParameterError(field, f"parameters.{field} needs a metric name")
    if "points" in item:
        points = _points(item["points"], field, now)
    elif "value" in item:
        stamp = epoch_seconds(item["timestamp"], field) if item.get("timestamp") else now
        points = [{"timestamp": stamp, "value": _value(item["value"], field)}]
    else:
        raise ParameterError(field, f"parameters.{field}: metric {name} needs points or a value")
    series: dict[str, Any] = {"metric": str(name), "points": points}
    kind = _metric_type(item.get("type"))
    if kind is not None:
        series["type"] = kind
    tags = item.get("tags")
    if tags:
        series["tags"] = [str(t) for t in (tags if isinstance(tags, list) else [tags])]
    if item.get("host"):
        series["resources"] = [{"name": str(item["host"]), "type": "host"}]
    if item.get("unit"):
        series["unit"] = str(item["unit"])
    return series


def series_request(
    prepared: PreparedRequest, params: Mapping[str, Any], api: HookApi
) -> PreparedRequest:
    """submitMetrics: `metrics` (`[{name, value | points, tags, type, timestamp}]`) or one
    `metric` with `points`, `tags`, `type`, as the v2 series payload."""
    now = int(time.time())
    series: list[dict[str, Any]] = []
    metrics = params.get("metrics")
    if metrics:
        items = metrics if isinstance(metrics, list) else [metrics]
        for item in items:
            if not isinstance(item, Mapping):
                raise ParameterError("metrics", "parameters.metrics holds {name, value} objects")
            series.append(_series(item, "metrics", now))
    if params.get("metric"):
        single = {k: params.get(k) for k in ("metric", "points", "tags", "type", "host", "unit")}
        if single["points"] is None:
            if params.get("value") is None:
                raise ParameterError("points", "parameters.points (or parameters.value) is needed")
            single["points"] = params["value"]
        series.append(_series(single, "points", now))
    if not series:
        raise ParameterError("metric", "parameters.metric (with points) or parameters.metrics")
    if sum(len(s["points"]) for s in series) > MAX_SERIES:
        raise ParameterError("metrics", f"at most {MAX_SERIES} points in one submission")
    prepared.json = {"series": series}
    return prepared


def incident_request(
    prepared: PreparedRequest, params: Mapping[str, Any], api: HookApi
) -> PreparedRequest:
    """createIncident: `customer_impacted` follows `customerImpactScope` (Datadog requires the
    flag, and the scope when it is true); a plain text field value is a dropdown's value."""
    body = dict(prepared.json or {})
    data = dict(body.get("data") or {})
    attributes = dict(data.get("attributes") or {})
    impacted = params.get("customerImpacted")
    attributes["customer_impacted"] = (
        bool(impacted) if impacted is not None else bool(params.get("customerImpactScope"))
    )
    fields = attributes.get("fields")
    if isinstance(fields, Mapping):
        attributes["fields"] = {
            str(k): v if isinstance(v, Mapping) else {"type": "dropdown", "value": v}
            for k, v in fields.items()
        }
    data["attributes"] = attributes
    body["data"] = data
    prepared.json = body
    return prepared


def downtime_request(
    prepared: PreparedRequest, params: Mapping[str, Any], api: HookApi
) -> PreparedRequest:
    """muteMonitor: a downtime on the monitor for `scope` (all of it by default) until `end`
    (epoch seconds, milliseconds or ISO-8601; none: until it is cancelled)."""
    body = dict(prepared.json or {})
    data = dict(body.get("data") or {})
    attributes = dict(data.get("attributes") or {})
    if params.get("end") not in (None, ""):
        end = datetime.fromtimestamp(epoch_seconds(params["end"], "end"), UTC)
        attributes["schedule"] = {"end": end.isoformat().replace("+00:00", "Z")}
    data["attributes"] = attributes
    body["data"] = data
    prepared.json = body
    return prepared
