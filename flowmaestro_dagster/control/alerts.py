"""Alerts: rules over the platform's own tables, evaluated by the `alert_evaluator` sensor.

A rule watches its owner's workflows (or one of them) with one metric:

* `failure_rate`: failed / (failed + succeeded) executions that finished in the last
  `window_seconds`, per workflow; fires at `threshold` or above once `min_executions` finished;
* `execution_stuck`: executions in `state` (queued, running, waiting, pausing, paused) for
  longer than `window_seconds`, per workflow;
* `queue_age`: the oldest execution still queued for longer than `window_seconds`, per queue;
* `approval_wait`: approvals pending for longer than `window_seconds`, per workflow.

What a rule finds is kept per (rule, subject) in `alert_states`: `firing` or `resolved`. A
state changes only through a conditional UPDATE (an INSERT under a unique constraint for a
first firing), so a subject fires once however many ticks see it over its limit, and resolves
once when it clears. A notification is due while the status the channel was last told of
(`notified_status`) lags the status: one when it starts firing, none while it keeps firing,
one "resolved" when it clears (none for an alert whose firing was never delivered). A tick
claims a due notification with a lease before sending it, so two ticks never send it twice;
a failed send is tried again on the next ticks, `MAX_NOTIFY_ATTEMPTS` times in all.

Live states come from Dagster's run storage (the execution's runs, read from the instance in
one query), since an execution's row says `queued` until its run finishes and the status
sensor writes the outcome back. Sends go through the connectors (nodes/connectors/) to a
channel the operator configured: an SMTP connection and a list of addresses, a Slack
connection, or a webhook connection (its own URL: a rule never names a URL).
"""

import logging
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.utils import getaddresses
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from sqlalchemy import and_, case, func, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import ColumnElement

from flowmaestro_dagster.control.client import DagsterClient, RunInfo
from flowmaestro_dagster.control.executions import execution_status
from flowmaestro_dagster.control.notifications import (
    NOTIFY_TIMEOUT_S,
    failure_reason,
    platform_send,
)
from flowmaestro_dagster.errors import InvalidAlertRule, NotFound
from flowmaestro_dagster.nodes.connectors import (
    default_registry,
    resolve_connection,
)
from flowmaestro_dagster.settings import Settings
from flowmaestro_dagster.store.models import (
    AlertRule,
    AlertState,
    Execution,
    User,
    Waitpoint,
    Workflow,
    utcnow,
)
from flowmaestro_dagster.tags import DEFAULT_QUEUE, EXECUTION_TAG

log = logging.getLogger(__name__)

METRICS = ("failure_rate", "execution_stuck", "queue_age", "approval_wait")
STUCK_STATES = ("queued", "running", "waiting", "pausing", "paused")
DEFAULT_THRESHOLD = 0.5
DEFAULT_MIN_EXECUTIONS = 1
DEFAULT_STUCK_STATE = "running"
MAX_WINDOW_SECONDS = 30 * 86_400
MAX_NOTIFY_ATTEMPTS = 5
"""Ticks that try a due notification before it is given up (the error stays on the alert)."""
CLAIM_SECONDS = 60
"""How long a tick holds a notification it is sending (a tick that dies frees it then)."""
CANDIDATES = 500
"""Executions (or approvals) one rule looks at per tick, oldest first."""
SHOWN = 10
"""Executions an alert lists by id."""

Metric = Literal["failure_rate", "execution_stuck", "queue_age", "approval_wait"]
StuckState = Literal["queued", "running", "waiting", "pausing", "paused"]


# -- rules: what the API takes --------------------------------------------------------------------


class EmailChannel(BaseModel):
    """Mail to `to` through an SMTP connection (`connection`, else the one named `email`)."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["email"]
    to: list[str] = Field(min_length=1, max_length=20)
    connection: str | None = Field(default=None, min_length=1, max_length=100)

    @field_validator("to")
    @classmethod
    def _addresses(cls, value: list[str]) -> list[str]:
        addresses = []
        for item in value:
            parsed = [a for _, a in getaddresses([item]) if a]
            if len(parsed) != 1 or "@" not in parsed[0] or any(c in item for c in "\r\n"):
                raise ValueError(f"not an email address: {item!r}")
            addresses.append(parsed[0])
        return addresses


class SlackChannel(BaseModel):
    """A message through a Slack connection (`connection`, else the one named `slack`)."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["slack"]
    connection: str | None = Field(default=None, min_length=1, max_length=100)


class WebhookChannel(BaseModel):
    """A JSON POST to a webhook connection's own URL (`connection`, else the one named
    `webhook`): a rule never names a URL."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["webhook"]
    connection: str | None = Field(default=None, min_length=1, max_length=100)


AlertChannel = Annotated[EmailChannel | SlackChannel | WebhookChannel, Field(discriminator="type")]


class AlertRuleCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=200)
    metric: Metric
    workflow_id: str | None = Field(
        default=None, max_length=36, description="one workflow of yours; none: all of them"
    )
    window_seconds: int = Field(
        gt=0,
        le=MAX_WINDOW_SECONDS,
        description="failure_rate: the window the rate is computed over; the others: how long "
        "is too long (stuck in a state, queued, waiting for an approval)",
    )
    threshold: float | None = Field(
        default=None,
        gt=0,
        le=1,
        description=f"failure_rate only: the failed fraction that fires ({DEFAULT_THRESHOLD})",
    )
    min_executions: int | None = Field(
        default=None,
        ge=1,
        le=1_000_000,
        description="failure_rate only: finished executions in the window before it may fire "
        f"({DEFAULT_MIN_EXECUTIONS})",
    )
    state: StuckState | None = Field(
        default=None, description=f"execution_stuck only: the state ({DEFAULT_STUCK_STATE})"
    )
    channel: AlertChannel
    enabled: bool = True


class AlertRuleUpdate(BaseModel):
    """The fields to change; a metric-specific field left out is reset when the metric changes."""

    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(default=None, min_length=1, max_length=200)
    metric: Metric | None = None
    workflow_id: str | None = Field(default=None, max_length=36)
    window_seconds: int | None = Field(default=None, gt=0, le=MAX_WINDOW_SECONDS)
    threshold: float | None = Field(default=None, gt=0, le=1)
    min_executions: int | None = Field(default=None, ge=1, le=1_000_000)
    state: StuckState | None = None
    channel: AlertChannel | None = None
    enabled: bool | None = None


_METRIC_FIELDS = {
    "threshold": ("failure_rate",),
    "min_executions": ("failure_rate",),
    "state": ("execution_stuck",),
}


def _problem(field_name: str, message: str) -> dict[str, Any]:
    return {"code": "invalid_field", "field": field_name, "message": message}


def channel_problems(settings: Settings, channel: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Why `channel` cannot be sent to (each naming its field): an unknown connection, one
    without what its connector needs, or one no installed connector serves."""
    provider = str(channel["type"])
    wanted = channel.get("connection")
    name, connection = resolve_connection(settings, wanted, provider)
    shown = str(wanted or provider)
    variable = f"FLOWMAESTRO_CONNECTIONS__{shown.upper().replace('-', '_')}"
    needs = {"email": "__HOST", "slack": "__URL_ENV", "webhook": "__URL_ENV"}[provider]
    if connection is None:
        return [
            _problem(
                "channel.connection",
                f"no connection named '{shown}' is configured: an operator sets {variable}{needs}",
            )
        ]
    served_by = connection.connector or provider
    if default_registry().find(served_by, "send") is None:
        return [
            _problem(
                "channel.connection",
                f"connection '{name}' is served by '{served_by}', and no connector of that name "
                "is installed",
            )
        ]
    smtp = served_by.lower() in ("smtp", "email")
    if provider == "email" and smtp and not connection.host:
        missing = f"connection '{name}' has no SMTP host ({variable}__HOST)"
    elif provider == "slack" and served_by.lower() == "slack" and not connection.secret("url"):
        missing = f"connection '{name}' has no webhook URL ({variable}__URL_ENV)"
    elif provider == "webhook" and not (connection.secret("url") or connection.base_url):
        missing = f"connection '{name}' has no URL ({variable}__URL_ENV)"
    else:
        return []
    return [_problem("channel.connection", missing)]


def _check(
    session: Session, settings: Settings, user: User, body: AlertRuleCreate, given: set[str]
) -> None:
    problems = []
    if body.workflow_id is not None:
        owned = session.scalar(
            select(Workflow.id).where(Workflow.id == body.workflow_id, Workflow.owner_id == user.id)
        )
        if owned is None:
            problems.append(_problem("workflow_id", f"no workflow {body.workflow_id}"))
    for name, metrics in _METRIC_FIELDS.items():
        if name in given and getattr(body, name) is not None and body.metric not in metrics:
            problems.append(_problem(name, f"applies only to {' and '.join(metrics)}"))
    problems.extend(channel_problems(settings, body.channel.model_dump(exclude_none=True)))
    if problems:
        detail = "; ".join(f"{p['field']}: {p['message']}" for p in problems)
        raise InvalidAlertRule(f"invalid alert rule: {detail}", problems=problems)


def _apply(rule: AlertRule, body: AlertRuleCreate) -> None:
    failure_rate = body.metric == "failure_rate"
    rule.name = body.name
    rule.metric = body.metric
    rule.workflow_id = body.workflow_id
    rule.window_seconds = body.window_seconds
    rule.threshold = (body.threshold or DEFAULT_THRESHOLD) if failure_rate else None
    rule.min_executions = (body.min_executions or DEFAULT_MIN_EXECUTIONS) if failure_rate else None
    rule.state = (body.state or DEFAULT_STUCK_STATE) if body.metric == "execution_stuck" else None
    rule.channel = body.channel.model_dump(exclude_none=True)
    rule.enabled = body.enabled


def create_rule(
    session: Session, *, user: User, settings: Settings, body: AlertRuleCreate
) -> AlertRule:
    _check(session, settings, user, body, body.model_fields_set)
    rule = AlertRule(owner_id=user.id)
    _apply(rule, body)
    session.add(rule)
    session.commit()
    return rule


def get_rule(session: Session, *, user: User, rule_id: str) -> AlertRule:
    rule = session.scalar(
        select(AlertRule).where(AlertRule.id == rule_id, AlertRule.owner_id == user.id)
    )
    if rule is None:
        raise NotFound(f"no alert rule {rule_id}")
    return rule


def list_rules(session: Session, *, user: User) -> Sequence[AlertRule]:
    return session.scalars(
        select(AlertRule)
        .where(AlertRule.owner_id == user.id)
        .order_by(AlertRule.created_at, AlertRule.id)
    ).all()


def update_rule(
    session: Session, *, user: User, settings: Settings, rule_id: str, body: AlertRuleUpdate
) -> AlertRule:
    rule = get_rule(session, user=user, rule_id=rule_id)
    changes = body.model_dump(exclude_unset=True)
    merged: dict[str, Any] = {
        "name": rule.name,
        "metric": rule.metric,
        "workflow_id": rule.workflow_id,
        "window_seconds": rule.window_seconds,
        "channel": rule.channel,
        "enabled": rule.enabled,
    }
    if changes.get("metric", rule.metric) == rule.metric:  # the metric's own fields stay
        merged.update(threshold=rule.threshold, min_executions=rule.min_executions)
        merged["state"] = rule.state
    merged.update(changes)
    for name in ("name", "metric", "window_seconds", "channel", "enabled"):
        if name in changes and changes[name] is None:
            raise InvalidAlertRule(
                f"invalid alert rule: {name}: may not be null",
                problems=[_problem(name, "may not be null")],
            )
    try:
        checked = AlertRuleCreate.model_validate(merged)
    except ValidationError as exc:
        problems = [
            _problem(".".join(str(p) for p in err["loc"]), err["msg"]) for err in exc.errors()
        ]
        detail = "; ".join(f"{p['field']}: {p['message']}" for p in problems)
        raise InvalidAlertRule(f"invalid alert rule: {detail}", problems=problems) from exc
    given = set(changes) | {k for k in _METRIC_FIELDS if merged.get(k) is not None}
    _check(session, settings, user, checked, given)
    _apply(rule, checked)
    session.commit()
    return rule


def delete_rule(session: Session, *, user: User, rule_id: str) -> None:
    """Forget the rule and its alerts (nothing is sent: a deleted rule no longer speaks)."""
    rule = get_rule(session, user=user, rule_id=rule_id)
    session.execute(
        AlertState.__table__.delete().where(AlertState.rule_id == rule.id)  # type: ignore[attr-defined]
    )
    session.delete(rule)
    session.commit()


def list_alerts(
    session: Session, *, user: User, status: str | None = None, rule_id: str | None = None
) -> Sequence[tuple[AlertState, AlertRule]]:
    """The caller's alerts, firing first, then the most recently resolved."""
    query = (
        select(AlertState, AlertRule)
        .join(AlertRule, AlertRule.id == AlertState.rule_id)
        .where(AlertRule.owner_id == user.id)
    )
    if status is not None:
        query = query.where(AlertState.status == status)
    if rule_id is not None:
        query = query.where(AlertState.rule_id == rule_id)
    query = query.order_by(
        case((AlertState.status == "firing", 0), else_=1),
        AlertState.fired_at.desc(),
        AlertState.id,
    )
    return [(state, rule) for state, rule in session.execute(query).all()]


# -- measuring: what a rule finds now -------------------------------------------------------------


@dataclass(frozen=True)
class Finding:
    """One subject over a rule's limit: a workflow, or a queue."""

    subject: str
    label: str
    value: float
    summary: str
    workflow_id: str | None = None
    details: Mapping[str, Any] = field(default_factory=dict)


def _scope(rule: AlertRule) -> list[ColumnElement[bool]]:
    where = [Workflow.owner_id == rule.owner_id]
    if rule.workflow_id is not None:
        where.append(Workflow.id == rule.workflow_id)
    return where


def _duration(seconds: float) -> str:
    seconds = round(seconds)
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{seconds // 60} min"
    if seconds < 2 * 86_400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86_400:.1f} days"


def measure(
    session: Session, rule: AlertRule, *, now: datetime, client: DagsterClient | None = None
) -> list[Finding]:
    """The subjects over `rule`'s limit at `now` (live execution states through `client`'s
    instance when given, else as the execution rows say)."""
    if rule.metric == "failure_rate":
        return _failure_rate(session, rule, now)
    if rule.metric == "approval_wait":
        return _approval_wait(session, rule, now)
    if rule.metric in ("execution_stuck", "queue_age"):
        return _stuck(session, rule, now, client)
    raise ValueError(f"unknown metric {rule.metric}")


def _failure_rate(session: Session, rule: AlertRule, now: datetime) -> list[Finding]:
    since = now - timedelta(seconds=rule.window_seconds)
    failed = func.sum(case((Execution.status == "failed", 1), else_=0))
    rows = session.execute(
        select(Execution.workflow_id, Workflow.name, func.count(), failed)
        .join(Workflow, Workflow.id == Execution.workflow_id)
        .where(
            *_scope(rule),
            Execution.status.in_(("failed", "succeeded")),
            Execution.finished_at >= since,
            Execution.finished_at <= now,
        )
        .group_by(Execution.workflow_id, Workflow.name)
    ).all()
    threshold = rule.threshold if rule.threshold is not None else DEFAULT_THRESHOLD
    least = rule.min_executions or DEFAULT_MIN_EXECUTIONS
    findings = []
    for workflow_id, name, total, failed_count in rows:
        failures = int(failed_count or 0)
        rate = failures / total if total else 0.0
        if total < least or rate < threshold:
            continue
        label = f"workflow '{name}'"
        findings.append(
            Finding(
                subject=f"workflow:{workflow_id}",
                label=label,
                value=rate,
                workflow_id=workflow_id,
                summary=f"{failures} of {total} executions of {label} failed in the last "
                f"{_duration(rule.window_seconds)} ({rate:.0%}, the limit is {threshold:.0%})",
                details={"failed": failures, "finished": total, "threshold": threshold},
            )
        )
    return findings


def _approval_wait(session: Session, rule: AlertRule, now: datetime) -> list[Finding]:
    cutoff = now - timedelta(seconds=rule.window_seconds)
    rows = session.execute(
        select(Waitpoint.id, Waitpoint.created_at, Execution.id, Workflow.id, Workflow.name)
        .join(Execution, Execution.id == Waitpoint.execution_id)
        .join(Workflow, Workflow.id == Execution.workflow_id)
        .where(
            *_scope(rule),
            Waitpoint.kind == "approval",
            Waitpoint.status == "pending",
            Waitpoint.created_at <= cutoff,
        )
        .order_by(Waitpoint.created_at)
        .limit(CANDIDATES)
    ).all()
    grouped: dict[tuple[str, str], list[tuple[str, datetime, str]]] = defaultdict(list)
    for waitpoint_id, created_at, execution_id, workflow_id, name in rows:
        grouped[(workflow_id, name)].append((waitpoint_id, created_at, execution_id))
    findings = []
    for (workflow_id, name), waits in grouped.items():
        oldest = (now - min(created for _, created, _ in waits)).total_seconds()
        label = f"workflow '{name}'"
        count = len(waits)
        findings.append(
            Finding(
                subject=f"workflow:{workflow_id}",
                label=label,
                value=oldest,
                workflow_id=workflow_id,
                summary=f"{count} approval{'s' if count != 1 else ''} of {label} "
                f"{'have' if count != 1 else 'has'} waited longer than "
                f"{_duration(rule.window_seconds)} (the oldest {_duration(oldest)})",
                details={
                    "count": count,
                    "approvals": [w for w, _, _ in waits[:SHOWN]],
                    "executions": [e for _, _, e in waits[:SHOWN]],
                },
            )
        )
    return findings


def _epoch(value: float | None) -> datetime | None:
    return datetime.fromtimestamp(value, UTC) if value is not None else None


def live_state(
    execution: Execution, runs: Sequence[RunInfo] | None, parked_since: datetime | None
) -> tuple[str, datetime | None]:
    """The execution's state and since when: from its runs when they were read (`runs` not
    None), else as its row says; a pending waitpoint makes it `waiting` since it was made."""
    if parked_since is not None:
        return "waiting", parked_since
    if runs is None:
        state = execution.status
        last = None
    else:
        state = execution_status(execution, runs)
        last = runs[-1] if runs else None
    if state == "queued":
        if last is not None and len(runs or ()) > 1:  # a resume or retry queued again
            return state, _epoch(last.create_time) or execution.created_at
        return state, execution.created_at
    if state == "running":
        if last is not None:
            return state, _epoch(last.start_time or last.create_time)
        return state, execution.started_at or execution.created_at
    if state in ("pausing", "paused"):
        since = execution.paused_at or (_epoch(last.update_time) if last is not None else None)
        return state, since
    return state, None  # waiting with nothing pending is resuming; terminal states are over


def _stuck(
    session: Session, rule: AlertRule, now: datetime, client: DagsterClient | None
) -> list[Finding]:
    limit = timedelta(seconds=rule.window_seconds)
    wanted = "queued" if rule.metric == "queue_age" else (rule.state or DEFAULT_STUCK_STATE)
    # Candidates by their rows (no execution is in a state longer than it exists); the row of
    # a running one still says queued, so their runs decide.
    statuses = ("queued",) if wanted == "queued" else tuple(STUCK_STATES)
    rows = session.execute(
        select(Execution, Workflow.name)
        .join(Workflow, Workflow.id == Execution.workflow_id)
        .where(
            *_scope(rule),
            Execution.status.in_(statuses),
            Execution.created_at <= now - limit,
        )
        .order_by(Execution.created_at, Execution.id)
        .limit(CANDIDATES)
    ).all()
    if not rows:
        return []
    ids = [execution.id for execution, _ in rows]
    parked = dict(
        session.execute(
            select(Waitpoint.execution_id, func.min(Waitpoint.created_at))
            .where(Waitpoint.execution_id.in_(ids), Waitpoint.status == "pending")
            .group_by(Waitpoint.execution_id)
        ).all()
    )
    runs: dict[str, list[RunInfo]] | None = None
    if client is not None:
        runs = defaultdict(list)
        for run in client.runs_for_executions(ids):
            runs[run.tags.get(EXECUTION_TAG, "")].append(run)
    grouped: dict[tuple[str, str], list[tuple[str, float]]] = defaultdict(list)
    for execution, name in rows:
        mine = runs.get(execution.id, []) if runs is not None else None
        state, since = live_state(execution, mine, parked.get(execution.id))
        if state != wanted or since is None or now - since < limit:
            continue
        if rule.metric == "queue_age":
            queue = execution.queue or DEFAULT_QUEUE
            key = (f"queue:{queue}", f"queue '{queue}'")
        else:
            key = (f"workflow:{execution.workflow_id}", f"workflow '{name}'")
        grouped[key].append((execution.id, (now - since).total_seconds()))
    findings = []
    for (subject, label), stuck in grouped.items():
        oldest = max(age for _, age in stuck)
        count = len(stuck)
        many = count != 1
        if rule.metric == "queue_age":
            summary = (
                f"{count} execution{'s' if many else ''} in {label} "
                f"{'have' if many else 'has'} been queued longer than "
                f"{_duration(rule.window_seconds)} (the oldest {_duration(oldest)})"
            )
        else:
            summary = (
                f"{count} execution{'s' if many else ''} of {label} "
                f"{'have' if many else 'has'} been {wanted} longer than "
                f"{_duration(rule.window_seconds)} (the oldest {_duration(oldest)})"
            )
        workflow_id = subject.removeprefix("workflow:") if subject.startswith("workflow:") else None
        ordered = sorted(stuck, key=lambda item: -item[1])
        findings.append(
            Finding(
                subject=subject,
                label=label,
                value=oldest,
                workflow_id=workflow_id,
                summary=summary,
                details={
                    "count": count,
                    "state": wanted,
                    "executions": [e for e, _ in ordered[:SHOWN]],
                },
            )
        )
    return findings


# -- recording: firing and resolved, each once ----------------------------------------------------


def record(
    session: Session, rule: AlertRule, findings: Sequence[Finding], *, now: datetime
) -> tuple[int, int]:
    """Write what `rule` found: a subject over its limit fires (once: a first INSERT under the
    unique constraint, or a conditional UPDATE from resolved), one no longer found resolves
    (a conditional UPDATE from firing). Returns (fired, resolved)."""
    existing = {
        subject: (state_id, status)
        for subject, state_id, status in session.execute(
            select(AlertState.subject, AlertState.id, AlertState.status).where(
                AlertState.rule_id == rule.id
            )
        ).all()
    }
    found = {f.subject for f in findings}
    fired = resolved = 0
    for finding in findings:
        values = {
            "value": finding.value,
            "summary": finding.summary,
            "details": {"label": finding.label, **finding.details},
            "workflow_id": finding.workflow_id,
            "evaluated_at": now,
        }
        current = existing.get(finding.subject)
        if current is None:
            session.add(
                AlertState(
                    rule_id=rule.id,
                    subject=finding.subject,
                    status="firing",
                    fired_at=now,
                    notify_attempts=0,
                    **values,
                )
            )
            try:
                session.commit()
            except IntegrityError:  # another tick recorded it first
                session.rollback()
                continue
            fired += 1
            continue
        state_id, status = current
        if status == "resolved":
            won = _transition(
                session,
                state_id,
                "resolved",
                status="firing",
                fired_at=now,
                resolved_at=None,
                notify_attempts=0,
                notify_error=None,
                **values,
            )
            fired += won
        else:
            _transition(session, state_id, "firing", **values)  # still firing: no news
    for subject, (state_id, status) in existing.items():
        if subject not in found and status == "firing":
            resolved += _transition(
                session,
                state_id,
                "firing",
                status="resolved",
                resolved_at=now,
                evaluated_at=now,
                notify_attempts=0,
                notify_error=None,
            )
    session.commit()
    return fired, resolved


def _transition(session: Session, state_id: str, current: str, /, **values: Any) -> int:
    """Set `values` on the state if it is still `current`; 1 if it was."""
    changed = session.execute(
        update(AlertState)
        .where(AlertState.id == state_id, AlertState.status == current)
        .values(**values)
        .execution_options(synchronize_session=False)
    ).rowcount  # type: ignore[attr-defined]
    session.commit()
    return int(changed or 0)


# -- notifying ------------------------------------------------------------------------------------


def _due() -> ColumnElement[bool]:
    """A state whose channel has not heard of its status yet (a resolve it never heard fire
    is not news)."""
    return or_(
        and_(
            AlertState.status == "firing",
            or_(AlertState.notified_status.is_(None), AlertState.notified_status == "resolved"),
        ),
        and_(AlertState.status == "resolved", AlertState.notified_status == "firing"),
    )


def notify_alerts(
    session: Session, settings: Settings, *, now: datetime, limit: int = 50
) -> tuple[int, int]:
    """Send the due notifications of enabled rules; returns (sent, failed)."""
    due = session.execute(
        select(AlertState.id, AlertState.status)
        .join(AlertRule, AlertRule.id == AlertState.rule_id)
        .where(
            AlertRule.enabled.is_(True),
            _due(),
            AlertState.notify_attempts < MAX_NOTIFY_ATTEMPTS,
            or_(AlertState.claimed_until.is_(None), AlertState.claimed_until < now),
        )
        .order_by(AlertState.evaluated_at, AlertState.id)
        .limit(limit)
    ).all()
    sent = failed = 0
    for state_id, status in due:
        won = session.execute(
            update(AlertState)
            .where(
                AlertState.id == state_id,
                AlertState.status == status,
                _due(),
                or_(AlertState.claimed_until.is_(None), AlertState.claimed_until < now),
            )
            .values(
                claimed_until=now + timedelta(seconds=CLAIM_SECONDS),
                notify_attempts=AlertState.notify_attempts + 1,
            )
            .execution_options(synchronize_session=False)
        ).rowcount  # type: ignore[attr-defined]
        session.commit()
        if not won:
            continue  # another tick has it, or it changed meanwhile
        row = session.get(AlertState, state_id)
        assert row is not None
        session.refresh(row)
        rule = session.get(AlertRule, row.rule_id)
        assert rule is not None
        error = send_notification(settings, rule, row)
        outcome: dict[str, Any] = {"claimed_until": None}
        if error is None:
            outcome.update(notified_status=status, notified_at=utcnow(), notify_error=None)
            sent += 1
        else:
            log.warning("alert %s (%s): not notified: %s", rule.name, row.subject, error)
            outcome["notify_error"] = error[:4000]
            failed += 1
        session.execute(
            update(AlertState)
            .where(AlertState.id == state_id)
            .values(**outcome)
            .execution_options(synchronize_session=False)
        )
        session.commit()
    return sent, failed


def message(settings: Settings, rule: AlertRule, row: AlertState) -> dict[str, Any]:
    """What a notification says: `subject` and `text` (email, Slack) and the webhook's JSON."""
    label = str((row.details or {}).get("label") or row.subject)
    alerts_url = f"{settings.public_api_url.rstrip('/')}/alerts?rule_id={rule.id}"
    if row.status == "firing":
        title = f"FIRING: {rule.name}: {label}"
        text = f"{title}\n{row.summary}\nSince {row.fired_at.isoformat()}. {alerts_url}"
    else:
        since = row.fired_at.isoformat()
        lasted = _duration(((row.resolved_at or utcnow()) - row.fired_at).total_seconds())
        title = f"RESOLVED: {rule.name}: {label}"
        text = f"{title}\nBack within the limit after {lasted} (firing since {since}). {alerts_url}"
    payload = {
        "event": f"alert.{row.status}",
        "text": text,
        "ruleId": rule.id,
        "rule": rule.name,
        "metric": rule.metric,
        "subject": row.subject,
        "label": label,
        "workflowId": row.workflow_id,
        "status": row.status,
        "value": row.value,
        "summary": row.summary,
        "details": dict(row.details or {}),
        "firedAt": row.fired_at.isoformat(),
        "resolvedAt": row.resolved_at.isoformat() if row.resolved_at else None,
        "alertsUrl": alerts_url,
    }
    return {"subject": f"[FlowMaestro] {title}", "text": text, "payload": payload}


def send_notification(settings: Settings, rule: AlertRule, row: AlertState) -> str | None:
    """Send `row`'s news to the rule's channel through its connector: None once sent, else
    why not (secrets redacted)."""
    channel = dict(rule.channel or {})
    provider = str(channel.get("type") or "")
    problems = (
        channel_problems(settings, channel) if provider in ("email", "slack", "webhook") else []
    )
    if problems or not provider:
        return problems[0]["message"] if problems else f"unknown channel {channel!r}"
    name, connection = resolve_connection(settings, channel.get("connection"), provider)
    said = message(settings, rule, row)
    parameters: dict[str, Any]
    if provider == "email":
        parameters = {
            "to": channel.get("to") or [],
            "subject": said["subject"],
            "body": said["text"],
        }
    elif provider == "slack":
        parameters = {"text": said["text"]}
    else:
        parameters = {"body": said["payload"], "timeout": NOTIFY_TIMEOUT_S}
    prepared = platform_send(
        settings,
        provider,
        name,
        connection,
        parameters,
        node_id=f"alert-{rule.id}",
        node_type="alert",
        label=rule.name,
    )
    if isinstance(prepared, str):
        return prepared
    spec, request = prepared
    try:
        spec.run(request)
    except Exception as exc:  # noqa: BLE001 - recorded on the alert; a connector may raise anything
        return failure_reason(exc, request.connection)
    return None


# -- one tick -------------------------------------------------------------------------------------


def tick(
    session: Session,
    client: DagsterClient | None,
    settings: Settings,
    *,
    now: datetime | None = None,
) -> dict[str, int]:
    """Evaluate every enabled rule, record what fired and resolved, send what is due."""
    now = now or utcnow()
    rules = session.scalars(
        select(AlertRule).where(AlertRule.enabled.is_(True)).order_by(AlertRule.id)
    ).all()
    counts = {"rules": len(rules), "fired": 0, "resolved": 0, "errors": 0}
    for rule in rules:
        try:
            findings = measure(session, rule, now=now, client=client)
        except Exception:  # one rule's trouble must not silence the others
            log.exception("alert rule %s (%s) could not be evaluated", rule.id, rule.name)
            session.rollback()
            counts["errors"] += 1
            continue
        fired, resolved = record(session, rule, findings, now=now)
        counts["fired"] += fired
        counts["resolved"] += resolved
    counts["notified"], counts["failed"] = notify_alerts(session, settings, now=now)
    counts["firing"] = int(
        session.scalar(
            select(func.count()).select_from(AlertState).where(AlertState.status == "firing")
        )
        or 0
    )
    return counts


__all__ = [
    "CANDIDATES",
    "MAX_NOTIFY_ATTEMPTS",
    "METRICS",
    "STUCK_STATES",
    "AlertChannel",
    "AlertRuleCreate",
    "AlertRuleUpdate",
    "EmailChannel",
    "Finding",
    "SlackChannel",
    "WebhookChannel",
    "channel_problems",
    "create_rule",
    "delete_rule",
    "get_rule",
    "list_alerts",
    "list_rules",
    "live_state",
    "measure",
    "message",
    "notify_alerts",
    "record",
    "send_notification",
    "tick",
    "update_rule",
]
