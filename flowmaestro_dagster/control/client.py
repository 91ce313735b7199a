"""The platform's view of Dagster: GraphQL for actions, the instance for reads.

Launching, re-executing, terminating and reloading code locations go through the webserver's
GraphQL API (they need the workspace); reading runs, step stats and events goes straight to
the instance's storage (same DAGSTER_HOME or PostgreSQL), which is fast and needs no server.

Actions that Dagster's own GraphQL client (`dagster_graphql.DagsterGraphQLClient`) covers use it:
launch (`submit_job_execution`), terminate (`terminate_run`), reload (`reload_repository_location`).
The others are queries written here, sent over the same transport: that client has no
re-execution (neither from failure nor of chosen steps with a parent run) and lists jobs only of
every location (a private method); tags are written to the instance, not through GraphQL.
"""

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cached_property
from typing import Any, TypeVar, cast
from urllib.parse import urlsplit

import requests
from dagster_graphql import (
    DagsterGraphQLClient,
    DagsterGraphQLClientError,
    ReloadRepositoryLocationStatus,
)
from gql import Client, GraphQLRequest
from gql.transport.exceptions import TransportError, TransportQueryError
from gql.transport.requests import RequestsHTTPTransport

from flowmaestro_dagster.adapter.events import report_platform_event
from flowmaestro_dagster.errors import Conflict, DagsterUnavailable, PlatformError
from flowmaestro_dagster.tags import EXECUTION_TAG, PARENT_RUN_TAG, ROOT_RUN_TAG

REPOSITORY = "__repository__"
# Launch answers that mean the job is not (yet) in the loaded workspace.
NOT_LOADED = frozenset({"PipelineNotFoundError", "RepositoryNotFoundError"})

T = TypeVar("T")

# Hand-written: DagsterGraphQLClient has no re-execution (from failure, or of chosen steps with
# a parent and root run), and lists jobs only through a private method that reads every location.

# One mutation for both re-executions: from failure passes `reexecution` (ReexecutionParams),
# chosen steps with a parent and root run pass `execution` (ExecutionParams); Dagster takes
# exactly one of them.
_REEXECUTE = """
mutation Reexecute($execution: ExecutionParams, $reexecution: ReexecutionParams) {
  launchRunReexecution(executionParams: $execution, reexecutionParams: $reexecution) {
    __typename
    ... on LaunchRunSuccess { run { runId } }
    ... on Error { message }
    ... on RunConfigValidationInvalid { errors { message } }
    ... on InvalidStepError { invalidStepKey }
    ... on InvalidOutputError { invalidOutputName }
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


def _raise_for_server_error(response: requests.Response, *_: Any, **__: Any) -> None:
    """A 5xx means the webserver is unavailable, even with a GraphQL body (a resolver crash):
    raise before gql reads the body as an answer."""
    if response.status_code >= 500:
        response.raise_for_status()


def _tag_list(tags: Mapping[str, str]) -> list[dict[str, str]]:
    """Tags as GraphQL takes them (ExecutionTag)."""
    return [{"key": k, "value": v} for k, v in tags.items()]


def _describe(detail: Any) -> str:
    """The message of a refusal (config errors come as a list of {message})."""
    if isinstance(detail, list):
        return "; ".join(
            str(e.get("message", e)) if isinstance(e, dict) else str(e) for e in detail
        )
    return str(detail)


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
    update_time: float | None = None  # the run record's last change (status, tags)


# What `dagster-webserver` gives its long-lived instance (its CLI defaults): pooled storage
# connections instead of one new database connection per query.
SERVER_STATEMENT_TIMEOUT_MS = 15_000
SERVER_POOL_RECYCLE_S = 3600
SERVER_POOL_MAX_OVERFLOW = 20


class DagsterClient:
    def __init__(
        self,
        graphql_url: str,
        *,
        timeout: float = 30.0,
        instance: Any = None,
        long_lived: bool = False,
    ) -> None:
        """`long_lived`: a server process (the API) that reads the instance all day: its
        storage keeps a connection pool, as Dagster's webserver does (on PostgreSQL each read
        otherwise opens and closes a connection: most of the live-event feed's CPU)."""
        self.graphql_url = graphql_url
        self.timeout = timeout
        self.long_lived = long_lived
        if instance is not None:
            self.__dict__["instance"] = instance  # e.g. a sensor's context.instance

    # -- GraphQL ---------------------------------------------------------------------------

    def _transport(self, timeout: float | None) -> RequestsHTTPTransport:
        """A new transport per call: a gql transport holds one session, not shared by threads."""
        return RequestsHTTPTransport(
            url=self.graphql_url,
            timeout=cast(int, timeout or self.timeout),  # requests takes float seconds
            hooks={"response": _raise_for_server_error},
        )

    def _dagster(self, timeout: float | None = None) -> DagsterGraphQLClient:
        host = urlsplit(self.graphql_url).netloc or self.graphql_url  # only for its messages
        return DagsterGraphQLClient(host, transport=self._transport(timeout))

    def _transport_error(self, exc: BaseException) -> PlatformError:
        """What a failed request means: the webserver did not answer, or refused the query."""
        cause: BaseException | None = exc
        while cause is not None:
            if isinstance(cause, requests.HTTPError) and cause.response is not None:
                status = cause.response.status_code
                if status >= 500:
                    return DagsterUnavailable(f"Dagster webserver answered {status}")
                return PlatformError(f"Dagster webserver answered {status}")
            if isinstance(cause, requests.RequestException):
                return DagsterUnavailable(f"Dagster webserver at {self.graphql_url}: {cause}")
            if isinstance(cause, TransportQueryError):
                message = (cause.errors or [{}])[0].get("message", str(cause))
                return PlatformError(f"Dagster GraphQL error: {message}")
            cause = cause.__cause__
        return PlatformError(f"Dagster webserver at {self.graphql_url}: {exc}")

    def _graphql(
        self, query: str, variables: dict[str, Any], *, timeout: float | None = None
    ) -> Any:
        """A query written here (no DagsterGraphQLClient equivalent); its `data`."""
        try:
            with Client(transport=self._transport(timeout)) as session:
                return session.execute(GraphQLRequest(query, variable_values=variables))
        except TransportError as exc:  # requests' own errors arrive wrapped in one
            raise self._transport_error(exc) from exc

    def _call(
        self,
        action: Callable[[DagsterGraphQLClient], T],
        refused: Callable[[str, str], PlatformError],
        *,
        timeout: float | None = None,
    ) -> T:
        """Run a DagsterGraphQLClient call; Dagster's refusals become `refused(kind, message)`."""
        try:
            return action(self._dagster(timeout))
        except DagsterGraphQLClientError as exc:
            if exc.__cause__ is not None:  # the request failed (raised `from` gql's error)
                raise self._transport_error(exc.__cause__) from exc
            kind, *detail = exc.args or ("error",)
            body = detail[0] if detail else exc.body
            raise refused(str(kind), _describe(body)) from exc
        except KeyError as exc:
            # The client's queries select `message` only on the answers they expect; another
            # (e.g. UnauthorizedError from a read-only webserver) has none.
            raise refused("unexpected answer", f"no field {exc}") from exc

    @staticmethod
    def _launch_result(result: Mapping[str, Any]) -> str:
        if result["__typename"] == "LaunchRunSuccess":
            return str(result["run"]["runId"])
        message = result.get("message") or result.get("errors") or result["__typename"]
        raise DagsterClient._launch_refused(str(result["__typename"]), _describe(message))

    @staticmethod
    def _launch_refused(kind: str, message: str) -> PlatformError:
        if kind in NOT_LOADED:
            return Conflict(f"the job is not loaded in Dagster yet: {message}")
        return PlatformError(f"Dagster refused the launch ({kind}): {message}")

    def _send(self, action: str, arguments: Mapping[str, Any], send: Callable[[], T]) -> T:
        """Every action reaches the webserver through here, by name and arguments, so that a
        client without one overrides only the sending (testing/recording_client.py)."""
        return send()

    def _reexecute(self, variable: str, params: Mapping[str, Any]) -> str:
        data = self._graphql(_REEXECUTE, {variable: dict(params)})
        return self._launch_result(data["launchRunReexecution"])

    def launch(
        self,
        *,
        location: str,
        job: str,
        run_config: Mapping[str, Any],
        tags: Mapping[str, str],
    ) -> str:
        def send() -> str:
            return self._call(
                lambda client: client.submit_job_execution(
                    job,
                    repository_location_name=location,
                    repository_name=REPOSITORY,
                    run_config=dict(run_config),
                    tags=dict(tags),
                ),
                self._launch_refused,
            )

        arguments = {"location": location, "job": job, "run_config": run_config, "tags": tags}
        return self._send("launch", arguments, send)

    def reexecute_from_failure(self, parent_run_id: str, extra_tags: Mapping[str, str]) -> str:
        params = {
            "parentRunId": parent_run_id,
            "strategy": "FROM_FAILURE",
            "extraTags": _tag_list(extra_tags),
        }
        return self._send(
            "reexecute_from_failure",
            {"parent_run_id": parent_run_id, "extra_tags": extra_tags},
            lambda: self._reexecute("reexecution", params),
        )

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
        # Dagster groups a run with its root by these tags (`get_run_group`), which re-execution
        # through ExecutionParams does not set (the UI sends them itself, as here).
        tags = {**tags, PARENT_RUN_TAG: parent_run_id, ROOT_RUN_TAG: root_run_id}
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
                "tags": _tag_list(tags),
            },
        }
        arguments = {
            "location": location,
            "job": job,
            "parent_run_id": parent_run_id,
            "root_run_id": root_run_id,
            "step_keys": list(step_keys),
            "run_config": run_config,
            "tags": tags,
        }
        return self._send(
            "reexecute_steps", arguments, lambda: self._reexecute("execution", params)
        )

    def terminate(self, run_id: str) -> None:
        def refused(_kind: str, message: str) -> PlatformError:
            return Conflict(f"Dagster could not terminate run {run_id}: {message}")

        self._send(
            "terminate",
            {"run_id": run_id},
            lambda: self._call(lambda client: client.terminate_run(run_id), refused),
        )

    def tag_run(self, run_id: str, tags: Mapping[str, str]) -> None:
        """Add or change tags of a run (shown in the Dagster UI; e.g. `flowmaestro/paused`)."""
        self.instance.add_run_tags(run_id, dict(tags))

    def untag_run(self, run_id: str, keys: Sequence[str]) -> bool:
        """Take tags off a run (a resumed run's waiting tags), so a runs-page filter by them
        lists only the runs that still carry them; False if the run storage cannot."""
        return delete_run_tags(self.instance, run_id, keys)

    def reload_location(self, location: str, *, timeout: float = 120.0) -> None:
        def refused(_kind: str, message: str) -> PlatformError:
            return PlatformError(f"Dagster could not reload {location}: {message}")

        def send() -> None:
            info = self._call(
                lambda client: client.reload_repository_location(location),
                refused,
                timeout=timeout,
            )
            if info.status is ReloadRepositoryLocationStatus.SUCCESS:
                return
            if info.failure_type == "PythonError":  # the location's code raised while loading
                raise PlatformError(f"code location {location} failed to load: {info.message}")
            raise refused(info.failure_type or "", info.message or "")

        self._send("reload_location", {"location": location}, send)

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
            instance = DagsterInstance.get()
        except Exception as exc:
            raise DagsterUnavailable(f"cannot open the Dagster instance: {exc}") from exc
        if self.long_lived:
            instance.optimize_for_webserver(
                statement_timeout=SERVER_STATEMENT_TIMEOUT_MS,
                pool_recycle=SERVER_POOL_RECYCLE_S,
                max_overflow=SERVER_POOL_MAX_OVERFLOW,
            )
        return instance

    def runs_for_execution(self, execution_id: str) -> list[RunInfo]:
        """Every Dagster run of an execution (first launch, re-executions), oldest first."""
        from dagster import RunsFilter

        records = self.instance.get_run_records(
            filters=RunsFilter(tags={EXECUTION_TAG: execution_id})
        )
        return sorted((_run_info(r) for r in records), key=lambda r: r.create_time or 0)

    def runs_for_executions(
        self, execution_ids: Sequence[str], *, updated_after: datetime | None = None
    ) -> list[RunInfo]:
        """The runs of several executions (changed since `updated_after`): one query, so a
        process following many executions notices new runs, status and tag changes at once.

        With `updated_after` the query asks only for recently changed runs and the execution
        filter is applied here: its cost follows how busy the platform is, not how many
        executions are followed (a tag filter of 1,000 values took seconds on PostgreSQL)."""
        from dagster import RunsFilter

        if not execution_ids:
            return []
        if updated_after is not None:
            wanted = set(execution_ids)
            records = [
                r
                for r in self.instance.get_run_records(
                    filters=RunsFilter(updated_after=updated_after)
                )
                if r.dagster_run.tags.get(EXECUTION_TAG) in wanted
            ]
        else:
            records = self.instance.get_run_records(
                filters=RunsFilter(tags={EXECUTION_TAG: list(execution_ids)})
            )
        return sorted((_run_info(r) for r in records), key=lambda r: r.create_time or 0)

    def event_records_after(self, run_id: str, after: int | None, limit: int = 500) -> list[Any]:
        """A run's event-log records after storage id `after` (all of them for None)."""
        from flowmaestro_dagster.dagster_internals import EventLogCursor

        cursor = None if after is None else EventLogCursor.from_storage_id(after).to_string()
        return list(self.instance.get_records_for_run(run_id, cursor=cursor, limit=limit).records)

    def last_storage_id(self, run_id: str) -> int | None:
        """The storage id of a run's newest event-log record (None: no record yet)."""
        records = self.instance.get_records_for_run(run_id, limit=1, ascending=False).records
        return records[0].storage_id if records else None

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

    def report_event(self, run_id: str, kind: str, data: Mapping[str, Any], message: str) -> None:
        """Append a platform event (a waitpoint parked, decided, expired; a cancel) to a run's
        Dagster event log: operators read it in the run's log, and the execution's live event
        stream (flowmaestro_api/services/events.py) relays it to the builder."""
        report_platform_event(self.instance, run_id, kind, data, message)


def delete_run_tags(instance: Any, run_id: str, keys: Sequence[str]) -> bool:
    """Delete tags of a run from its run storage, in its body and its tags table (the runs
    filter reads the table, the UI the body). Dagster has no public delete (`add_run_tags` only
    overwrites), so this writes to the SQL run storage every Dagster instance has; False for
    another kind of storage, and nothing happens."""
    from dagster import serialize_value
    from sqlalchemy import and_

    from flowmaestro_dagster.dagster_internals import (
        LegacyRunStorage,
        RunsTable,
        RunTagsTable,
        SqlRunStorage,
    )

    storage = instance.run_storage
    if isinstance(storage, LegacyRunStorage):
        storage = storage._storage.run_storage  # the storage it wraps (no public accessor)
    if not isinstance(storage, SqlRunStorage):
        return False
    run = instance.get_run_by_id(run_id)
    if run is None or not any(key in run.tags for key in keys):
        return True
    kept = {key: value for key, value in run.tags.items() if key not in keys}
    with storage.connect() as conn:
        conn.execute(
            RunsTable.update()
            .where(RunsTable.c.run_id == run_id)
            .values(
                run_body=serialize_value(run.with_tags(kept)), update_timestamp=datetime.now(UTC)
            )
        )
        conn.execute(
            RunTagsTable.delete().where(
                and_(RunTagsTable.c.run_id == run_id, RunTagsTable.c.key.in_(list(keys)))
            )
        )
    return True


def _run_info(record: Any) -> RunInfo:
    run = record.dagster_run
    return RunInfo(
        run_id=run.run_id,
        status=run.status.value,
        tags=dict(run.tags),
        parent_run_id=run.parent_run_id,
        root_run_id=run.root_run_id,
        start_time=record.start_time,
        end_time=record.end_time,
        create_time=record.create_timestamp.timestamp() if record.create_timestamp else None,
        update_time=record.update_timestamp.timestamp() if record.update_timestamp else None,
    )
