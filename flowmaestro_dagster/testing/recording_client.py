"""A `DagsterClient` for tests that have a Dagster instance but no webserver.

The GraphQL actions (launch, re-execute, terminate, reload) are recorded, and a launch or
re-execution adds a run to the instance, as the webserver would, so code that reads runs back
(`runs_for_execution`) sees it. The run stays NOT_STARTED (the platform reads it as queued): a
QUEUED run needs a code location's origin, which only a real workspace has. Reads go to the
instance as in production. Any other GraphQL call fails loudly: nothing reaches the network.

    client = RecordingDagsterClient(instance)
    sensor = make_waitpoint_sensor(settings=settings, client_factory=lambda _: client)
"""

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from dagster import DagsterInstance, DagsterRun, DagsterRunStatus

from flowmaestro_dagster.control.client import DagsterClient


@dataclass(frozen=True)
class RecordedCall:
    """One action asked of Dagster, with the run it created (launches and re-executions)."""

    action: str  # launch | reexecute_from_failure | reexecute_steps | terminate | reload_location
    arguments: Mapping[str, Any]
    run_id: str | None = None


class RecordingDagsterClient(DagsterClient):
    def __init__(self, instance: DagsterInstance, *, refuse: Exception | None = None) -> None:
        super().__init__("http://no-webserver.invalid/graphql", instance=instance)
        self.calls: list[RecordedCall] = []
        self.refuse = refuse  # raised by every action while set (Dagster down, a bad job)

    def calls_to(self, action: str) -> list[RecordedCall]:
        return [call for call in self.calls if call.action == action]

    def _graphql(
        self, query: str, variables: dict[str, Any], *, timeout: float | None = None
    ) -> Any:
        raise AssertionError(f"no webserver in this test; unexpected GraphQL: {query.split()[:2]}")

    def _record(self, action: str, arguments: Mapping[str, Any], run: DagsterRun | None) -> None:
        if self.refuse is not None:
            raise self.refuse
        if run is not None:
            self.instance.add_run(run)
        self.calls.append(RecordedCall(action, dict(arguments), run.run_id if run else None))

    def launch(
        self,
        *,
        location: str,
        job: str,
        run_config: Mapping[str, Any],
        tags: Mapping[str, str],
    ) -> str:
        run = DagsterRun(
            job_name=job,
            run_id=str(uuid.uuid4()),
            run_config=dict(run_config),
            tags=dict(tags),
            status=DagsterRunStatus.NOT_STARTED,
        )
        arguments = {"location": location, "job": job, "run_config": run_config, "tags": tags}
        self._record("launch", arguments, run)
        return run.run_id

    def reexecute_from_failure(self, parent_run_id: str, extra_tags: Mapping[str, str]) -> str:
        parent = self.instance.get_run_by_id(parent_run_id)
        if parent is None:
            raise AssertionError(f"no run {parent_run_id} to re-execute")
        run = DagsterRun(
            job_name=parent.job_name,
            run_id=str(uuid.uuid4()),
            run_config=parent.run_config,
            tags={**parent.tags, **extra_tags},
            status=DagsterRunStatus.NOT_STARTED,
            parent_run_id=parent_run_id,
            root_run_id=parent.root_run_id or parent_run_id,
        )
        arguments = {"parent_run_id": parent_run_id, "extra_tags": extra_tags}
        self._record("reexecute_from_failure", arguments, run)
        return run.run_id

    def reexecute_steps(
        self,
        *,
        location: str,
        job: str,
        parent_run_id: str,
        root_run_id: str,
        step_keys: Sequence[str],
        run_config: Mapping[str, Any],
        tags: Mapping[str, str],
    ) -> str:
        run = DagsterRun(
            job_name=job,
            run_id=str(uuid.uuid4()),
            run_config=dict(run_config),
            tags=dict(tags),
            status=DagsterRunStatus.NOT_STARTED,
            parent_run_id=parent_run_id,
            root_run_id=root_run_id,
            step_keys_to_execute=list(step_keys),
        )
        arguments = {
            "location": location,
            "job": job,
            "parent_run_id": parent_run_id,
            "root_run_id": root_run_id,
            "step_keys": list(step_keys),
            "run_config": run_config,
            "tags": tags,
        }
        self._record("reexecute_steps", arguments, run)
        return run.run_id

    def terminate(self, run_id: str) -> None:
        self._record("terminate", {"run_id": run_id}, None)
        run = self.instance.get_run_by_id(run_id)
        if run is not None and not run.is_finished:
            self.instance.report_run_canceled(run)

    def reload_location(self, location: str, *, timeout: float = 120.0) -> None:
        self._record("reload_location", {"location": location}, None)
