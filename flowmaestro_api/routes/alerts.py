"""Alert rules (CRUD) and the alerts they raised: docs/observability.md#alerts.

The `alert_evaluator` sensor evaluates the rules; these routes only manage them and read what
it recorded. A rule that cannot work (an unknown metric, a window of 0, a channel nobody
configured, a workflow that is not the caller's) is a 422 naming the field.
"""

from typing import Annotated, Literal

from fastapi import APIRouter, Query, Response, status

from flowmaestro_api.deps import CurrentUser, SessionDep, SessionRoute, SettingsDep
from flowmaestro_api.schemas import AlertList, AlertPublic, AlertRuleList, AlertRulePublic
from flowmaestro_dagster.control import alerts as service
from flowmaestro_dagster.control.alerts import AlertRuleCreate, AlertRuleUpdate
from flowmaestro_dagster.store.models import AlertRule, AlertState

router = APIRouter(route_class=SessionRoute, prefix="/alerts", tags=["alerts"])


@router.post("/rules", status_code=status.HTTP_201_CREATED, response_model=AlertRulePublic)
def create_rule(
    body: AlertRuleCreate, session: SessionDep, user: CurrentUser, settings: SettingsDep
) -> AlertRule:
    """A rule over your workflows (or one of them), notifying an operator-configured channel."""
    return service.create_rule(session, user=user, settings=settings, body=body)


@router.get("/rules", response_model=AlertRuleList)
def list_rules(session: SessionDep, user: CurrentUser) -> AlertRuleList:
    rules = service.list_rules(session, user=user)
    return AlertRuleList(items=[AlertRulePublic.model_validate(r) for r in rules])


@router.get("/rules/{rule_id}", response_model=AlertRulePublic)
def get_rule(rule_id: str, session: SessionDep, user: CurrentUser) -> AlertRule:
    return service.get_rule(session, user=user, rule_id=rule_id)


@router.patch("/rules/{rule_id}", response_model=AlertRulePublic)
def update_rule(
    rule_id: str,
    body: AlertRuleUpdate,
    session: SessionDep,
    user: CurrentUser,
    settings: SettingsDep,
) -> AlertRule:
    """Change some fields; the whole rule is checked again (422 naming the field)."""
    return service.update_rule(session, user=user, settings=settings, rule_id=rule_id, body=body)


@router.delete("/rules/{rule_id}", status_code=status.HTTP_204_NO_CONTENT)
def delete_rule(rule_id: str, session: SessionDep, user: CurrentUser) -> Response:
    """Forget the rule and its alerts (a firing alert is not sent a resolve)."""
    service.delete_rule(session, user=user, rule_id=rule_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get("", response_model=AlertList)
def list_alerts(
    session: SessionDep,
    user: CurrentUser,
    only: Annotated[Literal["firing", "resolved"] | None, Query(alias="status")] = None,
    rule_id: Annotated[str | None, Query(max_length=36)] = None,
) -> AlertList:
    """Your rules' alerts, firing first: one per rule and subject (a workflow or a queue),
    with what the channel was last told of."""
    rows = service.list_alerts(session, user=user, status=only, rule_id=rule_id)
    return AlertList(items=[_alert(state, rule) for state, rule in rows])


def _alert(state: AlertState, rule: AlertRule) -> AlertPublic:
    details = dict(state.details or {})
    return AlertPublic(
        id=state.id,
        rule_id=rule.id,
        rule=rule.name,
        metric=rule.metric,
        subject=state.subject,
        label=str(details.get("label") or state.subject),
        workflow_id=state.workflow_id,
        status="firing" if state.status == "firing" else "resolved",
        value=state.value,
        summary=state.summary,
        details=details,
        fired_at=state.fired_at,
        resolved_at=state.resolved_at,
        evaluated_at=state.evaluated_at,
        notified_status=state.notified_status,
        notified_at=state.notified_at,
        notify_attempts=state.notify_attempts,
        notify_error=state.notify_error,
    )
