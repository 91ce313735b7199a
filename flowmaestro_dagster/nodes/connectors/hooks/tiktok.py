"""TikTok: named videos go to the query endpoint (`/video/query/`, a filter instead of a
listing), and a video sent as a draft goes to the creator's inbox endpoint, which takes no
post settings.
"""

from collections.abc import Mapping
from typing import Any

from flowmaestro_dagster.nodes.connectors.declarative import (
    HookApi,
    ParameterError,
    PreparedRequest,
)

MAX_QUERY_IDS = 20
"""TikTok's limit of video ids in one query."""


def video_query(
    prepared: PreparedRequest, params: Mapping[str, Any], api: HookApi
) -> PreparedRequest:
    """getVideoMetrics: `/video/query/` with `filters.video_ids` when the node names videos."""
    ids = [str(i) for i in params.get("videoIds") or [] if str(i).strip()]
    if not ids:
        return prepared
    if len(ids) > MAX_QUERY_IDS:
        raise ParameterError("videoIds", f"parameters.videoIds holds more than {MAX_QUERY_IDS}")
    prepared.path = "/video/query/"
    prepared.json = {"filters": {"video_ids": ids}}
    return prepared


def posting_mode(
    prepared: PreparedRequest, params: Mapping[str, Any], api: HookApi
) -> PreparedRequest:
    """createVideo: `draft` uploads to the inbox endpoint with the source only."""
    mode = str(params.get("mode") or "direct").lower()
    if mode in ("draft", "inbox"):
        prepared.path = "/post/publish/inbox/video/init/"
        prepared.json = {"source_info": (prepared.json or {}).get("source_info")}
    elif mode != "direct":
        raise ParameterError("mode", "parameters.mode must be direct or draft")
    return prepared
