"""Mixpanel: events and profile updates as the JSON arrays the ingestion API takes, and its
verbose answers checked.

An event carries the project token among its properties (/track) or goes with the service
account (/import); a profile update is one object per operation (`$set`, `$add`, ...). With
`verbose=1` Mixpanel answers HTTP 200 `{status: 0, error}` when it refuses a payload: that
becomes a node error, not a result.
"""

import json
from collections.abc import Mapping
from typing import Any

from flowmaestro_dagster.errors import NodeExecutionError
from flowmaestro_dagster.nodes.connectors.declarative import (
    HookApi,
    ParameterError,
    PreparedRequest,
)

_PROFILE_OPERATIONS = (
    ("set", "$set"),
    ("set_once", "$set_once"),
    ("add", "$add"),
    ("append", "$append"),
    ("union", "$union"),
    ("remove", "$remove"),
    ("unset", "$unset"),
)


def _event(params: Mapping[str, Any], token: str | None) -> dict[str, Any]:
    properties = dict(params.get("properties") or {})
    if token:
        properties["token"] = token
    for name, key in (
        ("distinct_id", "distinct_id"),
        ("time", "time"),
        ("insert_id", "$insert_id"),
    ):
        if params.get(name) is not None:
            properties[key] = params[name]
    return {"event": params["event"], "properties": properties}


def track_request(
    prepared: PreparedRequest, params: Mapping[str, Any], api: HookApi
) -> PreparedRequest:
    """trackEvent: `[{event, properties: {token, distinct_id, ...}}]`."""
    prepared.json = [_event(params, str(params["project_token"]))]
    return prepared


def import_request(
    prepared: PreparedRequest, params: Mapping[str, Any], api: HookApi
) -> PreparedRequest:
    """importEvents: the node's `events`, or one from its event fields."""
    events = params.get("events")
    if events is None:
        if not params.get("event"):
            raise ParameterError("events", "importEvents needs parameters.events or .event")
        events = [_event(params, None)]
    for index, event in enumerate(events):
        if not isinstance(event, Mapping) or not event.get("event"):
            raise ParameterError("events", f"parameters.events[{index}] needs an event name")
    prepared.json = list(events)
    return prepared


def profile_request(
    prepared: PreparedRequest, params: Mapping[str, Any], api: HookApi
) -> PreparedRequest:
    """setUserProfile: one update object per profile operation the node gives."""
    base = {"$token": params["project_token"], "$distinct_id": params["distinct_id"]}
    updates = [{**base, key: params[name]} for name, key in _PROFILE_OPERATIONS if params.get(name)]
    if not updates:
        raise ParameterError("set", "setUserProfile needs properties to change (set, add, ...)")
    prepared.json = updates
    return prepared


def group_request(
    prepared: PreparedRequest, params: Mapping[str, Any], api: HookApi
) -> PreparedRequest:
    """setGroupProfile: one update object per operation."""
    base = {
        "$token": params["project_token"],
        "$group_key": params["group_key"],
        "$group_id": params["group_id"],
    }
    updates = [
        {**base, key: params[name]}
        for name, key in (("set", "$set"), ("set_once", "$set_once"), ("unset", "$unset"))
        if params.get(name)
    ]
    if not updates:
        raise ParameterError("set", "setGroupProfile needs properties to change (set, ...)")
    prepared.json = updates
    return prepared


def events_query(
    prepared: PreparedRequest, params: Mapping[str, Any], api: HookApi
) -> PreparedRequest:
    """queryEvents: `event` is a JSON array of names; dates or an interval."""
    if not params.get("interval") and not (params.get("from_date") and params.get("to_date")):
        raise ParameterError("from_date", "queryEvents needs from_date and to_date, or interval")
    prepared.query.append(("event", json.dumps([str(e) for e in params["event"]])))
    return prepared


def accepted(data: Any, params: Mapping[str, Any]) -> Any:
    """A verbose answer: `{status: 1}` passes, `{status: 0, error}` is Mixpanel's refusal."""
    if isinstance(data, Mapping) and data.get("status") == 0:
        message = str(data.get("error") or "Mixpanel refused the payload")
        raise NodeExecutionError(
            f"mixpanel failed: {message}",
            details={"provider": "mixpanel", "code": "0", "message": message},
        )
    return data
