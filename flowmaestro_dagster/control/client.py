"""The platform's view of Dagster: GraphQL for actions, the instance for reads.

Launching, re-executing, terminating and reloading code locations go through the webserver's
GraphQL API (they need the workspace); reading runs, step stats and events goes straight to
the instance's storage (same DAGSTER_HOME or PostgreSQL), which is fast and needs no server.
"""

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import httpx

from flowmaestro_dagster.errors import Conflict, DagsterUnavailable, PlatformError

REPOSITORY = "__repository__"

_LAUNCH = """
mutation Launch($params: ExecutionParams!) {
  launchRun(executionParams: $params) {
    __typename
    ... on LaunchRunSuccess { run { runId } }
    ... on Error { message }
    ... on RunConfigValidationInvalid { errors { message } }
    ... on InvalidStepError { invalidStepKey }
    ... on InvalidOutputError { invalidOutputName }
  }
}
"""

_REEXECUTE = """
mutation Reexecute($params: ReexecutionParams) {
  launchRunReexecution(reexecutionParams: $params) {
    __typename
    ... on LaunchRunSuccess { run { runId } }
    ... on Error { message }
    ... on RunConfigValidationInvalid { errors { message } }
    ... on InvalidStepError { invalidStepKey }
    ... on InvalidOutputError { invalidOutputName }
  }
}
"""

_REEXECUTE_STEPS = """
mutation ReexecuteSteps($params: ExecutionParams!) {
  launchRunReexecution(executionParams: $params) {
    __typename
    ... on LaunchRunSuccess { run { runId } }
    ... on Error { message }
    ... on RunConfigValidationInvalid { errors { message } }
    ... on InvalidStepError { invalidStepKey }
    ... on InvalidOutputError { invalidOutputName }
  }
}
"""

_TERMINATE = """
mutation Terminate($runId: String!) {
  terminateRun(runId: $runId) {
    __typename
    ... on TerminateRunFailure { message }
    ... on Error { message }
  }
}
"""

_RELOAD = """
mutation Reload($name: String!) {
  reloadRepositoryLocation(repositoryLocationName: $name) {
    __typename
    ... on WorkspaceLocationEntry {
      loadStatus
      locationOrLoadError {
        __typename
        ... on PythonError { message }
      }
    }
    ... on Error { message }
  }
}
"""

_JOBS = """
query Jobs($location: String!) {
  repositoryOrError(
    repositorySelector: {repositoryLocationName: $location, repositoryName: "__repository__"}
  ) {
    __typename
    ... on Repository { jobs { name } }
  }
}
"""


@dataclass(frozen=True)
class RunInfo:
    run_id: str
    status: str  # Dagster run status name (QUEUED, STARTED, SUCCESS, ...)
    tags: Mapping[str, str]
    parent_run_id: str | None
    root_run_id: str | None
    start_time: float | None
    end_time: float | None
    create_time: float | None


class DagsterClient:
    def __init__(self, graphql_url: str, *, timeout: float = 30.0, instance: Any = None) -> None:
        self.graphql_url = graphql_url
        self.timeout = timeout
        if instance is not None:
            self.__dict__["instance"] = instance  # e.g. a sensor's context.instance

    # -- GraphQL -------------------------------------------------------------------------

    def _graphql(
        self, query: str, variables: dict[str, Any], *, timeout: float | None = None
    ) -> Any:
        try:
            response = httpx.post(
                self.graphql_url,
                json={"query": query, "variables": variables},
                timeout=timeout or self.timeout,
            )
        except httpx.HTTPError as exc:
            raise DagsterUnavailable(f"Dagster webserver at {self.graphql_url}: {exc}") from exc
        if response.status_code >= 500:
            raise DagsterUnavailable(f"Dagster webserver answered {response.status_code}")
        body = response.json()
        if body.get("errors"):
            raise PlatformError(f"Dagster GraphQL error: {body['errors'][0].get('message')}")
        return body["data"]

    @staticmethod
    def _launch_result(result: Mapping[str, Any]) -> str:
        if result["__typename"] == "LaunchRunSuccess":
            return str(result["run"]["runId"])
        message = result.get("message") or result.get("errors") or result["__typename"]
        if result["__typename"] in ("PipelineNotFoundError", "RepositoryNotFoundError"):
            raise Conflict(f"the job is not loaded in Dagster yet: {message}")
        raise PlatformError(f"Dagster refused the launch ({result['__typename']}): {message}")

    def launch(
        self,
        *,
        location: str,
        job: str,
        run_config: Mapping[str, Any],
        tags: Mapping[str, str],
    ) -> str:
        params = {
            "selector": {
                "repositoryLocationName": location,
                "repositoryName": REPOSITORY,
                "jobName": job,
            },
            "runConfigData": dict(run_config),
            "executionMetadata": {"tags": [{"key": k, "value": v} for k, v in tags.items()]},
        }
        data = self._graphql(_LAUNCH, {"params": params})
        return self._launch_result(data["launchRun"])

    def reexecute_from_failure(self, parent_run_id: str, extra_tags: Mapping[str, str]) -> str:
        params = {
            "parentRunId": parent_run_id,
            "strategy": "FROM_FAILURE",
            "extraTags": [{"key": k, "value": v} for k, v in extra_tags.items()],
        }
        data = self._graphql(_REEXECUTE, {"params": params})
        return self._launch_result(data["launchRunReexecution"])

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
        params = {
            "selector": {
                "repositoryLocationName": location,
                "repositoryName": REPOSITORY,
                "jobName": job,
            },
            "runConfigData": dict(run_config),
            "stepKeys": list(step_keys),
            "executionMetadata": {
                "rootRunId": root_run_id,
                "parentRunId": parent_run_id,
                "tags": [{"key": k, "value": v} for k, v in tags.items()],
            },
        }
        data = self._graphql(_REEXECUTE_STEPS, {"params": params})
        return self._launch_result(data["launchRunReexecution"])

    def terminate(self, run_id: str) -> None:
        data = self._graphql(_TERMINATE, {"runId": run_id})
        result = data["terminateRun"]
        if result["__typename"] != "TerminateRunSuccess":
            raise Conflict(f"Dagster could not terminate run {run_id}: {result.get('message')}")

    def tag_run(self, run_id: str, tags: Mapping[str, str]) -> None:
        """Add or change tags of a run (shown in the Dagster UI; e.g. `flowmaestro/paused`)."""
        self.instance.add_run_tags(run_id, dict(tags))

    def reload_location(self, location: str, *, timeout: float = 120.0) -> None:
        data = self._graphql(_RELOAD, {"name": location}, timeout=timeout)
        result = data["reloadRepositoryLocation"]
        if result["__typename"] != "WorkspaceLocationEntry":
            raise PlatformError(f"Dagster could not reload {location}: {result.get('message')}")
        error = (result.get("locationOrLoadError") or {}).get("message")
        if error:
            raise PlatformError(f"code location {location} failed to load: {error}")

    def job_names(self, location: str) -> set[str]:
        data = self._graphql(_JOBS, {"location": location})
        repository = data["repositoryOrError"]
        if repository["__typename"] != "Repository":
            return set()
        return {job["name"] for job in repository["jobs"]}

    def wait_for_job(self, location: str, job: str, *, timeout: float = 60.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if job in self.job_names(location):
                return True
            time.sleep(0.5)
        return False

    # -- instance reads -----------------------------------------------------------------

    @cached_property
    def instance(self) -> Any:
        from dagster import DagsterInstance

        try:
            return DagsterInstance.get()
        except Exception as exc:
            raise DagsterUnavailable(f"cannot open the Dagster instance: {exc}") from exc

    def runs_for_execution(self, execution_id: str) -> list[RunInfo]:
        """Every Dagster run of an execution (first launch, re-executions), oldest first."""
        from dagster import RunsFilter

        records = self.instance.get_run_records(
            filters=RunsFilter(tags={"flowmaestro/execution_id": execution_id})
        )
        runs = [
            RunInfo(
                run_id=r.dagster_run.run_id,
                status=r.dagster_run.status.value,
                tags=dict(r.dagster_run.tags),
                parent_run_id=r.dagster_run.parent_run_id,
                root_run_id=r.dagster_run.root_run_id,
                start_time=r.start_time,
                end_time=r.end_time,
                create_time=r.create_timestamp.timestamp() if r.create_timestamp else None,
            )
            for r in records
        ]
        return sorted(runs, key=lambda r: r.create_time or 0)

    def step_stats(self, run_id: str) -> list[Any]:
        return list(self.instance.get_run_step_stats(run_id))

    def step_errors(self, run_id: str) -> dict[str, str]:
        """step key -> why it failed (a Failure's description, else the error message)."""
        from dagster import DagsterEventType

        errors: dict[str, str] = {}
        records = self.instance.get_records_for_run(
            run_id, of_type=DagsterEventType.STEP_FAILURE
        ).records
        for record in records:
            event = record.event_log_entry.dagster_event
            if event is None or not event.step_key:
                continue
            data = event.event_specific_data
            description = getattr(getattr(data, "user_failure_data", None), "description", None)
            error = getattr(data, "error", None)
            cause = getattr(error, "cause", None) or error
            errors[event.step_key] = description or str(getattr(cause, "message", "")).strip()
        return errors

    def event_records(
        self, run_id: str, cursor: str | None, limit: int = 500
    ) -> tuple[list[Any], str | None]:
        connection = self.instance.get_records_for_run(run_id, cursor=cursor, limit=limit)
        return list(connection.records), connection.cursor
