"""Providers' own webhook signatures, each checked exactly as the provider documents it, and the
event a delivery names (what a trigger's `event` filter compares with).

A verifier is chosen when the trigger names its provider and the delivery carries that
provider's signature header; without the header the generic scheme of `hooks.verify` applies.
Discord (Ed25519) is not here: it needs a signature library this project does not depend on.
docs/webhooks.md has the table.
"""

import base64
import hashlib
import hmac
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from flowmaestro_dagster.control.waitpoints import verify_signature
from flowmaestro_dagster.errors import BadSignature

# Slack documents a five-minute window, whatever the platform's callback tolerance is.
SLACK_TOLERANCE_SECONDS = 300.0

Check = Callable[[str, Mapping[str, str], bytes, float, float], None]


@dataclass(frozen=True)
class Provider:
    """How one provider signs (`header`, lower-case) and checks a delivery with `check(secret,
    headers, body, now, tolerance)`, raising `BadSignature`."""

    header: str
    check: Check


def _digest(secret: str, message: bytes) -> bytes:
    return hmac.new(secret.encode(), message, hashlib.sha256).digest()


def _same(expected: str, given: str, what: str) -> None:
    if not hmac.compare_digest(expected.encode(), given.strip().encode()):
        raise BadSignature(f"bad {what}")


def _github(secret: str, headers: Mapping[str, str], body: bytes, _: float, __: float) -> None:
    """`X-Hub-Signature-256: sha256=<hex HMAC-SHA256 of the raw body>`; no timestamp."""
    expected = "sha256=" + _digest(secret, body).hex()
    _same(expected, headers.get("x-hub-signature-256", ""), "X-Hub-Signature-256")


def _stripe(secret: str, headers: Mapping[str, str], body: bytes, now: float, tol: float) -> None:
    """`Stripe-Signature: t=<unix>,v1=<hex HMAC of "<t>.<body>">` (several v1 allowed)."""
    if not verify_signature(secret, headers.get("stripe-signature"), body, now=now, tolerance=tol):
        raise BadSignature("bad or stale Stripe-Signature")


def _slack(secret: str, headers: Mapping[str, str], body: bytes, now: float, _: float) -> None:
    """`X-Slack-Signature: v0=<hex HMAC of "v0:<X-Slack-Request-Timestamp>:<body>">`, the
    timestamp within five minutes (Slack's replay protection)."""
    stamp = headers.get("x-slack-request-timestamp", "").strip()
    if not stamp.isdigit() or abs(now - int(stamp)) > SLACK_TOLERANCE_SECONDS:
        raise BadSignature("missing or stale X-Slack-Request-Timestamp")
    expected = "v0=" + _digest(secret, f"v0:{stamp}:".encode() + body).hex()
    _same(expected, headers.get("x-slack-signature", ""), "X-Slack-Signature")


def _shopify(secret: str, headers: Mapping[str, str], body: bytes, _: float, __: float) -> None:
    """`X-Shopify-Hmac-Sha256: <base64 HMAC-SHA256 of the raw body>`; no timestamp."""
    expected = base64.b64encode(_digest(secret, body)).decode()
    _same(expected, headers.get("x-shopify-hmac-sha256", ""), "X-Shopify-Hmac-Sha256")


def _typeform(secret: str, headers: Mapping[str, str], body: bytes, _: float, __: float) -> None:
    """`Typeform-Signature: sha256=<base64 HMAC-SHA256 of the raw body>`; no timestamp."""
    expected = "sha256=" + base64.b64encode(_digest(secret, body)).decode()
    _same(expected, headers.get("typeform-signature", ""), "Typeform-Signature")


PROVIDERS: dict[str, Provider] = {
    "github": Provider("x-hub-signature-256", _github),
    "stripe": Provider("stripe-signature", _stripe),
    "slack": Provider("x-slack-signature", _slack),
    "shopify": Provider("x-shopify-hmac-sha256", _shopify),
    "typeform": Provider("typeform-signature", _typeform),
}


def provider_of(name: str | None) -> Provider | None:
    return PROVIDERS.get(name.strip().lower()) if name else None


def _field(payload: Any, *path: str) -> str | None:
    for key in path:
        payload = payload.get(key) if isinstance(payload, dict) else None
    return payload if isinstance(payload, str) and payload else None


def delivery_event(provider: str | None, headers: Mapping[str, str], payload: Any) -> str | None:
    """The event the delivery names, spelled like a trigger's `event`; None when it names none
    (then no filter applies): GitHub `<X-GitHub-Event>.<action>`, Stripe `type`, Slack
    `event.type`, Shopify `X-Shopify-Topic`."""
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
    return None


def event_matches(wanted: str, got: str) -> bool:
    """`pull_request` takes every `pull_request.<action>`; otherwise the names must be equal."""
    return got == wanted or got.startswith(f"{wanted}.")


def slack_challenge(provider: str | None, payload: Any) -> str | None:
    """Slack's `url_verification` handshake: the `challenge` to echo (it starts nothing)."""
    if (provider or "").strip().lower() != "slack" or _field(payload, "type") != "url_verification":
        return None
    return _field(payload, "challenge") or ""
