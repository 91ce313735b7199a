"""Instagram: a container's media URL by kind, and a post's insights at the post.

Builders give one `media` URL; the Graph API wants `image_url`, or `video_url` with a
`media_type` (REELS for feed videos). Insights of a post live at /{media_id}/insights rather
than the account's.
"""

from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

from flowmaestro_dagster.nodes.connectors.declarative import (
    HookApi,
    ParameterError,
    PreparedRequest,
)

_VIDEO_SUFFIXES = (".mp4", ".mov", ".m4v")


def _media_url(media: Any) -> str:
    if isinstance(media, list):
        if len(media) != 1:
            raise ParameterError(
                "media",
                "parameters.media names several files: a carousel is item containers "
                "(is_carousel_item) joined by a CAROUSEL container's children",
            )
        media = media[0]
    if isinstance(media, Mapping):
        media = media.get("url") or media.get("image_url") or media.get("video_url")
    if not isinstance(media, str) or not media.startswith(("https://", "http://")):
        raise ParameterError("media", "parameters.media must be a public media URL")
    return media


def media_request(
    prepared: PreparedRequest, params: Mapping[str, Any], api: HookApi
) -> PreparedRequest:
    """createMedia: `media` as image_url or video_url (REELS unless a type is given)."""
    if params.get("media") and not (params.get("image_url") or params.get("video_url")):
        url = _media_url(params["media"])
        if url.lower().split("?")[0].endswith(_VIDEO_SUFFIXES):
            prepared.query.append(("video_url", url))
            if not params.get("media_type"):
                prepared.query.append(("media_type", "REELS"))
        else:
            prepared.query.append(("image_url", url))
    kinds = {k for k, _ in prepared.query}
    if not kinds & {"image_url", "video_url"} and params.get("media_type") != "CAROUSEL":
        raise ParameterError("image_url", "createMedia needs an image_url, video_url or media")
    return prepared


def insights_request(
    prepared: PreparedRequest, params: Mapping[str, Any], api: HookApi
) -> PreparedRequest:
    """getInsights: a post's insights when `media_id` is given."""
    media = params.get("media_id")
    if media:
        prepared.path = f"/{quote(str(media), safe='')}/insights"
        prepared.query = [(k, v) for k, v in prepared.query if k != "period"]
    return prepared
