"""Intercom: a plain search text as a search query, contacts listed by email, and a
conversation started from a contact's Intercom id (an email is looked up first).

Intercom's search endpoints take a query object ({field, operator, value}, or {operator: AND,
value: [...]}); builder templates give a text (`query: "{{incomingMessage.from}}"`): an email
address matches the author's (or contact's) email exactly, other text is a "contains" match.
"""

from collections.abc import Mapping
from typing import Any

from flowmaestro_dagster.nodes.connectors.declarative import (
    HookApi,
    ParameterError,
    PreparedRequest,
)


def _text_query(value: Any, email_field: str, text_field: str) -> Any:
    if isinstance(value, Mapping):
        return dict(value)
    text = str(value).strip()
    if "@" in text and " " not in text:
        return {"field": email_field, "operator": "=", "value": text}
    return {"field": text_field, "operator": "~", "value": text}


def _with_query(prepared: PreparedRequest, query: Any) -> PreparedRequest:
    prepared.json = {
        "query": query,
        **{k: v for k, v in (prepared.json or {}).items() if k != "query"},
    }
    return prepared


def conversation_query(
    prepared: PreparedRequest, params: Mapping[str, Any], api: HookApi
) -> PreparedRequest:
    """searchConversations: text searches the first message (an email, its author)."""
    return _with_query(prepared, _text_query(params["query"], "source.author.email", "source.body"))


def contact_query(
    prepared: PreparedRequest, params: Mapping[str, Any], api: HookApi
) -> PreparedRequest:
    """searchContacts: text searches names (an email, the contact's email)."""
    return _with_query(prepared, _text_query(params["query"], "email", "name"))


def contacts_by_email(
    prepared: PreparedRequest, params: Mapping[str, Any], api: HookApi
) -> PreparedRequest:
    """listContacts with `email`: Intercom lists contacts unfiltered, so this searches."""
    email = params.get("email")
    if not email:
        return prepared
    pagination = {"per_page": params["per_page"]} if params.get("per_page") else None
    prepared.method = "POST"
    prepared.path = "/contacts/search"
    prepared.query = []
    prepared.json = {"query": {"field": "email", "operator": "=", "value": str(email)}}
    if pagination:
        prepared.json["pagination"] = pagination
    return prepared


def conversation_from(
    prepared: PreparedRequest, params: Mapping[str, Any], api: HookApi
) -> PreparedRequest:
    """createConversation: Intercom starts a conversation from a contact's id; an email is
    looked up first (POST /contacts/search), and the contact's role (user or lead) is the
    sender's type."""
    contact = str(params.get("from_id") or "").strip()
    if "@" not in contact:
        return prepared
    query = {"field": "email", "operator": "=", "value": contact}
    found = api.request(
        "POST", "/contacts/search", json={"query": query, "pagination": {"per_page": 5}}
    )
    listed = found.get("data") if isinstance(found, Mapping) else None
    match = next(
        (c for c in listed or [] if isinstance(c, Mapping) and c.get("id")),
        None,
    )
    if match is None:
        raise ParameterError(
            "from_id",
            f"no Intercom contact has the email {contact[:80]!r} (createContact adds one)",
        )
    sender = {"type": str(match.get("role") or "user"), "id": str(match["id"])}
    prepared.json = {**(prepared.json or {}), "from": sender}
    return prepared
