"""Generative media nodes: time per call and peak memory, against the fake OpenAI-compatible
media server (no provider is reachable here, so the figures are our overhead plus the SDK's
and the loopback's, not a model's).

Typical inputs: a 10 MB audio file transcribed (streamed from the file store as a multipart
upload), 4,096 characters spoken into a 2 MB MP3 (streamed into the store), one 1024x1024
PNG generated (base64 in the answer, decoded and stored), and an 8 MB video downloaded after
two polls (in process). Each node type runs in a child process of its own: tracemalloc's peak
and the child's max RSS are the node's, not the fake server's (which lives in this process).

    .venv/bin/python -m bench.media_ai
"""

import io
import json
import multiprocessing
import os
import resource
import statistics
import sys
import tempfile
import time
import tracemalloc
from typing import Any

from flowmaestro_dagster.testing.fake_media import FakeMediaServer

MB = 1024 * 1024
CALLS = 5


def _png(width: int, height: int) -> bytes:
    """A noisy PNG (compresses poorly, like a photo): ~3 MB at 1024x1024."""
    from PIL import Image

    image = Image.frombytes("RGB", (width, height), os.urandom(width * height * 3))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


CASES: dict[str, dict[str, Any]] = {
    "audioTranscription": {
        "raw": {"model": "whisper-1", "audioFile": "/uploads/meeting.mp3"},
        "input": "10 MB audio file uploaded",
    },
    "audioOutput": {
        "raw": {"model": "tts-1", "input": "x" * 4096, "voice": "alloy"},
        "input": "4,096 characters → 2 MB MP3 stored",
    },
    "imageGeneration": {
        "raw": {"model": "dall-e-3", "prompt": "a lighthouse", "size": "1024x1024"},
        "input": "one 1024x1024 PNG (base64) stored",
    },
    "videoGeneration": {
        "raw": {"model": "sora-2", "prompt": "waves", "duration": 8, "aspectRatio": "16:9"},
        "input": "8 MB MP4 after 2 polls (in process)",
    },
}


def _child(node_type: str, base_url: str, out: Any) -> None:
    """Run one node type CALLS times (after a warm-up) and report its figures."""
    from pydantic import SecretStr

    from flowmaestro_dagster.lang.state import ExecutionState
    from flowmaestro_dagster.nodes import NodeContext, get_executor
    from flowmaestro_dagster.nodes.filestore import FileStore
    from flowmaestro_dagster.settings import (
        LLMProvider,
        LLMSettings,
        MediaAISettings,
        Settings,
    )
    from flowmaestro_dagster.spec.configs import normalise_config
    from flowmaestro_dagster.tags import WORKFLOW_ID_TAG

    provider = LLMProvider(base_url=base_url, api_key=SecretStr("bench"))
    settings = Settings().model_copy(
        update={
            "llm": LLMSettings(providers={"openai": provider}),
            "media_ai": MediaAISettings(video_poll_initial_s=0.01, video_poll_max_s=0.02),
        }
    )
    with tempfile.TemporaryDirectory() as home:
        files = FileStore(home, max_bytes=100 * MB)
        if node_type == "audioTranscription":
            chunks = (
                b"ID3\x04" + os.urandom(MB - 4) if i == 0 else os.urandom(MB) for i in range(10)
            )
            files.area("wf").write("/uploads/meeting.mp3", chunks)
        config, _ = normalise_config(node_type, CASES[node_type]["raw"], node_id="n")
        executor = get_executor(node_type)

        def call(index: int) -> None:
            ctx = NodeContext(
                node_id="n",
                node_type=node_type,
                label="n",
                config=config,
                state=ExecutionState.start({}),
                services={"settings": settings, "files": files},
                execution_id=f"e{index}",
                run_tags={WORKFLOW_ID_TAG: "wf"},
            )
            executor(ctx)

        call(-1)  # imports, connection set-up
        tracemalloc.start()
        times = []
        for index in range(CALLS):
            started = time.perf_counter()
            call(index)
            times.append(time.perf_counter() - started)
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    rss_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    out.put(
        {
            "node": node_type,
            "input": CASES[node_type]["input"],
            "calls": CALLS,
            "median_ms": round(statistics.median(times) * 1000, 1),
            "min_ms": round(min(times) * 1000, 1),
            "max_ms": round(max(times) * 1000, 1),
            "peak_traced_mb": round(peak / MB, 2),
            "max_rss_mb": round(rss_kb / 1024, 1),
        }
    )


def run() -> list[dict[str, Any]]:
    """One row per node type: median/min/max ms per call and peak memory of its child."""
    context = multiprocessing.get_context("spawn")
    rows = []
    with FakeMediaServer(keep_uploads=False) as media:
        media.speech_audio = b"ID3\x04" + os.urandom(2 * MB)
        media.images = [_png(1024, 1024)]
        media.video_content = media.video_content + os.urandom(8 * MB)
        for node_type in CASES:
            media.video_statuses.extend(["in_progress", "in_progress", "completed"] * (CALLS + 1))
            queue = context.Queue()
            child = context.Process(target=_child, args=(node_type, media.url, queue))
            child.start()
            try:
                rows.append(queue.get(timeout=600))
            finally:
                child.join(timeout=60)
            media.video_statuses.clear()
            media.requests.clear()
    return rows


if __name__ == "__main__":
    json.dump(run(), sys.stdout, indent=2)
    sys.stdout.write("\n")
