"""The approval page (/approve/{token}): the form, one decision, and what it shows escaped.

The approval is a waitpoint row written here, as a humanReview node writes it; the browser
round trip with a real Dagster is test_waitpoints_e2e's Playwright test.
"""

from collections.abc import Iterator
from html.parser import HTMLParser
from typing import Any

import pytest
from fastapi.testclient import TestClient

from flowmaestro_api.main import create_app
from flowmaestro_api.settings import ApiSettings
from flowmaestro_dagster.control.waitpoints import signed_token
from flowmaestro_dagster.store.db import get_engine, session_scope
from flowmaestro_dagster.store.models import Waitpoint
from tests.api.conftest import UNREACHABLE_DAGSTER, deployed_workflow

SECRET = "test-secret-key-0123456789"


class Page(HTMLParser):
    """Every tag with its attributes, and the text inside each element, by id (else by tag)."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: dict[str, str] = {}
        self._open: list[str] = []
        self.feed(text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))
        if tag not in ("input", "meta"):  # void elements never close
            key = dict(attrs).get("id") or tag
            self._open.append(key)
            self.text.setdefault(key, "")

    def handle_endtag(self, tag: str) -> None:
        if self._open:
            self._open.pop()

    def handle_data(self, data: str) -> None:
        for key in self._open:
            self.text[key] += data

    def named(self, tag: str) -> list[dict[str, str | None]]:
        return [attrs for name, attrs in self.tags if name == tag]


@pytest.fixture
def client(database_url: str) -> Iterator[TestClient]:
    settings = ApiSettings(
        database_url=database_url,
        dagster_graphql_url=UNREACHABLE_DAGSTER,
        launch_on_submit=False,
        secret_key=SECRET,
    )
    with TestClient(create_app(settings), raise_server_exceptions=False) as test_client:
        yield test_client


def approval_link(client: TestClient, auth: dict[str, str], database_url: str, **spec: Any) -> str:
    """The page path of a pending approval of a new execution."""
    workflow_id = deployed_workflow(client, auth)
    started = client.post(
        f"/workflows/{workflow_id}/executions", json={"inputs": {"who": "x"}}, headers=auth
    )
    assert started.status_code == 201, started.text
    with session_scope(get_engine(database_url)) as session:
        row = Waitpoint(
            execution_id=started.json()["id"],
            node_id="review",
            step_key="review",
            run_id="run-1",
            kind="approval",
            spec={"input_type": "text", "required": False, **spec},
        )
        session.add(row)
        session.flush()
        waitpoint_id = row.id
    return f"/approve/{signed_token(SECRET, 'approve', waitpoint_id)}"


def test_the_page_shows_the_form_and_records_one_decision(
    client: TestClient, auth: dict[str, str], database_url: str
) -> None:
    link = approval_link(client, auth, database_url, prompt="Ship it?", label="Release")
    shown = client.get(link)
    assert shown.status_code == 200 and shown.headers["content-type"].startswith("text/html")
    page = Page(shown.text)
    assert page.text["prompt"] == "Ship it?"
    assert [a["name"] for a in page.named("textarea")] == ["value"]
    assert [a.get("id") for a in page.named("input")] == ["comment"]
    buttons = {a["id"]: (a["name"], a["value"]) for a in page.named("button")}
    assert buttons == {"approve": ("decision", "approve"), "reject": ("decision", "reject")}
    assert page.named("form")[0]["id"] == "decision-form"

    decided = client.post(link, data={"decision": "approve", "comment": "looks good"})
    assert decided.status_code == 200
    assert Page(decided.text).text["result"] == "Recorded: approved."

    again = client.get(link)
    assert again.status_code == 409
    assert Page(again.text).text["result"] == "This review was already decided."
    second = client.post(link, data={"decision": "reject"})
    assert second.status_code == 409
    assert Page(second.text).text["result"] == "the approval was already decided"


@pytest.mark.parametrize(
    ("input_type", "widget"),
    [("boolean", ["true", "false"]), ("number", ["number"]), ("json", ["6"])],
)
def test_the_response_field_follows_the_input_type(
    client: TestClient,
    auth: dict[str, str],
    database_url: str,
    input_type: str,
    widget: list[str],
) -> None:
    page = Page(client.get(approval_link(client, auth, database_url, input_type=input_type)).text)
    if input_type == "boolean":
        assert [a["value"] for a in page.named("input") if a["name"] == "value"] == widget
    elif input_type == "number":
        assert [a["type"] for a in page.named("input") if a["name"] == "value"] == widget
    else:
        assert [a["rows"] for a in page.named("textarea")] == widget


def test_what_the_workflow_shows_is_escaped_not_run(
    client: TestClient, auth: dict[str, str], database_url: str
) -> None:
    prompt = "Publish <script>alert('prompt')</script> & more?"
    label = "</title><script>alert('label')</script>"
    placeholder = '"><script>alert("placeholder")</script>'
    link = approval_link(
        client, auth, database_url, prompt=prompt, label=label, placeholder=placeholder
    )
    shown = client.get(link)
    assert "<script>" not in shown.text
    page = Page(shown.text)
    assert not page.named("script")
    assert page.text["prompt"] == prompt
    assert page.text["title"] == page.text["h1"] == label
    assert page.named("textarea")[0]["placeholder"] == placeholder

    client.post(link, data={"decision": "reject"})
    decided = client.get(link)  # the already-decided page shows the prompt too
    assert decided.status_code == 409 and "<script>" not in decided.text
    assert Page(decided.text).text["p"] == prompt


def test_a_forged_link_is_not_valid(client: TestClient) -> None:
    for response in (
        client.get("/approve/not-a-waitpoint.0123"),
        client.post("/approve/not-a-waitpoint.0123", data={"decision": "approve"}),
    ):
        assert response.status_code == 404
        assert "This approval link is not valid." in response.text


def test_a_required_response_is_marked_required_and_an_optional_one_optional(
    client: TestClient, auth: dict[str, str], database_url: str
) -> None:
    required = Page(client.get(approval_link(client, auth, database_url, required=True)).text)
    assert required.text["response-label"] == "Response (required)"
    assert "required" in required.named("textarea")[0]
    optional = Page(client.get(approval_link(client, auth, database_url)).text)
    assert optional.text["response-label"] == "Response (optional)"
    assert "required" not in optional.named("textarea")[0]
    # Reject needs no response: the browser skips the form's checks for it.
    assert "formnovalidate" in next(b for b in required.named("button") if b["id"] == "reject")


def test_each_yes_no_option_has_its_own_label(
    client: TestClient, auth: dict[str, str], database_url: str
) -> None:
    page = Page(client.get(approval_link(client, auth, database_url, input_type="boolean")).text)
    radios = [a for a in page.named("input") if a.get("type") == "radio"]
    assert [(r["id"], r["value"]) for r in radios] == [
        ("value-true", "true"),
        ("value-false", "false"),
    ]
    assert [a.get("for") for a in page.named("label") if a.get("for", "").startswith("value-")] == [
        "value-true",
        "value-false",
    ]
    assert [a["class"] for a in page.named("div")] == ["option", "option"]


def decision_of(database_url: str, link: str) -> dict[str, Any] | None:
    from flowmaestro_dagster.control.waitpoints import verify_token

    waitpoint_id = verify_token(SECRET, "approve", link.rsplit("/", 1)[1])
    with session_scope(get_engine(database_url)) as session:
        row = session.get(Waitpoint, waitpoint_id)
        assert row is not None
        return row.resolution


def test_yes_with_approve_is_an_approval_whose_response_is_true(
    client: TestClient, auth: dict[str, str], database_url: str
) -> None:
    link = approval_link(client, auth, database_url, input_type="boolean", required=True)
    decided = client.post(link, data={"decision": "approve", "value": "true"})
    assert decided.status_code == 200
    assert Page(decided.text).text["result"] == "Recorded: approved."
    resolution = decision_of(database_url, link)
    assert resolution is not None
    assert (resolution["decision"], resolution["value"], resolution["by"]) == (
        "approve",
        True,
        "link",
    )


def test_approve_without_a_required_response_is_refused_and_changes_nothing(
    client: TestClient, auth: dict[str, str], database_url: str
) -> None:
    link = approval_link(client, auth, database_url, input_type="number", required=True)
    refused = client.post(link, data={"decision": "approve", "value": ""})
    assert refused.status_code == 422
    assert Page(refused.text).text["result"] == "a response is required"
    assert decision_of(database_url, link) is None
    rejected = client.post(link, data={"decision": "reject"})  # no response needed to reject
    assert rejected.status_code == 200
    assert Page(rejected.text).text["result"] == "Recorded: rejected."


def test_the_page_in_a_real_browser_lays_out_and_enforces_a_required_yes_no(
    database_url: str, client: TestClient, auth: dict[str, str]
) -> None:
    """Headless Chromium (Debian's, driven by Playwright): each option on its own line with a
    clickable label, Approve held back until a required answer is chosen, Reject never."""

    from tests.api.e2e import chromium_page, serving

    link = approval_link(
        client, auth, database_url, input_type="boolean", required=True, prompt="Ship?"
    )
    settings = ApiSettings(
        database_url=database_url,
        dagster_graphql_url=UNREACHABLE_DAGSTER,
        launch_on_submit=False,
        secret_key=SECRET,
    )
    with serving(create_app(settings)) as base:
        url = f"{base}{link}"
        with chromium_page() as page:
            page.goto(url)
            assert page.text_content("legend") == "Response (required)"
            yes, no = page.locator("#value-true"), page.locator("#value-false")
            yes_box, no_box = yes.bounding_box(), no.bounding_box()
            assert yes_box is not None and no_box is not None
            assert no_box["y"] >= yes_box["y"] + yes_box["height"]  # one line each
            assert abs(no_box["x"] - yes_box["x"]) < 1
            page.click("#approve")  # nothing chosen: the browser keeps the form
            assert page.url == url and page.locator("#result").count() == 0
            assert decision_of(database_url, link) is None
            page.click("label[for=value-true]")  # the label picks its option
            assert yes.is_checked() and not no.is_checked()
            page.click("#approve")
            page.wait_for_selector("#result")
            assert page.text_content("#result") == "Recorded: approved."
    resolution = decision_of(database_url, link)
    assert resolution is not None and (resolution["decision"], resolution["value"]) == (
        "approve",
        True,
    )
