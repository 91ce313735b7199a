"""Webhook triggers: verification, deduplication, limits, the inputs a delivery becomes, and the
owner's views of triggers and deliveries (SQLite and PostgreSQL; launches are deferred)."""

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from httpx2 import Response  # what starlette's TestClient answers with
from pydantic import SecretStr

from flowmaestro_api.main import create_app
from flowmaestro_api.settings import ApiSettings
from flowmaestro_dagster.control.waitpoints import sign
from flowmaestro_dagster.settings import ConnectionSettings
from flowmaestro_dagster.store.db import get_engine, session_scope
from flowmaestro_dagster.store.models import Execution
from tests.api.conftest import deployed_workflow, row_counts
from tests.builders import flow, node
from tests.test_hook_providers import github, shopify, slack, stripe

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
        node("out", "output", outputName="ok", value="1"),
    ],
    [("gh", "out"), ("pay", "out"), ("chat", "out"), ("shop", "out")],
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
