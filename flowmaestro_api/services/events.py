"""Server-sent events of an execution, read from Dagster's event log."""

import json
import time
from collections.abc import Iterator
from typing import Any

from dagster import DagsterEventType

from flowmaestro_dagster.control.client import DagsterClient
from flowmaestro_dagster.control.executions import TERMINAL, run_status
from flowmaestro_dagster.runtime.progress import parse_progress

# Dagster event type -> the event name the builder sees
EVENT_NAMES: dict[DagsterEventType, str] = {
    DagsterEventType.STEP_START: "node.started",
    DagsterEventType.STEP_SUCCESS: "node.succeeded",
    DagsterEventType.STEP_FAILURE: "node.failed",
    DagsterEventType.STEP_SKIPPED: "node.skipped",
    DagsterEventType.STEP_UP_FOR_RETRY: "node.retry",
    DagsterEventType.STEP_RESTARTED: "node.restarted",
    DagsterEventType.RUN_ENQUEUED: "execution.queued",
    DagsterEventType.RUN_DEQUEUED: "execution.dequeued",
    DagsterEventType.RUN_STARTING: "execution.starting",
    DagsterEventType.RUN_START: "execution.running",
    DagsterEventType.RUN_SUCCESS: "execution.succeeded",
    DagsterEventType.RUN_FAILURE: "execution.failed",
    DagsterEventType.RUN_CANCELED: "execution.cancelled",
    DagsterEventType.RUN_CANCELING: "execution.cancelling",
}


def sse(event: str, data: dict[str, Any], event_id: str | None = None) -> str:
    lines = []
    if event_id:
        lines.append(f"id: {event_id}")
    lines.append(f"event: {event}")
    lines.append(f"data: {json.dumps(data, default=str)}")
    return "\n".join(lines) + "\n\n"


def execution_events(
    client: DagsterClient,
    execution_id: str,
    node_ids: dict[str, str],
    *,
    last_event_id: str | None = None,
    poll_seconds: float = 0.5,
    heartbeat_seconds: float = 15.0,
    max_seconds: float = 3600.0,
) -> Iterator[str]:
    """Stream events until the execution is terminal (or `max_seconds` pass)."""
    cursors: dict[str, str | None] = {}
    if last_event_id and ":" in last_event_id:
        resume_run, _, resume_cursor = last_event_id.partition(":")
        cursors[resume_run] = resume_cursor or None
    started = last_beat = time.monotonic()
    while time.monotonic() - started < max_seconds:
        runs = client.runs_for_execution(execution_id)
        for run in runs:
            while True:
                records, cursor = client.event_records(run.run_id, cursors.get(run.run_id))
                for record in records:
                    entry = record.event_log_entry
                    event = entry.dagster_event
                    if event is None:
                        progress = parse_progress(entry.user_message)
                        if progress is not None:  # a batch's `5/10 done`
                            report = {
                                "execution_id": execution_id,
                                "run_id": run.run_id,
                                "timestamp": entry.timestamp,
                                "step_key": entry.step_key,
                                **progress,
                            }
                            event_id = f"{run.run_id}:{record.storage_id}"
                            yield sse("node.progress", report, event_id)
                        continue
                    name = EVENT_NAMES.get(event.event_type)
                    if name is None:
                        continue
                    step_key = event.step_key
                    alias = step_key.split("[", 1)[0] if step_key else None
                    data: dict[str, Any] = {
                        "execution_id": execution_id,
                        "run_id": run.run_id,
                        "timestamp": entry.timestamp,
                    }
                    if step_key:
                        data["node_id"] = node_ids.get(alias or "") or alias
                        data["step_key"] = step_key
                        if "[" in step_key:
                            data["iteration"] = step_key.split("[", 1)[1].rstrip("]")
                    if event.event_type == DagsterEventType.STEP_FAILURE:
                        failure = getattr(event.event_specific_data, "user_failure_data", None)
                        error = getattr(event.event_specific_data, "error", None)
                        data["error"] = getattr(failure, "description", None) or getattr(
                            error, "message", None
                        )
                    yield sse(name, data, f"{run.run_id}:{record.storage_id}")
                cursors[run.run_id] = cursor
                if not records:
                    break
        latest = runs[-1] if runs else None
        if latest is not None and run_status(latest) in TERMINAL:
            yield sse("end", {"execution_id": execution_id, "status": run_status(latest)})
            return
        if time.monotonic() - last_beat > heartbeat_seconds:
            last_beat = time.monotonic()
            yield ": keep-alive\n\n"
        time.sleep(poll_seconds)
