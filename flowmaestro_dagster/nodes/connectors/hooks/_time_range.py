"""Time windows for list operations, shared by the hooks of providers whose list endpoints
filter by time (Stripe, Shopify, QuickBooks, Vercel).

Templates name a window relative to the run (`dateRange: last_24_hours`) or give its ends
(`since`, `until`: an ISO 8601 date or time, or Unix seconds). Both resolve here, in UTC, so
each provider's hook only formats the two instants the way its API wants them.
"""

import re
from datetime import UTC, datetime, timedelta
from typing import Any

from flowmaestro_dagster.nodes.connectors.declarative import ParameterError

_UNIT_SECONDS = {"minute": 60, "hour": 3600, "day": 86_400, "week": 604_800, "month": 2_592_000}
_SHORT_UNITS = {"m": "minute", "h": "hour", "d": "day", "w": "week"}
_RELATIVE = re.compile(r"(?:last|past)[_\s-]*(\d+)?[_\s-]*(minute|hour|day|week|month)s?")
_SHORT = re.compile(r"(\d+)\s*([mhdw])")
MAX_WINDOW = timedelta(days=3660)
"""A window reaching further back than ten years is a typo, not a request."""


def window(
    value: Any, *, field: str = "dateRange", now: datetime | None = None
) -> tuple[datetime, datetime]:
    """(start, end) of a relative window: `last_24_hours`, `past_7_days`, `last_hour`,
    `last_month` (30 days), `24h`, `7d`, `today`, `yesterday` (UTC days)."""
    now = now or datetime.now(UTC)
    text = str(value).strip().lower()
    midnight = now.replace(hour=0, minute=0, second=0, microsecond=0)
    if text == "today":
        return midnight, now
    if text == "yesterday":
        return midnight - timedelta(days=1), midnight
    relative = _RELATIVE.fullmatch(text)
    short = _SHORT.fullmatch(text)
    if relative:
        count, unit = int(relative.group(1) or 1), relative.group(2)
    elif short:
        count, unit = int(short.group(1)), _SHORT_UNITS[short.group(2)]
    else:
        raise ParameterError(
            field,
            f"parameters.{field} must be a window such as last_24_hours, last_7_days, 24h, "
            f"today or yesterday, got {str(value)[:40]!r}",
        )
    span = timedelta(seconds=count * _UNIT_SECONDS[unit])
    if not timedelta(0) < span <= MAX_WINDOW:
        raise ParameterError(field, f"parameters.{field} must be between 1 minute and 10 years")
    return now - span, now


def instant(value: Any, field: str) -> datetime:
    """An ISO 8601 date or date-time (UTC when it names no zone), or Unix seconds."""
    if isinstance(value, bool):
        raise ParameterError(field, f"parameters.{field} must be a date, a time or Unix seconds")
    if isinstance(value, int | float) or (isinstance(value, str) and value.strip().isdigit()):
        return datetime.fromtimestamp(float(value), UTC)
    try:
        parsed = datetime.fromisoformat(str(value).strip().replace("Z", "+00:00"))
    except ValueError:
        raise ParameterError(
            field,
            f"parameters.{field} must be an ISO 8601 date or time, or Unix seconds, "
            f"got {str(value)[:40]!r}",
        ) from None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


def bounds(
    params: Any,
    *,
    since: str = "since",
    until: str = "until",
    date_range: str = "dateRange",
    now: datetime | None = None,
) -> tuple[datetime | None, datetime | None]:
    """The window a node's parameters ask for: explicit ends win over `dateRange`."""
    start = instant(params[since], since) if params.get(since) is not None else None
    end = instant(params[until], until) if params.get(until) is not None else None
    if start is None and params.get(date_range) is not None:
        start, relative_end = window(params[date_range], field=date_range, now=now)
        end = end or relative_end
    return start, end


def iso_z(moment: datetime) -> str:
    """`2024-03-01T12:00:00Z`: seconds precision, UTC."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
