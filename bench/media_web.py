"""The web nodes on their typical inputs (issue 18): a ~200 KB article page fetched from a local
server and extracted by url and webBrowse (text and markdown, trafilatura), a 20 MB
fileDownload streamed into the file store, one webSearch against a local SearXNG-shaped fake,
and one 1280 x 720 screenshotCapture of the article page (Playwright driving Debian's chromium,
every request of the page fetched through the SSRF guard).

Each case runs in a fresh child process (spawned) with its own local server, with the figures
every media row has (bench/media_common.py): the first call (library imports; for the
screenshot, nothing is reused between calls anyway: every capture starts its browser), the
median, min and max of the repeated calls, the peak of Python allocations during one call and
the child's peak resident set; and for the screenshot the largest peak resident set among the
processes it started (the Playwright driver and Chromium's, getrusage RUSAGE_CHILDREN):
`browser_max_rss_mb`.

`python -m bench.media_web` prints the result as JSON; `run()` returns it.
"""

import json
import resource
import sys
import tempfile
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from typing import Any

from bench.media_common import file_store, node_call, run_in_children, time_calls
from flowmaestro_dagster.settings import ConnectionSettings, HttpSettings, Settings
from flowmaestro_dagster.testing.local_server import LocalHTTPServer

PAGE_BYTES = 200 * 1024
DOWNLOAD_BYTES = 20 * 1024 * 1024
REPEATS = 10
SCREENSHOT_REPEATS = 3


def article(size: int = PAGE_BYTES) -> bytes:
    """A news-like page: head metadata, navigation, an article of paragraphs, lists, a table
    and links, a sidebar, scripts and a footer, padded with paragraphs to `size` bytes."""
    head = (
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>"
        "<title>Quarterly widget market report</title>"
        "<meta name='description' content='How the widget market moved this quarter'>"
        "<meta name='author' content='Ann Analyst'><style>body{font-family:sans-serif}"
        ".side{float:right;width:30%}</style></head><body>"
        "<nav>" + " ".join(f"<a href='/section/{i}'>Section {i}</a>" for i in range(30)) + "</nav>"
        "<aside class='side'><h3>Related</h3><ul>"
        + "".join(f"<li><a href='/related/{i}'>Related story {i}</a></li>" for i in range(20))
        + "</ul></aside><article><h1>The widget market this quarter</h1>"
    )
    tail = (
        "<table><tr><th>Region</th><th>Units</th></tr>"
        + "".join(f"<tr><td>Region {i}</td><td>{i * 1234}</td></tr>" for i in range(20))
        + "</table></article><footer>Copyright, imprint, cookie settings</footer>"
        "<script>window.analytics = {track: function () {}};</script></body></html>"
    )
    paragraphs: list[str] = []
    i = 0
    while len(head) + len(tail) + sum(len(p) for p in paragraphs) < size:
        paragraphs.append(
            f"<h2>Part {i}</h2>"
            * (i % 10 == 0)
            + f"<p>Paragraph {i}: widget makers shipped {i * 17 % 900} thousand units, "
            f"<a href='https://source.example/{i}'>according to the survey</a>, while prices "
            f"moved by <b>{i % 7}.{i % 10} percent</b> and analysts expect the trend to "
            "continue into the next quarter as supply chains settle and demand recovers.</p>"
        )
        i += 1
    return (head + "".join(paragraphs) + tail).encode()


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        path = self.path.partition("?")[0]
        if path == "/article":
            body = article()
            self._send(200, "text/html; charset=utf-8", body)
        elif path == "/download":
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(DOWNLOAD_BYTES))
            self.end_headers()
            for chunk in _chunks(DOWNLOAD_BYTES):
                self.wfile.write(chunk)
        elif path == "/search":
            results = [
                {"title": f"Result {i}", "url": f"https://r.example/{i}", "content": "snippet"}
                for i in range(10)
            ]
            self._send(200, "application/json", json.dumps({"results": results}).encode())
        else:
            self._send(404, "text/plain", b"not found")

    def _send(self, status: int, content_type: str, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet."""


class _Server(LocalHTTPServer):
    handler = _Handler
    name = "bench web server"


def _chunks(size: int) -> Iterator[bytes]:
    block = bytes(range(256)) * 256  # 64 KiB
    sent = 0
    while sent < size:
        piece = block[: size - sent]
        sent += len(piece)
        yield piece


CASES: dict[str, tuple[str, dict[str, Any], str]] = {
    "url_text": ("url", {"url": "{{base}}/article"}, "200 KB article page"),
    "webBrowse_text": (
        "webBrowse",
        {"url": "{{base}}/article", "extractType": "text", "maxLength": 1_000_000},
        "200 KB article page",
    ),
    "webBrowse_markdown": (
        "webBrowse",
        {"url": "{{base}}/article", "extractType": "markdown", "maxLength": 1_000_000},
        "200 KB article page",
    ),
    "webBrowse_links": (
        "webBrowse",
        {"url": "{{base}}/article", "extractType": "links"},
        "200 KB article page",
    ),
    "fileDownload_20mb": (
        "fileDownload",
        {"url": "{{base}}/download"},
        "20 MB body, streamed",
    ),
    "webSearch": (
        "webSearch",
        {"query": "widget market", "provider": "searxng", "maxResults": 10},
        "local SearXNG-shaped fake, 10 results",
    ),
    "screenshot_viewport": (
        "screenshotCapture",
        {"url": "{{base}}/article", "width": 1280, "height": 720},
        "200 KB article page, 1280 x 720 PNG",
    ),
}


def _measure(case: str) -> dict[str, Any]:
    """In the child: time and memory of one node type on its input."""
    node_type, raw, shape = CASES[case]
    with _Server() as server, tempfile.TemporaryDirectory() as tmp:
        base = f"http://127.0.0.1:{server.port}"
        settings = Settings().model_copy(
            update={
                "http": HttpSettings(allow_loopback=True),
                "connections": {"searxng": ConnectionSettings(base_url=base)},
            }
        )
        call = node_call(node_type, raw, {"base": base}, file_store(tmp), settings)
        repeats = SCREENSHOT_REPEATS if node_type == "screenshotCapture" else REPEATS
        output, figures = time_calls(call, repeats)
    size = output["file"]["size"] if "file" in output else len(json.dumps(output))
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return {
        "case": case,
        "node": node_type,
        "input": shape,
        **figures,
        "output_bytes": size,
        **({"browser_max_rss_mb": round(children, 1)} if node_type == "screenshotCapture" else {}),
    }


def run() -> list[dict[str, Any]]:
    """One row a case, each measured in its own spawned process."""
    return run_in_children(_measure, CASES)


if __name__ == "__main__":
    cases = sys.argv[1:]
    if cases:
        CASES = {name: CASES[name] for name in cases}
    print(json.dumps(run(), indent=2))
