"""Approvals (humanReview waitpoints) and callbacks (webhook waits): decide, and resume at once."""

import json
import time
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Form, Header, Request
from fastapi.responses import HTMLResponse
from fastapi.templating import Jinja2Templates
from jinja2 import Environment, FileSystemLoader, select_autoescape
from pydantic import BaseModel, Field
from sqlalchemy.orm import Session

from flowmaestro_api.deps import CurrentUser, SessionDep, SessionRoute, SettingsDep
from flowmaestro_api.errors import Forbidden, NotFound, PlatformError, Unauthenticated
from flowmaestro_api.settings import ApiSettings
from flowmaestro_dagster.control import waitpoints as service
from flowmaestro_dagster.store.models import Waitpoint

router = APIRouter(route_class=SessionRoute, tags=["approvals"])


class ApprovalPublic(BaseModel):
    id: str
    execution_id: str
    node_id: str
    iteration: str
    status: str
    prompt: str
    input_type: str
    required: bool
    placeholder: str | None = None
    validation: Any = None
    approvers: list[str] = Field(default_factory=list)
    created_at: datetime
    expires_at: datetime | None = None
    resolution: dict[str, Any] | None = None


class ApprovalList(BaseModel):
    items: list[ApprovalPublic]


class DecisionIn(BaseModel):
    decision: Literal["approve", "reject", "respond"]
    value: Any = None
    comment: str | None = Field(default=None, max_length=10_000)


class ApprovalLink(BaseModel):
    url: str


def _public(row: Waitpoint) -> ApprovalPublic:
    spec = row.spec
    return ApprovalPublic(
        id=row.id,
        execution_id=row.execution_id,
        node_id=row.node_id,
        iteration=row.iteration,
        status=row.status,
        prompt=str(spec.get("prompt") or ""),
        input_type=str(spec.get("input_type") or "text"),
        required=bool(spec.get("required", True)),
        placeholder=spec.get("placeholder"),
        validation=spec.get("validation"),
        approvers=list(spec.get("approvers") or []),
        created_at=row.created_at,
        expires_at=row.expires_at,
        resolution=row.resolution,
    )


def _approval(session: Session, approval_id: str) -> Waitpoint:
    row = session.get(Waitpoint, approval_id)
    if row is None or row.kind != "approval":
        raise NotFound(f"no approval {approval_id}")
    return row


def resume_soon(request: Request, waitpoint: Waitpoint) -> None:
    """Resume right away (the sensor is the backstop): an approval should not wait a tick."""
    settings: ApiSettings = request.app.state.settings
    engine = request.app.state.sessions.kw["bind"]
    client = request.app.state.dagster
    execution_id, run_id = waitpoint.execution_id, waitpoint.run_id

    def resume() -> None:
        from flowmaestro_dagster.store.db import session_scope

        try:
            with session_scope(engine) as session:
                service.resume_run(
                    session,
                    client,
                    execution_id=execution_id,
                    parked_run_id=run_id,
                    lease_seconds=settings.launch_lease_seconds,
                )
        except Exception:  # noqa: BLE001 - the waitpoint sensor retries the resume
            pass

    request.app.state.launcher.submit(resume)


@router.get("/approvals", response_model=ApprovalList)
def list_approvals(session: SessionDep, user: CurrentUser) -> ApprovalList:
    """Pending approvals this user may decide (named approver, or owner when none is named)."""
    return ApprovalList(items=[_public(r) for r in service.pending_approvals(session, user=user)])


@router.get("/approvals/{approval_id}", response_model=ApprovalPublic)
def get_approval(approval_id: str, session: SessionDep, user: CurrentUser) -> ApprovalPublic:
    row = _approval(session, approval_id)
    if not service.may_decide(session, row, user):
        raise NotFound(f"no approval {approval_id}")
    return _public(row)


@router.post("/approvals/{approval_id}/decision", response_model=ApprovalPublic)
def decide(
    approval_id: str, body: DecisionIn, request: Request, session: SessionDep, user: CurrentUser
) -> ApprovalPublic:
    """Approve, reject, or respond with a typed value; one decision per approval (409 after)."""
    row = _approval(session, approval_id)
    if not service.may_decide(session, row, user):
        raise Forbidden("you are not an approver of this review")
    decided = service.decide(
        session,
        waitpoint=row,
        user=user,
        via="api",
        decision=body.decision,
        value=body.value,
        comment=body.comment,
    )
    resume_soon(request, decided)
    return _public(decided)


@router.post("/approvals/{approval_id}/link", response_model=ApprovalLink)
def approval_link(
    approval_id: str, session: SessionDep, user: CurrentUser, settings: SettingsDep
) -> ApprovalLink:
    """A link to the approval page for someone without an API key (it works once)."""
    row = _approval(session, approval_id)
    if not service.may_decide(session, row, user):
        raise Forbidden("you are not an approver of this review")
    token = service.signed_token(settings.secret("secret_key"), "approve", row.id)
    return ApprovalLink(url=f"{settings.public_api_url.rstrip('/')}/approve/{token}")


# -- the approval page ---------------------------------------------------------------------------

# Autoescaped: the prompt, label and placeholder come from the workflow and its inputs.
TEMPLATES = Jinja2Templates(
    env=Environment(
        loader=FileSystemLoader(Path(__file__).resolve().parent.parent / "templates"),
        autoescape=select_autoescape(),
        trim_blocks=True,
        lstrip_blocks=True,
    )
)


def _page(request: Request, name: str, status: int = 200, **context: Any) -> HTMLResponse:
    return TEMPLATES.TemplateResponse(request, name, context, status_code=status)


def _invalid(request: Request) -> HTMLResponse:
    return _page(request, "approval_invalid.html", 404, title="Link not valid")


def _linked(session: Session, settings: ApiSettings, token: str) -> Waitpoint:
    waitpoint_id = service.verify_token(settings.secret("secret_key"), "approve", token)
    row = session.get(Waitpoint, waitpoint_id) if waitpoint_id else None
    if row is None or row.kind != "approval":
        raise NotFound("this approval link is not valid")
    return row


@router.get("/approve/{token}", response_class=HTMLResponse, include_in_schema=False)
def approval_page(
    token: str, request: Request, session: SessionDep, settings: SettingsDep
) -> HTMLResponse:
    try:
        row = _linked(session, settings, token)
    except NotFound:
        return _invalid(request)
    prompt = str(row.spec.get("prompt") or "")
    try:
        service.gone_if_cancelled(session, row)
    except PlatformError as exc:  # its execution was cancelled: 410 with who and when
        return _page(
            request, "approval_result.html", exc.status, title="Cancelled", message=exc.detail
        )
    if row.status != "pending":
        return _page(request, "approval_decided.html", 409, title="Already decided", prompt=prompt)
    return _page(
        request,
        "approval.html",
        title=str(row.spec.get("label") or "Review"),
        prompt=prompt,
        input_type=str(row.spec.get("input_type") or "text"),
        placeholder=str(row.spec.get("placeholder") or ""),
        required=bool(row.spec.get("required", True)),
    )


@router.post("/approve/{token}", response_class=HTMLResponse, include_in_schema=False)
def approval_page_decide(
    token: str,
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    decision: Annotated[str, Form()],
    value: Annotated[str | None, Form()] = None,
    comment: Annotated[str | None, Form()] = None,
) -> HTMLResponse:
    try:
        row = _linked(session, settings, token)
    except NotFound:
        return _invalid(request)
    chosen = decision
    if decision == "approve" and value in (None, "") and row.spec.get("required", True):
        chosen = "respond"  # the page asks for the response it marks required: 422 without one
    try:
        decided = service.decide(
            session,
            waitpoint=row,
            user=None,
            via="link",
            decision=chosen,
            value=value or None,
            comment=comment or None,
        )
    except PlatformError as exc:
        return _page(
            request, "approval_result.html", exc.status, title="Not recorded", message=exc.detail
        )
    resume_soon(request, decided)
    recorded = (decided.resolution or {}).get("decision")
    word = "rejected" if recorded == "reject" else "approved"
    return _page(request, "approval_result.html", title="Thank you", message=f"Recorded: {word}.")


# -- callbacks -----------------------------------------------------------------------------------


@router.post("/callbacks/{token}", tags=["callbacks"])
async def callback(
    token: str,
    request: Request,
    settings: SettingsDep,
    signature: Annotated[str | None, Header(alias="FlowMaestro-Signature")] = None,
) -> dict[str, Any]:
    """Complete a webhook wait. Sign `"<t>.<token>.<body>"` (the token is this URL's last
    segment, so a signature completes only the callback it was made for) with HMAC-SHA256 and
    send `FlowMaestro-Signature: t=<unix seconds>,v1=<hex>` (5-minute tolerance): a bad
    signature is 401, an unknown token 404, a used one 403, an expired waitpoint 410 — and
    changes nothing."""
    body = await request.body()
    secret = settings.secret("callback_signing_secret")
    if not service.verify_signature(
        secret,
        signature,
        body,
        now=time.time(),
        tolerance=settings.callback_tolerance_seconds,
        bound_to=token,
    ):
        raise Unauthenticated("missing or bad FlowMaestro-Signature")
    waitpoint_id = service.verify_token(settings.secret("secret_key"), "callback", token)
    try:
        payload: Any = json.loads(body) if body else None
    except ValueError:
        payload = body.decode(errors="replace")
    session: Session = request.app.state.sessions()
    try:
        row = session.get(Waitpoint, waitpoint_id) if waitpoint_id else None
        if row is None or row.kind != "callback":
            raise NotFound("unknown callback token")
        resolved = service.resolve_callback(session, waitpoint=row, payload=payload)
        resume_soon(request, resolved)
        return {"status": "accepted", "waitpoint_id": resolved.id}
    finally:
        session.close()
