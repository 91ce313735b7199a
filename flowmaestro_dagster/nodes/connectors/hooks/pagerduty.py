"""PagerDuty: an incident's optional parts as the references PagerDuty expects (an
escalation policy, a priority, assignees, a conference bridge, the details body); a mapping
cannot leave out a reference object whose `type` is always there.
"""

from collections.abc import Mapping
from typing import Any

from flowmaestro_dagster.nodes.connectors.declarative import HookApi, PreparedRequest


def incident_references(
    prepared: PreparedRequest, params: Mapping[str, Any], api: HookApi
) -> PreparedRequest:
    """createIncident: the references the node names, and nothing for those it leaves out."""
    body = dict(prepared.json or {})
    incident = dict(body.get("incident") or {})
    if params.get("details") is not None:
        incident["body"] = {"type": "incident_body", "details": str(params["details"])}
    if params.get("escalationPolicyId"):
        incident["escalation_policy"] = {
            "id": str(params["escalationPolicyId"]),
            "type": "escalation_policy_reference",
        }
    if params.get("priorityId"):
        incident["priority"] = {"id": str(params["priorityId"]), "type": "priority_reference"}
    assignees = [str(a) for a in params.get("assigneeIds") or [] if str(a).strip()]
    if assignees:
        incident["assignments"] = [
            {"assignee": {"id": a, "type": "user_reference"}} for a in assignees
        ]
    bridge = {
        "conference_number": params.get("conferenceNumber"),
        "conference_url": params.get("conferenceUrl"),
    }
    if any(bridge.values()):
        incident["conference_bridge"] = {k: str(v) for k, v in bridge.items() if v}
    body["incident"] = incident
    prepared.json = body
    return prepared
