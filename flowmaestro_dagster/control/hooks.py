"""Inbound webhooks: a deployed workflow's webhook trigger as `POST /hooks/{workflow}/{trigger}`.

A hook's secret is derived (HMAC of the platform secret key over workflow and trigger id), so
nothing secret is stored and rotating `FLOWMAESTRO_SECRET_KEY` rotates every hook. A delivery
is verified (our signature, a bearer secret, or its provider's own: hook_providers.py), mapped
to the execution's inputs (`{"body", "headers", "query"}`), and started through the ordinary
idempotent path with the key `hook:<trigger>:<delivery id>`, owned by the workflow's owner.
Every delivery past the lookup is recorded in `webhook_deliveries`, so an owner can see why a
provider's call did not start anything. docs/webhooks.md is the caller's side.
"""

import hashlib
import hmac
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any
from urllib.parse import parse_qs

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from flowmaestro_dagster.control.executions import (
    MAX_KEY_LENGTH,
    count_replay,
    start_execution,
    submittable_for,
)
from flowmaestro_dagster.control.hook_providers import (
    XML_MEDIA,
    Delivery,
    Keys,
    delivery_event,
    event_matches,
    media_type,
    provider_delivery_id,
    provider_of,
    salesforce_message,
)
from flowmaestro_dagster.control.requests import ExecutionCreate
from flowmaestro_dagster.control.waitpoints import verify_signature
from flowmaestro_dagster.control.workflows import get_version, get_workflow
from flowmaestro_dagster.errors import (
    BadSignature,
    IdempotencyKeyReused,
    InvalidRequest,
    NotFound,
    UnsupportedMediaType,
)
from flowmaestro_dagster.settings import ConnectionSettings
from flowmaestro_dagster.spec.configs import TriggerConfig, trigger_kind
from flowmaestro_dagster.store.models import (
    Execution,
    IdempotencyKey,
    User,
    WebhookDelivery,
    Workflow,
    WorkflowVersion,
    utcnow,
)

SIGNATURE_HEADER = "x-flowmaestro-signature"
# The event a delivery verified by the generic scheme names, for the trigger's `event` filter
# (a provider's own deliveries name theirs as hook_providers.delivery_event reads them).
EVENT_HEADER = "x-flowmaestro-event"
IDEMPOTENCY_HEADER = "idempotency-key"
# Where a delivery's id is looked for, in order, after `Idempotency-Key` and the id a verified
# provider puts in its body (`delivery_id`); none of them: every delivery is new.
DELIVERY_ID_HEADERS = (
    IDEMPOTENCY_HEADER,
    "x-github-delivery",
    "x-gitlab-event-uuid",
    "x-shopify-webhook-id",
    "x-request-id",
    "x-delivery-id",
    "x-webhook-id",
)
# Headers kept out of the execution's inputs: credentials and signatures (a name containing
# any of these), and hop-by-hop headers that say nothing about the event.
_SECRET_HEADER_PARTS = (
    "authorization",
    "cookie",
    "signature",
    "token",
    "secret",
    "api-key",
    "hmac",
)
_DROPPED_HEADERS = frozenset({"connection", "content-length", "transfer-encoding", "keep-alive"})
MAX_REASON = 500


@dataclass(frozen=True)
class Trigger:
    """A trigger node of a workflow version, as its owner sees it."""

    id: str
    trigger_type: str
    provider: str | None
    event: str | None
    output_variable: str | None

    @property
    def webhook(self) -> bool:
        """`triggerType: webhook`, or a provider event (GitHub's `pull_request.opened`, ...):
        the same reading as validation's (`spec.configs.trigger_kind`)."""
        return trigger_kind(self.trigger_type, self.provider, self.event) == "webhook"


def hook_secret(secret_key: str, workflow_id: str, trigger_id: str) -> str:
    """The hook's secret: derived, never stored."""
    message = f"hook:{workflow_id}:{trigger_id}".encode()
    return hmac.new(secret_key.encode(), message, hashlib.sha256).hexdigest()


def triggers_of(version: WorkflowVersion) -> list[Trigger]:
    """The version's trigger nodes, in definition order."""
    result = []
    for node in submittable_for(version).spec.nodes.values():
        config = node.config
        if node.type == "trigger" and isinstance(config, TriggerConfig):
            result.append(
                Trigger(
                    id=node.id,
                    trigger_type=config.trigger_type,
                    provider=config.provider,
                    event=config.event,
                    output_variable=config.output_variable,
                )
            )
    return result


def list_triggers(
    session: Session, *, user: User, workflow_id: str
) -> tuple[Workflow, list[Trigger]]:
    """The owner's workflow and the triggers of its deployed version (else its latest)."""
    workflow = get_workflow(session, user=user, workflow_id=workflow_id)
    number = workflow.deployed_version or workflow.latest_version
    if not number:
        return workflow, []
    return workflow, triggers_of(get_version(session, workflow=workflow, version=number))


def find_hook(session: Session, *, workflow_id: str, trigger_id: str) -> tuple[Workflow, Trigger]:
    """The live hook at this URL: a webhook trigger of the deployed version (else 404)."""
    workflow = session.get(Workflow, workflow_id)
    if workflow is None or workflow.archived_at is not None or workflow.deployed_version is None:
        raise NotFound("no such webhook")
    version = get_version(session, workflow=workflow, version=workflow.deployed_version)
    trigger = next((t for t in triggers_of(version) if t.id == trigger_id), None)
    if trigger is None or not trigger.webhook:
        raise NotFound("no such webhook")
    return workflow, trigger


def verify(
    secret: str,
    *,
    signature: str | None,
    authorization: str | None,
    body: bytes,
    now: float,
    tolerance: float,
) -> None:
    """A signature over the body within the tolerance, or the secret as a bearer token."""
    if signature is not None:
        if not verify_signature(secret, signature, body, now=now, tolerance=tolerance):
            raise BadSignature("bad or stale X-FlowMaestro-Signature")
        return
    if authorization is not None:
        scheme, _, token = authorization.partition(" ")
        given = token.strip().encode("utf-8", "surrogateescape")
        if scheme.lower() == "bearer" and hmac.compare_digest(given, secret.encode()):
            return
        raise BadSignature("bad bearer secret")
    raise BadSignature("missing X-FlowMaestro-Signature or Authorization: Bearer <secret>")


def verify_delivery(
    trigger: Trigger,
    headers: Mapping[str, str],
    body: bytes,
    *,
    hook_secret: str,
    connections: Mapping[str, ConnectionSettings],
    now: float,
    tolerance: float,
    query: Mapping[str, str] | None = None,
) -> None:
    """The provider's own verification when the trigger names a provider and the delivery
    carries what it sends (keyed by the connection named like the provider and the hook's
    secret: hook_providers.py says which each uses); otherwise the generic scheme."""
    provider = provider_of(trigger.provider)
    if provider is not None and provider.selects(headers):
        assert trigger.provider is not None
        keys = Keys(hook_secret, connections.get(trigger.provider.strip().lower()))
        provider.check(keys, Delivery(headers, body, now, tolerance, query or {}))
        return
    verify(
        hook_secret,
        signature=headers.get(SIGNATURE_HEADER),
        authorization=headers.get("authorization"),
        body=body,
        now=now,
        tolerance=tolerance,
    )


def provider_verified(trigger: Trigger, headers: Mapping[str, str]) -> bool:
    """Whether the trigger's provider's own verifier takes this delivery (`verify_delivery`)."""
    provider = provider_of(trigger.provider)
    return provider is not None and provider.selects(headers)


def unwanted_event(trigger: Trigger, headers: Mapping[str, str], payload: Any) -> str | None:
    """Why a verified delivery is not for this trigger (its event is another), or None.

    The event is the one the provider's delivery names (`delivery_event`) when its verifier
    took it; for the generic scheme, the `X-FlowMaestro-Event` header if sent (compared as
    written: equal, or `<event>.<anything>`), else what the provider's naming reads, if any. A
    delivery that names no event is not filtered."""
    if not trigger.event:
        return None
    named = "" if provider_verified(trigger, headers) else headers.get(EVENT_HEADER, "").strip()
    got: str | None = named
    provider = None
    if not named:
        got, provider = delivery_event(trigger.provider, headers, payload), trigger.provider
    if got is None or event_matches(trigger.event, got, provider):
        return None
    return f"event {got} is not {trigger.event}"


def media_kind(content_type: str | None, *, provider: str | None = None) -> str:
    """`json` (any `*/json`, `*+json`), `form` (urlencoded), `text` (`text/*`) or `` (none
    given); for a Salesforce trigger, `xml` (`text/xml`, `application/xml`: an outbound
    message). Anything else is 415, told before the body is read."""
    media = media_type(content_type)
    if media in XML_MEDIA and (provider or "").strip().lower() == "salesforce":
        return "xml"
    if media == "application/json" or media.endswith("+json"):
        return "json"
    if media == "application/x-www-form-urlencoded":
        return "form"
    if media.startswith("text/"):
        return "text"
    if not media:
        return ""
    raise UnsupportedMediaType(f"content type {media} is not JSON, a urlencoded form or text")


def parse_body(kind: str, body: bytes) -> Any:
    """The body as the workflow sees it: JSON value, form fields (repeated: lists), text, a
    Salesforce outbound message as JSON (`hook_providers.salesforce_message`)."""
    if not body:
        return None
    if kind == "json":
        try:
            return json.loads(body)
        except ValueError as exc:
            raise InvalidRequest(f"the body is not valid JSON: {exc}") from None
    if kind == "form":
        try:
            return _single(parse_qs(body.decode(), keep_blank_values=True))
        except UnicodeDecodeError:
            raise InvalidRequest("the form is not UTF-8") from None
    if kind == "text":
        return body.decode(errors="replace")
    if kind == "xml":
        return salesforce_message(body)
    raise UnsupportedMediaType("a body needs a content type: JSON, a urlencoded form or text")


def _single(fields: Mapping[str, Sequence[str]]) -> dict[str, Any]:
    return {k: v[0] if len(v) == 1 else list(v) for k, v in fields.items()}


def safe_headers(headers: Sequence[tuple[str, str]]) -> dict[str, str]:
    """The headers a workflow may see: no credentials, no signatures (lower-case names)."""
    kept: dict[str, str] = {}
    for name, value in headers:
        low = name.lower()
        if low in _DROPPED_HEADERS or any(part in low for part in _SECRET_HEADER_PARTS):
            continue
        kept[low] = f"{kept[low]}, {value}" if low in kept else value
    return kept


def delivery_id(headers: Mapping[str, str], provided: str | None = None) -> str | None:
    """The delivery's id: `Idempotency-Key` if sent (the caller's own word wins), else
    `provided` (the id a verified provider put in the body: `body_delivery_id`), else the first
    of the other `DELIVERY_ID_HEADERS` present (lower-case names)."""
    key = headers.get(IDEMPOTENCY_HEADER, "").strip()
    if key or provided:
        return key or provided
    for name in DELIVERY_ID_HEADERS:
        value = headers.get(name, "").strip()
        if value:
            return value
    return None


def body_delivery_id(trigger: Trigger, headers: Mapping[str, str], payload: Any) -> str | None:
    """The delivery id the provider puts in the body (a Stripe event's `id`, Slack's and
    Typeform's `event_id`, Salesforce's notification ids, a Discord interaction's id), when its
    own verifier took the delivery; it wins over the other headers, which a proxy may add
    (`X-Request-Id`)."""
    if not provider_verified(trigger, headers):
        return None
    return provider_delivery_id(trigger.provider, payload)


def hook_inputs(body: Any, headers: dict[str, str], query: dict[str, Any]) -> dict[str, Any]:
    """What the trigger node's `outputVariable` receives."""
    return {"body": body, "headers": headers, "query": query}


def query_inputs(
    pairs: Sequence[tuple[str, str]], *, provider: str | None = None
) -> dict[str, Any]:
    """The query string, without a parameter that holds the hook's secret for the trigger's
    provider (Salesforce's `token`)."""
    known = provider_of(provider)
    hidden = known.secret_params if known else frozenset()
    grouped: dict[str, list[str]] = {}
    for key, value in pairs:
        if key in hidden:
            continue
        grouped.setdefault(key, []).append(value)
    return _single(grouped)


def record(
    session: Session,
    *,
    workflow_id: str,
    trigger_id: str,
    delivery: str | None,
    outcome: str,
    reason: str | None = None,
    execution_id: str | None = None,
) -> WebhookDelivery:
    """Write one delivery's row (committed)."""
    row = WebhookDelivery(
        workflow_id=workflow_id,
        trigger_id=trigger_id,
        delivery_id=delivery[:255] if delivery else None,
        outcome=outcome,
        reason=reason[:MAX_REASON] if reason else None,
        execution_id=execution_id,
    )
    session.add(row)
    session.commit()
    return row


def accept(
    session: Session,
    *,
    workflow: Workflow,
    trigger: Trigger,
    inputs: dict[str, Any],
    delivery: str | None,
    default_ttl_seconds: int,
    shards: int,
) -> tuple[Execution, bool]:
    """Start (or, for a delivery seen before, find) the execution; whether it was replayed.

    A provider's redelivery may differ in headers (a fresh signature, a date): the delivery
    id alone decides, so a key reused with other inputs is a duplicate here, not a 422.
    """
    owner = session.get(User, workflow.owner_id)
    assert owner is not None
    key = f"hook:{trigger.id}:{delivery}"[:MAX_KEY_LENGTH] if delivery else None
    try:
        return start_execution(
            session,
            user=owner,
            workflow_id=workflow.id,
            body=ExecutionCreate(inputs=inputs),
            idempotency_key=key,
            default_ttl_seconds=default_ttl_seconds,
            shards=shards,
        )
    except IdempotencyKeyReused:
        session.rollback()
        execution = session.scalar(
            select(Execution)
            .join(IdempotencyKey, IdempotencyKey.execution_id == Execution.id)
            .where(
                IdempotencyKey.user_id == owner.id,
                IdempotencyKey.workflow_id == workflow.id,
                IdempotencyKey.key == key,
            )
        )
        if execution is None:
            raise
        count_replay(session, execution_id=execution.id)
        return execution, True


def list_deliveries(
    session: Session, *, user: User, workflow_id: str, trigger_id: str, limit: int
) -> list[WebhookDelivery]:
    """The owner's deliveries to one trigger, newest first."""
    workflow = get_workflow(session, user=user, workflow_id=workflow_id)
    return list(
        session.scalars(
            select(WebhookDelivery)
            .where(
                WebhookDelivery.workflow_id == workflow.id,
                WebhookDelivery.trigger_id == trigger_id,
            )
            .order_by(WebhookDelivery.received_at.desc(), WebhookDelivery.id)
            .limit(limit)
        )
    )


DELIVERY_RETENTION = timedelta(days=7)


def purge_old_deliveries(session: Session, *, older_than: timedelta = DELIVERY_RETENTION) -> int:
    """Forget deliveries past the retention: anyone may call a hook URL, and every rejected
    call leaves a row, so the log must not grow without bound (the launch reconciler calls
    this each tick)."""
    result = session.execute(
        delete(WebhookDelivery).where(WebhookDelivery.received_at < utcnow() - older_than)
    )
    return int(getattr(result, "rowcount", 0) or 0)
