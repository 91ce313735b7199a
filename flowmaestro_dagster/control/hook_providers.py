"""Providers' own webhook verification, each checked exactly as the provider documents it, the
event a delivery names (what a trigger's `event` filter compares with), and the providers'
handshakes and delivery ids.

A verifier is chosen when the trigger names its provider and the delivery carries what that
provider sends (its signature header; for Salesforce, an XML body); otherwise the generic
scheme of `hooks.verify` applies. The HMAC providers (GitHub, Stripe, Slack, Shopify, Typeform)
are keyed by a shared secret, Discord by its application's Ed25519 public key; Salesforce signs
nothing, so its outbound messages carry the hook's secret in the URL (`?token=`) and are held to
the organization configured on the connection. docs/triggers.md has the table.
"""

import base64
import hashlib
import hmac
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from defusedxml import ElementTree

from flowmaestro_dagster.control.waitpoints import verify_signature
from flowmaestro_dagster.errors import BadSignature, InvalidRequest
from flowmaestro_dagster.settings import ConnectionSettings
from flowmaestro_dagster.spec.providers import DISCORD_INTERACTIONS

# Slack documents a five-minute window, whatever the platform's callback tolerance is.
SLACK_TOLERANCE_SECONDS = 300.0
# Salesforce cannot send custom headers: the hook's secret rides in this query parameter.
SALESFORCE_TOKEN_PARAM = "token"
XML_MEDIA = frozenset({"text/xml", "application/xml"})


@dataclass(frozen=True)
class Keys:
    """What a verifier may be keyed by: the hook's own secret and the connection named like the
    provider (`FLOWMAESTRO_CONNECTIONS__<PROVIDER>__...`), if any."""

    hook_secret: str
    connection: ConnectionSettings | None = None

    def get(self, name: str) -> str | None:
        """Connection field `name` (or the variable `<name>_env` names), else None."""
        value = self.connection.secret(name) if self.connection else None
        return value.strip() if value else None

    @property
    def signing_secret(self) -> str:
        """The connection's `signing_secret`, else the hook's (GitHub lets its user choose)."""
        return self.get("signing_secret") or self.hook_secret


@dataclass(frozen=True)
class Delivery:
    """A delivery as a verifier sees it: lower-case header names, the raw body, the query."""

    headers: Mapping[str, str]
    body: bytes
    now: float
    tolerance: float
    query: Mapping[str, str] = field(default_factory=dict)


Check = Callable[[Keys, Delivery], None]


def media_type(content_type: str | None) -> str:
    """`text/xml; charset=utf-8` -> `text/xml`."""
    return (content_type or "").split(";", 1)[0].strip().lower()


@dataclass(frozen=True)
class Provider:
    """How one provider's delivery is recognised (`header` present, lower-case; with `media`,
    also a content type among them) and checked (`check`, raising `BadSignature`).
    `secret_params` are query parameters holding the hook's secret, kept out of the inputs."""

    header: str
    check: Check
    media: frozenset[str] = frozenset()
    secret_params: frozenset[str] = frozenset()

    def selects(self, headers: Mapping[str, str]) -> bool:
        if self.header not in headers:
            return False
        return not self.media or media_type(headers[self.header]) in self.media


def _digest(secret: str, message: bytes) -> bytes:
    return hmac.new(secret.encode(), message, hashlib.sha256).digest()


def _same(expected: str, given: str, what: str) -> None:
    given_bytes = given.strip().encode("utf-8", "surrogateescape")
    if not hmac.compare_digest(expected.encode(), given_bytes):
        raise BadSignature(f"bad {what}")


def _timestamp(headers: Mapping[str, str], name: str, now: float, window: float) -> str:
    """Header `name`: unix seconds within `window` of now (a provider's replay guard)."""
    stamp = headers.get(name.lower(), "").strip()
    if not (stamp.isascii() and stamp.isdigit()) or abs(now - int(stamp)) > window:
        raise BadSignature(f"missing or stale {name}")
    return stamp


def _github(keys: Keys, d: Delivery) -> None:
    """`X-Hub-Signature-256: sha256=<hex HMAC-SHA256 of the raw body>`; no timestamp."""
    expected = "sha256=" + _digest(keys.signing_secret, d.body).hex()
    _same(expected, d.headers.get("x-hub-signature-256", ""), "X-Hub-Signature-256")


def _stripe(keys: Keys, d: Delivery) -> None:
    """`Stripe-Signature: t=<unix>,v1=<hex HMAC of "<t>.<body>">` (several v1 allowed)."""
    signature = d.headers.get("stripe-signature")
    secret = keys.signing_secret
    if not verify_signature(secret, signature, d.body, now=d.now, tolerance=d.tolerance):
        raise BadSignature("bad or stale Stripe-Signature")


def _slack(keys: Keys, d: Delivery) -> None:
    """`X-Slack-Signature: v0=<hex HMAC of "v0:<X-Slack-Request-Timestamp>:<body>">`, the
    timestamp within five minutes (Slack's replay protection)."""
    stamp = _timestamp(d.headers, "X-Slack-Request-Timestamp", d.now, SLACK_TOLERANCE_SECONDS)
    expected = "v0=" + _digest(keys.signing_secret, f"v0:{stamp}:".encode() + d.body).hex()
    _same(expected, d.headers.get("x-slack-signature", ""), "X-Slack-Signature")


def _shopify(keys: Keys, d: Delivery) -> None:
    """`X-Shopify-Hmac-Sha256: <base64 HMAC-SHA256 of the raw body>`; no timestamp."""
    expected = base64.b64encode(_digest(keys.signing_secret, d.body)).decode()
    _same(expected, d.headers.get("x-shopify-hmac-sha256", ""), "X-Shopify-Hmac-Sha256")


def _typeform(keys: Keys, d: Delivery) -> None:
    """`Typeform-Signature: sha256=<base64 HMAC-SHA256 of the raw body>`; no timestamp."""
    expected = "sha256=" + base64.b64encode(_digest(keys.signing_secret, d.body)).decode()
    _same(expected, d.headers.get("typeform-signature", ""), "Typeform-Signature")


def _discord(keys: Keys, d: Delivery) -> None:
    """`X-Signature-Ed25519: <hex Ed25519 signature of X-Signature-Timestamp + raw body>` by the
    application's public key (the connection's `public_key`, else its `signing_secret`; never
    the hook's secret, which is no key), the timestamp within the platform's tolerance."""
    stamp = _timestamp(d.headers, "X-Signature-Timestamp", d.now, d.tolerance)
    key = keys.get("public_key") or keys.get("signing_secret")
    if not key:
        raise BadSignature("no public_key on the discord connection")
    try:
        public_key = Ed25519PublicKey.from_public_bytes(bytes.fromhex(key))
    except ValueError:
        raise BadSignature("the discord connection's public_key is not 64 hex digits") from None
    try:
        signature = bytes.fromhex(d.headers.get("x-signature-ed25519", "").strip())
        public_key.verify(signature, stamp.encode() + d.body)
    except (InvalidSignature, ValueError):
        raise BadSignature("bad X-Signature-Ed25519") from None


def _salesforce(keys: Keys, d: Delivery) -> None:
    """An outbound message: the hook's secret as `?token=` (Salesforce signs nothing and sends
    no custom header), then its `OrganizationId` equal to the connection's `organization_id`.
    The token is checked before the XML is read, so strangers' XML is never parsed."""
    _same(keys.hook_secret, d.query.get(SALESFORCE_TOKEN_PARAM, ""), "or missing ?token=")
    wanted = keys.get("organization_id")
    if not wanted:
        raise BadSignature("no organization_id on the salesforce connection")
    got = salesforce_message(d.body)["organizationId"]
    # An org id is 15 characters, or 18 with a case-safe suffix (the form Salesforce sends).
    if got != wanted and not (len(wanted) == 15 and got[:15] == wanted):
        raise BadSignature(f"OrganizationId {got} is not the connection's organization_id")


PROVIDERS: dict[str, Provider] = {
    "github": Provider("x-hub-signature-256", _github),
    "stripe": Provider("stripe-signature", _stripe),
    "slack": Provider("x-slack-signature", _slack),
    "shopify": Provider("x-shopify-hmac-sha256", _shopify),
    "typeform": Provider("typeform-signature", _typeform),
    "discord": Provider("x-signature-ed25519", _discord),
    "salesforce": Provider(
        "content-type",
        _salesforce,
        media=XML_MEDIA,
        secret_params=frozenset({SALESFORCE_TOKEN_PARAM}),
    ),
}


def provider_of(name: str | None) -> Provider | None:
    return PROVIDERS.get(name.strip().lower()) if name else None


# -- Salesforce outbound messages (SOAP 1.1) ---------------------------------------------------

_SOAP = "{http://schemas.xmlsoap.org/soap/envelope/}"
_OUTBOUND = "{http://soap.sforce.com/2005/09/outbound}"
_XSI = "{http://www.w3.org/2001/XMLSchema-instance}"

# What Salesforce must get back, else it redelivers the message for 24 hours.
SALESFORCE_ACK = (
    '<?xml version="1.0" encoding="UTF-8"?>'
    '<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/">'
    "<soapenv:Body>"
    '<notificationsResponse xmlns="http://soap.sforce.com/2005/09/outbound">'
    "<Ack>true</Ack>"
    "</notificationsResponse>"
    "</soapenv:Body>"
    "</soapenv:Envelope>"
)
# Ids joined longer than this become a digest (a message holds up to 100 notifications).
_MAX_JOINED_IDS = 200


def _local(tag: str) -> str:
    return tag.rpartition("}")[2]


def _sobject(element: Any) -> dict[str, Any]:
    """`{"attributes": {"type": "Account"}, "Id": ..., <field>: <text, or None if nil>}` (the
    shape of Salesforce's REST records; outbound message fields are flat)."""
    kind = element.get(f"{_XSI}type", "").rpartition(":")[2]  # `sf:Account`
    record: dict[str, Any] = {"attributes": {"type": kind}}
    for child in element:
        nil = child.get(f"{_XSI}nil") == "true"
        record[_local(child.tag)] = None if nil else (child.text or "")
    return record


def salesforce_message(body: bytes) -> dict[str, Any]:
    """An outbound message as the workflow's `body`: `{"organizationId", "actionId",
    "enterpriseUrl", "partnerUrl", "notificationIds": [...], "sObjects": [...]}`, never its
    `SessionId` (a live API session). Parsed by defusedxml with DTDs refused, so an entity
    bomb or an external entity is 400, like malformed XML or another document."""
    try:
        root = ElementTree.fromstring(body, forbid_dtd=True)
    except (ElementTree.ParseError, ValueError, LookupError) as exc:  # defusedxml's: ValueError
        raise InvalidRequest(f"the body is not a readable XML document: {exc!r}") from None
    notifications = root.find(f"{_SOAP}Body/{_OUTBOUND}notifications")
    if root.tag != f"{_SOAP}Envelope" or notifications is None:
        raise InvalidRequest("not a Salesforce outbound message (soapenv:Envelope/notifications)")

    def text(tag: str) -> str | None:
        value = notifications.findtext(f"{_OUTBOUND}{tag}")
        return value.strip() if value and value.strip() else None

    organization = text("OrganizationId")
    if organization is None:
        raise InvalidRequest("the outbound message names no OrganizationId")
    ids, records = [], []
    for notification in notifications.iterfind(f"{_OUTBOUND}Notification"):
        notification_id = (notification.findtext(f"{_OUTBOUND}Id") or "").strip()
        sobject = notification.find(f"{_OUTBOUND}sObject")
        if not notification_id or sobject is None:
            raise InvalidRequest("a Notification without its Id or sObject")
        ids.append(notification_id)
        records.append(_sobject(sobject))
    if not ids:
        raise InvalidRequest("the outbound message holds no Notification")
    return {
        "organizationId": organization,
        "actionId": text("ActionId"),
        "enterpriseUrl": text("EnterpriseUrl"),
        "partnerUrl": text("PartnerUrl"),
        "notificationIds": ids,
        "sObjects": records,
    }


# -- what a delivery says about itself ---------------------------------------------------------


def _field(payload: Any, *path: str) -> str | None:
    for key in path:
        payload = payload.get(key) if isinstance(payload, dict) else None
    return payload if isinstance(payload, str) and payload else None


def _interaction_type(payload: Any) -> int | None:
    kind = payload.get("type") if isinstance(payload, dict) else None
    return kind if isinstance(kind, int) and not isinstance(kind, bool) else None


# The `data` field that names a Discord interaction's event after its type
# (`spec.providers.DISCORD_INTERACTIONS`, which validation checks a trigger's `event` against).
_INTERACTION_DETAIL: dict[int, str] = {2: "name", 3: "custom_id", 4: "name", 5: "custom_id"}


def _discord_event(payload: Any) -> str | None:
    kind = _interaction_type(payload)
    if kind is None:
        return None
    name = DISCORD_INTERACTIONS.get(kind, f"interaction_{kind}")
    key = _INTERACTION_DETAIL.get(kind)
    detail = _field(payload, "data", key) if key else None
    return f"{name}.{detail}" if detail else name


def _salesforce_event(payload: Any) -> str | None:
    records = payload.get("sObjects") if isinstance(payload, dict) else None
    first = records[0] if isinstance(records, list) and records else None
    return _field(first, "attributes", "type")


def delivery_event(provider: str | None, headers: Mapping[str, str], payload: Any) -> str | None:
    """The event the delivery names, spelled like a trigger's `event`; None when it names none
    (then no filter applies): GitHub `<X-GitHub-Event>.<action>`, Stripe `type`, Slack
    `event.type`, Shopify `X-Shopify-Topic`, Discord `<interaction type>.<command name or
    custom_id>` (`application_command.hello`), Salesforce the sObject type (`Account`)."""
    name = (provider or "").strip().lower()
    if name == "github":
        kind = headers.get("x-github-event", "").strip()
        action = _field(payload, "action")
        return f"{kind}.{action}" if kind and action else kind or None
    if name == "stripe":
        return _field(payload, "type")
    if name == "slack":
        return _field(payload, "event", "type")
    if name == "shopify":
        return headers.get("x-shopify-topic", "").strip() or None
    if name == "discord":
        return _discord_event(payload)
    if name == "salesforce":
        return _salesforce_event(payload)
    return None


def event_matches(wanted: str, got: str, provider: str | None = None) -> bool:
    """`pull_request` takes every `pull_request.<action>`; otherwise the names must be equal.
    Salesforce: the sObject type against the event's part before its first `.`, in any case
    (`opportunity.closed_won` takes `Opportunity`: which change sends the message is the
    outbound message's rule in Salesforce, which the message does not name)."""
    if (provider or "").strip().lower() == "salesforce":
        return wanted.split(".", 1)[0].strip().lower() == got.lower()
    return got == wanted or got.startswith(f"{wanted}.")


def handshake(provider: str | None, payload: Any) -> tuple[str, dict[str, Any]] | None:
    """A provider's endpoint check, which starts nothing: (the reason recorded, the 200 body).
    Slack's `url_verification` (its `challenge` echoed), Discord's PING (`{"type": 1}`, PONG)."""
    name = (provider or "").strip().lower()
    if name == "slack" and _field(payload, "type") == "url_verification":
        challenge = _field(payload, "challenge") or ""
        return "slack url_verification: challenge answered", {"challenge": challenge}
    if name == "discord" and _interaction_type(payload) == 1:
        return "discord PING: PONG answered", {"type": 1}
    return None


# Discord's interaction callback types: a deferred reply ("thinking…") to a command or a modal,
# a deferred update to a button or menu, and an empty choice list to an autocomplete (which
# cannot be deferred).
_DEFERRED_REPLY = 5
_DEFERRED_UPDATE = 6
_AUTOCOMPLETE_RESULT = 8


def interaction_answer(provider: str | None, payload: Any) -> dict[str, Any] | None:
    """What Discord must get within three seconds for an interaction the platform took, else it
    tells the user "interaction failed": a deferred response; the workflow then edits or
    follows up through the interaction's `token`. None for other providers."""
    if (provider or "").strip().lower() != "discord":
        return None
    kind = _interaction_type(payload)
    if kind == 3:
        return {"type": _DEFERRED_UPDATE}
    if kind == 4:
        return {"type": _AUTOCOMPLETE_RESULT, "data": {"choices": []}}
    if kind in (2, 5):
        return {"type": _DEFERRED_REPLY}
    return None


# Where a provider puts its delivery id in the body (a redelivery repeats it): a Stripe event's
# `id` (`evt_…`), a Slack Events API envelope's `event_id` (slash commands and interactivity
# carry none), a Typeform webhook's `event_id`.
_BODY_ID_FIELDS = {"stripe": "id", "slack": "event_id", "typeform": "event_id"}


def provider_delivery_id(provider: str | None, payload: Any) -> str | None:
    """The delivery id a provider puts in the body: a Stripe event's `id`, Slack's and
    Typeform's `event_id`, Salesforce's notification ids (sorted; a redelivery repeats them), a
    Discord interaction's `id`; else None."""
    name = (provider or "").strip().lower()
    if name in _BODY_ID_FIELDS:
        return _field(payload, _BODY_ID_FIELDS[name])
    if name == "discord" and _interaction_type(payload) is not None:
        return _field(payload, "id")
    ids = payload.get("notificationIds") if isinstance(payload, dict) else None
    if name != "salesforce" or not isinstance(ids, list) or not ids:
        return None
    joined = ",".join(sorted(str(i) for i in ids))
    if len(joined) <= _MAX_JOINED_IDS:
        return joined
    return "sha256:" + hashlib.sha256(joined.encode()).hexdigest()
