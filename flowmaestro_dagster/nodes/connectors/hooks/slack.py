"""Slack Web API: what chat.postMessage and conversations.history need beyond a mapping.

Builders write channels by name (`#engineering`): chat.postMessage takes a name, but
conversations.history takes only an ID, so a name is looked up with conversations.list (a
bounded number of pages). Times arrive as ISO text (`{{trigger.timestamp}}`) where Slack wants
its epoch `ts` ("1714554000.000000"). `blocks` and `attachments` may come as JSON text. A direct
message to an `email` looks the user up first (users.lookupByEmail); chat.postMessage with a
user ID as `channel` posts in the app's DM with that user.
"""

import json
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from flowmaestro_dagster.nodes.connectors.declarative import (
    HookApi,
    ParameterError,
    PreparedRequest,
)

MAX_LOOKUP_PAGES = 10
"""conversations.list pages (1000 channels each) read to find a channel by name."""
_CHANNEL_ID = re.compile(r"[CGD][A-Z0-9]{6,}")
_NUMBER = re.compile(r"\d+(\.\d+)?")
_MS_THRESHOLD = 10**11  # epoch seconds stay below this until the year 5138


def _json_list(params: Mapping[str, Any], name: str) -> list[Any] | None:
    """`blocks` / `attachments` as Slack takes them: a list (JSON text is parsed)."""
    value = params.get(name)
    if value is None:
        return None
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            raise ParameterError(name, f"parameters.{name} must be a list (or its JSON)") from None
    if isinstance(value, dict):
        value = [value]
    if not isinstance(value, list):
        raise ParameterError(name, f"parameters.{name} must be a list of objects")
    return value


def _with_lists(prepared: PreparedRequest, params: Mapping[str, Any]) -> PreparedRequest:
    body = dict(prepared.json or {})
    for name in ("blocks", "attachments"):
        value = _json_list(params, name)
        if value is not None:
            body[name] = value
    prepared.json = body
    return prepared


def blocks_request(
    prepared: PreparedRequest, params: Mapping[str, Any], api: HookApi
) -> PreparedRequest:
    """chat.update: `blocks` / `attachments` as lists."""
    return _with_lists(prepared, params)


def message_request(
    prepared: PreparedRequest, params: Mapping[str, Any], api: HookApi
) -> PreparedRequest:
    """chat.postMessage: text or blocks (Slack refuses a message with neither)."""
    prepared = _with_lists(prepared, params)
    body = prepared.json or {}
    if not body.get("text") and not body.get("blocks") and not body.get("attachments"):
        raise ParameterError("text", "a Slack message needs parameters.text or blocks")
    return prepared


def direct_message_request(
    prepared: PreparedRequest, params: Mapping[str, Any], api: HookApi
) -> PreparedRequest:
    """A DM to `user` (an ID), or to the user whose address is `email`."""
    prepared = message_request(prepared, params, api)
    body = dict(prepared.json or {})
    if not params.get("user"):
        email = params.get("email")
        if not email:
            raise ParameterError("user", "a direct message needs parameters.user or email")
        found = api.get("/users.lookupByEmail", [("email", str(email))])
        user = found.get("user") if isinstance(found, Mapping) else None
        if not isinstance(user, Mapping) or not user.get("id"):
            raise ParameterError("email", f"Slack knows no user with the address {email}")
        body["channel"] = str(user["id"])
    prepared.json = body
    return prepared


def reaction_request(
    prepared: PreparedRequest, params: Mapping[str, Any], api: HookApi
) -> PreparedRequest:
    """reactions.add takes the emoji's name without colons (`:thumbsup:` is `thumbsup`)."""
    body = dict(prepared.json or {})
    body["name"] = str(params["name"]).strip().strip(":")
    prepared.json = body
    return prepared


def slack_ts(value: Any, name: str) -> str:
    """Slack's epoch timestamp from a Slack ts, epoch seconds or milliseconds, or ISO time."""
    text = str(value).strip()
    if _NUMBER.fullmatch(text):
        number = float(text)
        return f"{number / 1000:.6f}" if number >= _MS_THRESHOLD else text
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ParameterError(
            name, f"parameters.{name} must be a Slack timestamp, epoch seconds or an ISO time"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return f"{moment.timestamp():.6f}"


def channel_id(api: HookApi, channel: str) -> str:
    """The channel's ID: as given when it is one, else looked up by name."""
    name = channel.strip()
    if _CHANNEL_ID.fullmatch(name):
        return name
    wanted = name.lstrip("#").lower()
    cursor = ""
    for _ in range(MAX_LOOKUP_PAGES):
        query = [
            ("exclude_archived", "true"),
            ("types", "public_channel,private_channel"),
            ("limit", "1000"),
        ]
        if cursor:
            query.append(("cursor", cursor))
        page = api.get("/conversations.list", query)
        if not isinstance(page, Mapping):
            break
        for item in page.get("channels") or []:
            if isinstance(item, Mapping) and str(item.get("name", "")).lower() == wanted:
                return str(item["id"])
        cursor = str((page.get("response_metadata") or {}).get("next_cursor") or "")
        if not cursor:
            break
    raise ParameterError(
        "channel", f"no channel named #{wanted} that the Slack app can see (or pass its ID)"
    )


def _set_query(prepared: PreparedRequest, name: str, value: str) -> None:
    prepared.query = [(k, v) for k, v in prepared.query if k != name] + [(name, value)]


def history_request(
    prepared: PreparedRequest, params: Mapping[str, Any], api: HookApi
) -> PreparedRequest:
    """conversations.history: the channel's ID, and `oldest` / `latest` as Slack timestamps."""
    _set_query(prepared, "channel", channel_id(api, str(params["channel"])))
    for name in ("oldest", "latest"):
        if params.get(name) not in (None, ""):
            _set_query(prepared, name, slack_ts(params[name], name))
    return prepared
