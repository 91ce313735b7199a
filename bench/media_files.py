"""The file nodes on their typical input (issue 18): a 50 MB file written, copied and read.

Cases: the store's streamed write of 50 MB in 1 MB chunks (what uploads and generating nodes
do), fileWrite copying a 50 MB file given by reference, fileRead of a 50 MB binary file (its
reference: hashed, no content) and of a 50 MB text file (content: its first MiB), and
audioInput of a 50 MB WAV (content sniffed, duration from its header).

Each case runs in a fresh spawned child on a temporary local store, with the figures every
media row has (bench/media_common.py: first call, median / min / max of `REPEATS` calls, Python
peak, peak RSS) and the throughput. Memory is the point: no case may hold the file (50 MB) in
memory.

`python -m bench.media_files` prints the result as JSON; `run()` returns it.
"""

import json
import os
import tempfile
import wave
from collections.abc import Callable, Iterator
from typing import Any

from bench.media_common import MB, WORKFLOW, file_store, node_call, run_in_children, time_calls

REPEATS = 3
SIZE = 50 * 1024 * 1024
CHUNK = 1024 * 1024

CASES: dict[str, tuple[str, str]] = {
    "store_write_50mb": ("FileArea.write", "50 MB in 1 MB chunks"),
    "file_write_copy_50mb": ("fileWrite", "content: a 50 MB file reference"),
    "file_read_binary_50mb": ("fileRead", "a 50 MB binary file"),
    "file_read_text_50mb": ("fileRead", "a 50 MB text file (1 MiB of content)"),
    "audio_input_wav_50mb": ("audioInput", "a 50 MB WAV (16 kHz mono, ~27 min)"),
}


def _chunks(block: bytes) -> Iterator[bytes]:
    for _ in range(SIZE // len(block)):
        yield block


def _wav(path: str) -> None:
    frames = (SIZE - 44) // 2
    with wave.open(path, "wb") as audio:
        audio.setnchannels(1)
        audio.setsampwidth(2)
        audio.setframerate(16000)
        silence = b"\x00\x00" * (CHUNK // 2)
        while frames > 0:
            count = min(frames, CHUNK // 2)
            audio.writeframes(silence[: count * 2])
            frames -= count


def _measure(case: str) -> dict[str, Any]:
    """In the child: time and memory of one case."""
    node, shape = CASES[case]
    with tempfile.TemporaryDirectory() as tmp:
        store = file_store(tmp)
        area = store.area(WORKFLOW)
        block = os.urandom(CHUNK)
        source = area.write("/in/data.bin", _chunks(block))
        area.write("/in/text.txt", _chunks(b"lorem ipsum dolor sit amet\n" * (CHUNK // 27)))
        with tempfile.TemporaryDirectory() as scratch:
            wav_path = os.path.join(scratch, "voice.wav")
            _wav(wav_path)
            with open(wav_path, "rb") as handle:
                wav = area.write("/in/voice.wav", iter(lambda: handle.read(CHUNK), b""))

        calls: dict[str, Callable[[], Any]] = {
            "store_write_50mb": lambda: area.write("/out/stream.bin", _chunks(block)),
            "file_write_copy_50mb": node_call(
                "fileWrite",
                {"path": "/out/copy.bin", "content": "{{f}}"},
                {"f": source.to_value()},
                store,
            ),
            "file_read_binary_50mb": node_call("fileRead", {"path": "/in/data.bin"}, {}, store),
            "file_read_text_50mb": node_call("fileRead", {"path": "/in/text.txt"}, {}, store),
            "audio_input_wav_50mb": node_call(
                "audioInput",
                {"acceptedFormats": ["wav"], "inputVariable": "voice"},
                {"voice": wav.to_value()},
                store,
            ),
        }
        output, figures = time_calls(calls[case], REPEATS)
    extra: dict[str, Any] = {}
    if isinstance(output, dict) and "durationSeconds" in output:
        extra["duration_s"] = output["durationSeconds"]
    if isinstance(output, dict) and output.get("content") is not None:
        extra["content_chars"] = len(output["content"])
    return {
        "case": case,
        "node": node,
        "input": shape,
        **figures,
        "mb_per_s": round(SIZE / MB / (figures["median_ms"] / 1000), 1),
        **extra,
    }


def run() -> list[dict[str, Any]]:
    """One row a case, each measured in its own spawned process."""
    return run_in_children(_measure, CASES)


if __name__ == "__main__":
    print(json.dumps(run(), indent=2))
