"""HubSpot: contact fields into `properties`, records by email, simple search filters, and
engagement text under the property its type uses.
"""

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from flowmaestro_dagster.nodes.connectors.declarative import (
    HookApi,
    ParameterError,
    PreparedRequest,
)

_CONTACT_FIELDS = ("email", "firstname", "lastname", "phone", "company")
_ENGAGEMENT_BODY = {
    "notes": "hs_note_body",
    "calls": "hs_call_body",
    "emails": "hs_email_text",
    "meetings": "hs_meeting_body",
    "tasks": "hs_task_body",
}


def merge_properties(
    prepared: PreparedRequest, params: Mapping[str, Any], api: HookApi
) -> PreparedRequest:
    """createContact: `email`, `firstName`, ... given beside `properties` go into it."""
    properties = dict(params.get("properties") or {})
    for name in _CONTACT_FIELDS:
        if params.get(name) is not None:
            properties.setdefault(name, params[name])
    prepared.json = {**(prepared.json or {}), "properties": properties}
    return prepared


def id_property(
    prepared: PreparedRequest, params: Mapping[str, Any], api: HookApi
) -> PreparedRequest:
    """A contact named by its email address is looked up with `idProperty=email`."""
    if "@" in str(params.get("contactId") or "") and not params.get("idProperty"):
        prepared.query.append(("idProperty", "email"))
    return prepared


def company_lookup(
    prepared: PreparedRequest, params: Mapping[str, Any], api: HookApi
) -> PreparedRequest:
    """getCompany: by id when the node gives one, else a search on `domain`."""
    company_id = params.get("companyId")
    if company_id:
        from urllib.parse import quote

        prepared.method = "GET"
        prepared.path = f"/crm/v3/objects/companies/{quote(str(company_id), safe='')}"
        prepared.json = None
        properties = params.get("properties")
        if properties:
            prepared.query.append(("properties", ",".join(str(p) for p in properties)))
        return prepared
    if not params.get("domain"):
        raise ParameterError("companyId", "getCompany needs parameters.companyId or .domain")
    return prepared


def first_result(data: Any, params: Mapping[str, Any]) -> Any:
    """A search answer becomes its first record (None when nothing matched)."""
    if isinstance(data, Mapping) and isinstance(data.get("results"), list):
        results = data["results"]
        return results[0] if results else None
    return data


def simple_filters(
    prepared: PreparedRequest, params: Mapping[str, Any], api: HookApi
) -> PreparedRequest:
    """`filters: {dealstage: closedwon}` becomes one filter group of EQ filters."""
    filters = params.get("filters")
    if filters and not params.get("filterGroups"):
        group = [
            {"propertyName": str(name), "operator": "EQ", "value": value}
            for name, value in dict(filters).items()
        ]
        prepared.json = {"filterGroups": [{"filters": group}], **(prepared.json or {})}
    return prepared


def engagement_request(
    prepared: PreparedRequest, params: Mapping[str, Any], api: HookApi
) -> PreparedRequest:
    """The engagement's text under its type's property, and `hs_timestamp` (HubSpot requires
    one; now when the node gives none)."""
    kind = str(params.get("engagementType") or "notes").lower()
    if kind not in _ENGAGEMENT_BODY:
        kind = kind + "s" if kind + "s" in _ENGAGEMENT_BODY else kind
    if kind not in _ENGAGEMENT_BODY:
        raise ParameterError(
            "engagementType",
            f"parameters.engagementType must be one of {', '.join(_ENGAGEMENT_BODY)}",
        )
    properties = dict(params.get("properties") or {})
    if params.get("body") is not None:
        properties.setdefault(_ENGAGEMENT_BODY[kind], params["body"])
    stamp = params.get("timestamp") or datetime.now(UTC).isoformat(timespec="milliseconds")
    properties.setdefault("hs_timestamp", stamp)
    prepared.path = f"/crm/v3/objects/{kind}"
    prepared.json = {**(prepared.json or {}), "properties": properties}
    return prepared
