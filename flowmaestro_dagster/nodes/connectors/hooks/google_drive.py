"""Google Drive: multipart uploads, folders by path, searches, text downloads and exports.

`uploadFile` sends Drive's multipart upload (`uploadType=multipart`: the metadata as JSON,
then the content): the content is text (or base64 with `encoding: base64`), JSON data, or a
FlowMaestro file reference (`{{report.file}}`) read from the workflow's file area, at most
MAX_UPLOAD_BYTES (Drive's limit for a multipart upload). `moveFile` takes a folder ID or a
folder path looked up by name ("Legal/NDAs"), and reads the file's current parents when the
node does not say which folder it leaves. A plain-text `query` of `listFiles` searches names.
`downloadFile` reads a file's metadata first and refuses what is not text (Google's own
formats go through `exportDocument`, binary files have no text to return); `exportDocument`
exports only to text formats. The output hooks wrap the text as `content`.
"""

import base64
import binascii
import hashlib
import json
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

from flowmaestro_dagster.errors import NodeExecutionError
from flowmaestro_dagster.nodes.connectors.declarative import (
    HookApi,
    ParameterError,
    PreparedRequest,
)
from flowmaestro_dagster.nodes.filestore import FileRef, file_area

MAX_UPLOAD_BYTES = 5 * 1024 * 1024
"""Drive's limit for `uploadType=multipart` (larger files need a resumable upload)."""
FOLDER_TYPE = "application/vnd.google-apps.folder"
MAX_FOLDER_DEPTH = 10
META_KEY = "__file"
"""Where `download_request` leaves the file's metadata for `download_output`."""
_DRIVE_SYNTAX = re.compile(r"['=<>]")
_TEXT_TYPES = re.compile(
    r"text/.*|application/(json|xml|csv|rtf|x-yaml|yaml|javascript|x-sh|x-python)"
    r"|image/svg\+xml|.*\+(json|xml)"
)
_ALL_DRIVES = [("supportsAllDrives", "true"), ("includeItemsFromAllDrives", "true")]


def _quoted(text: str) -> str:
    """A value inside a Drive query string literal."""
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _set_query(prepared: PreparedRequest, name: str, value: str) -> None:
    prepared.query = [(k, v) for k, v in prepared.query if k != name] + [(name, value)]


def _node_of(api: HookApi) -> Any:
    """The running node (for its workflow's file area). HookApi has no public accessor: the
    call it wraps holds the connector request."""
    return api._call.request.node


# -- uploads -------------------------------------------------------------------------------------


def _file_ref(value: Any) -> FileRef | None:
    """A file reference, or the one reference inside a node's output (`{{upload}}`)."""
    ref = FileRef.from_value(value)
    if ref is None and isinstance(value, Mapping):
        inner = [r for r in (FileRef.from_value(v) for v in value.values()) if r is not None]
        ref = inner[0] if len(inner) == 1 else None
    return ref


def _content(api: HookApi, params: Mapping[str, Any]) -> tuple[bytes, str, str]:
    """(bytes, media type, default name) of what the node uploads."""
    value = params.get("fileContent")
    ref = _file_ref(value)
    if ref is not None:
        try:
            data = file_area(_node_of(api)).read_bytes(ref.path, MAX_UPLOAD_BYTES, "fileContent")
        except NodeExecutionError as exc:
            raise ParameterError("fileContent", f"parameters.fileContent: {exc.reason}") from None
        return data, ref.media_type or "application/octet-stream", ref.name
    if isinstance(value, Mapping | list):
        text = json.dumps(value, ensure_ascii=False)
        return text.encode(), "application/json; charset=UTF-8", "data.json"
    text = str(value)
    if str(params.get("encoding") or "text").lower() == "base64":
        try:
            data = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            raise ParameterError("fileContent", "parameters.fileContent is not base64") from None
        return data, "application/octet-stream", "file"
    return text.encode(), "text/plain; charset=UTF-8", "untitled.txt"


def upload_request(
    prepared: PreparedRequest, params: Mapping[str, Any], api: HookApi
) -> PreparedRequest:
    """files.create with `uploadType=multipart`: metadata JSON, then the content."""
    data, media_type, default_name = _content(api, params)
    if len(data) > MAX_UPLOAD_BYTES:
        raise ParameterError(
            "fileContent",
            f"parameters.fileContent is larger than {MAX_UPLOAD_BYTES // (1024 * 1024)} MB "
            "(Drive's limit for a multipart upload)",
        )
    if params.get("mimeType"):
        media_type = str(params["mimeType"])
    metadata: dict[str, Any] = {"name": str(params.get("fileName") or default_name)}
    if params.get("convertTo"):
        metadata["mimeType"] = str(params["convertTo"])
    if params.get("folderId"):
        metadata["parents"] = [str(params["folderId"])]
    if params.get("description"):
        metadata["description"] = str(params["description"])
    head = json.dumps(metadata).encode()
    boundary = "flowmaestro-" + hashlib.sha256(head + b"\0" + data).hexdigest()[:32]
    if "\r" in media_type or "\n" in media_type:
        raise ParameterError("mimeType", "parameters.mimeType holds a line break")
    prepared.content = b"".join(
        [
            f"--{boundary}\r\nContent-Type: application/json; charset=UTF-8\r\n\r\n".encode(),
            head,
            f"\r\n--{boundary}\r\nContent-Type: {media_type}\r\n\r\n".encode(),
            data,
            f"\r\n--{boundary}--\r\n".encode(),
        ]
    )
    prepared.json = None
    prepared.headers = {
        **prepared.headers,
        "Content-Type": f"multipart/related; boundary={boundary}",
    }
    return prepared


# -- folders and searches ------------------------------------------------------------------------


def folder_id(api: HookApi, path: str) -> str:
    """The ID of the folder at `path` ("Legal/NDAs"): its first name anywhere, then each
    next name inside the one before."""
    names = [part.strip() for part in path.strip().strip("/").split("/") if part.strip()]
    if not names or len(names) > MAX_FOLDER_DEPTH:
        raise ParameterError("folder", f"parameters.folder is not a folder path: {path[:80]!r}")
    parent: str | None = None
    for name in names:
        terms = [f"name = {_quoted(name)}", f"mimeType = '{FOLDER_TYPE}'", "trashed = false"]
        if parent is not None:
            terms.insert(2, f"{_quoted(parent)} in parents")
        query = [("q", " and ".join(terms)), ("fields", "files(id,name)"), ("pageSize", "10")]
        found = api.get("/drive/v3/files", query + _ALL_DRIVES)
        files = found.get("files") if isinstance(found, Mapping) else None
        if not files:
            raise ParameterError("folder", f"no Drive folder {path!r} (no folder named {name!r})")
        parent = str(files[0]["id"])
    assert parent is not None
    return parent


def move_request(
    prepared: PreparedRequest, params: Mapping[str, Any], api: HookApi
) -> PreparedRequest:
    """files.update with `addParents` (the new folder) and `removeParents` (the old ones)."""
    target = params.get("newFolderId")
    if not target:
        if not params.get("folder"):
            raise ParameterError("newFolderId", "moveFile needs parameters.newFolderId or folder")
        target = folder_id(api, str(params["folder"]))
    old = params.get("oldFolderId")
    if not old:
        file_id = quote(str(params["fileId"]), safe="")
        current = api.get(
            f"/drive/v3/files/{file_id}", [("fields", "parents"), ("supportsAllDrives", "true")]
        )
        parents = current.get("parents") if isinstance(current, Mapping) else None
        old = ",".join(str(p) for p in parents or [] if str(p) != str(target))
    _set_query(prepared, "addParents", str(target))
    if old:
        _set_query(prepared, "removeParents", str(old))
    return prepared


def list_files_request(
    prepared: PreparedRequest, params: Mapping[str, Any], api: HookApi
) -> PreparedRequest:
    """files.list's `q`: the query (plain text searches names), the folder, the type, and
    no trashed files unless asked for."""
    terms = []
    query = str(params.get("query") or "").strip()
    if query:
        terms.append(query if _DRIVE_SYNTAX.search(query) else f"name contains {_quoted(query)}")
    if params.get("folderId"):
        terms.append(f"{_quoted(str(params['folderId']))} in parents")
    if params.get("mimeType"):
        terms.append(f"mimeType = {_quoted(str(params['mimeType']))}")
    if not params.get("includeTrashed") and "trashed" not in query:
        terms.append("trashed = false")
    prepared.query = [("q", " and ".join(terms)), *prepared.query]
    return prepared


def share_request(
    prepared: PreparedRequest, params: Mapping[str, Any], api: HookApi
) -> PreparedRequest:
    """permissions.create: the grantee type follows from what is given when not named."""
    body = dict(prepared.json or {})
    if not body.get("type"):
        if params.get("emailAddress"):
            body["type"] = "user"
        elif params.get("domain"):
            body["type"] = "domain"
        else:
            body["type"] = "anyone"
    prepared.json = {"type": body.pop("type"), **body}
    return prepared


# -- downloads and exports -----------------------------------------------------------------------


def _is_text(media_type: str) -> bool:
    return bool(_TEXT_TYPES.fullmatch(media_type.partition(";")[0].strip().lower()))


def download_request(
    prepared: PreparedRequest, params: dict[str, Any], api: HookApi
) -> PreparedRequest:
    """`alt=media` for a text file, after its metadata says it is one."""
    file_id = quote(str(params["fileId"]), safe="")
    meta = api.get(
        f"/drive/v3/files/{file_id}",
        [("fields", "id,name,mimeType,size"), ("supportsAllDrives", "true")],
    )
    media_type = str(meta.get("mimeType") or "") if isinstance(meta, Mapping) else ""
    if media_type.startswith("application/vnd.google-apps."):
        raise ParameterError(
            "fileId", f"{media_type} is a Google format: export it with exportDocument"
        )
    if not _is_text(media_type):
        raise ParameterError(
            "fileId",
            f"the file is {media_type or 'of an unknown type'}: downloadFile returns text files "
            "only",
        )
    params[META_KEY] = dict(meta) if isinstance(meta, Mapping) else {}
    return prepared


def download_output(data: Any, params: dict[str, Any]) -> dict[str, Any]:
    meta = params.pop(META_KEY, {})
    content = data if isinstance(data, str) else json.dumps(data)
    return {
        **{k: meta[k] for k in ("id", "name", "mimeType", "size") if k in meta},
        "content": content,
    }


def export_request(
    prepared: PreparedRequest, params: Mapping[str, Any], api: HookApi
) -> PreparedRequest:
    """files.export to a text format (the answer is the output's `content`)."""
    if not _is_text(str(params["mimeType"])):
        raise ParameterError(
            "mimeType",
            f"exportDocument returns text: {params['mimeType']} is not a text format "
            "(text/plain, text/csv, text/html, text/markdown, ...)",
        )
    return prepared


def export_output(data: Any, params: Mapping[str, Any]) -> dict[str, Any]:
    content = data if isinstance(data, str) else json.dumps(data)
    return {"fileId": params.get("fileId"), "mimeType": params.get("mimeType"), "content": content}
