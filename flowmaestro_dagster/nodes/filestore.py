"""Files between nodes: one reference type and a store confined per workflow.

A node never puts a file's bytes in its output: it writes them to the file store and outputs a
`FileRef` (name, media type, size, sha256, the file's path in the workflow's area and its
storage URI). The next node opens the file by that path, so run state, the event log and the
IO manager only ever carry the reference.

The store is a local directory under DAGSTER_HOME by default, or any fsspec URL
(`FLOWMAESTRO_FILES__URL=s3://bucket/prefix`). Each workflow sees only its own area,
`workflows/<workflow id>/`: a node's path is resolved inside it (a leading `/` is the area's
root, as the builder's `/outputs/...` paths assume), `..` that climbs out, NUL bytes, drive
letters and URLs are refused, and on a local store a symlink that leads outside is refused
too. A reference is only ever opened by its path in the reader's own area: its `uri` is
information, never trusted, so a forged reference in an execution's inputs cannot reach
another workflow's files.
"""

import contextlib
import hashlib
import mimetypes
import os
import posixpath
import re
import shutil
import tempfile
import uuid
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import filetype
import fsspec
from fsspec.implementations.local import LocalFileSystem

from flowmaestro_dagster.errors import NodeConfigurationError, NodeExecutionError
from flowmaestro_dagster.settings import FileSettings, Settings
from flowmaestro_dagster.tags import WORKFLOW_ID_TAG

if TYPE_CHECKING:
    from flowmaestro_dagster.nodes.base import NodeContext

FILE_TYPE = "file"
LOCAL_AREA = "_local"  # runs outside the platform (`flowmaestro run`, tests) have no workflow id
_CHUNK = 1024 * 1024
_UNSAFE = re.compile(r"[\x00-\x1f\\]")
_NAME_UNSAFE = re.compile(r"[^\w.\- ()\[\]@+]+")


class FilePathError(NodeConfigurationError):
    """A path that leaves the workflow's area, or is not a path at all."""


class FileTooLargeError(NodeExecutionError):
    """A file over the store's size cap (FLOWMAESTRO_FILES__MAX_FILE_MB)."""


class FileMissingError(NodeExecutionError):
    """No such file in the workflow's area."""


@dataclass(frozen=True)
class FileRef:
    """A stored file as nodes pass it on: `{{report.file.path}}`, `{{report.file.size}}`."""

    name: str
    media_type: str
    size: int
    sha256: str
    path: str  # in the workflow's area, from its root: /executions/<id>/<node>/report.pdf
    uri: str  # where the store keeps it (information: never used to open the file)

    def to_value(self) -> dict[str, Any]:
        return {
            "type": FILE_TYPE,
            "name": self.name,
            "filename": self.name,  # the upstream engine's spelling: `{{inputDoc.filename}}`
            "mediaType": self.media_type,
            "size": self.size,
            "sha256": self.sha256,
            "path": self.path,
            "uri": self.uri,
        }

    @classmethod
    def from_value(cls, value: Any) -> "FileRef | None":
        """A reference from a node output or an input (extra keys allowed), else None."""
        if not isinstance(value, Mapping) or not isinstance(value.get("path"), str):
            return None
        if value.get("type", FILE_TYPE) != FILE_TYPE:
            return None
        size = value.get("size")
        return cls(
            name=str(
                value.get("name") or value.get("filename") or posixpath.basename(value["path"])
            ),
            media_type=str(value.get("mediaType") or value.get("media_type") or ""),
            size=size if isinstance(size, int) and not isinstance(size, bool) else -1,
            sha256=str(value.get("sha256") or ""),
            path=value["path"],
            uri=str(value.get("uri") or ""),
        )


def safe_name(name: str, default: str = "file") -> str:
    """A file name that is one path segment (what the user typed, minus what cannot be)."""
    base = posixpath.basename(str(name).replace("\\", "/")).strip()
    base = _NAME_UNSAFE.sub("_", base).strip(". ")
    return base[:200] or default


def sniff_media_type(head: bytes, name: str = "") -> str:
    """The media type by content (magic numbers); by name only for text formats."""
    kind = filetype.guess(head)
    if kind is not None:
        return str(kind.mime)
    guessed, _ = mimetypes.guess_type(name)
    if guessed and (guessed.startswith("text/") or guessed.endswith(("json", "xml", "csv"))):
        return guessed
    if head and _is_text(head):
        return guessed if guessed and guessed.startswith("text/") else "text/plain"
    return "application/octet-stream"


def _size(limit: int) -> str:
    return f"{limit / (1024 * 1024):g} MB" if limit >= 1024 * 1024 else f"{limit} bytes"


def _is_text(head: bytes) -> bool:
    try:
        head[:4096].decode("utf-8")
    except UnicodeDecodeError as exc:
        return exc.start >= len(head[:4096]) - 4  # a multi-byte character cut at the end
    return b"\x00" not in head[:4096]


class FileStore:
    """The store: an fsspec filesystem and root, and the caps every area shares."""

    def __init__(self, url: str, *, max_bytes: int) -> None:
        fs, root = fsspec.core.url_to_fs(url)
        self.fs = fs
        self.root = root.rstrip("/")
        self.url = url
        self.max_bytes = max_bytes
        self.local = isinstance(fs, LocalFileSystem)
        if self.local:
            os.makedirs(self.root, exist_ok=True)

    @classmethod
    def from_settings(cls, settings: Settings) -> "FileStore":
        files: FileSettings = settings.files
        url = files.url or str(Path(settings.dagster_home) / "files")
        return cls(url, max_bytes=files.max_file_mb * 1024 * 1024)

    def area(self, workflow_id: str | None) -> "FileArea":
        workflow = safe_name(workflow_id or LOCAL_AREA, LOCAL_AREA)
        return FileArea(self, f"workflows/{workflow}")

    def uri(self, key: str) -> str:
        full = f"{self.root}/{key}"
        return Path(full).as_uri() if self.local else self.fs.unstrip_protocol(full)


class FileArea:
    """One workflow's part of the store; every path a node names is resolved in here."""

    def __init__(self, store: FileStore, prefix: str) -> None:
        self.store = store
        self.prefix = prefix

    # -- paths ---------------------------------------------------------------------------------

    def normalise(self, path: Any, field: str = "path") -> str:
        """`/a/b.txt` for any accepted spelling of a path in the area; refuses escapes."""
        if isinstance(path, Mapping):
            ref = FileRef.from_value(path)
            if ref is None:
                raise FilePathError(f"{field}: expected a file or a path, got an object")
            path = ref.path
        if not isinstance(path, str) or not path.strip():
            raise FilePathError(f"{field}: expected a file path, got {type(path).__name__}")
        text = path.strip()
        if _UNSAFE.search(text) or re.match(r"^[A-Za-z]:", text) or "://" in text:
            raise FilePathError(
                f"{field}: {text[:100]!r} is not a path in the workflow's file area "
                "(no URLs, drive letters, backslashes or control characters)"
            )
        parts: list[str] = []
        for segment in text.split("/"):
            if segment in ("", "."):
                continue
            if segment == "..":
                if not parts:
                    raise FilePathError(
                        f"{field}: {text[:100]!r} climbs out of the workflow's file area"
                    )
                parts.pop()
                continue
            parts.append(segment)
        if not parts:
            raise FilePathError(f"{field}: {text[:100]!r} names the area itself, not a file")
        return "/" + "/".join(parts)

    def key(self, path: Any, field: str = "path") -> str:
        return f"{self.prefix}{self.normalise(path, field)}"

    def _full(self, key: str, field: str) -> str:
        full = f"{self.store.root}/{key}"
        if self.store.local:
            area_root = os.path.realpath(f"{self.store.root}/{self.prefix}")
            real = os.path.realpath(full)
            if real != area_root and not real.startswith(area_root + os.sep):
                raise FilePathError(
                    f"{field}: the path leads outside the workflow's file area (a symlink)"
                )
        return full

    # -- writing -------------------------------------------------------------------------------

    def write(
        self,
        path: Any,
        data: bytes | Iterable[bytes],
        *,
        media_type: str | None = None,
        field: str = "path",
        max_bytes: int | None = None,
    ) -> FileRef:
        """Store bytes (or a stream of chunks) at `path`; atomic, hashed and capped on the way."""
        normalised = self.normalise(path, field)
        key = f"{self.prefix}{normalised}"
        full = self._full(key, field)
        limit = min(max_bytes or self.store.max_bytes, self.store.max_bytes)
        chunks: Iterable[bytes] = [data] if isinstance(data, bytes | bytearray) else data
        digest = hashlib.sha256()
        size = 0
        head = b""
        parent = posixpath.dirname(full)
        self.store.fs.makedirs(parent, exist_ok=True)
        self._full(key, field)  # the parent may be a symlink made meanwhile: check again
        temp = f"{parent}/.{uuid.uuid4().hex}.part"
        try:
            with self.store.fs.open(temp, "wb") as out:
                for chunk in chunks:
                    size += len(chunk)
                    if size > limit:
                        raise FileTooLargeError(
                            f"{field}: the file is larger than {_size(limit)} "
                            "(FLOWMAESTRO_FILES__MAX_FILE_MB)"
                        )
                    if len(head) < 8192:
                        head += bytes(chunk[: 8192 - len(head)])
                    digest.update(chunk)
                    out.write(chunk)
            self.store.fs.mv(temp, full)
        except BaseException:
            with contextlib.suppress(FileNotFoundError, OSError):
                self.store.fs.rm(temp)
            raise
        name = posixpath.basename(normalised)
        return FileRef(
            name=name,
            media_type=media_type or sniff_media_type(head, name),
            size=size,
            sha256=digest.hexdigest(),
            path=normalised,
            uri=self.store.uri(key),
        )

    # -- reading -------------------------------------------------------------------------------

    def stat(self, path: Any, field: str = "path") -> FileRef:
        """The reference of a stored file (hashing it: a path string carries no digest)."""
        normalised = self.normalise(path, field)
        digest = hashlib.sha256()
        size = 0
        head = b""
        with self.open(normalised, field) as handle:
            while chunk := handle.read(_CHUNK):
                if len(head) < 8192:
                    head += chunk[: 8192 - len(head)]
                digest.update(chunk)
                size += len(chunk)
        name = posixpath.basename(normalised)
        return FileRef(
            name=name,
            media_type=sniff_media_type(head, name),
            size=size,
            sha256=digest.hexdigest(),
            path=normalised,
            uri=self.store.uri(f"{self.prefix}{normalised}"),
        )

    def exists(self, path: Any, field: str = "path") -> bool:
        full = self._full(self.key(path, field), field)
        return bool(self.store.fs.isfile(full))

    @contextlib.contextmanager
    def open(self, path: Any, field: str = "path") -> Iterator[IO[bytes]]:
        """A binary handle on a stored file; refuses what is over the size cap before reading."""
        key = self.key(path, field)
        full = self._full(key, field)
        fs = self.store.fs
        if not fs.isfile(full):
            raise FileMissingError(
                f"{field}: no file {self.normalise(path, field)!r} in the workflow's file area"
            )
        size = fs.size(full)
        if size is not None and size > self.store.max_bytes:
            raise FileTooLargeError(
                f"{field}: the file is larger than {_size(self.store.max_bytes)} "
                "(FLOWMAESTRO_FILES__MAX_FILE_MB)"
            )
        with fs.open(full, "rb") as handle:
            yield handle

    def read_bytes(self, path: Any, limit: int | None = None, field: str = "path") -> bytes:
        """The whole file, refused beyond `limit` (the store's cap by default)."""
        cap = min(limit or self.store.max_bytes, self.store.max_bytes)
        with self.open(path, field) as handle:
            data = handle.read(cap + 1)
        if len(data) > cap:
            raise FileTooLargeError(f"{field}: the file is larger than {_size(cap)}")
        return data

    @contextlib.contextmanager
    def local_path(self, path: Any, field: str = "path") -> Iterator[Path]:
        """A local file path for libraries that want one (Tesseract): the file itself on a
        local store, else a temporary copy removed afterwards."""
        key = self.key(path, field)
        full = self._full(key, field)
        if self.store.local:
            with self.open(path, field):  # existence and size checks
                pass
            yield Path(full)
            return
        suffix = posixpath.splitext(key)[1]
        with tempfile.NamedTemporaryFile(suffix=suffix) as copy, self.open(path, field) as src:
            shutil.copyfileobj(src, copy, _CHUNK)
            copy.flush()
            yield Path(copy.name)

    def list(self, prefix: str = "/") -> list[str]:
        """Paths of the files under `prefix` in the area (uploads, a run's outputs)."""
        base = self.prefix if prefix.strip() in ("", "/") else self.key(prefix, "prefix")
        full = f"{self.store.root}/{base}"
        if not self.store.fs.exists(full):
            return []
        start = len(f"{self.store.root}/{self.prefix}")
        names = self.store.fs.find(full)
        return sorted(
            n[start:] if n.startswith("/") else "/" + n[start:].lstrip("/")
            for n in (str(n) for n in names)
            if not posixpath.basename(n).startswith(".") and self.store.fs.isfile(n)
        )


# -- what nodes call ----------------------------------------------------------------------------


def file_area(ctx: "NodeContext") -> FileArea:
    """The running node's workflow area (the `files` service's store, else the settings')."""
    store = ctx.services.get("files")
    if not isinstance(store, FileStore):
        store = FileStore.from_settings(ctx.settings)
    return store.area(ctx.run_tags.get(WORKFLOW_ID_TAG))


def output_path(ctx: "NodeContext", filename: str) -> str:
    """Where a node's generated file goes: its execution's folder, one per node (and loop
    iteration), so re-running a node replaces its own file and nothing else."""
    owner = ctx.execution_id or ctx.run_id or "local"
    node = safe_name(ctx.node_id, "node")
    if ctx.iteration:
        node += "-" + "-".join(str(i) for i in ctx.iteration)
    return f"/executions/{safe_name(owner)}/{node}/{safe_name(filename)}"


def input_file(ctx: "NodeContext", value: Any, field: str) -> FileRef:
    """The file a node's field names (a file reference, or a path in the area), checked to
    exist; a node error naming the field otherwise."""
    area = file_area(ctx)
    if value is None or value == "":
        raise ctx.error(f"{field}: no file given", NodeConfigurationError)
    if isinstance(value, Mapping) and FileRef.from_value(value) is None:
        inner = [v for v in value.values() if FileRef.from_value(v) is not None]
        if len(inner) == 1:  # `{{node}}` of a node whose output holds one file
            value = inner[0]
    try:
        return area.stat(value, field)
    except NodeExecutionError as exc:
        raise ctx.error(exc.reason, type(exc)) from None


def store_output(
    ctx: "NodeContext",
    filename: str,
    data: bytes | Iterable[bytes],
    media_type: str | None = None,
) -> FileRef:
    """Write a node's generated file to its output path; errors name the node."""
    try:
        return file_area(ctx).write(output_path(ctx, filename), data, media_type=media_type)
    except NodeExecutionError as exc:
        raise ctx.error(exc.reason, type(exc)) from None


__all__ = [
    "FILE_TYPE",
    "FileArea",
    "FileMissingError",
    "FilePathError",
    "FileRef",
    "FileStore",
    "FileTooLargeError",
    "file_area",
    "input_file",
    "output_path",
    "safe_name",
    "sniff_media_type",
    "store_output",
]
