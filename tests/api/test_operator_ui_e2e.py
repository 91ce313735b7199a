"""What an operator sees in the Dagster UI, end to end: a real Dagster (webserver, daemon,
sensors), the API, and Debian's chromium driven by playwright.

An approval workflow parks; the runs page filtered by `flowmaestro/waiting=approval` lists its
run (the screenshot in docs/operations.md is taken here); the run's tags, as the UI's GraphQL
gives them, are the ones an operator filters by, machine tags hidden; once approved, the filter
no longer lists it and the resumed run is in the parked run's group.
"""

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from flowmaestro_dagster.tags import (
    APPROVAL_URL_TAG,
    EXECUTION_TAG,
    LAUNCHED_BY_TAG,
    PARENT_RUN_TAG,
    ROOT_RUN_TAG,
    WAITING_NODE_TAG,
    WAITING_TAG,
    WORKFLOW_NAME_TAG,
)
from flowmaestro_dagster.testing.stack import DagsterStack
from tests.api import e2e
from tests.api.e2e import (
    approvals_of,
    chromium_page,
    decide,
    deploy,
    finished,
    start,
    status_is,
    wait_for,
)
from tests.builders import chain, node

pytestmark = pytest.mark.slow
PUBLIC_API_URL = "https://flowmaestro.example.com/api"
# docs/img holds the screenshots docs/operations.md shows: retaken there with
# FLOWMAESTRO_UPDATE_SCREENSHOTS=1, else into a temporary folder (a test run leaves the tree
# as it found it).
DOCS_IMAGES = Path(__file__).resolve().parents[2] / "docs" / "img"
IMAGES = (
    DOCS_IMAGES
    if os.environ.get("FLOWMAESTRO_UPDATE_SCREENSHOTS") == "1"
    else Path(tempfile.mkdtemp(prefix="fm-screenshots-"))
)
SCREENSHOT = IMAGES / "operator-waiting-run.png"
TAGS_SCREENSHOT = IMAGES / "operator-waiting-run-tags.png"

stack = e2e.stack_fixture(
    "operator-ui",
    FLOWMAESTRO_WAITPOINT_INTERVAL_SECONDS="1",
    FLOWMAESTRO_PUBLIC_API_URL=PUBLIC_API_URL,
)
settings = e2e.settings_fixture()
dagster_client, client, auth = e2e.dagster_client, e2e.client, e2e.auth

# The UI's own query for a filtered runs page: it reads a run's tags from here (hidden ones are
# left out by the server).
RUNS = """
query Runs($filter: RunsFilter) {
  runsOrError(filter: $filter) { ... on Runs { results { runId tags { key value } } } }
}
"""


def filtered_runs(stack: DagsterStack, key: str, value: str) -> dict[str, dict[str, str]]:
    """run id -> visible tags, of the runs the UI lists for the filter `tag:key=value`."""
    variables = {"filter": {"tags": [{"key": key, "value": value}]}}
    response = httpx.post(stack.graphql_url, json={"query": RUNS, "variables": variables})
    response.raise_for_status()
    results: list[dict[str, Any]] = response.json()["data"]["runsOrError"]["results"]
    return {r["runId"]: {t["key"]: t["value"] for t in r["tags"]} for r in results}


@pytest.mark.timeout(600)  # starting the stack takes most of the default
def test_a_waiting_run_is_listed_by_the_waiting_filter_until_it_is_approved(
    stack: DagsterStack, client: TestClient, auth: dict[str, str]
) -> None:
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    definition = chain(
        node("in", "input", inputName="post"),
        node("review", "humanReview", label="Editor sign-off", reviewPrompt="Publish {{post}}?"),
        node("out", "output", outputName="published", value="{{post}}"),
        name="Publish post",
    )
    workflow_id = deploy(client, auth, definition)
    execution_id = start(client, auth, workflow_id, {"post": "launch notes"})
    body = status_is(client, auth, execution_id, "waiting")
    run_id = body["runs"][0]["run_id"]
    [approval] = wait_for(lambda: approvals_of(client, auth, execution_id))

    listed = wait_for(lambda: filtered_runs(stack, WAITING_TAG, "approval").get(run_id))
    assert listed[WAITING_NODE_TAG] == "Editor sign-off"
    assert listed[APPROVAL_URL_TAG] == f"{PUBLIC_API_URL}/approvals/{approval['id']}"
    assert listed[EXECUTION_TAG] == execution_id
    assert listed[WORKFLOW_NAME_TAG] == "Publish post"
    assert "@" in listed[LAUNCHED_BY_TAG]  # "Launched by": the user's email
    email = listed[LAUNCHED_BY_TAG]
    assert not [key for key in listed if key.startswith(".")]  # machine tags stay hidden
    assert len(listed) <= 10, listed  # readable: what an operator filters by

    waiting_page = f"{stack.ui_url}/runs?q[]=tag:{WAITING_TAG}=approval"
    with chromium_page(viewport={"width": 1280, "height": 800}) as page:
        page.goto(waiting_page)
        row = page.get_by_text(run_id[:8], exact=True)
        row.first.wait_for(timeout=60_000)
        skip = page.get_by_role("button", name="Skip")  # the UI's one-time newsletter offer
        with contextlib.suppress(PlaywrightTimeout):
            skip.wait_for(timeout=5_000)
            skip.click()
        assert page.get_by_text(email).count() >= 1  # launched by the email, not a UUID
        SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SCREENSHOT))
        page.get_by_text("View all tags").first.click()
        dialog = page.get_by_role("dialog")
        dialog.get_by_text(WAITING_NODE_TAG).first.wait_for(timeout=30_000)
        shown = dialog.inner_text()
        assert WAITING_TAG in shown and "Editor sign-off" in shown and "approval" in shown
        assert ".dagster/" not in shown and ".flowmaestro/" not in shown
        page.wait_for_timeout(1_000)  # the dialog fades in
        page.screenshot(path=str(TAGS_SCREENSHOT))
        page.keyboard.press("Escape")

        decide(client, auth, approval["id"], decision="approve")
        done = finished(client, auth, execution_id)
        assert done["status"] == "succeeded", done

        assert run_id not in filtered_runs(stack, WAITING_TAG, "approval")
        page.goto(waiting_page)
        page.get_by_text("No runs found").or_(page.get_by_text("No matching runs")).first.wait_for(
            timeout=60_000
        )
        assert row.count() == 0

    resumed = done["runs"][-1]["run_id"]
    assert resumed != run_id
    instance = stack.instance()
    resumed_run = instance.get_run_by_id(resumed)
    assert resumed_run is not None
    assert resumed_run.tags[PARENT_RUN_TAG] == run_id and resumed_run.tags[ROOT_RUN_TAG] == run_id
    root, group = instance.get_run_group(resumed)  # the UI's "run group" of the run page
    assert root == run_id and {r.run_id for r in group} >= {run_id, resumed}
    assert WAITING_TAG not in resumed_run.tags
