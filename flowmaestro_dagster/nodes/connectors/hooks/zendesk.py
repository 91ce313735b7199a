"""Zendesk Support: a new ticket's first comment, and ticket metrics for one ticket or all.

Zendesk makes a ticket's description from its first comment and refuses a ticket without
one; builder templates often give only a subject, which then becomes the comment too.
"""

from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

from flowmaestro_dagster.nodes.connectors.declarative import (
    HookApi,
    ParameterError,
    PreparedRequest,
)

_PAGE_SIZE = "page[size]"


def first_comment(
    prepared: PreparedRequest, params: Mapping[str, Any], api: HookApi
) -> PreparedRequest:
    """createTicket: `comment` (or the subject when the node gives no text) as the ticket's
    first comment."""
    body = dict(prepared.json or {})
    ticket = dict(body.get("ticket") or {})
    comment = dict(ticket.get("comment") or {})
    if "body" not in comment and "html_body" not in comment:
        subject = params.get("subject")
        if not subject:
            raise ParameterError("comment", "createTicket needs parameters.comment or .subject")
        comment["body"] = subject
    ticket["comment"] = comment
    body["ticket"] = ticket
    prepared.json = body
    return prepared


def metrics_path(
    prepared: PreparedRequest, params: Mapping[str, Any], api: HookApi
) -> PreparedRequest:
    """getTicketMetrics: one ticket's metrics when the node names a ticket, else the list."""
    ticket = params.get("ticket_id")
    if ticket is not None:
        text = str(ticket).strip()
        if not text.isdigit():
            raise ParameterError(
                "ticket_id", f"parameters.ticket_id must be a ticket number: {text[:40]!r}"
            )
        prepared.path = f"/tickets/{quote(text, safe='')}/metrics"
        prepared.query = [(k, v) for k, v in prepared.query if k != _PAGE_SIZE]
    return prepared
