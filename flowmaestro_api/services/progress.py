"""Progress of an execution's long nodes (batches), read back from Dagster's event log.

A batch logs `flowmaestro/progress {...}` messages as its items finish
(`flowmaestro_dagster.runtime.progress`); the latest one per step is the node's progress. A batch
inside a loop body has one step per loop item: their counts add up.
"""

from collections.abc import Sequence
from typing import Any

from flowmaestro_dagster.compile.compiler import CompiledWorkflow
from flowmaestro_dagster.control.client import DagsterClient, RunInfo
from flowmaestro_dagster.runtime.progress import parse_progress

_COUNTS = ("done", "total", "succeeded", "failed", "skipped")


def node_progress(
    client: DagsterClient, compiled: CompiledWorkflow, runs: Sequence[RunInfo]
) -> dict[str, dict[str, Any]]:
    """node id -> {done, total, succeeded, failed, skipped, finished}; {} without batches."""
    if not any(node.type == "batch" for node in compiled.spec.nodes.values()):
        return {}
    latest: dict[tuple[str, str], dict[str, Any]] = {}  # (node id, step key) -> progress
    for run in runs:  # later runs (a retry, a resume) override what earlier ones reported
        cursor: str | None = None
        while True:
            records, cursor = client.event_records(run.run_id, cursor)
            for record in records:
                entry = record.event_log_entry
                if entry.dagster_event is not None:
                    continue
                progress = parse_progress(entry.user_message)
                if progress is not None:
                    latest[(progress["node_id"], entry.step_key or "")] = progress
            if not records:
                break
    result: dict[str, dict[str, Any]] = {}
    for (node_id, _), progress in sorted(latest.items()):
        current = result.setdefault(node_id, {**dict.fromkeys(_COUNTS, 0), "finished": True})
        for key in _COUNTS:
            current[key] += int(progress.get(key) or 0)
        current["finished"] = current["finished"] and bool(progress.get("finished"))
    return result
