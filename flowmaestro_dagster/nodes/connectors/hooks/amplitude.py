"""Amplitude: an event needs a user or a device, and Identify takes its user properties as
operations (`$set`, `$setOnce`, ...) in a JSON form field.

Amplitude refuses an event with neither `user_id` nor `device_id`; saying so before the call
names the node's field instead of Amplitude's `missing_field`.
"""

import json
from collections.abc import Mapping
from typing import Any

from flowmaestro_dagster.nodes.connectors.declarative import (
    HookApi,
    ParameterError,
    PreparedRequest,
)

_EVENT_FIELDS = (
    "user_id",
    "device_id",
    "event_type",
    "event_properties",
    "user_properties",
    "time",
    "insert_id",
)
_IDENTIFY_OPERATIONS = (
    ("set", "$set"),
    ("setOnce", "$setOnce"),
    ("add", "$add"),
    ("append", "$append"),
    ("prepend", "$prepend"),
)


def _identified(event: Mapping[str, Any], field: str) -> None:
    if not event.get("user_id") and not event.get("device_id"):
        raise ParameterError(
            field, f"Amplitude needs parameters.user_id (userId) or parameters.device_id ({field})"
        )


def require_identity(
    prepared: PreparedRequest, params: Mapping[str, Any], api: HookApi
) -> PreparedRequest:
    """trackEvent: the event names a user or a device."""
    _identified(params, "user_id")
    return prepared


def batch_events(
    prepared: PreparedRequest, params: Mapping[str, Any], api: HookApi
) -> PreparedRequest:
    """trackEvents: the node's `events`, or one event from its event fields."""
    events = params.get("events")
    if events is None:
        if not params.get("event_type"):
            raise ParameterError("events", "trackEvents needs parameters.events or .event_type")
        events = [{k: params[k] for k in _EVENT_FIELDS if params.get(k) is not None}]
    for index, event in enumerate(events):
        if not isinstance(event, Mapping) or not event.get("event_type"):
            raise ParameterError("events", f"parameters.events[{index}] needs an event_type")
        _identified(event, "events")
    prepared.json = {**(prepared.json or {}), "events": list(events)}
    return prepared


def identify_request(
    prepared: PreparedRequest, params: Mapping[str, Any], api: HookApi
) -> PreparedRequest:
    """identifyUser: `identification` is a JSON list of one user and its property operations."""
    _identified(params, "user_id")
    properties: dict[str, Any] = dict(params.get("user_properties") or {})
    for name, operation in _IDENTIFY_OPERATIONS:
        if params.get(name):
            properties[operation] = params[name]
    unset = params.get("unset")
    if unset:
        names = (
            [n.strip() for n in unset.split(",") if n.strip()] if isinstance(unset, str) else unset
        )
        properties["$unset"] = (
            dict(names) if isinstance(names, Mapping) else {str(n): "-" for n in names}
        )
    if not properties:
        raise ParameterError("set", "identifyUser needs user properties to change (set, ...)")
    user = {k: params[k] for k in ("user_id", "device_id") if params.get(k)}
    identification = [{**user, "user_properties": properties}]
    prepared.form = {**(prepared.form or {}), "identification": json.dumps(identification)}
    return prepared
