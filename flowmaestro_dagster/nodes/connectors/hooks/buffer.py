"""Buffer (GraphQL): a post's scheduling mode and media as `CreatePostInput`, and the answer's
GraphQL errors as node errors.

Buffer answers HTTP 200 even when a mutation fails (`errors`, or a `MutationError` in place
of the post), so the output hook raises those with Buffer's message instead of passing a
failure downstream as a result.
"""

from collections.abc import Mapping
from typing import Any

from flowmaestro_dagster.errors import NodeExecutionError
from flowmaestro_dagster.nodes.connectors.declarative import (
    HookApi,
    ParameterError,
    PreparedRequest,
)

_MODES = ("addToQueue", "shareNow", "shareNext", "customScheduled")
_VIDEO_SUFFIXES = (".mp4", ".mov", ".m4v", ".webm", ".avi")


def _single(value: Any, field: str) -> str:
    if isinstance(value, list):
        if len(value) != 1:
            raise ParameterError(
                field, f"Buffer takes one channel per post: parameters.{field} names {len(value)}"
            )
        value = value[0]
    return str(value)


def _assets(media: Any) -> dict[str, Any]:
    """A URL (image or video by its suffix), a list of URLs or `{url}`s, or Buffer's object."""
    if isinstance(media, Mapping) and ("images" in media or "videos" in media):
        return dict(media)
    items = media if isinstance(media, list) else [media]
    images: list[dict[str, str]] = []
    videos: list[dict[str, str]] = []
    for item in items:
        url = item.get("url") if isinstance(item, Mapping) else item
        if not isinstance(url, str) or not url.startswith(("https://", "http://")):
            raise ParameterError("media", "parameters.media must be media URLs (http or https)")
        target = videos if url.lower().split("?")[0].endswith(_VIDEO_SUFFIXES) else images
        target.append({"url": url})
    return {k: v for k, v in (("images", images), ("videos", videos)) if v}


def post_request(
    prepared: PreparedRequest, params: Mapping[str, Any], api: HookApi
) -> PreparedRequest:
    """createPost: one channel, the mode the node's fields imply, and its assets."""
    body = dict(prepared.json or {})
    post = dict(body["variables"]["input"])
    post["channelId"] = _single(params["channel_id"], "channel_id")
    mode = params.get("mode")
    if mode is None:
        if params.get("now"):
            mode = "shareNow"
        elif params.get("due_at"):
            mode = "customScheduled"
        elif params.get("top"):
            mode = "shareNext"
        else:
            mode = "addToQueue"
    if mode not in _MODES:
        raise ParameterError("mode", f"parameters.mode must be one of {', '.join(_MODES)}")
    post["mode"] = mode
    if mode == "customScheduled":
        if not params.get("due_at"):
            raise ParameterError("due_at", "a customScheduled post needs parameters.due_at")
        post["dueAt"] = params["due_at"]
    if params.get("media"):
        post["assets"] = _assets(params["media"])
    body["variables"] = {"input": post}
    prepared.json = body
    return prepared


def _fail(message: str, code: str | None = None) -> NodeExecutionError:
    return NodeExecutionError(
        f"buffer createPost failed: {code + ': ' if code else ''}{message}",
        details={"provider": "buffer", "operation": "createPost", "code": code, "message": message},
    )


def created_post(data: Any, params: Mapping[str, Any]) -> Any:
    """The created post; GraphQL errors and a MutationError raise with Buffer's message."""
    if not isinstance(data, Mapping):
        raise _fail("Buffer returned no GraphQL answer")
    errors = data.get("errors")
    if isinstance(errors, list) and errors:
        first = errors[0] if isinstance(errors[0], Mapping) else {}
        code = (first.get("extensions") or {}).get("code")
        raise _fail(str(first.get("message") or errors[0]), str(code) if code else None)
    result = (data.get("data") or {}).get("createPost") or {}
    if not isinstance(result, Mapping) or "post" not in result:
        message = result.get("message") if isinstance(result, Mapping) else None
        kind = result.get("__typename") if isinstance(result, Mapping) else None
        raise _fail(str(message or "Buffer created no post"), str(kind) if kind else None)
    return result["post"]
