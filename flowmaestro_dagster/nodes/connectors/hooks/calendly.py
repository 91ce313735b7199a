"""Calendly: resources by URI or UUID, and the connected user as the default owner.

Calendly names everything by URI (`https://api.calendly.com/scheduled_events/GBGB...`) and its
webhooks hand workflows those URIs, while paths take the UUID: an operation's `:uuid` is the
last segment of what the node gives. Query and body fields that Calendly wants as URIs
(`user`, `organization`, `event_type`, `owner`) accept a bare UUID too. Lists without a
`user` or `organization`, and new event types without an `owner`, belong to the connected
user (GET /users/me).
"""

import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote, urlsplit

from flowmaestro_dagster.nodes.connectors.declarative import (
    HookApi,
    ParameterError,
    PreparedRequest,
)

CALENDLY_API = "https://api.calendly.com"
"""Where Calendly's resource URIs point (whatever base URL the connection uses)."""
_UUID = re.compile(r"[A-Za-z0-9_-]+")


def uuid_of(value: Any, name: str) -> str:
    """The UUID of a Calendly URI (its last path segment), or the UUID itself."""
    text = str(value).strip()
    if "://" in text:
        text = urlsplit(text).path.rstrip("/").rsplit("/", 1)[-1]
    if not _UUID.fullmatch(text):
        raise ParameterError(
            name, f"parameters.{name} is not a Calendly URI or UUID: {text[:80]!r}"
        )
    return text


def uri_of(value: Any, collection: str, name: str) -> str:
    """A Calendly URI: as given, or built from a UUID (`users/AAAA`)."""
    text = str(value).strip()
    if text.startswith(("https://", "http://")):
        return text
    return f"{CALENDLY_API}/{collection}/{uuid_of(text, name)}"


def _me(api: HookApi) -> str:
    found = api.get("/users/me")
    resource = found.get("resource") if isinstance(found, Mapping) else None
    if not isinstance(resource, Mapping) or not resource.get("uri"):
        raise ParameterError("user", "Calendly did not say who the connected user is")
    return str(resource["uri"])


def _set_query(prepared: PreparedRequest, name: str, value: str) -> None:
    prepared.query = [(k, v) for k, v in prepared.query if k != name] + [(name, value)]


def resource_path(
    prepared: PreparedRequest, params: Mapping[str, Any], api: HookApi
) -> PreparedRequest:
    """The resource's UUID in place of `:uuid`."""
    prepared.path = prepared.path.replace(":uuid", quote(uuid_of(params["uuid"], "uuid")))
    return prepared


def owned_list_request(
    prepared: PreparedRequest, params: Mapping[str, Any], api: HookApi
) -> PreparedRequest:
    """A list: `user` / `organization` as URIs; neither given: the connected user."""
    if params.get("organization"):
        uri = uri_of(params["organization"], "organizations", "organization")
        _set_query(prepared, "organization", uri)
    if params.get("user"):
        _set_query(prepared, "user", uri_of(params["user"], "users", "user"))
    elif not params.get("organization"):
        prepared.query = [("user", _me(api)), *prepared.query]
    return prepared


def owner_request(
    prepared: PreparedRequest, params: Mapping[str, Any], api: HookApi
) -> PreparedRequest:
    """A new event type's owner: a user URI, by default the connected user."""
    body = dict(prepared.json or {})
    owner = params.get("owner")
    body["owner"] = uri_of(owner, "users", "owner") if owner else _me(api)
    prepared.json = body
    return prepared


def scheduling_link_request(
    prepared: PreparedRequest, params: Mapping[str, Any], api: HookApi
) -> PreparedRequest:
    """A single-use link's owner: the event type's URI."""
    body = dict(prepared.json or {})
    body["owner"] = uri_of(params["eventType"], "event_types", "eventType")
    prepared.json = body
    return prepared


def availability_request(
    prepared: PreparedRequest, params: Mapping[str, Any], api: HookApi
) -> PreparedRequest:
    """Available times: the event type as a URI."""
    _set_query(prepared, "event_type", uri_of(params["eventType"], "event_types", "eventType"))
    return prepared
