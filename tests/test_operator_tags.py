"""What an operator sees of a run in the Dagster UI: which tags a run carries, which the UI hides,
what a parked run adds (and its `waiting` event), and that the per-user limit keys on the id.

Fast: no Dagster stack. The parked run is real (the workflow runs in process on a test instance
with the database waitpoint store); the runs page itself is tests/api/test_operator_ui_e2e.py.
"""

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from dagster import DagsterEventType, DagsterInstance, instance_for_test
from dagster._core.storage.tags import TagType, get_tag_type

from flowmaestro_dagster.adapter.ops import INPUTS_RESOURCE, SERVICES_RESOURCE
from flowmaestro_dagster.adapter.resources import (
    static_services_resource,
    workflow_inputs_resource,
)
from flowmaestro_dagster.adapter.waiting import approval_url, waiting_event, waiting_tags
from flowmaestro_dagster.control.client import DagsterClient
from flowmaestro_dagster.control.executions import run_tags, start_execution, version_row
from flowmaestro_dagster.control.requests import ExecutionCreate
from flowmaestro_dagster.control.waitpoints import clear_waiting
from flowmaestro_dagster.engines.jobs import build_job
from flowmaestro_dagster.engines.local import execute_workflow
from flowmaestro_dagster.nodes.base import Park
from flowmaestro_dagster.orchestration.instance_config import instance_config
from flowmaestro_dagster.settings import Settings
from flowmaestro_dagster.store.db import get_engine, session_scope
from flowmaestro_dagster.store.models import Execution, User
from flowmaestro_dagster.store.waitpoints import DatabaseWaitpointStore
from flowmaestro_dagster.tags import (
    APPROVAL_URL_TAG,
    EVENT_DATA_METADATA,
    EVENT_KIND_METADATA,
    EXECUTION_TAG,
    HOST_TAG,
    LAUNCHED_BY_TAG,
    PARKED_TAG,
    PID_TAG,
    PRIORITY_TAG,
    QUEUE_TAG,
    USER_TAG,
    USER_WORKFLOW_TAG,
    VERSION_TAG,
    WAITING_NODE_TAG,
    WAITING_TAG,
    WAITING_TAGS,
    WAITING_UNTIL_TAG,
    WORKFLOW_ID_TAG,
    WORKFLOW_NAME_TAG,
)
from tests.builders import chain, node
from tests.deploy import deploy, fresh_user

API = "https://api.example.com/"


def approval_flow() -> dict[str, Any]:
    return chain(
        node("in", "input", inputName="who"),
        node("review", "humanReview", label="Manager OK", reviewPrompt="Ship {{who}}?"),
        node("out", "output", outputName="result", value="{{who}}"),
        name="Approval",
    )


def visible(tags: dict[str, str]) -> set[str]:
    """The tag keys the Dagster UI shows (its GraphQL leaves hidden ones out)."""
    return {key for key in tags if get_tag_type(key) != TagType.HIDDEN}


# -- the tags of a parked run, as data -----------------------------------------------------------


def test_a_parked_approval_is_tagged_with_its_kind_node_and_approval_link() -> None:
    tags = waiting_tags(Park("approval", "wp-1"), "Manager OK", API)

    assert tags == {
        WAITING_TAG: "approval",
        WAITING_NODE_TAG: "Manager OK",
        APPROVAL_URL_TAG: "https://api.example.com/approvals/wp-1",
        PARKED_TAG: "approval",
    }
    assert visible(tags) == {WAITING_TAG, WAITING_NODE_TAG, APPROVAL_URL_TAG}


def test_a_parked_wait_shows_its_due_time_in_utc_and_no_approval_link() -> None:
    due = datetime(2031, 5, 4, 11, 30, tzinfo=timezone(timedelta(hours=2)))

    tags = waiting_tags(Park("datetime", "wp-2", due_at=due), "Cool down", API)

    assert tags[WAITING_TAG] == "datetime"
    assert tags[WAITING_UNTIL_TAG] == "2031-05-04T09:30:00Z"
    assert APPROVAL_URL_TAG not in tags


def test_a_long_label_is_cut_to_a_tag_line() -> None:
    tags = waiting_tags(Park("callback", "wp-3"), "x" * 1000, API)
    assert len(tags[WAITING_NODE_TAG]) == 255


def test_the_waiting_event_says_where_to_approve() -> None:
    data, message = waiting_event(Park("approval", "wp-1"), "review", "Manager OK", API)

    assert data == {
        "node_id": "review",
        "label": "Manager OK",
        "kind": "approval",
        "waitpoint_id": "wp-1",
        "due_at": None,
        "approval_url": approval_url(API, "wp-1"),
    }
    expected = (
        "Waiting for approval at Manager OK: approve at https://api.example.com/approvals/wp-1"
    )
    assert message == expected


def test_the_waiting_event_of_a_wait_gives_its_due_time() -> None:
    due = datetime(2031, 5, 4, 9, 30, tzinfo=UTC)
    data, message = waiting_event(Park("datetime", "wp-2", due_at=due), "pause", "pause", API)
    assert data["due_at"] == "2031-05-04T09:30:00Z" and "approval_url" not in data
    assert message == "Waiting at pause until 2031-05-04T09:30:00Z"


# -- which tags the UI shows ---------------------------------------------------------------------


def test_machine_tags_are_hidden_and_what_operators_filter_by_is_not() -> None:
    hidden = [WORKFLOW_ID_TAG, USER_TAG, USER_WORKFLOW_TAG, PID_TAG, HOST_TAG, PARKED_TAG]
    shown = [
        EXECUTION_TAG,
        WORKFLOW_NAME_TAG,
        VERSION_TAG,
        LAUNCHED_BY_TAG,
        QUEUE_TAG,
        PRIORITY_TAG,
        *WAITING_TAGS,
    ]
    assert [key for key in hidden if get_tag_type(key) != TagType.HIDDEN] == []
    assert [key for key in shown if get_tag_type(key) == TagType.HIDDEN] == []
    assert LAUNCHED_BY_TAG == "user"  # the tag the UI's "Launched by" reads


# -- the tags of a real execution ----------------------------------------------------------------


@pytest.fixture
def settings(platform_db: str) -> Settings:
    return Settings(
        database_url=platform_db,
        wait_sleep_threshold_seconds=0,
        public_api_url=API,
        secret_key="operator-test-secret-0123456789",
    )


def committed(settings: Settings) -> tuple[str, User]:
    with session_scope(get_engine(settings.database_url)) as session:
        user = fresh_user(session)
        workflow_id = deploy(session, user, approval_flow())
        session.commit()
        execution, _ = start_execution(
            session,
            user=user,
            workflow_id=workflow_id,
            body=ExecutionCreate(inputs={"who": "ada"}),
            idempotency_key=None,
            default_ttl_seconds=3600,
            shards=1,
        )
        session.expunge(user)
        return execution.id, user


def test_a_run_shows_the_users_email_and_the_user_limit_keys_on_their_id(
    settings: Settings,
) -> None:
    execution_id, user = committed(settings)
    with session_scope(get_engine(settings.database_url)) as session:
        execution = session.get(Execution, execution_id)
        assert execution is not None
        tags = run_tags(execution)

    assert tags[LAUNCHED_BY_TAG] == user.email  # "Launched by": the email, not a UUID
    assert tags[USER_TAG] == user.id  # stable while the run waits in the queue
    assert visible(tags) == {
        EXECUTION_TAG,
        VERSION_TAG,
        LAUNCHED_BY_TAG,
        PRIORITY_TAG,
        QUEUE_TAG,
    }  # plus the job's own: the workflow name
    rules = instance_config(settings)["concurrency"]["runs"]["tag_concurrency_limits"]
    [per_user] = [rule for rule in rules if rule["value"] == {"applyLimitPerUniqueValue": True}][:1]
    assert per_user["key"] == USER_TAG


def parked_run(settings: Settings, instance: DagsterInstance) -> str:
    execution_id, _ = committed(settings)
    with session_scope(get_engine(settings.database_url)) as session:
        execution = session.get(Execution, execution_id)
        assert execution is not None
        tags = run_tags(execution)
        version = version_row(session, execution)
        assert version is not None
        definition = dict(version.definition)
    store = DatabaseWaitpointStore(settings.database_url, sleep_threshold_seconds=0)
    compiled = build_job(
        definition,
        resource_defs={
            INPUTS_RESOURCE: workflow_inputs_resource,
            SERVICES_RESOURCE: static_services_resource(settings, waitpoints=store),
        },
    )
    result = execute_workflow(
        compiled, {"who": "ada"}, instance=instance, tags=tags, log_level="ERROR"
    )
    return result.run_id


def test_a_parked_run_is_tagged_and_logs_where_to_approve_until_it_resumes(
    settings: Settings,
) -> None:
    with instance_for_test() as instance:
        run_id = parked_run(settings, instance)
        run = instance.get_run_by_id(run_id)
        assert run is not None

        assert run.tags[WAITING_TAG] == "approval"
        assert run.tags[WAITING_NODE_TAG] == "Manager OK"
        url = run.tags[APPROVAL_URL_TAG]
        assert url.startswith(f"{API}approvals/")
        assert run.tags[WORKFLOW_NAME_TAG] == "Approval"
        [event] = [
            record.event_log_entry
            for record in instance.get_records_for_run(
                run_id, of_type=DagsterEventType.ENGINE_EVENT
            ).records
            if record.event_log_entry.dagster_event is not None
            and EVENT_KIND_METADATA
            in record.event_log_entry.dagster_event.engine_event_data.metadata
        ]
        dagster_event = event.dagster_event
        assert dagster_event is not None
        assert dagster_event.message == f"Waiting for approval at Manager OK: approve at {url}"
        assert event.step_key == "manager_ok__review"
        metadata = dagster_event.engine_event_data.metadata
        payload = metadata[EVENT_DATA_METADATA].value
        assert isinstance(payload, dict) and payload["approval_url"] == url

        clear_waiting(DagsterClient("http://unused.invalid/graphql", instance=instance), run_id)

        after = instance.get_run_by_id(run_id)
        assert after is not None
        assert not set(WAITING_TAGS) & set(after.tags)
        assert after.tags[PARKED_TAG] == "approval"  # the timeline still knows it parked
        assert after.tags[EXECUTION_TAG] == run.tags[EXECUTION_TAG]
        from dagster import RunsFilter

        assert instance.get_runs(RunsFilter(tags={WAITING_TAG: "approval"})) == []
