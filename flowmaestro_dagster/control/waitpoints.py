"""Waitpoints: parking, resolving (due time, approval, callback, child run) and resuming.

A parked run has ended; its waitpoints are rows here. Resolving a waitpoint is a conditional
UPDATE (pending → resolved) next to a unique decision row, so two concurrent decisions cannot
both win. When every waitpoint a run parked on is resolved, the run is resumed: its waitpoint
steps and everything downstream of them are re-executed (GraphQL `launchRunReexecution` with
the parked run as parent), so finished nodes are not run again — their outputs come from the
parked run through the database IO manager. A resume claims the waitpoints with a lease and
checks for a run already tagged `flowmaestro/resume_of`, so each parked run resumes once
whoever (sensor, API) gets there first. A cancel closes the waitpoints (`cancelled`) and wins
over a resume in flight: the resume records its run only if the execution's `cancelled_at` is
still unset, and otherwise terminates it.
"""

import hashlib
import hmac
import json
import logging
import math
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, Row, Text, cast, func, or_, select, true, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from flowmaestro_dagster.compile.compiler import CompiledWorkflow
from flowmaestro_dagster.control.client import DagsterClient
from flowmaestro_dagster.control.executions import (
    TERMINAL,
    compiled_for,
    launch_config,
    refresh,
    run_tags,
    start_execution,
    stop_run,
    version_row,
)
from flowmaestro_dagster.control.requests import ExecutionCreate
from flowmaestro_dagster.errors import (
    Conflict,
    Forbidden,
    Gone,
    NotFound,
    PatternError,
    Unprocessable,
)
from flowmaestro_dagster.lang.patterns import compile_pattern
from flowmaestro_dagster.settings import Settings
from flowmaestro_dagster.spec.configs import expiry_action
from flowmaestro_dagster.store.db import get_engine, session_scope
from flowmaestro_dagster.store.models import Decision, Execution, User, Waitpoint, utcnow
from flowmaestro_dagster.tags import RESUME_TAG, WAITING_TAGS

log = logging.getLogger(__name__)

PARKED = ("pending", "resolved", "resuming")


# -- tokens --------------------------------------------------------------------------------------


def _utf8(text: str) -> bytes:
    """Text from a URL or a header as bytes: any character is a mismatch, never a TypeError
    (`hmac.compare_digest` refuses non-ASCII str, which made a forged link a 500)."""
    return text.encode("utf-8", "surrogatepass")


def signed_token(secret: str, purpose: str, waitpoint_id: str) -> str:
    """`<id>.<mac>`: a link that names one waitpoint and cannot be forged."""
    mac = hmac.new(secret.encode(), _utf8(f"{purpose}:{waitpoint_id}"), hashlib.sha256)
    return f"{waitpoint_id}.{mac.hexdigest()[:40]}"


def verify_token(secret: str, purpose: str, token: str) -> str | None:
    waitpoint_id, _, _mac = token.partition(".")
    if not waitpoint_id or not hmac.compare_digest(
        _utf8(signed_token(secret, purpose, waitpoint_id)), _utf8(token)
    ):
        return None
    return waitpoint_id


def verify_signature(
    secret: str,
    header: str | None,
    body: bytes,
    *,
    now: float,
    tolerance: float,
    bound_to: str | None = None,
) -> bool:
    """Stripe-style `t=<unix>,v1=<hex hmac-sha256(secret, "<t>.<body>")>` within a tolerance.

    With `bound_to` (a callback's token) the signed message is `"<t>.<bound_to>.<body>"`: one
    secret signs every callback, so a signature must name the callback it was made for, or a
    delivery captured for one could complete another within the tolerance."""
    if not header:
        return False
    parts: dict[str, list[str]] = {}
    for item in header.split(","):
        key, _, value = item.strip().partition("=")
        parts.setdefault(key, []).append(value)
    try:
        timestamp = int(parts.get("t", [""])[0])
    except ValueError:
        return False
    if abs(now - timestamp) > tolerance:
        return False
    expected = _digest(secret, body, timestamp, bound_to).encode()
    # Bytes, not str: a header with a non-ASCII character must be a mismatch, not a TypeError.
    return any(
        hmac.compare_digest(expected, candidate.encode("utf-8", "surrogateescape"))
        for candidate in parts.get("v1", [])
    )


def _digest(secret: str, body: bytes, timestamp: int, bound_to: str | None = None) -> str:
    prefix = f"{timestamp}." if bound_to is None else f"{timestamp}.{bound_to}."
    return hmac.new(secret.encode(), _utf8(prefix) + body, hashlib.sha256).hexdigest()


def sign(secret: str, body: bytes, timestamp: int, *, bound_to: str | None = None) -> str:
    """The header `verify_signature` accepts (what callers of callbacks and hooks send); a
    callback's signature is `bound_to` its token."""
    return f"t={timestamp},v1={_digest(secret, body, timestamp, bound_to)}"


# -- child executions (what the run workers' store calls) ---------------------------------------


def start_child_execution(
    parent_execution_id: str, spec: Mapping[str, Any], *, database_url: str, shards: int
) -> str:
    """Commit a child workflow's execution (a `child` waitpoint); the reconciler launches it."""
    engine = get_engine(database_url)
    with session_scope(engine) as session:
        parent = session.get(Execution, parent_execution_id)
        if parent is None:
            raise NotFound(f"no execution {parent_execution_id}")
        user = session.get(User, parent.user_id)
        assert user is not None
        inputs = spec.get("inputs") if isinstance(spec.get("inputs"), dict) else {}
        execution, _ = start_execution(
            session,
            user=user,
            workflow_id=str(spec["workflow_id"]),
            body=ExecutionCreate(inputs=inputs or {}),
            idempotency_key=f"child-of:{parent_execution_id}:{spec.get('node', '')}",
            default_ttl_seconds=30 * 86_400,
            shards=shards,
        )
        return execution.id


# -- resolving -----------------------------------------------------------------------------------


def _resolve(session: Session, waitpoint: Waitpoint, resolution: dict[str, Any]) -> bool:
    """pending → resolved, once; False if someone else resolved it first."""
    changed = session.execute(
        update(Waitpoint)
        .where(Waitpoint.id == waitpoint.id, Waitpoint.status == "pending")
        .values(status="resolved", resolution=resolution, resolved_at=utcnow())
    ).rowcount  # type: ignore[attr-defined]
    return bool(changed)


def check_response(spec: Mapping[str, Any], decision: str, value: Any) -> Any:
    """The typed value of a response, or 422 naming what is wrong with it. A value given with
    `approve` is checked like a response (the page's "Yes" + Approve is an approval whose
    response is true); a plain approve or a reject keeps its value unchecked."""
    if decision == "approve" and value is not None and value != "":
        return check_response(spec, "respond", value)
    if decision != "respond":
        return value
    kind = str(spec.get("input_type") or "text")
    problems = []
    typed = value
    if value is None or value == "":
        if spec.get("required", True):
            problems.append(
                {"code": "required", "field": "value", "message": "a response is required"}
            )
    elif kind == "number":
        if isinstance(value, bool) or not isinstance(value, int | float):
            try:
                typed = float(str(value))
                typed = int(typed) if typed.is_integer() else typed
            except ValueError:
                problems.append(
                    {"code": "invalid_type", "field": "value", "message": "must be a number"}
                )
        if isinstance(typed, int | float) and not isinstance(typed, bool) and math.isnan(typed):
            problems.append(
                {"code": "invalid_type", "field": "value", "message": "must be a number"}
            )
    elif kind == "boolean":
        if isinstance(value, str) and value.lower() in ("true", "false"):
            typed = value.lower() == "true"
        elif not isinstance(value, bool):
            problems.append(
                {"code": "invalid_type", "field": "value", "message": "must be true or false"}
            )
    elif kind == "json":
        if isinstance(value, str):
            try:
                typed = json.loads(value)
            except ValueError as exc:
                problems.append(
                    {"code": "invalid_type", "field": "value", "message": f"must be JSON: {exc}"}
                )
    elif not isinstance(value, str):
        typed = json.dumps(value) if isinstance(value, dict | list) else str(value)
    rules = spec.get("validation") if isinstance(spec.get("validation"), dict) else {}
    if not problems and rules:
        problems += _rule_problems(rules, typed)
    if problems:
        raise Unprocessable("; ".join(p["message"] for p in problems), problems=problems)
    return typed


def _rule_problems(rules: Mapping[str, Any], value: Any) -> list[dict[str, str]]:
    out = []

    def bad(code: str, message: str) -> None:
        out.append({"code": code, "field": "value", "message": message})

    if isinstance(value, int | float) and not isinstance(value, bool):
        if "min" in rules and value < rules["min"]:
            bad("too_small", f"must be at least {rules['min']}")
        if "max" in rules and value > rules["max"]:
            bad("too_large", f"must be at most {rules['max']}")
    if isinstance(value, str):
        if "minLength" in rules and len(value) < int(rules["minLength"]):
            bad("too_short", f"must be at least {rules['minLength']} characters")
        if "maxLength" in rules and len(value) > int(rules["maxLength"]):
            bad("too_long", f"must be at most {rules['maxLength']} characters")
        if rules.get("pattern") is not None:
            out.extend(_pattern_problems(rules["pattern"], value))
    options = rules.get("options") or rules.get("enum")
    if isinstance(options, list) and value not in options:
        bad("not_an_option", f"must be one of {options}")
    return out


def _pattern_problems(pattern: Any, value: str) -> list[dict[str, str]]:
    """The response against the review's pattern, on RE2 in linear time (`lang/patterns.py`):
    the approval page is unauthenticated, and `re` spent minutes on `(a+)+$`. A pattern that
    cannot run names `validation.pattern`: validation refuses it at deploy time, but a version
    deployed before that may still hold one."""
    try:
        compiled = compile_pattern(pattern)
    except PatternError as exc:
        message = f"the review's validation pattern cannot be used: {exc}"
        return [{"code": "invalid_pattern", "field": "validation.pattern", "message": message}]
    try:
        if compiled.matches(value):
            return []
    except PatternError as exc:
        return [{"code": "too_long", "field": "value", "message": str(exc)}]
    return [{"code": "pattern", "field": "value", "message": f"must match {pattern}"}]


def decide(
    session: Session,
    *,
    waitpoint: Waitpoint,
    user: User | None,
    via: str,
    decision: str,
    value: Any,
    comment: str | None,
) -> Waitpoint:
    """Record the one decision on an approval and resolve it (409 for a second decision)."""
    if waitpoint.kind != "approval":
        raise Conflict("this waitpoint is not an approval")
    if decision not in ("approve", "reject", "respond"):
        raise Unprocessable("decision must be approve, reject or respond")
    gone_if_cancelled(session, waitpoint)
    if waitpoint.status == "expired" or (
        waitpoint.status == "pending"
        and waitpoint.expires_at is not None
        and waitpoint.expires_at <= utcnow()
    ):
        raise Gone("the approval has expired")
    if waitpoint.status != "pending":
        raise Conflict("the approval was already decided")
    typed = check_response(waitpoint.spec, decision, value)
    with _cancel_wins(session, waitpoint):
        record_decision(
            session,
            waitpoint,
            Decision(
                waitpoint_id=waitpoint.id,
                user_id=user.id if user else None,
                via=via,
                decision=decision,
                value=typed,
                comment=comment,
            ),
            {
                "decision": decision,
                "value": typed,
                "comment": comment,
                "by": user.email if user else via,
                "at": utcnow().isoformat(),
            },
            conflict="the approval was already decided",
        )
    session.commit()
    session.refresh(waitpoint)
    return waitpoint


def record_decision(
    session: Session,
    waitpoint: Waitpoint,
    decision: Decision,
    resolution: dict[str, Any],
    *,
    conflict: str,
) -> None:
    """The one decision on a waitpoint, and pending → resolved; 409 `conflict` if another
    decision got there first (the unique waitpoint_id decides between concurrent ones)."""
    session.add(decision)
    try:
        session.flush()
    except IntegrityError as exc:
        session.rollback()
        raise Conflict(conflict) from exc
    if not _resolve(session, waitpoint, resolution):
        session.rollback()
        raise Conflict(conflict)


def _approvers(spec: Mapping[str, Any]) -> list[str]:
    return [str(a).lower() for a in spec.get("approvers") or []]


def may_decide(session: Session, waitpoint: Waitpoint, user: User) -> bool:
    """A named approver (emails, any case), or the execution's owner when none is named."""
    approvers = _approvers(waitpoint.spec)
    if approvers:
        return user.email.lower() in approvers
    execution = session.get(Execution, waitpoint.execution_id)
    return execution is not None and execution.user_id == user.id


def pending_approvals(session: Session, *, user: User, limit: int = 100) -> list[Waitpoint]:
    """The oldest pending approvals `user` may decide, at most `limit`.

    The query keeps only the user's candidates before anything is counted — reviews of their
    own executions, and reviews whose spec holds their email as a JSON string — so other
    users' older approvals cannot fill the page; `may_decide`'s exact rule then settles each
    row as the rows stream in (an owner is not an approver when the review names others)."""
    email = user.email.lower()
    # Backends write non-ASCII into JSON text differently: such an email is not prefiltered.
    candidates: ColumnElement[bool] = true()
    if email.isascii():
        quoted = json.dumps(email)  # as the JSON text holds it: quoted, escaped
        named = func.lower(cast(Waitpoint.spec, Text)).contains(quoted, autoescape=True)
        candidates = or_(Execution.user_id == user.id, named)
    found: list[Waitpoint] = []
    with session.execute(
        select(Waitpoint, Execution.user_id)
        .join(Execution, Execution.id == Waitpoint.execution_id)
        .where(Waitpoint.kind == "approval", Waitpoint.status == "pending", candidates)
        .order_by(Waitpoint.created_at, Waitpoint.id)
        .execution_options(yield_per=max(limit, 100))
    ) as rows:
        for waitpoint, owner_id in rows:
            approvers = _approvers(waitpoint.spec)
            if email in approvers if approvers else owner_id == user.id:
                found.append(waitpoint)
                if len(found) == limit:
                    break
    return found


def resolve_callback(session: Session, *, waitpoint: Waitpoint, payload: Any) -> Waitpoint:
    gone_if_cancelled(session, waitpoint)
    if waitpoint.status == "expired" or (
        waitpoint.expires_at is not None
        and waitpoint.expires_at <= utcnow()
        and waitpoint.status == "pending"
    ):
        raise Gone("the waitpoint has expired")
    if waitpoint.status != "pending":
        raise Forbidden("this callback token was already used")
    session.add(
        Decision(waitpoint_id=waitpoint.id, via="callback", decision="respond", value=payload)
    )
    try:
        session.flush()
    except IntegrityError as exc:
        session.rollback()
        raise Forbidden("this callback token was already used") from exc
    resolution = {
        "decision": "respond",
        "value": payload,
        "at": utcnow().isoformat(),
        "by": "callback",
    }
    if not _resolve(session, waitpoint, resolution):
        session.rollback()
        session.refresh(waitpoint)
        gone_if_cancelled(session, waitpoint)  # a cancel that closed it meanwhile: 410
        raise Forbidden("this callback token was already used")
    session.commit()
    return waitpoint


# -- cancelled executions ------------------------------------------------------------------------


def cancel_waitpoints(
    session: Session, execution_id: str, cancel: Mapping[str, Any]
) -> list[Row[Any]]:
    """Close the execution's open waitpoints (pending, resolved, resuming) as `cancelled`, each
    with `cancel` (who, when, why) as its resolution; a decision it had is kept under
    `decided`. Each row moves with an UPDATE conditional on the status it was read with: a
    concurrent decision either lands first (and is kept) or finds the row cancelled, and a row
    that moved meanwhile is read again. In the caller's transaction (not committed). Returns
    the rows closed (id, run_id, node_id, kind)."""
    closed: list[Row[Any]] = []
    for _ in range(5):  # a row moves at most pending → resolved → resuming
        rows = session.execute(
            select(
                Waitpoint.id,
                Waitpoint.status,
                Waitpoint.resolution,
                Waitpoint.run_id,
                Waitpoint.node_id,
                Waitpoint.kind,
            ).where(Waitpoint.execution_id == execution_id, Waitpoint.status.in_(PARKED))
        ).all()
        if not rows:
            break
        for row in rows:
            resolution = {**cancel, **({"decided": row.resolution} if row.resolution else {})}
            changed = session.execute(
                update(Waitpoint)
                .where(Waitpoint.id == row.id, Waitpoint.status == row.status)
                .values(status="cancelled", resolution=resolution, resolved_at=utcnow())
                .execution_options(synchronize_session=False)
            ).rowcount  # type: ignore[attr-defined]
            if changed:
                closed.append(row)
    return closed


def close_cancelled(session: Session, *, execution_id: str | None = None, limit: int = 100) -> int:
    """Waitpoints still open on a cancelled execution (one its run parked after the cancel had
    closed the others): cancelled too, so no decision, callback or due time resumes it."""
    query = (
        select(Waitpoint.execution_id, Execution.cancelled_at)
        .join(Execution, Execution.id == Waitpoint.execution_id)
        .where(Waitpoint.status.in_(PARKED), Execution.cancelled_at.is_not(None))
        .distinct()
        .limit(limit)
    )
    if execution_id is not None:
        query = query.where(Waitpoint.execution_id == execution_id)
    count = 0
    for cancelled_id, cancelled_at in session.execute(query).all():
        at = cancelled_at.isoformat() if cancelled_at is not None else utcnow().isoformat()
        reason = f"the execution was cancelled at {at} (this waitpoint parked after the cancel)"
        cancel = {"decision": "cancelled", "by": None, "at": at, "reason": reason}
        count += len(cancel_waitpoints(session, cancelled_id, cancel))
    session.commit()
    return count


def gone_if_cancelled(session: Session, waitpoint: Waitpoint) -> None:
    """410 with the reason (who cancelled, when) for a waitpoint whose execution was cancelled:
    its decision, callback or due time can no longer resume anything."""
    if waitpoint.status != "cancelled":
        cancelled = session.scalar(
            select(Execution.cancelled_at).where(Execution.id == waitpoint.execution_id)
        )
        if cancelled is None or waitpoint.status not in PARKED:
            return
        close_cancelled(session, execution_id=waitpoint.execution_id)
        session.refresh(waitpoint)
        if waitpoint.status != "cancelled":
            return
    cancel = waitpoint.resolution if isinstance(waitpoint.resolution, dict) else {}
    raise Gone(
        str(cancel.get("reason") or "the execution was cancelled"),
        cancelled_by=cancel.get("by"),
        cancelled_at=cancel.get("at"),
    )


@contextmanager
def _cancel_wins(session: Session, waitpoint: Waitpoint) -> Iterator[None]:
    """A decision that lost its conditional UPDATE to a cancel answers 410 with the cancel's
    reason, not 409 "already decided"."""
    try:
        yield
    except Conflict:
        session.refresh(waitpoint)
        gone_if_cancelled(session, waitpoint)
        raise


def _of_cancelled_execution() -> ColumnElement[bool]:
    return (
        select(Execution.id)
        .where(Execution.id == Waitpoint.execution_id, Execution.cancelled_at.is_not(None))
        .exists()
    )


def resolve_due(session: Session, *, now: datetime, limit: int = 500) -> int:
    """Datetime waitpoints whose time has come (not those of a cancelled execution)."""
    result = session.execute(
        update(Waitpoint)
        .where(
            Waitpoint.id.in_(
                select(Waitpoint.id)
                .where(
                    Waitpoint.status == "pending",
                    Waitpoint.kind == "datetime",
                    Waitpoint.due_at <= now,
                    ~_of_cancelled_execution(),
                )
                .limit(limit)
            )
        )
        .values(
            status="resolved",
            resolved_at=now,
            resolution={"decision": "due", "at": now.isoformat()},
        )
        .execution_options(synchronize_session=False)
    )
    session.commit()
    return int(result.rowcount or 0)  # type: ignore[attr-defined]


# An approval's expiry action (spec/configs.py `expiry_action`) → the decision it records;
# nodes/waitpoints.py `approval_output` shows each as approve / reject / respond / timeout.
_EXPIRY = {
    "reject": "reject",
    "approve": "expire_approve",
    "default": "expire_default",
    "fail": "expire_fail",
    "timeout": "expire_timeout",
}


def expire_due(
    session: Session, *, now: datetime, limit: int = 200, client: DagsterClient | None = None
) -> int:
    """Approvals and callbacks past their expiry: the action on expiry becomes the decision,
    and (with a client) a `waitpoint.expired` event on the parked run says which."""
    rows = session.scalars(
        select(Waitpoint)
        .where(
            Waitpoint.status == "pending",
            Waitpoint.expires_at.is_not(None),
            Waitpoint.expires_at <= now,
        )
        .limit(limit)
    ).all()
    count = 0
    for row in rows:
        action = _EXPIRY.get(expiry_action(row.on_expiry) or "reject", "reject")
        if row.kind == "callback":
            action = "expire"
        value = row.spec.get("default_value") if action == "expire_default" else None
        resolution = {
            "decision": action,
            "value": value,
            "comment": "expired",
            "at": now.isoformat(),
            "by": "expiry",
        }
        session.add(Decision(waitpoint_id=row.id, via="expiry", decision="expire", value=value))
        try:
            session.flush()
        except IntegrityError:
            session.rollback()
            continue
        if _resolve(session, row, resolution):
            count += 1
            session.commit()
            _report_expired(client, row, action)
        session.commit()
    return count


def _report_expired(client: DagsterClient | None, row: Waitpoint, action: str) -> None:
    if client is None:
        return
    data = {
        "waitpoint_id": row.id,
        "node_id": row.node_id,
        "kind": row.kind,
        "on_expiry": row.on_expiry,
        "decision": action,
    }
    message = f"Waitpoint {row.kind} of node '{row.node_id}' expired: {action}"
    try:
        client.report_event(row.run_id, "waitpoint.expired", data, message)
    except Exception as exc:  # noqa: BLE001 - the event log is a view; the row is the record
        log.warning("could not log the expiry of waitpoint %s: %s", row.id, exc)


def resolve_children(session: Session, client: DagsterClient, *, limit: int = 200) -> int:
    """Child waitpoints whose child execution finished: its outputs (or its failure)."""
    rows = session.scalars(
        select(Waitpoint)
        .where(Waitpoint.status == "pending", Waitpoint.kind == "child")
        .limit(limit)
    ).all()
    count = 0
    for row in rows:
        child = session.get(Execution, row.child_execution_id) if row.child_execution_id else None
        if child is None:
            continue
        view = refresh(session, client, child)
        if view.execution.status not in TERMINAL:
            continue
        resolution = {
            "status": view.execution.status,
            "outputs": view.execution.outputs,
            "error": view.execution.error,
            "child_execution_id": child.id,
            "at": utcnow().isoformat(),
        }
        if _resolve(session, row, resolution):
            count += 1
        session.commit()
    return count


# -- resuming ------------------------------------------------------------------------------------


def resumable_runs(
    session: Session, *, limit: int = 100, lease_seconds: int = 60
) -> list[tuple[str, str]]:
    """(execution, parked run) pairs whose waitpoints are all resolved and not yet resumed."""
    stale = utcnow() - timedelta(seconds=lease_seconds)
    candidates = session.execute(
        select(Waitpoint.execution_id, Waitpoint.run_id)
        .where(
            (Waitpoint.status == "resolved")
            | ((Waitpoint.status == "resuming") & (Waitpoint.resume_claimed_at < stale))
        )
        .distinct()
        .limit(limit)
    ).all()
    ready = []
    for execution_id, run_id in candidates:
        pending = session.scalar(
            select(Waitpoint.id)
            .where(
                Waitpoint.execution_id == execution_id,
                Waitpoint.run_id == run_id,
                Waitpoint.status == "pending",
            )
            .limit(1)
        )
        if pending is None:
            ready.append((str(execution_id), str(run_id)))
    return ready


def job_successors(compiled: CompiledWorkflow) -> dict[str, set[str]]:
    graph = compiled.job.graph
    successors: dict[str, set[str]] = {node.name: set() for node in graph.nodes}
    structure = graph.dependency_structure
    for node in graph.nodes:
        for outputs in structure.input_to_upstream_outputs_for_node(node.name).values():
            for output in outputs:
                successors[output.node_name].add(node.name)
    return successors


def resume_step_keys(
    compiled: CompiledWorkflow, waitpoint_steps: Iterable[str], parent_step_keys: Iterable[str]
) -> list[str]:
    """The waitpoint steps and every step downstream of them, as keys of the parked run."""
    successors = job_successors(compiled)
    frontier = [key.split("[", 1)[0] for key in waitpoint_steps]
    aliases: set[str] = set()
    while frontier:
        alias = frontier.pop()
        if alias in aliases:
            continue
        aliases.add(alias)
        frontier.extend(successors.get(alias, ()))
    known = list(dict.fromkeys(parent_step_keys))
    keys: list[str] = []
    for alias in sorted(aliases):
        mapped = [k for k in known if k.startswith(f"{alias}[")]
        if mapped:
            keys.extend(mapped)
        elif alias in known or not any(k.startswith(alias) for k in known):
            keys.append(alias)
    waiting = list(waitpoint_steps)
    return list(dict.fromkeys([*waiting, *keys]))


def resume_run(
    session: Session,
    client: DagsterClient,
    *,
    execution_id: str,
    parked_run_id: str,
    lease_seconds: int = 60,
) -> str | None:
    """Re-execute a parked run from its waitpoints, once; None if someone else holds it."""
    token = str(uuid.uuid4())
    now = utcnow()
    stale = now - timedelta(seconds=lease_seconds)
    claimed = session.execute(
        update(Waitpoint)
        .where(
            Waitpoint.execution_id == execution_id,
            Waitpoint.run_id == parked_run_id,
            (Waitpoint.status == "resolved")
            | ((Waitpoint.status == "resuming") & (Waitpoint.resume_claimed_at < stale)),
        )
        .values(status="resuming", resume_token=token, resume_claimed_at=now)
        .execution_options(synchronize_session=False)
    ).rowcount  # type: ignore[attr-defined]
    session.commit()
    if not claimed:
        return None
    still_pending = session.scalar(
        select(Waitpoint.id)
        .where(
            Waitpoint.execution_id == execution_id,
            Waitpoint.run_id == parked_run_id,
            Waitpoint.status == "pending",
        )
        .limit(1)
    )
    if still_pending is not None:  # a waitpoint parked late in the same run: wait for it too
        _release(session, execution_id, parked_run_id, token)
        return None
    if session.scalar(select(Execution.cancelled_at).where(Execution.id == execution_id)):
        _close(session, token, run_id=None)  # parked after its cancel: nothing to resume
        return None
    try:
        run_id = _launch_resume(session, client, execution_id, parked_run_id)
    except Exception:
        _release(session, execution_id, parked_run_id, token)
        raise
    # Conditional, the execution's row first (as a cancel takes them): a cancel that claimed
    # the execution while Dagster was being asked wins, and the resumed run is stopped.
    resumed = session.execute(
        update(Execution)
        .where(Execution.id == execution_id, Execution.cancelled_at.is_(None))
        .values(latest_run_id=run_id, status="queued")
    ).rowcount  # type: ignore[attr-defined]
    if not resumed:
        _close(session, token, run_id=run_id)
        stop_run(client, run_id)
        return None
    session.execute(
        update(Waitpoint)
        .where(Waitpoint.resume_token == token, Waitpoint.status == "resuming")
        .values(status="resumed", resume_run_id=run_id, resumed_at=utcnow())
        .execution_options(synchronize_session=False)
    )
    session.commit()
    clear_waiting(client, parked_run_id)
    return run_id


def clear_waiting(client: DagsterClient, run_id: str) -> None:
    """Take the waiting tags off a parked run once its resume is launched, so filtering the
    runs page by `flowmaestro/waiting` lists exactly the executions still waiting (the resumed
    run links back through Dagster's parent and root run tags). Never fails the resume."""
    try:
        if not client.untag_run(run_id, WAITING_TAGS):
            log.warning("run storage cannot delete tags: run %s still looks waiting", run_id)
    except Exception as exc:  # noqa: BLE001 - the tags are for display; the resume stands
        log.warning("could not clear the waiting tags of run %s: %s", run_id, exc)


def _close(session: Session, token: str, *, run_id: str | None) -> None:
    """The claimed waitpoints of a cancelled execution: cancelled, never resumed."""
    session.execute(
        update(Waitpoint)
        .where(Waitpoint.resume_token == token)
        .values(status="cancelled", resume_run_id=run_id)
        .execution_options(synchronize_session=False)
    )
    session.commit()


def _release(session: Session, execution_id: str, run_id: str, token: str) -> None:
    session.execute(
        update(Waitpoint)
        .where(
            Waitpoint.execution_id == execution_id,
            Waitpoint.run_id == run_id,
            Waitpoint.resume_token == token,
            Waitpoint.status == "resuming",  # not one a cancel closed meanwhile
        )
        .values(status="resolved", resume_token=None, resume_claimed_at=None)
        .execution_options(synchronize_session=False)
    )
    session.commit()


def _launch_resume(
    session: Session, client: DagsterClient, execution_id: str, parked_run_id: str
) -> str:
    existing = [
        r
        for r in client.runs_for_execution(execution_id)
        if r.tags.get(RESUME_TAG) == parked_run_id
    ]
    if existing:
        return existing[0].run_id  # resumed before a crash: don't resume twice
    execution = session.get(Execution, execution_id)
    assert execution is not None
    version = version_row(session, execution)
    assert version is not None
    compiled = compiled_for(version)
    waitpoints = session.scalars(
        select(Waitpoint).where(
            Waitpoint.execution_id == execution_id, Waitpoint.run_id == parked_run_id
        )
    ).all()
    parent_keys = [stat.step_key for stat in client.step_stats(parked_run_id)]
    step_keys = resume_step_keys(compiled, [w.step_key for w in waitpoints], parent_keys)
    runs = client.runs_for_execution(execution_id)
    root = runs[0].run_id if runs else parked_run_id
    tags = {**run_tags(execution), RESUME_TAG: parked_run_id}
    return client.reexecute_steps(
        location=execution.location_name,
        job=execution.job_name,
        parent_run_id=parked_run_id,
        root_run_id=root,
        step_keys=step_keys,
        run_config=launch_config(execution.inputs),
        tags=tags,
    )


def tick(
    session: Session,
    client: DagsterClient,
    *,
    lease_seconds: int = 60,
    settings: Settings | None = None,
) -> dict[str, int]:
    """One sensor tick: resolve what is due, expired or finished, resume what is ready; with
    `settings` (the sensor's), also notify the approvers of new approvals."""
    # Imported here: notifications builds its links with this module's signed_token.
    from flowmaestro_dagster.control.notifications import notify_approvers

    now = utcnow()
    close_cancelled(session)  # before anything resolves or resumes them
    counts = {
        "due": resolve_due(session, now=now),
        "expired": expire_due(session, now=now, client=client),
        "children": resolve_children(session, client),
        "notified": 0,
        "resumed": 0,
        "failed": 0,
    }
    if settings is not None:
        try:
            counts["notified"] = notify_approvers(session, client, settings)
        except Exception as exc:  # noqa: BLE001 - notifying must not stop resumes
            session.rollback()
            log.warning("could not notify approvers: %s", exc)
    for execution_id, run_id in resumable_runs(session, lease_seconds=lease_seconds):
        try:
            if resume_run(
                session,
                client,
                execution_id=execution_id,
                parked_run_id=run_id,
                lease_seconds=lease_seconds,
            ):
                counts["resumed"] += 1
        except Exception as exc:  # noqa: BLE001 - one failing resume must not block the rest
            log.warning("could not resume execution %s: %s", execution_id, exc)
            counts["failed"] += 1
    return counts


def waiting_executions(session: Session, execution_ids: Sequence[str]) -> set[str]:
    """Executions parked at a waitpoint (pending or not yet resumed)."""
    if not execution_ids:
        return set()
    rows = session.scalars(
        select(Waitpoint.execution_id).where(
            Waitpoint.execution_id.in_(list(execution_ids)), Waitpoint.status.in_(PARKED)
        )
    )
    return set(rows)
