"""Generative media nodes on OpenAI-compatible endpoints: audioTranscription, audioOutput and
audio (text to speech, or transcription with `operation: transcribe`), imageGeneration and
videoGeneration.

A node's `provider` names an LLM provider in settings (`FLOWMAESTRO_LLM__PROVIDERS__<NAME>__...`),
so OpenAI, a gateway (LiteLLM) or a local server (LocalAI, vLLM's audio endpoints) serve them
alike; the official `openai` SDK makes each call through `llm.provider_call`, which maps a 429,
5xx or lost connection to a transient node error and any other 4xx to a permanent one.

Files never travel in run state: audio goes up streamed from the file store (a file reference
from audioInput/fileDownload, a path in the workflow's area, or an http(s) URL fetched through
the SSRF guard), and speech, images and videos come down streamed into it; outputs carry
`FileRef`s. Every input has a cap (FLOWMAESTRO_MEDIA_AI__*, and the file store's own).

A video job renders for minutes: the node submits it, then parks on a durable `datetime`
waitpoint (no worker held) whose spec keeps the job id. When the waitpoint is due the
platform re-executes the node, which polls once: done, the video is downloaded into the file
store; still rendering, the node parks again on a fresh waitpoint (one key per poll:
`<iteration>#poll<n>`), waiting 5 s, 10 s, ... up to 60 s, until a deadline. Outside the
platform (no waitpoint store) it polls in process for a short while.

Outputs (under `outputVariable` when set; docs/nodes.md):

* audioTranscription: `{text, language?, duration?, segments?, task, format, model, provider}`
* audioOutput / audio: `{file, format, voice, model, provider, characters}`
* imageGeneration: `{images: [{file, revisedPrompt?}], file, model, provider, size, operation}`
* videoGeneration: `{file, jobId, status, durationSeconds, model, provider}`
"""

import base64
import binascii
import contextlib
import io
import itertools
import math
import mimetypes
import posixpath
import re
import tempfile
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import IO, TYPE_CHECKING, Any, Protocol

import httpx

from flowmaestro_dagster.errors import (
    ConnectorNotConfiguredError,
    NodeConfigurationError,
    NodeExecutionError,
    TransientNodeError,
)
from flowmaestro_dagster.lang.expressions import to_number
from flowmaestro_dagster.nodes import integration
from flowmaestro_dagster.nodes.base import (
    ConfigCheck,
    Executor,
    NodeContext,
    NodeResult,
    Park,
    wrap_output,
)
from flowmaestro_dagster.nodes.filestore import (
    FileTooLargeError,
    file_area,
    input_file,
    safe_name,
    sniff_media_type,
    store_output,
)
from flowmaestro_dagster.nodes.llm import Endpoint, provider_call, resolve_endpoint
from flowmaestro_dagster.nodes.net import BlockedAddressError, guarded_client
from flowmaestro_dagster.nodes.waitpoints import (
    RESOLVED,
    WaitpointRecord,
    WaitpointStore,
    iteration_key,
    step_key,
)
from flowmaestro_dagster.settings import MediaAISettings
from flowmaestro_dagster.spec.configs import MediaConfig
from flowmaestro_dagster.spec.problems import Problem, error, warning

if TYPE_CHECKING:
    from flowmaestro_dagster.spec.models import NodeSpec

MB = 1024 * 1024
CHUNK = 256 * 1024
SPOOL_BYTES = 1024 * 1024  # a fetched upload stays in memory up to this, then goes to disk

DEFAULT_MODELS = {
    "transcription": "whisper-1",
    "speech": "tts-1",
    "image": "dall-e-3",
    "image-edit": "dall-e-2",
    "video": "sora-2",
}
DEFAULT_VOICE = "alloy"

# Field spellings real builder configs use (the corpus), first found wins.
AUDIO_FIELDS = ("audioFile", "audioSource", "audio", "audioInput", "audioUrl", "file")
TEXT_FIELDS = ("text", "input", "textInput")
SPEECH_FORMAT_FIELDS = ("format", "responseFormat", "audioFormat", "returnFormat", "outputFormat")
TRANSCRIPT_FORMAT_FIELDS = ("outputFormat", "responseFormat", "format")
SOURCE_IMAGE_FIELDS = ("sourceImage", "image", "imageInput", "imageUrl")

TASKS = ("transcribe", "translate")
TRANSCRIPT_FORMATS = ("json", "text", "verbose_json", "srt", "vtt")
AUDIO_FORMATS = {
    "mp3": "audio/mpeg",
    "opus": "audio/ogg",
    "aac": "audio/aac",
    "flac": "audio/flac",
    "wav": "audio/wav",
    "pcm": "audio/pcm",  # raw 24 kHz 16-bit little-endian samples
}
# How the builder asked the audio back: always a stored file here (bytes never enter run state).
DELIVERY_FORMATS = ("base64", "url", "file", "binary", "buffer", "b64_json")
SPEED_RANGE = (0.25, 4.0)
IMAGE_COUNT_RANGE = (1, 10)
IMAGE_FILE_FORMATS = ("png", "jpeg", "webp")
IMAGE_EXTENSIONS = {
    "image/png": "png",
    "image/jpeg": "jpg",
    "image/webp": "webp",
    "image/gif": "gif",
}
SIZE_PATTERN = re.compile(r"^\d{1,5}x\d{1,5}$")
ASPECT_PATTERN = re.compile(r"^\s*(\d{1,4})\s*:\s*(\d{1,4})\s*$")
# aspectRatio → the size OpenAI's videos API takes (sizes are WxH there).
VIDEO_SIZES = {(16, 9): "1280x720", (9, 16): "720x1280", (7, 4): "1792x1024", (4, 7): "1024x1792"}

SPEECH_OPERATIONS = frozenset({"tts", "speak", "speech", "texttospeech", "synthesize", "generate"})
TRANSCRIBE_OPERATIONS = frozenset(
    {"transcribe", "transcription", "stt", "speechtotext", "translate", "translation"}
)
IMAGE_OPERATIONS = {
    "generate": "generate",
    "generation": "generate",
    "create": "generate",
    "texttoimage": "generate",
    "edit": "edit",
    "inpaint": "edit",
    "variation": "variation",
    "variations": "variation",
}
MAX_POLLS = 10_000  # a chain longer than this is a bug, not a slow render


def _key(value: Any) -> str:
    return re.sub(r"[^a-z]", "", str(value or "").lower())


def _is_template(value: Any) -> bool:
    return isinstance(value, str) and ("{{" in value or "${" in value)


def _blank(value: Any) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


def _pick(extras: Mapping[str, Any], names: Iterable[str]) -> tuple[str, Any]:
    """(the spelling found, its value) of the first field present; (first name, None) if none."""
    names = tuple(names)
    for name in names:
        if extras.get(name) is not None:
            return name, extras[name]
    return names[0], None


def _mb(limit: int) -> str:
    return f"{limit / MB:g} MB"


def _media(ctx: NodeContext) -> MediaAISettings:
    return ctx.settings.media_ai


def _endpoint(ctx: NodeContext, config: MediaConfig, default_model: str) -> Endpoint:
    """The node's provider and model; a node that names no model gets its type's usual one
    (the provider's `default_model` is a chat model, not a speech or image one)."""
    return resolve_endpoint(ctx, config.provider, config.model or default_model)


def _output(ctx: NodeContext, value: dict[str, Any]) -> NodeResult:
    return NodeResult(wrap_output(value, ctx.config.output_variable))


# -- files in ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Upload:
    """A file to send: its name (with an extension the provider can read), an open handle."""

    name: str
    handle: IO[bytes]
    media_type: str
    size: int

    def as_file(self) -> tuple[str, IO[bytes], str]:
        """What the SDK takes for a multipart file: streamed from the handle, not read whole."""
        return (self.name, self.handle, self.media_type)


def _upload_name(name: str, media_type: str, default: str) -> str:
    base = safe_name(name, default)
    if "." not in base.strip("."):
        extension = mimetypes.guess_extension(media_type or "") or ""
        base += {".mpga": ".mp3", ".oga": ".ogg"}.get(extension, extension)
    return base


def _display(url: str) -> str:
    """A URL as errors show it: no query (signed URLs carry credentials there)."""
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL:
        return url[:100]
    return str(parsed.copy_with(query=None, fragment=None, userinfo=b""))[:200]


def _capped(
    ctx: NodeContext, chunks: Iterable[bytes], limit: int, what: str, setting: str
) -> Iterator[bytes]:
    """The chunks, refused (a node error) as soon as they add up to more than `limit`."""
    total = 0
    for chunk in chunks:
        total += len(chunk)
        if total > limit:
            raise ctx.error(f"{what} is larger than {_mb(limit)} ({setting})", FileTooLargeError)
        yield chunk


@contextlib.contextmanager
def _fetch(
    ctx: NodeContext, url: str, field: str, limit: int, setting: str
) -> Iterator[tuple[str, Iterator[bytes]]]:
    """(content type, capped chunks) of a URL, through the SSRF-guarded client: a URL in a
    workflow (or one a provider returns) never reaches internal addresses the operator did
    not allow (FLOWMAESTRO_HTTP__*)."""
    display = _display(url)
    settings = ctx.settings.http
    try:
        with (
            guarded_client(settings, follow_redirects=True) as client,
            client.stream("GET", url) as response,
        ):
            status = response.status_code
            if status >= 400:
                transient = status in (408, 429) or status >= 500
                raise ctx.error(
                    f"{field}: GET {display} answered HTTP {status}",
                    TransientNodeError if transient else NodeExecutionError,
                    details={"status": status},
                )
            declared = response.headers.get("content-length", "")
            if declared.isdigit() and int(declared) > limit:
                raise ctx.error(
                    f"{field}: the file at {display} is larger than {_mb(limit)} ({setting})",
                    FileTooLargeError,
                )
            content_type = response.headers.get("content-type", "").split(";")[0].strip()
            what = f"{field}: the file at {display}"
            yield content_type, _capped(ctx, response.iter_bytes(CHUNK), limit, what, setting)
    except BlockedAddressError as exc:
        raise ctx.error(f"{field}: {exc}", NodeConfigurationError) from exc
    except httpx.TimeoutException as exc:
        raise ctx.error(
            f"{field}: GET {display} timed out after {settings.timeout_s:g}s", TransientNodeError
        ) from exc
    except (httpx.InvalidURL, httpx.UnsupportedProtocol) as exc:
        raise ctx.error(f"{field}: cannot fetch {display}: {exc}", NodeConfigurationError) from exc
    except httpx.HTTPError as exc:
        raise ctx.error(f"{field}: GET {display} failed: {exc}", TransientNodeError) from exc


@contextlib.contextmanager
def _upload(
    ctx: NodeContext, value: Any, field: str, limit: int, setting: str, default_name: str
) -> Iterator[Upload]:
    """The file a field names, opened for upload and checked against `limit` before a byte
    is sent: a file reference or a path in the workflow's area (streamed from the store), an
    http(s) URL (fetched, guarded, into a spooled temporary file) or a data: URL."""
    if isinstance(value, str) and value.strip().lower().startswith(("http://", "https://")):
        url = value.strip()
        with tempfile.SpooledTemporaryFile(max_size=SPOOL_BYTES) as spool:
            with _fetch(ctx, url, field, limit, setting) as (content_type, chunks):
                for chunk in chunks:
                    spool.write(chunk)
            size = spool.tell()
            spool.seek(0)
            head = spool.read(8192)
            spool.seek(0)
            name = posixpath.basename(httpx.URL(url).path) or default_name
            media_type = sniff_media_type(head, name)
            if media_type == "application/octet-stream" and content_type:
                media_type = content_type
            yield Upload(_upload_name(name, media_type, default_name), spool, media_type, size)
        return
    if isinstance(value, str) and value.strip().lower().startswith("data:"):
        data = _data_url(ctx, value.strip(), field, limit, setting)
        media_type = sniff_media_type(data[:8192])
        name = _upload_name(default_name, media_type, default_name)
        yield Upload(name, io.BytesIO(data), media_type, len(data))
        return
    ref = input_file(ctx, value, field)
    if ref.size > limit:
        raise ctx.error(
            f"{field}: the file {ref.name!r} is {ref.size / MB:.1f} MB, more than the "
            f"{_mb(limit)} this node sends ({setting})",
            FileTooLargeError,
        )
    try:
        with file_area(ctx).open(ref.path, field) as handle:
            media_type = ref.media_type or "application/octet-stream"
            yield Upload(
                _upload_name(ref.name, media_type, default_name), handle, media_type, ref.size
            )
    except NodeExecutionError as exc:
        if exc.node_id is not None:
            raise
        raise ctx.error(exc.reason, type(exc)) from None


def _data_url(ctx: NodeContext, value: str, field: str, limit: int, setting: str) -> bytes:
    header, _, payload = value.partition(",")
    if ";base64" not in header:
        raise ctx.error(f"{field}: only base64 data: URLs are accepted", NodeConfigurationError)
    if len(payload) > limit * 4 // 3 + 4:
        raise ctx.error(
            f"{field}: the data is larger than {_mb(limit)} ({setting})", FileTooLargeError
        )
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise ctx.error(
            f"{field}: the data: URL is not valid base64", NodeConfigurationError
        ) from None


# -- audioTranscription ----------------------------------------------------------------------------


def _choice(
    ctx: NodeContext,
    extras: Mapping[str, Any],
    names: tuple[str, ...],
    allowed: Iterable[str],
    default: str,
) -> str:
    """A field whose value is one of `allowed` (rendered, case-insensitive); else a node error."""
    name, raw = _pick(extras, names)
    if _blank(raw):
        return default
    value = ctx.render_text(raw).strip().lower()
    allowed = tuple(allowed)
    if not value:
        return default
    if value not in allowed:
        raise ctx.error(
            f"{name}: {value!r} is not one of {', '.join(allowed)}", NodeConfigurationError
        )
    return value


def execute_audio_transcription(ctx: NodeContext) -> NodeResult:
    """Speech to text: `/audio/transcriptions` (or `/audio/translations`, to English)."""
    config = ctx.typed_config(MediaConfig)
    extras = config.extras()
    field, raw = _pick(extras, AUDIO_FIELDS)
    if _blank(raw):
        raise ctx.error(
            f"{field}: no audio file given (a file from audioInput or fileDownload, a path in "
            "the workflow's files, or a URL)",
            NodeConfigurationError,
        )
    task = _choice(ctx, extras, ("task",), TASKS, "transcribe")
    if _key(config.operation) in ("translate", "translation"):
        task = "translate"
    response_format = _choice(ctx, extras, TRANSCRIPT_FORMAT_FIELDS, TRANSCRIPT_FORMATS, "json")
    options: dict[str, Any] = {"response_format": response_format}
    if task == "transcribe" and not _blank(extras.get("language")):
        options["language"] = ctx.render_text(extras["language"]).strip()
    if not _blank(extras.get("prompt")):
        options["prompt"] = ctx.render_text(extras["prompt"])
    if extras.get("temperature") is not None:
        options["temperature"] = _number(ctx, extras["temperature"], "temperature", 0.0, 1.0)
    endpoint = _endpoint(ctx, config, DEFAULT_MODELS["transcription"])
    limit = _media(ctx).max_transcription_mb * MB
    setting = "FLOWMAESTRO_MEDIA_AI__MAX_TRANSCRIPTION_MB"
    with (
        _upload(ctx, ctx.render(raw), field, limit, setting, "audio") as upload,
        provider_call(ctx, endpoint) as client,
    ):
        api = client.audio.translations if task == "translate" else client.audio.transcriptions
        result = api.create(file=upload.as_file(), model=endpoint.model, **options)
    ctx.log.info(
        f"{ctx.node_id}: {endpoint.provider_name}/{endpoint.model} {task}d {upload.size} bytes"
    )
    return _output(ctx, _transcript(result, task, response_format, endpoint))


def _transcript(result: Any, task: str, response_format: str, endpoint: Endpoint) -> dict[str, Any]:
    """`{text, language?, duration?, segments?, task, format, model, provider}`."""
    if isinstance(result, str):
        text = result.strip() if response_format == "text" else result
    else:
        text = str(getattr(result, "text", "") or "")
    output: dict[str, Any] = {"text": text}
    language = getattr(result, "language", None)
    if language:
        output["language"] = str(language)
    duration = getattr(result, "duration", None)
    if isinstance(duration, int | float):
        output["duration"] = float(duration)
    segments = getattr(result, "segments", None)
    if segments:
        output["segments"] = [
            {
                "id": getattr(s, "id", index),
                "start": float(getattr(s, "start", 0.0)),
                "end": float(getattr(s, "end", 0.0)),
                "text": str(getattr(s, "text", "")),
            }
            for index, s in enumerate(segments)
        ]
    output.update(
        task=task, format=response_format, model=endpoint.model, provider=endpoint.provider_name
    )
    return output


def _number(ctx: NodeContext, raw: Any, field: str, low: float, high: float) -> float:
    value = ctx.render(raw)
    number = to_number(value)
    if value is None or isinstance(value, bool) or math.isnan(number) or not low <= number <= high:
        raise ctx.error(
            f"{field}: must be a number from {low:g} to {high:g}, got {value!r}",
            NodeConfigurationError,
        )
    return number


# -- audioOutput / audio: text to speech ---------------------------------------------------------


def _speech_format(ctx: NodeContext, extras: Mapping[str, Any]) -> str:
    """The audio format: the first of the format fields holding one (`returnFormat: base64`
    asks how to deliver it, and the answer is always a stored file)."""
    for name in SPEECH_FORMAT_FIELDS:
        raw = extras.get(name)
        if _blank(raw):
            continue
        value = ctx.render_text(raw).strip().lower()
        if value in AUDIO_FORMATS:
            return value
        if value in DELIVERY_FORMATS or not value:
            continue
        raise ctx.error(
            f"{name}: {value!r} is not an audio format ({', '.join(AUDIO_FORMATS)})",
            NodeConfigurationError,
        )
    return "mp3"


def execute_speech(ctx: NodeContext) -> NodeResult:
    """Text to speech: `/audio/speech`, the audio streamed into the file store."""
    config = ctx.typed_config(MediaConfig)
    extras = config.extras()
    field, raw = _pick(extras, TEXT_FIELDS)
    text = ctx.render_text(raw) if raw is not None else ""
    if not text.strip():
        raise ctx.error(f"{field}: no text to speak", NodeConfigurationError)
    limit = _media(ctx).max_speech_chars
    if len(text) > limit:
        raise ctx.error(
            f"{field}: {len(text)} characters, more than the {limit} one speech call reads "
            "(FLOWMAESTRO_MEDIA_AI__MAX_SPEECH_CHARS; split the text, e.g. in a loop)",
            NodeConfigurationError,
        )
    voice = ctx.render_text(extras["voice"]).strip() if not _blank(extras.get("voice")) else ""
    voice = voice or DEFAULT_VOICE
    audio_format = _speech_format(ctx, extras)
    options: dict[str, Any] = {"response_format": audio_format}
    if extras.get("speed") is not None:
        options["speed"] = _number(ctx, extras["speed"], "speed", *SPEED_RANGE)
    if not _blank(extras.get("instructions")):
        options["instructions"] = ctx.render_text(extras["instructions"])
    ignored = [k for k in ("stability", "similarityBoost", "style") if k in extras]
    if ignored:
        ctx.log.info(f"{ctx.node_id}: {', '.join(ignored)} ignored (not OpenAI speech fields)")
    endpoint = _endpoint(ctx, config, DEFAULT_MODELS["speech"])
    with (
        provider_call(ctx, endpoint) as client,
        client.audio.speech.with_streaming_response.create(
            model=endpoint.model, voice=voice, input=text, **options
        ) as response,
    ):
        ref = store_output(
            ctx, f"speech.{audio_format}", response.iter_bytes(CHUNK), AUDIO_FORMATS[audio_format]
        )
    output = {
        "file": ref.to_value(),
        "format": audio_format,
        "voice": voice,
        "model": endpoint.model,
        "provider": endpoint.provider_name,
        "characters": len(text),
    }
    return _output(ctx, output)


def execute_audio(ctx: NodeContext) -> NodeResult:
    """The builder's `audio` node: speech unless its operation transcribes."""
    operation = getattr(ctx.config, "operation", None)
    if _key(operation) in TRANSCRIBE_OPERATIONS:
        return execute_audio_transcription(ctx)
    if _key(operation) and _key(operation) not in SPEECH_OPERATIONS:
        raise ctx.error(
            f"operation: {operation!r} is neither text to speech (tts) nor "
            "transcription (transcribe, translate)",
            NodeConfigurationError,
        )
    return execute_speech(ctx)


# -- imageGeneration -----------------------------------------------------------------------------


def _image_operation(config: MediaConfig) -> str | None:
    """generate, edit or variation; None for what OpenAI's API does not do (upscale, ...)."""
    key = _key(config.operation)
    if not key:
        return "generate"
    return IMAGE_OPERATIONS.get(key)


def execute_image_generation(ctx: NodeContext) -> NodeResult:
    """`/images/generations`, `/images/edits` or `/images/variations`; each image stored.

    Operations the OpenAI API has no endpoint for (upscale, styleTransfer) go to a connector
    registered under the node type, as before (integration.execute_media)."""
    config = ctx.typed_config(MediaConfig)
    operation = _image_operation(config)
    if operation is None:
        return integration.execute_media(ctx)
    extras = config.extras()
    media = _media(ctx)
    limit = media.max_image_mb * MB
    setting = "FLOWMAESTRO_MEDIA_AI__MAX_IMAGE_MB"
    prompt = ""
    if operation != "variation":
        prompt = ctx.render_text(extras.get("prompt") or "")
        if not prompt.strip():
            raise ctx.error(f"prompt: an image {operation} needs a prompt", NodeConfigurationError)
    options = _image_options(ctx, extras, operation)
    default_model = DEFAULT_MODELS["image" if operation == "generate" else "image-edit"]
    endpoint = _endpoint(ctx, config, default_model)
    if "gpt-image" not in endpoint.model.lower():
        options["response_format"] = "b64_json"  # GPT image models always answer base64
    with provider_call(ctx, endpoint) as client:
        if operation == "generate":
            response = client.images.generate(model=endpoint.model, prompt=prompt, **options)
        else:
            field, raw = _pick(extras, SOURCE_IMAGE_FIELDS)
            if _blank(raw):
                raise ctx.error(
                    f"{field}: an image {operation} needs a source image", NodeConfigurationError
                )
            with contextlib.ExitStack() as stack:
                image = stack.enter_context(
                    _upload(ctx, ctx.render(raw), field, limit, setting, "image")
                )
                if operation == "edit":
                    if not _blank(extras.get("mask")):
                        mask = stack.enter_context(
                            _upload(ctx, ctx.render(extras["mask"]), "mask", limit, setting, "mask")
                        )
                        options["mask"] = mask.as_file()
                    response = client.images.edit(
                        image=image.as_file(), prompt=prompt, model=endpoint.model, **options
                    )
                else:
                    response = client.images.create_variation(
                        image=image.as_file(), model=endpoint.model, **options
                    )
    items = list(response.data or [])
    if not items:
        raise ctx.error(
            f"provider '{endpoint.provider_name}' returned no image for model '{endpoint.model}'"
        )
    images = [_store_image(ctx, item, index, limit, setting) for index, item in enumerate(items)]
    output = {
        "images": images,
        "file": images[0]["file"],
        "model": endpoint.model,
        "provider": endpoint.provider_name,
        "size": options.get("size"),
        "operation": operation,
    }
    return _output(ctx, output)


def _image_options(ctx: NodeContext, extras: Mapping[str, Any], operation: str) -> dict[str, Any]:
    options: dict[str, Any] = {}
    if extras.get("n") is not None:
        count = _number(ctx, extras["n"], "n", *IMAGE_COUNT_RANGE)
        if not count.is_integer():
            raise ctx.error(f"n: must be a whole number, got {count:g}", NodeConfigurationError)
        options["n"] = int(count)
    if not _blank(extras.get("size")):
        size = ctx.render_text(extras["size"]).strip().lower()
        if size != "auto" and not SIZE_PATTERN.match(size):
            raise ctx.error(
                f"size: {size!r} is not WIDTHxHEIGHT (1024x1024) or auto", NodeConfigurationError
            )
        options["size"] = size
    if operation == "variation":
        return options
    names = (
        ("quality", "background", "style") if operation == "generate" else ("quality", "background")
    )
    for name in names:  # passed as given: their values are model-specific (hd, high, vivid)
        if not _blank(extras.get(name)):
            options[name] = ctx.render_text(extras[name]).strip()
    if not _blank(extras.get("outputFormat")):
        wanted = ctx.render_text(extras["outputFormat"]).strip().lower()
        wanted = "jpeg" if wanted == "jpg" else wanted
        if wanted in IMAGE_FILE_FORMATS:
            options["output_format"] = wanted
        elif wanted not in DELIVERY_FORMATS:
            raise ctx.error(
                f"outputFormat: {wanted!r} is not png, jpeg or webp", NodeConfigurationError
            )
    return options


def _store_image(
    ctx: NodeContext, item: Any, index: int, limit: int, setting: str
) -> dict[str, Any]:
    """One generated image into the file store: `{file, revisedPrompt?}`."""
    encoded = getattr(item, "b64_json", None)
    url = getattr(item, "url", None)
    what = f"image {index + 1}"
    if encoded:
        if len(encoded) > limit * 4 // 3 + 4:
            raise ctx.error(f"{what} is larger than {_mb(limit)} ({setting})", FileTooLargeError)
        try:
            data = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            raise ctx.error(f"{what}: the provider's b64_json is not base64") from None
        media_type = sniff_media_type(data[:8192])
        name = f"image-{index + 1}.{IMAGE_EXTENSIONS.get(media_type, 'png')}"
        ref = store_output(ctx, name, data, media_type)
    elif url:
        with _fetch(ctx, str(url), f"{what} url", limit, setting) as (content_type, chunks):
            first = next(chunks, b"")
            media_type = sniff_media_type(first[:8192])
            if media_type == "application/octet-stream" and content_type.startswith("image/"):
                media_type = content_type
            name = f"image-{index + 1}.{IMAGE_EXTENSIONS.get(media_type, 'png')}"
            ref = store_output(ctx, name, itertools.chain([first], chunks), media_type)
    else:
        raise ctx.error(f"{what}: the provider returned neither b64_json nor a url")
    stored: dict[str, Any] = {"file": ref.to_value()}
    revised = getattr(item, "revised_prompt", None)
    if revised:
        stored["revisedPrompt"] = str(revised)
    return stored


# -- videoGeneration -----------------------------------------------------------------------------

VIDEO_RUNNING = frozenset({"queued", "in_progress", "pending", "processing", "running"})


@dataclass(frozen=True)
class VideoRequest:
    model: str
    prompt: str
    seconds: int | None = None
    size: str | None = None


@dataclass(frozen=True)
class VideoStatus:
    """A video job as the provider reports it."""

    job_id: str
    status: str  # queued | in_progress | completed | failed
    progress: int | None = None
    error: str | None = None
    seconds: float | None = None
    url: str | None = None  # where the finished video is, for adapters whose API gives one

    @property
    def done(self) -> bool:
        return self.status not in VIDEO_RUNNING


class VideoProvider(Protocol):
    """A video API: submit a job, poll it, download what it made."""

    def submit(self, request: VideoRequest) -> VideoStatus: ...

    def poll(self, job_id: str) -> VideoStatus: ...

    def download(self, status: VideoStatus) -> contextlib.AbstractContextManager[Iterator[bytes]]:
        """The finished video's bytes, streamed."""
        ...


class OpenAIVideoProvider:
    """OpenAI's Videos API (`POST /videos`, `GET /videos/{id}`, `GET /videos/{id}/content`)
    through the `openai` SDK, at any provider that serves it (OpenAI, Azure OpenAI v1,
    LiteLLM's proxy)."""

    def __init__(self, ctx: NodeContext, endpoint: Endpoint) -> None:
        self.ctx = ctx
        self.endpoint = endpoint

    def submit(self, request: VideoRequest) -> VideoStatus:
        options: dict[str, Any] = {}
        if request.seconds is not None:
            options["seconds"] = str(request.seconds)
        if request.size is not None:
            options["size"] = request.size
        with provider_call(self.ctx, self.endpoint) as client:
            video = client.videos.create(model=request.model, prompt=request.prompt, **options)
        return _video_status(video)

    def poll(self, job_id: str) -> VideoStatus:
        with provider_call(self.ctx, self.endpoint) as client:
            return _video_status(client.videos.retrieve(job_id))

    @contextlib.contextmanager
    def download(self, status: VideoStatus) -> Iterator[Iterator[bytes]]:
        with (
            provider_call(self.ctx, self.endpoint) as client,
            client.videos.with_streaming_response.download_content(
                status.job_id, variant="video"
            ) as response,
        ):
            yield response.iter_bytes(CHUNK)


def _video_status(video: Any) -> VideoStatus:
    failure = getattr(video, "error", None)
    message = getattr(failure, "message", None) if failure is not None else None
    seconds = to_number(getattr(video, "seconds", None))
    progress = getattr(video, "progress", None)
    return VideoStatus(
        job_id=str(video.id),
        status=str(video.status),
        progress=int(progress) if isinstance(progress, int | float) else None,
        error=str(message) if message else None,
        seconds=None if math.isnan(seconds) or seconds <= 0 else seconds,
    )


def _video_endpoint(ctx: NodeContext, config: MediaConfig) -> Endpoint:
    llm = ctx.settings.llm
    name = (config.provider or "").strip() or llm.default_provider
    if llm.provider(name) is None:
        key = re.sub(r"[^A-Za-z0-9]", "_", name).upper()
        raise ctx.error(
            f"no video provider configured for '{name}' (set "
            f"FLOWMAESTRO_LLM__PROVIDERS__{key}__BASE_URL and __API_KEY or __API_KEY_ENV to an "
            "OpenAI-compatible videos API; see docs/providers.md)",
            ConnectorNotConfiguredError,
            details={"provider": name},
        )
    return resolve_endpoint(ctx, name, config.model or DEFAULT_MODELS["video"])


def _video_request(ctx: NodeContext, extras: Mapping[str, Any], model: str) -> VideoRequest:
    prompt = ctx.render_text(extras.get("prompt") or "")
    if not prompt.strip():
        raise ctx.error("prompt: a video needs a prompt", NodeConfigurationError)
    seconds = None
    if not _blank(extras.get("duration")):
        seconds = round(_number(ctx, extras["duration"], "duration", 1, 600))
    size = None
    if not _blank(extras.get("size")):
        size = ctx.render_text(extras["size"]).strip().lower()
        if not SIZE_PATTERN.match(size):
            raise ctx.error(
                f"size: {size!r} is not WIDTHxHEIGHT (1280x720)", NodeConfigurationError
            )
    elif not _blank(extras.get("aspectRatio")):
        ratio = ctx.render_text(extras["aspectRatio"]).strip()
        match = ASPECT_PATTERN.match(ratio)
        if match is None:
            raise ctx.error(f"aspectRatio: {ratio!r} is not W:H (16:9)", NodeConfigurationError)
        width, height = int(match.group(1)), int(match.group(2))
        divisor = math.gcd(width, height) or 1
        size = VIDEO_SIZES.get((width // divisor, height // divisor))
        if size is None:
            raise ctx.error(
                f"aspectRatio: the videos API makes 16:9 or 9:16 (and 7:4, 4:7), not {ratio}; "
                "or set size: WIDTHxHEIGHT",
                NodeConfigurationError,
            )
    return VideoRequest(model=model, prompt=prompt, seconds=seconds, size=size)


class PollingWaitpointStore(WaitpointStore, Protocol):
    """A waitpoint store a node can look its own waitpoints up in (store/waitpoints.py)."""

    def find(
        self, *, execution_id: str, node_id: str, iteration: str
    ) -> WaitpointRecord | None: ...


def poll_key(base: str, poll: int) -> str:
    """The waitpoint key of a node's `poll`th park: its iteration's own key first, then
    `<iteration>#poll<n>` (one waitpoint per poll: a waitpoint resumes once)."""
    return base if poll == 0 else f"{base}#poll{poll}"


def poll_delay(media: MediaAISettings, poll: int) -> float:
    """The wait before poll `poll + 1`: the first wait, times the factor per poll, capped."""
    delay = media.video_poll_initial_s * media.video_poll_factor ** min(poll, 64)
    return float(min(delay, media.video_poll_max_s))


def execute_video_generation(ctx: NodeContext) -> NodeResult:
    config = ctx.typed_config(MediaConfig)
    endpoint = _video_endpoint(ctx, config)
    provider: VideoProvider = OpenAIVideoProvider(ctx, endpoint)
    store = ctx.services.get("waitpoints")
    if (
        store is None
        or not callable(getattr(store, "find", None))
        or not ctx.execution_id
        or not ctx.run_id
    ):
        return _video_in_process(ctx, config, provider, endpoint)
    return _video_parked(ctx, config, provider, endpoint, store)


def _video_in_process(
    ctx: NodeContext, config: MediaConfig, provider: VideoProvider, endpoint: Endpoint
) -> NodeResult:
    """No platform to park on: poll here with backoff, for FLOWMAESTRO_MEDIA_AI__VIDEO_LOCAL_WAIT_S
    at most."""
    media = _media(ctx)
    status = provider.submit(_video_request(ctx, config.extras(), endpoint.model))
    budget = min(media.video_local_wait_s, media.video_deadline_s)
    deadline = time.monotonic() + budget
    poll = 0
    while not status.done:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise ctx.error(
                f"video job {status.job_id} still {status.status} after {budget:g}s: outside "
                "the platform a run polls only this long "
                "(FLOWMAESTRO_MEDIA_AI__VIDEO_LOCAL_WAIT_S); start the workflow through the API "
                "so the node parks while the video renders",
                details={"jobId": status.job_id},
            )
        time.sleep(min(poll_delay(media, poll), remaining))
        poll += 1
        status = provider.poll(status.job_id)
    return _video_done(ctx, provider, endpoint, status)


def _video_parked(
    ctx: NodeContext,
    config: MediaConfig,
    provider: VideoProvider,
    endpoint: Endpoint,
    store: PollingWaitpointStore,
) -> NodeResult:
    """Submit and park; on each re-execution poll once, then finish or park again."""
    base = iteration_key(ctx)
    chain: list[WaitpointRecord] = []
    while len(chain) < MAX_POLLS:
        found = store.find(
            execution_id=str(ctx.execution_id),
            node_id=ctx.node_id,
            iteration=poll_key(base, len(chain)),
        )
        if found is None:
            break
        chain.append(found)
    if not chain:
        status = provider.submit(_video_request(ctx, config.extras(), endpoint.model))
        if status.done:
            return _video_done(ctx, provider, endpoint, status)
        job = {
            "jobId": status.job_id,
            "provider": endpoint.provider_name,
            "model": endpoint.model,
            "submittedAt": datetime.now(UTC).isoformat(),
        }
        ctx.log.info(f"{ctx.node_id}: video job {status.job_id} submitted ({status.status})")
        return _park_poll(ctx, store, base, 0, job, status)
    last = chain[-1]
    job = dict((chain[0].spec or {}).get("video") or {})
    if not job.get("jobId"):
        raise ctx.error("the node's first waitpoint holds no video job id (not a video poll)")
    if last.status == "pending":  # re-executed before its poll was due: keep waiting
        return NodeResult(None, parked=Park(last.kind, last.id, "for the video job", last.due_at))
    if last.status not in RESOLVED:
        raise ctx.error(f"the wait for video job {job['jobId']} was {last.status}")
    status = provider.poll(str(job["jobId"]))
    if status.done:
        return _video_done(ctx, provider, endpoint, status)
    try:
        submitted = datetime.fromisoformat(str(job.get("submittedAt")))
    except ValueError:
        submitted = chain[0].due_at or datetime.now(UTC)
    if submitted.tzinfo is None:
        submitted = submitted.replace(tzinfo=UTC)
    elapsed = (datetime.now(UTC) - submitted).total_seconds()
    deadline = _media(ctx).video_deadline_s
    if elapsed > deadline:
        raise ctx.error(
            f"video job {status.job_id} still {status.status} {elapsed:.0f}s after it was "
            f"submitted (FLOWMAESTRO_MEDIA_AI__VIDEO_DEADLINE_S={deadline:g})",
            details={"jobId": status.job_id, "polls": len(chain)},
        )
    return _park_poll(ctx, store, base, len(chain), job, status)


def _park_poll(
    ctx: NodeContext,
    store: WaitpointStore,
    base: str,
    poll: int,
    job: Mapping[str, Any],
    status: VideoStatus,
) -> NodeResult:
    delay = poll_delay(_media(ctx), poll)
    due = datetime.now(UTC) + timedelta(seconds=delay)
    spec = {"video": {**job, "poll": poll}, "label": ctx.label, "reason": "video job polling"}
    record = store.park(
        execution_id=str(ctx.execution_id),
        node_id=ctx.node_id,
        iteration=poll_key(base, poll),
        step_key=step_key(ctx),
        run_id=str(ctx.run_id),
        kind="datetime",
        spec=spec,
        due_at=due,
    )
    progress = f", {status.progress}%" if status.progress is not None else ""
    detail = f"for video job {status.job_id} ({status.status}{progress}; next poll in {delay:g}s)"
    return NodeResult(None, parked=Park(record.kind, record.id, detail, record.due_at or due))


def _video_done(
    ctx: NodeContext, provider: VideoProvider, endpoint: Endpoint, status: VideoStatus
) -> NodeResult:
    if status.status != "completed":
        why = status.error or "no reason given"
        raise ctx.error(
            f"video job {status.job_id} {status.status}: {why}",
            details={"jobId": status.job_id, "provider": endpoint.provider_name},
        )
    limit = _media(ctx).max_video_mb * MB
    setting = "FLOWMAESTRO_MEDIA_AI__MAX_VIDEO_MB"
    what = f"the video of job {status.job_id}"
    if status.url:
        with _fetch(ctx, status.url, "video url", limit, setting) as (_, chunks):
            ref = store_output(ctx, "video.mp4", chunks, "video/mp4")
    else:
        with provider.download(status) as chunks:
            ref = store_output(
                ctx, "video.mp4", _capped(ctx, chunks, limit, what, setting), "video/mp4"
            )
    ctx.log.info(f"{ctx.node_id}: video job {status.job_id} stored ({ref.size} bytes)")
    output = {
        "file": ref.to_value(),
        "jobId": status.job_id,
        "status": status.status,
        "durationSeconds": status.seconds,
        "model": endpoint.model,
        "provider": endpoint.provider_name,
    }
    return _output(ctx, output)


# -- deploy-time checks --------------------------------------------------------------------------


def _literal(value: Any) -> bool:
    """A value known before the run (not a template, not empty)."""
    return not _blank(value) and not _is_template(value)


def _missing(node: "NodeSpec", names: tuple[str, ...], message: str) -> Iterator[Problem]:
    extras = node.config.extras()
    name, value = _pick(extras, names)
    if _blank(value):
        yield error("missing_field", f"{name}: {message}", node_id=node.id, field=name)


def _one_of(
    node: "NodeSpec", names: tuple[str, ...], allowed: Iterable[str], what: str
) -> Iterator[Problem]:
    extras = node.config.extras()
    name, value = _pick(extras, names)
    allowed = tuple(allowed)
    if _literal(value) and str(value).strip().lower() not in allowed:
        yield error(
            "invalid_config",
            f"{name}: {value!r} is not {what} ({', '.join(allowed)})",
            node_id=node.id,
            field=name,
        )


def _in_range(
    node: "NodeSpec", name: str, low: float, high: float, *, whole: bool = False
) -> Iterator[Problem]:
    value = node.config.extras().get(name)
    if not _literal(value):
        return
    number = to_number(value)
    wrong = isinstance(value, bool) or math.isnan(number) or not low <= number <= high
    if wrong or (whole and not number.is_integer()):
        kind = "a whole number" if whole else "a number"
        yield error(
            "invalid_config",
            f"{name}: must be {kind} from {low:g} to {high:g} (got {value!r})",
            node_id=node.id,
            field=name,
        )


def _pattern(node: "NodeSpec", name: str, pattern: re.Pattern[str], what: str) -> Iterator[Problem]:
    value = node.config.extras().get(name)
    if _literal(value) and (not isinstance(value, str) or not pattern.match(value.strip().lower())):
        yield error(
            "invalid_config", f"{name}: {value!r} is not {what}", node_id=node.id, field=name
        )


def check_audio_transcription(node: "NodeSpec") -> Iterator[Problem]:
    yield from _missing(
        node, AUDIO_FIELDS, "no audio file (a file from audioInput, a path or a URL)"
    )
    yield from _one_of(node, ("task",), TASKS, "a transcription task")
    yield from _one_of(node, TRANSCRIPT_FORMAT_FIELDS, TRANSCRIPT_FORMATS, "a transcript format")
    yield from _in_range(node, "temperature", 0.0, 1.0)


def check_speech(node: "NodeSpec") -> Iterator[Problem]:
    yield from _missing(node, TEXT_FIELDS, "no text to speak")
    yield from _in_range(node, "speed", *SPEED_RANGE)
    extras = node.config.extras()
    for name in SPEECH_FORMAT_FIELDS:
        value = extras.get(name)
        if not _literal(value):
            continue
        text = str(value).strip().lower()
        if text in DELIVERY_FORMATS:
            yield warning(
                "stored_as_file",
                f"{name}: {value!r}: the audio is stored as a file and the output holds its "
                "reference ({{node.file.path}}), never the bytes",
                node_id=node.id,
                field=name,
            )
        elif text not in AUDIO_FORMATS:
            yield error(
                "invalid_config",
                f"{name}: {value!r} is not an audio format ({', '.join(AUDIO_FORMATS)})",
                node_id=node.id,
                field=name,
            )


def check_audio(node: "NodeSpec") -> Iterator[Problem]:
    operation = getattr(node.config, "operation", None)
    key = _key(operation)
    if key in TRANSCRIBE_OPERATIONS:
        yield from check_audio_transcription(node)
    elif not key or key in SPEECH_OPERATIONS or _is_template(operation):
        yield from check_speech(node)
    else:
        yield error(
            "invalid_config",
            f"operation: {operation!r} is neither text to speech (tts) nor transcription "
            "(transcribe, translate)",
            node_id=node.id,
            field="operation",
        )


def check_image_generation(node: "NodeSpec") -> Iterator[Problem]:
    config = node.config
    if not isinstance(config, MediaConfig) or _is_template(config.operation):
        return
    operation = _image_operation(config)
    if operation is None:
        return  # served by a connector if the deployment has one (connector_problems says)
    if operation != "variation":
        yield from _missing(node, ("prompt",), f"an image {operation} needs a prompt")
    if operation != "generate":
        yield from _missing(node, SOURCE_IMAGE_FIELDS, f"an image {operation} needs a source image")
    yield from _in_range(node, "n", *IMAGE_COUNT_RANGE, whole=True)
    size = config.extras().get("size")
    if not (isinstance(size, str) and size.strip().lower() == "auto"):
        yield from _pattern(node, "size", SIZE_PATTERN, "WIDTHxHEIGHT (1024x1024) or auto")
    yield from _one_of(
        node,
        ("outputFormat",),
        (*IMAGE_FILE_FORMATS, "jpg", *DELIVERY_FORMATS),
        "an image format",
    )


def check_video_generation(node: "NodeSpec") -> Iterator[Problem]:
    yield from _missing(node, ("prompt",), "a video needs a prompt")
    yield from _in_range(node, "duration", 1, 600)
    yield from _pattern(node, "aspectRatio", ASPECT_PATTERN, "W:H (16:9)")
    yield from _pattern(node, "size", SIZE_PATTERN, "WIDTHxHEIGHT (1280x720)")


EXECUTORS: Mapping[str, Executor] = {
    "audioTranscription": execute_audio_transcription,
    "audioOutput": execute_speech,
    "audio": execute_audio,
    "imageGeneration": execute_image_generation,
    "videoGeneration": execute_video_generation,
}

CONFIG_CHECKS: Mapping[str, ConfigCheck] = {
    "audioTranscription": check_audio_transcription,
    "audioOutput": check_speech,
    "audio": check_audio,
    "imageGeneration": check_image_generation,
    "videoGeneration": check_video_generation,
}

__all__ = [
    "CONFIG_CHECKS",
    "EXECUTORS",
    "OpenAIVideoProvider",
    "VideoProvider",
    "VideoRequest",
    "VideoStatus",
    "poll_delay",
    "poll_key",
]
