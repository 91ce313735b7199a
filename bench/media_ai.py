"""Generative media nodes: time per call and peak memory, against the fake OpenAI-compatible
media server (no provider is reachable here, so the figures are our overhead plus the SDK's
and the loopback's, not a model's).

Typical inputs: a 10 MB audio file transcribed (streamed from the file store as a multipart
upload), 4,096 characters spoken into a 2 MB MP3 (streamed into the store), one 1024x1024
PNG generated (base64 in the answer, decoded and stored), and an 8 MB video downloaded after
two polls (in process). Each node type runs in a child process of its own, with the figures
every media row has (bench/media_common.py): tracemalloc's peak and the child's max RSS are the
node's, not the fake server's (which lives in this process).

    .venv/bin/python -m bench.media_ai
"""

import io
import itertools
import json
import os
import sys
import tempfile
from typing import Any

from pydantic import SecretStr

from bench.media_common import MB, WORKFLOW, file_store, node_call, run_in_children, time_calls
from flowmaestro_dagster.settings import LLMProvider, LLMSettings, MediaAISettings, Settings
from flowmaestro_dagster.testing.fake_media import FakeMediaServer

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


def _measure(node_type: str, base_url: str) -> dict[str, Any]:
    """In the child: time and memory of one node type against the fake at `base_url`."""
    provider = LLMProvider(base_url=base_url, api_key=SecretStr("bench"))
    settings = Settings().model_copy(
        update={
            "llm": LLMSettings(providers={"openai": provider}),
            "media_ai": MediaAISettings(video_poll_initial_s=0.01, video_poll_max_s=0.02),
        }
    )
    calls = itertools.count()
    with tempfile.TemporaryDirectory() as home:
        files = file_store(home)
        if node_type == "audioTranscription":
            chunks = (
                b"ID3\x04" + os.urandom(MB - 4) if i == 0 else os.urandom(MB) for i in range(10)
            )
            files.area(WORKFLOW).write("/uploads/meeting.mp3", chunks)

        def call() -> Any:
            """A call as a new execution's: each stores its answer afresh."""
            raw = CASES[node_type]["raw"]
            execution = f"e{next(calls)}"
            return node_call(node_type, raw, {}, files, settings, execution_id=execution)()

        _, figures = time_calls(call, CALLS)
    return {"node": node_type, "input": CASES[node_type]["input"], "calls": CALLS, **figures}


def run() -> list[dict[str, Any]]:
    """One row per node type, each measured in its own spawned process against one fake
    server in this process (so the server's memory is not the node's)."""
    with FakeMediaServer(keep_uploads=False) as media:
        media.speech_audio = b"ID3\x04" + os.urandom(2 * MB)
        media.images = [_png(1024, 1024)]
        media.video_content = media.video_content + os.urandom(8 * MB)
        # videoGeneration's calls (the first, CALLS timed, one traced) each see 2 polls
        media.video_statuses.extend(["in_progress", "in_progress", "completed"] * (CALLS + 2))
        return run_in_children(_measure, CASES, media.url)


if __name__ == "__main__":
    json.dump(run(), sys.stdout, indent=2)
    sys.stdout.write("\n")
