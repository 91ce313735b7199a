"""A `DagsterClient` for tests that have a Dagster instance but no webserver.

The GraphQL actions (launch, re-execute, terminate, reload) are recorded instead of sent (the
client builds each as in production and overrides only the sending), and a launch or
re-execution adds a run to the instance, as the webserver would, so code that reads runs back
(`runs_for_execution`) sees it. The run stays NOT_STARTED (the platform reads it as queued): a
QUEUED run needs a code location's origin, which only a real workspace has. Reads go to the
instance as in production. Any other GraphQL call fails loudly: nothing reaches the network.

    client = RecordingDagsterClient(instance)
    sensor = make_waitpoint_sensor(settings=settings, client_factory=lambda _: client)

To race an action against another caller, hold it: `before_send(action)` runs before the
action's run exists, `after_run(action, run_id)` once it exists and before the caller hears of
it (a test blocks there on a `threading.Event`, acts meanwhile, then sets it).
"""

import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar, cast

from dagster import DagsterInstance, DagsterRun, DagsterRunStatus

from flowmaestro_dagster.control.client import DagsterClient

T = TypeVar("T")


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
        self.before_send: Callable[[str], None] | None = None
        self.after_run: Callable[[str, str | None], None] | None = None

    def calls_to(self, action: str) -> list[RecordedCall]:
        return [call for call in self.calls if call.action == action]

    def _graphql(
        self, query: str, variables: dict[str, Any], *, timeout: float | None = None
    ) -> Any:
        raise AssertionError(f"no webserver in this test; unexpected GraphQL: {query.split()[:2]}")

    def _send(self, action: str, arguments: Mapping[str, Any], send: Callable[[], T]) -> T:
        """Record the action instead of sending it: a launch or re-execution adds the run the
        webserver would create (its id is the answer), a termination cancels its run."""
        if self.before_send is not None:
            self.before_send(action)
        run = self._run_for(action, arguments)
        if self.refuse is not None:
            raise self.refuse
        if run is not None:
            self.instance.add_run(run)
        if self.after_run is not None:
            self.after_run(action, run.run_id if run else None)
        self.calls.append(RecordedCall(action, dict(arguments), run.run_id if run else None))
        if action == "terminate":
            terminated = self.instance.get_run_by_id(arguments["run_id"])
            if terminated is not None and not terminated.is_finished:
                self.instance.report_run_canceled(terminated)
        return cast(T, run.run_id if run else None)

    def _run_for(self, action: str, arguments: Mapping[str, Any]) -> DagsterRun | None:
        """The run a launch or re-execution creates; NOT_STARTED (see the module docstring)."""
        lineage: dict[str, Any] = {}
        if action == "reexecute_from_failure":
            parent_run_id = arguments["parent_run_id"]
            parent = self.instance.get_run_by_id(parent_run_id)
            if parent is None:
                raise AssertionError(f"no run {parent_run_id} to re-execute")
            job, run_config = parent.job_name, parent.run_config
            tags = {**parent.tags, **arguments["extra_tags"]}
            lineage = {
                "parent_run_id": parent_run_id,
                "root_run_id": parent.root_run_id or parent_run_id,
            }
        elif action in ("launch", "reexecute_steps"):
            job, run_config, tags = arguments["job"], arguments["run_config"], arguments["tags"]
            if action == "reexecute_steps":
                lineage = {
                    "parent_run_id": arguments["parent_run_id"],
                    "root_run_id": arguments["root_run_id"],
                    "step_keys_to_execute": list(arguments["step_keys"]),
                }
        else:
            return None
        return DagsterRun(
            job_name=job,
            run_id=str(uuid.uuid4()),
            run_config=dict(run_config),
            tags=dict(tags),
            status=DagsterRunStatus.NOT_STARTED,
            **lineage,
        )
