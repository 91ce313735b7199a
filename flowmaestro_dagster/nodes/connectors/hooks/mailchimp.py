"""Mailchimp: a list member is addressed by its subscriber hash (the MD5 of the lower-case
email address), first and last names are the FNAME/LNAME merge fields, and member tags are
`{name, status}` objects (active adds a tag, inactive removes it).
"""

import hashlib
import re
from collections.abc import Mapping
from typing import Any

from flowmaestro_dagster.nodes.connectors.declarative import (
    HookApi,
    ParameterError,
    PreparedRequest,
)

_HASH = re.compile(r"[0-9a-f]{32}")
_NAME_FIELDS = (("firstName", "FNAME"), ("lastName", "LNAME"))
MAX_TAGS = 100


def subscriber_hash(email: str) -> str:
    """Mailchimp's id of a list member: MD5 of the lower-case address (a hash stays as is)."""
    text = email.strip().lower()
    if _HASH.fullmatch(text):
        return text
    return hashlib.md5(text.encode(), usedforsecurity=False).hexdigest()


def member_path(
    prepared: PreparedRequest, params: Mapping[str, Any], api: HookApi
) -> PreparedRequest:
    """`/lists/{listId}/members/{email}...`: the email's segment becomes its subscriber hash."""
    email = str(params.get("email") or "")
    if not email:
        raise ParameterError("email", "parameters.email is needed")
    parts = prepared.path.split("/")
    index = parts.index("members") + 1
    parts[index] = subscriber_hash(email)
    prepared.path = "/".join(parts)
    return prepared


def _merge_fields(prepared: PreparedRequest, params: Mapping[str, Any]) -> None:
    body = dict(prepared.json or {})
    merge = dict(params.get("mergeFields") or {})
    for name, field in _NAME_FIELDS:
        if params.get(name) is not None:
            merge.setdefault(field, params[name])
    if merge:
        body["merge_fields"] = merge
    prepared.json = body


def add_member_request(
    prepared: PreparedRequest, params: Mapping[str, Any], api: HookApi
) -> PreparedRequest:
    """addMember: `firstName`/`lastName` into the merge fields."""
    _merge_fields(prepared, params)
    return prepared


def update_member_request(
    prepared: PreparedRequest, params: Mapping[str, Any], api: HookApi
) -> PreparedRequest:
    """updateMember: the member by its hash, names into the merge fields."""
    _merge_fields(prepared, params)
    return member_path(prepared, params, api)


def _tags(prepared: PreparedRequest, params: Mapping[str, Any], status: str) -> None:
    raw = params.get("tags") or []
    names = [str(t.get("name") if isinstance(t, Mapping) else t).strip() for t in raw]
    names = [n for n in names if n and n != "None"]
    if not names:
        raise ParameterError("tags", "parameters.tags needs at least one tag name")
    if len(names) > MAX_TAGS:
        raise ParameterError("tags", f"at most {MAX_TAGS} tags at once")
    prepared.json = {"tags": [{"name": n, "status": status} for n in names]}


def add_tags_request(
    prepared: PreparedRequest, params: Mapping[str, Any], api: HookApi
) -> PreparedRequest:
    """addTagsToMember: each tag `active`."""
    _tags(prepared, params, "active")
    return member_path(prepared, params, api)


def remove_tags_request(
    prepared: PreparedRequest, params: Mapping[str, Any], api: HookApi
) -> PreparedRequest:
    """removeTagsFromMember: each tag `inactive`."""
    _tags(prepared, params, "inactive")
    return member_path(prepared, params, api)
