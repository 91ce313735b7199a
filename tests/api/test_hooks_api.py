"""Webhook triggers: verification, deduplication, limits, the inputs a delivery becomes, and the
owner's views of triggers and deliveries (SQLite and PostgreSQL; launches are deferred)."""

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fastapi.testclient import TestClient
from httpx2 import Response  # what starlette's TestClient answers with
from pydantic import SecretStr

from flowmaestro_api.main import create_app
from flowmaestro_api.settings import ApiSettings
from flowmaestro_dagster.control.hook_providers import SALESFORCE_ACK
from flowmaestro_dagster.control.waitpoints import sign
from flowmaestro_dagster.settings import ConnectionSettings
from flowmaestro_dagster.store.db import get_engine, session_scope
from flowmaestro_dagster.store.models import Execution
from tests.api.conftest import deployed_workflow, row_counts
from tests.builders import flow, node
from tests.test_hook_providers import (
    ACCOUNTS,
    BOMB,
    DISCORD_CONNECTION,
    EXTERNAL,
    ORG_ID,
    PRIVATE_KEY,
    discord,
    github,
    outbound_message,
    shopify,
    slack,
    stripe,
    typeform,
)

HOOKED = flow(
    [
        node("hook", "trigger", label="Order", triggerType="webhook", outputVariable="event"),
        node(
            "gh",
            "trigger",
            label="PR",
            triggerType="webhook",
            provider="github",
            event="pull_request.opened",
            outputVariable="pr",
        ),
        node("cron", "trigger", label="Nightly", triggerType="schedule", schedule="0 3 * * *"),
        node("out", "output", label="Order", outputName="order", value="{{event.body.order}}"),
    ],
    [("hook", "out"), ("gh", "out"), ("cron", "out")],
    name="Hooked",
)


@pytest.fixture
def hooks(client: TestClient, auth: dict[str, str]) -> dict[str, dict[str, Any]]:
    """The deployed workflow's triggers by id, as its owner lists them."""
    workflow_id = deployed_workflow(client, auth, HOOKED)
    response = client.get(f"/workflows/{workflow_id}/triggers", headers=auth)
    assert response.status_code == 200, response.text
    return {t["id"]: {**t, "workflow_id": workflow_id} for t in response.json()["items"]}


def path(hook: dict[str, Any]) -> str:
    return f"/hooks/{hook['workflow_id']}/{hook['id']}"


def signed(
    client: TestClient,
    hook: dict[str, Any],
    payload: Any,
    *,
    secret: str | None = None,
    at: float | None = None,
    headers: dict[str, str] | None = None,
    url: str | None = None,
) -> Response:
    body = json.dumps(payload).encode()
    signature = sign(secret or hook["secret"], body, int(at if at is not None else time.time()))
    return client.post(
        url or path(hook),
        content=body,
        headers={
            "content-type": "application/json",
            "X-FlowMaestro-Signature": signature,
            **(headers or {}),
        },
    )


def execution_inputs(database_url: str, execution_id: str) -> dict[str, Any]:
    with session_scope(get_engine(database_url)) as session:
        row = session.get(Execution, execution_id)
        assert row is not None
        return dict(row.inputs)


def deliveries(client: TestClient, auth: dict[str, str], hook: dict[str, Any]) -> list[Any]:
    url = f"/workflows/{hook['workflow_id']}/triggers/{hook['id']}/deliveries"
    response = client.get(url, headers=auth)
    assert response.status_code == 200, response.text
    items: list[Any] = response.json()["items"]
    return items


def test_triggers_list_urls_and_secrets_of_webhooks_only(
    hooks: dict[str, dict[str, Any]], api_settings: ApiSettings
) -> None:
    assert set(hooks) == {"hook", "gh", "cron"}
    hook, github, cron = hooks["hook"], hooks["gh"], hooks["cron"]
    base = api_settings.public_api_url.rstrip("/")
    assert hook["webhook"] and hook["url"] == f"{base}{path(hook)}"
    assert github["webhook"] and github["provider"] == "github"
    assert github["event"] == "pull_request.opened"
    assert cron["webhook"] is False and cron["url"] is None and cron["secret"] is None
    # One secret per hook, and stable: derived, not stored.
    assert len({hook["secret"], github["secret"]}) == 2
    assert len(hook["secret"]) == 64


def test_triggers_listing_is_the_owners_only(
    client: TestClient,
    auth: dict[str, str],
    other_auth: dict[str, str],
    hooks: dict[str, dict[str, Any]],
) -> None:
    workflow_id = hooks["hook"]["workflow_id"]
    assert client.get(f"/workflows/{workflow_id}/triggers").status_code == 401
    assert client.get(f"/workflows/{workflow_id}/triggers", headers=other_auth).status_code == 404
    url = f"/workflows/{workflow_id}/triggers/hook/deliveries"
    assert client.get(url, headers=other_auth).status_code == 404
    again = client.get(f"/workflows/{workflow_id}/triggers", headers=auth).json()["items"]
    assert {t["id"]: t["secret"] for t in again} == {k: v["secret"] for k, v in hooks.items()}


def test_a_signed_delivery_starts_an_execution_with_the_mapped_inputs(
    client: TestClient, hooks: dict[str, dict[str, Any]], database_url: str
) -> None:
    hook = hooks["hook"]
    response = signed(
        client,
        hook,
        {"order": 42, "items": ["a"]},
        headers={"X-Shop": "eu", "Cookie": "s=1", "X-Gitlab-Token": "t"},
        url=f"{path(hook)}?source=shop&tag=a&tag=b",
    )
    assert response.status_code == 202, response.text
    execution_id = response.json()["execution_id"]
    assert response.json()["status"] == "accepted"
    assert response.headers["location"] == f"/executions/{execution_id}"
    inputs = execution_inputs(database_url, execution_id)
    assert inputs["body"] == {"order": 42, "items": ["a"]}
    assert inputs["query"] == {"source": "shop", "tag": ["a", "b"]}
    assert inputs["headers"]["x-shop"] == "eu"
    assert inputs["headers"]["content-type"] == "application/json"
    leaked = {"x-flowmaestro-signature", "cookie", "x-gitlab-token", "authorization"}
    assert leaked.isdisjoint(inputs["headers"])


def test_bearer_secret_is_accepted_and_form_and_text_bodies_are_read(
    client: TestClient, hooks: dict[str, dict[str, Any]], database_url: str
) -> None:
    hook = hooks["gh"]
    bearer = {"Authorization": f"Bearer {hook['secret']}"}
    form = client.post(path(hook), data={"a": "1", "b": "x y"}, headers=bearer)
    assert form.status_code == 202, form.text
    inputs = execution_inputs(database_url, form.json()["execution_id"])
    assert inputs["body"] == {"a": "1", "b": "x y"}
    assert "authorization" not in inputs["headers"]
    text = client.post(
        path(hook), content=b"ping", headers={**bearer, "content-type": "text/plain"}
    )
    assert text.status_code == 202
    assert execution_inputs(database_url, text.json()["execution_id"])["body"] == "ping"


def test_bad_signature_is_401_and_only_a_rejected_delivery_is_recorded(
    client: TestClient, auth: dict[str, str], hooks: dict[str, dict[str, Any]], database_url: str
) -> None:
    hook = hooks["hook"]
    before = row_counts(database_url)
    response = signed(client, hook, {"order": 1}, secret="not-the-secret")
    assert response.status_code == 401
    assert response.json()["code"] == "bad_signature"
    wrong_bearer = client.post(
        path(hook), json={"order": 1}, headers={"Authorization": "Bearer nope"}
    )
    assert wrong_bearer.status_code == 401
    # The secret of another hook does not open this one.
    assert signed(client, hook, {"order": 1}, secret=hooks["gh"]["secret"]).status_code == 401
    unsigned = client.post(path(hook), json={"order": 1})
    assert unsigned.status_code == 401
    after = row_counts(database_url)
    assert after["executions"] == before["executions"]
    assert after["idempotency_keys"] == before["idempotency_keys"]
    assert after["webhook_deliveries"] == before["webhook_deliveries"] + 4
    rows = deliveries(client, auth, hook)
    assert [r["outcome"] for r in rows] == ["rejected"] * 4
    assert all(r["execution_id"] is None and "401" in r["reason"] for r in rows)


def test_non_ascii_signature_or_bearer_is_401_not_500(
    client: TestClient, hooks: dict[str, dict[str, Any]]
) -> None:
    hook = hooks["hook"]
    for header in (
        {"X-FlowMaestro-Signature": f"t={int(time.time())},v1=\u00e9\u00e9"},
        {"Authorization": "Bearer \u00e9t\u00e9"},
    ):
        raw = {k: v.encode("latin-1") for k, v in header.items()}
        response = client.post(path(hook), json={"order": 1}, headers=raw)
        assert response.status_code == 401, response.text


def test_a_stale_or_future_timestamp_is_401(
    client: TestClient, hooks: dict[str, dict[str, Any]], api_settings: ApiSettings
) -> None:
    hook = hooks["hook"]
    tolerance = api_settings.callback_tolerance_seconds
    stale = signed(client, hook, {"order": 1}, at=time.time() - tolerance - 60)
    assert stale.status_code == 401
    future = signed(client, hook, {"order": 1}, at=time.time() + tolerance + 60)
    assert future.status_code == 401
    assert signed(client, hook, {"order": 1}, at=time.time() - tolerance + 30).status_code == 202


def test_unknown_or_undeployed_hooks_are_404(
    client: TestClient, auth: dict[str, str], hooks: dict[str, dict[str, Any]], database_url: str
) -> None:
    hook = hooks["hook"]
    before = row_counts(database_url)
    unknown_trigger = {**hook, "id": "nope"}
    assert signed(client, unknown_trigger, {}, secret=hook["secret"]).status_code == 404
    unknown_workflow = {**hook, "workflow_id": "00000000-0000-0000-0000-000000000000"}
    assert signed(client, unknown_workflow, {}, secret=hook["secret"]).status_code == 404
    # A schedule trigger has no URL.
    assert signed(client, hooks["cron"], {}, secret=hook["secret"]).status_code == 404
    draft = client.post("/workflows", json={"definition": HOOKED}, headers=auth).json()["id"]
    undeployed = {**hook, "workflow_id": draft}
    assert signed(client, undeployed, {}, secret=hook["secret"]).status_code == 404
    assert row_counts(database_url)["webhook_deliveries"] == before["webhook_deliveries"]


def test_other_content_types_are_415(
    client: TestClient, auth: dict[str, str], hooks: dict[str, dict[str, Any]]
) -> None:
    hook = hooks["hook"]
    response = client.post(
        path(hook),
        content=b"\x00\x01",
        headers={"content-type": "application/octet-stream", "Authorization": "Bearer x"},
    )
    assert response.status_code == 415
    assert response.json()["code"] == "unsupported_media_type"
    assert deliveries(client, auth, hook)[0]["outcome"] == "rejected"


@pytest.fixture
def small_client(api_settings: ApiSettings) -> Iterator[TestClient]:
    settings = api_settings.model_copy(update={"hook_max_body_bytes": 1024})
    with TestClient(create_app(settings), raise_server_exceptions=False) as test_client:
        yield test_client


def test_bodies_over_the_limit_are_413_declared_or_chunked(
    small_client: TestClient, auth: dict[str, str], database_url: str
) -> None:
    workflow_id = deployed_workflow(small_client, auth, HOOKED)
    hook = {
        **small_client.get(f"/workflows/{workflow_id}/triggers", headers=auth).json()["items"][0],
        "workflow_id": workflow_id,
    }
    before = row_counts(database_url)["executions"]
    big = {"order": "x" * 2000}
    assert signed(small_client, hook, big).status_code == 413

    def chunks() -> Iterator[bytes]:  # no Content-Length: Transfer-Encoding: chunked
        for _ in range(5):
            yield b"x" * 400

    bearer = {"Authorization": f"Bearer {hook['secret']}", "content-type": "text/plain"}
    chunked = small_client.post(path(hook), content=chunks(), headers=bearer)
    assert chunked.status_code == 413
    assert chunked.json()["code"] == "payload_too_large"
    small = small_client.post(path(hook), content=iter([b"ok"] * 3), headers=bearer)
    assert small.status_code == 202
    assert row_counts(database_url)["executions"] == before + 1


def test_a_repeated_delivery_replays_the_first_execution(
    client: TestClient, auth: dict[str, str], hooks: dict[str, dict[str, Any]], database_url: str
) -> None:
    hook = hooks["gh"]
    first = signed(client, hook, {"order": 7}, headers={"X-GitHub-Delivery": "d-1"})
    assert first.status_code == 202
    # A redelivery: same id, a fresh signature and another header; still the same execution.
    again = signed(client, hook, {"order": 7}, headers={"X-GitHub-Delivery": "d-1", "X-Retry": "1"})
    assert again.status_code == 200
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.json() == {"status": "duplicate", "execution_id": first.json()["execution_id"]}
    # Idempotency-Key wins over a provider's header; no id at all: every delivery is new.
    keyed = signed(client, hook, {}, headers={"Idempotency-Key": "k", "X-Request-Id": "d-1"})
    assert keyed.status_code == 202
    assert signed(client, hook, {}).status_code == 202
    assert signed(client, hook, {}).status_code == 202
    # Scoped to the trigger: the same delivery id on another hook starts its own execution.
    other = signed(client, hooks["hook"], {"order": 7}, headers={"X-GitHub-Delivery": "d-1"})
    assert other.status_code == 202
    rows = deliveries(client, auth, hook)
    assert [r["outcome"] for r in rows] == ["accepted"] * 3 + ["duplicate", "accepted"]
    assert rows[3]["delivery_id"] == "d-1"
    assert rows[3]["execution_id"] == first.json()["execution_id"]
    # A duplicate prevented, counted on the execution (workflow analytics' duplicates_prevented).
    with session_scope(get_engine(database_url)) as session:
        execution = session.get(Execution, first.json()["execution_id"])
        assert execution is not None and execution.replays == 1
    assert row_counts(database_url)["executions"] == 5


def test_deliveries_are_listed_newest_first_with_a_limit(
    client: TestClient, auth: dict[str, str], hooks: dict[str, dict[str, Any]]
) -> None:
    hook = hooks["hook"]
    for n in range(3):
        signed(client, hook, {"order": n}, headers={"X-Request-Id": f"r{n}"})
    url = f"/workflows/{hook['workflow_id']}/triggers/{hook['id']}/deliveries?limit=2"
    rows = client.get(url, headers=auth).json()["items"]
    assert [r["delivery_id"] for r in rows] == ["r2", "r1"]
    assert deliveries(client, auth, hooks["gh"]) == []


# -- providers' own signatures (tests/test_hook_providers.py has each verifier) -----------------

PROVIDED = flow(
    [
        node("gh", "trigger", triggerType="webhook", provider="github", event="pull_request"),
        node("pay", "trigger", triggerType="webhook", provider="stripe", event="invoice.paid"),
        node("chat", "trigger", triggerType="webhook", provider="slack", event="message"),
        node("shop", "trigger", triggerType="webhook", webhookProvider="shopify"),
        node("form", "trigger", triggerType="webhook", provider="typeform", event="form.submitted"),
        node("acme", "trigger", triggerType="webhook", provider="acme", event="order.paid"),
        node("out", "output", outputName="ok", value="1"),
    ],
    [
        ("gh", "out"),
        ("pay", "out"),
        ("chat", "out"),
        ("shop", "out"),
        ("form", "out"),
        ("acme", "out"),
    ],
    name="Provided",
)
STRIPE_SECRET = "whsec_from_the_stripe_dashboard"
SLACK_SECRET = "slack-app-signing-secret"


@pytest.fixture
def provided(
    api_settings: ApiSettings, auth: dict[str, str]
) -> Iterator[tuple[TestClient, dict[str, dict[str, Any]]]]:
    """PROVIDED deployed on an API whose stripe and slack connections hold signing secrets."""
    connections = {
        "stripe": ConnectionSettings(signing_secret=SecretStr(STRIPE_SECRET)),
        "slack": ConnectionSettings(signing_secret=SecretStr(SLACK_SECRET)),
    }
    settings = api_settings.model_copy(update={"connections": connections})
    with TestClient(create_app(settings), raise_server_exceptions=False) as test_client:
        workflow_id = deployed_workflow(test_client, auth, PROVIDED)
        listed = test_client.get(f"/workflows/{workflow_id}/triggers", headers=auth).json()
        yield test_client, {t["id"]: {**t, "workflow_id": workflow_id} for t in listed["items"]}


def provider_post(
    client: TestClient,
    hook: dict[str, Any],
    payload: Any,
    signer: Any,
    secret: str,
    *,
    at: float | None = None,
    headers: dict[str, str] | None = None,
) -> Response:
    """`payload` delivered with the headers the provider signs it with."""
    body = json.dumps(payload).encode()
    t = int(at if at is not None else time.time())
    return client.post(
        path(hook),
        content=body,
        headers={"content-type": "application/json", **signer(secret, body, t), **(headers or {})},
    )


def test_github_signs_with_the_hooks_secret_and_its_events_filter(
    provided: tuple[TestClient, dict[str, dict[str, Any]]],
    auth: dict[str, str],
    database_url: str,
) -> None:
    client, hooks = provided
    hook = hooks["gh"]
    pr = {"action": "opened", "number": 1}
    opened = provider_post(
        client, hook, pr, github, hook["secret"], headers={"X-GitHub-Event": "pull_request"}
    )
    assert opened.status_code == 202, opened.text
    inputs = execution_inputs(database_url, opened.json()["execution_id"])
    assert inputs["body"] == pr and "x-hub-signature-256" not in inputs["headers"]
    before = row_counts(database_url)["executions"]
    push = provider_post(
        client, hook, {}, github, hook["secret"], headers={"X-GitHub-Event": "push"}
    )
    assert push.status_code == 200
    assert push.json() == {"status": "ignored", "reason": "event push is not pull_request"}
    wrong = provider_post(
        client, hook, pr, github, "not-the-secret", headers={"X-GitHub-Event": "pull_request"}
    )
    assert wrong.status_code == 401 and "X-Hub-Signature-256" in wrong.json()["detail"]
    assert row_counts(database_url)["executions"] == before
    rows = deliveries(client, auth, hook)
    assert [r["outcome"] for r in rows] == ["rejected", "rejected", "accepted"]
    assert rows[1]["reason"] == "event push is not pull_request"


def test_stripe_and_slack_use_the_connections_signing_secret(
    provided: tuple[TestClient, dict[str, dict[str, Any]]], database_url: str
) -> None:
    client, hooks = provided
    pay, chat = hooks["pay"], hooks["chat"]
    invoice = {"id": "evt_1", "type": "invoice.paid"}
    assert provider_post(client, pay, invoice, stripe, STRIPE_SECRET).status_code == 202
    # The hook's own secret is not Stripe's: a connection's secret replaces it.
    assert provider_post(client, pay, invoice, stripe, pay["secret"]).status_code == 401
    stale = provider_post(client, pay, invoice, stripe, STRIPE_SECRET, at=time.time() - 400)
    assert stale.status_code == 401
    other = provider_post(client, pay, {"type": "charge.failed"}, stripe, STRIPE_SECRET)
    assert other.status_code == 200 and other.json()["status"] == "ignored"
    message = {"type": "event_callback", "event": {"type": "message", "text": "hi"}}
    assert provider_post(client, chat, message, slack, SLACK_SECRET).status_code == 202
    replay = provider_post(client, chat, message, slack, SLACK_SECRET, at=time.time() - 301)
    assert replay.status_code == 401
    # Without the provider's header the generic scheme (the hook's own secret) still applies.
    assert signed(client, chat, {"event": {"type": "message"}}).status_code == 202
    assert row_counts(database_url)["executions"] == 3


def test_slack_url_verification_answers_the_challenge_and_starts_nothing(
    provided: tuple[TestClient, dict[str, dict[str, Any]]],
    auth: dict[str, str],
    database_url: str,
) -> None:
    client, hooks = provided
    chat = hooks["chat"]
    handshake = {"token": "t", "challenge": "3eZbrw1aBm2rZgRNFdxV", "type": "url_verification"}
    unsigned = client.post(path(chat), json=handshake)
    assert unsigned.status_code == 401
    answer = provider_post(client, chat, handshake, slack, SLACK_SECRET)
    assert answer.status_code == 200
    assert answer.json() == {"challenge": "3eZbrw1aBm2rZgRNFdxV"}
    assert row_counts(database_url)["executions"] == 0
    assert "url_verification" in deliveries(client, auth, chat)[0]["reason"]


def test_shopify_signs_the_body_and_its_hmac_header_is_not_an_input(
    provided: tuple[TestClient, dict[str, dict[str, Any]]], database_url: str
) -> None:
    client, hooks = provided
    shop = hooks["shop"]
    topic = {"X-Shopify-Topic": "orders/create"}
    order = {"id": 820982911946154508}
    accepted = provider_post(client, shop, order, shopify, shop["secret"], headers=topic)
    assert accepted.status_code == 202, accepted.text
    inputs = execution_inputs(database_url, accepted.json()["execution_id"])
    assert inputs["headers"]["x-shopify-topic"] == "orders/create"
    assert "x-shopify-hmac-sha256" not in inputs["headers"]
    assert provider_post(client, shop, order, shopify, "nope", headers=topic).status_code == 401


# Each provider's redelivery as the provider sends it: the same body (and its own id), signed
# afresh, maybe through a proxy that adds its own X-Request-Id. (trigger, signer, the
# connection's secret or None for the hook's, payload, the provider's headers)
REDELIVERED = {
    "github": (
        "gh",
        github,
        None,
        {"action": "opened", "number": 1},
        {"X-GitHub-Event": "pull_request", "X-GitHub-Delivery": "72d3162e-cc78-11e3-81ab"},
    ),
    "stripe": (
        "pay",
        stripe,
        STRIPE_SECRET,
        {"id": "evt_1NG8Du2eZvKYlo2CUI79vXWy", "object": "event", "type": "invoice.paid"},
        {},
    ),
    "slack": (
        "chat",
        slack,
        SLACK_SECRET,
        {
            "type": "event_callback",
            "event_id": "Ev08MFMKH6",
            "event": {"type": "message", "text": "hi"},
        },
        {},
    ),
    "shopify": (
        "shop",
        shopify,
        None,
        {"id": 820982911946154508},
        {"X-Shopify-Topic": "orders/create", "X-Shopify-Webhook-Id": "b54557e4-bdd9-4b37-8a5f"},
    ),
    "typeform": (
        "form",
        typeform,
        None,
        {"event_id": "01EK4R5PFZZP6C8H14RTP4YW6C", "event_type": "form_response"},
        {},
    ),
}


@pytest.mark.parametrize("provider", sorted(REDELIVERED))
def test_a_providers_redelivery_is_a_duplicate_by_its_own_delivery_id(
    provider: str,
    provided: tuple[TestClient, dict[str, dict[str, Any]]],
    auth: dict[str, str],
    database_url: str,
) -> None:
    client, hooks = provided
    hook_id, signer, secret, payload, own = REDELIVERED[provider]
    hook = hooks[hook_id]
    key = secret or hook["secret"]
    first = provider_post(client, hook, payload, signer, key, headers={**own, "X-Request-Id": "a"})
    assert first.status_code == 202, first.text
    execution_id = first.json()["execution_id"]
    # The provider's retry: signed again a little later, another proxy request id, a retry
    # header; no Idempotency-Key.
    retry = {**own, "X-Request-Id": "b", "X-Slack-Retry-Num": "1"}
    again = provider_post(client, hook, payload, signer, key, at=time.time() - 5, headers=retry)
    assert again.status_code == 200, again.text
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.json() == {"status": "duplicate", "execution_id": execution_id}
    # Idempotency-Key, when sent, still wins over the provider's id.
    keyed = {**own, "Idempotency-Key": f"{provider}-k"}
    assert provider_post(client, hook, payload, signer, key, headers=keyed).status_code == 202
    assert row_counts(database_url)["executions"] == 2
    rows = deliveries(client, auth, hook)
    assert [r["outcome"] for r in rows] == ["accepted", "duplicate", "accepted"]
    assert rows[1]["delivery_id"] == rows[2]["delivery_id"] != "a"
    assert rows[0]["delivery_id"] == f"{provider}-k"


def test_the_generic_scheme_names_its_event_in_x_flowmaestro_event(
    provided: tuple[TestClient, dict[str, dict[str, Any]]],
    auth: dict[str, str],
    database_url: str,
) -> None:
    client, hooks = provided
    acme, gh = hooks["acme"], hooks["gh"]  # acme: no verifier, event order.paid
    paid = signed(client, acme, {"n": 1}, headers={"X-FlowMaestro-Event": "order.paid"})
    assert paid.status_code == 202, paid.text
    eu = signed(client, acme, {"n": 2}, headers={"X-FlowMaestro-Event": "order.paid.eu"})
    assert eu.status_code == 202, eu.text
    refunded = signed(client, acme, {"n": 3}, headers={"X-FlowMaestro-Event": "order.refunded"})
    assert refunded.status_code == 200
    assert refunded.json() == {
        "status": "ignored",
        "reason": "event order.refunded is not order.paid",
    }
    # A body's own `type` or `event` is not read: senders put anything there.
    assert signed(client, acme, {"type": "order.refunded", "event": "x"}).status_code == 202
    # The header never overrides what a provider's own signed delivery names.
    push = provider_post(
        client,
        gh,
        {},
        github,
        gh["secret"],
        headers={"X-GitHub-Event": "push", "X-FlowMaestro-Event": "pull_request"},
    )
    assert push.status_code == 200 and push.json()["status"] == "ignored"
    assert row_counts(database_url)["executions"] == 3
    assert deliveries(client, auth, acme)[1]["reason"] == "event order.refunded is not order.paid"


# -- Discord (Ed25519) and Salesforce (SOAP outbound messages) ---------------------------------

ELSEWHERE = flow(
    [
        node(
            "bot",
            "trigger",
            triggerType="webhook",
            provider="discord",
            event="application_command",
            outputVariable="interaction",
        ),
        node(
            "crm",
            "trigger",
            triggerType="webhook",
            provider="salesforce",
            event="Account",
            outputVariable="message",
        ),
        node("plain", "trigger", triggerType="webhook", outputVariable="event"),
        node("out", "output", outputName="ok", value="1"),
    ],
    [("bot", "out"), ("crm", "out"), ("plain", "out")],
    name="Elsewhere",
)
XML = {"content-type": "text/xml; charset=utf-8", "SOAPAction": '""'}


@pytest.fixture
def elsewhere(
    api_settings: ApiSettings, auth: dict[str, str]
) -> Iterator[tuple[TestClient, dict[str, dict[str, Any]]]]:
    """ELSEWHERE deployed on an API whose discord connection holds the application's public key
    and whose salesforce connection names the organization."""
    connections = {
        "discord": DISCORD_CONNECTION,
        "salesforce": ConnectionSettings.model_validate({"organization_id": ORG_ID}),
    }
    settings = api_settings.model_copy(update={"connections": connections})
    with TestClient(create_app(settings), raise_server_exceptions=False) as test_client:
        workflow_id = deployed_workflow(test_client, auth, ELSEWHERE)
        listed = test_client.get(f"/workflows/{workflow_id}/triggers", headers=auth).json()
        yield test_client, {t["id"]: {**t, "workflow_id": workflow_id} for t in listed["items"]}


def discord_post(
    client: TestClient,
    hook: dict[str, Any],
    payload: Any,
    *,
    key: Ed25519PrivateKey = PRIVATE_KEY,
    at: float | None = None,
) -> Response:
    body = json.dumps(payload).encode()
    headers = discord(key, body, int(at if at is not None else time.time()))
    return client.post(
        path(hook), content=body, headers={"content-type": "application/json", **headers}
    )


def salesforce_post(
    client: TestClient, hook: dict[str, Any], body: bytes, token: str | None = None
) -> Response:
    return client.post(
        f"{path(hook)}?token={token or hook['secret']}&source=crm", content=body, headers=XML
    )


def test_discord_ping_is_answered_pong_and_starts_nothing(
    elsewhere: tuple[TestClient, dict[str, dict[str, Any]]],
    auth: dict[str, str],
    database_url: str,
) -> None:
    client, hooks = elsewhere
    bot = hooks["bot"]
    ping = {"id": "1", "application_id": "42", "type": 1, "version": 1}
    answer = discord_post(client, bot, ping)
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"type": 1}
    # Discord also sends a badly signed PING when the URL is saved: it must be refused.
    forged = discord_post(client, bot, ping, key=Ed25519PrivateKey.generate())
    assert forged.status_code == 401
    assert client.post(path(bot), json=ping).status_code == 401
    assert row_counts(database_url)["executions"] == 0
    rows = deliveries(client, auth, bot)
    assert [r["outcome"] for r in rows] == ["rejected"] * 3
    assert "PING" in rows[2]["reason"]


def test_a_signed_discord_interaction_is_accepted_once(
    elsewhere: tuple[TestClient, dict[str, dict[str, Any]]],
    auth: dict[str, str],
    database_url: str,
) -> None:
    client, hooks = elsewhere
    bot = hooks["bot"]
    command = {
        "id": "1186331281390731264",
        "application_id": "42",
        "type": 2,
        "token": "interaction-token",
        "data": {"id": "7", "name": "hello", "type": 1},
    }
    accepted = discord_post(client, bot, command)
    # Discord needs an interaction response within 3 s: a deferred reply ("thinking…").
    assert accepted.status_code == 200, accepted.text
    assert accepted.json() == {"type": 5}
    execution_id = accepted.headers["x-flowmaestro-execution-id"]
    inputs = execution_inputs(database_url, execution_id)
    assert inputs["body"] == command
    assert "x-signature-ed25519" not in inputs["headers"]
    again = discord_post(client, bot, command)  # the interaction's id is its delivery id
    assert again.status_code == 200 and again.json() == {"type": 5}
    assert again.headers["x-flowmaestro-execution-id"] == execution_id
    assert again.headers["idempotent-replayed"] == "true"
    stale = discord_post(client, bot, {**command, "id": "2"}, at=time.time() - 400)
    assert stale.status_code == 401 and "X-Signature-Timestamp" in stale.json()["detail"]
    button = {**command, "id": "3", "type": 3, "data": {"custom_id": "approve"}}
    ignored = discord_post(client, bot, button)
    assert ignored.status_code == 200 and ignored.json()["status"] == "ignored"
    assert row_counts(database_url)["executions"] == 1
    rows = deliveries(client, auth, bot)
    assert [r["outcome"] for r in rows] == ["rejected", "rejected", "duplicate", "accepted"]
    assert rows[3]["delivery_id"] == "1186331281390731264"


def test_a_salesforce_outbound_message_is_acknowledged_in_soap_and_started(
    elsewhere: tuple[TestClient, dict[str, dict[str, Any]]],
    auth: dict[str, str],
    database_url: str,
) -> None:
    client, hooks = elsewhere
    crm = hooks["crm"]
    answer = salesforce_post(client, crm, outbound_message())
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"].startswith("text/xml")
    assert answer.text == SALESFORCE_ACK
    execution_id = answer.headers["X-FlowMaestro-Execution-Id"]
    assert answer.headers["location"] == f"/executions/{execution_id}"
    inputs = execution_inputs(database_url, execution_id)
    assert inputs["body"]["organizationId"] == ORG_ID
    assert [r["Name"] for r in inputs["body"]["sObjects"]] == ["Acme", "Globex"]
    assert "SessionId" not in json.dumps(inputs) and "AQcAQH0dMHZf" not in json.dumps(inputs)
    assert inputs["query"] == {"source": "crm"}  # the hook's secret is not an input
    rows = deliveries(client, auth, crm)
    assert rows[0]["outcome"] == "accepted" and rows[0]["execution_id"] == execution_id
    assert rows[0]["delivery_id"] == ",".join(n for n, _, _ in ACCOUNTS)


def test_the_same_salesforce_notifications_twice_start_one_execution(
    elsewhere: tuple[TestClient, dict[str, dict[str, Any]]],
    auth: dict[str, str],
    database_url: str,
) -> None:
    client, hooks = elsewhere
    crm = hooks["crm"]
    first = salesforce_post(client, crm, outbound_message())
    assert first.status_code == 200, first.text
    # Salesforce's retry: same notifications, maybe in another order, with a new request id.
    retry = client.post(
        f"{path(crm)}?token={crm['secret']}",
        content=outbound_message(accounts=ACCOUNTS[::-1]),
        headers={**XML, "X-Request-Id": "proxy-1"},
    )
    assert retry.status_code == 200 and retry.text == SALESFORCE_ACK
    assert retry.headers["Idempotent-Replayed"] == "true"
    assert (
        retry.headers["X-FlowMaestro-Execution-Id"] == first.headers["X-FlowMaestro-Execution-Id"]
    )
    assert row_counts(database_url)["executions"] == 1
    # Another sObject type than the trigger's event: acknowledged (no retries), nothing started.
    contact = outbound_message(accounts=(("04l000000000009AAA", "003000000000001AAA", "Ann"),))
    other = salesforce_post(client, crm, contact.replace(b"sf:Account", b"sf:Contact"))
    assert other.status_code == 200 and other.text == SALESFORCE_ACK
    assert "X-FlowMaestro-Execution-Id" not in other.headers
    assert row_counts(database_url)["executions"] == 1
    rows = deliveries(client, auth, crm)
    assert [r["outcome"] for r in rows] == ["rejected", "duplicate", "accepted"]
    assert rows[0]["reason"] == "event Contact is not Account"


def test_salesforce_refusals_are_4xx_and_start_nothing(
    elsewhere: tuple[TestClient, dict[str, dict[str, Any]]],
    auth: dict[str, str],
    database_url: str,
) -> None:
    client, hooks = elsewhere
    crm = hooks["crm"]
    no_token = client.post(path(crm), content=outbound_message(), headers=XML)
    assert no_token.status_code == 401 and no_token.json()["code"] == "bad_signature"
    assert salesforce_post(client, crm, outbound_message(), token="guess").status_code == 401
    # Another hook's secret does not open this one.
    assert (
        salesforce_post(client, crm, outbound_message(), token=hooks["bot"]["secret"]).status_code
        == 401
    )
    other_org = salesforce_post(client, crm, outbound_message(org="00D000000000099EAA"))
    assert other_org.status_code == 401 and "OrganizationId" in other_org.json()["detail"]
    for body in (BOMB, EXTERNAL, b"<soapenv:Envelope", b"<order/>"):
        refused = salesforce_post(client, crm, body)
        assert refused.status_code == 400, refused.text
        assert refused.json()["code"] == "invalid_request"
    assert row_counts(database_url)["executions"] == 0
    rows = deliveries(client, auth, crm)
    assert len(rows) == 8 and {r["outcome"] for r in rows} == {"rejected"}
    # The generic scheme still serves the trigger with JSON (bearer secret).
    bearer = {"Authorization": f"Bearer {crm['secret']}"}
    assert client.post(path(crm), json={"manual": True}, headers=bearer).status_code == 202


def test_only_a_salesforce_trigger_reads_xml(
    elsewhere: tuple[TestClient, dict[str, dict[str, Any]]], database_url: str
) -> None:
    client, hooks = elsewhere
    plain = hooks["plain"]
    bearer = {"Authorization": f"Bearer {plain['secret']}"}
    text = client.post(path(plain), content=b"<a>1</a>", headers={**bearer, **XML})
    assert text.status_code == 202, text.text  # text/* stays text for other triggers
    assert execution_inputs(database_url, text.json()["execution_id"])["body"] == "<a>1</a>"
    xml = {**bearer, "content-type": "application/xml"}
    assert client.post(path(plain), content=b"<a>1</a>", headers=xml).status_code == 415
