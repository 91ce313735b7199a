"""Platform events in Dagster's event log: what happened to an execution outside its ops
(a waitpoint decided, expired or cancelled; a node parked) as engine events on the run, so the
run's log in the Dagster UI and the execution's live event stream show the same thing."""

import time
from collections.abc import Mapping
from typing import Any

from dagster import DagsterInstance, MetadataValue

from flowmaestro_dagster.dagster_internals import EngineEventData
from flowmaestro_dagster.tags import EVENT_DATA_METADATA, EVENT_KIND_METADATA, LAST_EVENT_TAG


def report_platform_event(
    instance: DagsterInstance,
    run_id: str,
    kind: str,
    data: Mapping[str, Any],
    message: str,
    step_key: str | None = None,
) -> None:
    """Append one platform event to a run's log (ops call it with their own instance; the
    control side through `DagsterClient.report_event`)."""
    run = instance.get_run_by_id(run_id)
    if run is None:
        return
    instance.report_engine_event(
        message,
        dagster_run=run,
        engine_event_data=EngineEventData(
            metadata={
                EVENT_KIND_METADATA: MetadataValue.text(kind),
                EVENT_DATA_METADATA: MetadataValue.json(dict(data)),
            }
        ),
        step_key=step_key,
    )
    # A finished run's record changes only with its tags: this is how an execution's live
    # event stream (one query for the runs it follows) learns of an event on a parked run.
    instance.add_run_tags(run_id, {LAST_EVENT_TAG: f"{time.time():.6f}"})
