"""SharePoint through Microsoft Graph: drive item paths, the upload body, and the Microsoft
365 group behind a new team site.

A file is addressed in a document library (`/drives/{driveId}`, else the site's default one,
`/sites/{siteId}/drive`) by id (`/items/{itemId}`) or by path (`/root:/a/b.txt`). A path is
split on `/`, each segment URL-encoded; `.` and `..` segments are refused. Uploads are
Graph's simple upload (one PUT of at most 250 MB): `content` as text (an object or list as
JSON), or `contentBase64`, typed from `contentType` or the file name.
"""

import base64
import binascii
import json
import mimetypes
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

from flowmaestro_dagster.nodes.connectors.declarative import (
    HookApi,
    ParameterError,
    PreparedRequest,
)

MAX_SIMPLE_UPLOAD = 250 * 1024 * 1024
"""Graph's limit for a one-request upload (larger files need an upload session)."""
GRAPH_USERS = "https://graph.microsoft.com/v1.0/users/"
_SAFE = "@:!$'()*,;="  # as the executor encodes path parameters


def _segment(value: Any, field: str) -> str:
    text = str(value).strip()
    if not text or text in (".", "..") or "/" in text or "\\" in text:
        raise ParameterError(field, f"parameters.{field} is not a valid name: {text[:80]!r}")
    return quote(text, safe=_SAFE)


def _path(value: Any, field: str) -> str:
    parts = [p for p in str(value).replace("\\", "/").split("/") if p.strip()]
    return "/".join(_segment(p, field) for p in parts)


def _drive(params: Mapping[str, Any]) -> str:
    if params.get("driveId"):
        return f"/drives/{_segment(params['driveId'], 'driveId')}"
    if params.get("siteId"):
        return f"/sites/{_segment(params['siteId'], 'siteId')}/drive"
    raise ParameterError(
        "siteId", "SharePoint needs parameters.siteId (or the connection's site_id) or .driveId"
    )


def item_request(
    prepared: PreparedRequest, params: Mapping[str, Any], api: HookApi
) -> PreparedRequest:
    """getFile: the item by id, else by its path in the library."""
    drive = _drive(params)
    if params.get("itemId"):
        prepared.path = f"{drive}/items/{_segment(params['itemId'], 'itemId')}"
    elif params.get("path") and _path(params["path"], "path"):
        prepared.path = f"{drive}/root:/{_path(params['path'], 'path')}"
    else:
        raise ParameterError("itemId", "getFile needs parameters.itemId or parameters.path")
    return prepared


def _content(params: Mapping[str, Any]) -> tuple[bytes, str]:
    """The file's bytes and the type they suggest when the node names none."""
    if params.get("contentBase64") not in (None, ""):
        try:
            data = base64.b64decode(str(params["contentBase64"]), validate=True)
        except (binascii.Error, ValueError):
            raise ParameterError(
                "contentBase64", "parameters.contentBase64 is not base64"
            ) from None
        return data, "application/octet-stream"
    content = params.get("content")
    if content is None:
        raise ParameterError("content", "uploadFile needs parameters.content or .contentBase64")
    if isinstance(content, dict | list):
        return json.dumps(content, ensure_ascii=False).encode(), "application/json"
    if isinstance(content, bytes):
        return content, "application/octet-stream"
    return str(content).encode(), "text/plain; charset=utf-8"


def upload_request(
    prepared: PreparedRequest, params: Mapping[str, Any], api: HookApi
) -> PreparedRequest:
    """uploadFile: PUT the bytes to `root:/<folder>/<fileName>:/content`."""
    name = _segment(params.get("fileName") or "", "fileName")
    folder = _path(params["folder"], "folder") if params.get("folder") else ""
    target = f"{folder}/{name}" if folder else name
    data, fallback = _content(params)
    if len(data) > MAX_SIMPLE_UPLOAD:
        raise ParameterError("content", "the file is larger than Graph's 250 MB simple upload")
    kind = params.get("contentType") or mimetypes.guess_type(str(params["fileName"]))[0]
    prepared.path = f"{_drive(params)}/root:/{target}:/content"
    prepared.headers = {**prepared.headers, "Content-Type": str(kind or fallback)}
    prepared.json = None
    prepared.content = data
    behaviour = params.get("conflictBehavior")
    if behaviour:
        if str(behaviour) not in ("replace", "rename", "fail"):
            raise ParameterError(
                "conflictBehavior", "parameters.conflictBehavior must be replace, rename or fail"
            )
        prepared.query.append(("@microsoft.graph.conflictBehavior", str(behaviour)))
    return prepared


def group_request(
    prepared: PreparedRequest, params: Mapping[str, Any], api: HookApi
) -> PreparedRequest:
    """createSite: a mail nickname from the display name when the node gives none, and the
    owners and members as Graph `@odata.bind` references."""
    body = dict(prepared.json or {})
    if not body.get("mailNickname"):
        nickname = re.sub(r"[^A-Za-z0-9]", "", str(params.get("displayName") or ""))[:64]
        if not nickname:
            raise ParameterError(
                "mailNickname", "parameters.mailNickname is needed: displayName has no letters"
            )
        body["mailNickname"] = nickname
    for field, key in (("owners", "owners@odata.bind"), ("members", "members@odata.bind")):
        ids = [str(i).strip() for i in params.get(field) or [] if str(i).strip()]
        if ids:
            body[key] = [GRAPH_USERS + _segment(i, field) for i in ids]
    prepared.json = body
    return prepared
