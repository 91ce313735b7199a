"""X (Twitter) API v2: the authenticated user when a node names none, a post's permalink
beside its id, and threads (X has no thread endpoint: each post replies to the one before).

A thread's earlier posts are sent from the request hook (`api.request("POST", ...)`: the
same client, credentials, size cap, 401 refresh and error mapping as every other request), the
last one by the executor. A failure of a later post sent here is permanent and names the posts
already made (a retry would repeat them). The last post is the executor's request: a 429 on it
retries the node, and X then refuses the repeated first post as duplicate content (a permanent
error).
"""

import json
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

from flowmaestro_dagster.errors import NodeExecutionError
from flowmaestro_dagster.nodes.connectors.declarative import (
    HookApi,
    ParameterError,
    PreparedRequest,
)

PERMALINK = "https://x.com/i/web/status/{id}"
"""A post's public address from its id alone (X redirects it to the author's)."""
MAX_THREAD = 25
_THREAD_KEY = "__twitter_thread__"


def _me(api: HookApi) -> str:
    """The authenticated user's id (GET /users/me)."""
    answer = api.get("/users/me")
    user = answer.get("data") if isinstance(answer, Mapping) else None
    if not isinstance(user, Mapping) or not user.get("id"):
        raise ParameterError("user_id", "X did not say who the authenticated user is")
    return str(user["id"])


def user_request(
    prepared: PreparedRequest, params: Mapping[str, Any], api: HookApi
) -> PreparedRequest:
    """getUser: by username, else the authenticated user (/users/me)."""
    username = str(params.get("username") or "").strip().lstrip("@")
    if username:
        prepared.path = f"/users/by/username/{quote(username, safe='')}"
    return prepared


def timeline_request(
    prepared: PreparedRequest, params: Mapping[str, Any], api: HookApi
) -> PreparedRequest:
    """getUserTimeline: the given user's posts, else the authenticated user's."""
    user_id = str(params.get("user_id") or "").strip() or _me(api)
    prepared.path = f"/users/{quote(user_id, safe='')}/tweets"
    return prepared


def with_permalink(data: Any, params: Mapping[str, Any]) -> Any:
    """The new post (`data`) with its `url`."""
    post = data.get("data") if isinstance(data, Mapping) else None
    if not isinstance(post, Mapping) or not post.get("id"):
        return data
    return {**post, "url": PERMALINK.format(id=post["id"])}


def _thread_texts(raw: Any) -> list[str]:
    """A list of texts (or of `{text}` objects), JSON text of one, or text whose paragraphs
    (blank-line separated) are the posts."""
    if isinstance(raw, str):
        stripped = raw.strip()
        if stripped.startswith("["):
            try:
                raw = json.loads(stripped)
            except ValueError:
                raw = stripped
        if isinstance(raw, str):
            raw = [part for part in raw.split("\n\n")]
    if not isinstance(raw, list):
        raw = [raw]
    texts = []
    for item in raw:
        text = item.get("text") if isinstance(item, Mapping) else item
        if text is not None and str(text).strip():
            texts.append(str(text).strip())
    return texts


def _stopped(
    api: HookApi,
    posted: list[dict[str, Any]],
    index: int,
    total: int,
    reason: str,
    details: Mapping[str, Any],
) -> NodeExecutionError:
    """A permanent error for a thread broken off after some posts: it names them."""
    ids = [str(p["id"]) for p in posted]
    return api.error(
        f"twitter createThread stopped at post {index + 1} of {total} "
        f"(already posted: {', '.join(ids) or 'none'}): {reason}",
        details={**details, "provider": "twitter", "posted": ids},
    )


def thread_request(
    prepared: PreparedRequest, params: Mapping[str, Any], api: HookApi
) -> PreparedRequest:
    """createThread: posts all but the last text here (each a reply to the one before); the
    executor sends the last."""
    texts = _thread_texts(params.get("tweets"))
    if not texts:
        raise ParameterError("tweets", "parameters.tweets needs at least one post")
    if len(texts) > MAX_THREAD:
        raise ParameterError("tweets", f"a thread has at most {MAX_THREAD} posts")
    posted: list[dict[str, Any]] = []
    previous = str(params.get("reply_to_tweet_id") or "") or None
    for index, text in enumerate(texts[:-1]):
        body: dict[str, Any] = {"text": text}
        if previous:
            body["reply"] = {"in_reply_to_tweet_id": previous}
        try:
            answer = api.request("POST", prepared.path, json=body, headers=prepared.headers)
        except NodeExecutionError as exc:
            if not posted:
                raise
            raise _stopped(api, posted, index, len(texts), exc.reason, exc.details) from None
        post = answer.get("data") if isinstance(answer, Mapping) else None
        if not isinstance(post, Mapping) or not post.get("id"):
            raise _stopped(api, posted, index, len(texts), "X answered without a post id", {})
        posted.append(dict(post))
        previous = str(post["id"])
    last: dict[str, Any] = {"text": texts[-1]}
    if previous:
        last["reply"] = {"in_reply_to_tweet_id": previous}
    prepared.json = last
    if isinstance(params, dict):
        params[_THREAD_KEY] = posted
    return prepared


def thread_output(data: Any, params: Mapping[str, Any]) -> Any:
    """Every post of the thread, in order, and the first one's `url`."""
    posted = list(params.get(_THREAD_KEY) or [])
    last = data.get("data") if isinstance(data, Mapping) else None
    if isinstance(last, Mapping):
        posted.append(dict(last))
    if not posted:
        return data
    return {
        "data": posted,
        "ids": [str(p.get("id")) for p in posted],
        "url": PERMALINK.format(id=posted[0].get("id")),
    }
