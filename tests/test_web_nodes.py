"""Web nodes against real local servers: url, webBrowse and fileDownload through the SSRF
guard, webSearch adapters against fake providers (the exact request asserted), and
screenshotCapture driving Debian's chromium (slow)."""

import hashlib
import io
import json
import threading
import tracemalloc
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from flowmaestro_dagster.compile.validation import validate
from flowmaestro_dagster.errors import (
    ConnectorNotConfiguredError,
    NodeConfigurationError,
    NodeExecutionError,
    TransientNodeError,
)
from flowmaestro_dagster.lang.state import ExecutionState
from flowmaestro_dagster.nodes import NodeContext, NodeResult, get_executor, web
from flowmaestro_dagster.nodes.filestore import FileStore, FileTooLargeError
from flowmaestro_dagster.settings import (
    BrowserSettings,
    ConnectionSettings,
    HttpSettings,
    Settings,
    WebSearchSettings,
)
from flowmaestro_dagster.spec.configs import normalise_config
from flowmaestro_dagster.spec.models import NodeSpec
from flowmaestro_dagster.tags import WORKFLOW_ID_TAG
from flowmaestro_dagster.testing.http_server import EchoRequest, EchoServer
from flowmaestro_dagster.testing.local_server import LocalHTTPServer
from tests.builders import flow, node

ARTICLE = """<!doctype html><html lang="en"><head><title>Widgets Weekly</title>
<meta name="description" content="A page about widgets"><meta name="author" content="Ann Author">
</head><body><nav><a href="/home">Home</a> <a href="/about#team">About us</a></nav>
<article><h1>Widgets are great</h1>
<p>Widgets are small devices that do many useful things in the modern world of gadgets.</p>
<p>The second paragraph explains <a href="https://other.example/x">a link</a> and <b>bold text</b>
at considerable length so that the extractor keeps it as part of the main content.</p>
<ul><li>first item</li><li>second item</li></ul></article>
<footer>Copyright footer junk</footer><script>var tracking = 1;</script></body></html>"""

PDF = b"%PDF-1.4\n1 0 obj\n<< /Type /Catalog >>\nendobj\ntrailer\n<< /Root 1 0 R >>\n%%EOF\n"
MB = 1024 * 1024


def png(width: int, height: int, colour: tuple[int, int, int] = (0, 0, 255)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), colour).save(out, "PNG")
    return out.getvalue()


class WebServer(EchoServer):
    """The echo server plus pages: an article, text, a PDF, big and streamed bodies, and pages
    for the browser (a red page, a tall one, one loading sub-resources from refused places)."""

    name = "web server"

    def respond(self, request: EchoRequest) -> tuple[int, dict[str, str], bytes | Iterator[bytes]]:
        parts = [p for p in request.path.split("/") if p]
        html = {"Content-Type": "text/html; charset=utf-8"}
        if parts == ["article"]:
            return 200, html, ARTICLE.encode()
        if parts == ["plain"]:
            return 200, {"Content-Type": "text/plain"}, b"just some words"
        if parts == ["report"]:  # a PDF the server does not label
            headers = {
                "Content-Type": "application/octet-stream",
                "Content-Disposition": 'attachment; filename="quarterly report.pdf"',
            }
            return 200, headers, PDF
        if parts == ["doc.pdf"]:
            return 200, {"Content-Type": "application/pdf"}, PDF
        if parts == ["pixel.png"]:
            return 200, {"Content-Type": "image/png"}, png(2, 2)
        if len(parts) == 2 and parts[0] == "big":
            filler = "<p>" + "word " * (int(parts[1]) // 5) + "</p>"
            return 200, html, f"<html><body>{filler}</body></html>".encode()
        if len(parts) == 2 and parts[0] == "stream":  # no Content-Length: read until closed
            return 200, {"Content-Type": "application/octet-stream"}, self._stream(int(parts[1]))
        if parts == ["red"]:
            body = '<html><body style="margin:0;background:rgb(255,0,0)"></body></html>'
            return 200, html, body.encode()
        if parts == ["tall"]:
            body = (
                '<html><body style="margin:0"><div style="height:2000px;background:#0f0"></div>'
                '<div id="box" style="width:120px;height:80px;background:#00f"></div></body></html>'
            )
            return 200, html, body.encode()
        if parts == ["guarded"]:
            body = (
                '<html><body style="margin:0;background:#fff">'
                '<img src="/pixel.png">'
                '<img src="http://169.254.169.254/latest/meta-data/">'
                '<img src="http://10.0.0.1/private.png">'
                '<img src="/redirect?to=http://169.254.169.254/via-redirect">'
                "</body></html>"
            )
            return 200, html, body.encode()
        return super().respond(request)

    def _stream(self, size: int) -> Iterator[bytes]:
        chunk = b"z" * 65536
        sent = 0
        while sent < size:
            piece = chunk[: size - sent]
            sent += len(piece)
            yield piece

    def paths(self) -> list[str]:
        return [r.path for r in self.requests]


@pytest.fixture
def server() -> Iterator[WebServer]:
    with WebServer() as running:
        yield running


def settings(**http: Any) -> Settings:
    values: dict[str, Any] = {"allow_loopback": True, **http}
    return Settings().model_copy(update={"http": HttpSettings(**values)})


def context(
    node_type: str,
    raw: dict[str, Any],
    config: Settings,
    files: Path,
    *,
    inputs: dict[str, Any] | None = None,
    upstream: dict[str, Any] | None = None,
    max_bytes: int = 20 * MB,
) -> NodeContext:
    normalised, problems = normalise_config(node_type, raw, node_id="n")
    assert problems == []
    state = ExecutionState.start(inputs or {})
    for rank, (node_id, output) in enumerate((upstream or {}).items()):
        state = state.with_output(node_id, rank, output)
    return NodeContext(
        node_id="n",
        node_type=node_type,
        label="n",
        config=normalised,
        state=state,
        upstream=tuple(upstream or {}),
        services={"settings": config, "files": FileStore(str(files), max_bytes=max_bytes)},
        run_tags={WORKFLOW_ID_TAG: "wf-1"},
        execution_id="exec-1",
    )


def run(node_type: str, raw: dict[str, Any], config: Settings, files: Path, **kw: Any) -> Any:
    result: NodeResult = get_executor(node_type)(context(node_type, raw, config, files, **kw))
    return result.output


# -- url -------------------------------------------------------------------------------------


def test_url_node_reads_the_url_from_a_path_in_the_workflow_data(
    server: WebServer, tmp_path: Path
) -> None:
    upstream = {"apollo": {"apolloData": {"company": {"website": server.url("/article")}}}}
    raw = {"urlVariable": "apolloData.company.website", "outputVariable": "companyWebsite"}
    page = run("url", raw, settings(), tmp_path, upstream=upstream)["companyWebsite"]
    assert page["url"] == page["finalUrl"] == server.url("/article")
    assert page["status"] == 200
    assert page["title"] == "Widgets are great"
    assert page["description"] == "A page about widgets"
    assert "Widgets are small devices" in page["text"]
    assert "var tracking" not in page["text"] and "Copyright footer junk" not in page["text"]
    assert page["urlCount"] == page["successCount"] == 1
    assert page["urls"][0]["metadata"]["author"] == "Ann Author"


def test_url_node_fetches_a_list_and_keeps_going_past_a_failed_page(
    server: WebServer, tmp_path: Path
) -> None:
    urls = [server.url("/article"), server.url("/status/404"), server.url("/plain")]
    raw = {"urlVariable": "newsUrls", "outputVariable": "news", "scrapingMode": "markdown"}
    news = run("url", raw, settings(), tmp_path, inputs={"newsUrls": urls})["news"]
    assert (news["urlCount"], news["successCount"], news["errorCount"]) == (3, 2, 1)
    article, missing, plain = news["urls"]
    assert "[a link](https://other.example/x)" in article["content"]
    assert "HTTP 404" in missing["error"] and missing["status"] == 404
    assert plain["text"] == "just some words"
    assert "Widgets are small devices" in news["text"] and "just some words" in news["text"]


def test_url_node_names_a_missing_variable(tmp_path: Path) -> None:
    with pytest.raises(NodeConfigurationError, match=r"urlVariable: nothing .* 'lead\.site'"):
        run("url", {"urlVariable": "lead.site"}, settings(), tmp_path)


def test_url_node_refuses_a_file_that_is_not_a_page(server: WebServer, tmp_path: Path) -> None:
    with pytest.raises(NodeExecutionError, match=r"url: .* application/pdf, not a web page"):
        run("url", {"url": server.url("/doc.pdf")}, settings(), tmp_path)


# -- the guard, limits and failures (shared by url, webBrowse and fileDownload) ---------------


@pytest.mark.parametrize(
    "target", ["http://169.254.169.254/latest/meta-data/", "http://10.0.0.1/admin"]
)
@pytest.mark.parametrize("node_type", ["url", "webBrowse", "fileDownload"])
def test_a_redirect_to_a_refused_address_is_refused_after_an_allowed_first_hop(
    server: WebServer, tmp_path: Path, target: str, node_type: str
) -> None:
    url = server.url(f"/redirect?to={target}")
    with pytest.raises(NodeConfigurationError, match=r"url: request to '.*' refused"):
        run(node_type, {"url": url}, settings(), tmp_path)
    assert server.paths() == ["/redirect"]  # the first hop went out, the second never did
    assert list(tmp_path.rglob("*.*")) == []


def test_loopback_is_refused_unless_allowed(server: WebServer, tmp_path: Path) -> None:
    closed = Settings()  # the default guard: no loopback
    with pytest.raises(NodeConfigurationError, match="loopback address"):
        run("webBrowse", {"url": server.url("/article")}, closed, tmp_path)
    assert server.requests == []


def test_a_page_over_the_size_cap_fails_naming_the_setting(
    server: WebServer, tmp_path: Path
) -> None:
    with pytest.raises(NodeExecutionError, match=r"url: .*larger than 2000 bytes"):
        run(
            "webBrowse",
            {"url": server.url("/big/5000")},
            settings(max_response_bytes=2000),
            tmp_path,
        )


def test_a_slow_server_times_out_as_a_retryable_error(server: WebServer, tmp_path: Path) -> None:
    with pytest.raises(TransientNodeError, match=r"url: GET .* timed out"):
        run("webBrowse", {"url": server.url("/delay/5"), "timeout": 0.3}, settings(), tmp_path)


@pytest.mark.parametrize(
    ("status", "error"), [(503, TransientNodeError), (404, NodeExecutionError)]
)
def test_an_error_status_fails_the_node(
    server: WebServer, tmp_path: Path, status: int, error: type[Exception]
) -> None:
    with pytest.raises(error, match=f"url: GET .* answered HTTP {status}") as info:
        run("webBrowse", {"url": server.url(f"/status/{status}")}, settings(), tmp_path)
    assert isinstance(info.value, TransientNodeError) == (status == 503)


# -- webBrowse -------------------------------------------------------------------------------


def browse(server: WebServer, tmp_path: Path, **config: Any) -> dict[str, Any]:
    raw = {"url": server.url("/article"), "outputVariable": "page", **config}
    output: dict[str, Any] = run("webBrowse", raw, settings(), tmp_path)["page"]
    return output


def test_web_browse_extracts_main_text(server: WebServer, tmp_path: Path) -> None:
    page = browse(server, tmp_path, extractType="text")
    assert page["extractType"] == "text" and page["contentType"] == "text/html"
    assert page["content"].startswith("Widgets are great\nWidgets are small devices")
    assert "Home" not in page["content"] and "var tracking" not in page["content"]
    assert page["truncated"] is False and page["contentLength"] == len(page["content"])


def test_web_browse_markdown_keeps_links_and_emphasis(server: WebServer, tmp_path: Path) -> None:
    content = browse(server, tmp_path, extractType="markdown")["content"]
    assert "# Widgets are great" in content
    assert "[a link](https://other.example/x)" in content and "**bold text**" in content


def test_web_browse_html_is_the_main_content_as_html(server: WebServer, tmp_path: Path) -> None:
    content = browse(server, tmp_path, extractType="html")["content"]
    assert "<h1>Widgets are great</h1>" in content and "<li>first item</li>" in content
    assert "<nav>" not in content and "<script>" not in content


def test_web_browse_links_are_absolute_and_unique(server: WebServer, tmp_path: Path) -> None:
    page = browse(server, tmp_path, extractType="links")
    assert page["links"] == [
        {"url": server.url("/home"), "text": "Home"},
        {"url": server.url("/about"), "text": "About us"},
        {"url": "https://other.example/x", "text": "a link"},
    ]
    assert page["content"].splitlines() == [link["url"] for link in page["links"]]


def test_web_browse_metadata(server: WebServer, tmp_path: Path) -> None:
    page = browse(server, tmp_path, extractType="metadata")
    metadata = page["metadata"]
    assert metadata["description"] == "A page about widgets"
    assert metadata["author"] == "Ann Author"
    assert json.loads(page["content"]) == metadata


@pytest.mark.parametrize(
    ("config", "kind"), [({"extractText": True}, "text"), ({"extractText": False}, "raw")]
)
def test_web_browse_understands_the_older_extract_text(
    server: WebServer, tmp_path: Path, config: dict[str, Any], kind: str
) -> None:
    page = browse(server, tmp_path, **config)
    assert page["extractType"] == kind
    assert ("<nav>" in page["content"]) == (kind == "raw")


def test_web_browse_cuts_to_max_length(server: WebServer, tmp_path: Path) -> None:
    page = browse(server, tmp_path, extractType="text", maxLength=30)
    assert page["truncated"] is True
    assert page["content"] == "Widgets are great\nWidgets are "
    assert page["contentLength"] == 30


def test_web_browse_of_a_pdf_names_the_url_field(server: WebServer, tmp_path: Path) -> None:
    with pytest.raises(
        NodeExecutionError,
        match=r"^node 'n' \(webBrowse\): url: .*application/pdf, not an HTML page",
    ):
        run("webBrowse", {"url": server.url("/doc.pdf")}, settings(), tmp_path)


def test_web_browse_plain_text_is_its_own_text(server: WebServer, tmp_path: Path) -> None:
    raw = {"url": server.url("/plain"), "extractType": "markdown"}
    assert run("webBrowse", raw, settings(), tmp_path)["content"] == "just some words"


def test_web_browse_url_from_a_search_result(server: WebServer, tmp_path: Path) -> None:
    upstream = {"search": {"searchResults": {"results": [{"url": server.url("/article")}]}}}
    raw = {"url": "${search.searchResults.results[0].url}", "extractText": True, "maxLength": 5000}
    assert (
        "Widgets are small devices"
        in run("webBrowse", raw, settings(), tmp_path, upstream=upstream)["content"]
    )


# -- fileDownload ----------------------------------------------------------------------------


def test_file_download_streams_into_the_store_typed_by_content(
    server: WebServer, tmp_path: Path
) -> None:
    raw = {"url": server.url("/report"), "outputVariable": "recording"}
    ctx = context("fileDownload", raw, settings(), tmp_path)
    output = get_executor("fileDownload")(ctx).output["recording"]
    ref = output["file"]
    assert ref["type"] == "file"
    assert ref["name"] == output["filename"] == "quarterly report.pdf"
    assert ref["mediaType"] == output["mediaType"] == "application/pdf"  # sniffed, not declared
    assert output["contentType"] == "application/octet-stream"
    assert ref["path"] == "/executions/exec-1/n/quarterly report.pdf"
    assert ref["size"] == len(PDF) and ref["sha256"] == hashlib.sha256(PDF).hexdigest()
    stored = (
        tmp_path / "workflows" / "wf-1" / "executions" / "exec-1" / "n" / "quarterly report.pdf"
    )
    assert stored.read_bytes() == PDF


@pytest.mark.parametrize(
    ("config", "path"),
    [
        ({"filename": "mine.pdf", "path": "/downloads"}, "/downloads/mine.pdf"),
        ({"path": "/inbox/today.pdf"}, "/inbox/today.pdf"),
        ({"path": "/inbox/"}, "/inbox/doc.pdf"),
        ({"filename": "../../escape"}, "/executions/exec-1/n/escape.pdf"),
    ],
)
def test_file_download_names_and_places_the_file(
    server: WebServer, tmp_path: Path, config: dict[str, Any], path: str
) -> None:
    output = run("fileDownload", {"url": server.url("/doc.pdf"), **config}, settings(), tmp_path)
    assert output["file"]["path"] == path
    assert (tmp_path / "workflows" / "wf-1" / path.lstrip("/")).read_bytes() == PDF


def test_file_download_path_cannot_leave_the_workflow_area(
    server: WebServer, tmp_path: Path
) -> None:
    with pytest.raises(NodeConfigurationError, match="climbs out of the workflow's file area"):
        run(
            "fileDownload",
            {"url": server.url("/doc.pdf"), "path": "/../../other-workflow/"},
            settings(),
            tmp_path,
        )


def test_file_download_refuses_a_declared_size_over_max_size(
    server: WebServer, tmp_path: Path
) -> None:
    with pytest.raises(FileTooLargeError, match=r"url: .* larger than 100 bytes"):
        run(
            "fileDownload", {"url": server.url("/bytes/1000"), "maxSize": 100}, settings(), tmp_path
        )


def test_file_download_stops_an_undeclared_body_at_the_store_cap(
    server: WebServer, tmp_path: Path
) -> None:
    with pytest.raises(FileTooLargeError, match="larger than 100000 bytes"):
        run(
            "fileDownload",
            {"url": server.url("/stream/1000000")},
            settings(),
            tmp_path,
            max_bytes=100_000,
        )
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []  # the partial file is gone


def test_file_download_is_not_capped_by_the_http_response_cap_and_streams(
    server: WebServer, tmp_path: Path
) -> None:
    size = 12 * MB
    config = settings(max_response_bytes=MB)  # the http node's cap: not the file store's
    tracemalloc.start()
    try:
        output = run(
            "fileDownload",
            {"url": server.url(f"/stream/{size}")},
            config,
            tmp_path,
            max_bytes=20 * MB,
        )
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert output["size"] == size
    assert peak < 4 * MB  # chunks, never the whole body


def test_file_download_checks_allowed_types_by_content(server: WebServer, tmp_path: Path) -> None:
    raw = {"url": server.url("/report"), "allowedContentTypes": ["image/*", "text/csv"]}
    with pytest.raises(NodeExecutionError, match=r"allowedContentTypes: .* is application/pdf"):
        run("fileDownload", raw, settings(), tmp_path)
    allowed = {"url": server.url("/report"), "allowedContentTypes": ["application/pdf"]}
    assert run("fileDownload", allowed, settings(), tmp_path)["mediaType"] == "application/pdf"


def test_downloaded_file_feeds_the_next_node_by_reference(
    server: WebServer, tmp_path: Path
) -> None:
    from flowmaestro_dagster.nodes.filestore import input_file

    output = run(
        "fileDownload",
        {"url": server.url("/report"), "outputVariable": "recording"},
        settings(),
        tmp_path,
    )
    ctx = context("fileRead", {}, settings(), tmp_path, upstream={"download": output})
    ref = input_file(ctx, ctx.render("{{recording}}"), "path")
    assert ref.media_type == "application/pdf" and ref.size == len(PDF)


# -- webSearch -------------------------------------------------------------------------------


class FakeSearch(LocalHTTPServer):
    """A search provider: records requests and answers the JSON set for each path."""

    name = "fake search provider"

    def __init__(
        self, answers: dict[str, Any], status: int = 200, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__()
        self.answers = answers
        self.status = status
        self.headers = headers or {}
        self.requests: list[dict[str, Any]] = []
        self.lock = threading.Lock()

    def url(self, path: str = "") -> str:
        return f"http://127.0.0.1:{self.port}{path}"


class _FakeSearchHandler(BaseHTTPRequestHandler):
    def _handle(self) -> None:
        fake: FakeSearch = self.server.owner  # type: ignore[attr-defined]
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        path, _, query = self.path.partition("?")
        with fake.lock:
            fake.requests.append(
                {
                    "method": self.command,
                    "path": path,
                    "query": query,
                    "headers": {k.lower(): v for k, v in self.headers.items()},
                    "json": json.loads(body) if body else None,
                }
            )
        answer = fake.answers.get(path, {"error": "no such path"})
        payload = answer if isinstance(answer, bytes) else json.dumps(answer).encode()
        self.send_response(fake.status)
        self.send_header("Content-Type", "application/json")
        for name, value in fake.headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    do_GET = _handle
    do_POST = _handle

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet."""


FakeSearch.handler = _FakeSearchHandler


def search_settings(
    connections: dict[str, dict[str, Any]], provider: str | None = None
) -> Settings:
    return settings().model_copy(
        update={
            "connections": {
                k: ConnectionSettings.model_validate(v) for k, v in connections.items()
            },
            "web_search": WebSearchSettings(provider=provider),
        }
    )


def search(config: Settings, tmp_path: Path, **raw: Any) -> dict[str, Any]:
    output: dict[str, Any] = run(
        "webSearch", {"query": "flow maestro", "outputVariable": "found", **raw}, config, tmp_path
    )["found"]
    return output


BRAVE_WEB = {
    "web": {
        "results": [
            {
                "title": "Flow <strong>Maestro</strong>",
                "url": "https://fm.example/",
                "description": "Run <strong>flows</strong> &amp; more",
                "page_age": "2024-01-15",
            },
            {"title": "Second", "url": "https://two.example/", "description": "two"},
            {"title": "Third", "url": "https://three.example/", "description": "three"},
        ]
    }
}


def test_brave_request_and_results(tmp_path: Path) -> None:
    with FakeSearch({"/res/v1/web/search": BRAVE_WEB}) as fake:
        config = search_settings(
            {"brave": {"base_url": fake.url("/res/v1"), "api_key": "brave-secret-key"}}
        )
        found = search(config, tmp_path, provider="brave", maxResults=2)
    [request] = fake.requests
    assert request["method"] == "GET" and request["path"] == "/res/v1/web/search"
    assert request["query"] == "q=flow+maestro&count=2"
    assert request["headers"]["x-subscription-token"] == "brave-secret-key"
    assert request["headers"]["accept"] == "application/json"
    assert found == {
        "query": "flow maestro",
        "results": [
            {
                "title": "Flow Maestro",
                "url": "https://fm.example/",
                "snippet": "Run flows & more",
                "publishedDate": "2024-01-15",
            },
            {"title": "Second", "url": "https://two.example/", "snippet": "two"},
        ],
        "count": 2,
        "provider": "brave",
        "searchType": "web",
    }


def test_brave_news_uses_the_news_endpoint(tmp_path: Path) -> None:
    answer = {
        "results": [
            {
                "title": "Breaking",
                "url": "https://news.example/a",
                "description": "it happened",
                "age": "1 day ago",
            }
        ]
    }
    with FakeSearch({"/res/v1/news/search": answer}) as fake:
        config = search_settings(
            {"brave": {"base_url": fake.url("/res/v1"), "api_key": "k-123456"}}
        )
        found = search(config, tmp_path, provider="brave", searchType="news", maxResults=10)
    assert fake.requests[0]["path"] == "/res/v1/news/search"
    assert found["results"] == [
        {
            "title": "Breaking",
            "url": "https://news.example/a",
            "snippet": "it happened",
            "publishedDate": "1 day ago",
        }
    ]


def test_tavily_request_and_results(tmp_path: Path) -> None:
    answer = {
        "query": "flow maestro",
        "results": [
            {
                "title": "T",
                "url": "https://t.example/",
                "content": "tavily says",
                "score": 0.9,
                "published_date": "2024-02-01",
            }
        ],
    }
    with FakeSearch({"/search": answer}) as fake:
        config = search_settings(
            {"tavily": {"base_url": fake.url(), "api_key": "tvly-secret"}}, provider="tavily"
        )
        found = search(config, tmp_path, maxResults=7, searchType="news")
    [request] = fake.requests
    assert request["method"] == "POST" and request["path"] == "/search"
    assert request["headers"]["authorization"] == "Bearer tvly-secret"
    assert request["json"] == {
        "query": "flow maestro",
        "max_results": 7,
        "topic": "news",
        "search_depth": "basic",
    }
    assert found["results"] == [
        {
            "title": "T",
            "url": "https://t.example/",
            "snippet": "tavily says",
            "publishedDate": "2024-02-01",
            "score": 0.9,
        }
    ]
    assert found["provider"] == "tavily"


def test_serper_request_and_image_results(tmp_path: Path) -> None:
    answer = {
        "images": [
            {
                "title": "Cat",
                "imageUrl": "https://img.example/cat.jpg",
                "link": "https://cats.example/",
                "source": "cats.example",
                "thumbnailUrl": "https://img.example/t.jpg",
            }
        ]
    }
    with FakeSearch({"/images": answer}) as fake:
        config = search_settings({"serper": {"base_url": fake.url(), "api_key": "serper-secret"}})
        found = search(config, tmp_path, provider="serper", searchType="images", maxResults=3)
    [request] = fake.requests
    assert request["method"] == "POST" and request["path"] == "/images"
    assert request["headers"]["x-api-key"] == "serper-secret"
    assert request["json"] == {"q": "flow maestro", "num": 3}
    assert found["results"] == [
        {
            "title": "Cat",
            "url": "https://img.example/cat.jpg",
            "snippet": "cats.example",
            "pageUrl": "https://cats.example/",
            "thumbnailUrl": "https://img.example/t.jpg",
        }
    ]


def test_serper_web_results(tmp_path: Path) -> None:
    answer = {
        "organic": [
            {"title": "Org", "link": "https://org.example/", "snippet": "organic", "position": 1}
        ]
    }
    with FakeSearch({"/search": answer}) as fake:
        config = search_settings({"serper": {"base_url": fake.url(), "api_key": "serper-secret"}})
        found = search(config, tmp_path, provider="serper")
    assert fake.requests[0]["json"] == {"q": "flow maestro", "num": 5}  # default_results
    assert found["results"] == [
        {"title": "Org", "url": "https://org.example/", "snippet": "organic"}
    ]


def test_searxng_self_hosted_through_a_named_connection(tmp_path: Path) -> None:
    answer = {
        "results": [
            {
                "title": "S",
                "url": "https://s.example/",
                "content": "from searx",
                "engine": "duckduckgo",
            }
        ]
        * 4
    }
    with FakeSearch({"/searx/search": answer}) as fake:
        config = search_settings(
            {"intranet": {"connector": "searxng", "base_url": fake.url("/searx")}}
        )
        found = search(config, tmp_path, connectionId="intranet", maxResults=2)
    [request] = fake.requests
    assert request["method"] == "GET" and request["path"] == "/searx/search"
    assert request["query"] == "q=flow+maestro&format=json&categories=general"
    assert "authorization" not in request["headers"]
    assert found["count"] == 2 and found["provider"] == "searxng"
    assert found["results"][0] == {
        "title": "S",
        "url": "https://s.example/",
        "snippet": "from searx",
        "source": "duckduckgo",
    }


def test_the_default_provider_comes_from_settings(tmp_path: Path) -> None:
    with FakeSearch({"/search": {"results": []}}) as fake:
        config = search_settings({"searxng": {"base_url": fake.url()}}, provider="searxng")
        found = search(config, tmp_path)
    assert found == {
        "query": "flow maestro",
        "results": [],
        "count": 0,
        "provider": "searxng",
        "searchType": "web",
    }


def test_no_provider_says_what_to_set(tmp_path: Path) -> None:
    with pytest.raises(ConnectorNotConfiguredError, match="FLOWMAESTRO_WEB_SEARCH__PROVIDER"):
        search(settings(), tmp_path)


def test_a_provider_without_its_key_says_which_connection(tmp_path: Path) -> None:
    with pytest.raises(
        ConnectorNotConfiguredError, match="FLOWMAESTRO_CONNECTIONS__BRAVE__API_KEY"
    ):
        search(settings(), tmp_path, provider="brave")


def test_a_rejected_key_is_a_configuration_error_that_does_not_echo_it(tmp_path: Path) -> None:
    with FakeSearch({"/search": {"detail": "bad key tvly-leaky-secret"}}, status=401) as fake:
        config = search_settings(
            {"tavily": {"base_url": fake.url(), "api_key": "tvly-leaky-secret"}}
        )
        with pytest.raises(NodeConfigurationError, match="HTTP 401") as info:
            search(config, tmp_path, provider="tavily")
    assert "tvly-leaky-secret" not in str(info.value) and "***" in str(info.value)


def test_rate_limited_search_is_retried_after_the_providers_delay(tmp_path: Path) -> None:
    with FakeSearch({}, status=429, headers={"Retry-After": "7"}) as fake:
        config = search_settings({"serper": {"base_url": fake.url(), "api_key": "serper-secret"}})
        with pytest.raises(TransientNodeError) as info:
            search(config, tmp_path, provider="serper")
    assert info.value.retry_after_seconds == 7


def test_the_key_never_follows_a_redirect(server: WebServer, tmp_path: Path) -> None:
    with FakeSearch({}, status=302, headers={"Location": server.url("/steal")}) as fake:
        config = search_settings(
            {"brave": {"base_url": fake.url("/res/v1"), "api_key": "brave-secret-key"}}
        )
        with pytest.raises(NodeExecutionError, match="HTTP 302"):
            search(config, tmp_path, provider="brave")
    assert server.requests == []


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"query": "   "}, "query: the search query is empty"),
        ({"maxResults": 0}, "maxResults: expected a positive integer"),
        ({"searchType": "videos"}, "searchType: 'videos'"),
    ],
)
def test_bad_search_fields_name_the_field(
    tmp_path: Path, raw: dict[str, Any], message: str
) -> None:
    with pytest.raises(NodeConfigurationError, match=message):
        search(search_settings({}, provider="brave"), tmp_path, **raw)


# -- deploy-time checks ----------------------------------------------------------------------


def spec(node_type: str, **raw: Any) -> NodeSpec:
    config, _ = normalise_config(node_type, raw, node_id="n")
    return NodeSpec(
        id="n", type=node_type, source_type=node_type, label="n", config=config, original_config=raw
    )


@pytest.mark.parametrize(
    ("node_type", "raw", "field"),
    [
        ("webBrowse", {"url": "https://x.example", "extractType": "pdf"}, "extractType"),
        ("webBrowse", {"extractType": "text"}, "url"),
        ("webBrowse", {"url": "https://x.example", "maxLength": -5}, "maxLength"),
        ("webSearch", {"maxResults": 5}, "query"),
        ("webSearch", {"query": "q", "maxResults": "many"}, "maxResults"),
        ("webSearch", {"query": "q", "maxResults": 2.5}, "maxResults"),
        ("webSearch", {"query": "q", "searchType": "videos"}, "searchType"),
        ("fileDownload", {"filename": "x.pdf"}, "url"),
        ("fileDownload", {"url": "https://x.example/a", "maxSize": 0}, "maxSize"),
        ("screenshotCapture", {"url": "https://x.example", "format": "gif"}, "format"),
        ("screenshotCapture", {"fullPage": True}, "url"),
        ("url", {"urlVariable": "site", "scrapingMode": "pdf"}, "scrapingMode"),
    ],
)
def test_deploy_time_checks_name_node_and_field(
    node_type: str, raw: dict[str, Any], field: str
) -> None:
    problems = list(web.CONFIG_CHECKS[node_type](spec(node_type, **raw)))
    assert [(p.severity, p.node_id, p.field) for p in problems] == [("error", "n", field)]


@pytest.mark.parametrize(
    ("node_type", "raw"),
    [
        ("webBrowse", {"url": "{{page.url}}", "extractType": "{{kind}}", "maxLength": "{{n}}"}),
        ("webSearch", {"query": "${input.data.query}", "maxResults": 10, "searchType": "general"}),
        ("fileDownload", {"url": "{{call.recordingUrl}}"}),
        ("screenshotCapture", {"url": "https://x.example", "format": "jpg", "width": 800}),
        ("url", {"urlVariable": "apolloData.company.website"}),
    ],
)
def test_templates_and_good_values_pass_deploy_checks(node_type: str, raw: dict[str, Any]) -> None:
    assert list(web.CONFIG_CHECKS[node_type](spec(node_type, **raw))) == []


def test_validation_runs_the_web_checks() -> None:
    definition = flow([node("search", "webSearch", maxResults=3, outputVariable="r")], [])
    problems = validate(json.dumps(definition))
    assert [(p.code, p.node_id, p.field) for p in problems if p.severity == "error"] == [
        ("missing_config", "search", "query")
    ]


def test_the_corpus_search_and_browse_chain_compiles() -> None:
    from flowmaestro_dagster.engines.jobs import build_job
    from tests.conftest import corpus_files, corpus_id

    path = next(
        f for f in corpus_files() if corpus_id(f).endswith("createsearchbrowsechaindefinition.json")
    )
    compiled = build_job(path.read_bytes())
    assert {n.type for n in compiled.spec.nodes.values()} >= {"webSearch", "webBrowse"}
    assert [
        p for p in compiled.warnings if p.node_id in compiled.spec.nodes and p.severity == "error"
    ] == []


# -- screenshotCapture (Debian's chromium) ---------------------------------------------------


def shot(
    server: WebServer, tmp_path: Path, config: Settings | None = None, **raw: Any
) -> tuple[dict[str, Any], Image.Image]:
    output = run(
        "screenshotCapture", {"outputVariable": "shot", **raw}, config or settings(), tmp_path
    )["shot"]
    stored = tmp_path / "workflows" / "wf-1" / output["file"]["path"].lstrip("/")
    return output, Image.open(io.BytesIO(stored.read_bytes()))


@pytest.mark.slow
def test_viewport_screenshot_has_the_viewport_size_and_the_page(
    server: WebServer, tmp_path: Path
) -> None:
    output, image = shot(server, tmp_path, url=server.url("/red"), width=400, height=300)
    assert image.format == "PNG" and image.size == (400, 300)
    assert (output["width"], output["height"]) == (400, 300)
    assert image.convert("RGB").getpixel((200, 150)) == (255, 0, 0)
    assert (
        output["file"]["mediaType"] == "image/png"
        and output["file"]["path"] == "/executions/exec-1/n/screenshot.png"
    )
    assert output["finalUrl"] == server.url("/red") and output["status"] == 200


@pytest.mark.slow
def test_full_page_element_and_scaled_screenshots(server: WebServer, tmp_path: Path) -> None:
    full, image = shot(
        server, tmp_path, url=server.url("/tall"), width=400, height=300, fullPage=True
    )
    assert image.size == (400, 2080) == (full["width"], full["height"])
    element, image = shot(
        server, tmp_path, url=server.url("/tall"), selector="#box", format="jpeg", filename="box"
    )
    assert image.format == "JPEG" and image.size == (120, 80)
    assert element["file"]["name"] == "box.jpeg"
    scaled, image = shot(
        server,
        tmp_path,
        url=server.url("/red"),
        width=200,
        height=100,
        deviceScale=2,
        format="webp",
    )
    assert image.format == "WEBP" and image.size == (400, 200)
    assert (scaled["width"], scaled["height"], scaled["format"]) == (400, 200, "webp")
    capped = settings().model_copy(update={"browser": BrowserSettings(max_height=1000)})
    cut, image = shot(server, tmp_path, capped, url=server.url("/tall"), width=400, fullPage=True)
    assert image.size == (400, 1000) and cut["truncated"] is True and full["truncated"] is False


@pytest.mark.slow
def test_every_request_the_page_makes_goes_through_the_guard(
    server: WebServer, tmp_path: Path
) -> None:
    output, _ = shot(server, tmp_path, url=server.url("/guarded"), width=300, height=200)
    blocked = {entry["url"]: entry["reason"] for entry in output["blockedRequests"]}
    assert "metadata address" in blocked["http://169.254.169.254/latest/meta-data/"]
    assert "private address" in blocked["http://10.0.0.1/private.png"]
    # The allowed page's own image loaded; its redirect was followed here and refused at the
    # metadata hop (the browser never fetched anything itself).
    assert "/pixel.png" in server.paths() and "/redirect" in server.paths()
    assert any(url.startswith(server.url("/redirect")) for url in blocked)


def test_a_refused_top_level_url_fails_before_any_browser_starts(tmp_path: Path) -> None:
    no_browser = settings().model_copy(
        update={"browser": BrowserSettings(executable="/nonexistent/chromium")}
    )
    with pytest.raises(
        NodeConfigurationError, match=r"url: request to '169\.254\.169\.254' refused"
    ):
        run("screenshotCapture", {"url": "http://169.254.169.254/"}, no_browser, tmp_path)


def test_a_missing_browser_says_how_to_get_one(server: WebServer, tmp_path: Path) -> None:
    no_browser = settings().model_copy(
        update={"browser": BrowserSettings(executable="no-such-chromium")}
    )
    with pytest.raises(ConnectorNotConfiguredError, match="FLOWMAESTRO_BROWSER__EXECUTABLE"):
        run("screenshotCapture", {"url": server.url("/red")}, no_browser, tmp_path)


@pytest.mark.slow
def test_a_page_that_does_not_load_in_time_is_a_retryable_error(
    server: WebServer, tmp_path: Path
) -> None:
    # The budget covers the browser's start too: on a loaded machine the start can use it up,
    # which is the same retryable error in other words.
    deadline = r"url: (GET .* timed out|the page did not finish within 3s)"
    with pytest.raises(TransientNodeError, match=deadline):
        run(
            "screenshotCapture",
            {"url": server.url("/delay/20"), "timeout": 3000},
            settings(),
            tmp_path,
        )
