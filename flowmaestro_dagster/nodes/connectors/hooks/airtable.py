"""Airtable: records as `{fields}` objects, and a destructive update as PUT.

Builders pass `records` as plain field objects (`[{Name: "Ann"}]`) as often as Airtable's own
`[{fields: {...}}]`; both are sent as Airtable documents them.
"""

from collections.abc import Mapping
from typing import Any

from flowmaestro_dagster.nodes.connectors.declarative import (
    HookApi,
    ParameterError,
    PreparedRequest,
)

MAX_RECORDS_PER_REQUEST = 10
"""Airtable's limit on records per create/update/delete request."""


def wrap_records(
    prepared: PreparedRequest, params: Mapping[str, Any], api: HookApi
) -> PreparedRequest:
    records = params.get("records") or []
    if len(records) > MAX_RECORDS_PER_REQUEST:
        raise ParameterError(
            "records", f"parameters.records: Airtable takes at most {MAX_RECORDS_PER_REQUEST}"
        )
    wrapped = []
    for record in records:
        if not isinstance(record, Mapping):
            raise ParameterError("records", "parameters.records must be a list of objects")
        wrapped.append(dict(record) if "fields" in record else {"fields": dict(record)})
    prepared.json = {**(prepared.json or {}), "records": wrapped}
    return prepared


def destructive_put(
    prepared: PreparedRequest, params: Mapping[str, Any], api: HookApi
) -> PreparedRequest:
    """`destructive: true` clears the fields not sent (Airtable's PUT)."""
    if params.get("destructive"):
        prepared.method = "PUT"
    return prepared
