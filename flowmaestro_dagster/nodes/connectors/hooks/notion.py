"""Notion: a page's parent, plain property values and text content as Notion objects.

Builders write `properties: {title: "Q3 plan", Status: "Draft", Votes: 3}`; Notion wants
property values (`{title: [{text: {content}}]}`). A value that already is an object is sent as
it is; otherwise `title` (the title property's id) becomes a title, text becomes rich_text,
numbers `number`, booleans `checkbox`, lists of text `multi_select`. `content` (or a plain-text
`content` property) becomes paragraph blocks, 2,000 characters each (Notion's limit).
"""

from collections.abc import Mapping
from typing import Any

from flowmaestro_dagster.nodes.connectors.declarative import (
    HookApi,
    ParameterError,
    PreparedRequest,
)

TEXT_LIMIT = 2000
_PARENT_KEYS = {"database": "database_id", "page": "page_id"}


def _text(content: str) -> list[dict[str, Any]]:
    return [
        {"text": {"content": content[i : i + TEXT_LIMIT]}}
        for i in range(0, len(content), TEXT_LIMIT)
    ] or [{"text": {"content": ""}}]


def property_value(key: str, value: Any) -> Any:
    """A plain value as a Notion property value (objects pass through)."""
    if isinstance(value, Mapping):
        return dict(value)
    if key.lower() == "title":
        return {"title": _text(str(value))}
    if isinstance(value, bool):
        return {"checkbox": value}
    if isinstance(value, int | float):
        return {"number": value}
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return {"multi_select": [{"name": v} for v in value]}
    return {"rich_text": _text(value if isinstance(value, str) else str(value))}


def paragraphs(content: str) -> list[dict[str, Any]]:
    blocks = []
    for start in range(0, len(content), TEXT_LIMIT):
        chunk = content[start : start + TEXT_LIMIT]
        rich = [{"type": "text", "text": {"content": chunk}}]
        blocks.append({"object": "block", "type": "paragraph", "paragraph": {"rich_text": rich}})
    return blocks


def page_request(
    prepared: PreparedRequest, params: Mapping[str, Any], api: HookApi
) -> PreparedRequest:
    """createPage / updatePage: parent, properties and content in Notion's shapes."""
    body = dict(prepared.json or {})
    raw = dict(params.get("properties") or {})
    creating = "parent_id" in params
    content = params.get("content") if creating else None
    if creating and isinstance(raw.get("content"), str) and content is None:
        content = raw.pop("content")
    if params.get("title") is not None:
        raw.setdefault("title", params["title"])
    if raw or "properties" in body:
        body["properties"] = {key: property_value(key, value) for key, value in raw.items()}
    if creating:
        kind = str(params.get("parent_type") or "database").lower().removesuffix("_id")
        if kind not in _PARENT_KEYS:
            raise ParameterError("parent_type", "parameters.parent_type must be database or page")
        body = {"parent": {_PARENT_KEYS[kind]: params["parent_id"]}, **body}
        body.setdefault("properties", {})
    if content:
        body["children"] = [*body.get("children", []), *paragraphs(str(content))]
    prepared.json = body
    return prepared
