"""Salesforce: SOQL built from simple parameters (values quoted as SOQL literals), SOSL or
parameterized search, the sObject list filtered, and files attached as ContentVersion records.

Query results continue through `nextRecordsUrl` (a path from the host root), which the
catalogue's `next_url` pagination follows: these hooks only build the first request.
"""

import base64
import binascii
import re
from collections.abc import Mapping
from datetime import date, datetime
from typing import Any

from flowmaestro_dagster.nodes.connectors.declarative import (
    HookApi,
    ParameterError,
    PreparedRequest,
)

_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*(\.[A-Za-z][A-Za-z0-9_]*)*")
_DATE = re.compile(r"\d{4}-\d{2}-\d{2}(T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:?\d{2}))?")
_SOQL_ESCAPES = {
    "\\": "\\\\",
    "'": "\\'",
    '"': '\\"',
    "\n": "\\n",
    "\r": "\\r",
    "\t": "\\t",
    "\b": "\\b",
    "\f": "\\f",
}
_ACTIVITY_LINKS = {"whatId": "WhatId", "whoId": "WhoId"}


def soql_literal(value: Any) -> str:
    """A value as a SOQL literal: strings quoted and escaped, ISO dates bare (date fields take
    no quotes), lists as `(a, b)` for IN, None as null."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, list | tuple):
        return "(" + ", ".join(soql_literal(item) for item in value) + ")"
    text = str(value)
    if _DATE.fullmatch(text):
        return text
    return "'" + "".join(_SOQL_ESCAPES.get(ch, ch) for ch in text) + "'"


def _field_name(name: Any, parameter: str) -> str:
    text = str(name).strip()
    if not _NAME.fullmatch(text):
        raise ParameterError(
            parameter, f"parameters.{parameter}: {text[:80]!r} is not a field name"
        )
    return text


def build_soql(params: Mapping[str, Any]) -> str:
    """The SOQL of `query`, else SELECT `fields` FROM `objectType` WHERE `where` AND each
    `filters` pair (equal, or IN for a list) ORDER BY `orderBy` LIMIT `limit`."""
    if params.get("query"):
        return str(params["query"]).strip()
    sobject = params.get("objectType")
    if not sobject:
        raise ParameterError(
            "query", "parameters.query (SOQL) or parameters.objectType is needed to query"
        )
    sobject = _field_name(sobject, "objectType")
    fields = params.get("fields") or ["Id", "Name"]
    selected = ", ".join(str(f).strip() for f in fields if str(f).strip())
    conditions = []
    if params.get("where"):
        conditions.append(f"({str(params['where']).strip()})")
    filters = params.get("filters") or {}
    for key, value in filters.items():
        name = _field_name(key, "filters")
        operator = "IN" if isinstance(value, list | tuple) else "="
        conditions.append(f"{name} {operator} {soql_literal(value)}")
    soql = f"SELECT {selected} FROM {sobject}"
    if conditions:
        soql += " WHERE " + " AND ".join(conditions)
    if params.get("orderBy"):
        soql += f" ORDER BY {str(params['orderBy']).strip()}"
    if params.get("limit") is not None:
        soql += f" LIMIT {int(params['limit'])}"
    return soql


def soql_request(
    prepared: PreparedRequest, params: Mapping[str, Any], api: HookApi
) -> PreparedRequest:
    """GET /query?q=<SOQL>, the SOQL given or built from the parameters."""
    prepared.query = [(k, v) for k, v in prepared.query if k != "q"] + [("q", build_soql(params))]
    return prepared


def activities_request(
    prepared: PreparedRequest, params: Mapping[str, Any], api: HookApi
) -> PreparedRequest:
    """listActivities: the record's tasks (`whatId`: an opportunity, account...; `whoId`: a
    contact or lead) as SOQL filters."""
    filters = dict(params.get("filters") or {})
    for name, field in _ACTIVITY_LINKS.items():
        if params.get(name):
            filters.setdefault(field, params[name])
    if isinstance(params, dict):
        params["filters"] = filters
    return soql_request(prepared, params, api)


def search_request(
    prepared: PreparedRequest, params: Mapping[str, Any], api: HookApi
) -> PreparedRequest:
    """A SOSL `searchQuery` (FIND ...) goes to /search; a plain term to /parameterizedSearch
    (no SOSL to escape)."""
    sosl = str(params.get("searchQuery") or "").strip()
    if sosl.upper().startswith("FIND"):
        prepared.path = "/search"
        prepared.query = [("q", sosl)]
        return prepared
    if sosl and not params.get("searchTerm"):
        prepared.query = [("q", sosl), *[(k, v) for k, v in prepared.query if k != "q"]]
        return prepared
    if not params.get("searchTerm"):
        raise ParameterError(
            "searchTerm", "parameters.searchTerm (or a SOSL parameters.searchQuery) is needed"
        )
    return prepared


def filter_sobjects(data: Any, params: Mapping[str, Any]) -> Any:
    """listObjects: custom objects only with `includeCustom` (default), and only queryable or
    createable ones when asked."""
    if not isinstance(data, dict) or not isinstance(data.get("sobjects"), list):
        return data
    keep = []
    for item in data["sobjects"]:
        if not isinstance(item, Mapping):
            continue
        if params.get("includeCustom") is False and item.get("custom"):
            continue
        if params.get("onlyQueryable") and not item.get("queryable"):
            continue
        if params.get("onlyCreateable") and not item.get("createable"):
            continue
        keep.append(item)
    return {**data, "sobjects": keep}


def attachment_request(
    prepared: PreparedRequest, params: Mapping[str, Any], api: HookApi
) -> PreparedRequest:
    """addAttachment: a ContentVersion (a Salesforce File) published on the record; `content`
    is base64, `text` is plain text encoded here; the title defaults to the file name."""
    content = params.get("content")
    if content:
        try:
            base64.b64decode(str(content), validate=True)
        except (binascii.Error, ValueError):
            raise ParameterError("content", "parameters.content must be base64") from None
        data = str(content)
    elif params.get("text") is not None:
        data = base64.b64encode(str(params["text"]).encode()).decode()
    else:
        raise ParameterError(
            "content", "parameters.content (base64) or parameters.text is needed to attach a file"
        )
    body = dict(prepared.json or {})
    body["VersionData"] = data
    body.setdefault("Title", str(params.get("fileName")))
    prepared.json = body
    return prepared
