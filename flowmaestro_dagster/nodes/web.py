"""Web nodes: url, webBrowse, fileDownload, webSearch and screenshotCapture (docs/nodes.md).

Every request goes through the http node's guarded sending (`nodes/http.py` `open_response`:
redirects followed hop by hop, each hop connecting through the SSRF guard of `nodes/net.py`,
bodies capped and time-boxed). Main text comes from trafilatura; files go to the file store
(`nodes/filestore.py`), streamed, never whole in memory or in run state.

webSearch talks to a search provider through a `SearchProvider` adapter (SearXNG, Brave,
Tavily, Serper) whose key and API root are a named connection (`Settings.connections`).

screenshotCapture drives Debian's Chromium with Playwright. Chromium itself never fetches a
page: every request the page makes is intercepted and fetched here through the same guarded
client (each redirect hop re-checked, no DNS rebinding between check and connect), then
handed back to the browser; anything not intercepted meets a dead proxy and an empty host
resolver.
"""

import asyncio
import concurrent.futures
import contextlib
import email.message
import html
import io
import itertools
import json
import mimetypes
import os
import posixpath
import re
import shutil
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from html.parser import HTMLParser
from typing import TYPE_CHECKING, Any, Protocol, TypeVar
from urllib.parse import urljoin, urlsplit

import httpcore
import httpx

from flowmaestro_dagster.errors import (
    ConnectorNotConfiguredError,
    NodeConfigurationError,
    NodeExecutionError,
    TransientNodeError,
)
from flowmaestro_dagster.lang import templates
from flowmaestro_dagster.lang.expressions import to_text
from flowmaestro_dagster.nodes.base import (
    ConfigCheck,
    Executor,
    NodeContext,
    NodeResult,
    wrap_output,
)
from flowmaestro_dagster.nodes.connectors import resolve_connection
from flowmaestro_dagster.nodes.filestore import (
    FileTooLargeError,
    file_area,
    output_path,
    safe_name,
    sniff_media_type,
    store_output,
)
from flowmaestro_dagster.nodes.http import (
    RequestParts,
    _send_failure,
    _TooLarge,
    iter_body,
    open_response,
)
from flowmaestro_dagster.nodes.net import (
    AddressPolicy,
    BlockedAddressError,
    check_url,
    parse_retry_after,
    under_base_url,
)
from flowmaestro_dagster.settings import ConnectionSettings, HttpSettings, Settings
from flowmaestro_dagster.spec.problems import Problem, error

if TYPE_CHECKING:
    from flowmaestro_dagster.spec.models import NodeSpec

T = TypeVar("T")

MAX_URLS = 20  # URLs one url node fetches (a list from `urlVariable` / `urls`)
URL_WORKERS = 4  # of them at once
MAX_LINKS = 1_000  # links a webBrowse `links` extraction lists
MAX_QUERY_CHARS = 1_000
DEFAULT_MAX_LENGTH = 10_000  # webBrowse maxLength (the builder's default)
ACCEPT_HTML = "text/html,application/xhtml+xml;q=0.9,text/plain;q=0.8,*/*;q=0.5"
EXTRACT_TYPES = ("text", "markdown", "html", "links", "metadata", "raw")
SCRAPING_MODES = ("text", "markdown", "html")
SEARCH_TYPES = {
    "web": "web",
    "general": "web",
    "news": "news",
    "images": "images",
    "image": "images",
}
SCREENSHOT_FORMATS = ("png", "jpeg", "webp")
MAX_SCREENSHOT_PIXELS = 60_000_000  # under Pillow's decompression-bomb threshold
_TEXT_TYPES = ("application/json", "application/xml", "application/javascript")
_HTML_TYPES = ("text/html", "application/xhtml+xml")
_HTML_START = re.compile(rb"^\s*(<!--.*?-->\s*)*<(!doctype\s+html|html|head|body)\b", re.I | re.S)
_META_CHARSET = re.compile(rb"<meta[^>]+charset=[\"']?([\w-]+)", re.I)
_TAGS = re.compile(r"<[^>]+>")


def _now() -> str:
    return datetime.now(UTC).isoformat()


# -- config values ---------------------------------------------------------------------------


def _is_template(value: Any) -> bool:
    return isinstance(value, str) and ("{{" in value or "${" in value)


def _given(value: Any) -> bool:
    return value not in (None, "", [], {})


def _number(ctx: NodeContext, raw: Any, field: str) -> float | None:
    """A rendered numeric field (`"30"` too); None when unset; a node error when not a number."""
    value = ctx.render(raw) if isinstance(raw, str) else raw
    if value in (None, ""):
        return None
    if isinstance(value, bool):
        raise ctx.error(f"{field}: expected a number, got {value!r}", NodeConfigurationError)
    if isinstance(value, int | float):
        return float(value)
    try:
        return float(str(value).strip())
    except ValueError:
        raise ctx.error(
            f"{field}: expected a number, got {to_text(value)[:50]!r}", NodeConfigurationError
        ) from None


def _positive_int(ctx: NodeContext, raw: Any, field: str, default: int) -> int:
    number = _number(ctx, raw, field)
    if number is None:
        return default
    if number != int(number) or number < 1:
        raise ctx.error(
            f"{field}: expected a positive integer, got {number:g}", NodeConfigurationError
        )
    return int(number)


def _flag(ctx: NodeContext, raw: Any, default: bool) -> bool:
    value = ctx.render(raw) if isinstance(raw, str) else raw
    if value in (None, ""):
        return default
    if isinstance(value, str):
        return value.strip().lower() not in ("false", "0", "no", "off")
    return bool(value)


def _timeout_s(
    ctx: NodeContext, raw: Any, field: str, *, unit_s: float, default: float, cap: float
) -> float:
    """A node timeout in seconds: the field (in `unit_s` seconds) capped by the settings."""
    number = _number(ctx, raw, field)
    if number is None:
        return min(default, cap)
    if number <= 0:
        raise ctx.error(
            f"{field}: expected a positive number, got {number:g}", NodeConfigurationError
        )
    return min(number * unit_s, cap)


def _as_url(ctx: NodeContext, value: Any, field: str) -> str:
    """An absolute http(s) URL from a field's rendered value (a search result's `{url}` too)."""
    if isinstance(value, Mapping):
        value = next((value[k] for k in ("url", "href", "link") if _given(value.get(k))), None)
    if not isinstance(value, str) or not value.strip():
        got = "nothing" if value in (None, "") else type(value).__name__
        raise ctx.error(f"{field}: expected a URL, got {got}", NodeConfigurationError)
    url = value.strip()
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL as exc:
        raise ctx.error(
            f"{field}: invalid URL {url[:200]!r}: {exc}", NodeConfigurationError
        ) from exc
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise ctx.error(
            f"{field}: {url[:200]!r} is not an absolute http:// or https:// URL",
            NodeConfigurationError,
        )
    return url


def _display(url: str) -> str:
    """A URL for messages: no userinfo."""
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL:
        return url[:200]
    return str(parsed.copy_with(username=None, password=None) if parsed.userinfo else parsed)


def _header_pairs(ctx: NodeContext, raw: Any, field: str) -> list[tuple[str, str]]:
    """Custom request headers: an object (values rendered) or `[{key, value}]` rows."""
    value = ctx.render(raw)
    if not _given(value):
        return []
    if isinstance(value, list):
        value = {
            row.get("key") or row.get("name"): row.get("value")
            for row in value
            if isinstance(row, Mapping)
        }
    if not isinstance(value, Mapping):
        raise ctx.error(
            f"{field}: expected an object of header names and values", NodeConfigurationError
        )
    pairs = []
    for name, item in value.items():
        if not name or item is None:
            continue
        text = to_text(item)
        if any(ch in f"{name}{text}" for ch in "\r\n\0"):
            raise ctx.error(
                f"{field}: header {name!r} contains a line break", NodeConfigurationError
            )
        pairs.append((str(name), text))
    return pairs


# -- fetching --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Fetched:
    """A fetched page, its body capped by FLOWMAESTRO_HTTP__MAX_RESPONSE_BYTES."""

    url: str
    final_url: str
    status: int
    headers: Mapping[str, str]
    body: bytes
    elapsed_ms: int

    @property
    def media_type(self) -> str:
        return self.headers.get("content-type", "").split(";")[0].strip().lower()

    @property
    def is_html(self) -> bool:
        if self.media_type in _HTML_TYPES:
            return True
        unlabelled = self.media_type in ("", "application/octet-stream", "text/plain")
        return unlabelled and bool(_HTML_START.match(self.body[:4096]))

    @property
    def is_text(self) -> bool:
        media = self.media_type
        return (
            media.startswith("text/") or media in _TEXT_TYPES or media.endswith(("+json", "+xml"))
        )

    def text(self) -> str:
        """The body decoded: the declared charset, else a `<meta charset>`, else UTF-8."""
        charset = None
        for part in self.headers.get("content-type", "").split(";")[1:]:
            name, _, value = part.strip().partition("=")
            if name.lower() == "charset" and value:
                charset = value.strip("\"' ")
        if charset is None and (match := _META_CHARSET.search(self.body[:4096])):
            charset = match.group(1).decode("ascii", "replace")
        try:
            return self.body.decode(charset or "utf-8", errors="replace")
        except LookupError:
            return self.body.decode("utf-8", errors="replace")


def _request(url: str, headers: Iterable[tuple[str, str]] = ()) -> RequestParts:
    parts = RequestParts()
    parts.method = "GET"
    parts.url = url
    parts.display_url = _display(url)
    parts.headers = [("Accept", ACCEPT_HTML), *headers]
    return parts


def _raise_send_failure(
    ctx: NodeContext, exc: Exception, field: str, parts: RequestParts, timeout: float
) -> None:
    message, kind = _send_failure(exc, parts.method, parts.display_url, timeout, ctx.settings.http)
    raise ctx.error(
        f"{field}: {message}", kind, details={"url": parts.display_url, "field": field}
    ) from exc


def _check_status(
    ctx: NodeContext, field: str, display: str, status: int, headers: Mapping[str, str]
) -> None:
    """A page that is not 2xx fails the node: 408, 429 and 5xx as worth retrying."""
    if 200 <= status < 300:
        return
    details = {"url": display, "status": status, "field": field}
    message = f"{field}: GET {display} answered HTTP {status}"
    if status in (408, 429) or status >= 500:
        raise TransientNodeError(
            message,
            retry_after_seconds=parse_retry_after(headers),
            node_id=ctx.node_id,
            node_type=ctx.node_type,
            details=details,
        )
    if 300 <= status < 400:
        message += " (a redirect: followRedirects is off)"
    raise ctx.error(message, NodeExecutionError, details=details)


def fetch_page(
    ctx: NodeContext, url: str, field: str, *, timeout: float, follow_redirects: bool = True
) -> Fetched:
    """GET a page through the guarded client; errors name `field`."""
    settings = ctx.settings.http
    parts = _request(url)
    try:
        opened = open_response(settings, parts, timeout=timeout, follow_redirects=follow_redirects)
        with opened as (response, started):
            body = b"".join(
                iter_body(response, limit=settings.max_response_bytes, deadline=started + timeout)
            )
            final_url = str(response.url)
            headers = {k.lower(): v for k, v in response.headers.items()}
            status = response.status_code
        elapsed = round((time.perf_counter() - started) * 1000)
    except (BlockedAddressError, _TooLarge, httpx.InvalidURL, httpx.HTTPError) as exc:
        _raise_send_failure(ctx, exc, field, parts, timeout)
        raise  # unreachable: for type checkers
    _check_status(ctx, field, parts.display_url, status, headers)
    return Fetched(url, final_url, status, headers, body, elapsed)


# -- extraction ------------------------------------------------------------------------------


class _LinkParser(HTMLParser):
    """`<a href>` links with their text (and `<base href>`), for extractType `links`."""

    def __init__(self, base: str) -> None:
        super().__init__(convert_charrefs=True)
        self.base = base
        self.links: list[dict[str, str]] = []
        self._seen: set[str] = set()
        self._open: list[tuple[str, list[str]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {k: v for k, v in attrs if v is not None}
        if tag == "base" and values.get("href") and not self.links:
            self.base = urljoin(self.base, values["href"].strip())
        elif tag == "a" and values.get("href"):
            self._open.append((values["href"].strip(), []))

    def handle_data(self, data: str) -> None:
        for _, text in self._open:
            text.append(data)

    def handle_endtag(self, tag: str) -> None:
        if tag != "a" or not self._open:
            return
        href, text = self._open.pop()
        absolute = urljoin(self.base, href).split("#", 1)[0]
        if urlsplit(absolute).scheme not in ("http", "https") or absolute in self._seen:
            return
        if len(self.links) < MAX_LINKS:
            self._seen.add(absolute)
            self.links.append({"url": absolute, "text": " ".join("".join(text).split())})


def extract_links(page_html: str, base_url: str) -> list[dict[str, str]]:
    """Absolute http(s) links of a page, first occurrence each, at most MAX_LINKS."""
    parser = _LinkParser(base_url)
    parser.feed(page_html)
    parser.close()
    return parser.links


def extract_metadata(page_html: str, url: str) -> dict[str, Any]:
    """Title, description, author, date, site name, language and image, by trafilatura."""
    import trafilatura

    document = trafilatura.extract_metadata(page_html, default_url=url)
    found = document.as_dict() if document is not None else {}
    title = found.get("title") or _html_title(page_html)
    return {
        "title": title,
        "description": found.get("description"),
        "author": found.get("author"),
        "date": found.get("date"),
        "siteName": found.get("sitename"),
        "url": found.get("url") or url,
        "language": found.get("language"),
        "image": found.get("image"),
        "categories": found.get("categories") or [],
        "tags": found.get("tags") or [],
    }


def _html_title(page_html: str) -> str | None:
    match = re.search(r"<title[^>]*>(.*?)</title>", page_html[:200_000], re.I | re.S)
    if match is None:
        return None
    return " ".join(html.unescape(match.group(1)).split()) or None


def extract_main(page_html: str, url: str, kind: str) -> str:
    """The page's main content as text, markdown or HTML (trafilatura); the whole page's text
    when trafilatura finds no main content (a short page, a page that is mostly a form)."""
    import trafilatura

    output_format = {"text": "txt", "markdown": "markdown", "html": "html"}[kind]
    rich = kind != "text"
    for recall in (False, True):
        found = trafilatura.extract(
            page_html,
            url=url,
            output_format=output_format,
            include_links=rich,
            include_formatting=rich,
            include_tables=True,
            include_comments=False,
            favor_recall=recall,
            with_metadata=False,
        )
        if found:
            return str(found)
    if kind == "html":
        return ""
    return str(trafilatura.html2txt(page_html) or "")


# -- url -------------------------------------------------------------------------------------


def _variable(ctx: NodeContext, raw: Any) -> Any:
    """`urlVariable`: a path into the workflow's data (`apolloData.company.website`), a
    `{{template}}`, or a URL written in place."""
    text = str(raw).strip()
    if re.match(r"^https?://", text, re.I) and not _is_template(text):
        return text
    value = templates.lookup_path(ctx.state, text, budget=ctx.budget)
    if templates.is_missing(value):
        if _is_template(text):
            return ctx.render(text)
        raise ctx.error(
            f"urlVariable: nothing in the workflow's data at {text[:100]!r}", NodeConfigurationError
        )
    return value


def _url_list(value: Any) -> list[Any]:
    if value in (None, ""):
        return []
    if isinstance(value, str):
        return [line for line in (v.strip() for v in value.splitlines()) if line]
    if isinstance(value, list | tuple):
        return [item for item in value if item not in (None, "")]
    return [value]


def _url_sources(ctx: NodeContext) -> tuple[str, list[Any]]:
    """(the field the URLs came from, the values): urlVariable, url, urls, else the execution
    input named by `inputName` (default `urls`, as the builder's URL node)."""
    extras = ctx.config.extras()
    if _given(extras.get("urlVariable")):
        return "urlVariable", _url_list(_variable(ctx, extras["urlVariable"]))
    for name in ("url", "urls"):
        if _given(extras.get(name)):
            return name, _url_list(ctx.render(extras[name]))
    input_name = str(extras.get("inputName") or "urls")
    value = templates.lookup_path(ctx.state, input_name, budget=ctx.budget)
    return "inputName", [] if templates.is_missing(value) else _url_list(value)


def _page(
    ctx: NodeContext, url: str, field: str, *, mode: str, timeout: float, follow: bool, meta: bool
) -> dict[str, Any]:
    fetched = fetch_page(ctx, url, field, timeout=timeout, follow_redirects=follow)
    page: dict[str, Any] = {
        "url": url,
        "finalUrl": fetched.final_url,
        "status": fetched.status,
        "statusCode": fetched.status,
        "contentType": fetched.media_type,
        "fetchedAt": _now(),
    }
    if fetched.is_html:
        source = fetched.text()
        metadata = extract_metadata(source, fetched.final_url)
        page["title"] = metadata["title"]
        page["description"] = metadata["description"]
        page["text"] = extract_main(source, fetched.final_url, "text")
        if mode != "text":
            page["content"] = extract_main(source, fetched.final_url, mode)
        if meta:
            page["metadata"] = metadata
    elif fetched.is_text:
        page.update(title=None, description=None, text=fetched.text())
    else:
        raise ctx.error(
            f"{field}: {_display(url)} is {fetched.media_type or 'of no declared type'}, not a "
            "web page (fileDownload stores files)",
            NodeExecutionError,
            details={"url": _display(url), "contentType": fetched.media_type, "field": field},
        )
    return page


def execute_url(ctx: NodeContext) -> NodeResult:
    """Fetch one URL or a list of them; main text by trafilatura."""
    extras = ctx.config.extras()
    field, values = _url_sources(ctx)
    if len(values) > MAX_URLS:
        raise ctx.error(
            f"{field}: {len(values)} URLs, at most {MAX_URLS} a node", NodeConfigurationError
        )
    mode = str(ctx.render(extras.get("scrapingMode") or "text")).strip().lower()
    if mode not in SCRAPING_MODES:
        raise ctx.error(
            f"scrapingMode: {mode!r} is not one of {', '.join(SCRAPING_MODES)}",
            NodeConfigurationError,
        )
    http = ctx.settings.http
    timeout = _timeout_s(
        ctx,
        extras.get("timeout"),
        "timeout",
        unit_s=1,
        default=http.timeout_s,
        cap=http.max_timeout_s,
    )
    follow = _flag(ctx, extras.get("followRedirects"), True)
    meta = _flag(ctx, extras.get("includeMetadata"), True)

    def one(value: Any) -> dict[str, Any]:
        url = _as_url(ctx, value, field)
        return _page(ctx, url, field, mode=mode, timeout=timeout, follow=follow, meta=meta)

    if not values:
        if _flag(ctx, extras.get("required"), True):
            raise ctx.error(
                f"{field}: no URL to fetch (set urlVariable, url or urls, or pass the execution "
                "input it names)",
                NodeConfigurationError,
            )
        return NodeResult(wrap_output(_url_output([]), ctx.config.output_variable))
    pages = [one(values[0])] if len(values) == 1 else _fetch_all(values, one)
    return NodeResult(wrap_output(_url_output(pages), ctx.config.output_variable))


def _fetch_all(values: list[Any], one: Callable[[Any], dict[str, Any]]) -> list[dict[str, Any]]:
    """Fetch several URLs a few at a time; a failed one is a page with `error`, unless all
    fail (then the first failure fails the node)."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=URL_WORKERS) as pool:
        futures = [pool.submit(one, value) for value in values]
    pages: list[dict[str, Any]] = []
    failures: list[NodeExecutionError] = []
    for value, future in zip(values, futures, strict=True):
        try:
            pages.append(future.result())
        except NodeExecutionError as exc:
            failures.append(exc)
            shown = value if isinstance(value, str) else to_text(value)[:200]
            pages.append(
                {
                    "url": shown,
                    "status": exc.details.get("status", 0),
                    "statusCode": exc.details.get("status", 0),
                    "error": exc.reason,
                    "fetchedAt": _now(),
                }
            )
    if len(failures) == len(values):
        raise failures[0]
    return pages


def _url_output(pages: list[dict[str, Any]]) -> dict[str, Any]:
    ok = [p for p in pages if "error" not in p]
    first = ok[0] if ok else {}
    combined = "\n\n".join(p.get("text") or "" for p in ok)
    return {
        "url": first.get("url"),
        "finalUrl": first.get("finalUrl"),
        "status": first.get("status"),
        "title": first.get("title"),
        "description": first.get("description"),
        "contentType": first.get("contentType"),
        "text": combined,
        "urls": pages,
        "urlCount": len(pages),
        "successCount": len(ok),
        "errorCount": len(pages) - len(ok),
    }


# -- webBrowse -------------------------------------------------------------------------------


def _extract_type(ctx: NodeContext, extras: Mapping[str, Any]) -> str:
    """`extractType`, else the older `extractText` (true: text; false: the raw page)."""
    if _given(extras.get("extractType")):
        kind = str(ctx.render(extras["extractType"])).strip().lower()
        if kind not in EXTRACT_TYPES:
            raise ctx.error(
                f"extractType: {kind!r} is not one of {', '.join(EXTRACT_TYPES)}",
                NodeConfigurationError,
            )
        return kind
    return "text" if _flag(ctx, extras.get("extractText"), True) else "raw"


def execute_web_browse(ctx: NodeContext) -> NodeResult:
    """Fetch a page and extract what `extractType` asks for, cut to `maxLength` characters."""
    extras = ctx.config.extras()
    url = _as_url(ctx, ctx.render(extras.get("url")), "url")
    kind = _extract_type(ctx, extras)
    max_length = _positive_int(ctx, extras.get("maxLength"), "maxLength", DEFAULT_MAX_LENGTH)
    http = ctx.settings.http
    timeout = _timeout_s(
        ctx,
        extras.get("timeout"),
        "timeout",
        unit_s=1,
        default=http.timeout_s,
        cap=http.max_timeout_s,
    )
    fetched = fetch_page(ctx, url, "url", timeout=timeout)
    if not fetched.is_html and not (fetched.is_text and kind in ("text", "markdown", "raw")):
        raise ctx.error(
            f"url: {_display(url)} is {fetched.media_type or 'of no declared type'}, not an HTML "
            f"page (extractType {kind})",
            NodeExecutionError,
            details={"url": _display(url), "contentType": fetched.media_type, "field": "url"},
        )
    source = fetched.text()
    output: dict[str, Any] = {
        "url": url,
        "finalUrl": fetched.final_url,
        "status": fetched.status,
        "contentType": fetched.media_type,
        "extractType": kind,
        "title": None,
    }
    if not fetched.is_html:
        content = source
    else:
        metadata = extract_metadata(source, fetched.final_url)
        output["title"] = metadata["title"]
        if kind == "raw":
            content = source
        elif kind == "links":
            links = extract_links(source, fetched.final_url)
            output["links"] = links
            content = "\n".join(link["url"] for link in links)
        elif kind == "metadata":
            output["metadata"] = metadata
            content = json.dumps(metadata, ensure_ascii=False, default=str)
        else:
            content = extract_main(source, fetched.final_url, kind)
    output["truncated"] = len(content) > max_length
    output["content"] = content[:max_length]
    output["contentLength"] = len(output["content"])
    return NodeResult(wrap_output(output, ctx.config.output_variable))


# -- fileDownload ----------------------------------------------------------------------------


def _disposition_name(value: str) -> str | None:
    """The file name a Content-Disposition header gives (RFC 6266 / 2231 `filename*` too)."""
    message = email.message.Message()
    message["content-disposition"] = value
    name = message.get_filename()
    return str(name) if name else None


def _download_name(
    ctx: NodeContext, wanted: Any, response: httpx.Response, declared: str, sniffed: str
) -> str:
    """`filename` as given, else the server's, else the URL's, else `download` (with the
    extension of the sniffed media type when the name has none)."""
    name = ""
    if _given(wanted):
        name = to_text(ctx.render(wanted)).strip()
    if not name and (disposition := response.headers.get("content-disposition")):
        name = _disposition_name(disposition) or ""
    if not name:
        name = posixpath.basename(urlsplit(str(response.url)).path)
    name = safe_name(name, "download")
    if not posixpath.splitext(name)[1]:
        kind = sniffed if sniffed not in ("application/octet-stream", "text/plain") else declared
        extension = mimetypes.guess_extension(kind or "") if kind else None
        if extension:
            name += extension
    return name


def _destination(ctx: NodeContext, raw_path: Any, name: str, named: bool) -> str:
    """Where the file goes: under `path` (a folder; a file path when it ends in a name with
    an extension and no `filename` is set), else the node's own output folder."""
    if not _given(raw_path):
        return output_path(ctx, name)
    path = to_text(ctx.render(raw_path)).strip()
    last = posixpath.basename(path.rstrip("/"))
    if not path.endswith("/") and not named and posixpath.splitext(last)[1]:
        return path
    return posixpath.join(path, name)


def _allowed_types(ctx: NodeContext, extras: Mapping[str, Any]) -> list[str]:
    raw = extras.get("allowedContentTypes", extras.get("validateContentType"))
    value = ctx.render(raw)
    if not _given(value):
        return []
    items = value if isinstance(value, list) else str(value).split(",")
    return [str(item).strip().lower() for item in items if str(item).strip()]


def _type_allowed(allowed: list[str], media_type: str) -> bool:
    for pattern in allowed:
        if pattern == media_type or (
            pattern.endswith("/*") and media_type.startswith(pattern[:-1])
        ):
            return True
    return False


def _peek(chunks: Iterator[bytes], size: int) -> tuple[bytes, Iterator[bytes]]:
    """The first `size` bytes of a stream (for sniffing), and the rest of it."""
    head = b""
    for chunk in chunks:
        head += chunk
        if len(head) >= size:
            break
    return head, chunks


def execute_file_download(ctx: NodeContext) -> NodeResult:
    """Stream a URL's body into the file store (never whole in memory); media type by content."""
    extras = ctx.config.extras()
    url = _as_url(ctx, ctx.render(extras.get("url")), "url")
    area = file_area(ctx)
    store_cap = area.store.max_bytes
    max_size = _positive_int(ctx, extras.get("maxSize"), "maxSize", store_cap)
    limit = min(max_size, store_cap)
    http = ctx.settings.http
    timeout = _timeout_s(
        ctx,
        extras.get("timeout"),
        "timeout",
        unit_s=0.001,
        default=http.timeout_s,
        cap=http.max_timeout_s,
    )
    follow = _flag(ctx, extras.get("followRedirects"), True)
    allowed = _allowed_types(ctx, extras)
    parts = _request(url, _header_pairs(ctx, extras.get("headers"), "headers"))
    parts.headers[0] = ("Accept", "*/*")
    try:
        with open_response(http, parts, timeout=timeout, follow_redirects=follow) as (
            response,
            started,
        ):
            headers = {k.lower(): v for k, v in response.headers.items()}
            _check_status(ctx, "url", parts.display_url, response.status_code, headers)
            declared = headers.get("content-type", "").split(";")[0].strip().lower()
            chunks = iter_body(response, limit=limit, deadline=started + timeout)
            head, rest = _peek(chunks, 8192)
            name = _download_name(ctx, extras.get("filename"), response, declared, "")
            sniffed = sniff_media_type(head, name)
            if sniffed in ("application/octet-stream", "text/plain") and declared:
                checked = declared
            else:
                checked = sniffed
            if allowed and not _type_allowed(allowed, checked):
                raise ctx.error(
                    f"allowedContentTypes: {_display(url)} is {checked}, not one of "
                    f"{', '.join(allowed)}",
                    NodeExecutionError,
                    details={"url": parts.display_url, "contentType": checked},
                )
            name = _download_name(ctx, extras.get("filename"), response, declared, sniffed)
            path = _destination(ctx, extras.get("path"), name, _given(extras.get("filename")))
            ref = area.write(path, itertools.chain([head], rest), field="path", max_bytes=limit)
            final_url, status = str(response.url), response.status_code
        elapsed = round((time.perf_counter() - started) * 1000)
    except _TooLarge:
        raise ctx.error(
            f"url: {_display(url)} is larger than {limit} bytes "
            "(maxSize, FLOWMAESTRO_FILES__MAX_FILE_MB)",
            FileTooLargeError,
            details={"url": parts.display_url, "field": "url"},
        ) from None
    except NodeExecutionError as exc:
        if exc.node_id is None:  # the file store's: name the node
            raise ctx.error(exc.reason, type(exc)) from None
        raise
    except (BlockedAddressError, httpx.InvalidURL, httpx.HTTPError) as exc:
        _raise_send_failure(ctx, exc, "url", parts, timeout)
        raise  # unreachable
    output = {
        "file": ref.to_value(),
        "url": url,
        "finalUrl": final_url,
        "status": status,
        "filename": ref.name,
        "path": ref.path,
        "size": ref.size,
        "mediaType": ref.media_type,
        "contentType": declared or None,
        "downloadTime": elapsed,
    }
    return NodeResult(wrap_output(output, ctx.config.output_variable))


# -- webSearch -------------------------------------------------------------------------------


@dataclass(frozen=True)
class SearchQuery:
    query: str
    count: int
    kind: str  # web | news | images


@dataclass(frozen=True)
class SearchRequest:
    """What an adapter sends, relative to the provider's API root."""

    method: str
    path: str
    params: list[tuple[str, str]] = field(default_factory=list)
    json: Any = None
    headers: list[tuple[str, str]] = field(default_factory=list)


class SearchProvider(Protocol):
    """A search API: builds its request and normalises its answer to `{title, url, snippet}`."""

    name: str
    api_root: str | None  # None: a connection's base_url is required (self-hosted)
    needs_key: bool

    def request(self, query: SearchQuery, api_key: str | None) -> SearchRequest: ...

    def results(self, data: Any, query: SearchQuery) -> list[dict[str, Any]]: ...


def _clean(value: Any) -> str:
    """Snippet text without the highlighting tags some providers put in (Brave's <strong>)."""
    return " ".join(html.unescape(_TAGS.sub("", to_text(value or ""))).split())


def _items(data: Any, *path: str) -> list[Mapping[str, Any]]:
    for key in path:
        data = data.get(key) if isinstance(data, Mapping) else None
    return [item for item in data if isinstance(item, Mapping)] if isinstance(data, list) else []


def _result(title: Any, url: Any, snippet: Any, **extra: Any) -> dict[str, Any]:
    found = {"title": _clean(title), "url": str(url or ""), "snippet": _clean(snippet)}
    found.update({k: v for k, v in extra.items() if v not in (None, "")})
    return found


class SearxngProvider:
    """A self-hosted SearXNG, JSON API (https://docs.searxng.org/dev/search_api.html; the
    instance must list `json` in `search.formats`)."""

    name: str = "searxng"
    api_root: str | None = None
    needs_key: bool = False

    def request(self, query: SearchQuery, api_key: str | None) -> SearchRequest:
        category = {"web": "general", "news": "news", "images": "images"}[query.kind]
        params = [("q", query.query), ("format", "json"), ("categories", category)]
        headers = [("Authorization", f"Bearer {api_key}")] if api_key else []
        return SearchRequest("GET", "/search", params=params, headers=headers)

    def results(self, data: Any, query: SearchQuery) -> list[dict[str, Any]]:
        found = []
        for item in _items(data, "results"):
            if query.kind == "images":
                found.append(
                    _result(
                        item.get("title"),
                        item.get("img_src") or item.get("url"),
                        item.get("content"),
                        pageUrl=item.get("url"),
                        thumbnailUrl=item.get("thumbnail_src"),
                    )
                )
            else:
                found.append(
                    _result(
                        item.get("title"),
                        item.get("url"),
                        item.get("content"),
                        publishedDate=item.get("publishedDate"),
                        source=item.get("engine"),
                    )
                )
        return found


class BraveProvider:
    """Brave Search API (https://api-dashboard.search.brave.com/app/documentation/web-search/
    get-started): GET /res/v1/{web,news,images}/search, key in `X-Subscription-Token`."""

    name: str = "brave"
    api_root: str | None = "https://api.search.brave.com/res/v1"
    needs_key: bool = True

    def request(self, query: SearchQuery, api_key: str | None) -> SearchRequest:
        count = min(query.count, 20 if query.kind == "web" else 50)
        return SearchRequest(
            "GET",
            f"/{query.kind}/search",
            params=[("q", query.query), ("count", str(count))],
            headers=[("Accept", "application/json"), ("X-Subscription-Token", api_key or "")],
        )

    def results(self, data: Any, query: SearchQuery) -> list[dict[str, Any]]:
        if query.kind == "images":
            return [
                _result(
                    item.get("title"),
                    (item.get("properties") or {}).get("url") or item.get("url"),
                    item.get("source"),
                    pageUrl=item.get("url"),
                    thumbnailUrl=(item.get("thumbnail") or {}).get("src"),
                )
                for item in _items(data, "results")
            ]
        items = _items(data, "web", "results") if query.kind == "web" else _items(data, "results")
        return [
            _result(
                item.get("title"),
                item.get("url"),
                item.get("description"),
                publishedDate=item.get("page_age") or item.get("age"),
            )
            for item in items
        ]


class TavilyProvider:
    """Tavily (https://docs.tavily.com/documentation/api-reference/endpoint/search): POST
    /search with a JSON body, key as `Authorization: Bearer`."""

    name: str = "tavily"
    api_root: str | None = "https://api.tavily.com"
    needs_key: bool = True

    def request(self, query: SearchQuery, api_key: str | None) -> SearchRequest:
        body: dict[str, Any] = {
            "query": query.query,
            "max_results": min(query.count, 20),
            "topic": "news" if query.kind == "news" else "general",
            "search_depth": "basic",
        }
        if query.kind == "images":
            body.update(include_images=True, include_image_descriptions=True)
        return SearchRequest(
            "POST", "/search", json=body, headers=[("Authorization", f"Bearer {api_key}")]
        )

    def results(self, data: Any, query: SearchQuery) -> list[dict[str, Any]]:
        if query.kind == "images":
            images = data.get("images") if isinstance(data, Mapping) else None
            found = []
            for image in images if isinstance(images, list) else []:
                if isinstance(image, str):
                    found.append(_result("", image, ""))
                elif isinstance(image, Mapping):
                    found.append(_result("", image.get("url"), image.get("description")))
            return found
        return [
            _result(
                item.get("title"),
                item.get("url"),
                item.get("content"),
                publishedDate=item.get("published_date"),
                score=item.get("score"),
            )
            for item in _items(data, "results")
        ]


class SerperProvider:
    """Serper, Google results (https://serper.dev/playground): POST /search, /news or /images
    with `{q, num}`, key in `X-API-KEY`."""

    name: str = "serper"
    api_root: str | None = "https://google.serper.dev"
    needs_key: bool = True

    def request(self, query: SearchQuery, api_key: str | None) -> SearchRequest:
        path = {"web": "/search", "news": "/news", "images": "/images"}[query.kind]
        return SearchRequest(
            "POST",
            path,
            json={"q": query.query, "num": query.count},
            headers=[("X-API-KEY", api_key or "")],
        )

    def results(self, data: Any, query: SearchQuery) -> list[dict[str, Any]]:
        if query.kind == "images":
            return [
                _result(
                    item.get("title"),
                    item.get("imageUrl"),
                    item.get("source"),
                    pageUrl=item.get("link"),
                    thumbnailUrl=item.get("thumbnailUrl"),
                )
                for item in _items(data, "images")
            ]
        key = "news" if query.kind == "news" else "organic"
        return [
            _result(
                item.get("title"),
                item.get("link"),
                item.get("snippet"),
                publishedDate=item.get("date"),
                source=item.get("source"),
            )
            for item in _items(data, key)
        ]


SEARCH_PROVIDERS: dict[str, SearchProvider] = {
    p.name: p for p in (SearxngProvider(), BraveProvider(), TavilyProvider(), SerperProvider())
}


def _how_to_configure(name: str | None = None) -> str:
    if name:
        upper = name.upper().replace("-", "_")
        what = "__BASE_URL" if name == "searxng" else "__API_KEY (or __API_KEY_ENV)"
        return f"set FLOWMAESTRO_CONNECTIONS__{upper}{what}"
    return (
        "set FLOWMAESTRO_WEB_SEARCH__PROVIDER to one of "
        f"{', '.join(SEARCH_PROVIDERS)} (or a connection's name) and that connection: "
        "FLOWMAESTRO_CONNECTIONS__<NAME>__API_KEY, or __BASE_URL for SearXNG"
    )


def _search_provider(
    ctx: NodeContext,
) -> tuple[str, SearchProvider, ConnectionSettings | None]:
    """(connection name, adapter, connection): the node's `connectionId` or `provider`, else
    FLOWMAESTRO_WEB_SEARCH__PROVIDER. A connection names its adapter with `connector` when
    its own name is not one (`FLOWMAESTRO_CONNECTIONS__MYSEARCH__CONNECTOR=searxng`)."""
    extras = ctx.config.extras()
    settings = ctx.settings
    connection_id = None
    if _given(extras.get("connectionId")):
        connection_id = ctx.render_text(extras["connectionId"]).strip() or None
    provider = getattr(ctx.config, "provider", None)
    wanted = ctx.render_text(provider).strip().lower() if _given(provider) else None
    chosen_by = "connectionId" if connection_id else "provider"
    if not connection_id and not wanted:
        wanted = (settings.web_search.provider or "").strip().lower() or None
        if wanted is None:
            raise ctx.error(
                f"provider: no web search provider is configured: {_how_to_configure()}",
                ConnectorNotConfiguredError,
            )
    name, connection = resolve_connection(settings, connection_id, wanted)
    if connection_id and connection is None:
        raise ctx.error(
            f"connectionId: no connection named {connection_id!r} "
            f"(FLOWMAESTRO_CONNECTIONS__{connection_id.upper()}__...)",
            ConnectorNotConfiguredError,
        )
    kind = connection.connector if connection and connection.connector else name or wanted or ""
    adapter = SEARCH_PROVIDERS.get(kind.strip().lower())
    if adapter is None:
        raise ctx.error(
            f"{chosen_by}: {kind!r} is not a search provider (one of "
            f"{', '.join(SEARCH_PROVIDERS)}; a connection names one with `connector`)",
            NodeConfigurationError,
        )
    return name or adapter.name, adapter, connection


def execute_web_search(ctx: NodeContext) -> NodeResult:
    """One search through the configured provider; results as `{title, url, snippet}`."""
    extras = ctx.config.extras()
    settings = ctx.settings
    query_text = ctx.render_text(extras.get("query") if _given(extras.get("query")) else "")
    query_text = query_text.strip()
    if not query_text:
        raise ctx.error("query: the search query is empty", NodeConfigurationError)
    if len(query_text) > MAX_QUERY_CHARS:
        raise ctx.error(f"query: longer than {MAX_QUERY_CHARS} characters", NodeConfigurationError)
    count = _positive_int(
        ctx, extras.get("maxResults"), "maxResults", settings.web_search.default_results
    )
    count = min(count, settings.web_search.max_results)
    kind_text = str(ctx.render(extras.get("searchType") or "web")).strip().lower()
    kind = SEARCH_TYPES.get(kind_text)
    if kind is None:
        raise ctx.error(
            f"searchType: {kind_text!r} is not one of web, news, images", NodeConfigurationError
        )
    name, adapter, connection = _search_provider(ctx)
    query = SearchQuery(query_text, count, kind)
    data = _search_call(ctx, name, adapter, connection, query)
    results = [r for r in adapter.results(data, query) if r["url"]][:count]
    output = {
        "query": query_text,
        "results": results,
        "count": len(results),
        "provider": adapter.name,
        "searchType": kind,
    }
    return NodeResult(wrap_output(output, ctx.config.output_variable))


def _search_call(
    ctx: NodeContext,
    name: str,
    adapter: SearchProvider,
    connection: ConnectionSettings | None,
    query: SearchQuery,
) -> Any:
    """Send the adapter's request to the connection's API root (no redirects: the key goes to
    that root and nowhere else) and parse the JSON answer."""
    root = (connection.base_url if connection else None) or adapter.api_root
    api_key = connection.secret("api_key") if connection else None
    if root is None or (adapter.needs_key and not api_key):
        raise ctx.error(
            f"provider: the {adapter.name} search provider is not configured: "
            f"{_how_to_configure(name)}",
            ConnectorNotConfiguredError,
        )
    spec = adapter.request(query, api_key)
    url = root.rstrip("/") + spec.path
    if not under_base_url(url, root):
        raise ctx.error(
            f"provider: {adapter.name} request left its API root", NodeConfigurationError
        )
    parts = RequestParts()
    parts.method = spec.method
    parts.url = str(httpx.URL(url).copy_merge_params(tuple(spec.params))) if spec.params else url
    parts.display_url = _display(url)
    extra = [
        (k, v.get_secret_value()) for k, v in (connection.headers if connection else {}).items()
    ]
    parts.headers = [*spec.headers, *extra]
    parts.secrets = {v for _, v in extra} | ({api_key} if api_key else set())
    if spec.json is not None:
        parts.body = {"json": spec.json}
    http = ctx.settings.http
    timeout = min(connection.timeout_s if connection else http.timeout_s, http.max_timeout_s)
    try:
        with open_response(http, parts, timeout=timeout, follow_redirects=False) as (
            response,
            started,
        ):
            body = b"".join(
                iter_body(response, limit=http.max_response_bytes, deadline=started + timeout)
            )
            status, headers = response.status_code, dict(response.headers)
    except (BlockedAddressError, _TooLarge, httpx.InvalidURL, httpx.HTTPError) as exc:
        message, cls = _send_failure(exc, parts.method, parts.display_url, timeout, http)
        raise ctx.error(f"{adapter.name}: {parts.mask(message)}", cls) from None
    text = body.decode("utf-8", errors="replace")
    if not 200 <= status < 300:
        snippet = parts.mask(text[:300])
        message = f"{adapter.name} answered HTTP {status}: {snippet}"
        if status in (408, 429) or status >= 500:
            raise TransientNodeError(
                message,
                retry_after_seconds=parse_retry_after(headers),
                node_id=ctx.node_id,
                node_type=ctx.node_type,
                details={"provider": adapter.name, "status": status},
            )
        if status in (401, 403):
            message += f" (check the connection's key: {_how_to_configure(name)})"
            raise ctx.error(message, NodeConfigurationError, details={"status": status})
        raise ctx.error(message, NodeExecutionError, details={"status": status})
    try:
        return json.loads(text)
    except ValueError:
        raise ctx.error(
            f"{adapter.name} answered something that is not JSON: {parts.mask(text[:200])!r}",
            NodeExecutionError,
        ) from None


# -- screenshotCapture -----------------------------------------------------------------------

# Request headers the browser sets that are the connection's business, not the request's.
_HOP_HEADERS = frozenset(
    {"host", "connection", "content-length", "accept-encoding", "keep-alive", "upgrade", "te"}
)
# Response headers that no longer hold once the body is decoded and handed over whole.
_DROPPED_RESPONSE_HEADERS = frozenset(
    {"content-encoding", "content-length", "transfer-encoding", "connection", "keep-alive"}
)
BROWSER_ARGS = (
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-quic",
    "--dns-prefetch-disable",
    "--force-webrtc-ip-handling-policy=disable_non_proxied_udp",
    # Chromium resolves no name itself: everything it fetches is intercepted and fetched here.
    "--host-resolver-rules=MAP * ~NOTFOUND",
)
# Anything Chromium would still send past the interception (preconnects, WebRTC over TCP)
# goes to a proxy where nothing listens, loopback included.
DEAD_PROXY_SERVER = "http://127.0.0.1:9"


@dataclass
class ScreenshotOptions:
    url: str
    full_page: bool = False
    width: int = 1280
    height: int = 720
    scale: float = 1.0
    image_format: str = "png"
    quality: int = 80
    delay_ms: int = 0
    wait_for: str | None = None
    selector: str | None = None
    hide: list[str] = field(default_factory=list)
    dark: bool = False
    timeout_s: float = 30.0
    filename: str = "screenshot"


def browser_executable(settings: Settings) -> str | None:
    """FLOWMAESTRO_BROWSER__EXECUTABLE as a path, or looked up on PATH."""
    name = settings.browser.executable
    if os.sep in name:
        return name if os.access(name, os.X_OK) else None
    return shutil.which(name)


class _PageTraffic:
    """Serves every request a page makes from the guarded client, within the page's budgets;
    records what it refused."""

    def __init__(self, settings: Settings, deadline: float) -> None:
        self.http: HttpSettings = settings.http
        self.policy = AddressPolicy.from_settings(settings.http)
        self.budget = settings.browser
        self.deadline = deadline
        self.requests = 0
        self.bytes = 0
        self.blocked: list[dict[str, str]] = []
        self.main: tuple[str, int, list[tuple[str, str]], bytes] | None = None
        self.main_served = False
        self.main_refusal: str | None = None

    def remaining(self) -> float:
        return self.deadline - time.monotonic()

    def fetch(
        self, method: str, url: str, headers: Iterable[tuple[str, str]], body: bytes | None
    ) -> tuple[str, int, list[tuple[str, str]], bytes]:
        """(final url, status, headers, body) through the guarded client, redirects followed
        hop by hop (each hop re-checked), credentials dropped across origins."""
        parts = RequestParts()
        parts.method = method
        parts.url = url
        parts.display_url = _display(url)
        parts.headers = [
            (k, v) for k, v in headers if k.lower() not in _HOP_HEADERS and not k.startswith(":")
        ]
        if body:
            parts.body = {"content": body}
        timeout = max(self.remaining(), 0.001)
        left = self.budget.max_page_bytes - self.bytes
        limit = max(min(self.http.max_response_bytes, left), 0)
        with open_response(self.http, parts, timeout=timeout, follow_redirects=True) as (
            response,
            started,
        ):
            data = b"".join(iter_body(response, limit=limit, deadline=started + timeout))
            kept: list[tuple[str, str]] = []
            cookies: list[str] = []
            for name, value in response.headers.multi_items():
                lowered = name.lower()
                if lowered == "set-cookie":
                    cookies.append(value)
                elif lowered not in _DROPPED_RESPONSE_HEADERS:
                    kept.append((lowered, value))
            if cookies:
                kept.append(("set-cookie", "\n".join(cookies)))
            self.bytes += len(data)
            return str(response.url), response.status_code, kept, data

    def route(self, route: Any) -> None:
        """Playwright's handler for every request of the context."""
        from playwright.sync_api import Error as PlaywrightError

        request = route.request
        url = str(request.url)
        try:
            self._serve(route, request, url)
        except PlaywrightError:  # the page went away meanwhile
            pass
        except Exception as exc:  # noqa: BLE001  (a handler must never raise into Playwright)
            self._refuse(route, url, f"failed: {type(exc).__name__}", "failed")

    def _serve(self, route: Any, request: Any, url: str) -> None:
        if urlsplit(url).scheme.lower() not in ("http", "https"):
            self._refuse(route, url, "not an http(s) URL", "blockedbyclient")
            return
        if (
            self.main is not None
            and not self.main_served
            and url.split("#", 1)[0] == self.main[0].split("#", 1)[0]
        ):
            self.main_served = True
            _, status, headers, body = self.main
            route.fulfill(status=status, headers=dict(headers), body=body)
            return
        self.requests += 1
        if self.requests > self.budget.max_requests:
            self._refuse(route, url, "over FLOWMAESTRO_BROWSER__MAX_REQUESTS", "blockedbyclient")
            return
        if self.remaining() <= 0:
            self._refuse(route, url, "out of time", "timedout")
            return
        try:
            host = urlsplit(url).hostname or ""
            self.policy.check_host(host)  # IP literals and metadata names: refused at once
            _, status, headers, body = self.fetch(
                request.method, url, request.all_headers().items(), request.post_data_buffer
            )
        except BlockedAddressError as exc:
            self._refuse(route, url, exc.reason, "blockedbyclient")
            if request.is_navigation_request() and self.main_refusal is None:
                self.main_refusal = str(exc)
            return
        except _TooLarge:
            self._refuse(route, url, "over the size budget", "blockedbyresponse")
            return
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            self._refuse(route, url, f"failed: {exc or type(exc).__name__}", "failed")
            return
        route.fulfill(status=status, headers=dict(headers), body=body)

    def _refuse(self, route: Any, url: str, reason: str, code: str) -> None:
        from playwright.sync_api import Error as PlaywrightError

        if len(self.blocked) < 50:
            self.blocked.append({"url": _display(url)[:300], "reason": reason})
        with contextlib.suppress(PlaywrightError):
            route.abort(code)


def _screenshot_options(ctx: NodeContext) -> ScreenshotOptions:
    extras = ctx.config.extras()
    browser = ctx.settings.browser
    image_format = str(ctx.render(extras.get("format") or "png")).strip().lower()
    image_format = "jpeg" if image_format == "jpg" else image_format
    if image_format not in SCREENSHOT_FORMATS:
        raise ctx.error(
            f"format: {image_format!r} is not one of {', '.join(SCREENSHOT_FORMATS)}",
            NodeConfigurationError,
        )
    width = _positive_int(ctx, extras.get("width"), "width", 1280)
    height = _positive_int(ctx, extras.get("height"), "height", 720)
    if not (100 <= width <= 3840 and 100 <= height <= 2160):
        raise ctx.error(
            f"width/height: {width}x{height} is outside 100x100 .. 3840x2160",
            NodeConfigurationError,
        )
    scale = _number(ctx, extras.get("deviceScale", extras.get("deviceScaleFactor")), "deviceScale")
    if scale is not None and not 0.5 <= scale <= 3:
        raise ctx.error(f"deviceScale: {scale:g} is outside 0.5 .. 3", NodeConfigurationError)
    delay = _number(ctx, extras.get("delay"), "delay") or 0
    quality = _positive_int(ctx, extras.get("quality"), "quality", 80)
    hide = ctx.render(extras.get("hideSelectors"))
    filename = to_text(ctx.render(extras.get("filename") or "screenshot")).strip() or "screenshot"
    wait_for = ctx.render(extras.get("waitForSelector", extras.get("waitFor")))
    selector = ctx.render(extras.get("selector"))
    return ScreenshotOptions(
        url=_as_url(ctx, ctx.render(extras.get("url")), "url"),
        full_page=_flag(ctx, extras.get("fullPage"), False),
        width=width,
        height=height,
        scale=scale or 1.0,
        image_format=image_format,
        quality=min(quality, 100),
        delay_ms=int(max(delay, 0)),
        wait_for=str(wait_for).strip() if _given(wait_for) else None,
        selector=str(selector).strip() if _given(selector) else None,
        hide=[str(s) for s in (hide if isinstance(hide, list) else [hide]) if _given(s)],
        dark=_flag(ctx, extras.get("darkMode"), False),
        timeout_s=_timeout_s(
            ctx,
            extras.get("timeout"),
            "timeout",
            unit_s=0.001,
            default=browser.timeout_s,
            cap=browser.max_timeout_s,
        ),
        filename=posixpath.splitext(safe_name(filename, "screenshot"))[0] or "screenshot",
    )


def execute_screenshot_capture(ctx: NodeContext) -> NodeResult:
    """A screenshot of a page (viewport, full page or one element) into the file store."""
    options = _screenshot_options(ctx)
    settings = ctx.settings
    try:
        check_url(options.url, settings.http)  # refused before any browser starts
    except BlockedAddressError as exc:
        raise ctx.error(
            f"url: {exc}", NodeConfigurationError, details={"url": _display(options.url)}
        ) from None
    except httpx.InvalidURL as exc:
        raise ctx.error(f"url: {exc}", NodeConfigurationError) from None
    except httpcore.ConnectError as exc:  # a name that does not resolve
        raise ctx.error(f"url: {exc}", TransientNodeError) from None
    executable = browser_executable(settings)
    if executable is None:
        raise ctx.error(
            f"screenshotCapture needs Chromium: '{settings.browser.executable}' was not found "
            "(install Debian's chromium: scripts/system-deps.sh, or set "
            "FLOWMAESTRO_BROWSER__EXECUTABLE)",
            ConnectorNotConfiguredError,
        )
    image, shot = _off_the_event_loop(lambda: _capture(ctx, options, executable))
    ref = store_output(ctx, f"{options.filename}.{options.image_format}", image)
    output = {"file": ref.to_value(), **shot, "format": options.image_format, "size": ref.size}
    return NodeResult(wrap_output(output, ctx.config.output_variable))


def _off_the_event_loop(run: Callable[[], T]) -> T:
    """Playwright's sync API refuses to run inside a running asyncio loop: use a thread then."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return run()
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(run).result()


def _capture(
    ctx: NodeContext, options: ScreenshotOptions, executable: str
) -> tuple[bytes, dict[str, Any]]:
    from playwright.sync_api import Error as PlaywrightError
    from playwright.sync_api import TimeoutError as PlaywrightTimeout
    from playwright.sync_api import sync_playwright

    settings = ctx.settings
    deadline = time.monotonic() + options.timeout_s
    traffic = _PageTraffic(settings, deadline)

    def ms() -> float:
        return max(traffic.remaining() * 1000, 1.0)

    args = list(BROWSER_ARGS)
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        args.append("--no-sandbox")  # Chromium refuses its sandbox to root
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(
                executable_path=executable,
                headless=True,
                args=args,
                proxy={"server": DEAD_PROXY_SERVER, "bypass": "<-loopback>"},
                timeout=ms(),
            )
            try:
                context = browser.new_context(
                    viewport={"width": options.width, "height": options.height},
                    device_scale_factor=options.scale,
                    color_scheme="dark" if options.dark else "light",
                    service_workers="block",
                    accept_downloads=False,
                )
                context.route("**/*", traffic.route)
                context.route_web_socket("**/*", lambda ws: ws.close())
                page = context.new_page()
                user_agent = str(page.evaluate("navigator.userAgent"))
                traffic.main = _main_document(ctx, traffic, options.url, user_agent)
                response = page.goto(traffic.main[0], timeout=ms(), wait_until="load")
                with contextlib.suppress(PlaywrightTimeout):  # a page that keeps polling
                    page.wait_for_load_state("networkidle", timeout=min(ms(), 3000))
                if options.wait_for:
                    page.wait_for_selector(options.wait_for, timeout=ms())
                if options.delay_ms:
                    page.wait_for_timeout(min(options.delay_ms, ms()))
                if options.hide:
                    rules = " ".join(f"{s} {{ display: none !important; }}" for s in options.hide)
                    page.add_style_tag(content=rules)
                image, cut = _shoot(ctx, page, options, ms())
                shot = {
                    "url": options.url,
                    "finalUrl": page.url,
                    "status": response.status if response is not None else None,
                    "capturedAt": _now(),
                    "blockedRequests": traffic.blocked,
                    "truncated": cut,
                }
            finally:
                browser.close()
    except PlaywrightTimeout as exc:
        raise ctx.error(
            f"url: the page did not finish within {options.timeout_s:g}s: "
            f"{str(exc).splitlines()[0]}",
            TransientNodeError,
            details={"url": _display(options.url)},
        ) from None
    except PlaywrightError as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if traffic.main_refusal:
            raise ctx.error(f"url: {traffic.main_refusal}", NodeConfigurationError) from None
        if "Executable doesn't exist" in first or "spawn" in first:
            raise ctx.error(
                f"cannot start Chromium ({executable}): {first}", ConnectorNotConfiguredError
            ) from None
        raise ctx.error(
            f"url: the browser failed on {_display(options.url)}: {first}", TransientNodeError
        ) from None
    return _finish_image(ctx, image, options, shot)


def _main_document(
    ctx: NodeContext, traffic: _PageTraffic, url: str, user_agent: str
) -> tuple[str, int, list[tuple[str, str]], bytes]:
    """The page itself, fetched before navigating: redirects are followed here (each hop
    checked) so the browser loads the final URL (relative links resolve against it)."""
    headers = [("User-Agent", user_agent), ("Accept", ACCEPT_HTML)]
    try:
        return traffic.fetch("GET", url, headers, None)
    except BlockedAddressError as exc:
        raise ctx.error(f"url: {exc}", NodeConfigurationError) from None
    except _TooLarge:
        raise ctx.error(
            f"url: the page is larger than {ctx.settings.http.max_response_bytes} bytes "
            "(FLOWMAESTRO_HTTP__MAX_RESPONSE_BYTES)",
            NodeExecutionError,
        ) from None
    except httpx.TimeoutException:
        raise ctx.error(f"url: GET {_display(url)} timed out", TransientNodeError) from None
    except (httpx.HTTPError, httpx.InvalidURL) as exc:
        raise ctx.error(f"url: GET {_display(url)} failed: {exc}", TransientNodeError) from None


def _shoot(
    ctx: NodeContext, page: Any, options: ScreenshotOptions, timeout_ms: float
) -> tuple[bytes, bool]:
    """The image bytes, and whether a full page was cut (at FLOWMAESTRO_BROWSER__MAX_HEIGHT,
    or where the image would pass MAX_SCREENSHOT_PIXELS)."""
    kind = "jpeg" if options.image_format == "jpeg" else "png"
    extra: dict[str, Any] = {"quality": options.quality} if kind == "jpeg" else {}
    if options.selector:
        element = page.locator(options.selector).first
        element.wait_for(state="visible", timeout=timeout_ms)
        box = element.bounding_box() or {"width": 0, "height": 0}
        if box["width"] * box["height"] * options.scale**2 > MAX_SCREENSHOT_PIXELS:
            raise ctx.error(
                f"selector: the element is {box['width']:.0f} x {box['height']:.0f} px, an "
                f"image over {MAX_SCREENSHOT_PIXELS:,} pixels",
                NodeExecutionError,
            )
        return bytes(element.screenshot(type=kind, timeout=timeout_ms, **extra)), False
    if not options.full_page:
        return bytes(page.screenshot(type=kind, timeout=timeout_ms, **extra)), False
    height = int(
        page.evaluate(
            "Math.max(document.documentElement.scrollHeight,"
            " document.body ? document.body.scrollHeight : 0)"
        )
    )
    by_pixels = int(MAX_SCREENSHOT_PIXELS / (options.width * options.scale**2))
    cap = min(ctx.settings.browser.max_height, by_pixels)
    clip = {"x": 0, "y": 0, "width": options.width, "height": max(min(height, cap), 1)}
    image = page.screenshot(type=kind, full_page=True, clip=clip, timeout=timeout_ms, **extra)
    return bytes(image), height > cap


def _finish_image(
    ctx: NodeContext, image: bytes, options: ScreenshotOptions, shot: dict[str, Any]
) -> tuple[bytes, dict[str, Any]]:
    """The image's real size (device scale included), converted to WebP when asked."""
    from PIL import Image

    with Image.open(io.BytesIO(image)) as decoded:
        width, height = decoded.size
        if options.image_format == "webp":
            out = io.BytesIO()
            decoded.save(out, "WEBP", quality=options.quality)
            image = out.getvalue()
    return image, {**shot, "width": width, "height": height}


# -- deploy-time checks ----------------------------------------------------------------------


def _literal(node: "NodeSpec", *names: str) -> tuple[str, Any] | None:
    """(field, value) of the first of `names` the node sets, unless it is a template."""
    config = node.original_config
    for name in names:
        if name in config:
            value = config[name]
            return None if _is_template(value) else (name, value)
    return None


def _missing_field(node: "NodeSpec", names: tuple[str, ...], what: str) -> Iterator[Problem]:
    config = node.original_config
    if not any(_given(config.get(name)) for name in names):
        yield error(
            "missing_config",
            f"{node.type} needs {what} ({names[0]})",
            node_id=node.id,
            field=names[0],
        )


def _positive_int_problem(node: "NodeSpec", *names: str) -> Iterator[Problem]:
    found = _literal(node, *names)
    if found is None or found[1] in (None, ""):
        return
    name, value = found
    number = value
    if isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            number = None
    ok = (
        isinstance(number, int | float)
        and not isinstance(number, bool)
        and number == int(number)
        and number >= 1
    )
    if not ok:
        yield error(
            "invalid_config",
            f"{name}: expected a positive integer, got {value!r}",
            node_id=node.id,
            field=name,
        )


def _choice_problem(node: "NodeSpec", name: str, choices: Iterable[str]) -> Iterator[Problem]:
    found = _literal(node, name)
    if found is None or found[1] in (None, ""):
        return
    allowed = list(choices)
    if str(found[1]).strip().lower() not in allowed:
        yield error(
            "invalid_config",
            f"{name}: {found[1]!r} is not one of {', '.join(allowed)}",
            node_id=node.id,
            field=name,
        )


def check_url_node(node: "NodeSpec") -> Iterator[Problem]:
    yield from _choice_problem(node, "scrapingMode", SCRAPING_MODES)
    yield from _positive_int_problem(node, "timeout")


def check_web_browse(node: "NodeSpec") -> Iterator[Problem]:
    yield from _missing_field(node, ("url",), "a URL")
    yield from _choice_problem(node, "extractType", EXTRACT_TYPES)
    yield from _positive_int_problem(node, "maxLength")


def check_file_download(node: "NodeSpec") -> Iterator[Problem]:
    yield from _missing_field(node, ("url",), "a URL")
    yield from _positive_int_problem(node, "maxSize")
    yield from _positive_int_problem(node, "timeout")


def check_web_search(node: "NodeSpec") -> Iterator[Problem]:
    yield from _missing_field(node, ("query",), "a search query")
    yield from _positive_int_problem(node, "maxResults")
    yield from _choice_problem(node, "searchType", SEARCH_TYPES)


def check_screenshot(node: "NodeSpec") -> Iterator[Problem]:
    yield from _missing_field(node, ("url",), "a URL")
    yield from _choice_problem(node, "format", (*SCREENSHOT_FORMATS, "jpg"))
    for name in ("width", "height", "timeout", "quality"):
        yield from _positive_int_problem(node, name)


EXECUTORS: Mapping[str, Executor] = {
    "url": execute_url,
    "webBrowse": execute_web_browse,
    "fileDownload": execute_file_download,
    "webSearch": execute_web_search,
    "screenshotCapture": execute_screenshot_capture,
}

CONFIG_CHECKS: Mapping[str, ConfigCheck] = {
    "url": check_url_node,
    "webBrowse": check_web_browse,
    "fileDownload": check_file_download,
    "webSearch": check_web_search,
    "screenshotCapture": check_screenshot,
}
