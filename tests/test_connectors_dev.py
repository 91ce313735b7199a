"""The developer-tool providers (github, linear, jira, zendesk, intercom) beyond their contract
examples: GitHub's Link-header pages, token refresh and rate limits, repository and path
handling, GraphQL errors from Linear, Jira's and Zendesk's sites and basic auth, and that every
builder operation and corpus use of these providers resolves.
"""

import base64
import json
from collections.abc import Iterator
from typing import Any

import pytest

from flowmaestro_dagster.errors import (
    NodeConfigurationError,
    NodeExecutionError,
    TransientNodeError,
)
from flowmaestro_dagster.nodes.connectors import ConnectorRequest
from flowmaestro_dagster.nodes.connectors.declarative import DeclarativeConnector, catalogue
from flowmaestro_dagster.settings import ConnectionSettings, Settings
from flowmaestro_dagster.spec.parse import parse_workflow
from tests.conftest import corpus_files
from tests.test_declarative_connectors import LOOPBACK, TOKEN, ScriptedServer, _base_path, _ctx

DEV = ("github", "linear", "jira", "zendesk", "intercom")
# The upstream builder's operations and their parameter names for these providers
# (flowmaestro-operations.json, nbaghiro/flowmaestro @7a063de7; github, jira and zendesk have
# none there).
UPSTREAM: dict[str, dict[str, list[str]]] = {
    "linear": {
        "createIssue": ["teamId", "title", "description", "assigneeId", "priority", "stateId", "labelIds"],
        "getIssue": ["id"],
        "listIssues": ["teamId", "first", "after", "filter"],
        "listTeams": [],
        "listUsers": [],
        "listWorkflowStates": ["teamId"],
        "updateIssue": ["id", "title", "description", "assigneeId", "priority", "stateId", "labelIds"],
    },
    "intercom": {
        "listCompanies": ["per_page", "starting_after"],
        "listContacts": ["email", "per_page", "starting_after"],
        "listConversations": ["per_page", "starting_after"],
        "createNote": ["contactId", "body", "admin_id"],
        "listTags": [],
    },
}  # fmt: skip
# Intercom lists companies by page number (POST /companies/list?page=); the builder's
# `starting_after` has no meaning there.
NOT_INTERCOMS = {("intercom", "listCompanies", "starting_after")}


@pytest.fixture
def server() -> Iterator[ScriptedServer]:
    with ScriptedServer() as running:
        yield running


def _request(
    server: ScriptedServer,
    provider: str,
    operation: str,
    parameters: dict[str, Any],
    refresh: Any = None,
    **connection: Any,
) -> ConnectorRequest:
    settings = Settings(http=LOOPBACK)
    fields = {"base_url": server.url(_base_path(catalogue()[provider])), **connection}
    if "username" not in fields and "access_token" not in fields:
        fields["access_token"] = TOKEN
    conn = ConnectionSettings(**fields)
    return ConnectorRequest(
        provider, operation, parameters, conn, provider, settings, _ctx(settings), refresh=refresh
    )


def _call(
    server: ScriptedServer, provider: str, operation: str, parameters: dict[str, Any], **conn: Any
) -> Any:
    request = _request(server, provider, operation, parameters, **conn)
    return DeclarativeConnector(catalogue()[provider])(request)


def _commits(*shas: str) -> list[dict[str, Any]]:
    return [{"sha": sha, "commit": {"message": f"commit {sha}"}, "node_id": "x"} for sha in shas]


# -- GitHub: pages, refresh, rate limits ---------------------------------------------------------


def test_github_follows_link_pages_up_to_the_cap(server: ScriptedServer) -> None:
    page2 = server.url("/repositories/1296269/commits?sha=main&per_page=2&page=2")
    page3 = server.url("/repositories/1296269/commits?sha=main&per_page=2&page=3")
    last = f'<{page3}>; rel="last"'
    server.answer(200, _commits("a", "b"), Link=f'<{page2}>; rel="next", {last}')
    server.answer(200, _commits("c", "d"), Link=f'<{page3}>; rel="next", {last}')
    server.answer(200, _commits("e"))
    params = {"repo": "octocat/Hello-World", "branch": "main", "per_page": 2}
    output = _call(server, "github", "listCommits", params)
    assert [c["sha"] for c in output] == ["a", "b", "c", "d", "e"]
    assert all(set(c) == {"sha", "commit"} for c in output)  # trimmed as declared
    assert [(r.path, r.query) for r in server.requests] == [
        ("/repos/octocat/Hello-World/commits", {"sha": ["main"], "per_page": ["2"]}),
        ("/repositories/1296269/commits", {"sha": ["main"], "per_page": ["2"], "page": ["2"]}),
        ("/repositories/1296269/commits", {"sha": ["main"], "per_page": ["2"], "page": ["3"]}),
    ]
    assert all(r.headers["authorization"] == f"Bearer {TOKEN}" for r in server.requests)

    server.requests.clear()
    server.answer(200, _commits("a", "b"), Link=f'<{page2}>; rel="next"')
    server.answer(200, _commits("c", "d"), Link=f'<{page3}>; rel="next"')
    capped = _call(server, "github", "listCommits", {**params, "maxPages": 2})
    assert [c["sha"] for c in capped] == ["a", "b", "c", "d"] and len(server.requests) == 2

    server.requests.clear()
    server.answer(200, _commits("a", "b"), Link=f'<{page2}>; rel="next"')
    server.answer(200, _commits("c", "d"), Link=f'<{page3}>; rel="next"')
    limited = _call(server, "github", "listCommits", {**params, "limit": 3})
    assert [c["sha"] for c in limited] == ["a", "b", "c"] and len(server.requests) == 2


def test_github_refuses_a_next_link_off_its_base_url(server: ScriptedServer) -> None:
    server.answer(200, _commits("a"), Link='<https://evil.example/steal?page=2>; rel="next"')
    with pytest.raises(NodeExecutionError, match="sends its secrets only under"):
        _call(server, "github", "listCommits", {"repo": "octocat/Hello-World"})
    assert len(server.requests) == 1


def test_github_401_refreshes_the_user_token_once(server: ScriptedServer) -> None:
    """GitHub App user tokens expire (8 h): the store's refresh gives a fresh one."""
    refreshed: list[str] = []

    def refresh() -> ConnectionSettings:
        refreshed.append("x")
        return ConnectionSettings(base_url=server.url(""), access_token="ghu_fresh_token_12345")

    bad = {"message": "Bad credentials", "documentation_url": "https://docs.github.com/rest"}
    server.answer(401, bad)
    server.answer(200, {"id": 1, "number": 7, "title": "Fix", "state": "open", "extra": 1})
    request = _request(
        server, "github", "getPullRequest", {"repo": "o/r", "pullNumber": 7}, refresh=refresh
    )
    output = DeclarativeConnector(catalogue()["github"])(request)
    assert output == {"id": 1, "number": 7, "title": "Fix", "state": "open"}
    assert [r.headers["authorization"] for r in server.requests] == [
        f"Bearer {TOKEN}",
        "Bearer ghu_fresh_token_12345",
    ]

    server.requests.clear()
    server.answer(401, bad)
    with pytest.raises(NodeExecutionError, match="HTTP 401: Bad credentials") as caught:
        _call(server, "github", "getPullRequest", {"repo": "o/r", "pullNumber": 7})
    assert not caught.value.retryable and caught.value.details["status"] == 401


@pytest.mark.parametrize("status", [403, 429])
def test_github_secondary_rate_limit_is_transient_with_retry_after(
    server: ScriptedServer, status: int
) -> None:
    limited = {
        "message": "You have exceeded a secondary rate limit. Please wait a few minutes.",
        "documentation_url": "https://docs.github.com/rest/overview/rate-limits-for-the-rest-api",
    }
    server.answer(status, limited, **{"Retry-After": "60", "x-ratelimit-remaining": "0"})
    with pytest.raises(TransientNodeError, match="secondary rate limit") as caught:
        _call(server, "github", "listIssues", {"repo": "octocat/Hello-World"})
    assert caught.value.retryable and caught.value.retry_after_seconds == 60
    assert caught.value.details["status"] == status


def test_github_primary_rate_limit_with_a_reset_time_is_transient(server: ScriptedServer) -> None:
    """403 with x-ratelimit-remaining 0 and x-ratelimit-reset (epoch seconds, no Retry-After):
    transient, so the node's retry policy retries it (the executor reads only Retry-After)."""
    server.answer(
        403,
        {"message": "API rate limit exceeded for user ID 1."},
        **{"x-ratelimit-remaining": "0", "x-ratelimit-reset": "1893456000"},
    )
    with pytest.raises(TransientNodeError, match="API rate limit exceeded") as caught:
        _call(server, "github", "getRepository", {"repo": "octocat/Hello-World"})
    assert caught.value.retryable


def test_github_validation_errors_carry_githubs_code(server: ScriptedServer) -> None:
    server.answer(
        422,
        {
            "message": "Validation Failed",
            "errors": [{"resource": "Issue", "field": "title", "code": "missing_field"}],
            "status": "422",
        },
    )
    with pytest.raises(NodeExecutionError) as caught:
        _call(server, "github", "createIssue", {"repo": "o/r", "title": " "})
    assert "github createIssue failed: HTTP 422 missing_field: Validation Failed" in str(
        caught.value
    )
    assert not caught.value.retryable


# -- GitHub: repositories and paths --------------------------------------------------------------


def test_github_repository_forms(server: ScriptedServer) -> None:
    for _ in range(3):
        server.answer(200, {"id": 1, "full_name": "octo/app"})
    _call(server, "github", "getRepository", {"repo": "octo/app"})
    _call(server, "github", "getRepository", {"owner": "octo", "repository": "app"})
    _call(server, "github", "getRepository", {"repo": "app"}, owner="octo")  # the connection's
    assert [r.path for r in server.requests] == ["/repos/octo/app"] * 3

    cases = [
        ({"repo": "app"}, "parameters.owner"),
        ({"repo": "a/b/c"}, "parameters.repo"),
        ({"repo": "../x"}, "parameters.repo"),
        ({"owner": "other", "repo": "octo/app"}, "parameters.owner"),
    ]
    for params, field in cases:
        with pytest.raises(NodeConfigurationError) as caught:
            _call(server, "github", "getRepository", params)
        assert caught.value.details["field"] == field, params
    assert len(server.requests) == 3


def test_github_file_paths_are_segments_and_content_is_text(server: ScriptedServer) -> None:
    text = "openapi: 3.1.0\ninfo: {title: API}\n"
    encoded = base64.b64encode(text.encode()).decode()
    server.answer(200, {"type": "file", "encoding": "base64", "content": encoded, "sha": "s1"})
    output = _call(
        server, "github", "getContent", {"repo": "o/r", "path": "/docs/api v2.yaml", "ref": "main"}
    )
    assert output["text"] == text and output["sha"] == "s1"
    assert server.requests[0].path == "/repos/o/r/contents/docs/api%20v2.yaml"
    for bad in ("docs/../../secrets", "./x", "a\\b"):
        with pytest.raises(NodeConfigurationError) as caught:
            _call(server, "github", "getContent", {"repo": "o/r", "path": bad})
        assert caught.value.details["field"] == "parameters.path"
    assert len(server.requests) == 1

    server.answer(201, {"content": {"path": "a.txt"}, "commit": {"sha": "c1"}, "extra": True})
    out = _call(
        server,
        "github",
        "createOrUpdateFile",
        {"repo": "o/r", "path": "a.txt", "message": "m", "content": "héllo", "sha": "s0"},
    )
    assert out == {"content": {"path": "a.txt"}, "commit": {"sha": "c1"}}
    body = json.loads(server.requests[1].body)
    assert base64.b64decode(body["content"]).decode() == "héllo" and body["sha"] == "s0"


def test_github_run_logs_pick_the_named_job(server: ScriptedServer) -> None:
    jobs = {"jobs": [{"id": 1, "name": "lint", "conclusion": "failure"}, {"id": 2, "name": "test"}]}
    server.answer(200, jobs)
    server.answer(200, "line 1\nline 2\n")
    output = _call(
        server, "github", "getWorkflowRunLogs", {"repo": "o/r", "runId": 9, "job": "Test"}
    )
    assert output == "line 1\nline 2\n"
    assert [r.path for r in server.requests] == [
        "/repos/o/r/actions/runs/9/jobs",
        "/repos/o/r/actions/jobs/2/logs",
    ]
    server.answer(200, {"jobs": []})
    with pytest.raises(NodeConfigurationError, match="has no job") as caught:
        _call(server, "github", "getWorkflowRunLogs", {"repo": "o/r", "runId": 9})
    assert caught.value.details["field"] == "parameters.run_id"


# -- Linear: GraphQL errors --------------------------------------------------------------------


def test_linear_graphql_errors_with_200_fail_the_node(server: ScriptedServer) -> None:
    server.answer(
        200,
        {
            "data": None,
            "errors": [
                {
                    "message": "Argument Validation Error",
                    "extensions": {
                        "code": "INVALID_INPUT",
                        "userPresentableMessage": "teamId must be a UUID.",
                    },
                }
            ],
        },
    )
    with pytest.raises(NodeExecutionError, match="INVALID_INPUT: teamId must be a UUID") as caught:
        _call(server, "linear", "createIssue", {"teamId": "ENG", "title": "x"})
    assert not caught.value.retryable and caught.value.details["code"] == "INVALID_INPUT"

    server.answer(
        200,
        {
            "data": None,
            "errors": [{"message": "Rate limit", "extensions": {"code": "RATELIMITED"}}],
        },
    )
    with pytest.raises(TransientNodeError, match="RATELIMITED"):
        _call(server, "linear", "listTeams", {})

    server.answer(
        400,
        {
            "errors": [
                {"message": "Entity not found: Issue", "extensions": {"code": "INVALID_INPUT"}}
            ]
        },
    )
    with pytest.raises(NodeExecutionError, match="HTTP 400 INVALID_INPUT: Entity not found"):
        _call(server, "linear", "getIssue", {"id": "ENG-999"})
    assert all(r.headers["authorization"] == f"Bearer {TOKEN}" for r in server.requests)


def test_linear_corpus_priority_text_becomes_an_integer(server: ScriptedServer) -> None:
    server.answer(200, {"data": {"issueCreate": {"success": True, "issue": {"id": "i1"}}}})
    output = _call(server, "linear", "createIssue", {"teamId": "t1", "title": "T", "priority": "2"})
    assert output == {"id": "i1"}
    assert json.loads(server.requests[0].body)["variables"]["input"] == {
        "teamId": "t1",
        "title": "T",
        "priority": 2,
    }


# -- Jira and Zendesk: sites and basic auth ---------------------------------------------------


def test_jira_signs_in_with_email_and_api_token(server: ScriptedServer) -> None:
    server.answer(201, {"id": "1", "key": "SUP-1", "self": "x"})
    _call(
        server,
        "jira",
        "createIssue",
        {"projectKey": "SUP", "summary": "S"},
        username="ann@example.com",
        password="api-token-1",
    )
    expected = base64.b64encode(b"ann@example.com:api-token-1").decode()
    assert server.requests[0].headers["authorization"] == f"Basic {expected}"
    assert json.loads(server.requests[0].body) == {
        "fields": {"project": {"key": "SUP"}, "issuetype": {"name": "Task"}, "summary": "S"}
    }


def test_jira_and_zendesk_need_their_site_in_the_connection() -> None:
    settings = Settings(http=LOOPBACK)
    cases: list[tuple[str, str, dict[str, Any], str]] = [
        ("jira", "getIssue", {"issueKey": "SUP-1"}, "site"),
        ("zendesk", "getTicket", {"ticketId": 1}, "subdomain"),
    ]
    for provider, operation, params, field in cases:
        conn = ConnectionSettings(username="a@example.com", password="t")
        request = ConnectorRequest(
            provider, operation, params, conn, provider, settings, _ctx(settings)
        )
        with pytest.raises(NodeConfigurationError, match=f"needs a valid `{field}`"):
            DeclarativeConnector(catalogue()[provider])(request)


def test_jira_transition_names_must_exist(server: ScriptedServer) -> None:
    server.answer(
        200, {"transitions": [{"id": "21", "name": "Start", "to": {"name": "In Progress"}}]}
    )
    with pytest.raises(
        NodeConfigurationError, match=r"no transition 'Done'.*available: Start"
    ) as c:
        _call(
            server, "jira", "transitionIssue", {"issueKey": "SUP-1", "status": "Done"},
            username="a@example.com", password="t",
        )  # fmt: skip
    assert c.value.details["field"] == "parameters.transition" and len(server.requests) == 1


def test_jira_error_messages_are_jiras(server: ScriptedServer) -> None:
    server.answer(404, {"errorMessages": ["Issue does not exist or you do not have permission to see it."], "errors": {}})  # fmt: skip
    with pytest.raises(NodeExecutionError, match="HTTP 404: Issue does not exist"):
        _call(server, "jira", "getIssue", {"issueKey": "SUP-9"}, username="a@x.io", password="t")


def test_zendesk_cursor_pages(server: ScriptedServer) -> None:
    server.answer(200, {"tickets": [{"id": 1}], "meta": {"has_more": True, "after_cursor": "c1"}})
    server.answer(200, {"tickets": [{"id": 2}], "meta": {"has_more": False, "after_cursor": None}})
    output = _call(server, "zendesk", "listTickets", {}, username="a@x.io/token", password="t")
    assert [t["id"] for t in output["tickets"]] == [1, 2]
    assert [r.query for r in server.requests] == [
        {"page[size]": ["100"]},
        {"page[size]": ["100"], "page[after]": ["c1"]},
    ]
    expected = base64.b64encode(b"a@x.io/token:t").decode()
    assert server.requests[0].headers["authorization"] == f"Basic {expected}"


def test_zendesk_errors_carry_its_error_and_description(server: ScriptedServer) -> None:
    server.answer(422, {"error": "RecordInvalid", "description": "Record validation errors", "details": {}})  # fmt: skip
    with pytest.raises(
        NodeExecutionError, match="HTTP 422 RecordInvalid: Record validation errors"
    ):
        _call(server, "zendesk", "updateTicket", {"ticketId": 1, "status": "x"}, username="a", password="t")  # fmt: skip


# -- Intercom --------------------------------------------------------------------------------


def test_intercom_looks_a_contact_up_by_email_before_a_conversation(
    server: ScriptedServer,
) -> None:
    server.answer(200, {"type": "list", "data": [], "total_count": 0})
    with pytest.raises(NodeConfigurationError, match="no Intercom contact has the email") as caught:
        _call(
            server, "intercom", "createConversation", {"userId": "ann@example.com", "message": "hi"}
        )
    assert caught.value.details["field"] == "parameters.from_id"
    assert [r.path for r in server.requests] == ["/contacts/search"]  # nothing was sent


def test_intercom_lists_follow_starting_after(server: ScriptedServer) -> None:
    server.answer(200, {"type": "conversation.list", "conversations": [{"id": "1"}], "pages": {"next": {"page": 2, "starting_after": "WzE2"}}})  # fmt: skip
    server.answer(200, {"type": "conversation.list", "conversations": [{"id": "2"}], "pages": {"page": 2}})  # fmt: skip
    output = _call(server, "intercom", "listConversations", {"per_page": 1})
    assert [c["id"] for c in output["conversations"]] == ["1", "2"]
    assert server.requests[1].query == {"per_page": ["1"], "starting_after": ["WzE2"]}
    assert server.requests[0].headers["intercom-version"] == "2.14"


# -- coverage: builder operations and corpus uses ------------------------------------------------


def test_builder_operations_and_corpus_uses_of_dev_providers_resolve() -> None:
    providers = catalogue()
    for provider, operations in UPSTREAM.items():
        for operation, names in operations.items():
            op = providers[provider].operation(operation)
            assert op is not None, (provider, operation)
            known = {n.lower() for p in op.parameters for n in (p.name, *p.aliases)}
            missing = [
                p
                for p in names
                if p.lower() not in known and (provider, operation, p) not in NOT_INTERCOMS
            ]
            assert not missing, (provider, operation, missing)
    used: set[tuple[str, str]] = set()
    for path in corpus_files():
        spec, _ = parse_workflow(path.read_bytes())
        for item in spec.nodes.values() if spec is not None else []:
            named = getattr(item.config, "provider", None)
            action = getattr(item.config, "operation", None)
            if item.type == "integration" and named in DEV and isinstance(action, str):
                used.add((str(named), action))
    assert len(used) >= 30
    assert not [pair for pair in sorted(used) if providers[pair[0]].operation(pair[1]) is None]


def test_a_pr_review_workflow_runs_as_the_corpus_writes_it(server: ScriptedServer) -> None:
    """github-pr-reviewer's nodes: `repo` a webhook's full_name, the number a template, the
    action ids `getPullRequest` / `createReview`, and `{{githubReview.html_url}}` downstream."""
    from flowmaestro_dagster.testing import run_workflow
    from tests.builders import chain, node

    server.answer(200, {"number": 42, "title": "Add login", "head": {"sha": "abc"}, "x": 1})
    review = {"id": 80, "state": "COMMENTED", "html_url": "https://github.com/o/r/pull/42#r80"}
    server.answer(200, {**review, "node_id": "PRR_1"})
    settings = Settings(
        http=LOOPBACK,
        connections={"github": {"base_url": server.url(""), "access_token": TOKEN}},
    )
    definition = chain(
        node("in", "input", inputName="prEvent"),
        node("get", "integration", provider="github", action="getPullRequest", repo="{{prEvent.repository.full_name}}", pullNumber="{{prEvent.number}}", outputVariable="prData"),
        node("review", "integration", provider="github", action="createReview", repo="{{prEvent.repository.full_name}}", pullNumber="{{prEvent.number}}", body="Reviewed: {{prData.title}}", event="COMMENT", outputVariable="githubReview"),
        node("say", "transform", operation="passthrough", data="see {{githubReview.html_url}}", outputVariable="msg"),
        react=True,
    )  # fmt: skip
    event = {"number": 42, "repository": {"full_name": "octo/app"}}
    result = run_workflow(definition, {"prEvent": event}, settings=settings)
    assert result.output("review") == {"githubReview": review}
    assert [(r.method, r.path) for r in server.requests] == [
        ("GET", "/repos/octo/app/pulls/42"),
        ("POST", "/repos/octo/app/pulls/42/reviews"),
    ]
    assert json.loads(server.requests[1].body) == {
        "body": "Reviewed: Add login",
        "event": "COMMENT",
    }
    assert "https://github.com/o/r/pull/42#r80" in json.dumps(result.output("say"))
