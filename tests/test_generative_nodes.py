"""audioTranscription, audioOutput / audio, imageGeneration and videoGeneration through the real
`openai` SDK against a local fake OpenAI-compatible media server, with a real file store; the
video node's park → due → poll loop on the real waitpoint store (a migrated SQLite database)."""

import hashlib
import io
import wave
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from sqlalchemy import select, update

from flowmaestro_dagster.compile.validation import validate
from flowmaestro_dagster.control.executions import start_execution
from flowmaestro_dagster.control.requests import ExecutionCreate
from flowmaestro_dagster.control.waitpoints import resolve_due
from flowmaestro_dagster.engines.jobs import build_job
from flowmaestro_dagster.errors import (
    ConnectorNotConfiguredError,
    NodeConfigurationError,
    NodeExecutionError,
    TransientNodeError,
)
from flowmaestro_dagster.nodes import CONFIG_CHECKS, NodeContext, NodeResult, get_executor
from flowmaestro_dagster.nodes.filestore import FileRef, FileStore, FileTooLargeError
from flowmaestro_dagster.nodes.generative import poll_delay, poll_key
from flowmaestro_dagster.settings import HttpSettings, MediaAISettings, Settings
from flowmaestro_dagster.store.db import get_engine, session_scope
from flowmaestro_dagster.store.models import Waitpoint, utcnow
from flowmaestro_dagster.store.waitpoints import DatabaseWaitpointStore
from flowmaestro_dagster.tags import WORKFLOW_ID_TAG
from flowmaestro_dagster.testing import run_workflow
from flowmaestro_dagster.testing.fake_media import API_KEY, TINY_MP4, FakeMediaServer
from tests.builders import chain, node, node_context
from tests.conftest import corpus_files, corpus_id
from tests.deploy import deploy, fresh_user

MB = 1024 * 1024


@pytest.fixture
def media() -> Iterator[FakeMediaServer]:
    with FakeMediaServer() as server:
        yield server


@pytest.fixture
def files(tmp_path: Path) -> FileStore:
    return FileStore(str(tmp_path / "files"), max_bytes=50 * MB)


def settings_for(media: FakeMediaServer, *names: str, **values: Any) -> Settings:
    """The fake server as providers `names`, with media settings `values` (fast video polls)."""
    media_ai = {"video_poll_initial_s": 0.01, "video_poll_max_s": 0.04, **values}
    http = {"allow_loopback": bool(media_ai.pop("allow_loopback", False))}
    return media.settings(*names).model_copy(
        update={"media_ai": MediaAISettings(**media_ai), "http": HttpSettings(**http)}
    )


def context(
    node_type: str,
    raw: dict[str, Any],
    settings: Settings,
    files: FileStore,
    inputs: dict[str, Any] | None = None,
    *,
    services: dict[str, Any] | None = None,
    run_id: str = "run-1",
    execution_id: str = "exec-1",
) -> NodeContext:
    return node_context(
        node_type,
        raw,
        {"settings": settings, "files": files, **(services or {})},
        inputs=inputs,
        run_id=run_id,
        execution_id=execution_id,
        run_tags={WORKFLOW_ID_TAG: "wf-1"},
    )


def run(
    node_type: str,
    raw: dict[str, Any],
    settings: Settings,
    files: FileStore,
    inputs: dict[str, Any] | None = None,
    **kw: Any,
) -> NodeResult:
    return get_executor(node_type)(context(node_type, raw, settings, files, inputs, **kw))


def stored_bytes(files: FileStore, value: dict[str, Any]) -> bytes:
    ref = FileRef.from_value(value)
    assert ref is not None
    return files.area("wf-1").read_bytes(ref.path)


def wav_bytes(seconds: float = 0.5, rate: int = 8000) -> bytes:
    """A real WAV file: `seconds` of a square wave."""
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        frames = bytearray()
        for i in range(int(seconds * rate)):
            frames += (8000 if (i // 20) % 2 else -8000).to_bytes(2, "little", signed=True)
        out.writeframes(bytes(frames))
    return buffer.getvalue()


def png_bytes(width: int, height: int, color: str = "red") -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), color).save(buffer, format="PNG")
    return buffer.getvalue()


def upload(files: FileStore, path: str, data: bytes) -> dict[str, Any]:
    """A file in the workflow's area (what audioInput / POST /files made), as its reference."""
    return files.area("wf-1").write(path, data).to_value()


# -- audioTranscription --------------------------------------------------------------------------


def test_transcription_uploads_the_stored_file_with_the_nodes_fields(
    media: FakeMediaServer, files: FileStore
) -> None:
    audio = wav_bytes()
    ref = upload(files, "/uploads/voice note.wav", audio)
    raw = {
        "provider": "openai",
        "model": "whisper-1",
        "audioFile": "{{voiceMessage}}",
        "language": "en",
        "prompt": "Names: {{who}}",
        "outputVariable": "transcript",
    }
    result = run(
        "audioTranscription", raw, settings_for(media), files, {"voiceMessage": ref, "who": "Ada"}
    )
    assert result.output == {
        "transcript": {
            "text": "hello from the fake transcriber",
            "task": "transcribe",
            "format": "json",
            "model": "whisper-1",
            "provider": "openai",
        }
    }
    [request] = media.requests
    assert request.method == "POST" and request.route == "/audio/transcriptions"
    assert request.headers["authorization"] == f"Bearer {API_KEY}"
    assert request.fields == {
        "model": "whisper-1",
        "language": "en",
        "prompt": "Names: Ada",
        "response_format": "json",
        "file.size": str(len(audio)),
        "file.sha256": hashlib.sha256(audio).hexdigest(),
    }
    [sent] = request.files
    assert sent.field == "file" and sent.filename == "voice note.wav"
    assert sent.data == audio and sent.content_type == ref["mediaType"]


def test_verbose_json_gives_language_duration_and_segments(
    media: FakeMediaServer, files: FileStore
) -> None:
    ref = upload(files, "/uploads/a.wav", wav_bytes())
    raw = {
        "audioSource": ref,
        "model": "whisper-1",
        "task": "transcribe",
        "outputFormat": "verbose_json",
    }
    output = run("audioTranscription", raw, settings_for(media), files).output
    assert output["language"] == "english" and output["duration"] == 3.5
    assert output["segments"] == [
        {"id": 0, "start": 0.0, "end": 3.5, "text": "hello from the fake transcriber"}
    ]
    assert media.requests[0].fields["response_format"] == "verbose_json"


def test_translate_task_posts_to_translations_without_a_language(
    media: FakeMediaServer, files: FileStore
) -> None:
    upload(files, "/uploads/a.wav", wav_bytes())
    raw = {
        "audioFile": "/uploads/a.wav",
        "task": "translate",
        "language": "fr",
        "outputFormat": "text",
    }
    output = run("audioTranscription", raw, settings_for(media), files).output
    assert output["text"] == "hello from the fake transcriber" and output["task"] == "translate"
    [request] = media.requests
    assert request.route == "/audio/translations"
    assert "language" not in request.fields and request.fields["model"] == "whisper-1"
    assert request.files[0].filename == "a.wav"


def test_a_node_output_holding_one_file_is_its_file(
    media: FakeMediaServer, files: FileStore
) -> None:
    """`audioFile: {{recording}}` where recording is audioInput's whole output."""
    ref = upload(files, "/uploads/call.wav", wav_bytes())
    state_input = {"recording": {"file": ref, "format": "wav", "durationSeconds": 0.5}}
    run(
        "audioTranscription",
        {"audioFile": "{{recording}}"},
        settings_for(media),
        files,
        state_input,
    )
    assert media.requests[0].files[0].filename == "call.wav"


def test_a_url_source_is_fetched_through_the_guard(
    media: FakeMediaServer, files: FileStore
) -> None:
    audio = wav_bytes()
    media.files["clip.wav"] = audio
    url = f"http://127.0.0.1:{media.port}/files/clip.wav?sig=secret"
    raw = {"audioSource": "${input.audioData.url}"}
    inputs = {"audioData": {"url": url}}
    with pytest.raises(NodeConfigurationError, match=r"refused") as info:
        run("audioTranscription", raw, settings_for(media), files, inputs)
    assert info.value.reason.startswith("audioSource: ")
    assert media.requests_to("/audio/transcriptions") == []
    run("audioTranscription", raw, settings_for(media, allow_loopback=True), files, inputs)
    [request] = media.requests_to("/audio/transcriptions")
    assert request.files[0].data == audio and request.files[0].filename == "clip.wav"


def test_audio_over_the_transcription_cap_is_refused_before_any_upload(
    media: FakeMediaServer, files: FileStore
) -> None:
    upload(files, "/uploads/long.wav", wav_bytes(seconds=70))  # ~1.1 MB
    settings = settings_for(media, max_transcription_mb=1)
    with pytest.raises(FileTooLargeError, match=r"MAX_TRANSCRIPTION_MB") as info:
        run("audioTranscription", {"audioFile": "/uploads/long.wav"}, settings, files)
    assert info.value.reason.startswith("audioFile: ") and info.value.node_id == "n"
    assert media.requests == []


def test_a_missing_file_or_no_file_field_is_an_error_naming_the_field(
    media: FakeMediaServer, files: FileStore
) -> None:
    with pytest.raises(NodeExecutionError, match=r"audioFile: no file '/uploads/none.wav'"):
        run("audioTranscription", {"audioFile": "/uploads/none.wav"}, settings_for(media), files)
    with pytest.raises(NodeConfigurationError, match=r"audioFile: no audio file given"):
        run("audioTranscription", {"model": "whisper-1"}, settings_for(media), files)
    with pytest.raises(NodeConfigurationError, match=r"outputFormat: 'docx' is not one of"):
        raw = {"audioFile": "/x.wav", "outputFormat": "{{f}}"}
        run("audioTranscription", raw, settings_for(media), files, {"f": "docx"})
    assert media.requests == []


@pytest.mark.parametrize(
    ("status", "kind", "retryable"),
    [
        (400, NodeExecutionError, False),
        (429, TransientNodeError, True),
        (503, TransientNodeError, True),
    ],
)
def test_provider_errors_map_to_permanent_or_transient(
    media: FakeMediaServer, files: FileStore, status: int, kind: type[Exception], retryable: bool
) -> None:
    upload(files, "/uploads/a.wav", wav_bytes())
    media.fail("/audio/transcriptions", status, "Invalid file format.")
    with pytest.raises(kind) as info:
        run("audioTranscription", {"audioFile": "/uploads/a.wav"}, settings_for(media), files)
    assert isinstance(info.value, NodeExecutionError)
    assert info.value.retryable is retryable
    assert f"answered HTTP {status}: Invalid file format." in str(info.value)


# -- audioOutput / audio: text to speech ---------------------------------------------------------


def test_speech_streams_the_providers_audio_into_the_file_store(
    media: FakeMediaServer, files: FileStore
) -> None:
    raw = {
        "label": "Generate Audio Reply",
        "provider": "openai",
        "model": "tts-1",
        "input": "Hello {{name}}",
        "voice": "nova",
        "speed": 1.25,
        "outputVariable": "audioReply",
    }
    output = run("audioOutput", raw, settings_for(media), files, {"name": "Ada"}).output[
        "audioReply"
    ]
    [request] = media.requests
    assert request.route == "/audio/speech"
    assert request.json == {
        "model": "tts-1",
        "input": "Hello Ada",
        "voice": "nova",
        "response_format": "mp3",
        "speed": 1.25,
    }
    audio = media.speech_audio
    assert output["file"] == {
        "type": "file",
        "name": "speech.mp3",
        "filename": "speech.mp3",
        "mediaType": "audio/mpeg",
        "size": len(audio),
        "sha256": hashlib.sha256(audio).hexdigest(),
        "path": "/executions/exec-1/n/speech.mp3",
        "uri": output["file"]["uri"],
    }
    assert stored_bytes(files, output["file"]) == audio
    assert {k: v for k, v in output.items() if k != "file"} == {
        "format": "mp3",
        "voice": "nova",
        "model": "tts-1",
        "provider": "openai",
        "characters": len("Hello Ada"),
    }


def test_the_audio_node_speaks_its_text_input_and_ignores_elevenlabs_fields(
    media: FakeMediaServer, files: FileStore
) -> None:
    raw = {
        "provider": "elevenlabs",
        "model": "eleven_monolingual_v1",
        "operation": "tts",
        "textInput": "${script.scriptText}",
        "voice": "21m00Tcm4TlvDq8ikWAM",
        "stability": 0.5,
        "similarityBoost": 0.75,
        "returnFormat": "url",
        "outputVariable": "narrationAudio",
    }
    settings = settings_for(media, "elevenlabs")
    output = run(
        "audio", raw, settings, files, {"script": {"scriptText": "Once upon a time"}}
    ).output
    assert output["narrationAudio"]["provider"] == "elevenlabs"
    assert media.requests[0].json == {
        "model": "eleven_monolingual_v1",
        "input": "Once upon a time",
        "voice": "21m00Tcm4TlvDq8ikWAM",
        "response_format": "mp3",
    }


def test_a_speech_format_names_the_file_and_its_media_type(
    media: FakeMediaServer, files: FileStore
) -> None:
    media.speech_audio = wav_bytes()
    raw = {"text": "hi", "format": "wav"}
    output = run("audioOutput", raw, settings_for(media), files).output
    assert output["file"]["name"] == "speech.wav" and output["file"]["mediaType"] == "audio/wav"
    assert media.requests[0].json["response_format"] == "wav"
    with wave.open(io.BytesIO(stored_bytes(files, output["file"]))) as stored:
        assert stored.getframerate() == 8000


def test_speech_refuses_long_text_and_a_rendered_speed_out_of_range(
    media: FakeMediaServer, files: FileStore
) -> None:
    settings = settings_for(media, max_speech_chars=10)
    with pytest.raises(NodeConfigurationError, match=r"input: 11 characters.*MAX_SPEECH_CHARS"):
        run("audioOutput", {"input": "{{t}}"}, settings, files, {"t": "x" * 11})
    with pytest.raises(NodeConfigurationError, match=r"speed: must be a number from 0.25 to 4"):
        run("audioOutput", {"input": "hi", "speed": "{{s}}"}, settings, files, {"s": 9})
    with pytest.raises(NodeConfigurationError, match=r"input: no text to speak"):
        run("audioOutput", {"input": "{{t}}"}, settings, files, {"t": " "})
    assert media.requests == []


def test_the_audio_node_transcribes_when_its_operation_says_so(
    media: FakeMediaServer, files: FileStore
) -> None:
    upload(files, "/uploads/a.wav", wav_bytes())
    raw = {"operation": "transcribe", "audioFile": "/uploads/a.wav", "outputVariable": "t"}
    output = run("audio", raw, settings_for(media), files).output
    assert output["t"]["text"] == "hello from the fake transcriber"
    assert media.requests[0].route == "/audio/transcriptions"


def test_a_speech_provider_error_is_permanent_with_its_message(
    media: FakeMediaServer, files: FileStore
) -> None:
    media.fail("/audio/speech", 400, "Voice 'bob' is not supported.")
    with pytest.raises(NodeExecutionError, match=r"Voice 'bob' is not supported") as info:
        run("audioOutput", {"input": "hi", "voice": "bob"}, settings_for(media), files)
    assert not info.value.retryable
    assert files.area("wf-1").list() == []


# -- imageGeneration -----------------------------------------------------------------------------


def test_image_generation_stores_each_image_and_sends_the_nodes_fields(
    media: FakeMediaServer, files: FileStore
) -> None:
    media.images = [png_bytes(64, 32), png_bytes(16, 16, "blue")]
    raw = {
        "provider": "openai",
        "model": "dall-e-3",
        "prompt": "${input.promptData.prompt}",
        "size": "1024x1024",
        "quality": "hd",
        "style": "vivid",
        "n": 2,
        "outputFormat": "url",
        "outputVariable": "generatedImage",
    }
    inputs = {"promptData": {"prompt": "a lighthouse at dawn"}}
    output = run("imageGeneration", raw, settings_for(media), files, inputs).output[
        "generatedImage"
    ]
    [request] = media.requests
    assert request.route == "/images/generations"
    assert request.json == {
        "model": "dall-e-3",
        "prompt": "a lighthouse at dawn",
        "n": 2,
        "size": "1024x1024",
        "quality": "hd",
        "style": "vivid",
        "response_format": "b64_json",
    }
    assert [i["file"]["name"] for i in output["images"]] == ["image-1.png", "image-2.png"]
    assert output["file"] == output["images"][0]["file"]
    assert output["images"][0]["revisedPrompt"] == "a revised prompt"
    sizes = [Image.open(io.BytesIO(stored_bytes(files, i["file"]))).size for i in output["images"]]
    assert sizes == [(64, 32), (16, 16)]
    assert output["images"][1]["file"]["sha256"] == hashlib.sha256(media.images[1]).hexdigest()
    assert (output["model"], output["size"], output["operation"]) == (
        "dall-e-3",
        "1024x1024",
        "generate",
    )


def test_gpt_image_models_get_no_response_format_and_may_name_a_file_format(
    media: FakeMediaServer, files: FileStore
) -> None:
    raw = {"model": "gpt-image-1", "prompt": "a cat", "outputFormat": "webp", "quality": "high"}
    run("imageGeneration", raw, settings_for(media), files)
    assert media.requests[0].json == {
        "model": "gpt-image-1",
        "prompt": "a cat",
        "quality": "high",
        "output_format": "webp",
    }


def test_image_urls_are_downloaded_through_the_guard(
    media: FakeMediaServer, files: FileStore
) -> None:
    media.image_as_url = True
    media.images = [png_bytes(20, 10)]
    raw = {"prompt": "a dog", "outputVariable": "img"}
    with pytest.raises(
        NodeConfigurationError, match=r"image 1 url: request to '127\.0\.0\.1' refused"
    ):
        run("imageGeneration", raw, settings_for(media), files)
    output = run("imageGeneration", raw, settings_for(media, allow_loopback=True), files).output
    data = stored_bytes(files, output["img"]["file"])
    assert data == media.images[0] and Image.open(io.BytesIO(data)).size == (20, 10)


def test_a_generated_image_over_the_cap_is_refused(
    media: FakeMediaServer, files: FileStore
) -> None:
    media.images = [b"\x89PNG\r\n\x1a\n" + b"\x00" * (2 * MB)]
    with pytest.raises(FileTooLargeError, match=r"image 1 is larger than 1 MB"):
        run("imageGeneration", {"prompt": "x"}, settings_for(media, max_image_mb=1), files)
    media.image_as_url = True
    settings = settings_for(media, max_image_mb=1, allow_loopback=True)
    with pytest.raises(FileTooLargeError, match=r"image 1 url: the file at .* is larger than 1 MB"):
        run("imageGeneration", {"prompt": "x"}, settings, files)
    assert files.area("wf-1").list() == []


def test_an_image_edit_uploads_the_source_image_as_multipart(
    media: FakeMediaServer, files: FileStore
) -> None:
    source = png_bytes(32, 32, "green")
    ref = upload(files, "/uploads/photo.png", source)
    raw = {
        "operation": "edit",
        "prompt": "add a hat",
        "sourceImage": "{{photo}}",
        "size": "256x256",
    }
    output = run("imageGeneration", raw, settings_for(media), files, {"photo": ref}).output
    [request] = media.requests
    assert request.route == "/images/edits"
    assert {k: v for k, v in request.fields.items() if not k.startswith("image.")} == {
        "model": "dall-e-2",
        "prompt": "add a hat",
        "size": "256x256",
        "response_format": "b64_json",
    }
    [image] = request.files
    assert (image.field, image.filename, image.content_type) == ("image", "photo.png", "image/png")
    assert image.data == source
    assert output["operation"] == "edit" and output["file"]["mediaType"] == "image/png"


def test_operations_the_api_lacks_go_to_a_connector(
    media: FakeMediaServer, files: FileStore
) -> None:
    raw = {
        "provider": "stabilityai",
        "operation": "upscale",
        "sourceImage": "x.png",
        "scaleFactor": 4,
    }
    with pytest.raises(
        ConnectorNotConfiguredError, match=r"imageGeneration' \(operation upscale\)"
    ):
        run("imageGeneration", raw, settings_for(media), files)
    assert media.requests == []


def test_a_rendered_size_or_count_that_cannot_work_is_an_error_naming_it(
    media: FakeMediaServer, files: FileStore
) -> None:
    settings = settings_for(media)
    with pytest.raises(NodeConfigurationError, match=r"size: 'huge' is not WIDTHxHEIGHT"):
        run("imageGeneration", {"prompt": "x", "size": "{{s}}"}, settings, files, {"s": "huge"})
    with pytest.raises(NodeConfigurationError, match=r"n: must be a number from 1 to 10"):
        run("imageGeneration", {"prompt": "x", "n": "{{n}}"}, settings, files, {"n": 11})
    with pytest.raises(NodeConfigurationError, match=r"prompt: an image generate needs a prompt"):
        run("imageGeneration", {"prompt": "{{p}}"}, settings, files, {"p": ""})
    assert media.requests == []


# -- videoGeneration -----------------------------------------------------------------------------

VIDEO_NODE = {
    "provider": "openai",
    "model": "sora-2",
    "prompt": "${input.videoPrompt.prompt}",
    "duration": 4,
    "aspectRatio": "16:9",
    "outputFormat": "url",
    "outputVariable": "videoResult",
}
VIDEO_INPUTS = {"videoPrompt": {"prompt": "waves on a beach"}}


def test_no_video_provider_is_a_clear_not_configured_error(
    media: FakeMediaServer, files: FileStore
) -> None:
    raw = {**VIDEO_NODE, "provider": "runway"}
    with pytest.raises(ConnectorNotConfiguredError) as info:
        run("videoGeneration", raw, settings_for(media), files, VIDEO_INPUTS)
    assert "no video provider configured for 'runway'" in str(info.value)
    assert "FLOWMAESTRO_LLM__PROVIDERS__RUNWAY__BASE_URL" in str(info.value)
    assert media.requests == []


def test_without_the_platform_the_node_polls_in_process(
    media: FakeMediaServer, files: FileStore
) -> None:
    media.video_statuses.extend(["in_progress", "in_progress", "completed"])
    output = run("videoGeneration", VIDEO_NODE, settings_for(media), files, VIDEO_INPUTS).output
    video = output["videoResult"]
    assert stored_bytes(files, video["file"]) == TINY_MP4
    assert video["file"]["mediaType"] == "video/mp4" and video["file"]["name"] == "video.mp4"
    assert {k: v for k, v in video.items() if k != "file"} == {
        "jobId": "video_1",
        "status": "completed",
        "durationSeconds": 8.0,
        "model": "sora-2",
        "provider": "openai",
    }
    routes = [(r.method, r.route) for r in media.requests]
    assert routes == [
        ("POST", "/videos"),
        ("GET", "/videos/video_1"),
        ("GET", "/videos/video_1"),
        ("GET", "/videos/video_1"),
        ("GET", "/videos/video_1/content"),
    ]
    assert media.requests[0].fields == {
        "model": "sora-2",
        "prompt": "waves on a beach",
        "seconds": "4",
        "size": "1280x720",
    }
    assert media.requests[-1].path.endswith("?variant=video")


def test_in_process_polling_gives_up_after_its_short_cap(
    media: FakeMediaServer, files: FileStore
) -> None:
    media.video_statuses.extend(["in_progress"] * 1000)
    settings = settings_for(media, video_local_wait_s=0.1)
    with pytest.raises(
        NodeExecutionError, match=r"still in_progress after 0.1s.*VIDEO_LOCAL_WAIT_S"
    ):
        run("videoGeneration", VIDEO_NODE, settings, files, VIDEO_INPUTS)


def test_a_failed_video_job_fails_the_node_with_the_providers_reason(
    media: FakeMediaServer, files: FileStore
) -> None:
    media.video_statuses.append("failed")
    media.video_error = "The prompt was flagged."
    with pytest.raises(
        NodeExecutionError, match=r"video job video_1 failed: The prompt was flagged."
    ):
        run("videoGeneration", VIDEO_NODE, settings_for(media), files, VIDEO_INPUTS)


def test_an_aspect_ratio_the_api_cannot_make_is_an_error_naming_it(
    media: FakeMediaServer, files: FileStore
) -> None:
    raw = {**VIDEO_NODE, "aspectRatio": "1:1"}
    with pytest.raises(NodeConfigurationError, match=r"aspectRatio: the videos API makes 16:9"):
        run("videoGeneration", raw, settings_for(media), files, VIDEO_INPUTS)
    assert media.requests == []


def test_poll_delays_back_off_to_the_maximum() -> None:
    media = MediaAISettings(video_poll_initial_s=5, video_poll_factor=2, video_poll_max_s=60)
    assert [poll_delay(media, n) for n in range(6)] == [5, 10, 20, 40, 60, 60]
    assert [poll_key("", 0), poll_key("", 2), poll_key("1.0", 1)] == ["", "#poll2", "1.0#poll1"]


@pytest.fixture
def execution(platform_db: str) -> str:
    """A committed execution of a workflow with a video node (waitpoints belong to one)."""
    with session_scope(get_engine(platform_db)) as session:
        user = fresh_user(session)
        workflow_id = deploy(
            session,
            user,
            chain(
                node("in", "input", inputName="videoPrompt"),
                node("n", "videoGeneration", **VIDEO_NODE),
            ),
        )
        session.commit()
        created, _ = start_execution(
            session,
            user=user,
            workflow_id=workflow_id,
            body=ExecutionCreate(inputs=VIDEO_INPUTS),
            idempotency_key=None,
            default_ttl_seconds=3600,
            shards=1,
        )
        return created.id


def waitpoints_of(database_url: str, execution_id: str) -> list[Waitpoint]:
    with session_scope(get_engine(database_url)) as session:
        rows = session.scalars(
            select(Waitpoint)
            .where(Waitpoint.execution_id == execution_id)
            .order_by(Waitpoint.created_at)
        ).all()
        session.expunge_all()
        return list(rows)


def due_and_resumed(database_url: str) -> None:
    """What the platform does between two polls: the sensor resolves the due waitpoint and the
    resume re-executes the node in a new run (the waitpoint ends `resumed`)."""
    with session_scope(get_engine(database_url)) as session:
        assert resolve_due(session, now=utcnow() + timedelta(hours=1)) == 1
    with session_scope(get_engine(database_url)) as session:
        session.execute(
            update(Waitpoint).where(Waitpoint.status == "resolved").values(status="resumed")
        )


def test_a_video_job_parks_between_polls_on_the_waitpoint_store(
    media: FakeMediaServer, files: FileStore, platform_db: str, execution: str
) -> None:
    media.video_statuses.extend(["in_progress", "in_progress", "completed"])
    store = DatabaseWaitpointStore(platform_db, sleep_threshold_seconds=0)
    settings = settings_for(media, video_poll_initial_s=5, video_poll_max_s=60)

    def execute(run_id: str) -> NodeResult:
        return run(
            "videoGeneration",
            VIDEO_NODE,
            settings,
            files,
            VIDEO_INPUTS,
            services={"waitpoints": store},
            run_id=run_id,
            execution_id=execution,
        )

    before = datetime.now(UTC)
    first = execute("run-1")
    assert first.output is None and first.parked is not None
    assert first.parked.kind == "datetime" and "video_1" in first.parked.detail
    assert [(r.method, r.route) for r in media.requests] == [("POST", "/videos")]
    [row] = waitpoints_of(platform_db, execution)
    assert (row.iteration, row.run_id, row.status) == ("", "run-1", "pending")
    assert row.spec["video"]["jobId"] == "video_1" and row.spec["video"]["poll"] == 0
    assert row.due_at is not None
    wait = row.due_at.replace(tzinfo=UTC) - before
    assert timedelta(seconds=4) < wait < timedelta(seconds=10)

    # Re-executed before its poll is due (a manual re-execution): no poll, the same waitpoint.
    again = execute("run-1")
    assert again.parked is not None and again.parked.waitpoint_id == row.id
    assert len(media.requests) == 1

    for poll, run_id in ((1, "run-2"), (2, "run-3")):
        due_and_resumed(platform_db)
        parked = execute(run_id)
        assert parked.parked is not None
        latest = waitpoints_of(platform_db, execution)[-1]
        assert (latest.iteration, latest.run_id, latest.status) == (
            f"#poll{poll}",
            run_id,
            "pending",
        )
        assert latest.spec["video"] == {**row.spec["video"], "poll": poll}
        assert latest.due_at is not None
        assert latest.due_at.replace(tzinfo=UTC) - datetime.now(UTC) > timedelta(
            seconds=5 * 2**poll - 2
        )

    due_and_resumed(platform_db)
    done = execute("run-4")
    assert done.parked is None
    video = done.output["videoResult"]
    assert video["jobId"] == "video_1" and video["status"] == "completed"
    assert stored_bytes(files, video["file"]) == TINY_MP4
    assert [(r.method, r.route) for r in media.requests] == [
        ("POST", "/videos"),
        ("GET", "/videos/video_1"),
        ("GET", "/videos/video_1"),
        ("GET", "/videos/video_1"),
        ("GET", "/videos/video_1/content"),
    ]
    assert [w.iteration for w in waitpoints_of(platform_db, execution)] == ["", "#poll1", "#poll2"]


def test_a_video_job_past_its_deadline_fails_the_node(
    media: FakeMediaServer, files: FileStore, platform_db: str, execution: str
) -> None:
    media.video_statuses.extend(["in_progress"] * 5)
    store = DatabaseWaitpointStore(platform_db, sleep_threshold_seconds=0)
    settings = settings_for(media, video_deadline_s=0.001)
    services = {"waitpoints": store}
    first = run(
        "videoGeneration",
        VIDEO_NODE,
        settings,
        files,
        VIDEO_INPUTS,
        services=services,
        execution_id=execution,
    )
    assert first.parked is not None
    due_and_resumed(platform_db)
    with pytest.raises(NodeExecutionError, match=r"still in_progress .*VIDEO_DEADLINE_S"):
        run(
            "videoGeneration",
            VIDEO_NODE,
            settings,
            files,
            VIDEO_INPUTS,
            services=services,
            run_id="run-2",
            execution_id=execution,
        )


def test_find_returns_a_parked_waitpoint_with_its_spec_or_none(
    platform_db: str, execution: str
) -> None:
    store = DatabaseWaitpointStore(platform_db, sleep_threshold_seconds=0)
    where = {"execution_id": execution, "node_id": "n", "iteration": "#poll1"}
    assert store.find(**where) is None
    parked = store.park(
        execution_id=execution,
        node_id="n",
        iteration="#poll1",
        step_key="n",
        run_id="r",
        kind="datetime",
        spec={"video": {"jobId": "j"}},
    )
    found = store.find(**where)
    assert found is not None and found.id == parked.id and found.spec == {"video": {"jobId": "j"}}


# -- deploy-time checks --------------------------------------------------------------------------


def problems_of(node_type: str, **config: Any) -> list[tuple[str, str | None, str]]:
    definition = chain(node("in", "input", inputName="x"), node("m", node_type, **config))
    return [
        (p.severity, p.field, p.code)
        for p in validate(definition)
        if p.node_id == "m" and p.code not in ("connector_required", "unresolved_reference")
    ]


@pytest.mark.parametrize(
    ("node_type", "config", "expected"),
    [
        ("audioTranscription", {"model": "whisper-1"}, [("error", "audioFile", "missing_field")]),
        (
            "audioTranscription",
            {"audioFile": "{{x}}", "task": "summarize"},
            [("error", "task", "invalid_config")],
        ),
        (
            "audioTranscription",
            {"audioFile": "{{x}}", "outputFormat": "docx"},
            [("error", "outputFormat", "invalid_config")],
        ),
        ("audioTranscription", {"audioSource": "${input.a.url}", "task": "{{t}}"}, []),
        ("audioOutput", {"voice": "alloy"}, [("error", "text", "missing_field")]),
        ("audioOutput", {"input": "{{x}}", "speed": 9}, [("error", "speed", "invalid_config")]),
        ("audioOutput", {"input": "{{x}}", "speed": "{{s}}"}, []),
        (
            "audioOutput",
            {"input": "{{x}}", "format": "midi"},
            [("error", "format", "invalid_config")],
        ),
        (
            "audio",
            {"textInput": "{{x}}", "returnFormat": "base64"},
            [("warning", "returnFormat", "stored_as_file")],
        ),
        (
            "audio",
            {"operation": "remix", "textInput": "{{x}}"},
            [("error", "operation", "invalid_config")],
        ),
        ("audio", {"operation": "transcribe"}, [("error", "audioFile", "missing_field")]),
        ("imageGeneration", {"prompt": "{{x}}", "n": 11}, [("error", "n", "invalid_config")]),
        ("imageGeneration", {"prompt": "{{x}}", "n": 1.5}, [("error", "n", "invalid_config")]),
        (
            "imageGeneration",
            {"prompt": "{{x}}", "size": "big"},
            [("error", "size", "invalid_config")],
        ),
        ("imageGeneration", {"prompt": "{{x}}", "size": "auto", "n": "{{n}}"}, []),
        ("imageGeneration", {"size": "1024x1024"}, [("error", "prompt", "missing_field")]),
        (
            "imageGeneration",
            {"operation": "edit", "prompt": "p"},
            [("error", "sourceImage", "missing_field")],
        ),
        ("imageGeneration", {"operation": "upscale", "sourceImage": "{{x}}"}, []),
        ("videoGeneration", {"duration": 4}, [("error", "prompt", "missing_field")]),
        (
            "videoGeneration",
            {"prompt": "p", "duration": -1},
            [("error", "duration", "invalid_config")],
        ),
        (
            "videoGeneration",
            {"prompt": "p", "aspectRatio": "wide"},
            [("error", "aspectRatio", "invalid_config")],
        ),
        (
            "videoGeneration",
            {"prompt": "p", "duration": "{{scene.duration}}", "aspectRatio": "9:16"},
            [],
        ),
    ],
)
def test_deploy_time_checks_name_the_field(
    node_type: str, config: dict[str, Any], expected: list[tuple[str, str, str]]
) -> None:
    assert problems_of(node_type, **config) == expected


def test_every_generative_type_has_a_check() -> None:
    for node_type in (
        "audioTranscription",
        "audioOutput",
        "audio",
        "imageGeneration",
        "videoGeneration",
    ):
        assert node_type in CONFIG_CHECKS


def test_corpus_workflows_with_generative_nodes_compile_without_errors() -> None:
    wanted = {"audioTranscription", "audioOutput", "audio", "imageGeneration", "videoGeneration"}
    checked = 0
    for path in corpus_files():
        text = path.read_text()
        if not any(f'"{t}"' in text for t in wanted):
            continue
        compiled = build_job(path.read_bytes())
        types = {n.type for n in compiled.spec.nodes.values()}
        assert types & wanted, corpus_id(path)
        checked += 1
    assert checked >= 15


@pytest.mark.slow
def test_speech_transcription_and_video_pass_files_through_a_compiled_run(
    media: FakeMediaServer, tmp_path: Path
) -> None:
    """audioOutput's file → audioTranscription → videoGeneration (polled in process) in one
    Dagster run: only references travel between the ops."""
    media.video_statuses.extend(["in_progress", "completed"])
    settings = settings_for(media).model_copy(update={"dagster_home": tmp_path})
    definition = chain(
        node("in", "input", inputName="topic"),
        node("speak", "audioOutput", input="About {{topic}}", voice="nova", outputVariable="reply"),
        node("hear", "audioTranscription", audioFile="{{reply.file}}", outputVariable="t"),
        node("vid", "videoGeneration", prompt="{{t.text}}", duration=4, outputVariable="v"),
        node("out", "output", value="{{v.file.path}}"),
    )
    result = run_workflow(definition, {"topic": "Dagster"}, settings=settings)
    assert result.status == "succeeded"
    [upload] = media.requests_to("/audio/transcriptions")
    assert upload.files[0].data == media.speech_audio
    assert upload.files[0].filename == "speech.mp3"
    assert media.requests_to("/videos")[0].fields["prompt"] == media.transcript
    path = result.outputs["out"]
    assert path.endswith("/vid/video.mp4")
    stored = FileStore.from_settings(settings).area(None).read_bytes(path)
    assert stored == TINY_MP4
