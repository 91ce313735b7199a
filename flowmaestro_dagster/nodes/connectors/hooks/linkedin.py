"""LinkedIn: URNs (URL-encoded whole in paths and queries), the authenticated member as the
default author or actor (`urn:li:person:<sub>` from the OpenID userinfo), organization ids as
`urn:li:organization:<id>`, post text in LinkedIn's "little text" format (its reserved
characters escaped so a parenthesis cannot cut a post short), and reaction names.
"""

import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

from flowmaestro_dagster.nodes.connectors.declarative import (
    HookApi,
    ParameterError,
    PreparedRequest,
)

_RESERVED = re.compile(r"([\\|{}@\[\]()<>*_~])")
"""Little-text characters that must be escaped (# is left alone: hashtags stay hashtags)."""
REACTIONS = {
    "like": "LIKE",
    "celebrate": "PRAISE",
    "praise": "PRAISE",
    "support": "APPRECIATION",
    "appreciation": "APPRECIATION",
    "love": "EMPATHY",
    "empathy": "EMPATHY",
    "insightful": "INTEREST",
    "interest": "INTEREST",
    "funny": "ENTERTAINMENT",
    "entertainment": "ENTERTAINMENT",
}


def person_urn(api: HookApi) -> str:
    """The authenticated member's URN (OpenID Connect userinfo `sub`)."""
    profile = api.get("/v2/userinfo")
    sub = profile.get("sub") if isinstance(profile, Mapping) else None
    if not sub:
        raise ParameterError("author", "LinkedIn did not say who the authenticated member is")
    return f"urn:li:person:{sub}"


def organization_urn(value: Any) -> str:
    """`12345` or `urn:li:organization:12345` as the URN."""
    text = str(value).strip()
    return text if text.startswith("urn:li:") else f"urn:li:organization:{text}"


def _author(value: Any, api: HookApi) -> str:
    text = str(value or "").strip()
    if not text:
        return person_urn(api)
    if text.startswith("urn:li:"):
        return text
    return f"urn:li:organization:{text}" if text.isdigit() else f"urn:li:person:{text}"


def escape_little_text(text: str) -> str:
    """Text as LinkedIn's little-text format shows it literally."""
    return _RESERVED.sub(r"\\\1", text)


def profile_output(data: Any, params: Mapping[str, Any]) -> Any:
    """getProfile: the userinfo claims and the member's `personUrn` (the author of posts)."""
    if isinstance(data, Mapping) and data.get("sub"):
        return {**data, "personUrn": f"urn:li:person:{data['sub']}"}
    return data


def post_request(
    prepared: PreparedRequest, params: Mapping[str, Any], api: HookApi
) -> PreparedRequest:
    """createPost / createArticlePost: the author (default: the member), the text escaped
    unless `escapeText` is false, an uploaded media URN as the post's media."""
    body = dict(prepared.json or {})
    body["author"] = _author(params.get("author"), api)
    if "commentary" in body and params.get("escapeText", True):
        body["commentary"] = escape_little_text(str(body["commentary"]))
    media = params.get("media")
    if isinstance(media, list):
        media = next((m for m in media if isinstance(m, str) and m.startswith("urn:li:")), None)
    if isinstance(media, str) and media.startswith("urn:li:") and "content" not in body:
        body["content"] = {"media": {"id": media}}
    prepared.json = body
    return prepared


FEED_URL = "https://www.linkedin.com/feed/update/{urn}"
"""A post's public address from its URN (`urn:li:share:...` or `urn:li:ugcPost:...`)."""


def post_output(data: Any, params: Mapping[str, Any], headers: Mapping[str, str]) -> Any:
    """createPost / createArticlePost: the new post's URN (`id`, from x-restli-id, merged by
    the operation's `output.headers`) and its feed `url`."""
    urn = data.get("id") if isinstance(data, Mapping) else None
    urn = urn or headers.get("x-restli-id")
    if not urn or not isinstance(data, Mapping):
        return data
    return {**data, "id": str(urn), "url": FEED_URL.format(urn=str(urn))}


def _encode_after(prepared: PreparedRequest, segment: str, urn: str) -> None:
    """The path segment after `segment` becomes `urn`, URL-encoded whole."""
    parts = prepared.path.split("/")
    index = parts.index(segment) + 1
    parts[index] = quote(urn.strip(), safe="")
    prepared.path = "/".join(parts)


def post_path(
    prepared: PreparedRequest, params: Mapping[str, Any], api: HookApi
) -> PreparedRequest:
    """getPost / deletePost: /rest/posts/{encoded URN}."""
    _encode_after(prepared, "posts", str(params.get("postId") or ""))
    return prepared


def comments_path(
    prepared: PreparedRequest, params: Mapping[str, Any], api: HookApi
) -> PreparedRequest:
    """getComments: /rest/socialActions/{encoded URN}/comments."""
    _encode_after(prepared, "socialActions", str(params.get("postId") or ""))
    return prepared


def comment_request(
    prepared: PreparedRequest, params: Mapping[str, Any], api: HookApi
) -> PreparedRequest:
    """addComment: the actor (default: the member) comments on the post's URN."""
    _encode_after(prepared, "socialActions", str(params.get("postId") or ""))
    body = dict(prepared.json or {})
    body["actor"] = _author(params.get("actor"), api)
    prepared.json = body
    return prepared


def reaction_request(
    prepared: PreparedRequest, params: Mapping[str, Any], api: HookApi
) -> PreparedRequest:
    """addReaction: `?actor=` (default: the member), the reaction by its API or UI name."""
    name = str(params.get("reactionType") or "like").strip()
    kind = REACTIONS.get(name.lower()) or (name if name in REACTIONS.values() else None)
    if kind is None:
        raise ParameterError(
            "reactionType",
            "parameters.reactionType must be like, celebrate, support, love, insightful or funny",
        )
    prepared.query = [*prepared.query, ("actor", _author(params.get("actor"), api))]
    prepared.json = {**(prepared.json or {}), "reactionType": kind}
    return prepared


def organization_query(
    prepared: PreparedRequest, params: Mapping[str, Any], api: HookApi
) -> PreparedRequest:
    """getCompanyUpdates / searchPeople: the organization as its URN in the query."""
    for name in ("author", "organization"):
        prepared.query = [(k, organization_urn(v) if k == name else v) for k, v in prepared.query]
    return prepared
