"""Gmail: messages are RFC 2822 MIME, base64url-encoded in `raw` (Gmail's send, drafts,
reply and forward take nothing else), built with the standard library's `email` package.

Parameters: `to`, `cc`, `bcc` (a list or comma-separated text), `subject`, `body`, `bodyType`
(`text` or `html`), `replyTo`, `from` (Gmail uses the account's address when it is left
out) and `attachments` (`[{filename, content (base64), mimeType}]`). A line break in a header
is refused (header injection). A reply reads the original's headers first (threading:
`In-Reply-To`, `References`, `threadId`); a forward attaches the original (`message/rfc822`).
"""

import base64
import binascii
import hashlib
from collections.abc import Mapping
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from typing import Any
from urllib.parse import quote

from flowmaestro_dagster.nodes.connectors.declarative import (
    HookApi,
    ParameterError,
    PreparedRequest,
)

_REPLY_HEADERS = ("Subject", "From", "Reply-To", "To", "Cc", "Message-ID", "References")


def _addresses(value: Any) -> str | None:
    if value is None:
        return None
    items = value if isinstance(value, list) else str(value).split(",")
    joined = ", ".join(str(item).strip() for item in items if str(item).strip())
    return joined or None


def _set_header(message: EmailMessage, name: str, value: Any, field: str) -> None:
    if value in (None, ""):
        return
    try:
        message[name] = value
    except ValueError as exc:  # a line break: header injection
        raise ParameterError(field, f"parameters.{field} is not a valid header: {exc}") from None


def build_message(params: Mapping[str, Any]) -> EmailMessage:
    """The MIME message a node's parameters describe."""
    message = EmailMessage(policy=policy.SMTP)
    for name, field in (("From", "from"), ("To", "to"), ("Cc", "cc"), ("Bcc", "bcc")):
        _set_header(message, name, _addresses(params.get(field)), field)
    _set_header(message, "Reply-To", _addresses(params.get("replyTo")), "replyTo")
    _set_header(message, "Subject", params.get("subject"), "subject")
    body = str(params.get("body") or "")
    if str(params.get("bodyType") or "text").lower() in ("html", "text/html"):
        message.set_content(body, subtype="html")
    else:
        message.set_content(body)
    for index, attachment in enumerate(params.get("attachments") or []):
        _attach(message, attachment, index)
    return message


def _attach(message: EmailMessage, attachment: Any, index: int) -> None:
    field = f"attachments[{index}]"
    if not isinstance(attachment, Mapping) or not attachment.get("filename"):
        raise ParameterError("attachments", f"parameters.{field} needs filename and content")
    try:
        data = base64.b64decode(str(attachment.get("content") or ""), validate=False)
    except (binascii.Error, ValueError):
        raise ParameterError("attachments", f"parameters.{field}.content is not base64") from None
    kind = str(attachment.get("mimeType") or "application/octet-stream")
    maintype, _, subtype = kind.partition("/")
    message.add_attachment(
        data,
        maintype=maintype or "application",
        subtype=subtype or "octet-stream",
        filename=str(attachment["filename"]),
    )


def encode(message: EmailMessage) -> str:
    """Gmail's `raw`: the message, base64url-encoded. A multipart boundary is derived from
    the parts (not random), so the same parameters give the same request (a retry sends what
    the first attempt sent; tests compare it)."""
    if message.is_multipart():
        digest = hashlib.sha256()
        for part in message.iter_parts():
            digest.update(part.as_bytes())
        message.set_boundary(f"=_flowmaestro_{digest.hexdigest()[:32]}")
    return base64.urlsafe_b64encode(message.as_bytes()).decode("ascii")


def send_request(
    prepared: PreparedRequest, params: Mapping[str, Any], api: HookApi
) -> PreparedRequest:
    """users.messages.send: `{raw, threadId}`."""
    body: dict[str, Any] = {"raw": encode(build_message(params))}
    if params.get("threadId"):
        body["threadId"] = params["threadId"]
    prepared.json = body
    return prepared


def draft_request(
    prepared: PreparedRequest, params: Mapping[str, Any], api: HookApi
) -> PreparedRequest:
    """users.drafts.create: `{message: {raw, threadId}}`."""
    prepared = send_request(prepared, params, api)
    prepared.json = {"message": prepared.json}
    return prepared


def _original_headers(api: HookApi, message_id: str) -> tuple[dict[str, str], str | None]:
    query = [("format", "metadata"), *(("metadataHeaders", h) for h in _REPLY_HEADERS)]
    original = api.get(f"/users/me/messages/{quote(message_id, safe='')}", query)
    headers: dict[str, str] = {}
    if isinstance(original, Mapping):
        for header in (original.get("payload") or {}).get("headers") or []:
            if isinstance(header, Mapping) and header.get("name"):
                headers[str(header["name"]).lower()] = str(header.get("value") or "")
        thread = original.get("threadId")
        return headers, str(thread) if thread else None
    return headers, None


def reply_request(
    prepared: PreparedRequest, params: Mapping[str, Any], api: HookApi
) -> PreparedRequest:
    """A reply in the original's thread, to its sender (`replyAll`: and its recipients)."""
    headers, thread = _original_headers(api, str(params["messageId"]))
    subject = headers.get("subject", "")
    fields = dict(params)
    fields["to"] = headers.get("reply-to") or headers.get("from")
    if params.get("replyAll"):
        others = [headers.get("to"), headers.get("cc"), _addresses(params.get("cc"))]
        fields["cc"] = _addresses([o for o in others if o])
    fields["subject"] = subject if subject.lower().startswith("re:") else f"Re: {subject}"
    message = build_message(fields)
    original_id = headers.get("message-id")
    if original_id:
        _set_header(message, "In-Reply-To", original_id, "messageId")
        references = " ".join(r for r in (headers.get("references"), original_id) if r)
        _set_header(message, "References", references, "messageId")
    body: dict[str, Any] = {"raw": encode(message)}
    if thread:
        body["threadId"] = thread
    prepared.json = body
    return prepared


def forward_request(
    prepared: PreparedRequest, params: Mapping[str, Any], api: HookApi
) -> PreparedRequest:
    """The node's text with the original message attached as `message/rfc822`."""
    message_id = str(params["messageId"])
    original = api.get(f"/users/me/messages/{quote(message_id, safe='')}", [("format", "raw")])
    raw = original.get("raw") if isinstance(original, Mapping) else None
    if not isinstance(raw, str):
        raise ParameterError("messageId", f"Gmail returned no raw message for {message_id}")
    data = base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4))
    forwarded = BytesParser(policy=policy.SMTP).parsebytes(data)
    subject = str(forwarded.get("Subject") or "")
    fields = dict(params)
    fields["subject"] = subject if subject.lower().startswith("fwd:") else f"Fwd: {subject}"
    message = build_message(fields)
    message.add_attachment(forwarded)
    prepared.json = {"raw": encode(message)}
    return prepared
