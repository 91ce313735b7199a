"""The file nodes on their typical input (issue 18): a 50 MB file written, copied and read.

Cases: the store's streamed write of 50 MB in 1 MB chunks (what uploads and generating nodes
do), fileWrite copying a 50 MB file given by reference, fileRead of a 50 MB binary file (its
reference: hashed, no content) and of a 50 MB text file (content: its first MiB), and
audioInput of a 50 MB WAV (content sniffed, duration from its header).

Each case runs in a fresh spawned child on a temporary local store, so its figures are its
own: the first call, then the median and max of `REPEATS` calls; the peak of Python
allocations during one call (tracemalloc) and the child's peak resident set (getrusage).
Memory is the point: no case may hold the file (50 MB) in memory.

`python -m bench.media_files` prints the result as JSON; `run()` returns it.
"""

import json
import multiprocessing
import os
import resource
import statistics
import tempfile
import time
import tracemalloc
import wave
from collections.abc import Callable, Iterator
from typing import Any

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
    from flowmaestro_dagster.lang.state import ExecutionState
    from flowmaestro_dagster.nodes import NodeContext, get_executor
    from flowmaestro_dagster.nodes.filestore import FileStore
    from flowmaestro_dagster.settings import Settings
    from flowmaestro_dagster.spec.configs import normalise_config
    from flowmaestro_dagster.tags import WORKFLOW_ID_TAG

    node, shape = CASES[case]
    with tempfile.TemporaryDirectory() as tmp:
        store = FileStore(tmp, max_bytes=1 << 30)
        area = store.area("bench")
        block = os.urandom(CHUNK)
        source = area.write("/in/data.bin", _chunks(block))
        area.write("/in/text.txt", _chunks(b"lorem ipsum dolor sit amet\n" * (CHUNK // 27)))
        with tempfile.TemporaryDirectory() as scratch:
            wav_path = os.path.join(scratch, "voice.wav")
            _wav(wav_path)
            with open(wav_path, "rb") as handle:
                wav = area.write("/in/voice.wav", iter(lambda: handle.read(CHUNK), b""))

        def node_call(node_type: str, raw: dict[str, Any], inputs: dict[str, Any]) -> Any:
            config, _ = normalise_config(node_type, raw, node_id="bench")
            ctx = NodeContext(
                node_id="bench",
                node_type=node_type,
                label="bench",
                config=config,
                state=ExecutionState.start(inputs),
                services={"settings": Settings(), "files": store},
                run_tags={WORKFLOW_ID_TAG: "bench"},
                execution_id="bench",
            )
            return lambda: get_executor(node_type)(ctx).output

        calls: dict[str, Callable[[], Any]] = {
            "store_write_50mb": lambda: area.write("/out/stream.bin", _chunks(block)),
            "file_write_copy_50mb": node_call(
                "fileWrite", {"path": "/out/copy.bin", "content": "{{f}}"}, {"f": source.to_value()}
            ),
            "file_read_binary_50mb": node_call("fileRead", {"path": "/in/data.bin"}, {}),
            "file_read_text_50mb": node_call("fileRead", {"path": "/in/text.txt"}, {}),
            "audio_input_wav_50mb": node_call(
                "audioInput",
                {"acceptedFormats": ["wav"], "inputVariable": "voice"},
                {"voice": wav.to_value()},
            ),
        }
        call = calls[case]
        started = time.perf_counter()
        output = call()
        first = time.perf_counter() - started
        times = []
        for _ in range(REPEATS):
            t0 = time.perf_counter()
            call()
            times.append(time.perf_counter() - t0)
        tracemalloc.start()
        call()
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    extra: dict[str, Any] = {}
    if isinstance(output, dict) and "durationSeconds" in output:
        extra["duration_s"] = output["durationSeconds"]
    if isinstance(output, dict) and output.get("content") is not None:
        extra["content_chars"] = len(output["content"])
    return {
        "case": case,
        "node": node,
        "input": shape,
        "first_call_ms": round(first * 1000, 1),
        "median_ms": round(statistics.median(times) * 1000, 1),
        "max_ms": round(max(times) * 1000, 1),
        "mb_per_s": round(SIZE / (1 << 20) / statistics.median(times), 1),
        "python_peak_mb": round(peak / (1 << 20), 2),
        "max_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        **extra,
    }


def run() -> list[dict[str, Any]]:
    """One row a case, each measured in its own spawned process."""
    context = multiprocessing.get_context("spawn")
    results = []
    for case in CASES:
        with context.Pool(1) as pool:
            results.append(pool.apply(_measure, (case,)))
    return results


if __name__ == "__main__":
    print(json.dumps(run(), indent=2))
