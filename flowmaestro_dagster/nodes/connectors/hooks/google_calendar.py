"""Google Calendar: event times, attendees and Meet links as Google takes them.

Builders write times as text: "2024-06-03" is an all-day `{date}`, anything else a
`{dateTime}` (with the node's `timeZone`); an event without `end` lasts `duration` minutes
(default 60; all-day: one day). Attendees may be addresses (a list or comma-separated text)
or Google's `{email, ...}` objects. `addMeet` asks for a Google Meet link (`conferenceData`
with a request id derived from the event, so a retried request asks for the same one). List
and free/busy bounds must be RFC 3339: a date is that day's start in UTC, a time without an
offset is UTC.
"""

import hashlib
import json
import re
from collections.abc import Mapping
from datetime import UTC, date, datetime, timedelta
from typing import Any

from flowmaestro_dagster.nodes.connectors.declarative import (
    HookApi,
    ParameterError,
    PreparedRequest,
)

DEFAULT_DURATION_MINUTES = 60
_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")


def _when(value: Any, name: str, time_zone: str | None) -> dict[str, Any]:
    """Google's EventDateTime from text or an object."""
    if isinstance(value, Mapping):
        moment = dict(value)
    else:
        text = str(value).strip()
        if not text:
            raise ParameterError(name, f"parameters.{name} is empty")
        moment = {"date": text} if _DATE.fullmatch(text) else {"dateTime": text}
    if time_zone and "dateTime" in moment and "timeZone" not in moment:
        moment["timeZone"] = time_zone
    return moment


def _parse(text: str, name: str) -> datetime:
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        raise ParameterError(name, f"parameters.{name} is not an ISO date-time: {text!r}") from None


def _end_after(start: Mapping[str, Any], minutes: int) -> dict[str, Any]:
    """An end `minutes` after `start` (all day: the next day; Google's end date is exclusive)."""
    if "date" in start:
        day = date.fromisoformat(str(start["date"]))
        return {"date": (day + timedelta(days=1)).isoformat()}
    end = _parse(str(start.get("dateTime", "")), "start") + timedelta(minutes=minutes)
    moment = {"dateTime": end.isoformat()}
    if "timeZone" in start:
        moment["timeZone"] = start["timeZone"]
    return moment


def _attendees(value: Any) -> list[dict[str, Any]]:
    items = value
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            try:
                items = json.loads(text)
            except ValueError:
                raise ParameterError("attendees", "parameters.attendees is not JSON") from None
        else:
            items = [part.strip() for part in re.split(r"[,;\s]+", text) if part.strip()]
    if isinstance(items, Mapping):
        items = [items]
    if not isinstance(items, list):
        raise ParameterError("attendees", "parameters.attendees must be addresses or objects")
    out = []
    for item in items:
        if isinstance(item, Mapping):
            if not item.get("email"):
                raise ParameterError("attendees", "each attendee object needs an email")
            out.append(dict(item))
        elif str(item).strip():
            out.append({"email": str(item).strip()})
    return out


def _set_query(prepared: PreparedRequest, name: str, value: str) -> None:
    prepared.query = [(k, v) for k, v in prepared.query if k != name] + [(name, value)]


def _event_body(prepared: PreparedRequest, params: Mapping[str, Any]) -> dict[str, Any]:
    body = dict(prepared.json or {})
    time_zone = params.get("timeZone")
    for name in ("start", "end"):
        if params.get(name) not in (None, ""):
            body[name] = _when(params[name], name, time_zone)
    if params.get("attendees") not in (None, ""):
        body["attendees"] = _attendees(params["attendees"])
    return body


def _with_meet(prepared: PreparedRequest, body: dict[str, Any], params: Mapping[str, Any]) -> None:
    if not params.get("addMeet"):
        return
    digest = hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()
    body["conferenceData"] = {
        "createRequest": {
            "requestId": f"flowmaestro-{digest[:24]}",
            "conferenceSolutionKey": {"type": "hangoutsMeet"},
        }
    }
    _set_query(prepared, "conferenceDataVersion", "1")


def create_event_request(
    prepared: PreparedRequest, params: Mapping[str, Any], api: HookApi
) -> PreparedRequest:
    """events.insert: start (required) and end as EventDateTime, attendees as objects."""
    body = _event_body(prepared, params)
    if "start" not in body:
        raise ParameterError("start", "an event needs parameters.start (a date or date-time)")
    if "end" not in body:
        minutes = params.get("duration") or DEFAULT_DURATION_MINUTES
        body["end"] = _end_after(body["start"], int(minutes))
    _with_meet(prepared, body, params)
    prepared.json = body
    return prepared


def update_event_request(
    prepared: PreparedRequest, params: Mapping[str, Any], api: HookApi
) -> PreparedRequest:
    """events.patch: only what the node sets, in Google's shapes."""
    body = _event_body(prepared, params)
    _with_meet(prepared, body, params)
    prepared.json = body
    return prepared


def rfc3339(value: Any, name: str) -> str:
    """A list or free/busy bound: a date is the day's start (UTC); no offset means UTC."""
    text = str(value).strip()
    if _DATE.fullmatch(text):
        return f"{text}T00:00:00Z"
    moment = _parse(text, name)
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC).isoformat().replace("+00:00", "Z")
    return text


def list_events_request(
    prepared: PreparedRequest, params: Mapping[str, Any], api: HookApi
) -> PreparedRequest:
    """events.list: RFC 3339 bounds; `orderBy=startTime` needs `singleEvents=true`."""
    for name in ("timeMin", "timeMax"):
        if params.get(name) not in (None, ""):
            _set_query(prepared, name, rfc3339(params[name], name))
    if params.get("orderBy") == "startTime" and params.get("singleEvents") is None:
        _set_query(prepared, "singleEvents", "true")
    return prepared


def free_busy_request(
    prepared: PreparedRequest, params: Mapping[str, Any], api: HookApi
) -> PreparedRequest:
    """freebusy.query: RFC 3339 bounds and `items: [{id}]` (default: the primary calendar)."""
    body = dict(prepared.json or {})
    for name in ("timeMin", "timeMax"):
        body[name] = rfc3339(params[name], name)
    raw = params.get("items")
    if isinstance(raw, str):
        raw = [part.strip() for part in raw.split(",") if part.strip()]
    elif isinstance(raw, Mapping):
        raw = [raw]
    items = []
    for item in raw or ["primary"]:
        identifier = item.get("id") if isinstance(item, Mapping) else item
        if not identifier:
            raise ParameterError("items", "parameters.items: each calendar needs an id")
        items.append({"id": str(identifier)})
    body["items"] = items
    prepared.json = body
    return prepared
