"""fileRead, fileWrite and audioInput: files in and out of a workflow's file area.

Every file lives in the file store (`nodes/filestore.py`), confined to the workflow's area;
these nodes output a file's reference, never its bytes. `fileRead` opens a file by path or
reference and hands on the first `TEXT_LIMIT` bytes of a text file as `content`; `fileWrite`
writes text, a JSON value or another file's bytes (streamed in chunks) at a path in the area,
whose root is a leading `/` (the builder writes `/outputs/x.mp3`); `audioInput` takes an
uploaded file from the execution inputs (`POST /workflows/{id}/files` made its reference)
and checks it is audio by its content, not its name. Durations come from the file's header:
the standard library's `wave` for WAV, `tinytag` (pure Python, MIT) for the rest.
"""

import codecs
import contextlib
import dataclasses
import json
import wave
from collections.abc import Iterable, Iterator, Mapping
from functools import lru_cache
from typing import IO, Any, BinaryIO, cast

from flowmaestro_dagster.errors import NodeConfigurationError, NodeExecutionError
from flowmaestro_dagster.lang.templates import find_references
from flowmaestro_dagster.nodes.base import (
    ConfigCheck,
    Executor,
    NodeContext,
    NodeResult,
    wrap_output,
)
from flowmaestro_dagster.nodes.filestore import (
    FileArea,
    FileRef,
    FileStore,
    file_area,
    input_file,
)
from flowmaestro_dagster.spec.configs import MediaConfig
from flowmaestro_dagster.spec.models import NodeSpec
from flowmaestro_dagster.spec.problems import Problem, error

TEXT_LIMIT = 1024 * 1024  # fileRead's `content`: the first MiB of a text file (`truncated`)
READ_PATH_FIELDS = ("path", "filePath", "file")
WRITE_PATH_FIELDS = ("path", "filePath")
CONTENT_FIELDS = ("content", "data")
INPUT_FIELDS = ("inputVariable", "inputName")
_CHUNK = 1024 * 1024
_HEAD = 8192

# Media types (as `filetype` names them by content) that are text to fileRead.
_TEXT_TYPES = frozenset(
    {
        "application/json",
        "application/xml",
        "application/javascript",
        "application/x-yaml",
        "application/yaml",
        "application/csv",
        "application/x-sh",
        "image/svg+xml",
    }
)

# audioInput's `acceptedFormats`, each to the media types `filetype` gives such a file by its
# content: a WAV renamed .mp3 is still audio/x-wav. Containers that hold audio only as often
# as video (mp4, webm: what browsers record) count as audio formats.
AUDIO_FORMATS: Mapping[str, frozenset[str]] = {
    "mp3": frozenset({"audio/mpeg"}),
    "wav": frozenset({"audio/x-wav", "audio/wav", "audio/wave", "audio/vnd.wave"}),
    "m4a": frozenset({"audio/mp4", "audio/x-m4a", "video/mp4"}),
    "mp4": frozenset({"audio/mp4", "video/mp4"}),
    "aac": frozenset({"audio/aac"}),
    "ogg": frozenset({"audio/ogg"}),
    "flac": frozenset({"audio/x-flac", "audio/flac"}),
    "webm": frozenset({"video/webm", "audio/webm"}),
    "aiff": frozenset({"audio/x-aiff", "audio/aiff"}),
    "amr": frozenset({"audio/amr"}),
}
_FORMAT_ALIASES = {
    "mpeg": "mp3",
    "mpga": "mp3",
    "wave": "wav",
    "oga": "ogg",
    "opus": "ogg",
    "aif": "aiff",
    "x-m4a": "m4a",
}
_FORMAT_OF = {
    "audio/mpeg": "mp3",
    "audio/x-wav": "wav",
    "audio/wav": "wav",
    "audio/wave": "wav",
    "audio/vnd.wave": "wav",
    "audio/mp4": "m4a",
    "audio/x-m4a": "m4a",
    "video/mp4": "mp4",
    "audio/aac": "aac",
    "audio/ogg": "ogg",
    "audio/x-flac": "flac",
    "audio/flac": "flac",
    "video/webm": "webm",
    "audio/webm": "webm",
    "audio/x-aiff": "aiff",
    "audio/aiff": "aiff",
    "audio/amr": "amr",
}
_AUDIO_TYPES = frozenset().union(*AUDIO_FORMATS.values())


# -- small helpers ---------------------------------------------------------------------------------


def _pick(config: Mapping[str, Any], *keys: str) -> tuple[str, Any]:
    """The first of `keys` the config sets (not None, not ""), with the spelling it used."""
    for key in keys:
        value = config.get(key)
        if value is not None and value != "":
            return key, value
    return keys[0], None


def _is_template(value: Any) -> bool:
    """Whether a value is only known at run time (it holds a `{{...}}` / `${...}` reference)."""
    if isinstance(value, str):
        return next(find_references(value), None) is not None
    if isinstance(value, Mapping):
        return any(_is_template(v) for v in value.values())
    if isinstance(value, list | tuple):
        return any(_is_template(v) for v in value)
    return False


def file_of(value: Any) -> FileRef | None:
    """The file a value holds: a reference, a node output `{file: ...}`, or an object holding
    exactly one reference (`{{node}}` of a file node under its output variable)."""
    ref = FileRef.from_value(value)
    if ref is not None or not isinstance(value, Mapping):
        return ref
    if (inner := FileRef.from_value(value.get("file"))) is not None:
        return inner
    found = [r for v in value.values() if (r := file_of(v)) is not None]
    return found[0] if len(found) == 1 else None


def _node_error(ctx: NodeContext, exc: NodeExecutionError) -> NodeExecutionError:
    """A file store error (it names the field) as this node's error."""
    return ctx.error(exc.reason, type(exc))


@lru_cache(maxsize=1)
def _path_checker() -> FileArea:
    """An area of an in-memory store: its `normalise` checks a literal path at deploy time."""
    return FileStore("memory://flowmaestro-path-check", max_bytes=1).area(None)


def _is_text_type(media_type: str) -> bool:
    return (
        media_type.startswith("text/")
        or media_type in _TEXT_TYPES
        or media_type.endswith(("+json", "+xml"))
    )


def _encoding(ctx: NodeContext, extras: Mapping[str, Any]) -> str | None:
    """The `encoding` field rendered and checked (a codec Python knows), or None if unset."""
    raw = extras.get("encoding")
    if raw is None or raw == "":
        return None
    value = ctx.render(raw)
    if not isinstance(value, str) or not value.strip():
        raise ctx.error("encoding: expected an encoding name like utf-8", NodeConfigurationError)
    try:
        return codecs.lookup(value.strip()).name
    except LookupError:
        raise ctx.error(
            f"encoding: {value.strip()[:40]!r} is not a known text encoding",
            NodeConfigurationError,
        ) from None


def _flag(ctx: NodeContext, extras: Mapping[str, Any], key: str, *, default: bool) -> bool:
    """A checkbox field: a boolean, or "true"/"false" text (templates render to text)."""
    raw = extras.get(key)
    if raw is None or raw == "":
        return default
    value = ctx.render(raw)
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "yes", "1"):
        return True
    if text in ("false", "no", "0"):
        return False
    raise ctx.error(
        f"{key}: expected true or false, got {str(value)[:40]!r}", NodeConfigurationError
    )


# -- fileRead --------------------------------------------------------------------------------------


def execute_file_read(ctx: NodeContext) -> NodeResult:
    """Output `{file, content, encoding, truncated}`: content is text for text files (its first
    TEXT_LIMIT bytes) and null for binary ones, which later nodes open by the reference."""
    extras = ctx.config.extras()
    field, raw = _pick(extras, *READ_PATH_FIELDS)
    if raw is None:
        raise ctx.error(f"{field}: no file to read", NodeConfigurationError)
    encoding = _encoding(ctx, extras)
    value = ctx.render(raw)
    if isinstance(value, str):
        value = value.strip()
    ref = input_file(ctx, value, field)
    content: str | None = None
    truncated = False
    if encoding is not None or _is_text_type(ref.media_type):
        try:
            with file_area(ctx).open(ref.path, field) as handle:
                data = handle.read(TEXT_LIMIT + 1)
        except NodeExecutionError as exc:
            raise _node_error(ctx, exc) from None
        truncated = len(data) > TEXT_LIMIT
        codec = encoding or "utf-8-sig"
        decoder = codecs.getincrementaldecoder(codec)(errors="strict")
        try:
            # Not final when cut: a character split at the cut is left out, not an error.
            content = decoder.decode(data[:TEXT_LIMIT], final=not truncated)
        except UnicodeDecodeError as exc:
            if encoding is not None:
                raise ctx.error(
                    f"encoding: the file is not {encoding} text (byte {exc.start})",
                    NodeConfigurationError,
                ) from None
            content = None  # no encoding asked for: binary after all
        encoding = "utf-8" if content is not None and encoding is None else encoding
    output = {
        "file": ref.to_value(),
        "content": content,
        "encoding": encoding if content is not None else None,
        "truncated": truncated if content is not None else False,
    }
    return NodeResult(wrap_output(output, ctx.config.output_variable))


# -- fileWrite -------------------------------------------------------------------------------------


def _copy_chunks(handle: IO[bytes]) -> Iterator[bytes]:
    while chunk := handle.read(_CHUNK):
        yield chunk


def _as_bytes(ctx: NodeContext, value: Any, field: str, encoding: str | None) -> bytes:
    """Text as text (in `encoding`, utf-8 by default), any other JSON value as JSON."""
    if isinstance(value, str):
        text = value
    elif isinstance(value, bytes | bytearray):
        return bytes(value)
    else:
        try:
            text = json.dumps(value, ensure_ascii=False, indent=2)
        except (TypeError, ValueError) as exc:
            raise ctx.error(f"{field}: cannot be written as JSON ({exc})") from None
    try:
        return text.encode(encoding or "utf-8")
    except UnicodeEncodeError as exc:
        raise ctx.error(
            f"encoding: the text has characters {encoding} cannot hold (at {exc.start})",
            NodeConfigurationError,
        ) from None


def execute_file_write(ctx: NodeContext) -> NodeResult:
    """Write `content` at `path` in the workflow's area; output `{file, path, size}`.

    A file reference as content (`{{audioReply}}`, `{{report.file}}`) copies that file,
    streamed chunk by chunk; text is written as is and any other value as JSON."""
    extras = ctx.config.extras()
    path_field, raw_path = _pick(extras, *WRITE_PATH_FIELDS)
    if raw_path is None:
        raise ctx.error(f"{path_field}: no path to write to", NodeConfigurationError)
    content_field, raw_content = _pick(extras, *CONTENT_FIELDS)
    if raw_content is None and not any(key in extras for key in CONTENT_FIELDS):
        raise ctx.error(f"{content_field}: nothing to write", NodeConfigurationError)
    path = ctx.render(raw_path)
    if isinstance(path, str):
        path = path.strip()
    content = ctx.render(raw_content) if raw_content is not None else ""
    if content is None:
        raise ctx.error(f"{content_field}: the value to write is null", NodeConfigurationError)
    encoding = _encoding(ctx, extras)
    overwrite = _flag(ctx, extras, "overwrite", default=True)
    area = file_area(ctx)
    try:
        if not overwrite and area.exists(path, path_field):
            raise ctx.error(
                f"{path_field}: {area.normalise(path, path_field)!r} exists and overwrite is false",
                NodeConfigurationError,
            )
        source = file_of(content)
        if source is not None:
            with area.open(source.path, content_field) as handle:
                ref = area.write(path, _copy_chunks(handle), field=path_field)
        else:
            ref = area.write(
                path, _as_bytes(ctx, content, content_field, encoding), field=path_field
            )
    except NodeExecutionError as exc:
        if exc.node_id is not None:
            raise
        raise _node_error(ctx, exc) from None
    output = {"file": ref.to_value(), "path": ref.path, "size": ref.size}
    return NodeResult(wrap_output(output, ctx.config.output_variable))


# -- audioInput ------------------------------------------------------------------------------------


def audio_formats(value: Any, field: str = "acceptedFormats") -> list[str]:
    """`["mp3", ".WAV"]` or `"mp3, wav"` as known format names; a ValueError names the rest."""
    if isinstance(value, str):
        items: list[Any] = [part for part in value.replace(";", ",").split(",") if part.strip()]
    elif isinstance(value, list | tuple):
        items = list(value)
    else:
        raise ValueError(f"{field}: expected a list of formats like ['mp3', 'wav']")
    formats: list[str] = []
    unknown: list[str] = []
    for item in items:
        if not isinstance(item, str):
            raise ValueError(f"{field}: expected format names, got {type(item).__name__}")
        name = item.strip().lower().lstrip(".").removeprefix("audio/")
        name = _FORMAT_ALIASES.get(name, name)
        if name in AUDIO_FORMATS:
            formats.append(name)
        elif name not in ("*", ""):
            unknown.append(item)
    if unknown:
        known = ", ".join(AUDIO_FORMATS)
        raise ValueError(
            f"{field}: {', '.join(map(repr, unknown))} cannot be recognised by content "
            f"(known: {known})"
        )
    return formats


def _audio_input_value(ctx: NodeContext) -> tuple[str, Any]:
    """The execution input holding the file, and its name."""
    extras = ctx.config.extras()
    field, named = _pick(extras, *INPUT_FIELDS)
    inputs = ctx.state.inputs
    if named is not None:
        name = ctx.render(named)
        if not isinstance(name, str) or not name.strip():
            raise ctx.error(f"{field}: expected an input name", NodeConfigurationError)
        candidates = [name.strip()]
    else:
        candidates = [n for n in (ctx.config.output_variable, ctx.node_id) if n]
    for name in candidates:
        if name in inputs and inputs[name] is not None:
            return name, inputs[name]
    upstream = ctx.upstream_value()
    for name in candidates:
        if isinstance(upstream, Mapping) and upstream.get(name) is not None:
            return name, upstream[name]  # a `files` node before it hands the input on
    if named is None:
        files = [(k, v) for k, v in inputs.items() if file_of(v) is not None]
        if len(files) == 1:
            return files[0]
    raise ctx.error(
        f"{field}: no uploaded file in the execution inputs under "
        f"{' or '.join(map(repr, candidates))} (upload it with POST /workflows/<id>/files "
        "and pass the reference as that input)",
        NodeConfigurationError,
    )


def _duration(area: FileArea, ref: FileRef, fmt: str | None) -> float | None:
    """Seconds of audio when the header says so cheaply; None when it does not."""
    with contextlib.suppress(Exception), area.open(ref.path) as handle:
        if fmt == "wav":
            with contextlib.suppress(wave.Error, EOFError), wave.open(handle, "rb") as audio:
                rate = audio.getframerate()
                if rate > 0:
                    return round(audio.getnframes() / rate, 3)
            handle.seek(0)
        from tinytag import TinyTag

        duration = TinyTag.get(file_obj=cast(BinaryIO, handle), tags=False).duration
        return round(float(duration), 3) if duration else None
    return None


def execute_audio_input(ctx: NodeContext) -> NodeResult:
    """Output `{file, format, mediaType, durationSeconds}` for the uploaded audio file; with a
    `provider`/`model` (the builder's "Transcribe" audioInput) the transcription's fields too."""
    extras = ctx.config.extras()
    name, value = _audio_input_value(ctx)
    field = _pick(extras, *INPUT_FIELDS)[0]
    if isinstance(value, list):
        if len(value) != 1:
            raise ctx.error(
                f"{field}: input {name!r} holds {len(value)} files; audioInput takes one",
                NodeConfigurationError,
            )
        value = value[0]
    held = file_of(value)
    ref = input_file(ctx, held.to_value() if held is not None else value, field)
    fmt = _FORMAT_OF.get(ref.media_type)
    accepted_raw = extras.get("acceptedFormats") or extras.get("formats")
    accepted: list[str] = []
    if accepted_raw is not None:
        try:
            accepted = audio_formats(ctx.render(accepted_raw))
        except ValueError as exc:
            raise ctx.error(str(exc), NodeConfigurationError) from None
    what = fmt or ref.media_type or "unknown"
    if accepted:
        allowed = frozenset().union(*(AUDIO_FORMATS[f] for f in accepted))
        if ref.media_type not in allowed:
            raise ctx.error(
                f"acceptedFormats: {ref.name!r} is {what} by its content, not one of "
                f"{', '.join(accepted)}",
                NodeConfigurationError,
            )
    elif ref.media_type not in _AUDIO_TYPES:
        raise ctx.error(
            f"{field}: {ref.name!r} is not an audio file by its content ({what})",
            NodeConfigurationError,
        )
    output: dict[str, Any] = {
        "file": ref.to_value(),
        "format": fmt,
        "mediaType": ref.media_type,
        "durationSeconds": _duration(file_area(ctx), ref, fmt),
    }
    config = ctx.config
    if isinstance(config, MediaConfig) and (config.provider or config.model):
        output.update(_transcribe(ctx, config, ref))
    return NodeResult(wrap_output(output, ctx.config.output_variable))


def _transcribe(ctx: NodeContext, config: MediaConfig, ref: FileRef) -> dict[str, Any]:
    """The builder's transcribing audioInput: the audioTranscription executor on this file."""
    from flowmaestro_dagster.nodes import get_executor

    extras = {
        k: v
        for k, v in config.extras().items()
        if k not in (*INPUT_FIELDS, "acceptedFormats", "formats")
    }
    transcription = MediaConfig.model_validate(
        {
            **extras,
            "provider": config.provider,
            "model": config.model,
            "operation": config.operation,
            "audioFile": ref.to_value(),
        }
    )
    sub = dataclasses.replace(ctx, node_type="audioTranscription", config=transcription)
    result = get_executor("audioTranscription", ctx.services.get("executors"))(sub)
    value = result.output
    return dict(value) if isinstance(value, Mapping) else {"text": value}


# -- deploy-time checks ----------------------------------------------------------------------------


def _path_problems(node: NodeSpec, keys: Iterable[str], verb: str) -> Iterator[Problem]:
    config = node.original_config
    field, value = _pick(config, *keys)
    if value is None:
        yield error(
            "missing_field",
            f"{node.type} needs a {field} (the file to {verb})",
            node_id=node.id,
            field=field,
        )
        return
    if _is_template(value) or isinstance(value, Mapping):
        return
    try:
        _path_checker().normalise(value, field)
    except NodeExecutionError as exc:
        yield error("invalid_path", exc.reason, node_id=node.id, field=field)


def check_file_read(node: NodeSpec) -> Iterable[Problem]:
    """A missing path, or a literal one that leaves the area (`..`, a URL, a backslash)."""
    yield from _path_problems(node, READ_PATH_FIELDS, "read")
    yield from _encoding_problems(node)


def check_file_write(node: NodeSpec) -> Iterable[Problem]:
    """A missing path or content, a literal path that leaves the area, a non-boolean overwrite."""
    yield from _path_problems(node, WRITE_PATH_FIELDS, "write")
    config = node.original_config
    if not any(key in config for key in CONTENT_FIELDS):
        yield error(
            "missing_field",
            "fileWrite needs content (text, a value, or a file like {{node.file}})",
            node_id=node.id,
            field="content",
        )
    overwrite = config.get("overwrite")
    if (
        overwrite is not None
        and not isinstance(overwrite, bool)
        and not _is_template(overwrite)
        and str(overwrite).strip().lower() not in ("true", "false", "yes", "no", "1", "0", "")
    ):
        yield error(
            "invalid_config",
            f"expected true or false, got {str(overwrite)[:40]!r}",
            node_id=node.id,
            field="overwrite",
        )
    yield from _encoding_problems(node)


def _encoding_problems(node: NodeSpec) -> Iterator[Problem]:
    value = node.original_config.get("encoding")
    if value is None or value == "" or _is_template(value):
        return
    try:
        codecs.lookup(str(value))
    except LookupError:
        yield error(
            "invalid_config",
            f"encoding: {str(value)[:40]!r} is not a known text encoding",
            node_id=node.id,
            field="encoding",
        )


def check_audio_input(node: NodeSpec) -> Iterable[Problem]:
    """acceptedFormats naming a format no content check can recognise; a non-text input name."""
    config = node.original_config
    for key in ("acceptedFormats", "formats"):
        value = config.get(key)
        if value is None or _is_template(value):
            continue
        try:
            audio_formats(value, key)
        except ValueError as exc:
            yield error(
                "invalid_config",
                str(exc).removeprefix(f"{key}: "),
                node_id=node.id,
                field=key,
            )
    field, name = _pick(config, *INPUT_FIELDS)
    if name is not None and not isinstance(name, str):
        yield error(
            "invalid_config",
            f"expected the name of an execution input, got {type(name).__name__}",
            node_id=node.id,
            field=field,
        )


EXECUTORS: Mapping[str, Executor] = {
    "fileRead": execute_file_read,
    "fileWrite": execute_file_write,
    "audioInput": execute_audio_input,
}
CONFIG_CHECKS: Mapping[str, ConfigCheck] = {
    "fileRead": check_file_read,
    "fileWrite": check_file_write,
    "audioInput": check_audio_input,
}

__all__ = [
    "AUDIO_FORMATS",
    "CONFIG_CHECKS",
    "EXECUTORS",
    "TEXT_LIMIT",
    "audio_formats",
    "check_audio_input",
    "check_file_read",
    "check_file_write",
    "execute_audio_input",
    "execute_file_read",
    "execute_file_write",
    "file_of",
]
