"""Document nodes: pdfGeneration, pdfExtract and ocrExtraction (docs/nodes.md#pdfgeneration).

* **pdfGeneration**: Markdown (markdown-it-py, raw HTML off), HTML or plain text is put into a
  Jinja2 template (sandboxed, autoescaped; the shipped `templates/pdf/<name>.html`, extended or
  replaced by the operator's FLOWMAESTRO_DOCUMENTS__TEMPLATES_DIR) and laid out by WeasyPrint.
  WeasyPrint fetches nothing but `data:` URIs and files inside the template folders: content a
  user wrote cannot make the server read its files or reach the network.
* **pdfExtract**: pypdf reads each page's text and the document's metadata from the file store,
  streamed from the open file (never read whole), with pages, characters and time capped.
* **ocrExtraction**: Tesseract (pytesseract over Debian's tesseract-ocr) reads an image
  (Pillow) or the pages of a scanned PDF (rasterised by pdfium), word by word; words are grouped
  into Tesseract's blocks, each with its mean confidence and box.

Every file comes from and goes to the workflow's area of the file store (nodes/filestore.py); a
node's output holds file references, never bytes.
"""

import datetime as dt
import html
import json
import math
import re
import threading
import time
from collections.abc import Generator, Iterable, Iterator, Mapping
from contextlib import closing
from functools import cache, lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

from flowmaestro_dagster.errors import NodeConfigurationError, NodeExecutionError
from flowmaestro_dagster.lang.templates import find_references
from flowmaestro_dagster.nodes.base import (
    ConfigCheck,
    Executor,
    NodeContext,
    NodeResult,
    wrap_output,
)
from flowmaestro_dagster.nodes.filestore import FileRef, file_area, input_file, store_output
from flowmaestro_dagster.settings import DocumentSettings, get_settings
from flowmaestro_dagster.spec.problems import Problem, error

if TYPE_CHECKING:
    from jinja2.sandbox import SandboxedEnvironment
    from PIL import Image

    from flowmaestro_dagster.spec.models import NodeSpec

PACKAGE_TEMPLATES = Path(__file__).resolve().parent / "templates" / "pdf"
DEFAULT_TEMPLATE = "default"
TEMPLATE_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")

# pageSize spellings → CSS page size keywords (WeasyPrint knows these).
PAGE_SIZES: dict[str, str] = {
    **{f"{series}{n}": f"{series}{n}" for series in "abc" for n in range(11)},
    **{f"jis-b{n}": f"jis-b{n}" for n in range(11)},
    "letter": "letter",
    "legal": "legal",
    "ledger": "ledger",
    "tabloid": "ledger",  # 11 x 17 in, as ledger
}
ORIENTATIONS = ("portrait", "landscape")
CONTENT_FORMATS: dict[str, str] = {
    "markdown": "markdown",
    "md": "markdown",
    "html": "html",
    "text": "text",
    "plain": "text",
    "txt": "text",
}
OUTPUT_FORMATS = ("text", "markdown", "json")
MARGIN_FIELDS = ("marginTop", "marginRight", "marginBottom", "marginLeft")
DEFAULT_MARGIN = "20mm"
MAX_MARGIN_MM = 75.0
MAX_BOX_TEXT = 500  # characters of headerText / footerText
MAX_TEMPLATE_ASSET_BYTES = 10 * 1024 * 1024
_MM_PER_UNIT = {"mm": 1.0, "cm": 10.0, "in": 25.4, "pt": 25.4 / 72, "pc": 25.4 / 6, "px": 25.4 / 96}
_LENGTH = re.compile(r"(\d+(?:\.\d+)?|\.\d+)\s*(mm|cm|in|pt|pc|px)?", re.IGNORECASE)
_PAGES_PART = re.compile(r"(\d+)\s*(?:-\s*(\d*))?")
_MAX_PAGE_PARTS = 1000
_PDF_MAGIC_WINDOW = 1024  # the header may follow up to 1 KB of junk (PDF 1.7, annex H)

# Tesseract language codes (ISO 639-2/T, as its traineddata files are named) and the spellings a
# builder may use for them: ISO 639-1 codes and English names.
LANGUAGE_ALIASES: dict[str, str] = {
    "en": "eng", "english": "eng",
    "de": "deu", "german": "deu", "deutsch": "deu", "ger": "deu",
    "fr": "fra", "french": "fra", "fre": "fra",
    "es": "spa", "spanish": "spa",
    "it": "ita", "italian": "ita",
    "pt": "por", "portuguese": "por",
    "nl": "nld", "dutch": "nld", "dut": "nld",
    "ru": "rus", "russian": "rus",
    "zh": "chi_sim", "chinese": "chi_sim", "zh-cn": "chi_sim", "zh-tw": "chi_tra",
    "ja": "jpn", "japanese": "jpn",
    "ko": "kor", "korean": "kor",
    "ar": "ara", "arabic": "ara",
    "hi": "hin", "hindi": "hin",
    "pl": "pol", "polish": "pol",
    "tr": "tur", "turkish": "tur",
    "sv": "swe", "swedish": "swe",
    "da": "dan", "danish": "dan",
    "no": "nor", "nb": "nor", "norwegian": "nor",
    "fi": "fin", "finnish": "fin",
    "cs": "ces", "czech": "ces", "cze": "ces",
    "el": "ell", "greek": "ell", "gre": "ell",
    "he": "heb", "hebrew": "heb",
    "uk": "ukr", "ukrainian": "ukr",
    "hu": "hun", "hungarian": "hun",
    "ro": "ron", "romanian": "ron", "rum": "ron",
    "vi": "vie", "vietnamese": "vie",
    "th": "tha", "thai": "tha",
    "id": "ind", "indonesian": "ind",
}  # fmt: skip
_TESSERACT_CODE = re.compile(r"[a-z]{3}(?:_[a-z]+)*|script/[A-Za-z_]+")
_MAX_LANGUAGES = 8
DEFAULT_PSM = 3  # fully automatic page segmentation

_PDFIUM = threading.Lock()  # pdfium is not thread-safe; threaded executors run nodes at once


# -- shared helpers ------------------------------------------------------------------------------


def _fail(
    ctx: NodeContext, field: str, message: str, cls: type[NodeExecutionError] = NodeExecutionError
) -> NodeExecutionError:
    """A node error whose message and details name the field."""
    return ctx.error(f"{field}: {message}", cls, details={"field": field})


def _pick(extras: Mapping[str, Any], *keys: str) -> tuple[str, Any]:
    """(the spelling used, its value) of the first of `keys` set, else (keys[0], None)."""
    for key in keys:
        if extras.get(key) is not None:
            return key, extras[key]
    return keys[0], None


def _is_literal(value: Any) -> bool:
    """A config value known at deploy time: a string without `{{...}}` / `${...}`, or a scalar."""
    if isinstance(value, str):
        return next(find_references(value), None) is None
    return isinstance(value, int | float | bool)


def _flag(ctx: NodeContext, extras: Mapping[str, Any], key: str, default: bool) -> bool:
    value = ctx.render(extras.get(key))
    if value is None or value == "":
        return default
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "yes", "on", "1"):
        return True
    if text in ("false", "no", "off", "0"):
        return False
    raise _fail(
        ctx, key, f"expected true or false, got {str(value)[:40]!r}", NodeConfigurationError
    )


def _short(value: Any) -> str:
    return repr(value)[:60]


def parse_pages(value: Any, count: int) -> list[int]:
    """1-based page numbers of a `pages` selection (`3`, `"1-3, 7"`, `"5-"`, `[1, 2]`, `"all"`),
    in order, each once; ranges are cut at the last page. ValueError says what is wrong."""
    if value is None or (isinstance(value, str) and value.strip().lower() in ("", "all", "*")):
        return list(range(1, count + 1))
    if isinstance(value, bool):
        raise ValueError(f"expected page numbers, got {value!r}")
    parts: list[Any] = value if isinstance(value, list) else str(value).split(",")
    if len(parts) > _MAX_PAGE_PARTS:
        raise ValueError(f"more than {_MAX_PAGE_PARTS} parts")
    chosen: dict[int, None] = {}
    for part in parts:
        if isinstance(part, int) and not isinstance(part, bool):
            start, end = part, part
        else:
            match = _PAGES_PART.fullmatch(str(part).strip())
            if match is None:
                raise ValueError(f"{str(part)[:40]!r} is not a page or a range like 2-5")
            start = int(match.group(1))
            end = start if match.group(2) is None else int(match.group(2) or count)
            if match.group(2) is not None:
                end = min(end, count)
        if start < 1 or end < start:
            raise ValueError(f"{str(part)[:40]!r} is not a page or a range like 2-5")
        if start > count:
            raise ValueError(f"page {start} is past the last page ({count})")
        for page in range(start, end + 1):
            chosen[page] = None
    return list(chosen)


def _pages_problem(value: Any) -> str | None:
    """What is wrong with a literal `pages` value, known without the document."""
    try:
        parse_pages(value, 1_000_000_000)
    except ValueError as exc:
        return str(exc)
    return None


def _read_head(ctx: NodeContext, ref: FileRef, field: str) -> bytes:
    with file_area(ctx).open(ref.path, field) as handle:
        head: bytes = handle.read(_PDF_MAGIC_WINDOW)
    return head


def _is_pdf(head: bytes) -> bool:
    return b"%PDF-" in head[:_PDF_MAGIC_WINDOW]


# -- pdfGeneration -------------------------------------------------------------------------------


def template_dirs(settings: DocumentSettings) -> tuple[Path, ...]:
    """Where templates are looked up, first match wins: the operator's folder, then ours."""
    dirs = []
    if settings.templates_dir is not None and settings.templates_dir.is_dir():
        dirs.append(settings.templates_dir.resolve())
    dirs.append(PACKAGE_TEMPLATES)
    return tuple(dirs)


def available_templates(settings: DocumentSettings) -> list[str]:
    """Names a node's `template` may choose (`_name.html` files are layouts, not choices)."""
    names = {
        path.stem
        for folder in template_dirs(settings)
        for path in folder.glob("*.html")
        if TEMPLATE_NAME.fullmatch(path.stem)
    }
    return sorted(names)


@lru_cache(maxsize=8)
def _environment(dirs: tuple[Path, ...]) -> "SandboxedEnvironment":
    """A sandboxed, autoescaping Jinja2 environment over the template folders (cached: it
    keeps compiled templates, and reloads a template whose file changed)."""
    from jinja2 import FileSystemLoader
    from jinja2.sandbox import SandboxedEnvironment

    return SandboxedEnvironment(
        loader=FileSystemLoader([str(d) for d in dirs]), autoescape=True, auto_reload=True
    )


@cache
def _markdown() -> Any:
    """CommonMark with tables and strikethrough; raw HTML in the Markdown is text, not HTML,
    and markdown-it refuses `javascript:`/`file:` links."""
    from markdown_it import MarkdownIt

    return MarkdownIt("commonmark", {"html": False}).enable(["table", "strikethrough"])


def _as_content(value: Any, fmt: str) -> str:
    """The text a PDF is made of: strings as they are, a node output's `text`, lists item by
    item, anything else as JSON (a code block in Markdown)."""
    if isinstance(value, str):
        return value
    if isinstance(value, Mapping) and isinstance(value.get("text"), str):
        return str(value["text"])
    if isinstance(value, list) and all(isinstance(v, str | Mapping) for v in value):
        return "\n\n".join(_as_content(v, fmt) for v in value)
    dumped = json.dumps(value, indent=2, ensure_ascii=False, default=str)
    if fmt == "markdown":
        return f"```json\n{dumped}\n```"
    if fmt == "html":
        return f"<pre>{html.escape(dumped)}</pre>"
    return dumped


def _body_html(content: str, fmt: str) -> str:
    if fmt == "markdown":
        return str(_markdown().render(content))
    if fmt == "html":
        return content
    return f'<div class="plain-text">{html.escape(content)}</div>'


def _length(text: str) -> tuple[str, float] | None:
    """(CSS length, millimetres) of a margin: `1in`, `20mm`, `2.5cm`, `72pt`; a bare number is
    millimetres."""
    match = _LENGTH.fullmatch(text.strip())
    if match is None:
        return None
    number, unit = match.group(1), (match.group(2) or "mm").lower()
    return f"{float(number):g}{unit}", float(number) * _MM_PER_UNIT[unit]


def _margin_problem(value: Any) -> str | None:
    length = _length(str(value)) if isinstance(value, str | int | float) else None
    if isinstance(value, bool) or length is None:
        return f"expected a length such as 20mm, 1in or 2cm, got {_short(value)}"
    if length[1] > MAX_MARGIN_MM:
        return f"{value} is wider than {MAX_MARGIN_MM:g}mm"
    return None


def _css_string(text: str) -> str:
    """A CSS string literal of any text: every character but letters, digits and spaces as a
    hex escape, so nothing can close the string or the style element."""
    out = []
    for char in text:
        if char.isascii() and (char.isalnum() or char == " "):
            out.append(char)
        else:
            out.append(f"\\{ord(char):06x} ")  # the space ends the escape; CSS drops it
    return '"' + "".join(out) + '"'


def _page_css(
    *,
    size: str,
    orientation: str,
    margins: list[str],
    header: str,
    footer: str,
    page_numbers: bool,
) -> str:
    boxes = []
    if header:
        boxes.append(f"@top-center {{ content: {_css_string(header)}; }}")
    if footer:
        boxes.append(f"@bottom-center {{ content: {_css_string(footer)}; }}")
    if page_numbers:
        boxes.append('@bottom-right { content: "Page " counter(page) " of " counter(pages); }')
    return f"@page {{ size: {size} {orientation}; margin: {' '.join(margins)}; {' '.join(boxes)} }}"


def _url_fetcher(roots: tuple[Path, ...]) -> Any:
    """A WeasyPrint fetcher that serves `data:` URIs and files inside the template folders,
    and refuses everything else (http, https, ftp, other files) before any I/O."""
    from weasyprint.urls import URLFetcher, URLFetcherResponse

    class TemplateOnlyFetcher(URLFetcher):
        def fetch(self, url: str, headers: Mapping[str, str] | None = None) -> Any:
            scheme = url.split(":", 1)[0].lower()
            if scheme == "data":
                return super().fetch(url, headers)
            if scheme == "file":
                path = Path(unquote(urlsplit(url).path)).resolve()
                inside = any(path.is_relative_to(root) for root in roots)
                if inside and path.is_file() and path.suffix.lower() != ".html":
                    with path.open("rb") as handle:
                        body = handle.read(MAX_TEMPLATE_ASSET_BYTES + 1)
                    if len(body) <= MAX_TEMPLATE_ASSET_BYTES:
                        return URLFetcherResponse(path.as_uri(), body)
            raise ValueError(f"pdfGeneration fetches no external resources ({url[:80]})")

    return TemplateOnlyFetcher(timeout=1, allowed_protocols=("data", "file"))


def _generation_inputs(ctx: NodeContext, settings: DocumentSettings) -> dict[str, Any]:
    """The node's fields, rendered and checked; errors name the field."""
    extras = ctx.config.extras()
    fmt_field, fmt_value = _pick(extras, "format", "contentFormat")
    fmt_text = str(ctx.render(fmt_value) or "markdown").strip().lower()
    if fmt_text not in CONTENT_FORMATS:
        raise _fail(
            ctx,
            fmt_field,
            f"expected markdown, html or text, got {fmt_text[:40]!r}",
            NodeConfigurationError,
        )
    fmt = CONTENT_FORMATS[fmt_text]

    content_field, raw_content = _pick(extras, "content")
    value = ctx.render(raw_content)
    content = "" if value is None else _as_content(value, fmt)
    if not content.strip():
        raise _fail(ctx, content_field, "nothing to put in the PDF (it is empty)")
    if len(content) > settings.max_content_chars:
        raise _fail(
            ctx,
            content_field,
            f"{len(content):,} characters; at most {settings.max_content_chars:,} make a PDF "
            "(FLOWMAESTRO_DOCUMENTS__MAX_CONTENT_CHARS)",
        )

    template = ctx.render_text(extras.get("template") or "").strip().lower() or DEFAULT_TEMPLATE
    names = available_templates(settings)
    if not TEMPLATE_NAME.fullmatch(template) or template not in names:
        raise _fail(
            ctx,
            "template",
            f"no PDF template {template[:64]!r}; there are {', '.join(names)}",
            NodeConfigurationError,
        )

    size_text = ctx.render_text(extras.get("pageSize") or "a4").strip().lower()
    if size_text not in PAGE_SIZES:
        raise _fail(
            ctx,
            "pageSize",
            f"unknown page size {size_text[:40]!r} (A4, A5, A3, Letter, Legal...)",
            NodeConfigurationError,
        )
    orientation = ctx.render_text(extras.get("orientation") or "portrait").strip().lower()
    if orientation not in ORIENTATIONS:
        raise _fail(
            ctx,
            "orientation",
            f"expected portrait or landscape, got {orientation[:40]!r}",
            NodeConfigurationError,
        )

    margins = []
    shared = ctx.render(extras.get("margin"))
    for key in MARGIN_FIELDS:
        raw = ctx.render(extras.get(key))
        field = key if raw not in (None, "") else "margin"
        raw = raw if raw not in (None, "") else shared
        raw = DEFAULT_MARGIN if raw in (None, "") else raw
        if (problem := _margin_problem(raw)) is not None:
            raise _fail(ctx, field, problem, NodeConfigurationError)
        length = _length(str(raw))
        assert length is not None  # _margin_problem accepted it
        margins.append(length[0])

    header = ctx.render_text(extras.get("headerText") or "").strip()[:MAX_BOX_TEXT]
    footer = ctx.render_text(extras.get("footerText") or "").strip()[:MAX_BOX_TEXT]
    title = ctx.render_text(extras.get("title") or "").strip()[:MAX_BOX_TEXT]
    filename = ctx.render_text(extras.get("filename") or extras.get("fileName") or "").strip()
    filename = filename or f"{template}.pdf"
    if not filename.lower().endswith(".pdf"):
        filename += ".pdf"
    return {
        "format": fmt,
        "content": content,
        "template": template,
        "size": PAGE_SIZES[size_text],
        "orientation": orientation,
        "margins": margins,
        "header": header,
        "footer": footer,
        "title": title,
        "filename": filename,
        "page_numbers": _flag(ctx, extras, "includePageNumbers", False),
    }


def render_pdf_html(inputs: Mapping[str, Any], settings: DocumentSettings) -> tuple[str, Path]:
    """The HTML WeasyPrint lays out, and the folder of the template it came from."""
    from markupsafe import Markup

    env = _environment(template_dirs(settings))
    now = dt.datetime.now(dt.UTC)
    template = env.get_template(f"{inputs['template']}.html")
    page_css = _page_css(
        size=inputs["size"],
        orientation=inputs["orientation"],
        margins=inputs["margins"],
        header=inputs["header"],
        footer=inputs["footer"],
        page_numbers=inputs["page_numbers"],
    )
    page = template.render(
        # Safe as HTML: markdown-it's output (raw HTML off), the node's own HTML (laid out by
        # WeasyPrint with the fetcher below: no scripts, no requests) or escaped text.
        content=Markup(_body_html(inputs["content"], inputs["format"])),
        page_css=Markup(page_css),  # ours: every user character in it is a CSS escape
        title=inputs["title"],
        header_text=inputs["header"],
        footer_text=inputs["footer"],
        template=inputs["template"],
        page_size=inputs["size"],
        orientation=inputs["orientation"],
        generated_on=now.date().isoformat(),
        generated_at=now.isoformat(timespec="seconds"),
    )
    folder = Path(template.filename).resolve().parent if template.filename else PACKAGE_TEMPLATES
    return page, folder


def execute_pdf_generation(ctx: NodeContext) -> NodeResult:
    """Markdown/HTML → a named template → a PDF in the file store."""
    from jinja2 import TemplateError
    from weasyprint import HTML

    settings = ctx.settings.documents
    inputs = _generation_inputs(ctx, settings)
    try:
        page, folder = render_pdf_html(inputs, settings)
    except TemplateError as exc:
        raise _fail(
            ctx,
            "template",
            f"the template {inputs['template']!r} failed: {exc}",
            NodeConfigurationError,
        ) from None
    try:
        document = HTML(
            string=page,
            base_url=folder.as_uri() + "/",
            url_fetcher=_url_fetcher(template_dirs(settings)),
        ).render()
    except Exception as exc:  # WeasyPrint's own failures (fonts, layout) end here, named
        raise _fail(
            ctx, "content", f"the PDF could not be laid out ({type(exc).__name__}: {exc})"
        ) from exc
    pages = len(document.pages)
    if pages > settings.max_pdf_pages:
        raise _fail(
            ctx,
            "content",
            f"the PDF would have {pages} pages; at most {settings.max_pdf_pages} are made "
            "(FLOWMAESTRO_DOCUMENTS__MAX_PDF_PAGES)",
        )
    ref = store_output(ctx, inputs["filename"], document.write_pdf(), "application/pdf")
    output = {
        "file": ref.to_value(),
        "pages": pages,
        "sizeBytes": ref.size,
        "template": inputs["template"],
    }
    return NodeResult(output=wrap_output(output, ctx.config.output_variable))


# -- pdfExtract ----------------------------------------------------------------------------------

_METADATA_FIELDS = (
    ("title", "title"),
    ("author", "author"),
    ("subject", "subject"),
    ("creator", "creator"),
    ("producer", "producer"),
    ("keywords", "keywords"),
)
_MAX_METADATA_CHARS = 10_000


def _metadata(reader: Any) -> dict[str, Any]:
    """The document information dictionary, as strings and ISO dates (unreadable parts: None)."""
    info = reader.metadata
    out: dict[str, Any] = {}
    for key, attribute in _METADATA_FIELDS:
        try:
            value = getattr(info, attribute, None) if info is not None else None
        except Exception:  # noqa: BLE001 - a malformed entry leaves that field empty
            value = None
        out[key] = str(value)[:_MAX_METADATA_CHARS] if value not in (None, "") else None
    for key, attribute in (
        ("creationDate", "creation_date"),
        ("modificationDate", "modification_date"),
    ):
        try:
            stamp = getattr(info, attribute, None) if info is not None else None
        except Exception:  # noqa: BLE001 - pypdf raises on dates that do not parse
            stamp = None
        out[key] = stamp.isoformat() if isinstance(stamp, dt.datetime) else None
    out["encrypted"] = bool(reader.is_encrypted)
    return out


def _page_text(number: int, text: str, output_format: str) -> str:
    return f"## Page {number}\n\n{text}".rstrip() if output_format == "markdown" else text


def execute_pdf_extract(ctx: NodeContext) -> NodeResult:
    """A PDF of the file store → its text per page and its metadata (pypdf)."""
    import pypdf

    settings = ctx.settings.documents
    extras = ctx.config.extras()
    field, value = _pick(extras, "file", "path", "filePath", "pdf")
    ref = input_file(ctx, ctx.render(value), field)
    output_format = ctx.render_text(extras.get("outputFormat") or "text").strip().lower()
    if output_format not in OUTPUT_FORMATS:
        raise _fail(
            ctx,
            "outputFormat",
            f"expected text, markdown or json, got {output_format[:40]!r}",
            NodeConfigurationError,
        )
    want_text = _flag(ctx, extras, "extractText", True)
    want_metadata = _flag(ctx, extras, "extractMetadata", True)
    pages_value = ctx.render(extras.get("pages"))

    with file_area(ctx).open(ref.path, field) as handle:
        head = handle.read(_PDF_MAGIC_WINDOW)
        if not _is_pdf(head):
            raise _fail(ctx, field, f"{ref.name!r} is not a PDF (it looks like {ref.media_type})")
        handle.seek(0)
        try:
            reader = pypdf.PdfReader(handle)
            if reader.is_encrypted and not reader.decrypt(""):
                raise _fail(ctx, field, f"{ref.name!r} is encrypted with a password")
            count = len(reader.pages)
            try:
                selected = parse_pages(pages_value, count)
            except ValueError as exc:
                raise _fail(ctx, "pages", str(exc), NodeConfigurationError) from None
            if want_text and len(selected) > settings.max_pdf_pages:
                raise _fail(
                    ctx,
                    "pages" if pages_value not in (None, "") else field,
                    f"{len(selected)} pages to read; at most {settings.max_pdf_pages} "
                    "(FLOWMAESTRO_DOCUMENTS__MAX_PDF_PAGES): choose some with `pages`",
                )
            pages: list[dict[str, Any]] = []
            if want_text:
                deadline = time.monotonic() + settings.extract_timeout_s
                chars = 0
                for number in selected:
                    text = reader.pages[number - 1].extract_text() or ""
                    chars += len(text)
                    if chars > settings.max_content_chars:
                        raise _fail(
                            ctx,
                            field,
                            f"the text is longer than {settings.max_content_chars:,} characters "
                            "(FLOWMAESTRO_DOCUMENTS__MAX_CONTENT_CHARS): choose pages with `pages`",
                        )
                    if time.monotonic() > deadline:
                        raise _fail(
                            ctx,
                            field,
                            f"reading the text took longer than {settings.extract_timeout_s:g} s "
                            f"(stopped at page {number}; FLOWMAESTRO_DOCUMENTS__EXTRACT_TIMEOUT_S)",
                        )
                    pages.append({"page": number, "text": text})
            metadata = _metadata(reader) if want_metadata else {}
        except NodeExecutionError:
            raise
        except Exception as exc:  # a malformed PDF makes pypdf raise exceptions of many kinds
            raise _fail(
                ctx, field, f"{ref.name!r} is not a readable PDF ({type(exc).__name__}: {exc})"
            ) from exc
    text = "\n\n".join(_page_text(p["page"], p["text"], output_format) for p in pages)
    output = {
        "text": text,
        "pages": pages,
        "pageCount": count,
        "metadata": metadata,
        "format": output_format,
        "file": ref.to_value(),
    }
    return NodeResult(output=wrap_output(output, ctx.config.output_variable))


# -- ocrExtraction -------------------------------------------------------------------------------


def tesseract_language(value: Any) -> str | None:
    """Tesseract's `lang` for a builder's language (`eng`, `en`, `English`, `en-US`,
    `eng+deu`), else None."""
    if not isinstance(value, str) or not value.strip():
        return None
    codes = []
    for part in value.replace(",", "+").split("+"):
        text = part.strip()
        lowered = text.lower()
        if lowered in LANGUAGE_ALIASES:
            code = LANGUAGE_ALIASES[lowered]
        elif re.fullmatch(r"[a-z]{2}[-_][a-z]{2,4}", lowered) and lowered[:2] in LANGUAGE_ALIASES:
            code = LANGUAGE_ALIASES.get(lowered.replace("_", "-"), LANGUAGE_ALIASES[lowered[:2]])
        elif _TESSERACT_CODE.fullmatch(text if text.startswith("script/") else lowered):
            code = text if text.startswith("script/") else lowered
        else:
            return None
        if code not in codes:
            codes.append(code)
    return "+".join(codes) if 0 < len(codes) <= _MAX_LANGUAGES else None


def _installed_languages(ctx: NodeContext) -> list[str]:
    import pytesseract

    try:
        return sorted(str(lang) for lang in pytesseract.get_languages(config=""))
    except pytesseract.TesseractNotFoundError:
        raise ctx.error(
            "Tesseract is not installed on this machine (apt-get install tesseract-ocr "
            "tesseract-ocr-eng; scripts/system-deps.sh)",
            NodeConfigurationError,
        ) from None


def _image_pages(
    ctx: NodeContext, ref: FileRef, field: str, pages_value: Any, settings: DocumentSettings
) -> Generator[tuple[int, "Image.Image"], None, None]:
    """The frames of an image (one for most formats, several for a TIFF scan), each checked
    for its pixel count before it is decoded."""
    from PIL import Image, UnidentifiedImageError

    with file_area(ctx).open(ref.path, field) as handle:
        try:
            image = Image.open(handle)
        except (UnidentifiedImageError, Image.DecompressionBombError, OSError) as exc:
            reason = "too many pixels" if isinstance(exc, Image.DecompressionBombError) else None
            raise _fail(
                ctx,
                field,
                f"{ref.name!r} is not an image Tesseract can read "
                f"({reason or f'it looks like {ref.media_type}'})",
            ) from None
        with image:
            frames = int(getattr(image, "n_frames", 1) or 1)
            selected = _selected(ctx, pages_value, frames, field, settings)
            for number in selected:
                try:
                    image.seek(number - 1)
                    pixels = image.width * image.height
                    if pixels > settings.max_image_pixels:
                        raise _fail(
                            ctx,
                            field,
                            f"the image has {pixels:,} pixels; at most "
                            f"{settings.max_image_pixels:,} "
                            "(FLOWMAESTRO_DOCUMENTS__MAX_IMAGE_PIXELS)",
                        )
                    frame = _grey(image)
                except NodeExecutionError:
                    raise
                except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
                    raise _fail(
                        ctx,
                        field,
                        f"{ref.name!r} could not be decoded ({type(exc).__name__}: {exc})",
                    ) from None
                yield number, frame


def _grey(image: "Image.Image") -> "Image.Image":
    """The frame in greyscale, transparent parts white (scans and screenshots with an alpha
    channel would otherwise turn black where they are transparent)."""
    from PIL import Image

    if image.mode in ("L", "1"):
        return image.copy()
    if "A" in image.getbands() or "transparency" in image.info:
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, "white")
        return Image.alpha_composite(white, rgba).convert("L")
    return image.convert("L")


def _pdf_pages(
    ctx: NodeContext, ref: FileRef, field: str, pages_value: Any, settings: DocumentSettings
) -> Generator[tuple[int, "Image.Image"], None, None]:
    """The pages of a scanned PDF rasterised by pdfium, one at a time, at `ocr_dpi` or less
    (a page never has more than `max_image_pixels`)."""
    import pypdfium2 as pdfium

    with file_area(ctx).local_path(ref.path, field) as path:
        with _PDFIUM:
            try:
                document = pdfium.PdfDocument(str(path))
            except pdfium.PdfiumError as exc:
                raise _fail(ctx, field, f"{ref.name!r} is not a readable PDF ({exc})") from None
            count = len(document)
        try:
            for number in _selected(ctx, pages_value, count, field, settings):
                with _PDFIUM:
                    page = document[number - 1]
                    try:
                        width, height = page.get_size()
                        area = max(width * height, 1.0)
                        scale = min(
                            settings.ocr_dpi / 72, math.sqrt(settings.max_image_pixels / area)
                        )
                        bitmap = page.render(scale=scale, grayscale=True)
                        image = bitmap.to_pil()
                    finally:
                        page.close()
                yield number, image
        finally:
            with _PDFIUM:
                document.close()


def _selected(
    ctx: NodeContext, pages_value: Any, count: int, field: str, settings: DocumentSettings
) -> list[int]:
    try:
        selected = parse_pages(pages_value, count)
    except ValueError as exc:
        raise _fail(ctx, "pages", str(exc), NodeConfigurationError) from None
    if len(selected) > settings.ocr_max_pages:
        raise _fail(
            ctx,
            "pages" if pages_value not in (None, "") else field,
            f"{len(selected)} pages to read; at most {settings.ocr_max_pages} "
            "(FLOWMAESTRO_DOCUMENTS__OCR_MAX_PAGES): choose some with `pages`",
        )
    return selected


def _blocks(data: Mapping[str, list[Any]], page: int) -> Iterator[dict[str, Any]]:
    """Tesseract's words (level 5) grouped by block (level 2): text by line, mean confidence,
    the block's box in the page image's pixels."""
    boxes: dict[int, dict[str, int]] = {}
    words: dict[int, list[tuple[int, int, str, float]]] = {}
    for i, level in enumerate(data["level"]):
        block = int(data["block_num"][i])
        if int(level) == 2:
            boxes[block] = {
                "x": int(data["left"][i]),
                "y": int(data["top"][i]),
                "width": int(data["width"][i]),
                "height": int(data["height"][i]),
            }
        elif int(level) == 5 and str(data["text"][i]).strip():
            words.setdefault(block, []).append(
                (
                    int(data["par_num"][i]),
                    int(data["line_num"][i]),
                    str(data["text"][i]).strip(),
                    float(data["conf"][i]),
                )
            )
    for block, entries in words.items():
        lines: dict[tuple[int, int], list[str]] = {}
        for par, line, word, _ in entries:
            lines.setdefault((par, line), []).append(word)
        confidences = [conf for *_, conf in entries if conf >= 0]
        yield {
            "text": "\n".join(" ".join(ws) for ws in lines.values()),
            "confidence": round(sum(confidences) / len(confidences), 2) if confidences else 0.0,
            "bbox": boxes.get(block, {"x": 0, "y": 0, "width": 0, "height": 0}),
            "page": page,
            "words": len(entries),
        }


def _ocr_language(ctx: NodeContext, extras: Mapping[str, Any]) -> str:
    field, raw = _pick(extras, "language", "lang", "languages")
    rendered = ctx.render(raw)
    if isinstance(rendered, list):
        rendered = "+".join(str(v) for v in rendered)
    text = "eng" if rendered in (None, "") else rendered
    language = tesseract_language(text)
    if language is None:
        raise _fail(
            ctx,
            field,
            f"{str(text)[:40]!r} is not a language Tesseract knows (eng, deu, fra, chi_sim... "
            "or en, English; several as eng+deu)",
            NodeConfigurationError,
        )
    installed = _installed_languages(ctx)
    missing = [code for code in language.split("+") if code not in installed]
    if missing:
        raise _fail(
            ctx,
            field,
            f"no Tesseract language data for {', '.join(missing)} on this machine "
            f"(installed: {', '.join(installed) or 'none'}; apt-get install "
            f"tesseract-ocr-{missing[0].replace('_', '-')})",
            NodeConfigurationError,
        )
    return language


def _psm(ctx: NodeContext, extras: Mapping[str, Any]) -> int:
    field, raw = _pick(extras, "psm", "pageSegmentationMode")
    value = ctx.render(raw)
    if value in (None, ""):
        return DEFAULT_PSM
    if (problem := _psm_problem(value)) is not None:
        raise _fail(ctx, field, problem, NodeConfigurationError)
    return int(value)


def _psm_problem(value: Any) -> str | None:
    try:
        number = int(str(value).strip())
    except ValueError:
        number = -1
    if isinstance(value, bool) or not 1 <= number <= 13:
        return f"expected a Tesseract page segmentation mode from 1 to 13, got {_short(value)}"
    return None


def _tesseract(
    ctx: NodeContext,
    image: "Image.Image",
    number: int,
    ref: FileRef,
    field: str,
    language: str,
    psm: int,
    settings: DocumentSettings,
) -> dict[str, list[Any]]:
    """Tesseract's words of one page (`image_to_data`), within the page's time budget."""
    import pytesseract

    try:
        data: dict[str, list[Any]] = pytesseract.image_to_data(
            image,
            lang=language,
            config=f"--psm {psm}",
            timeout=settings.ocr_timeout_s,
            output_type=pytesseract.Output.DICT,
        )
    except RuntimeError as exc:  # pytesseract's timeout: it killed Tesseract
        raise _fail(
            ctx,
            field,
            f"Tesseract took longer than {settings.ocr_timeout_s:g} s on page {number} "
            f"(FLOWMAESTRO_DOCUMENTS__OCR_TIMEOUT_S; {exc})",
        ) from None
    except pytesseract.TesseractError as exc:
        raise _fail(
            ctx, field, f"Tesseract could not read page {number} of {ref.name!r}: {exc.message}"
        ) from None
    return data


def execute_ocr_extraction(ctx: NodeContext) -> NodeResult:
    """An image or a scanned PDF of the file store → its text, block by block (Tesseract)."""
    settings = ctx.settings.documents
    extras = ctx.config.extras()
    field, value = _pick(extras, "image", "file", "path", "imagePath")
    ref = input_file(ctx, ctx.render(value), field)
    language = _ocr_language(ctx, extras)
    psm = _psm(ctx, extras)
    pages_value = ctx.render(extras.get("pages"))
    is_pdf = _is_pdf(_read_head(ctx, ref, field))
    source = _pdf_pages if is_pdf else _image_pages

    blocks: list[dict[str, Any]] = []
    pages = 0
    chars = 0
    with closing(source(ctx, ref, field, pages_value, settings)) as images:
        for number, image in images:
            with image:
                data = _tesseract(ctx, image, number, ref, field, language, psm, settings)
            pages += 1
            for block in _blocks(data, number):
                chars += len(block["text"]) + 2
                if chars > settings.max_content_chars:
                    raise _fail(
                        ctx,
                        field,
                        f"the text is longer than {settings.max_content_chars:,} characters "
                        "(FLOWMAESTRO_DOCUMENTS__MAX_CONTENT_CHARS): choose pages with `pages`",
                    )
                blocks.append(block)
    word_confidences = sum(b["confidence"] * b["words"] for b in blocks)
    words = sum(b["words"] for b in blocks)
    output = {
        "text": "\n\n".join(b["text"] for b in blocks),
        "blocks": [{k: v for k, v in b.items() if k != "words"} for b in blocks],
        "confidence": round(word_confidences / words, 2) if words else 0.0,
        "language": language,
        "pages": pages,
        "file": ref.to_value(),
    }
    return NodeResult(output=wrap_output(output, ctx.config.output_variable))


# -- deploy-time checks --------------------------------------------------------------------------


def _literal_problems(
    node: "NodeSpec", checks: Iterable[tuple[tuple[str, ...], Any]]
) -> Iterator[Problem]:
    """One problem per literal field value a check refuses (templated values wait for run time)."""
    extras = node.config.extras()
    for keys, check in checks:
        key, value = _pick(extras, *keys)
        if value is None or value == "" or not _is_literal(value):
            continue
        if (message := check(value)) is not None:
            yield error("invalid_config", f"{key}: {message}", node_id=node.id, field=key)


def _missing_file(node: "NodeSpec", *keys: str) -> Iterator[Problem]:
    extras = node.config.extras()
    if all(extras.get(key) in (None, "") for key in keys):
        yield error(
            "missing_field",
            f"{keys[0]}: the node needs a file ({' or '.join(keys)})",
            node_id=node.id,
            field=keys[0],
        )


def _choice(options: Iterable[str], what: str) -> Any:
    allowed = tuple(options)

    def check(value: Any) -> str | None:
        if str(value).strip().lower() in allowed:
            return None
        return f"unknown {what} {_short(value)}"

    return check


def _template_problem(value: Any) -> str | None:
    name = str(value).strip().lower()
    names = available_templates(get_settings().documents)
    if TEMPLATE_NAME.fullmatch(name) and name in names:
        return None
    return f"no PDF template {_short(value)}; there are {', '.join(names)}"


def check_pdf_generation(node: "NodeSpec") -> Iterator[Problem]:
    extras = node.config.extras()
    if extras.get("content") in (None, ""):
        yield error(
            "missing_field", "content: the node needs content", node_id=node.id, field="content"
        )
    yield from _literal_problems(
        node,
        [
            (("template",), _template_problem),
            (
                ("format", "contentFormat"),
                _choice(CONTENT_FORMATS, "format (markdown, html, text)"),
            ),
            (("pageSize",), _choice(PAGE_SIZES, "page size (A4, A5, A3, Letter, Legal...)")),
            (("orientation",), _choice(ORIENTATIONS, "orientation (portrait, landscape)")),
            *(((key,), _margin_problem) for key in (*MARGIN_FIELDS, "margin")),
        ],
    )


def check_pdf_extract(node: "NodeSpec") -> Iterator[Problem]:
    yield from _missing_file(node, "file", "path", "filePath", "pdf")
    yield from _literal_problems(
        node,
        [
            (("outputFormat",), _choice(OUTPUT_FORMATS, "output format (text, markdown, json)")),
            (("pages",), _pages_problem),
        ],
    )


def check_ocr_extraction(node: "NodeSpec") -> Iterator[Problem]:
    yield from _missing_file(node, "image", "file", "path", "imagePath")

    def language_problem(value: Any) -> str | None:
        if tesseract_language(value) is not None:
            return None
        return f"{_short(value)} is not a Tesseract language (eng, deu, chi_sim... or en, English)"

    yield from _literal_problems(
        node,
        [
            (("language", "lang", "languages"), language_problem),
            (("psm", "pageSegmentationMode"), _psm_problem),
            (("pages",), _pages_problem),
        ],
    )


EXECUTORS: Mapping[str, Executor] = {
    "pdfGeneration": execute_pdf_generation,
    "pdfExtract": execute_pdf_extract,
    "ocrExtraction": execute_ocr_extraction,
}

CONFIG_CHECKS: Mapping[str, ConfigCheck] = {
    "pdfGeneration": check_pdf_generation,
    "pdfExtract": check_pdf_extract,
    "ocrExtraction": check_ocr_extraction,
}
