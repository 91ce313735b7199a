"""Files of a workflow's area (docs/nodes.md#files): upload, list, and expiring download links.

`POST /workflows/{id}/files` takes a multipart upload (field `file`, optional `path`, `accept`,
`overwrite`) into the workflow's file area and answers the file's reference, which a client
passes as an execution input (`inputs: {voiceMessage: <reference>}`): audioInput, fileRead,
pdfExtract... open it by its path in the workflow's own area, so a reference never reaches
another workflow's files. Starlette spools the upload to a temporary file past 1 MB; the route
streams it from there into the store in 1 MB chunks, hashing as it goes, and refuses it (413,
nothing kept) the moment it passes FLOWMAESTRO_FILES__MAX_UPLOAD_MB. The request guard lets
this route's body that far (`upload_body_limit`), every other body stays under
FLOWMAESTRO_MAX_REQUEST_BYTES. The media type is sniffed from the content; the client's
content type is not trusted.

`POST /workflows/{id}/files/url` signs a download link with `itsdangerous` (the platform's
`secret_key`, a salt of its own, the expiry inside the signed payload); `GET /files/download`
needs no API key, only that link, and streams the file as an attachment. Only the owner of a
workflow may upload, list or sign (another user's workflow is a 404).
"""

import contextlib
import fnmatch
import itertools
import math
import mimetypes
import posixpath
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import IO, Annotated, Any, Literal
from urllib.parse import quote

import filetype
from fastapi import APIRouter, Depends, Path, Query, Request, status
from fastapi.responses import StreamingResponse
from itsdangerous import BadData, SignatureExpired, URLSafeTimedSerializer
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from flowmaestro_api.deps import CurrentUser, SessionDep, SessionRoute, SettingsDep
from flowmaestro_api.errors import PayloadTooLarge
from flowmaestro_api.settings import ApiSettings
from flowmaestro_dagster.control import workflows as workflow_service
from flowmaestro_dagster.errors import (
    Conflict,
    Forbidden,
    Gone,
    NotFound,
    Unprocessable,
    UnsupportedMediaType,
)
from flowmaestro_dagster.nodes.filestore import (
    FileArea,
    FileMissingError,
    FilePathError,
    FileRef,
    FileStore,
    FileTooLargeError,
    safe_name,
    sniff_media_type,
)
from flowmaestro_dagster.store.models import Workflow

router = APIRouter(route_class=SessionRoute, tags=["files"])

MB = 1024 * 1024
CHUNK = MB
HEAD = 8192
MULTIPART_OVERHEAD = 64 * 1024  # boundaries, part headers and the small form fields
MAX_LISTED = 1000
UPLOAD_PATH = r"/workflows/[^/]+/files"  # the request guard's larger body limit applies here
SALT = "flowmaestro.files.download"


def now() -> float:
    """The clock download links are checked against (tests move it)."""
    return time.time()


# -- schemas ---------------------------------------------------------------------------------------


class FilePublic(BaseModel):
    """A stored file's reference: pass it as an execution input; nodes output the same shape."""

    type: Literal["file"] = "file"
    name: str
    filename: str = Field(
        description="the same as name: the spelling builder templates read ({{inputDoc.filename}})"
    )
    mediaType: str
    size: int
    sha256: str
    path: str = Field(
        description="the file's path in the workflow's area (a leading / is its root)"
    )
    uri: str = Field(description="where the store keeps it (information only)")

    @classmethod
    def of(cls, ref: FileRef) -> "FilePublic":
        return cls.model_validate(ref.to_value())


class FileEntry(BaseModel):
    path: str
    name: str
    size: int
    mediaType: str


class FileList(BaseModel):
    items: list[FileEntry]
    count: int
    truncated: bool = Field(description="more files match than the limit listed")


class DownloadUrlCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    path: str = Field(min_length=1, max_length=1000, description="the file's path in the area")
    expiresIn: int | None = Field(
        default=None,
        gt=0,
        description="seconds the link works (FLOWMAESTRO_FILES__SIGNED_URL_TTL_S by default, at "
        "most FLOWMAESTRO_FILES__MAX_SIGNED_URL_TTL_S)",
    )


class DownloadUrl(BaseModel):
    url: str
    path: str
    expiresAt: datetime


# -- dependencies ----------------------------------------------------------------------------------


def get_files(request: Request, settings: SettingsDep) -> FileStore:
    """The app's file store: made from its settings on first use (an app that serves no file
    makes no folder), then kept on the app."""
    store = getattr(request.app.state, "files", None)
    if not isinstance(store, FileStore):
        store = request.app.state.files = FileStore.from_settings(settings)
    return store


def own_workflow(
    workflow_id: Annotated[str, Path(max_length=64)], session: SessionDep, user: CurrentUser
) -> Workflow:
    """The workflow in the path if it is the caller's (404 otherwise); the read's transaction
    ends here, so no connection is held while an upload streams."""
    workflow = workflow_service.get_workflow(session, user=user, workflow_id=workflow_id)
    session.commit()
    return workflow


FilesDep = Annotated[FileStore, Depends(get_files)]
OwnWorkflow = Annotated[Workflow, Depends(own_workflow)]


def upload_body_limit(settings: ApiSettings) -> int:
    """The request guard's body limit for uploads: the file cap plus the multipart framing."""
    return settings.files.max_upload_mb * MB + MULTIPART_OVERHEAD


@contextlib.contextmanager
def _answers() -> Iterator[None]:
    """File store errors as HTTP answers naming the field."""
    try:
        yield
    except FilePathError as exc:
        field, _, message = exc.reason.partition(": ")
        raise Unprocessable(
            exc.reason, problems=[{"code": "invalid_path", "field": field, "message": message}]
        ) from None
    except FileMissingError as exc:
        raise NotFound(exc.reason) from None
    except FileTooLargeError as exc:
        raise PayloadTooLarge(exc.reason) from None


# -- upload ----------------------------------------------------------------------------------------


def _accepts(media_type: str, accept: str) -> bool:
    """`accept` as a list of media types (`audio/*`, `application/pdf`) or extensions (`mp3`)."""
    for raw in accept.split(","):
        item = raw.strip().lower()
        if not item:
            continue
        if "/" not in item:
            ext = item.lstrip(".")
            kind = filetype.get_type(ext=ext)
            types = {kind.mime} if kind is not None else set()
            guessed, _ = mimetypes.guess_type(f"x.{ext}")
            types |= {guessed} if guessed else set()
            if media_type in types:
                return True
        elif fnmatch.fnmatchcase(media_type, item):
            return True
    return False


def _target(area: FileArea, path: str | None, name: str) -> str:
    if not path or not path.strip():
        return f"/uploads/{uuid.uuid4().hex}/{name}"
    if path.strip().endswith("/"):
        return area.normalise(path.strip() + name, "path")
    return area.normalise(path, "path")


def store_upload(
    area: FileArea,
    source: IO[bytes],
    *,
    filename: str | None,
    path: str | None,
    cap: int,
    accept: str | None,
    overwrite: bool,
) -> FileRef:
    """Stream an upload into the area: sniffed, checked against `accept`, capped, hashed."""
    name = safe_name(filename or "", "upload")
    with _answers():
        target = _target(area, path, name)
        if not overwrite and area.exists(target, "path"):
            raise Conflict(f"path: {target!r} exists (send overwrite=true to replace it)")
        head = source.read(HEAD)
        media_type = sniff_media_type(head, posixpath.basename(target))
        if accept and not _accepts(media_type, accept):
            raise UnsupportedMediaType(
                f"file: the content is {media_type}, not one of {accept}",
                problems=[{"code": "unaccepted_type", "field": "file", "message": media_type}],
            )
        chunks = itertools.chain([head], iter(lambda: source.read(CHUNK), b""))
        limit = min(cap, area.store.max_bytes)
        try:
            return area.write(target, chunks, media_type=media_type, field="file", max_bytes=limit)
        except FileTooLargeError:
            raise PayloadTooLarge(
                f"file: the upload is larger than {limit} bytes "
                "(FLOWMAESTRO_FILES__MAX_UPLOAD_MB, FLOWMAESTRO_FILES__MAX_FILE_MB)"
            ) from None


_UPLOAD_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {
                        "file": {"type": "string", "format": "binary"},
                        "path": {
                            "type": "string",
                            "description": "where in the area (default /uploads/<uuid>/<name>); "
                            "ending in / names a folder",
                        },
                        "accept": {
                            "type": "string",
                            "description": "accepted types by content: audio/*,application/pdf",
                        },
                        "overwrite": {"type": "boolean", "default": False},
                    },
                }
            }
        },
    }
}


@router.post(
    "/workflows/{workflow_id}/files",
    status_code=status.HTTP_201_CREATED,
    response_model=FilePublic,
    openapi_extra=_UPLOAD_BODY,
    responses={413: {"description": "over FLOWMAESTRO_FILES__MAX_UPLOAD_MB"}},
)
async def upload_file(
    request: Request, workflow: OwnWorkflow, settings: SettingsDep, files: FilesDep
) -> FilePublic:
    """Upload a file into the workflow's area; the answer is its reference."""
    content_type = request.headers.get("content-type", "")
    if not content_type.lower().startswith("multipart/form-data"):
        raise UnsupportedMediaType("send the file as multipart/form-data in the field `file`")
    area = files.area(workflow.id)
    async with request.form(max_files=1, max_fields=8, max_part_size=8 * 1024) as form:
        upload = form.get("file")
        if not isinstance(upload, UploadFile):
            raise Unprocessable(
                "file: a multipart upload carries the file in the field `file`",
                problems=[{"code": "missing_field", "field": "file", "message": "no file"}],
            )
        fields = {key: form.get(key) for key in ("path", "accept", "overwrite")}
        text = {key: value if isinstance(value, str) else None for key, value in fields.items()}
        ref = await run_in_threadpool(
            store_upload,
            area,
            upload.file,
            filename=upload.filename,
            path=text["path"],
            cap=settings.files.max_upload_mb * MB,
            accept=text["accept"],
            overwrite=(text["overwrite"] or "").strip().lower() in ("true", "1", "yes"),
        )
    return FilePublic.of(ref)


# -- list ------------------------------------------------------------------------------------------


def _entry(area: FileArea, path: str) -> FileEntry | None:
    try:
        with area.open(path) as handle:
            head = handle.read(HEAD)
            size = handle.seek(0, 2)
    except (FileMissingError, FileTooLargeError, OSError):
        return None  # gone meanwhile, or over the cap: not a file nodes can open
    name = posixpath.basename(path)
    return FileEntry(path=path, name=name, size=size, mediaType=sniff_media_type(head, name))


@router.get("/workflows/{workflow_id}/files", response_model=FileList)
def list_files(
    workflow: OwnWorkflow,
    files: FilesDep,
    prefix: Annotated[str, Query(max_length=1000, description="a folder: /uploads")] = "/",
    limit: Annotated[int, Query(ge=1, le=MAX_LISTED)] = 200,
) -> FileList:
    """The files in the workflow's area under `prefix` (uploads, executions' outputs)."""
    area = files.area(workflow.id)
    with _answers():
        paths = area.list(prefix)
    entries = [e for path in paths[:limit] if (e := _entry(area, path)) is not None]
    return FileList(items=entries, count=len(paths), truncated=len(paths) > limit)


# -- download links --------------------------------------------------------------------------------


def _serializer(settings: ApiSettings) -> URLSafeTimedSerializer:
    return URLSafeTimedSerializer(settings.secret("secret_key"), salt=SALT)


@router.post("/workflows/{workflow_id}/files/url", response_model=DownloadUrl)
def create_download_url(
    body: DownloadUrlCreate, workflow: OwnWorkflow, settings: SettingsDep, files: FilesDep
) -> DownloadUrl:
    """A link that downloads one file of the area without an API key, until it expires."""
    ttl = body.expiresIn or settings.files.signed_url_ttl_s
    if ttl > settings.files.max_signed_url_ttl_s:
        message = f"at most {settings.files.max_signed_url_ttl_s} seconds"
        raise Unprocessable(
            f"expiresIn: {message} (FLOWMAESTRO_FILES__MAX_SIGNED_URL_TTL_S)",
            problems=[{"code": "invalid_field", "field": "expiresIn", "message": message}],
        )
    area = files.area(workflow.id)
    with _answers():
        path = area.normalise(body.path, "path")
        if not area.exists(path, "path"):
            raise NotFound(f"path: no file {path!r} in the workflow's file area")
    expires = math.ceil(now() + ttl)
    token = _serializer(settings).dumps({"w": workflow.id, "p": path, "e": expires})
    base = settings.public_api_url.rstrip("/")
    return DownloadUrl(
        url=f"{base}/files/download?token={token}",
        path=path,
        expiresAt=datetime.fromtimestamp(expires, UTC),
    )


def _verified(settings: ApiSettings, token: str) -> tuple[str, str]:
    """(workflow id, path) a link names; 403 when forged, 410 when expired."""
    try:
        payload = _serializer(settings).loads(
            token, max_age=settings.files.max_signed_url_ttl_s + 60
        )
    except SignatureExpired:
        raise Gone("the download link has expired: ask for a new one") from None
    except BadData:
        raise Forbidden("the download link is not valid (altered, or not made here)") from None
    if not (
        isinstance(payload, dict)
        and isinstance(payload.get("w"), str)
        and isinstance(payload.get("p"), str)
        and isinstance(payload.get("e"), int | float)
    ):
        raise Forbidden("the download link is not valid (altered, or not made here)")
    if payload["e"] < now():
        expired = datetime.fromtimestamp(payload["e"], UTC).isoformat(timespec="seconds")
        raise Gone(f"the download link expired at {expired}: ask for a new one")
    return payload["w"], payload["p"]


def _disposition(name: str) -> str:
    """`attachment` with an ASCII fallback name and the UTF-8 one (RFC 6266 / 5987)."""
    ascii_name = name.encode("ascii", "replace").decode().replace('"', "_").replace("?", "_")
    return f"attachment; filename=\"{ascii_name}\"; filename*=UTF-8''{quote(name, safe='')}"


@router.get(
    "/files/download",
    response_class=StreamingResponse,
    responses={
        200: {"content": {"application/octet-stream": {}}, "description": "the file"},
        403: {"description": "a forged or altered link"},
        410: {"description": "an expired link"},
    },
)
def download_file(
    token: Annotated[str, Query(min_length=1, max_length=4096)],
    settings: SettingsDep,
    files: FilesDep,
) -> StreamingResponse:
    """The file a signed link names, as an attachment (no API key: the link is the key)."""
    workflow_id, path = _verified(settings, token)
    area = files.area(workflow_id)
    stack = contextlib.ExitStack()
    try:
        with _answers():
            try:
                handle = stack.enter_context(area.open(path))
            except FileMissingError:
                raise NotFound("the file of this download link is gone") from None
            head = handle.read(HEAD)
            size = handle.seek(0, 2)
            handle.seek(len(head))
    except BaseException:
        stack.close()
        raise
    name = posixpath.basename(path)

    def body() -> Iterator[bytes]:
        try:
            yield head
            while chunk := handle.read(CHUNK):
                yield chunk
        finally:
            stack.close()

    return StreamingResponse(
        body(),
        media_type=sniff_media_type(head, name),
        headers={
            "Content-Disposition": _disposition(name),
            "Content-Length": str(size),
            "X-Content-Type-Options": "nosniff",
            "Content-Security-Policy": "default-src 'none'; sandbox",
            "Cache-Control": "private, no-store",
        },
    )


__all__ = ["UPLOAD_PATH", "router", "store_upload", "upload_body_limit"]
