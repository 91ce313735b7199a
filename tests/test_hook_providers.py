"""Providers' webhook signatures, each built the way the provider documents it, the event a
delivery names, and the builder's warning for a provider nothing verifies."""

import base64
import hashlib
import hmac
import json
import time

import pytest

from flowmaestro_dagster.compile.validation import validate
from flowmaestro_dagster.control.hook_providers import (
    PROVIDERS,
    delivery_event,
    event_matches,
    slack_challenge,
)
from flowmaestro_dagster.errors import BadSignature
from flowmaestro_dagster.spec.providers import VERIFIED_HOOK_PROVIDERS
from tests.builders import flow, node

SECRET = "provider-secret"
BODY = json.dumps({"action": "opened", "type": "invoice.paid"}).encode()
NOW = time.time()


def _mac(message: bytes, secret: str = SECRET) -> bytes:
    return hmac.new(secret.encode(), message, hashlib.sha256).digest()


# Each provider's documented headers, for (secret, body, unix time).
def github(secret: str, body: bytes, _: int) -> dict[str, str]:
    return {"x-hub-signature-256": "sha256=" + _mac(body, secret).hex()}


def stripe(secret: str, body: bytes, t: int) -> dict[str, str]:
    return {"stripe-signature": f"t={t},v1={_mac(f'{t}.'.encode() + body, secret).hex()}"}


def slack(secret: str, body: bytes, t: int) -> dict[str, str]:
    digest = _mac(f"v0:{t}:".encode() + body, secret).hex()
    return {"x-slack-request-timestamp": str(t), "x-slack-signature": f"v0={digest}"}


def shopify(secret: str, body: bytes, _: int) -> dict[str, str]:
    return {"x-shopify-hmac-sha256": base64.b64encode(_mac(body, secret)).decode()}


def typeform(secret: str, body: bytes, _: int) -> dict[str, str]:
    return {"typeform-signature": "sha256=" + base64.b64encode(_mac(body, secret)).decode()}


SIGNERS = {
    "github": github,
    "stripe": stripe,
    "slack": slack,
    "shopify": shopify,
    "typeform": typeform,
}
TIMESTAMPED = ("stripe", "slack")


def check(provider: str, headers: dict[str, str], body: bytes = BODY) -> None:
    PROVIDERS[provider].check(SECRET, headers, body, NOW, 300.0)


def test_the_registry_and_the_builders_list_agree() -> None:
    assert set(PROVIDERS) == VERIFIED_HOOK_PROVIDERS == set(SIGNERS)
    for name, signer in SIGNERS.items():  # the header that selects the verifier is signed
        assert PROVIDERS[name].header in signer(SECRET, BODY, int(NOW))


@pytest.mark.parametrize("provider", sorted(SIGNERS))
def test_a_delivery_signed_as_documented_is_accepted(provider: str) -> None:
    check(provider, SIGNERS[provider](SECRET, BODY, int(NOW)))


@pytest.mark.parametrize("provider", sorted(SIGNERS))
def test_another_secret_or_another_body_is_refused(provider: str) -> None:
    with pytest.raises(BadSignature):
        check(provider, SIGNERS[provider]("other-secret", BODY, int(NOW)))
    with pytest.raises(BadSignature):
        check(provider, SIGNERS[provider](SECRET, BODY, int(NOW)), body=BODY + b" ")
    with pytest.raises(BadSignature):
        check(provider, {})


@pytest.mark.parametrize("provider", TIMESTAMPED)
def test_a_replay_older_than_the_tolerance_is_refused(provider: str) -> None:
    with pytest.raises(BadSignature):
        check(provider, SIGNERS[provider](SECRET, BODY, int(NOW) - 301))
    with pytest.raises(BadSignature):
        check(provider, SIGNERS[provider](SECRET, BODY, int(NOW) + 301))
    check(provider, SIGNERS[provider](SECRET, BODY, int(NOW) - 290))


def test_slack_keeps_its_five_minutes_whatever_the_platform_tolerance() -> None:
    old = slack(SECRET, BODY, int(NOW) - 400)
    with pytest.raises(BadSignature):
        PROVIDERS["slack"].check(SECRET, old, BODY, NOW, 3600.0)


def test_the_event_a_delivery_names() -> None:
    payload = {"action": "opened", "type": "invoice.paid", "event": {"type": "message"}}
    assert delivery_event("github", {"x-github-event": "pull_request"}, payload) == (
        "pull_request.opened"
    )
    assert delivery_event("GitHub", {"x-github-event": "push"}, {}) == "push"
    assert delivery_event("github", {}, payload) is None
    assert delivery_event("stripe", {}, payload) == "invoice.paid"
    assert delivery_event("slack", {}, payload) == "message"
    assert delivery_event("shopify", {"x-shopify-topic": "orders/create"}, None) == "orders/create"
    assert delivery_event("typeform", {}, payload) is None
    assert delivery_event(None, {"x-github-event": "push"}, payload) is None


def test_an_event_filter_takes_the_event_or_its_actions() -> None:
    assert event_matches("pull_request.opened", "pull_request.opened")
    assert event_matches("pull_request", "pull_request.closed")
    assert not event_matches("pull_request.opened", "pull_request.closed")
    assert not event_matches("pull_request", "pull_request_review.submitted")


def test_slack_url_verification_is_a_challenge_only_for_slack() -> None:
    handshake = {"type": "url_verification", "challenge": "c-1", "token": "t"}
    assert slack_challenge("slack", handshake) == "c-1"
    assert slack_challenge("github", handshake) is None
    assert slack_challenge("slack", {"type": "event_callback"}) is None


def test_a_webhook_naming_an_unverified_provider_is_warned() -> None:
    definition = flow(
        [
            node("d", "trigger", triggerType="webhook", webhookProvider="discord"),
            node("g", "trigger", triggerType="webhook", provider="GitHub", event="push"),
            node("m", "trigger", triggerType="manual", provider="salesforce"),
            node("s", "trigger", triggerType="event", provider="salesforce", event="lead"),
            node("o", "output", outputName="x", value="1"),
        ],
        [("d", "o"), ("g", "o"), ("m", "o"), ("s", "o")],
    )
    warned = {
        (p.node_id, p.field)
        for p in validate(definition)
        if p.code == "unverified_hook_provider" and p.severity == "warning"
    }
    assert warned == {("d", "webhookProvider"), ("s", "provider")}
