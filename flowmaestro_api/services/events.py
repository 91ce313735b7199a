"""Server-sent events of an execution, read from Dagster's event log."""

import json
from collections.abc import AsyncIterator
from typing import Any

import anyio
from anyio import to_thread
from dagster import DagsterEventType
from sse_starlette import ServerSentEvent

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

# Lines end in "\n" (sse-starlette's default is "\r\n"): clients split events on "\n\n".
SEPARATOR = "\n"
HEARTBEAT_SECONDS = 15.0


def sse(event: str, data: dict[str, Any], event_id: str | None = None) -> ServerSentEvent:
    return ServerSentEvent(json.dumps(data, default=str), event=event, id=event_id, sep=SEPARATOR)


def record_event(
    record: Any, *, execution_id: str, run_id: str, node_ids: dict[str, str]
) -> ServerSentEvent | None:
    """The event a Dagster event-log record shows the builder, or None for one it does not."""
    entry = record.event_log_entry
    event = entry.dagster_event
    event_id = f"{run_id}:{record.storage_id}"
    if event is None:
        progress = parse_progress(entry.user_message)
        if progress is None:
            return None
        report = {  # a batch's `5/10 done`
            "execution_id": execution_id,
            "run_id": run_id,
            "timestamp": entry.timestamp,
            "step_key": entry.step_key,
            **progress,
        }
        return sse("node.progress", report, event_id)
    name = EVENT_NAMES.get(event.event_type)
    if name is None:
        return None
    step_key = event.step_key
    alias = step_key.split("[", 1)[0] if step_key else None
    data: dict[str, Any] = {
        "execution_id": execution_id,
        "run_id": run_id,
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
        data["error"] = getattr(failure, "description", None) or getattr(error, "message", None)
    return sse(name, data, event_id)


async def execution_events(
    client: DagsterClient,
    execution_id: str,
    node_ids: dict[str, str],
    *,
    last_event_id: str | None = None,
    poll_seconds: float = 0.5,
    max_seconds: float = 3600.0,
) -> AsyncIterator[ServerSentEvent]:
    """Stream events until the execution is terminal (or `max_seconds` pass).

    Dagster reads block, so they run in a worker thread: a follower holds no thread while it
    waits. Cancelled (the client went away) at the next read or sleep.
    """
    cursors: dict[str, str | None] = {}
    if last_event_id and ":" in last_event_id:
        resume_run, _, resume_cursor = last_event_id.partition(":")
        cursors[resume_run] = resume_cursor or None
    deadline = anyio.current_time() + max_seconds
    while anyio.current_time() < deadline:
        runs = await to_thread.run_sync(client.runs_for_execution, execution_id)
        for run in runs:
            while True:
                records, cursor = await to_thread.run_sync(
                    client.event_records, run.run_id, cursors.get(run.run_id)
                )
                for record in records:
                    shown = record_event(
                        record, execution_id=execution_id, run_id=run.run_id, node_ids=node_ids
                    )
                    if shown is not None:
                        yield shown
                cursors[run.run_id] = cursor
                if not records:
                    break
        latest = runs[-1] if runs else None
        if latest is not None and run_status(latest) in TERMINAL:
            yield sse("end", {"execution_id": execution_id, "status": run_status(latest)})
            return
        await anyio.sleep(poll_seconds)
