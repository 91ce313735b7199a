"""Provider workflows, fast (issue 19): the fake provider server the end-to-end test uses, and
`flowmaestro runnable` over the whole corpus for an owner who has every connection.

The catalogue is still growing: the runnable report prints how many corpus workflows can run
and what blocks the rest, and asserts every blocker is an integration provider/operation not
catalogued yet (of the list below, which only shrinks) or one of the fixture nodes that name
no provider at all.
"""

import re
import socket
from collections import Counter
from collections.abc import Iterator

import httpx
import pytest

from flowmaestro_dagster.control import runnable as runnable_module
from flowmaestro_dagster.control.runnable import Report, check_definition
from flowmaestro_dagster.nodes.connectors import declarative
from flowmaestro_dagster.nodes.connectors.declarative import ProviderSpec, load_provider
from flowmaestro_dagster.settings import Settings
from flowmaestro_dagster.testing.fake_providers import (
    MAX_BODY_BYTES,
    FakeProviderServer,
    ProviderReply,
    ProviderRequest,
)
from tests.conftest import CORPUS, corpus_files

# -- the fake provider server -------------------------------------------------------------------

ACME = """
id: acme
name: Acme
docs: https://acme.example/docs
base_url: https://api.acme.example/v2
auth: {scheme: bearer}
operations:
  - id: listItems
    docs: https://acme.example/docs/items
    method: GET
    path: /items
    pagination: {style: cursor, items: items, cursor_path: next, cursor_param: cursor, has_more_path: more}
    example:
      request: {method: GET, path: /v2/items}
      response: {body: {items: [{id: i1}], next: c2, more: true}, headers: {Link: '<x>; rel="next"'}}
  - id: createItem
    docs: https://acme.example/docs/items
    method: POST
    path: /items/{folder}
    parameters: [{name: folder, required: true}, {name: name}]
    body: {name: "{name}"}
    example:
      parameters: {folder: f1, name: Ann}
      request: {method: POST, path: /v2/items/f1, body: {name: Ann}}
      response: {status: 201, body: {id: i9, name: Ann}}
  - id: createItems
    docs: https://acme.example/docs/items
    method: POST
    path: /items/{folder}
    parameters: [{name: folder, required: true}, {name: records, type: array}]
    body: {records: "{records}"}
    example:
      request: {method: POST, path: /v2/items/f1, body: {records: []}}
      response: {body: {records: [{id: i9}]}}
  - id: updateTicket
    docs: https://acme.example/docs/tickets
    method: PUT
    path: /tickets/{id}
    parameters: [{name: id, required: true}, {name: tags, type: array}, {name: comment}]
    body: {ticket: {tags: "{tags}", comment: {body: "{comment}"}}}
  - id: addComment
    docs: https://acme.example/docs/tickets
    method: PUT
    path: /tickets/{id}
    parameters: [{name: id, required: true}, {name: comment}]
    body: {ticket: {comment: {body: "{comment}"}}}
  - id: getPage
    docs: https://acme.example/docs/pages
    method: GET
    path: /pages
    parameters: [{name: page, type: integer}]
    pagination: {style: page, items: data, page_param: page}
    example:
      request: {method: GET, path: /v2/pages}
      response: {body: {data: [1, 2]}}
  - id: getFile
    docs: https://acme.example/docs/files
    method: GET
    path: /repos/OWNER/REPO/files/:name
    parameters: [{name: name, required: true}]
    hook: null
    example:
      request: {method: GET, path: /v2/repos/o/r/files/readme}
      response: {body: {file: readme}}
"""


@pytest.fixture
def acme() -> ProviderSpec:
    return load_provider(ACME, "acme.yaml")


@pytest.fixture
def server(acme: ProviderSpec) -> Iterator[FakeProviderServer]:
    with FakeProviderServer({"acme": acme}) as started:
        yield started


def test_a_request_gets_its_operations_documented_answer_and_is_recorded(
    server: FakeProviderServer,
) -> None:
    base = server.base_url("acme")
    answer = httpx.post(f"{base}/items/f1?x=1", json={"name": "Ann"}, headers={"X-Key": "k"})
    assert (answer.status_code, answer.json()) == (201, {"id": "i9", "name": "Ann"})
    [request] = server.requests_to("acme", "createItem")
    assert (request.provider, request.operation, request.method) == ("acme", "createItem", "POST")
    assert (request.path, request.query) == ("/items/f1", {"x": ["1"]})
    assert request.headers["x-key"] == "k" and request.json == {"name": "Ann"}


def test_same_route_operations_are_told_apart_by_their_body_keys(
    server: FakeProviderServer,
) -> None:
    base = server.base_url("acme")
    assert httpx.post(f"{base}/items/f1", json={"records": []}).json() == {
        "records": [{"id": "i9"}]
    }
    assert [r.operation for r in server.requests] == ["createItems"]


def test_nested_body_fields_pick_the_tightest_operation(server: FakeProviderServer) -> None:
    url = f"{server.base_url('acme')}/tickets/7"
    httpx.put(url, json={"ticket": {"comment": {"body": "thanks"}}})
    httpx.put(url, json={"ticket": {"tags": ["a"]}})
    assert [r.operation for r in server.requests] == ["addComment", "updateTicket"]


def test_capitals_and_colon_segments_are_a_hooks_placeholders(server: FakeProviderServer) -> None:
    answer = httpx.get(f"{server.base_url('acme')}/repos/octo/sub/hello/files/readme")
    assert answer.json() == {"file": "readme"}
    assert server.requests[0].operation == "getFile"


def test_documented_answers_end_pagination_after_one_page(server: FakeProviderServer) -> None:
    base = server.base_url("acme")
    listed = httpx.get(f"{base}/items")
    assert listed.json() == {"items": [{"id": "i1"}], "next": None, "more": False}
    assert "link" not in listed.headers
    assert httpx.get(f"{base}/pages").json() == {"data": [1, 2]}
    assert httpx.get(f"{base}/pages?page=2").json() == {"data": []}


def test_queued_replies_then_the_responder_then_the_documented_answer(
    acme: ProviderSpec,
) -> None:
    def responder(request: ProviderRequest) -> ProviderReply | None:
        return ProviderReply({"from": "responder"}) if request.query.get("r") else None

    with FakeProviderServer({"acme": acme}, responder=responder) as server:
        server.reply("acme", "listItems", {"items": []}, ProviderReply({"e": 1}, status=429))
        url = f"{server.base_url('acme')}/items"
        assert httpx.get(url).json() == {"items": []}
        limited = httpx.get(url)
        assert (limited.status_code, limited.json()) == (429, {"e": 1})
        assert httpx.get(url + "?r=1").json() == {"from": "responder"}
        assert httpx.get(url).json()["items"] == [{"id": "i1"}]


def test_an_unknown_route_is_a_404_naming_it_and_still_recorded(
    server: FakeProviderServer,
) -> None:
    answer = httpx.delete(f"{server.base_url('acme')}/items/f1")
    assert answer.status_code == 404
    assert "no acme operation answers DELETE /items/f1" in answer.json()["error"]["message"]
    assert httpx.get(server.url("/nobody/items")).status_code == 404
    assert [(r.provider, r.operation) for r in server.requests] == [
        ("acme", None),
        ("nobody", None),
    ]
    with pytest.raises(KeyError, match="not catalogued"):
        server.base_url("nobody")


def test_a_body_over_the_cap_is_refused_unread(server: FakeProviderServer) -> None:
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(
            b"POST /acme/items/f1 HTTP/1.1\r\nHost: x\r\n"
            + f"Content-Length: {MAX_BODY_BYTES + 1}\r\n\r\n".encode()
        )
        status_line = sock.makefile("rb").readline()
    assert status_line.split()[1] == b"413" and server.requests == []


def test_the_shipped_catalogue_answers_notions_documented_page() -> None:
    notion = declarative.catalogue()["notion"]
    with FakeProviderServer({"notion": notion}) as server:
        answer = httpx.post(f"{server.base_url('notion')}/pages", json={"parent": {}})
        assert answer.json()["url"].startswith("https://www.notion.so/")
        assert server.requests[0].operation == "createPage"


# -- flowmaestro runnable over the corpus ---------------------------------------------------------

# LLM providers and databases the corpus names: configured, so only connectors can block.
LLM_PROVIDERS = ("openai", "anthropic", "elevenlabs", "replicate", "runway", "stabilityai")
DATABASES = ("postgresql", "conn-postgres-1", "conn-mongodb-1")
UNCATALOGUED = re.compile(r"no connector for provider (\S+) \(operation (\S+)\)")

# Fixture nodes (the upstream builder's test fixtures) of type `action` with an empty config:
# no provider: a need (the author's to choose), not something the platform cannot run.
NAMELESS_ACTIONS = {
    ("fixtures/node-patterns--webhook/createbatchwebhookdefinition.json", "send_webhook"),
    ("fixtures/node-patterns--webhook/createeventdrivenwebhookdefinition.json", "notify_slack"),
    ("fixtures/node-patterns--webhook/createfanoutwebhookdefinition.json", "slack_webhook"),
    ("fixtures/node-patterns--webhook/createfanoutwebhookdefinition.json", "discord_webhook"),
    ("fixtures/node-patterns--webhook/createfanoutwebhookdefinition.json", "email_action"),
    ("fixtures/node-patterns--webhook/createllmwebhookdefinition.json", "send_webhook"),
}

# Definitions with a back edge: rejected at compile time (docs/semantics.md), so never runnable.
CYCLIC = {
    "advanced-logic/multi-stage-approval-workflow.json",
    "advanced-logic/retry-with-exponential-backoff.json",
    "advanced-logic/retry-with-exponential-backoff-2.json",
    "patterns/basic/quality-reviewer.json",
}

# provider:operation pairs the corpus uses that no connector serves yet (the catalogue grows:
# this list only shrinks; a pair missing from it fails the test).
KNOWN_GAPS = frozenset(
    {
        # MongoDB's Atlas Data API (document reads and writes over HTTP) was shut down on
        # 2025-09-30; a driver connector needs a MongoDB server to be tested against.
        "mongodb:aggregate",
    }
)


def corpus_settings() -> Settings:
    """An owner's deployment with everything but connectors: every LLM provider the corpus
    names, web search, the databases it names (the test puts chromium and tesseract on the
    machine)."""
    llm = {name: {"base_url": "http://llm.invalid/v1", "api_key": "k"} for name in LLM_PROVIDERS}
    return Settings(
        _env_file=None,  # pydantic-settings: not the .env file
        llm={"providers": llm},
        web_search={"provider": "searxng"},
        connections={"searxng": {"base_url": "http://search.invalid"}},
        databases={name: "sqlite:///:memory:" for name in DATABASES},
    )


def corpus_reports() -> list[Report]:
    settings = corpus_settings()
    return [
        check_definition(
            str(path.relative_to(CORPUS)),
            path.read_bytes(),
            settings,
            has_connection=lambda *_: True,  # the owner has every connection
        )
        for path in corpus_files()
    ]


def test_the_corpus_is_runnable_given_its_connections_but_for_uncatalogued_operations(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(runnable_module.shutil, "which", lambda program: f"/usr/bin/{program}")
    reports = corpus_reports()
    gaps: Counter[str] = Counter()
    nameless = set()
    other = []
    for report in reports:
        for blocker in report.blockers:
            match = UNCATALOGUED.fullmatch(blocker.reason)
            if match:
                gaps[f"{match[1]}:{match[2]}"] += 1
            else:
                other.append((report.source, blocker))
        nameless |= {(report.source, n.node_id) for n in report.needs if n.name == "provider"}
    runnable = sum(r.runnable for r in reports)
    with capsys.disabled():
        print(f"\nflowmaestro runnable: {runnable} of {len(reports)} corpus workflows")
        print(f"  uncatalogued provider:operation pairs ({len(gaps)}):")
        for pair, count in sorted(gaps.items()):
            print(f"    {pair} ({count} node(s))")
        print(f"  nodes naming no provider: {sorted(nameless)}")
        unfilled = [r.source for r in reports if any(n.kind == "parameter" for n in r.needs)]
        print(f"  workflows leaving a required parameter for the user to fill: {len(unfilled)}")
    assert {r.source for r in reports if not r.valid} == CYCLIC, [
        (r.source, r.errors) for r in reports if not r.valid
    ]
    # Given its connections, all a workflow may still lack is what its author left unfilled
    # (starter templates leave parameters for the user): no provider, search engine or model.
    assert [(r.source, n) for r in reports for n in r.needs if n.kind != "parameter"] == []
    assert other == []
    assert nameless == NAMELESS_ACTIONS
    assert set(gaps) <= KNOWN_GAPS, sorted(set(gaps) - KNOWN_GAPS)
    blocked = {r.source for r in reports if r.blockers}
    needing = {r.source for r in reports if r.needs}
    assert runnable == len(reports) - len(blocked | needing | CYCLIC)
