"""Progress of a long node (a batch: `5/10 done`), carried by the run's own event log.

A node reports progress as an ordinary Dagster log message (`context.log.info`), so it shows
in the Dagster UI's run log as it happens and needs no storage of its own. The message is
readable text followed by a marker and JSON, which the API parses back
(`parse_progress`) for its event stream (`node.progress`) and `GET /executions/{id}`.
"""

import json
from dataclasses import asdict, dataclass
from typing import Any

from flowmaestro_dagster.tags import PROGRESS_MARKER


@dataclass(frozen=True)
class Progress:
    node_id: str
    done: int
    total: int
    succeeded: int = 0
    failed: int = 0
    skipped: int = 0  # items never started (minSuccess reached, or the batch stopped)
    finished: bool = False

    def message(self) -> str:
        """`batch-1: 5/10 done (4 succeeded, 1 failed) flowmaestro/progress {...}`."""
        parts = [f"{self.succeeded} succeeded", f"{self.failed} failed"]
        if self.skipped:
            parts.append(f"{self.skipped} not started")
        text = f"{self.node_id}: {self.done}/{self.total} done ({', '.join(parts)})"
        return f"{text} {PROGRESS_MARKER}{json.dumps(asdict(self), separators=(',', ':'))}"


def parse_progress(message: str | None) -> dict[str, Any] | None:
    """The progress a log message carries, or None for any other message."""
    if not message or PROGRESS_MARKER not in message:
        return None
    try:
        data = json.loads(message.split(PROGRESS_MARKER, 1)[1])
    except ValueError:
        return None
    if not isinstance(data, dict) or not isinstance(data.get("node_id"), str):
        return None
    return data


__all__ = ["PROGRESS_MARKER", "Progress", "parse_progress"]
