"""Webhook triggers: deliveries to `POST /hooks/{workflow}/{trigger}`, and the owner's view of a
workflow's triggers and of the deliveries each received (docs/webhooks.md)."""

import time
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response, status
from fastapi.responses import JSONResponse
from sqlalchemy.orm import Session, sessionmaker
from starlette.concurrency import run_in_threadpool

from flowmaestro_api.deps import CurrentUser, SessionDep, SessionRoute, SettingsDep
from flowmaestro_api.errors import PayloadTooLarge, PlatformError
from flowmaestro_api.ratelimit import HookRateLimiter
from flowmaestro_api.routes.executions import answer_submitted
from flowmaestro_api.schemas import (
    DeliveryList,
    DeliveryPublic,
    HookAccepted,
    TriggerList,
    TriggerPublic,
    TriggerSchedule,
)
from flowmaestro_api.settings import ApiSettings
from flowmaestro_dagster.control import hooks as service
from flowmaestro_dagster.control.hook_providers import (
    SALESFORCE_ACK,
    handshake,
    interaction_answer,
)
from flowmaestro_dagster.control.schedules import listed_schedule
from flowmaestro_dagster.store.db import session_scope

router = APIRouter(route_class=SessionRoute, tags=["webhooks"])


@router.get("/workflows/{workflow_id}/triggers", response_model=TriggerList)
def list_triggers(
    workflow_id: str, session: SessionDep, user: CurrentUser, settings: SettingsDep
) -> TriggerList:
    """The triggers of the deployed version (else the latest); a webhook trigger shows the
    URL to deliver to and its secret (for `X-FlowMaestro-Signature` or a bearer token), the
    schedule trigger its cron, timezone, policies and next fire time."""
    workflow, triggers = service.list_triggers(session, user=user, workflow_id=workflow_id)
    base = settings.public_api_url.rstrip("/")
    key = settings.secret("secret_key")
    listed = listed_schedule(
        session, workflow, default_timezone=settings.schedule_timezone, now=datetime.now(UTC)
    )
    schedule = (
        TriggerSchedule(
            cron=listed.trigger.cron,
            timezone=listed.timezone,
            overlap=listed.trigger.overlap,
            missed_ticks=listed.trigger.missed,
            dagster_schedule=listed.name,
            next_fire_at=listed.next_fire_at,
        )
        if listed is not None
        else None
    )
    items = [
        TriggerPublic(
            id=t.id,
            type=t.trigger_type,
            provider=t.provider,
            event=t.event,
            output_variable=t.output_variable,
            webhook=t.webhook,
            url=f"{base}/hooks/{workflow.id}/{t.id}" if t.webhook else None,
            secret=service.hook_secret(key, workflow.id, t.id) if t.webhook else None,
            schedule=schedule if listed is not None and t.id == listed.trigger.node_id else None,
        )
        for t in triggers
    ]
    live = workflow.deployed_version is not None and workflow.archived_at is None
    version = workflow.deployed_version or workflow.latest_version or None
    return TriggerList(items=items, version=version, live=live)


@router.get(
    "/workflows/{workflow_id}/triggers/{trigger_id}/deliveries", response_model=DeliveryList
)
def list_deliveries(
    workflow_id: str,
    trigger_id: str,
    session: SessionDep,
    user: CurrentUser,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> DeliveryList:
    """Deliveries to one trigger, newest first: accepted, duplicate or rejected (and why)."""
    rows = service.list_deliveries(
        session, user=user, workflow_id=workflow_id, trigger_id=trigger_id, limit=limit
    )
    return DeliveryList(items=[DeliveryPublic.model_validate(r) for r in rows])


async def _read_bounded(request: Request, limit: int) -> bytes:
    """The body, refused as soon as it passes `limit` (a declared length or chunk by chunk)."""
    too_large = PayloadTooLarge(f"the delivery is larger than {limit} bytes")
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > limit:
        raise too_large
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_large
        chunks.append(chunk)
    return b"".join(chunks)


@router.post(
    "/hooks/{workflow_id}/{trigger_id}",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=HookAccepted,
    responses={
        200: {
            "description": "a delivery seen before (`Idempotent-Replayed: true`); an event the "
            'trigger does not take (`{"status": "ignored"}`); Slack\'s url_verification '
            '(`{"challenge"}`); Discord\'s PING (`{"type": 1}`) and a Discord interaction '
            "taken: its deferred response; any Salesforce outbound message taken: its SOAP "
            "acknowledgement (both with `X-FlowMaestro-Execution-Id`)"
        },
        401: {"description": "bad or missing signature / bearer secret, or a stale timestamp"},
        404: {"description": "no deployed webhook trigger at this URL"},
        413: {"description": "the body is larger than FLOWMAESTRO_HOOK_MAX_BODY_BYTES"},
        415: {"description": "the body is not JSON, a urlencoded form or text"},
        429: {"description": "over the hook's rate limit (`Retry-After` says when to retry)"},
    },
)
async def deliver(
    workflow_id: str, trigger_id: str, request: Request, response: Response
) -> HookAccepted | Response:
    """Start the workflow from a webhook delivery: its inputs are `{"body", "headers",
    "query"}`. Sign `"<t>.<body>"` (`X-FlowMaestro-Signature: t=<unix>,v1=<hex>`) or send
    `Authorization: Bearer <secret>`, or the trigger's provider's own verification (GitHub,
    Stripe, Slack, Shopify, Typeform, Discord, Salesforce `?token=`). A delivery id
    (`Idempotency-Key`, else the provider's own: a Stripe event's `id`, Slack's or Typeform's
    `event_id`, `X-GitHub-Delivery`, `X-Shopify-Webhook-Id`, a Salesforce notification id, ...;
    else `X-Request-Id`, ...) seen before answers the first execution (200). With the generic
    scheme, `X-FlowMaestro-Event` names the event for the trigger's `event` filter."""
    settings: ApiSettings = request.app.state.settings
    sessions: sessionmaker[Session] = request.app.state.sessions
    limiter: HookRateLimiter = request.app.state.hook_limits
    # 404, then 429: both before the body is read or anything is recorded.
    trigger = await run_in_threadpool(_find, sessions, workflow_id, trigger_id, limiter)
    headers = dict(request.headers.items())  # Starlette lower-cases the names
    delivery = service.delivery_id(headers)
    try:
        kind = service.media_kind(headers.get("content-type"), provider=trigger.provider)
        body = await _read_bounded(request, settings.hook_max_body_bytes)
        service.verify_delivery(
            trigger,
            headers,
            body,
            hook_secret=service.hook_secret(settings.secret("secret_key"), workflow_id, trigger_id),
            connections=settings.connections,
            now=time.time(),
            tolerance=settings.callback_tolerance_seconds,
            query=dict(request.query_params),
        )
        payload = service.parse_body(kind, body)
        delivery = service.delivery_id(headers, service.body_delivery_id(trigger, headers, payload))
        skipped = _skipped(trigger, headers, payload)
        if skipped is not None:
            reason, answer = skipped
            await run_in_threadpool(_reject, sessions, workflow_id, trigger_id, delivery, reason)
            return _acknowledged() if kind == "xml" else JSONResponse(answer)
        inputs = service.hook_inputs(
            payload,
            service.safe_headers(request.headers.items()),
            service.query_inputs(request.query_params.multi_items(), provider=trigger.provider),
        )
        execution_id, replayed = await run_in_threadpool(
            _accept, sessions, settings, workflow_id, trigger_id, inputs, delivery
        )
    except PlatformError as exc:
        reason = f"{exc.status} {exc.code}: {exc.detail}"
        await run_in_threadpool(_reject, sessions, workflow_id, trigger_id, delivery, reason)
        raise
    answer_submitted(request, response, execution_id, replayed)
    if kind == "xml":
        return _acknowledged(response, execution_id)
    interaction = interaction_answer(trigger.provider, payload)
    if interaction is not None:
        return _interaction(response, interaction, execution_id)
    return HookAccepted(status="duplicate" if replayed else "accepted", execution_id=execution_id)


def _skipped(
    trigger: service.Trigger, headers: dict[str, str], payload: Any
) -> tuple[str, dict[str, Any]] | None:
    """A verified delivery that starts nothing, as (reason recorded, 200 body): a provider's
    handshake (Slack's url_verification, Discord's PING), or an event the trigger does not take
    (2xx, so the provider does not retry it)."""
    answered = handshake(trigger.provider, payload)
    if answered is not None:
        return answered
    reason = service.unwanted_event(trigger, headers, payload)
    if reason is not None:
        return reason, {"status": "ignored", "reason": reason}
    return None


def _acknowledged(response: Response | None = None, execution_id: str | None = None) -> Response:
    """What Salesforce gets for an outbound message taken (accepted, duplicate or ignored): 200
    and its SOAP acknowledgement, else it redelivers for 24 hours; the execution, if any, in
    `X-FlowMaestro-Execution-Id` beside the `Location` / `Idempotent-Replayed` set for JSON."""
    kept = {"location", "idempotent-replayed"}
    headers = {k: v for k, v in (response.headers.items() if response else ()) if k in kept}
    if execution_id is not None:
        headers["X-FlowMaestro-Execution-Id"] = execution_id
    return Response(SALESFORCE_ACK, media_type="text/xml", headers=headers)


def _interaction(response: Response, answer: dict[str, Any], execution_id: str) -> Response:
    """Discord's interaction response (200, a deferred reply), the execution beside it in the
    headers, as for Salesforce."""
    kept = {"location", "idempotent-replayed"}
    headers = {k: v for k, v in response.headers.items() if k in kept}
    headers["X-FlowMaestro-Execution-Id"] = execution_id
    return JSONResponse(answer, headers=headers)


def _find(
    sessions: sessionmaker[Session], workflow_id: str, trigger_id: str, limiter: HookRateLimiter
) -> service.Trigger:
    with session_scope(sessions) as session:
        trigger = service.find_hook(session, workflow_id=workflow_id, trigger_id=trigger_id)[1]
    limiter.check(workflow_id, trigger_id)  # a Redis round trip, off the event loop
    return trigger


def _accept(
    sessions: sessionmaker[Session],
    settings: ApiSettings,
    workflow_id: str,
    trigger_id: str,
    inputs: dict[str, Any],
    delivery: str | None,
) -> tuple[str, bool]:
    """Start the execution (committed) and record the delivery; the execution's id."""
    with session_scope(sessions) as session:
        workflow, trigger = service.find_hook(
            session, workflow_id=workflow_id, trigger_id=trigger_id
        )
        execution, replayed = service.accept(
            session,
            workflow=workflow,
            trigger=trigger,
            inputs=inputs,
            delivery=delivery,
            default_ttl_seconds=settings.idempotency_ttl_seconds,
            shards=settings.code_location_shards,
        )
        service.record(
            session,
            workflow_id=workflow_id,
            trigger_id=trigger_id,
            delivery=delivery,
            outcome="duplicate" if replayed else "accepted",
            execution_id=execution.id,
        )
        return execution.id, replayed


def _reject(
    sessions: sessionmaker[Session],
    workflow_id: str,
    trigger_id: str,
    delivery: str | None,
    reason: str,
) -> None:
    with session_scope(sessions) as session:
        service.record(
            session,
            workflow_id=workflow_id,
            trigger_id=trigger_id,
            delivery=delivery,
            outcome="rejected",
            reason=reason,
        )
