"""Typeform: one response is the responses list filtered to its token; the node's output is
that response (None when the form has no such response)."""

from collections.abc import Mapping
from typing import Any


def first_item(data: Any, params: Mapping[str, Any]) -> Any:
    """getResponse: the one item of the filtered list."""
    if isinstance(data, Mapping) and isinstance(data.get("items"), list):
        items = data["items"]
        return items[0] if items else None
    return data
