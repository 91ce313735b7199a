"""Jira Cloud (REST v3): text as Atlassian Document Format, extra `fields` beside the named
ones, and a transition named by its name.

API v3 takes rich text (an issue's description, a comment's body) only as an ADF document;
builders write plain text. Each blank-line-separated paragraph becomes a paragraph node, its
line breaks hardBreak nodes; a value that already is an ADF document (`{type: doc}`) is sent
as it is.
"""

from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

from flowmaestro_dagster.nodes.connectors.declarative import (
    HookApi,
    ParameterError,
    PreparedRequest,
)


def adf(text: Any) -> Any:
    """Plain text as an ADF document (an ADF document passes through)."""
    if isinstance(text, Mapping) and text.get("type") == "doc":
        return dict(text)
    content = []
    for block in str(text).replace("\r\n", "\n").split("\n\n"):
        if not block.strip():
            continue
        nodes: list[dict[str, Any]] = []
        for index, line in enumerate(block.split("\n")):
            if index:
                nodes.append({"type": "hardBreak"})
            if line:
                nodes.append({"type": "text", "text": line})
        content.append({"type": "paragraph", "content": nodes})
    return {"type": "doc", "version": 1, "content": content}


def issue_fields(
    prepared: PreparedRequest, params: Mapping[str, Any], api: HookApi
) -> PreparedRequest:
    """createIssue / updateIssue: `description` as ADF, and the node's `fields` (custom fields,
    components) merged under the named ones."""
    body = dict(prepared.json or {})
    fields = {**dict(params.get("fields") or {}), **dict(body.get("fields") or {})}
    if params.get("description") is not None:
        fields["description"] = adf(params["description"])
    if fields:
        body["fields"] = fields
    prepared.json = body
    return prepared


def comment_body(
    prepared: PreparedRequest, params: Mapping[str, Any], api: HookApi
) -> PreparedRequest:
    """addComment: the comment's text as ADF."""
    prepared.json = {**(prepared.json or {}), "body": adf(params["body"])}
    return prepared


def transition_by_name(
    prepared: PreparedRequest, params: Mapping[str, Any], api: HookApi
) -> PreparedRequest:
    """transitionIssue: a transition given by name ("Done") is looked up among the issue's
    available transitions (its name, or the status it leads to); a number is its id."""
    wanted = str(params["transition"]).strip()
    if not wanted.isdigit():
        key = quote(str(params["issueIdOrKey"]), safe="")
        listing = api.get(f"/issue/{key}/transitions")
        options = listing.get("transitions") if isinstance(listing, Mapping) else None
        found = None
        for option in options or []:
            if not isinstance(option, Mapping):
                continue
            names = {str(option.get("name", "")).lower()}
            target = option.get("to")
            if isinstance(target, Mapping):
                names.add(str(target.get("name", "")).lower())
            if wanted.lower() in names:
                found = option
                break
        if found is None:
            available = ", ".join(
                str(o.get("name")) for o in options or [] if isinstance(o, Mapping)
            )
            raise ParameterError(
                "transition",
                f"issue {params['issueIdOrKey']} has no transition {wanted!r} "
                f"(available: {available or 'none'})",
            )
        wanted = str(found.get("id"))
    body = dict(prepared.json or {})
    body["transition"] = {"id": wanted}
    prepared.json = body
    return prepared
