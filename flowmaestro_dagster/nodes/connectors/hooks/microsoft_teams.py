"""Microsoft Teams (Graph): channels by name, `@odata.nextLink` pages, meeting transcripts.

The builder's templates name channels (`#legal`) where Graph wants a team ID and a channel ID:
a name is looked up among the team's channels (`teamId` given) or the user's joined teams (at
most MAX_TEAMS). Graph pages carry the next page's URL in the body under `@odata.nextLink`,
a key a dotted path cannot name, so list operations follow it here: the request hook hands
the output hook the provider API through the parameters (the executor gives both hooks the
same dict), and the output hook reads the next pages through it, under the connection's base
URL (only the link's path and query are used) and with its credentials, up to `maxPages`
(default DEFAULT_MAX_PAGES, never above HARD_MAX_PAGES) or `top` items. A transcript is the
meeting's latest unless one is named; a meeting may be given by its join URL.
"""

import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qsl, quote, urlsplit

from flowmaestro_dagster.nodes.connectors.declarative import (
    HARD_MAX_PAGES,
    HookApi,
    ParameterError,
    PreparedRequest,
)

DEFAULT_MAX_PAGES = 10
MAX_TEAMS = 50
"""Joined teams searched for a channel given by name."""
API_KEY = "__api"
"""Where a request hook leaves the HookApi for `follow_next_links` (not a parameter name)."""
_CHANNEL_ID = re.compile(r"19:\S+@thread\.[A-Za-z0-9]+")
_VERSIONED = re.compile(r"/(?:v1\.0|beta)(/.*)")
_SAFE = "@:!$'()*,;="  # as the executor encodes a path segment


def _segment(value: Any, name: str) -> str:
    """One path segment: refused when it could step out of its place."""
    text = str(value).strip()
    if not text or text in (".", "..") or "/" in text or "\\" in text:
        raise ParameterError(name, f"parameters.{name} is not a valid id: {text[:80]!r}")
    return quote(text, safe=_SAFE)


def _values(page: Any) -> list[Mapping[str, Any]]:
    items = page.get("value") if isinstance(page, Mapping) else None
    return [i for i in items or [] if isinstance(i, Mapping)]


def _joined_teams(api: HookApi) -> list[str]:
    return [str(team["id"]) for team in _values(api.get("/me/joinedTeams"))[:MAX_TEAMS]]


def team_and_channel(api: HookApi, params: Mapping[str, Any]) -> tuple[str, str]:
    """(team ID, channel ID): as given, or the channel found by its display name."""
    team = params.get("teamId")
    channel = str(params["channelId"]).strip()
    if _CHANNEL_ID.fullmatch(channel):
        if not team:
            raise ParameterError(
                "teamId", "a channel ID needs parameters.teamId (or give the channel's name)"
            )
        return str(team), channel
    wanted = channel.lstrip("#").strip().lower()
    for team_id in [str(team)] if team else _joined_teams(api):
        for item in _values(api.get(f"/teams/{_segment(team_id, 'teamId')}/channels")):
            if str(item.get("displayName", "")).strip().lower() == wanted and item.get("id"):
                return team_id, str(item["id"])
    where = f"team {team}" if team else "the teams you have joined"
    raise ParameterError("channelId", f"no channel named {channel!r} in {where}")


def channel_message_request(
    prepared: PreparedRequest, params: Mapping[str, Any], api: HookApi
) -> PreparedRequest:
    """A channel message or reply: the team and channel IDs in the path."""
    team, channel = team_and_channel(api, params)
    prepared.path = prepared.path.replace(":teamId", _segment(team, "teamId")).replace(
        ":channelId", _segment(channel, "channelId")
    )
    return prepared


def paged_request(
    prepared: PreparedRequest, params: dict[str, Any], api: HookApi
) -> PreparedRequest:
    """A list whose later pages `follow_next_links` reads."""
    params[API_KEY] = api
    return prepared


def channel_messages_request(
    prepared: PreparedRequest, params: dict[str, Any], api: HookApi
) -> PreparedRequest:
    """A channel's messages: the IDs in the path, and the pages after the first."""
    return paged_request(channel_message_request(prepared, params, api), params, api)


def _next_request(link: str) -> tuple[str, list[tuple[str, str]]]:
    """The path under the base URL and the query of an `@odata.nextLink`."""
    parts = urlsplit(link)
    versioned = _VERSIONED.fullmatch(parts.path)
    path = versioned.group(1) if versioned else parts.path
    return path, parse_qsl(parts.query, keep_blank_values=True)


def _count(value: Any, default: int | None) -> int | None:
    try:
        number = int(value)
    except (TypeError, ValueError):
        return default
    return number if number > 0 else default


def follow_next_links(data: Any, params: dict[str, Any]) -> Any:
    """Every page's `value` in the last page's JSON (its `@odata.nextLink` says where a later
    run can continue when the page or item cap stopped the reading)."""
    api = params.pop(API_KEY, None)
    if not isinstance(data, dict) or not isinstance(api, HookApi):
        return data
    limit = _count(params.get("top"), None)
    max_pages = min(_count(params.get("maxPages"), DEFAULT_MAX_PAGES) or 1, HARD_MAX_PAGES)
    items = list(data.get("value") or [])
    page: dict[str, Any] = data
    for _ in range(max_pages - 1):
        link = page.get("@odata.nextLink")
        if not link or (limit is not None and len(items) >= limit):
            break
        path, query = _next_request(str(link))
        following = api.get(path, query)
        if not isinstance(following, dict):
            break
        page = following
        more = page.get("value") or []
        items.extend(more)
        if not more:
            break
    return {**page, "value": items[:limit] if limit is not None else items}


def _odata_text(value: Any) -> str:
    return str(value).replace("'", "''")


def transcript_request(
    prepared: PreparedRequest, params: dict[str, Any], api: HookApi
) -> PreparedRequest:
    """The transcript's content: the meeting by ID or join URL, the transcript by ID or the
    meeting's latest (noted in the parameters for `transcript_output`)."""
    meeting = params.get("meetingId")
    if not meeting:
        join_url = params.get("joinWebUrl")
        if not join_url:
            raise ParameterError(
                "meetingId", "getTranscript needs parameters.meetingId or joinWebUrl"
            )
        query = [("$filter", f"JoinWebUrl eq '{_odata_text(join_url)}'")]
        found = _values(api.get("/me/onlineMeetings", query))
        if not found or not found[0].get("id"):
            raise ParameterError("joinWebUrl", "none of your online meetings has this join URL")
        meeting = found[0]["id"]
    meeting_segment = _segment(meeting, "meetingId")
    transcript = params.get("transcriptId")
    if not transcript:
        listed = _values(api.get(f"/me/onlineMeetings/{meeting_segment}/transcripts"))
        if not listed:
            raise ParameterError("meetingId", "the meeting has no transcript (yet)")
        transcript = max(listed, key=lambda t: str(t.get("createdDateTime") or ""))["id"]
    params["meetingId"], params["transcriptId"] = str(meeting), str(transcript)
    prepared.path = prepared.path.replace(":meetingId", meeting_segment).replace(
        ":transcriptId", _segment(transcript, "transcriptId")
    )
    return prepared


def transcript_output(data: Any, params: Mapping[str, Any]) -> dict[str, Any]:
    """`{meetingId, transcriptId, format, content}`: the WebVTT text with where it came from."""
    return {
        "meetingId": params.get("meetingId"),
        "transcriptId": params.get("transcriptId"),
        "format": "text/vtt",
        "content": data if isinstance(data, str) else "",
    }
