"""fileRead, fileWrite and audioInput on a real file store (a temp directory, and fsspec's
in-memory filesystem): round trips, the area rule against every escape, caps, streaming in
bounded memory, copies by reference, forged references, and audio checked by content."""

import hashlib
import io
import json
import os
import tracemalloc
import uuid
import wave
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from flowmaestro_dagster.compile.validation import validate
from flowmaestro_dagster.errors import NodeConfigurationError, NodeExecutionError
from flowmaestro_dagster.nodes import CONFIG_CHECKS, NodeContext, NodeResult, get_executor
from flowmaestro_dagster.nodes.file_nodes import TEXT_LIMIT
from flowmaestro_dagster.nodes.filestore import (
    FilePathError,
    FileRef,
    FileStore,
    FileTooLargeError,
)
from flowmaestro_dagster.settings import Settings
from flowmaestro_dagster.spec.configs import normalise_config
from flowmaestro_dagster.spec.models import NodeSpec
from flowmaestro_dagster.tags import WORKFLOW_ID_TAG
from tests.builders import node_context
from tests.conftest import corpus_files, corpus_id

MB = 1024 * 1024


@pytest.fixture
def store(tmp_path: Path) -> FileStore:
    return FileStore(str(tmp_path / "files"), max_bytes=64 * MB)


def run(
    node_type: str,
    raw: dict[str, Any],
    store: FileStore,
    *,
    inputs: dict[str, Any] | None = None,
    upstream: dict[str, Any] | None = None,
    workflow: str = "wf-1",
    services: dict[str, Any] | None = None,
) -> NodeResult:
    """One node as a plain function, in workflow `workflow`'s file area."""
    ctx = node_context(
        node_type,
        raw,
        {"settings": Settings(), "files": store, **(services or {})},
        inputs=inputs,
        upstream=upstream,
        execution_id="ex-1",
        run_tags={WORKFLOW_ID_TAG: workflow},
    )
    return get_executor(node_type)(ctx)


def area_dir(store: FileStore, workflow: str = "wf-1") -> Path:
    return Path(store.root) / "workflows" / workflow


def wav_bytes(seconds: float = 1.0, rate: int = 8000) -> bytes:
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as audio:
        audio.setnchannels(1)
        audio.setsampwidth(2)
        audio.setframerate(rate)
        audio.writeframes(b"\x01\x00" * int(seconds * rate))
    return buffer.getvalue()


def mp3_bytes(frames: int) -> bytes:
    """MPEG-1 Layer III frames (128 kbit/s, 44.1 kHz, 417 bytes, 1152 samples each)."""
    return (bytes([0xFF, 0xFB, 0x90, 0x64]) + b"\x00" * 413) * frames


# -- fileWrite / fileRead round trips --------------------------------------------------------------


def test_write_then_read_text_round_trips_with_a_matching_reference(store: FileStore) -> None:
    text = "héllo\nwörld — ünïcode\n"
    written = run(
        "fileWrite",
        {"path": "/outputs/{{name}}.txt", "content": "{{body}}", "outputVariable": "saved"},
        store,
        inputs={"name": "notes", "body": text},
    ).output["saved"]
    ref = written["file"]
    assert ref["type"] == "file"
    assert ref["path"] == written["path"] == "/outputs/notes.txt"
    assert ref["size"] == written["size"] == len(text.encode())
    assert ref["sha256"] == hashlib.sha256(text.encode()).hexdigest()
    assert ref["mediaType"] == "text/plain"
    on_disk = area_dir(store) / "outputs" / "notes.txt"
    assert on_disk.read_text() == text
    # by path (relative spelling too) and by the reference itself
    for path in ("/outputs/notes.txt", "outputs/./notes.txt"):
        read = run("fileRead", {"path": path}, store).output
        assert read["content"] == text
        assert read["encoding"] == "utf-8"
        assert read["truncated"] is False
        assert read["file"] == ref
    by_ref = run("fileRead", {"path": "{{saved.file}}"}, store, upstream={"w": {"saved": written}})
    assert by_ref.output["content"] == text


def test_write_of_a_json_value_writes_json(store: FileStore) -> None:
    value = {"rows": [1, 2, 3], "name": "ünï"}
    run(
        "fileWrite",
        {"path": "/data/out.json", "content": "{{value}}"},
        store,
        inputs={"value": value},
    )
    read = run("fileRead", {"path": "/data/out.json", "outputVariable": "doc"}, store).output
    assert json.loads(read["doc"]["content"]) == value
    assert read["doc"]["file"]["mediaType"] == "application/json"


def test_read_of_a_binary_file_has_no_content(store: FileStore) -> None:
    png = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4
    store.area("wf-1").write("/img/a.png", png)
    read = run("fileRead", {"path": "/img/a.png"}, store).output
    assert read["content"] is None
    assert read["encoding"] is None
    assert read["file"]["mediaType"] == "image/png"
    assert read["file"]["size"] == len(png)


def test_read_of_a_long_text_is_cut_at_the_limit(store: FileStore) -> None:
    text = "é" * (TEXT_LIMIT // 2 + 10)  # two bytes each: the cut falls inside a character?
    store.area("wf-1").write("/long.txt", ("x" + text).encode())
    read = run("fileRead", {"path": "/long.txt"}, store).output
    assert read["truncated"] is True
    assert read["file"]["size"] == 1 + len(text) * 2
    content = read["content"]
    assert content.startswith("xé") and set(content[1:]) == {"é"}
    assert len(content.encode()) <= TEXT_LIMIT  # the split character is left out, no error


def test_read_with_an_encoding(store: FileStore) -> None:
    store.area("wf-1").write("/latin.txt", "café".encode("latin-1"))
    read = run("fileRead", {"path": "/latin.txt", "encoding": "latin-1"}, store).output
    assert read["content"] == "café"
    assert read["encoding"] == "iso8859-1"
    with pytest.raises(NodeConfigurationError, match="encoding"):
        run("fileRead", {"path": "/latin.txt", "encoding": "utf-8"}, store)
    with pytest.raises(NodeConfigurationError, match="encoding: 'klingon'"):
        run("fileRead", {"path": "/latin.txt", "encoding": "klingon"}, store)


def test_read_of_a_missing_file_names_the_field(store: FileStore) -> None:
    with pytest.raises(NodeExecutionError, match=r"path: no file '/nope.txt'") as info:
        run("fileRead", {"path": "/nope.txt"}, store)
    assert info.value.node_id == "n"
    with pytest.raises(NodeConfigurationError, match="filePath"):
        run("fileRead", {"filePath": "../x"}, store)


def test_overwrite_false_refuses_an_existing_file(store: FileStore) -> None:
    run("fileWrite", {"path": "/a.txt", "content": "one"}, store)
    with pytest.raises(NodeConfigurationError, match="exists and overwrite is false"):
        run("fileWrite", {"path": "/a.txt", "content": "two", "overwrite": False}, store)
    with pytest.raises(NodeConfigurationError, match="exists and overwrite is false"):
        run(
            "fileWrite",
            {"path": "/a.txt", "content": "two", "overwrite": "{{o}}"},
            store,
            inputs={"o": "false"},
        )
    with pytest.raises(NodeConfigurationError, match="overwrite: expected true or false"):
        run("fileWrite", {"path": "/a.txt", "content": "two", "overwrite": "maybe"}, store)
    run("fileWrite", {"path": "/a.txt", "content": "two", "overwrite": "true"}, store)
    assert (area_dir(store) / "a.txt").read_text() == "two"


# -- the area rule ---------------------------------------------------------------------------------


ESCAPES = [
    "..",
    "../outside.txt",
    "/../../etc/passwd",
    "a/../../outside.txt",
    "file:///etc/passwd",
    "s3://bucket/key",
    "a\\..\\..\\outside.txt",
    "a\x00b.txt",
    "C:/Windows/win.ini",
    "/",
]


@pytest.mark.parametrize("path", ESCAPES)
def test_paths_leaving_the_area_are_refused_naming_the_field(
    store: FileStore, tmp_path: Path, path: str
) -> None:
    before = sorted(p for p in tmp_path.rglob("*"))
    with pytest.raises(FilePathError, match=r"^node 'n' \(fileWrite\): path: ") as info:
        run("fileWrite", {"path": path, "content": "x"}, store)
    assert info.value.node_id == "n"
    with pytest.raises(FilePathError, match="path: "):
        run("fileRead", {"path": path}, store)
    assert sorted(p for p in tmp_path.rglob("*")) == before


def test_a_symlink_inside_the_area_leading_outside_is_refused(
    store: FileStore, tmp_path: Path
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("top secret")
    area = area_dir(store)
    area.mkdir(parents=True)
    (area / "link").symlink_to(outside, target_is_directory=True)
    with pytest.raises(FilePathError, match="path: the path leads outside") as info:
        run("fileRead", {"path": "/link/secret.txt"}, store)
    assert "top secret" not in str(info.value)
    with pytest.raises(FilePathError, match="path: the path leads outside"):
        run("fileWrite", {"path": "/link/new.txt", "content": "x"}, store)
    assert sorted(p.name for p in outside.iterdir()) == ["secret.txt"]


def test_a_forged_reference_cannot_read_another_workflows_file(store: FileStore) -> None:
    other = store.area("wf-2").write("/secret.txt", b"wf-2 secret")
    mine = store.area("wf-1").write("/secret.txt", b"mine")
    # the other workflow's reference: its uri is information, only its path is opened (here)
    read = run("fileRead", {"path": "{{doc}}"}, store, inputs={"doc": other.to_value()})
    assert read.output["content"] == "mine"
    assert read.output["file"]["sha256"] == mine.sha256
    # a path that names the other area is refused or resolved inside this one
    forged = [
        {**other.to_value(), "path": "/../wf-2/secret.txt"},
        {**other.to_value(), "path": "../../workflows/wf-2/secret.txt"},
        {**other.to_value(), "path": other.uri},
    ]
    for ref in forged:
        with pytest.raises(FilePathError):
            run("fileRead", {"path": "{{doc}}"}, store, inputs={"doc": ref})
        with pytest.raises(FilePathError):
            run("fileWrite", {"path": "/copy", "content": "{{doc}}"}, store, inputs={"doc": ref})
    nested = {**other.to_value(), "path": "/workflows/wf-2/secret.txt"}
    with pytest.raises(NodeExecutionError, match=r"no file '/workflows/wf-2/secret.txt'"):
        run("fileRead", {"path": "{{doc}}"}, store, inputs={"doc": nested})
    assert (area_dir(store, "wf-2") / "secret.txt").read_bytes() == b"wf-2 secret"


# -- caps and streaming ----------------------------------------------------------------------------


def test_size_cap_on_write_and_read(tmp_path: Path) -> None:
    small = FileStore(str(tmp_path / "files"), max_bytes=1024)
    with pytest.raises(FileTooLargeError, match="path: the file is larger than 1024 bytes"):
        run("fileWrite", {"path": "/big.txt", "content": "x" * 2000}, small)
    assert not area_dir(small).exists() or list(area_dir(small).rglob("*.*")) == []
    area_dir(small).mkdir(parents=True, exist_ok=True)
    (area_dir(small) / "big.txt").write_bytes(b"y" * 2000)  # put there behind the store's back
    with pytest.raises(FileTooLargeError, match="path: the file is larger"):
        run("fileRead", {"path": "/big.txt"}, small)


def _chunks(total: int, size: int = MB) -> Iterator[bytes]:
    block = os.urandom(size)
    for _ in range(total // size):
        yield block


def test_writing_a_stream_of_chunks_keeps_memory_bounded(store: FileStore) -> None:
    area = store.area("wf-1")
    tracemalloc.start()
    try:
        ref = area.write("/big.bin", _chunks(48 * MB))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert ref.size == 48 * MB
    assert peak < 8 * MB, peak  # a 1 MB chunk at a time, never the whole file


def test_file_write_from_a_reference_copies_the_bytes_streamed(store: FileStore) -> None:
    source = store.area("wf-1").write("/gen/audio.mp3", _chunks(32 * MB))
    tracemalloc.start()
    try:
        output = run(
            "fileWrite",
            {"path": "/outputs/voice_replies/{{stamp}}.mp3", "content": "{{audioReply}}"},
            store,
            inputs={"stamp": "2024"},
            upstream={"tts": {"audioReply": {"file": source.to_value(), "format": "mp3"}}},
        ).output
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    copy = output["file"]
    assert copy["path"] == "/outputs/voice_replies/2024.mp3"
    assert copy["sha256"] == source.sha256 and copy["size"] == source.size
    assert peak < 8 * MB, peak
    target = area_dir(store) / "outputs" / "voice_replies" / "2024.mp3"
    assert hashlib.sha256(target.read_bytes()).hexdigest() == source.sha256


def test_file_write_copies_a_bare_reference_and_a_path_string_stays_text(
    store: FileStore,
) -> None:
    source = store.area("wf-1").write("/a.bin", b"\x00\x01\x02binary")
    out = run(
        "fileWrite", {"path": "/b.bin", "content": "{{f}}"}, store, inputs={"f": source.to_value()}
    )
    assert out.output["file"]["sha256"] == source.sha256
    out = run("fileWrite", {"path": "/c.txt", "content": "/a.bin"}, store)
    assert (area_dir(store) / "c.txt").read_text() == "/a.bin"


# -- audioInput ------------------------------------------------------------------------------------


def upload(store: FileStore, name: str, data: bytes) -> dict[str, Any]:
    """What POST /workflows/{id}/files makes of an upload: a reference in the area."""
    return store.area("wf-1").write(f"/uploads/{uuid.uuid4().hex}/{name}", data).to_value()


def test_audio_input_takes_a_wav_by_content(store: FileStore) -> None:
    ref = upload(store, "voice.wav", wav_bytes(1.5))
    output = run(
        "audioInput",
        {"acceptedFormats": ["mp3", "wav"], "outputVariable": "voiceMessage"},
        store,
        inputs={"voiceMessage": ref},
    ).output["voiceMessage"]
    assert output["format"] == "wav"
    assert output["mediaType"] == "audio/x-wav"
    assert output["durationSeconds"] == 1.5
    assert output["file"]["sha256"] == ref["sha256"]
    assert output["file"]["path"] == ref["path"]


def test_audio_input_refuses_a_wav_named_mp3(store: FileStore) -> None:
    ref = upload(store, "voice.mp3", wav_bytes())
    with pytest.raises(
        NodeConfigurationError, match=r"acceptedFormats: 'voice.mp3' is wav"
    ) as info:
        run(
            "audioInput",
            {"acceptedFormats": ["mp3"], "inputVariable": "voice"},
            store,
            inputs={"voice": ref},
        )
    assert info.value.node_id == "n"


def test_audio_input_reads_an_mp3_duration(store: FileStore) -> None:
    ref = upload(store, "clip.bin", mp3_bytes(100))
    output = run(
        "audioInput",
        {"acceptedFormats": "mp3, wav", "inputVariable": "clip"},
        store,
        inputs={"clip": ref},
    ).output
    assert output["format"] == "mp3"
    assert output["durationSeconds"] == pytest.approx(100 * 1152 / 44100, abs=0.01)


def test_audio_input_without_formats_still_wants_audio(store: FileStore) -> None:
    ref = upload(store, "notes.wav", b"just some text, not audio\n")
    with pytest.raises(NodeConfigurationError, match=r"inputVariable: 'notes.wav' is not an audio"):
        run("audioInput", {"inputVariable": "clip"}, store, inputs={"clip": ref})


def test_audio_input_names_the_missing_input(store: FileStore) -> None:
    with pytest.raises(NodeConfigurationError, match=r"inputVariable: no uploaded file .*'voice'"):
        run("audioInput", {"inputVariable": "voice"}, store, inputs={"other": 1})


def test_audio_input_finds_the_only_uploaded_file_when_nothing_names_it(store: FileStore) -> None:
    ref = upload(store, "v.wav", wav_bytes())
    output = run("audioInput", {"label": "Voice"}, store, inputs={"x": ref, "count": 3}).output
    assert output["file"]["path"] == ref["path"]


def test_audio_input_rejects_a_forged_reference_to_another_workflow(store: FileStore) -> None:
    other = store.area("wf-2").write("/uploads/v.wav", wav_bytes())
    with pytest.raises(NodeExecutionError, match=r"no file '/uploads/v.wav'"):
        run("audioInput", {"inputVariable": "v"}, store, inputs={"v": other.to_value()})
    forged = {**other.to_value(), "path": "/../wf-2/uploads/v.wav"}
    with pytest.raises(FilePathError, match="inputVariable"):
        run("audioInput", {"inputVariable": "v"}, store, inputs={"v": forged})


def test_transcribing_audio_input_hands_the_file_to_audio_transcription(
    store: FileStore,
) -> None:
    """The builder's "Transcribe" audioInput (provider + model): the audioTranscription
    executor gets the file reference and the model; its fields join the output."""
    seen: list[NodeContext] = []

    def transcription(ctx: NodeContext) -> NodeResult:
        seen.append(ctx)
        return NodeResult({"text": "buy milk", "language": "en"})

    ref = upload(store, "note.wav", wav_bytes())
    output = run(
        "audioInput",
        {
            "provider": "openai",
            "model": "whisper-1",
            "inputVariable": "voiceNote",
            "outputVariable": "transcript",
        },
        store,
        inputs={"voiceNote": ref},
        services={"executors": {"audioTranscription": transcription}},
    ).output["transcript"]
    assert output["text"] == "buy milk" and output["format"] == "wav"
    (ctx,) = seen
    assert ctx.node_type == "audioTranscription"
    assert ctx.config.model == "whisper-1"  # type: ignore[attr-defined]
    assert ctx.config.extras()["audioFile"]["path"] == ref["path"]
    assert ctx.config.output_variable is None


# -- deploy-time checks ----------------------------------------------------------------------------


def problems(node_type: str, config: dict[str, Any]) -> list[tuple[str, str | None]]:
    canonical, _ = normalise_config(node_type, config, node_id="n")
    spec = NodeSpec(
        id="n",
        type=node_type,
        source_type=node_type,
        label="n",
        config=canonical,
        original_config=config,
    )
    return [(p.code, p.field) for p in CONFIG_CHECKS[node_type](spec)]


def test_deploy_time_checks_name_the_field() -> None:
    assert problems("fileWrite", {"path": "/outputs/x.mp3"}) == [("missing_field", "content")]
    assert problems("fileWrite", {"content": "x"}) == [("missing_field", "path")]
    assert problems("fileWrite", {"path": "../x", "content": "x"}) == [("invalid_path", "path")]
    assert problems("fileRead", {"filePath": "file:///etc/passwd"}) == [
        ("invalid_path", "filePath")
    ]
    assert problems("fileRead", {"path": "/a", "encoding": "klingon"}) == [
        ("invalid_config", "encoding")
    ]
    assert problems("audioInput", {"acceptedFormats": ["mp3", "xyz"]}) == [
        ("invalid_config", "acceptedFormats")
    ]
    assert problems("audioInput", {"inputVariable": 3}) == [("invalid_config", "inputVariable")]
    assert problems("fileWrite", {"path": "/a", "content": "", "overwrite": "maybe"}) == [
        ("invalid_config", "overwrite")
    ]
    # templates are known at run time only; the corpus spellings are fine
    assert problems("fileWrite", {"path": "/o/{{t}}/../../..", "content": "{{x}}"}) == []
    assert problems("fileRead", {"path": "{{inputDoc.path}}"}) == []
    assert problems("audioInput", {"acceptedFormats": ["mp3", "wav", "m4a"]}) == []


def test_corpus_workflows_with_file_nodes_validate_without_file_node_errors() -> None:
    wanted = {"fileRead", "fileWrite", "audioInput"}
    checked = 0
    for path in corpus_files():
        text = path.read_text()
        if not any(f'"{t}"' in text for t in wanted):
            continue
        for problem in validate(text):
            assert not (
                problem.severity == "error"
                and problem.field
                in ("path", "content", "acceptedFormats", "inputVariable", "encoding")
            ), (corpus_id(path), problem)
        checked += 1
    assert checked >= 10


# -- a store on another fsspec filesystem ----------------------------------------------------------


def test_file_nodes_on_an_fsspec_memory_store() -> None:
    memory = FileStore(f"memory://fm-{uuid.uuid4().hex}", max_bytes=MB)
    assert not memory.local
    written = run("fileWrite", {"path": "/outputs/a.txt", "content": "in memory"}, memory).output
    assert written["file"]["uri"].startswith("memory://")
    read = run("fileRead", {"path": "/outputs/a.txt"}, memory).output
    assert read["content"] == "in memory"
    copy = run(
        "fileWrite", {"path": "/b.txt", "content": "{{f}}"}, memory, inputs={"f": written["file"]}
    )
    assert copy.output["file"]["sha256"] == written["file"]["sha256"]
    area = memory.area("wf-1")
    assert area.list() == ["/b.txt", "/outputs/a.txt"]
    with area.local_path("/b.txt") as local:
        assert local.read_text() == "in memory"
    assert not local.exists()  # the temporary copy is gone
    with pytest.raises(FileTooLargeError):
        area.write("/big", _chunks(2 * MB, 256 * 1024))
    assert area.list() == ["/b.txt", "/outputs/a.txt"]
    ref = upload(memory, "v.wav", wav_bytes(0.5))
    audio = run("audioInput", {"acceptedFormats": ["wav"]}, memory, inputs={"v": ref}).output
    assert audio["durationSeconds"] == 0.5
    assert FileRef.from_value(audio["file"]) is not None


def test_an_input_node_hands_an_uploaded_reference_on_to_file_nodes(store: FileStore) -> None:
    ref = store.area("wf-1").write("/uploads/u1/doc.txt", b"uploaded text").to_value()
    given = run(
        "input", {"inputName": "doc", "inputType": "file"}, store, inputs={"doc": ref}
    ).output
    assert given == {"doc": ref}  # the reference as it came, no bytes
    read = run("fileRead", {"path": "{{doc}}"}, store, upstream={"in": given}).output
    assert read["content"] == "uploaded text"
