"""Five corpus workflows that use the media nodes, end to end on a real `dagster dev` (issue 18).

Each definition is loaded verbatim from the corpus, deployed through the API, given its input
files with `POST /workflows/{id}/files`, started with `POST /workflows/{id}/executions` (all
five at once) and polled until finished. Then, per workflow: the execution succeeded, every
media node's output has the shape docs/nodes.md documents, the files the nodes made are read
back through a signed download link and opened with the real library (pypdf, openpyxl,
Pillow; the speech bytes the fake TTS answered), and the local fakes received exactly the
requests the nodes must send. The run workers and the API share one file store
(FLOWMAESTRO_FILES__URL); the model provider `openai` is one fake serving chat and media
(`FakeMediaServer(chat=FakeLLMServer(...))`), the search provider a fake SearXNG that also
serves the page found. `flowmaestro runnable` says each of the five runs with the stack's
settings, and names what a deployment without them lacks.

Picked: voice-message-responder-2 (audioInput, audioTranscription, audioOutput, fileWrite),
multi-format-document-converter (files, pdfExtract, pdfGeneration behind a router),
proposal-generator (knowledgeBaseQuery), the search-browse chain fixture (webSearch,
webBrowse) and the data-visualization fixture (chartGeneration, spreadsheetGeneration).
Not picked, each for a reason outside the media nodes: research-agent (its knowledgeBaseId is
`{{env.KNOWLEDGE_BASE_ID}}`, a name the runtime never resolves: picking the knowledge base
would overwrite what the builder wrote, where proposal-generator leaves the field unset);
medical-records-summarizer (its query reads `{{summary.medications}}`, a field an llm's
`{text}` output never has); competitor-battlecard-creator (it browses
`https://{{competitorName}}.com`, a public host no local fake can be, and ends in unconfigured
Notion and Slack nodes); patient-intake-automator (a PostgreSQL insert into a `patients` table
no deployment here has); audiobook-narrator (its loop's body is empty: the chapter and index
its audioOutput reads are out of scope).
"""

import hashlib
import io
import json
import threading
import wave
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from fastapi.testclient import TestClient
from openpyxl import load_workbook
from PIL import Image
from pypdf import PdfReader

from flowmaestro_api.settings import ApiSettings
from flowmaestro_dagster.control.runnable import check_definition
from flowmaestro_dagster.settings import (
    FileSettings,
    LLMSettings,
    Settings,
    WebSearchSettings,
)
from flowmaestro_dagster.testing import FakeLLMServer, RecordedRequest
from flowmaestro_dagster.testing.fake_media import API_KEY, FakeMediaServer
from flowmaestro_dagster.testing.local_server import LocalHTTPServer
from flowmaestro_dagster.testing.stack import DagsterStack
from tests.api import e2e
from tests.api.e2e import deploy, finished, new_user, running_stack, start
from tests.conftest import CORPUS, load_corpus

pytestmark = pytest.mark.slow

SECRET = "media-workflows-secret-0123456789"
TIMEOUT_S = 240  # five runs at once on two busy cores

VOICE = "voice-audio/voice-message-responder-2.json"
CONVERTER = "document-processing/multi-format-document-converter.json"
PROPOSAL = "document-processing/proposal-generator.json"
SEARCH = "fixtures/node-patterns--web-data/createsearchbrowsechaindefinition.json"
CHARTS = "fixtures/node-patterns--document-generation/createdatavisualizationdefinition.json"
WORKFLOWS = (VOICE, CONVERTER, PROPOSAL, SEARCH, CHARTS)

# What the fake model answers, by the prompt it is sent (the five run at once: one queue of
# replies would be consumed in any order).
VOICE_REPLY = "Thanks for your message! The order ships on Monday."
STANDARDIZED = "Quarterly memo. Revenue grew by twelve percent."
ANALYSIS = "Deliverables: a routing service and a dashboard."
SOLUTION = "Phase one builds the routing service; phase two the dashboard."
PRICING = "Phase one: 40,000 EUR; phase two: 25,000 EUR."
PROPOSAL_TEXT = "Executive summary: we route Acme's parcels faster."
REPLIES = {
    "Respond to this voice message:": VOICE_REPLY,
    "Determine file type:": "pdf",
    "Clean and standardize this content:": STANDARDIZED,
    "Analyze these project requirements:": ANALYSIS,
    "Design a solution for:": SOLUTION,
    "Generate pricing for this proposal:": PRICING,
    "Write a professional proposal for": PROPOSAL_TEXT,
}

PDF_MEMO_HTML = "<h1>Quarterly memo</h1><p>Revenue grew by 12 percent in the third quarter.</p>"
CLIENT = "Acme Logistics, parcel delivery, 400 staff"
REQUIREMENTS = "A parcel routing service and a delivery dashboard"
PRICING_PARAMS = "Fixed price, 60,000 to 70,000 EUR"
CASE_STUDY = (
    "Case study: for Northwind Freight we built a parcel routing service that cut delivery "
    "times by 18 percent, with a live delivery dashboard for dispatchers."
)
UNRELATED = "Kitchen news: espresso machine installed, oat milk on Fridays."
SALES = [
    {"month": "Jan", "sales": 100},
    {"month": "Feb", "sales": 150},
    {"month": "Mar", "sales": 120},
]
PAGE_TEXT = (
    "The widget costs ten dollars and ships worldwide within two days of ordering. "
    "Every widget comes with a two-year warranty and free returns."
)
PAGE = (
    "<!doctype html><html><head><title>Widget pricing</title></head><body>"
    f"<nav>Home | Shop</nav><article><h1>Widget pricing</h1><p>{PAGE_TEXT}</p></article>"
    "</body></html>"
)


def reply_for(request: RecordedRequest) -> str | None:
    prompt = request.prompt or ""
    return next((reply for start_, reply in REPLIES.items() if prompt.startswith(start_)), None)


# -- a fake SearXNG that also serves the page its first result names ---------------------------


class WebServer(LocalHTTPServer):
    """`GET /search` answers SearXNG's JSON (two results, the first a page here), `GET
    /pricing` that page; every request is recorded as (path, query)."""

    name = "fake SearXNG"

    def __init__(self) -> None:
        super().__init__()
        self.requests: list[tuple[str, dict[str, list[str]]]] = []
        self._lock = threading.Lock()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def answer(self, path: str, query: dict[str, list[str]]) -> tuple[int, str, bytes]:
        with self._lock:
            self.requests.append((path, query))
        if path == "/search":
            results = [
                {
                    "title": "Widget <b>pricing</b>",
                    "url": self.url("/pricing"),
                    "content": "What a widget costs",
                    "engine": "fake",
                },
                {"title": "Second", "url": self.url("/other"), "content": "two"},
            ]
            body = {"query": query.get("q", [""])[0], "results": results}
            return 200, "application/json", json.dumps(body).encode()
        if path == "/pricing":
            return 200, "text/html; charset=utf-8", PAGE.encode()
        return 404, "text/plain", b"no such page"


class _WebHandler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        server: WebServer = self.server.owner  # type: ignore[attr-defined]
        split = urlsplit(self.path)
        status, content_type, body = server.answer(split.path, parse_qs(split.query))
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the test reads `requests`."""


WebServer.handler = _WebHandler


# -- the stack -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def llm() -> FakeLLMServer:
    """The chat half of the `openai` provider (served through `media`, never started)."""
    return FakeLLMServer(responder=reply_for, default="(unexpected prompt)")


@pytest.fixture(scope="module")
def media(llm: FakeLLMServer) -> Iterator[FakeMediaServer]:
    with FakeMediaServer(chat=llm) as server:
        yield server


@pytest.fixture(scope="module")
def web() -> Iterator[WebServer]:
    with WebServer() as server:
        yield server


@pytest.fixture(scope="module")
def store_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("media-files")


@pytest.fixture(scope="module")
def env(media: FakeMediaServer, web: WebServer, store_dir: Path) -> dict[str, str]:
    """The stack's environment: what its run workers (and the runnable check) see."""
    providers = {"providers": {"openai": {"base_url": media.url, "api_key": API_KEY}}}
    return {
        "FLOWMAESTRO_LLM": json.dumps(providers),
        "FLOWMAESTRO_HTTP__ALLOW_LOOPBACK": "true",  # the fakes listen on 127.0.0.1
        "FLOWMAESTRO_WEB_SEARCH__PROVIDER": "searxng",
        "FLOWMAESTRO_CONNECTIONS__SEARXNG__BASE_URL": web.url(""),
        "FLOWMAESTRO_FILES__URL": str(store_dir),  # the API's store too (settings below)
        "FLOWMAESTRO_SECRET_KEY": SECRET,
    }


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, env: dict[str, str]) -> Iterator[DagsterStack]:
    with running_stack(tmp_path_factory.mktemp("media-workflows"), extra_env=env) as started:
        yield started


@pytest.fixture(scope="module")
def settings(stack: DagsterStack, store_dir: Path) -> ApiSettings:
    return e2e.stack_settings(stack, secret_key=SECRET, files=FileSettings(url=str(store_dir)))


dagster_client, client = e2e.dagster_client, e2e.client


@pytest.fixture(scope="module")
def owner(stack: DagsterStack) -> dict[str, str]:
    """One user owns the five workflows and the knowledge base."""
    return new_user(stack.database_url, "media-workflows")


# -- inputs made here --------------------------------------------------------------------------


def wav_bytes() -> bytes:
    """One second of 8 kHz mono silence, a real WAV file."""
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as audio:
        audio.setnchannels(1)
        audio.setsampwidth(2)
        audio.setframerate(8000)
        audio.writeframes(b"\x00\x00" * 8000)
    return buffer.getvalue()


def memo_pdf() -> bytes:
    from weasyprint import HTML

    data: bytes = HTML(string=PDF_MEMO_HTML).write_pdf()
    return data


def upload(
    client: TestClient, auth: dict[str, str], workflow_id: str, name: str, data: bytes, accept: str
) -> dict[str, Any]:
    response = client.post(
        f"/workflows/{workflow_id}/files",
        files={"file": (name, data, "application/octet-stream")},
        data={"accept": accept},
        headers=auth,
    )
    assert response.status_code == 201, response.text
    ref: dict[str, Any] = response.json()
    assert ref["sha256"] == hashlib.sha256(data).hexdigest() and ref["size"] == len(data)
    return ref


def downloaded(
    client: TestClient, auth: dict[str, str], workflow_id: str, ref: dict[str, Any]
) -> bytes:
    """A produced file read back from the store through a signed download link, checked
    against its reference (size and sha256)."""
    signed = client.post(
        f"/workflows/{workflow_id}/files/url", json={"path": ref["path"]}, headers=auth
    )
    assert signed.status_code == 200, signed.text
    link = urlsplit(signed.json()["url"])
    response = client.get(f"{link.path}?{link.query}")
    assert response.status_code == 200, response.text
    data = response.content
    assert (len(data), hashlib.sha256(data).hexdigest()) == (ref["size"], ref["sha256"])
    return data


@dataclass
class Started:
    workflow_id: str
    execution_id: str
    uploads: dict[str, Any] = field(default_factory=dict)


@pytest.fixture(scope="module")
def knowledge_base(client: TestClient, owner: dict[str, str]) -> str:
    created = client.post("/knowledge-bases", json={"name": "Case studies"}, headers=owner)
    assert created.status_code == 201, created.text
    kb_id: str = created.json()["id"]
    for title, text in (("Northwind Freight", CASE_STUDY), ("Office news", UNRELATED)):
        added = client.post(
            f"/knowledge-bases/{kb_id}/documents",
            json={"title": title, "text": text},
            headers=owner,
        )
        assert added.status_code == 201, added.text
    return kb_id


@pytest.fixture(scope="module")
def started(client: TestClient, owner: dict[str, str], knowledge_base: str) -> dict[str, Started]:
    """The five deployed and their files uploaded, then their executions started back to back
    without waiting: they run side by side on the stack, and each test awaits its own."""
    proposal = load_corpus(PROPOSAL)  # read afresh: the one copy edited
    [query] = [n for n in proposal["definition"]["nodes"] if n["type"] == "knowledgeBaseQuery"]
    # The one edit: the builder leaves the knowledge base for the user to pick (the node has
    # no knowledgeBaseId at all); it is picked here, nothing else changes.
    assert "knowledgeBaseId" not in query["data"]
    query["data"]["knowledgeBaseId"] = knowledge_base
    definitions = {relative: load_corpus(relative) for relative in WORKFLOWS}
    definitions[PROPOSAL] = proposal
    workflows = {relative: deploy(client, owner, d) for relative, d in definitions.items()}

    wav = upload(client, owner, workflows[VOICE], "message.wav", wav_bytes(), "audio/*")
    pdf = upload(client, owner, workflows[CONVERTER], "memo.pdf", memo_pdf(), "application/pdf")
    inputs: dict[str, dict[str, Any]] = {
        # audioInput-1 names no input: it takes the one named like its outputVariable.
        VOICE: {"voiceMessage": wav},
        # The files node names no input either: its input is named like its node id.
        CONVERTER: {"files-1": pdf},
        PROPOSAL: {"clientInfo": CLIENT, "requirements": REQUIREMENTS, "pricing": PRICING_PARAMS},
        SEARCH: {"data": {"query": "widget pricing"}},
        CHARTS: {"data": {"rawData": SALES}},
    }
    uploads = {VOICE: {"wav": wav}, CONVERTER: {"pdf": pdf}}
    return {
        relative: Started(
            workflows[relative],
            start(client, owner, workflows[relative], inputs[relative]),
            uploads.get(relative, {}),
        )
        for relative in WORKFLOWS
    }


def succeeded(
    client: TestClient, owner: dict[str, str], run: Started
) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """The finished execution (asserted succeeded) and its nodes by id."""
    body = finished(client, owner, run.execution_id, timeout=TIMEOUT_S)
    failed = {n["node_id"]: n["error"] for n in body["nodes"] if n["status"] == "failed"}
    assert body["status"] == "succeeded", (body["error"], failed)
    assert len(body["runs"]) == 1  # one Dagster run of `dagster dev`, start to finish
    return body, {n["node_id"]: n for n in body["nodes"]}


def chat_with(llm: FakeLLMServer, prompt_start: str) -> RecordedRequest:
    """The one chat request whose prompt starts so."""
    [request] = [r for r in llm.chat_requests if (r.prompt or "").startswith(prompt_start)]
    return request


FILE_KEYS = {"type", "name", "filename", "mediaType", "size", "sha256", "path", "uri"}


def is_file(value: Any, name: str, media_type: str, execution_id: str, node_id: str) -> bool:
    """A file reference of a node's generated file: `/executions/<execution>/<node>/<name>`."""
    return (
        isinstance(value, dict)
        and set(value) == FILE_KEYS
        and (value["type"], value["name"], value["mediaType"]) == ("file", name, media_type)
        and value["path"] == f"/executions/{execution_id}/{node_id}/{name}"
    )


# -- the five ----------------------------------------------------------------------------------


def test_voice_message_responder_transcribes_answers_and_speaks(
    client: TestClient,
    owner: dict[str, str],
    started: dict[str, Started],
    media: FakeMediaServer,
    llm: FakeLLMServer,
) -> None:
    run = started[VOICE]
    body, nodes = succeeded(client, owner, run)
    wav = run.uploads["wav"]

    heard = nodes["audioInput-1"]["output"]["voiceMessage"]
    assert heard == {
        "file": wav,  # the upload's reference, as the API answered it
        "format": "wav",
        "mediaType": "audio/x-wav",
        "durationSeconds": 1.0,
    }
    [transcription] = media.requests_to("/audio/transcriptions")
    assert transcription.method == "POST" and transcription.fields["model"] == "whisper-1"
    assert transcription.fields["response_format"] == "json"
    sent = transcription.file("file")
    assert (sent.filename, sent.data) == ("message.wav", wav_bytes())
    assert nodes["audioTranscription-1"]["output"] == {
        "transcript": {
            "text": media.transcript,
            "task": "transcribe",
            "format": "json",
            "model": "whisper-1",
            "provider": "openai",
        }
    }

    asked = chat_with(llm, "Respond to this voice message:")
    assert asked.model == "gpt-4o" and media.transcript in (asked.prompt or "")

    [speech] = media.requests_to("/audio/speech")
    assert speech.json == {
        "model": "tts-1",
        "voice": "alloy",
        "input": VOICE_REPLY,
        "response_format": "mp3",
    }
    reply = nodes["audioOutput-1"]["output"]["audioReply"]
    assert is_file(reply["file"], "speech.mp3", "audio/mpeg", run.execution_id, "audioOutput-1")
    assert {k: v for k, v in reply.items() if k != "file"} == {
        "format": "mp3",
        "voice": "alloy",
        "model": "tts-1",
        "provider": "openai",
        "characters": len(VOICE_REPLY),
    }
    assert downloaded(client, owner, run.workflow_id, reply["file"]) == media.speech_audio

    # `{{timestamp}}` is a reference nothing in the workflow writes (a deploy-time warning,
    # tests/test_unresolved_references.py): it stays as written, and the copy lands there.
    saved = nodes["fileWrite-1"]["output"]["savedAudio"]
    path = "/outputs/voice_replies/{{timestamp}}.mp3"
    assert (saved["path"], saved["size"]) == (path, len(media.speech_audio))
    assert saved["file"]["path"] == path and saved["file"]["mediaType"] == "audio/mpeg"
    assert downloaded(client, owner, run.workflow_id, saved["file"]) == media.speech_audio
    assert body["outputs"] == {"result": reply}


def test_document_converter_extracts_the_uploaded_pdf_and_makes_a_new_one(
    client: TestClient,
    owner: dict[str, str],
    started: dict[str, Started],
    llm: FakeLLMServer,
) -> None:
    run = started[CONVERTER]
    body, nodes = succeeded(client, owner, run)
    pdf = run.uploads["pdf"]

    routed = chat_with(llm, "Determine file type:")
    assert (routed.model, routed.prompt) == ("gpt-4o-mini", "Determine file type: memo.pdf")
    assert nodes["router-format"]["output"]["route"] == "pdf"
    assert nodes["ocrExtraction-1"]["status"] == nodes["fileRead-1"]["status"] == "skipped"

    extracted = nodes["pdfExtract-1"]["output"]["pdfContent"]
    assert set(extracted) == {"text", "pages", "pageCount", "metadata", "format", "file"}
    assert extracted["text"] == "Quarterly memo\nRevenue grew by 12 percent in the third quarter."
    assert extracted["pages"] == [{"page": 1, "text": extracted["text"]}]
    assert (extracted["pageCount"], extracted["format"]) == (1, "text")
    assert extracted["metadata"]["producer"].startswith("WeasyPrint")
    assert extracted["file"] == pdf

    # The prompt reads `{{extractedContent}}`, which none of the three branches writes (they
    # write pdfContent / ocrContent / wordContent; a deploy-time warning): it stays as written.
    standardize = chat_with(llm, "Clean and standardize this content:")
    assert standardize.model == "gpt-4o"
    assert standardize.prompt == "Clean and standardize this content:\n\n{{extractedContent}}"

    made = nodes["pdfGeneration-1"]["output"]["outputPdf"]
    pdf_type = "application/pdf"
    assert is_file(made["file"], "document.pdf", pdf_type, run.execution_id, "pdfGeneration-1")
    assert {k: v for k, v in made.items() if k != "file"} == {
        "pages": 1,
        "sizeBytes": made["file"]["size"],
        "template": "document",
    }
    reader = PdfReader(io.BytesIO(downloaded(client, owner, run.workflow_id, made["file"])))
    assert len(reader.pages) == 1
    assert STANDARDIZED in " ".join(reader.pages[0].extract_text().split())
    assert body["outputs"] == {"result": made}


def test_proposal_generator_finds_the_case_study_in_the_knowledge_base(
    client: TestClient,
    owner: dict[str, str],
    started: dict[str, Started],
    knowledge_base: str,
    llm: FakeLLMServer,
) -> None:
    run = started[PROPOSAL]
    body, nodes = succeeded(client, owner, run)

    found = nodes["kb-query-1"]["output"]["caseStudies"]
    query = f"{CLIENT} {REQUIREMENTS}"
    assert set(found) == {"query", "results", "count", "knowledgeBaseId"}
    assert (found["query"], found["knowledgeBaseId"]) == (query, knowledge_base)
    assert found["count"] == len(found["results"]) >= 1
    best = found["results"][0]
    assert set(best) == {
        "documentId",
        "documentTitle",
        "chunkId",
        "chunkIndex",
        "text",
        "score",
        "source",
    }
    assert (best["documentTitle"], best["text"], best["chunkIndex"]) == (
        "Northwind Freight",
        CASE_STUDY,
        0,
    )
    assert all(hit["text"] != UNRELATED for hit in found["results"])
    # The node finds what the API's own search finds for the same user and query.
    searched = client.post(
        f"/knowledge-bases/{knowledge_base}/query", json={"query": query, "topK": 3}, headers=owner
    )
    assert searched.status_code == 200, searched.text
    hits = searched.json()["results"]
    assert [{k: v for k, v in hit.items() if k != "metadata"} for hit in hits] == found["results"]

    analysis = chat_with(llm, "Analyze these project requirements:")
    assert f"Client: {CLIENT}\nRequirements: {REQUIREMENTS}" in (analysis.prompt or "")
    solution = chat_with(llm, "Design a solution for:")
    assert f"Analysis: {ANALYSIS}\nRelevant case studies: " in (solution.prompt or "")
    assert CASE_STUDY in (solution.prompt or "")
    pricing = chat_with(llm, "Generate pricing for this proposal:")
    assert f"Solution: {SOLUTION}\nPricing parameters: {PRICING_PARAMS}" in (pricing.prompt or "")
    proposal = chat_with(llm, "Write a professional proposal for")
    assert CASE_STUDY in (proposal.prompt or "") and PRICING in (proposal.prompt or "")
    assert {r.model for r in (analysis, solution, pricing, proposal)} == {"gpt-4o"}
    assert f"# Proposal for {CLIENT}" in json.dumps(body["outputs"]["result"])
    assert PROPOSAL_TEXT in json.dumps(body["outputs"]["result"])


def test_search_browse_chain_searches_then_reads_the_first_result(
    client: TestClient, owner: dict[str, str], started: dict[str, Started], web: WebServer
) -> None:
    run = started[SEARCH]
    body, nodes = succeeded(client, owner, run)

    query = {"q": ["widget pricing"], "format": ["json"], "categories": ["general"]}
    assert web.requests.count(("/search", query)) == 1
    assert web.requests.count(("/pricing", {})) == 1
    assert len(web.requests) == 2

    searched = nodes["search"]["output"]["searchResults"]
    assert searched == {
        "query": "widget pricing",
        "results": [
            {
                "title": "Widget pricing",
                "url": web.url("/pricing"),
                "snippet": "What a widget costs",
                "source": "fake",
            },
            {"title": "Second", "url": web.url("/other"), "snippet": "two"},
        ],
        "count": 2,
        "provider": "searxng",
        "searchType": "web",
    }
    page = nodes["browse"]["output"]["pageContent"]
    content = page["content"]
    assert PAGE_TEXT in content and "Home | Shop" not in content  # the main text only
    assert page == {
        "url": web.url("/pricing"),
        "finalUrl": web.url("/pricing"),
        "status": 200,
        "contentType": "text/html",
        "extractType": "text",
        "title": "Widget pricing",
        "truncated": False,
        "content": content,
        "contentLength": len(content),
    }
    summary = {"title": web.url("/pricing"), "length": len(content), "preview": content[:200]}
    assert nodes["transform"]["output"] == {"summary": summary}
    assert body["outputs"] == {"result": {"summary": summary}}


def test_data_visualization_draws_the_chart_and_writes_the_sheet(
    client: TestClient, owner: dict[str, str], started: dict[str, Started]
) -> None:
    run = started[CHARTS]
    _, nodes = succeeded(client, owner, run)

    chart = nodes["chart"]["output"]["salesChart"]
    assert is_file(chart["file"], "chart.png", "image/png", run.execution_id, "chart")
    assert is_file(chart["svgFile"], "chart.svg", "image/svg+xml", run.execution_id, "chart")
    assert {k: chart[k] for k in ("chartType", "width", "height", "format", "filename")} == {
        "chartType": "line",
        "width": 800,
        "height": 400,
        "format": "png",
        "filename": "chart.png",
    }
    assert (chart["path"], chart["size"]) == (chart["file"]["path"], chart["file"]["size"])
    spec = chart["spec"]
    assert spec["title"]["text"] == "Monthly Sales" and spec["mark"]["type"] == "line"
    assert spec["data"]["values"] == [
        {"index": i, "series": "Sales", "value": row["sales"], "category": row["month"]}
        for i, row in enumerate(SALES)
    ]
    image = Image.open(io.BytesIO(downloaded(client, owner, run.workflow_id, chart["file"])))
    assert (image.format, image.size) == ("PNG", (800, 400))
    svg = downloaded(client, owner, run.workflow_id, chart["svgFile"]).decode()
    assert svg.lstrip().startswith("<svg") and "Monthly Sales" in svg and "Sales ($)" in svg

    sheet = nodes["spreadsheet"]["output"]["dataExport"]
    xlsx = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
    assert is_file(sheet["file"], "sales_data.xlsx", xlsx, run.execution_id, "spreadsheet")
    assert {k: v for k, v in sheet.items() if k != "file"} == {
        "format": "xlsx",
        "sheetName": "Monthly Sales",
        "rows": 3,
        "columns": 2,
        "header": ["month", "sales"],
        "path": sheet["file"]["path"],
        "filename": "sales_data.xlsx",
        "size": sheet["file"]["size"],
        "rowCount": 3,
        "sheetCount": 1,
    }
    book = load_workbook(io.BytesIO(downloaded(client, owner, run.workflow_id, sheet["file"])))
    assert book.sheetnames == ["Monthly Sales"]
    cells = book["Monthly Sales"]
    assert list(cells.iter_rows(values_only=True)) == [
        ("month", "sales"),
        *((row["month"], row["sales"]) for row in SALES),
    ]
    assert cells["A1"].font.b and not cells["A2"].font.b


# -- flowmaestro runnable --------------------------------------------------------------------------

# What a deployment without the stack's model provider and search connection lacks.
BARE_NEEDS = {
    VOICE: {"llm_provider"},
    CONVERTER: {"llm_provider"},
    PROPOSAL: {"llm_provider"},
    SEARCH: {"search_provider"},
    CHARTS: set(),
}


@pytest.mark.parametrize("relative", WORKFLOWS)
def test_each_workflow_is_runnable_with_the_stacks_settings(
    relative: str, env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    text = (CORPUS / relative).read_text()
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    report = check_definition(relative, text, Settings(_env_file=None))
    assert report.runnable, report.to_dict()
    bare = Settings(
        _env_file=None, llm=LLMSettings(), web_search=WebSearchSettings(), connections={}
    )
    needs = check_definition(relative, text, bare).needs
    assert {need.kind for need in needs} == BARE_NEEDS[relative]
