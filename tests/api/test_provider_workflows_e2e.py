"""Real corpus workflows that call SaaS providers, end to end (issue 19).

One real stack (`dagster dev` and the API) for the module. The test user adds a connection per
provider through `POST /connections` whose `base_url` is the fake provider server (one local
server for every catalogued provider, answering each operation's documented response); the
LLM is a fake OpenAI-compatible server (also the transcriber and the voice), Slack an echo
server behind the operators' `FLOWMAESTRO_CONNECTIONS__SLACK__URL`. Every workflow is loaded
verbatim from tests/corpus/flowmaestro; all executions start at once and each test awaits its
own, then checks it succeeded, the exact requests each provider received (method, path, the
connection's secret where the provider's auth scheme puts it, the body fields the workflow's
templates fill) and that later nodes read the provider's answers (`{{notionBug.url}}`).
"""

import base64
import email
import email.message
import email.policy
import io
import json
import threading
import wave
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from cryptography.fernet import Fernet
from fastapi.testclient import TestClient

from flowmaestro_api.settings import ApiSettings
from flowmaestro_dagster.control.client import DagsterClient
from flowmaestro_dagster.testing import EchoServer, FakeLLMServer, RecordedRequest
from flowmaestro_dagster.testing.fake_llm import API_KEY as LLM_KEY
from flowmaestro_dagster.testing.fake_media import FakeMediaServer
from flowmaestro_dagster.testing.fake_providers import FakeProviderServer, ProviderRequest
from flowmaestro_dagster.testing.stack import DagsterStack
from tests.api import e2e
from tests.api.e2e import api_client, deploy, finished, new_user, running_stack, stack_settings
from tests.conftest import CORPUS

pytestmark = pytest.mark.slow

CONNECTIONS_KEY = Fernet.generate_key().decode()


def basic(username: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode()


@dataclass(frozen=True)
class Account:
    """A provider connection's credentials and the header its scheme puts them in."""

    credentials: dict[str, str]
    header: str
    value: str


def bearer(secret: str) -> Account:
    return Account({"access_token": secret}, "authorization", f"Bearer {secret}")


ACCOUNTS = {
    "notion": bearer("notion-secret-0001"),
    "airtable": bearer("airtable-secret-0002"),
    "gmail": bearer("gmail-secret-0003"),
    "hubspot": bearer("hubspot-secret-0004"),
    "linkedin": bearer("linkedin-secret-0005"),
    "google-sheets": bearer("google-sheets-secret-0010"),
    "intercom": bearer("intercom-secret-0011"),
    "microsoft-teams": bearer("microsoft-teams-secret-0012"),
    "looker": Account(
        {"access_token": "looker-secret-0013"}, "authorization", "token looker-secret-0013"
    ),
    "discord": Account(
        {"token": "discord-secret-0006"}, "authorization", "Bot discord-secret-0006"
    ),
    "apollo": Account({"api_key": "apollo-secret-0007"}, "x-api-key", "apollo-secret-0007"),
    "zendesk": Account(
        {"username": "agent@example.com/token", "password": "zendesk-secret-0008"},
        "authorization",
        basic("agent@example.com/token", "zendesk-secret-0008"),
    ),
    "amplitude": Account(
        {"username": "amp-project-key", "password": "amplitude-secret-0009"},
        "authorization",
        basic("amp-project-key", "amplitude-secret-0009"),
    ),
}
NOTION_VERSION = "2022-06-28"
NOTION_URL = "https://www.notion.so/Tuscan-kale-598337872cf94fdf8782e53db20768a5"


def corpus(path: str) -> dict[str, Any]:
    document: dict[str, Any] = json.loads((CORPUS / path).read_text())
    return document


def wav_bytes(seconds: float = 0.5) -> bytes:
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as audio:
        audio.setnchannels(1)
        audio.setsampwidth(2)
        audio.setframerate(8000)
        audio.writeframes(b"\x00\x00" * int(seconds * 8000))
    return buffer.getvalue()


# -- what the model answers ---------------------------------------------------------------------

TASKS = [
    {"title": "Ship the billing page", "owner": "Ada", "due": "Friday"},
    {"title": "Run the migration", "owner": "Bo", "due": None},
]
CATEGORIZATION = {
    "category": "bug",
    "sentiment": "negative",
    "priority": "high",
    "summary": "Export button crashes",
    "actionRequired": True,
    "suggestedTeam": "engineering",
    "keywords": ["export"],
}


class Model:
    """The fake model's answers, by a marker in the prompt or system message (executions run
    at once, so there is no one queue); a list answers in turn."""

    def __init__(self, answers: dict[str, str | list[str]]) -> None:
        self._answers = {k: deque(v) if isinstance(v, list) else v for k, v in answers.items()}
        self._lock = threading.Lock()

    def __call__(self, request: RecordedRequest) -> str | None:
        text = f"{request.system or ''}\n{request.prompt or ''}"
        with self._lock:
            for marker, answer in self._answers.items():
                if marker in text:
                    return answer.popleft() if isinstance(answer, deque) else answer
        return None


def route(value: str) -> str:
    return json.dumps({"route": value, "reason": "the fake model says so"})


MODEL = Model(
    {
        # discord-community-bot: two executions, the router takes "bug" once and "other" once.
        "Analyze this Discord message": json.dumps(CATEGORIZATION),
        "- bug: Bug Report - Technical issues": [route("bug"), route("other")],
        # lead-enrichment
        "Merge and analyze lead data": '{"mergedProfile": {"company": "Initech"}}',
        "Score this lead": '{"score": 72, "tier": "mid-market"}',
        "- enterprise: Enterprise - High-value": route("mid-market"),
        # zendesk-ticket-intelligence
        "Classify this ticket": '{"category": "billing", "urgency": "low"}',
        "Analyze sentiment": '{"sentiment": "neutral"}',
        "Build context from": "Returning customer, one earlier billing question.",
        "- escalate: Escalate - Immediate escalation": route("automate"),
        "Generate response for": "Your refund was issued today; expect it in 3 days.",
        # intercom-conversation-analyzer
        "Analyze support conversation": "Customers ask how to export reports.",
        "- docs: Documentation - Docs update needed": route("docs"),
        # voice-to-task-creator
        "Extract tasks from this voice note": json.dumps(TASKS),
    }
)

# -- the fakes and the stack --------------------------------------------------------------------


@pytest.fixture(scope="module")
def providers() -> Iterator[FakeProviderServer]:
    with FakeProviderServer() as server:
        yield server


@pytest.fixture(scope="module")
def slack() -> Iterator[EchoServer]:
    with EchoServer() as server:
        yield server


@pytest.fixture(scope="module")
def media() -> Iterator[FakeMediaServer]:
    chat = FakeLLMServer(responder=MODEL, default="noted")
    with chat, FakeMediaServer(chat=chat) as server:
        server.transcript = "Ada ships the billing page on Friday; Bo runs the migration."
        yield server


@pytest.fixture(scope="module")
def files_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("provider-files")


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory,
    media: FakeMediaServer,
    slack: EchoServer,
    files_dir: Path,
) -> Iterator[DagsterStack]:
    llm = {"providers": {"openai": {"base_url": media.url, "api_key": LLM_KEY}}}
    env = {
        "FLOWMAESTRO_LLM": json.dumps(llm),
        "FLOWMAESTRO_HTTP__ALLOW_LOOPBACK": "true",  # the fakes are on 127.0.0.1
        "FLOWMAESTRO_CONNECTIONS__SLACK__URL": slack.url("/hooks/slack"),
        "FLOWMAESTRO_CONNECTIONS_KEYS": CONNECTIONS_KEY,
        "FLOWMAESTRO_FILES__URL": str(files_dir),
    }
    with running_stack(tmp_path_factory.mktemp("provider-workflows"), extra_env=env) as started:
        yield started


@pytest.fixture(scope="module")
def settings(stack: DagsterStack, files_dir: Path) -> ApiSettings:
    return stack_settings(
        stack,
        connections_keys=CONNECTIONS_KEY,
        http={"allow_loopback": True},
        files={"url": str(files_dir)},
    )


dagster_client = e2e.dagster_client


@pytest.fixture(scope="module")
def client(settings: ApiSettings, dagster_client: DagsterClient) -> Iterator[TestClient]:
    with api_client(settings, dagster_client) as test_client:
        yield test_client


@pytest.fixture(scope="module")
def auth(stack: DagsterStack) -> dict[str, str]:
    """The one user of the module: the connections and the workflows are theirs."""
    return new_user(stack.database_url, "provider-workflows")


@pytest.fixture(scope="module")
def connections(
    client: TestClient, auth: dict[str, str], providers: FakeProviderServer
) -> dict[str, dict[str, Any]]:
    """A connection per provider, added through the API (the answers, by provider)."""
    made = {}
    for provider, account in ACCOUNTS.items():
        response = client.post(
            "/connections",
            json={
                "provider": provider,
                "name": f"my-{provider}",
                "credentials": account.credentials,
                "base_url": providers.base_url(provider),
            },
            headers=auth,
        )
        assert response.status_code == 201, response.text
        made[provider] = response.json()
    return made


# -- the workflows and their executions ---------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """A corpus workflow and how it is started (its inputs; files uploaded first)."""

    path: str
    inputs: dict[str, Any] = field(default_factory=dict)
    uploads: dict[str, tuple[str, bytes]] = field(default_factory=dict)  # input: (name, data)


def discord_message(channel_id: str, base: str) -> dict[str, Any]:
    return {
        "author": "ada",
        "channel": "feedback",
        "channelId": channel_id,
        "content": "Export crashes when I click it",
        "env": {
            "NOTION_BUGS_DB": "db-discord-bugs",
            "AIRTABLE_FEEDBACK_BASE": base,
            "ALERTS_EMAIL": "oncall@example.com",
        },
    }


CASES = {
    # The router answers "bug" to one of these and "other" to the other (see `discord`).
    "discord_1": Case(
        "patterns/intermediate/discord-community-bot.json", discord_message("c-1", "appOne")
    ),
    "discord_2": Case(
        "patterns/intermediate/discord-community-bot.json", discord_message("c-2", "appTwo")
    ),
    "lead": Case(
        "patterns/intermediate/lead-enrichment.json",
        {"email": "dana@initech.example", "source": "webinar"},
    ),
    "zendesk": Case(
        "patterns/advanced/zendesk-ticket-intelligence.json",
        {
            "ticketId": "4711",
            "subject": "Refund?",
            "body": "Where is my refund?",
            "customerEmail": "erin@example.com",
            "env": {"NOTION_SUPPORT_LOG": "db-support-log"},
        },
    ),
    "support": Case(
        "patterns/advanced/intercom-conversation-analyzer.json",
        {
            "conversationId": "215",
            "ticketId": "35436",
            "env": {
                "NOTION_KB_DATABASE": "db-kb",
                "SUPPORT_ANALYTICS_SHEET": "sheet-support",
                "LOOKER_SUPPORT_QUERY": "q-77",
            },
        },
    ),
    "voice_tasks": Case(
        "voice-audio/voice-to-task-creator.json", uploads={"voiceNote": ("note.wav", wav_bytes())}
    ),
}


@dataclass(frozen=True)
class Started:
    workflow_id: str
    execution_id: str


TEAMS_CHANNEL = {"id": "19:support0123@thread.tacv2", "displayName": "Support"}


@pytest.fixture(scope="module")
def started(
    client: TestClient,
    auth: dict[str, str],
    connections: dict[str, dict[str, Any]],
    providers: FakeProviderServer,
) -> dict[str, Started]:
    """Every case deployed and started, one after the other, before any is awaited."""
    # The team's channels include the one intercom-conversation-analyzer posts to by name.
    providers.reply("microsoft-teams", "listChannels", {"value": [TEAMS_CHANNEL]})
    runs = {}
    deployed: dict[str, str] = {}  # one deployment a corpus file, however many executions
    for name, case in CASES.items():
        if case.path not in deployed:
            deployed[case.path] = deploy(client, auth, corpus(case.path))
        workflow_id = deployed[case.path]
        inputs = dict(case.inputs)
        for input_name, (file_name, data) in case.uploads.items():
            uploaded = client.post(
                f"/workflows/{workflow_id}/files",
                files={"file": (file_name, data, "audio/wav")},
                headers=auth,
            )
            assert uploaded.status_code == 201, uploaded.text
            inputs[input_name] = uploaded.json()
        runs[name] = Started(workflow_id, e2e.start(client, auth, workflow_id, inputs))
    return runs


def succeeded(client: TestClient, auth: dict[str, str], run: Started) -> dict[str, Any]:
    """The execution's body once it finished, which must be a success."""
    body = finished(client, auth, run.execution_id, timeout=180)
    failed = [(n["node_id"], n.get("error")) for n in body["nodes"] if n["status"] == "failed"]
    assert body["status"] == "succeeded", (body.get("error"), failed)
    return body


@dataclass(frozen=True)
class Routed:
    run: Started
    body: dict[str, Any]
    inputs: dict[str, Any]


@pytest.fixture(scope="module")
def discord(
    client: TestClient, auth: dict[str, str], started: dict[str, Started]
) -> dict[str, Routed]:
    """The two discord-community-bot executions by the route their router took (the two run
    at once, so which asked the model first is up to the scheduler)."""
    routed = {}
    for name in ("discord_1", "discord_2"):
        body = succeeded(client, auth, started[name])
        taken = output_of(client, auth, started[name], "router-1")["route"]
        routed[taken] = Routed(started[name], body, CASES[name].inputs)
    assert set(routed) == {"bug", "other"}
    return routed


def output_of(client: TestClient, auth: dict[str, str], run: Started, node_id: str) -> Any:
    answer = client.get(f"/executions/{run.execution_id}/nodes/{node_id}/output", headers=auth)
    assert answer.status_code == 200, answer.text
    return answer.json()


def calls(
    providers: FakeProviderServer,
    provider: str,
    operation: str,
    where: Callable[[ProviderRequest], bool] = lambda _: True,
) -> list[ProviderRequest]:
    return [r for r in providers.requests_to(provider, operation) if where(r)]


def authorized(request: ProviderRequest) -> bool:
    """The connection's secret where the provider's scheme puts it (and nowhere in the URL)."""
    account = ACCOUNTS[request.provider]
    secret = account.credentials.get("password") or next(iter(account.credentials.values()))
    in_url = any(secret in v for values in request.query.values() for v in values)
    return request.headers.get(account.header) == account.value and not in_url


def gmail_message(request: ProviderRequest) -> email.message.EmailMessage:
    raw = request.json["raw"]
    data = base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4))
    message = email.message_from_bytes(data, policy=email.policy.default)
    assert isinstance(message, email.message.EmailMessage)
    return message


def slack_texts(slack: EchoServer) -> list[str]:
    return [json.loads(r.body).get("text", "") for r in slack.requests]


# -- the tests ----------------------------------------------------------------------------------


def test_connections_are_the_users_and_never_show_their_secrets(
    client: TestClient,
    auth: dict[str, str],
    connections: dict[str, dict[str, Any]],
    providers: FakeProviderServer,
) -> None:
    listed = client.get("/connections", headers=auth).json()["items"]
    assert {c["provider"] for c in listed} == set(ACCOUNTS)
    for connection in listed:
        account = ACCOUNTS[connection["provider"]]
        assert connection["credential_keys"] == sorted(account.credentials)
        assert connection["is_default"] is True
        assert connection["base_url"] == providers.base_url(connection["provider"])
        assert not any(secret in json.dumps(connection) for secret in account.credentials.values())


def test_a_discord_bug_report_becomes_a_notion_page_slack_links_and_discord_answers(
    client: TestClient,
    auth: dict[str, str],
    discord: dict[str, Routed],
    providers: FakeProviderServer,
    slack: EchoServer,
) -> None:
    run, body, inputs = discord["bug"].run, discord["bug"].body, discord["bug"].inputs
    statuses = e2e.node_statuses(body)
    assert statuses["action-notion-bug"] == "succeeded"
    assert statuses["action-airtable"] == statuses["action-notion-feature"] == "skipped"

    [page] = calls(providers, "notion", "createPage", lambda r: "db-discord-bugs" in r.text)
    assert (page.method, page.path) == ("POST", "/pages")
    assert authorized(page) and page.headers["notion-version"] == NOTION_VERSION
    assert page.json["parent"] == {"database_id": "db-discord-bugs"}
    properties = page.json["properties"]
    assert properties["source"] == {"rich_text": [{"text": {"content": "Discord"}}]}
    assert properties["reporter"] == {"rich_text": [{"text": {"content": "ada"}}]}
    assert output_of(client, auth, run, "action-notion-bug")["notionBug"]["url"] == NOTION_URL

    # {{notionBug.url}}: the page Notion answered, in the next node's Slack message.
    [eng] = [t for t in slack_texts(slack) if t.startswith("\U0001f41b New bug from Discord")]
    assert f"*Notion:* {NOTION_URL}" in eng

    [reply] = calls(providers, "discord", "sendMessage")
    assert (reply.method, reply.path) == ("POST", f"/channels/{inputs['channelId']}/messages")
    assert authorized(reply)
    assert reply.json["content"].startswith("Thanks for your feedback! We've logged this")
    assert output_of(client, auth, run, "action-discord-reply")["discordReply"]["id"]


def test_other_discord_feedback_goes_to_airtable_and_an_urgent_gmail(
    client: TestClient,
    auth: dict[str, str],
    discord: dict[str, Routed],
    providers: FakeProviderServer,
) -> None:
    run, body, inputs = discord["other"].run, discord["other"].body, discord["other"].inputs
    statuses = e2e.node_statuses(body)
    assert statuses["action-notion-bug"] == statuses["action-discord-reply"] == "skipped"

    [record] = calls(providers, "airtable", "createRecord")
    base = inputs["env"]["AIRTABLE_FEEDBACK_BASE"]
    assert (record.method, record.path) == ("POST", f"/{base}/Community%20Feedback")
    assert authorized(record)
    fields = record.json["fields"]
    assert set(fields) == {"Summary", "Category", "Sentiment", "Priority", "Source", "Keywords"}
    assert fields["Source"] == "Discord"

    [sent] = calls(providers, "gmail", "sendMessage")
    assert (sent.method, sent.path) == ("POST", "/users/me/messages/send")
    assert authorized(sent)
    message = gmail_message(sent)
    assert message["To"] == "oncall@example.com"
    assert message["Subject"].startswith("[URGENT] High priority Discord feedback:")
    assert "Original message: Export crashes when I click it" in message.get_content()

    # The providers' JSON is the nodes' output, and later templates read it.
    assert output_of(client, auth, run, "action-airtable")["airtableRecord"]["id"] == (
        "recXYZ123abcDEF45"
    )
    assert output_of(client, auth, run, "action-gmail")["emailSent"] == {
        "id": "18c2a1f0e4b5d6c8",
        "threadId": "18c2a1f0e4b5d6c8",
        "labelIds": ["SENT"],
    }
    assert body["outputs"]["result"]["airtableId"] == "recXYZ123abcDEF45"


def test_a_mid_market_lead_is_enriched_and_scored_in_hubspot(
    client: TestClient,
    auth: dict[str, str],
    started: dict[str, Started],
    providers: FakeProviderServer,
) -> None:
    run = started["lead"]
    body = succeeded(client, auth, run)
    assert e2e.node_statuses(body)["action-salesforce"] == "skipped"

    [apollo] = calls(providers, "apollo", "enrichPerson")
    assert (apollo.method, apollo.path) == ("POST", "/people/match")
    assert apollo.query["email"] == ["dana@initech.example"] and authorized(apollo)
    [profile] = calls(providers, "linkedin", "getProfile")
    assert (profile.method, profile.path) == ("GET", "/v2/userinfo") and authorized(profile)

    [update] = calls(providers, "hubspot", "updateContact", lambda r: "dana@" in r.path)
    assert update.method == "PATCH" and authorized(update)
    assert update.path == "/crm/v3/objects/contacts/dana@initech.example"
    assert update.query["idProperty"] == ["email"]
    assert update.json["properties"]["enriched_data"] == '{"mergedProfile": {"company": "Initech"}}'

    [event] = calls(providers, "amplitude", "trackEvent")
    assert authorized(event)
    assert event.json["api_key"] == "amp-project-key"
    [tracked] = event.json["events"]
    assert (tracked["event_type"], tracked["user_id"]) == ("lead_qualified", "dana@initech.example")
    assert tracked["event_properties"]["source"] == "webinar"

    hubspot = output_of(client, auth, run, "action-hubspot-update")["hubspotUpdate"]
    assert hubspot["id"]
    assert body["outputs"]["result"]["email"] == "dana@initech.example"


def test_an_automatable_zendesk_ticket_is_answered_tagged_and_logged_in_notion(
    client: TestClient,
    auth: dict[str, str],
    started: dict[str, Started],
    providers: FakeProviderServer,
) -> None:
    run = started["zendesk"]
    body = succeeded(client, auth, run)
    assert body["outputs"]["ticketProcessed"].startswith("Ticket processed via")

    [search] = calls(providers, "zendesk", "searchTickets")
    assert (search.method, search.path) == ("GET", "/search") and authorized(search)
    assert search.query["query"] == ["type:ticket requester:erin@example.com"]

    [comment] = calls(providers, "zendesk", "addComment")
    assert (comment.method, comment.path) == ("PUT", "/tickets/4711") and authorized(comment)
    assert comment.json["ticket"]["comment"]["body"] == (
        "Your refund was issued today; expect it in 3 days."
    )
    [tag] = calls(providers, "zendesk", "updateTicket", lambda r: r.path == "/tickets/4711")
    assert tag.json["ticket"]["tags"][0] == "ai-classified"

    [page] = calls(providers, "notion", "createPage", lambda r: "db-support-log" in r.text)
    assert authorized(page) and page.json["parent"] == {"database_id": "db-support-log"}
    title = page.json["properties"]["title"]
    assert title == {"title": [{"text": {"content": "Ticket 4711"}}]}
    assert output_of(client, auth, run, "action-notion-log")["notionLog"]["url"] == NOTION_URL


def test_a_support_conversation_is_logged_to_sheets_notion_looker_and_teams(
    client: TestClient,
    auth: dict[str, str],
    started: dict[str, Started],
    providers: FakeProviderServer,
) -> None:
    run = started["support"]
    body = succeeded(client, auth, run)
    statuses = e2e.node_statuses(body)
    assert statuses["action-notion"] == "succeeded" and statuses["action-jira"] == "skipped"

    [conversation] = calls(providers, "intercom", "getConversation")
    assert (conversation.method, conversation.path) == ("GET", "/conversations/215")
    assert authorized(conversation)
    [ticket] = calls(providers, "zendesk", "getTicket")
    assert (ticket.method, ticket.path) == ("GET", "/tickets/35436") and authorized(ticket)

    [row] = calls(providers, "google-sheets", "appendValues")
    assert row.method == "POST" and authorized(row)
    assert row.path == "/spreadsheets/sheet-support/values/Conversation%20Log:append"
    assert row.query["valueInputOption"] == ["USER_ENTERED"]
    [values] = row.json["values"]
    assert len(values) == 7 and values[0].startswith("20")  # {{$now}}
    appended = output_of(client, auth, run, "action-sheets")["sheetsResult"]
    assert appended["updates"]["updatedRows"] >= 1  # the Sheets answer is the node's output

    [page] = calls(providers, "notion", "createPage", lambda r: "db-kb" in r.text)
    assert authorized(page)
    assert page.json["properties"]["status"] == {"rich_text": [{"text": {"content": "Draft"}}]}

    [query] = calls(providers, "looker", "runQuery")
    assert (query.method, query.path) == ("GET", "/queries/q-77/run/json") and authorized(query)

    [post] = calls(providers, "microsoft-teams", "sendMessage")
    assert post.method == "POST" and authorized(post)
    assert post.path.endswith(f"/channels/{TEAMS_CHANNEL['id']}/messages")
    assert post.json["body"]["content"].startswith("\U0001f4ca Conversation:")


def test_each_task_of_a_voice_note_becomes_a_notion_page(
    client: TestClient,
    auth: dict[str, str],
    started: dict[str, Started],
    providers: FakeProviderServer,
) -> None:
    succeeded(client, auth, started["voice_tasks"])
    pages = calls(
        providers, "notion", "createPage", lambda r: r.json["parent"] == {"database_id": "Tasks"}
    )
    assert len(pages) == len(TASKS)
    assert all(authorized(p) for p in pages)
