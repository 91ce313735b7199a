"""Email over SMTP (providers `smtp` and `email`): `sendEmail` / `send` / `sendMessage`.

The server and credentials come from the node's connection (`host`, `port`, `username`,
`password`/`password_env`, `security` starttls|ssl|none, `from_address`), never from the node.
A `gmail` or `microsoft-outlook` node runs here too when its connection says
`connector: smtp` (both offer SMTP with an app password).

Parameters: `to`, `cc`, `bcc` (a list or comma-separated text), `subject`, the body as `body`
/`text`/`message`/`content` (`isHtml: true` sends it as HTML) and/or `html`, `from`, `replyTo`.
Output `{accepted, rejected, messageId}`. Temporary SMTP failures (4xx, dropped connections,
timeouts) are retryable; refused recipients, bad credentials and 5xx answers are not.
"""

import smtplib
import ssl
from email.message import EmailMessage
from email.utils import formatdate, getaddresses, make_msgid
from typing import Any

from flowmaestro_dagster.errors import (
    ConnectorNotConfiguredError,
    NodeConfigurationError,
    NodeExecutionError,
    TransientNodeError,
)
from flowmaestro_dagster.nodes.connectors import ConnectorRegistry, ConnectorRequest

PROVIDERS = ("smtp", "email")
OPERATIONS = ("sendEmail", "send", "sendMessage", "sendMail")
_DEFAULT_PORTS = {"starttls": 587, "ssl": 465, "none": 25}


def register(registry: ConnectorRegistry) -> None:
    for provider in PROVIDERS:
        registry.register(
            provider, OPERATIONS, needs_connection=True, description="email over SMTP"
        )(send_email)


def _addresses(value: Any) -> list[str]:
    if value is None:
        return []
    items = value if isinstance(value, list) else [value]
    texts = [str(i) for i in items if i not in (None, "")]
    return [addr for _, addr in getaddresses(texts) if addr]


def send_email(request: ConnectorRequest) -> dict[str, Any]:
    node = request.node
    connection = request.connection
    if connection is None or not connection.host:
        name = request.connection_name or request.provider
        raise node.error(
            f"no SMTP server configured: set FLOWMAESTRO_CONNECTIONS__{name.upper()}__HOST "
            "(and PORT, USERNAME, PASSWORD_ENV, SECURITY, FROM_ADDRESS)",
            ConnectorNotConfiguredError,
        )
    to = _addresses(request.param("to", "recipients", "recipient"))
    cc = _addresses(request.param("cc"))
    bcc = _addresses(request.param("bcc"))
    sender = request.param("from", "sender") or connection.from_address or connection.username
    if not to and not cc and not bcc:
        raise node.error("an email needs at least one recipient (to)", NodeConfigurationError)
    if not sender:
        raise node.error(
            "an email needs a sender: `from`, or the connection's from_address",
            NodeConfigurationError,
        )
    for address in [*to, *cc, *bcc, *_addresses(sender)]:
        if "@" not in address:
            raise node.error(f"not an email address: {address!r}", NodeConfigurationError)
    message = EmailMessage()
    try:
        message["From"] = str(sender)
        if to:
            message["To"] = ", ".join(to)
        if cc:
            message["Cc"] = ", ".join(cc)
        reply_to = request.param("replyTo", "reply_to")
        if reply_to:
            message["Reply-To"] = ", ".join(_addresses(reply_to))
        message["Subject"] = str(request.param("subject", default=""))
        message["Date"] = formatdate(localtime=False)
        domain = str(sender).rsplit("@", 1)[-1].strip("> ") or None
        message["Message-ID"] = make_msgid(domain=domain)
    except ValueError as exc:  # a header with a line break: an injection attempt or a typo
        raise node.error(f"invalid email header: {exc}", NodeConfigurationError) from exc
    body = request.param("body", "text", "message", "content", default="")
    html = request.param("html", "htmlBody")
    if request.param("isHtml", "is_html") and html is None:
        html, body = body, ""
    message.set_content(str(body or ""))
    if html:
        message.add_alternative(str(html), subtype="html")
    refused = _deliver(request, message, [*to, *cc, *bcc])
    accepted = [a for a in [*to, *cc, *bcc] if a not in refused]
    return {
        "accepted": accepted,
        "rejected": sorted(refused),
        "messageId": message["Message-ID"],
    }


def _deliver(request: ConnectorRequest, message: EmailMessage, recipients: list[str]) -> Any:
    node = request.node
    connection = request.connection
    assert connection is not None and connection.host
    port = connection.port or _DEFAULT_PORTS[connection.security]
    timeout = connection.timeout_s
    server = f"{connection.host}:{port}"
    try:
        client: smtplib.SMTP
        if connection.security == "ssl":
            client = smtplib.SMTP_SSL(
                connection.host, port, timeout=timeout, context=ssl.create_default_context()
            )
        else:
            client = smtplib.SMTP(connection.host, port, timeout=timeout)
        with client:
            if connection.security == "starttls":
                client.starttls(context=ssl.create_default_context())
            password = connection.secret("password")
            if connection.username and password:
                client.login(connection.username, password)
            return client.send_message(message, to_addrs=recipients)
    except smtplib.SMTPAuthenticationError as exc:
        raise node.error(
            f"the SMTP server {server} refused the credentials ({exc.smtp_code})",
            NodeConfigurationError,
        ) from exc
    except smtplib.SMTPRecipientsRefused as exc:
        raise node.error(
            f"the SMTP server refused every recipient: {', '.join(sorted(exc.recipients))}",
            NodeExecutionError,
        ) from exc
    except smtplib.SMTPResponseException as exc:
        cls = TransientNodeError if 400 <= exc.smtp_code < 500 else NodeExecutionError
        error = (
            exc.smtp_error.decode(errors="replace")
            if isinstance(exc.smtp_error, bytes)
            else exc.smtp_error
        )
        raise node.error(f"the SMTP server answered {exc.smtp_code}: {error}", cls) from exc
    except (smtplib.SMTPServerDisconnected, smtplib.SMTPConnectError, OSError) as exc:
        raise node.error(
            f"cannot reach the SMTP server {server}: {type(exc).__name__}: {exc}",
            TransientNodeError,
        ) from exc
    except smtplib.SMTPException as exc:
        raise node.error(f"SMTP error: {exc}", NodeExecutionError) from exc


__all__ = ["OPERATIONS", "PROVIDERS", "register", "send_email"]
