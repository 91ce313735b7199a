"""Outlook (Graph): a message's recipients as `[{emailAddress: {address, name}}]` and its
body as `{contentType, content}`.

Recipients come as a list or comma-separated text, each an address, `Name <address>` or an
object with `address`/`email` (and `name`). A line break in an address or subject is refused.
"""

from collections.abc import Mapping
from email.utils import parseaddr
from typing import Any

from flowmaestro_dagster.nodes.connectors.declarative import (
    HookApi,
    ParameterError,
    PreparedRequest,
)


def _plain(value: str, field: str) -> str:
    if "\r" in value or "\n" in value:
        raise ParameterError(field, f"parameters.{field} holds a line break")
    return value


def recipients(value: Any, field: str) -> list[dict[str, Any]]:
    """Graph recipients from a node's addresses."""
    if value in (None, ""):
        return []
    items = value if isinstance(value, list) else str(value).split(",")
    out: list[dict[str, Any]] = []
    for item in items:
        if isinstance(item, Mapping):
            if isinstance(item.get("emailAddress"), Mapping):
                out.append({"emailAddress": dict(item["emailAddress"])})
                continue
            address = str(item.get("address") or item.get("email") or "").strip()
            name = str(item.get("name") or "").strip()
        else:
            name, address = parseaddr(str(item).strip())
        if not address:
            continue
        if "@" not in address:
            raise ParameterError(field, f"parameters.{field}: {address!r} is no email address")
        entry = {"address": _plain(address, field)}
        if name:
            entry["name"] = _plain(name, field)
        out.append({"emailAddress": entry})
    return out


def _attachment(item: Any, index: int) -> dict[str, Any]:
    if not isinstance(item, Mapping):
        raise ParameterError("attachments", f"parameters.attachments[{index}] is no object")
    name = item.get("name") or item.get("filename")
    content = item.get("contentBytes") or item.get("content")
    if not name or not content:
        raise ParameterError(
            "attachments", f"parameters.attachments[{index}] needs name and content"
        )
    attachment = {"@odata.type": "#microsoft.graph.fileAttachment", "name": str(name)}
    attachment["contentBytes"] = str(content)
    kind = item.get("contentType") or item.get("mimeType")
    if kind:
        attachment["contentType"] = str(kind)
    return attachment


def mail_request(
    prepared: PreparedRequest, params: Mapping[str, Any], api: HookApi
) -> PreparedRequest:
    """sendMail: `{message: {...}, saveToSentItems}`."""
    to = recipients(params.get("to"), "to")
    if not to:
        raise ParameterError("to", "sendMail needs at least one address in parameters.to")
    message: dict[str, Any] = {}
    if params.get("subject") is not None:
        message["subject"] = _plain(str(params["subject"]), "subject")
    html = str(params.get("bodyType") or "text").lower() in ("html", "text/html")
    message["body"] = {
        "contentType": "HTML" if html else "Text",
        "content": str(params.get("body") or ""),
    }
    message["toRecipients"] = to
    for field, key in (("cc", "ccRecipients"), ("bcc", "bccRecipients"), ("replyTo", "replyTo")):
        listed = recipients(params.get(field), field)
        if listed:
            message[key] = listed
    if params.get("importance"):
        message["importance"] = str(params["importance"]).lower()
    if params.get("attachments"):
        message["attachments"] = [_attachment(a, i) for i, a in enumerate(params["attachments"])]
    body: dict[str, Any] = {"message": message}
    if params.get("saveToSentItems") is not None:
        body["saveToSentItems"] = params["saveToSentItems"]
    prepared.json = body
    return prepared
