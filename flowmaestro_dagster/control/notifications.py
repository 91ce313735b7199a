"""Approver notifications: the signed approval link by email, Slack or a webhook.

The waitpoint sensor sends them (`tick` → `notify_approvers`), never the run's op or an API
request: a slow mail server holds neither a worker nor a caller. Each pending approval is
claimed once with a conditional UPDATE (`notifications IS NULL` → `sending`), so two ticks
never send twice; a tick that dies mid-send leaves `sending` and nothing is sent again
(at most once: a duplicate approval mail is worse than a missing one that the execution's
page and `GET /approvals` still show). Every attempt is recorded on the waitpoint
(`{channel, to, attempt, ok, error, at}`) and each target's outcome is a platform event
`approval.notified` on the parked run.

Sends go through the connectors (nodes/connectors/), so a connection's secrets only ever go
to its own service. The signed link decides the review without logging in, so it goes only
to those who may decide: an email to an approver (or to the owner when the review names
none), or an operator's connection (a Slack channel, a webhook connection's own URL). A
webhook URL the workflow supplies gets the authenticated API URL instead, and an email to
someone who may not decide is refused.
"""

import logging
import time
from collections.abc import Callable, Mapping
from datetime import datetime
from email.utils import getaddresses
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from flowmaestro_dagster.adapter.retries import retry_wait_seconds
from flowmaestro_dagster.control.client import DagsterClient
from flowmaestro_dagster.control.waitpoints import signed_token
from flowmaestro_dagster.errors import TransientNodeError
from flowmaestro_dagster.lang.state import ExecutionState
from flowmaestro_dagster.nodes.base import NodeContext
from flowmaestro_dagster.nodes.connectors import (
    ConnectorRequest,
    default_registry,
    resolve_connection,
)
from flowmaestro_dagster.nodes.integration import redact_secrets
from flowmaestro_dagster.settings import Settings
from flowmaestro_dagster.spec.configs import MediaConfig
from flowmaestro_dagster.spec.policies import RetrySettings
from flowmaestro_dagster.store.models import Execution, User, Waitpoint, utcnow

log = logging.getLogger(__name__)

NOTIFY_RETRY = RetrySettings(
    max_attempts=3, backoff_strategy="exponential", min_delay_ms=500, max_delay_ms=4_000
)
"""Three attempts, 0.5 s then 1 s apart: transient failures only (a refused recipient or a
missing connection fails the same way again)."""
NOTIFY_TIMEOUT_S = 10.0
"""Longest one send may take: the sensor tick waits for it."""


def approval_page_url(settings: Settings, waitpoint_id: str) -> str:
    """The signed approval page: whoever holds it decides, once, without an API key."""
    token = signed_token(settings.secret("secret_key"), "approve", waitpoint_id)
    return f"{settings.public_api_url.rstrip('/')}/approve/{token}"


def approval_api_url(settings: Settings, waitpoint_id: str) -> str:
    """The approval in the API (an API key of an approver reads and decides it)."""
    return f"{settings.public_api_url.rstrip('/')}/approvals/{waitpoint_id}"


def notify_approvers(
    session: Session,
    client: DagsterClient | None,
    settings: Settings,
    *,
    limit: int = 50,
    sleep: Callable[[float], None] = time.sleep,
) -> int:
    """Send the notifications of pending approvals not yet claimed; returns how many
    approvals had targets (one without `notify` is claimed too, and recorded as `none`)."""
    ids = session.scalars(
        select(Waitpoint.id)
        .where(
            Waitpoint.kind == "approval",
            Waitpoint.status == "pending",
            Waitpoint.notifications.is_(None),
        )
        .order_by(Waitpoint.created_at, Waitpoint.id)
        .limit(limit)
    ).all()
    claimed = 0
    for waitpoint_id in ids:
        now = utcnow()
        won = session.execute(
            update(Waitpoint)
            .where(Waitpoint.id == waitpoint_id, Waitpoint.notifications.is_(None))
            .values(notifications={"state": "sending", "claimedAt": now.isoformat()})
            .execution_options(synchronize_session=False)
        ).rowcount  # type: ignore[attr-defined]
        session.commit()
        if not won:
            continue  # another tick has it
        row = session.get(Waitpoint, waitpoint_id)
        assert row is not None
        session.refresh(row)
        if _notify(session, client, settings, row, now=now, sleep=sleep):
            claimed += 1
    return claimed


def _notify(
    session: Session,
    client: DagsterClient | None,
    settings: Settings,
    row: Waitpoint,
    *,
    now: datetime,
    sleep: Callable[[float], None],
) -> bool:
    """Send to every target of `row` and record it all; False when it has none."""
    targets = [t for t in row.spec.get("notify") or [] if isinstance(t, Mapping)]
    attempts: list[dict[str, Any]] = []
    outcomes: list[dict[str, Any]] = []
    for target in targets:
        tried = _send(session, settings, row, target, sleep=sleep)
        attempts.extend(tried)
        outcomes.append(tried[-1])
    if not targets:
        state = "none"
    elif all(o["ok"] for o in outcomes):
        state = "sent"
    else:
        state = "failed" if not any(o["ok"] for o in outcomes) else "partial"
    session.execute(
        update(Waitpoint)
        .where(Waitpoint.id == row.id)
        .values(
            notifications={
                "state": state,
                "claimedAt": now.isoformat(),
                "finishedAt": utcnow().isoformat(),
                "attempts": attempts,
            }
        )
        .execution_options(synchronize_session=False)
    )
    session.commit()
    for outcome in outcomes:
        _report(client, row, outcome)
    return bool(targets)


def _report(client: DagsterClient | None, row: Waitpoint, outcome: Mapping[str, Any]) -> None:
    if client is None:
        return
    data = {"waitpoint_id": row.id, **{k: outcome[k] for k in ("channel", "to", "ok", "error")}}
    what = f"{outcome['channel']} to {outcome['to']}"
    message = (
        f"Approval '{row.spec.get('label') or row.node_id}': notified {what}"
        if outcome["ok"]
        else f"Approval '{row.spec.get('label') or row.node_id}': could not notify {what}: "
        f"{outcome['error']}"
    )
    try:
        client.report_event(row.run_id, "approval.notified", data, message)
    except Exception as exc:  # noqa: BLE001 - the event log is a view; the row has the record
        log.warning("could not log the notification of waitpoint %s: %s", row.id, exc)


# -- one target ----------------------------------------------------------------------------------


def _deciders(session: Session, row: Waitpoint) -> list[str]:
    """Who may decide (control/waitpoints.may_decide): the named approvers, else the owner."""
    approvers = [str(a).strip().lower() for a in row.spec.get("approvers") or [] if a]
    if approvers:
        return approvers
    execution = session.get(Execution, row.execution_id)
    owner = session.get(User, execution.user_id) if execution is not None else None
    return [owner.email.lower()] if owner is not None else []


def _send(
    session: Session,
    settings: Settings,
    row: Waitpoint,
    target: Mapping[str, Any],
    *,
    sleep: Callable[[float], None],
) -> list[dict[str, Any]]:
    """Every attempt at one target (retrying transient failures), each as a record."""
    channel = str(target.get("channel") or "email")
    try:
        to, provider, connection_name, parameters = _request(session, settings, row, target)
    except _Refused as exc:
        return [_record(channel, exc.to, 1, str(exc))]
    if provider == "webhook" and parameters.get("url") and not connection_name:
        name, connection = None, None  # a URL of the workflow's own: no connection's secrets
    else:
        name, connection = resolve_connection(settings, connection_name, provider)
    if connection_name and connection is None:
        message = f"no connection named '{connection_name}' is configured (FLOWMAESTRO_CONNECTIONS)"
        return [_record(channel, to, 1, message)]
    prepared = platform_send(
        settings,
        provider,
        name,
        connection,
        parameters,
        node_id=row.node_id,
        node_type="humanReview",
        label=str(row.spec.get("label") or row.node_id),
        execution_id=row.execution_id,
        run_id=row.run_id,
    )
    if isinstance(prepared, str):
        return [_record(channel, to, 1, prepared)]
    spec, request = prepared
    records = []
    for attempt in range(1, NOTIFY_RETRY.max_attempts + 1):
        try:
            spec.run(request)
        except Exception as exc:  # noqa: BLE001 - recorded; a deployment's connector may raise anything
            records.append(_record(channel, to, attempt, failure_reason(exc, request.connection)))
            transient = isinstance(exc, TransientNodeError | TimeoutError | ConnectionError)
            if not transient or attempt == NOTIFY_RETRY.max_attempts:
                break
            sleep(retry_wait_seconds(NOTIFY_RETRY, attempt))
            continue
        records.append(_record(channel, to, attempt, None))
        break
    return records


def platform_send(
    settings: Settings,
    provider: str,
    connection_name: str | None,
    connection: Any,
    parameters: dict[str, Any],
    *,
    node_id: str,
    node_type: str,
    label: str,
    execution_id: str | None = None,
    run_id: str | None = None,
) -> tuple[Any, ConnectorRequest] | str:
    """The connector and request that send one of the platform's own messages (an approval
    link, an alert) through `provider`'s `send` (or the connection's own connector), with the
    connection's timeout capped at NOTIFY_TIMEOUT_S; else why it cannot be sent."""
    served_by = (
        connection.connector if connection is not None and connection.connector else provider
    )
    spec = default_registry().find(served_by, "send")
    if spec is None:
        return f"no connector configured for {served_by}"
    if connection is not None and connection.timeout_s > NOTIFY_TIMEOUT_S:
        connection = connection.model_copy(update={"timeout_s": NOTIFY_TIMEOUT_S})
    node = NodeContext(
        node_id=node_id,
        node_type=node_type,
        label=label,
        config=MediaConfig.model_validate({}),
        state=ExecutionState.start({}),
        services={"settings": settings},
        execution_id=execution_id,
        run_id=run_id,
    )
    request = ConnectorRequest(
        provider=served_by,
        operation="send",
        parameters=parameters,
        connection=connection,
        connection_name=connection_name,
        settings=settings,
        node=node,
    )
    return spec, request


def failure_reason(exc: Exception, connection: Any) -> str:
    """What a failed send says, without the connection's secrets."""
    reason = getattr(exc, "reason", None) or str(exc) or type(exc).__name__
    return redact_secrets(str(reason), connection)


class _Refused(Exception):
    """A target the link may not go to (or one that names nobody)."""

    def __init__(self, message: str, to: str) -> None:
        super().__init__(message)
        self.to = to


def _request(
    session: Session, settings: Settings, row: Waitpoint, target: Mapping[str, Any]
) -> tuple[str, str, str | None, dict[str, Any]]:
    """(shown recipient, provider, connection name, connector parameters) of one target."""
    channel = str(target.get("channel") or "email")
    connection = target.get("connection") or None
    label = str(row.spec.get("label") or "Review")
    prompt = str(row.spec.get("prompt") or "")
    page = approval_page_url(settings, row.id)
    expires = f"\nIt expires at {row.expires_at.isoformat()}." if row.expires_at else ""
    if channel == "email":
        deciders = _deciders(session, row)
        raw = target.get("to")
        to = [a for _, a in getaddresses([str(t) for t in _listed(raw)]) if a] if raw else deciders
        shown = ", ".join(to)
        if not to:
            raise _Refused("an email notification needs a recipient (to)", shown)
        outsiders = [a for a in to if a.lower() not in deciders]
        if outsiders:
            raise _Refused(
                f"{', '.join(outsiders)} may not decide this review: the approval link goes "
                "only to its approvers (or to the execution's owner when it names none)",
                shown,
            )
        body = f"{prompt}\n\nApprove or reject: {page}{expires}\n"
        parameters: dict[str, Any] = {
            "to": to,
            "subject": f"Approval requested: {label}",
            "body": body,
        }
        return shown, "email", connection, parameters
    if channel == "slack":
        shown = str(target.get("to") or connection or "slack")
        text = f"*Approval requested: {label}*\n{prompt}\n<{page}|Approve or reject>{expires}"
        parameters = {"text": text, "channel": target.get("to")}
        return shown, "slack", connection or "slack", parameters
    url = target.get("url")
    payload: dict[str, Any] = {
        "event": "approval.requested",
        "waitpointId": row.id,
        "executionId": row.execution_id,
        "nodeId": row.node_id,
        "label": label,
        "prompt": prompt,
        "approvers": list(row.spec.get("approvers") or []),
        "expiresAt": row.expires_at.isoformat() if row.expires_at else None,
        "approvalUrl": approval_api_url(settings, row.id),
    }
    if not url:  # the connection's own URL: an operator's endpoint, trusted with the link
        payload["pageUrl"] = page
    payload["text"] = (
        f"Approval requested: {label}: {payload.get('pageUrl') or payload['approvalUrl']}"
    )
    parameters = {"body": payload, "timeout": NOTIFY_TIMEOUT_S}
    if url:
        parameters["url"] = str(url)
    shown = str(url).split("?", 1)[0] if url else f"connection {connection}"
    return shown, "webhook", connection, parameters


def _listed(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def _record(channel: str, to: str, attempt: int, error: str | None) -> dict[str, Any]:
    return {
        "channel": channel,
        "to": to,
        "attempt": attempt,
        "ok": error is None,
        "error": error,
        "at": utcnow().isoformat(),
    }


__all__ = [
    "NOTIFY_RETRY",
    "approval_api_url",
    "approval_page_url",
    "notify_approvers",
]
