"""Discord: `textOnly` keeps a guild's text and announcement channels (Discord has no
filter parameter for it)."""

from collections.abc import Mapping
from typing import Any

GUILD_TEXT = 0
GUILD_ANNOUNCEMENT = 5


def text_channels(data: Any, params: Mapping[str, Any]) -> Any:
    """listChannels: every channel, or with `textOnly` those messages can be sent to."""
    if not params.get("textOnly") or not isinstance(data, list):
        return data
    return [
        channel
        for channel in data
        if isinstance(channel, Mapping) and channel.get("type") in (GUILD_TEXT, GUILD_ANNOUNCEMENT)
    ]
