"""pdfGeneration, pdfExtract and ocrExtraction with the real libraries on inputs made here: PDFs
written by WeasyPrint read back by pypdf, text rendered into images with Pillow read back by
Tesseract, and a local HTTP server that must never see a request from a PDF's content."""

import io
import re
from pathlib import Path
from typing import Any

import pypdf
import pytest
from PIL import Image, ImageDraw, ImageFont

from flowmaestro_dagster.compile.compiler import compile_workflow
from flowmaestro_dagster.compile.validation import validate
from flowmaestro_dagster.errors import NodeConfigurationError, NodeExecutionError
from flowmaestro_dagster.lang.state import ExecutionState
from flowmaestro_dagster.nodes import NodeContext, NodeResult, get_executor
from flowmaestro_dagster.nodes.documents import (
    PACKAGE_TEMPLATES,
    _url_fetcher,
    parse_pages,
    tesseract_language,
)
from flowmaestro_dagster.nodes.filestore import FileStore
from flowmaestro_dagster.settings import DocumentSettings, Settings
from flowmaestro_dagster.spec.configs import normalise_config
from flowmaestro_dagster.spec.problems import Problem
from flowmaestro_dagster.tags import WORKFLOW_ID_TAG
from flowmaestro_dagster.testing import EchoServer
from tests.builders import flow, node
from tests.conftest import load_corpus

MB = 1024 * 1024
FONT = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"
CORPUS_TEMPLATES = {
    "battlecard",
    "contract-analysis",
    "document",
    "interview-report",
    "medical-summary",
    "meeting-notes",
    "patient-intake",
    "podcast-shownotes",
    "radiology-report",
    "sales-proposal",
    "trend-report",
}
NOTES = """# Weekly sync

Attendees: **Ann**, Bob and Chen.

## Decisions

- Ship the invoice exporter on Friday
- Move the retro to Tuesday

| owner | task |
|---|---|
| Ann | release notes |
"""


def settings(**documents: Any) -> Settings:
    return Settings().model_copy(update={"documents": DocumentSettings(**documents)})


def store(tmp_path: Path) -> FileStore:
    return FileStore(str(tmp_path / "store"), max_bytes=50 * MB)


def run(
    tmp_path: Path,
    node_type: str,
    raw: dict[str, Any],
    inputs: dict[str, Any] | None = None,
    config: Settings | None = None,
) -> NodeResult:
    """One node as a plain function, with a file store in tmp_path (workflow `wf-1`)."""
    node_config, problems = normalise_config(node_type, raw, node_id="doc")
    assert problems == []
    ctx = NodeContext(
        node_id="doc",
        node_type=node_type,
        label="doc",
        config=node_config,
        state=ExecutionState.start(inputs or {}),
        services={"settings": config or Settings(), "files": store(tmp_path)},
        run_tags={WORKFLOW_ID_TAG: "wf-1"},
        execution_id="exec-1",
    )
    return get_executor(node_type)(ctx)


def out(
    tmp_path: Path,
    node_type: str,
    raw: dict[str, Any],
    inputs: dict[str, Any] | None = None,
    config: Settings | None = None,
) -> dict[str, Any]:
    output = run(tmp_path, node_type, {**raw, "outputVariable": "o"}, inputs, config).output
    assert set(output) == {"o"}
    result: dict[str, Any] = output["o"]
    return result


def stored(tmp_path: Path, ref: dict[str, Any]) -> Path:
    """Where the store keeps a file: inside workflow wf-1's area."""
    path = tmp_path / "store" / "workflows" / "wf-1" / ref["path"].lstrip("/")
    assert path.is_file()
    assert path.stat().st_size == ref["size"]
    return path


def upload(tmp_path: Path, path: str, data: bytes) -> dict[str, Any]:
    """A file put into workflow wf-1's area (as an upload would), as a node output holds it."""
    return store(tmp_path).area("wf-1").write(path, data).to_value()


def problems_of(node_type: str, **config: Any) -> list[Problem]:
    return [p for p in validate(flow([node("n", node_type, **config)], [])) if p.node_id == "n"]


def fields(problems: list[Problem]) -> set[str | None]:
    return {p.field for p in problems if p.severity == "error"}


def words_image(lines: list[str], size: tuple[int, int] = (1400, 420)) -> Image.Image:
    """Black text on white, as a scanner would give it."""
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    font = ImageFont.truetype(FONT, 44)
    for i, line in enumerate(lines):
        draw.text((50, 50 + i * 120), line, font=font, fill="black")
    return image


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


# -- pdfGeneration → pdfExtract -------------------------------------------------------------------


def test_generated_pdf_reads_back_with_its_text_page_size_and_page_numbers(
    tmp_path: Path,
) -> None:
    """The builder's own fixture config (createreportgenerationdefinition), rendered."""
    generated = out(
        tmp_path,
        "pdfGeneration",
        {
            "content": "${input.data.content}",
            "format": "markdown",
            "filename": "${input.data.filename}",
            "pageSize": "letter",
            "orientation": "portrait",
            "marginTop": "1in",
            "marginRight": "1in",
            "marginBottom": "1in",
            "marginLeft": "1in",
            "headerText": "${input.data.reportTitle}",
            "footerText": "Confidential",
            "includePageNumbers": True,
        },
        {"data": {"content": NOTES, "filename": "sync", "reportTitle": "Q3 <Board> & Co"}},
    )
    ref = generated["file"]
    assert (ref["type"], ref["name"], ref["mediaType"]) == ("file", "sync.pdf", "application/pdf")
    assert ref["path"] == "/executions/exec-1/doc/sync.pdf"
    assert generated["template"] == "default"
    assert generated["sizeBytes"] == ref["size"]
    reader = pypdf.PdfReader(stored(tmp_path, ref))
    assert len(reader.pages) == generated["pages"] == 1
    box = reader.pages[0].mediabox
    assert (round(float(box.width)), round(float(box.height))) == (612, 792)  # letter, portrait

    extracted = out(tmp_path, "pdfExtract", {"file": "{{pdf}}", "extractText": True}, {"pdf": ref})
    text = extracted["text"]
    for words in ("Weekly sync", "Ann", "Ship the invoice exporter on Friday", "release notes"):
        assert words in text
    assert "Q3 <Board> & Co" in text  # headerText: CSS-escaped, read back as written
    assert "Confidential" in text
    assert "Page 1 of 1" in text
    assert extracted["pageCount"] == 1
    assert extracted["pages"] == [{"page": 1, "text": extracted["pages"][0]["text"]}]
    assert extracted["file"]["sha256"] == ref["sha256"]


def test_page_count_follows_page_size_orientation_and_content(tmp_path: Path) -> None:
    long = "\n\n".join(f"Paragraph {i}: " + "lorem ipsum dolor sit amet " * 12 for i in range(60))
    counts = {}
    for size in ("A5", "A3"):
        generated = out(tmp_path, "pdfGeneration", {"content": long, "pageSize": size})
        reader = pypdf.PdfReader(stored(tmp_path, generated["file"]))
        assert len(reader.pages) == generated["pages"]
        counts[size] = generated["pages"]
    assert counts["A5"] > counts["A3"] >= 1

    landscape = out(
        tmp_path, "pdfGeneration", {"content": "x", "pageSize": "a4", "orientation": "landscape"}
    )
    box = pypdf.PdfReader(stored(tmp_path, landscape["file"])).pages[0].mediabox
    assert float(box.width) > float(box.height)  # A4 turned: 842 x 595 pt
    numbered = out(tmp_path, "pdfGeneration", {"content": long, "includePageNumbers": "true"})
    last = out(tmp_path, "pdfExtract", {"file": numbered["file"]})["pages"][-1]["text"]
    assert f"Page {numbered['pages']} of {numbered['pages']}" in last


def test_a_template_chosen_by_name_shapes_the_pdf(tmp_path: Path) -> None:
    def text_of(template: str | None) -> str:
        raw = {"content": "Budget approved.", "title": "Sprint 12"}
        if template:
            raw["template"] = template
        generated = out(tmp_path, "pdfGeneration", raw)
        assert generated["template"] == (template or "default")
        extracted = out(tmp_path, "pdfExtract", {"path": generated["file"]["path"]})
        assert extracted["metadata"]["title"] == "Sprint 12"
        return str(extracted["text"])

    plain = text_of(None)
    notes = text_of("meeting-notes")
    intake = text_of("patient-intake")
    assert "Budget approved." in plain and "Sprint 12" in plain
    assert "MEETING NOTES" not in plain  # the template's heading (CSS upper-cases it)
    assert "MEETING NOTES" in notes and "Budget approved." in notes
    assert "PATIENT INTAKE SUMMARY" in intake and "protected health information" in intake


def test_every_template_the_corpus_names_ships_and_renders(tmp_path: Path) -> None:
    shipped = {p.stem for p in PACKAGE_TEMPLATES.glob("*.html") if not p.stem.startswith("_")}
    assert CORPUS_TEMPLATES | {"default"} <= shipped
    for name in sorted(shipped):
        generated = out(tmp_path, "pdfGeneration", {"content": f"# {name}", "template": name})
        assert generated["pages"] == 1, name


def test_operator_templates_extend_and_override_the_shipped_ones(tmp_path: Path) -> None:
    folder = tmp_path / "templates"
    folder.mkdir()
    (folder / "acme.html").write_text(
        '{% extends "_base.html" %}{% set heading = "ACME Quarterly" %}'
        '{% block after %}<img src="logo.png"><p>{{ content }}</p>{% endblock %}'
    )
    (folder / "meeting-notes.html").write_text(
        "<html><head><style>{{ page_css }}</style></head><body><h1>Our notes</h1>"
        "{{ content }}{{ title }}</body></html>"
    )
    (folder / "logo.png").write_bytes(png(Image.new("RGB", (40, 20), "red")))
    config = settings(templates_dir=folder)
    acme = out(
        tmp_path, "pdfGeneration", {"content": "Q3 results", "template": "acme"}, None, config
    )
    text = out(tmp_path, "pdfExtract", {"file": acme["file"]})["text"]
    assert "ACME QUARTERLY" in text and "Q3 results" in text
    reader = pypdf.PdfReader(stored(tmp_path, acme["file"]))
    assert list(reader.pages[0].images)  # the template's own logo, from its folder
    notes = out(
        tmp_path,
        "pdfGeneration",
        {"content": "x <b>y</b>", "template": "Meeting-Notes", "title": "<i>T</i>"},
        None,
        config,
    )
    text = out(tmp_path, "pdfExtract", {"file": notes["file"]})["text"]
    assert "Our notes" in text and "MEETING NOTES" not in text
    assert "x <b>y</b>" in text and "<i>T</i>" in text  # user text stays text (autoescape)


def test_unknown_template_is_a_node_error_naming_template(tmp_path: Path) -> None:
    with pytest.raises(NodeConfigurationError, match=r"template: no PDF template 'nope'") as info:
        run(tmp_path, "pdfGeneration", {"content": "x", "template": "{{t}}"}, {"t": "nope"})
    assert info.value.details == {"field": "template"}
    with pytest.raises(NodeConfigurationError, match="template: no PDF template"):
        run(tmp_path, "pdfGeneration", {"content": "x", "template": "{{t}}"}, {"t": "../_base"})


def test_generation_refuses_empty_oversized_and_too_long_content(tmp_path: Path) -> None:
    with pytest.raises(NodeExecutionError, match="content: nothing to put in the PDF"):
        run(tmp_path, "pdfGeneration", {"content": "{{empty}}"}, {"empty": ""})
    with pytest.raises(NodeExecutionError, match="content: 2,001 characters; at most 2,000"):
        run(
            tmp_path,
            "pdfGeneration",
            {"content": "x" * 2001},
            None,
            settings(max_content_chars=2000),
        )
    many = "\n\n".join(f"paragraph {i}" for i in range(400))
    with pytest.raises(
        NodeExecutionError, match=r"content: the PDF would have \d+ pages; at most 2"
    ):
        run(tmp_path, "pdfGeneration", {"content": many}, None, settings(max_pdf_pages=2))
    with pytest.raises(NodeConfigurationError, match="marginLeft: expected a length"):
        run(tmp_path, "pdfGeneration", {"content": "x", "marginLeft": "{{m}}"}, {"m": "wide"})
    with pytest.raises(NodeConfigurationError, match="pageSize: unknown page size 'a99'"):
        run(tmp_path, "pdfGeneration", {"content": "x", "pageSize": "{{s}}"}, {"s": "A99"})


def test_structured_content_and_plain_text_formats(tmp_path: Path) -> None:
    generated = out(
        tmp_path,
        "pdfGeneration",
        {"content": "{{info}}", "template": "patient-intake"},
        {"info": {"name": "Jane Roe", "allergies": ["penicillin"]}},
    )
    text = out(tmp_path, "pdfExtract", {"file": generated["file"]})["text"]
    assert '"name": "Jane Roe"' in text and "penicillin" in text
    llm_output = out(
        tmp_path,
        "pdfGeneration",
        {"content": "{{summary}}"},
        {"summary": {"text": "**Bold** claim"}},
    )
    text = out(tmp_path, "pdfExtract", {"file": llm_output["file"]})["text"]
    assert "Bold claim" in text and "**" not in text
    plain = out(tmp_path, "pdfGeneration", {"content": "**not bold** <tag>", "format": "text"})
    assert "**not bold** <tag>" in out(tmp_path, "pdfExtract", {"file": plain["file"]})["text"]


# -- pdfGeneration fetches nothing -----------------------------------------------------------------


def test_content_cannot_make_weasyprint_read_files_or_reach_the_network(
    tmp_path: Path, echo: EchoServer
) -> None:
    html = (
        '<img src="file:///etc/passwd"><img src="{url}/img.png">'
        '<link rel="stylesheet" href="{url}/style.css">'
        '<style>@import url("{url}/import.css"); @font-face {{ font-family: X; src: url("{url}/f.woff"); }}'
        'body {{ background: url("file:///etc/hostname"); }}</style>'
        '<object data="file:///etc/passwd" type="text/plain"></object>'
        '<embed src="{url}/embed.svg"><p>visible</p>'
    ).format(url=echo.url("").rstrip("/"))
    generated = out(tmp_path, "pdfGeneration", {"content": html, "format": "html", "filename": "a"})
    markdown = out(
        tmp_path,
        "pdfGeneration",
        {
            "content": f'![x]({echo.url("/md.png")}) <img src="{echo.url("/raw.png")}"> ![y](file:///etc/passwd)',
            "filename": "b",
        },
    )
    assert echo.requests == []
    for ref in (generated["file"], markdown["file"]):
        data = stored(tmp_path, ref).read_bytes()
        assert b"root:" not in data
        reader = pypdf.PdfReader(io.BytesIO(data))
        assert not list(reader.pages[0].images)
    assert "visible" in out(tmp_path, "pdfExtract", {"file": generated["file"]})["text"]
    text = out(tmp_path, "pdfExtract", {"file": markdown["file"]})["text"]
    assert "<img src=" in text  # raw HTML in Markdown is text


def test_the_fetcher_serves_data_uris_and_template_files_only(tmp_path: Path) -> None:
    folder = tmp_path / "templates"
    folder.mkdir()
    (folder / "logo.png").write_bytes(b"\x89PNG logo")
    (folder / "page.html").write_text("<p>template</p>")
    (tmp_path / "secret.txt").write_text("secret")
    (folder / "link.png").symlink_to(tmp_path / "secret.txt")
    fetcher = _url_fetcher((folder.resolve(), PACKAGE_TEMPLATES))
    assert fetcher.fetch("data:text/plain;base64,aGk=").read() == b"hi"
    assert fetcher.fetch((folder / "logo.png").as_uri()).read() == b"\x89PNG logo"
    refused = [
        "file:///etc/passwd",
        (tmp_path / "secret.txt").as_uri(),
        (folder / "link.png").as_uri(),  # a symlink out of the folder
        (folder / "page.html").as_uri(),  # templates are not assets
        (folder / ".." / "secret.txt").as_uri(),
        "http://127.0.0.1:9/x.png",
        "https://example.com/x.css",
        "ftp://example.com/x",
    ]
    for url in refused:
        with pytest.raises(ValueError, match="fetches no external resources"):
            fetcher.fetch(url)


# -- pdfExtract -------------------------------------------------------------------------------------


def test_extract_pages_selection_formats_and_metadata(tmp_path: Path) -> None:
    # One chapter a page (HTML content: Markdown has no page breaks).
    chapters = "".join(
        f'<h1 style="page-break-before: {"always" if i > 1 else "auto"}">Chapter {i}</h1>'
        f"<p>Body of chapter {i}.</p>"
        for i in range(1, 5)
    )
    generated = out(
        tmp_path, "pdfGeneration", {"content": chapters, "format": "html", "title": "Book"}
    )
    assert generated["pages"] == 4
    ref = generated["file"]
    part = out(tmp_path, "pdfExtract", {"file": ref, "pages": "2-3", "outputFormat": "markdown"})
    assert [p["page"] for p in part["pages"]] == [2, 3]
    assert part["pageCount"] == 4
    assert part["text"].startswith("## Page 2\n\nChapter 2")
    assert "## Page 3" in part["text"] and "Chapter 1" not in part["text"]
    assert part["metadata"]["title"] == "Book"
    assert part["metadata"]["producer"].startswith("WeasyPrint")
    assert part["metadata"]["creationDate"] is not None
    bare = out(
        tmp_path, "pdfExtract", {"file": ref, "extractMetadata": False, "extractText": False}
    )
    assert (bare["text"], bare["pages"], bare["metadata"], bare["pageCount"]) == ("", [], {}, 4)
    with pytest.raises(NodeExecutionError, match=r"file: 4 pages to read; at most 3"):
        run(tmp_path, "pdfExtract", {"file": ref}, None, settings(max_pdf_pages=3))
    with pytest.raises(NodeConfigurationError, match="pages: page 9 is past the last page"):
        run(tmp_path, "pdfExtract", {"file": ref, "pages": 9})
    with pytest.raises(NodeExecutionError, match="file: the text is longer than 20 characters"):
        run(tmp_path, "pdfExtract", {"file": ref}, None, settings(max_content_chars=20))


def test_extract_takes_a_node_output_holding_the_file(tmp_path: Path) -> None:
    """`file: {{report}}` where report is pdfGeneration's whole output (corpus spelling)."""
    generated = out(tmp_path, "pdfGeneration", {"content": "Handed over", "template": "document"})
    extracted = out(tmp_path, "pdfExtract", {"file": "{{report}}"}, {"report": generated})
    assert "Handed over" in extracted["text"]


def test_extract_refuses_what_is_not_a_pdf_naming_the_field(tmp_path: Path) -> None:
    note = upload(tmp_path, "/uploads/note.txt", b"just text" + b" " * 2000 + b"%PDF- too late")
    with pytest.raises(
        NodeExecutionError, match=re.escape("file: 'note.txt' is not a PDF")
    ) as info:
        run(tmp_path, "pdfExtract", {"file": note})
    assert info.value.details == {"field": "file"}
    broken = upload(tmp_path, "/uploads/broken.pdf", b"%PDF-1.7\n" + b"\x00garbage" * 50)
    with pytest.raises(
        NodeExecutionError, match=re.escape("path: 'broken.pdf' is not a readable PDF")
    ):
        run(tmp_path, "pdfExtract", {"path": "/uploads/broken.pdf"})
    with pytest.raises(NodeExecutionError, match=re.escape("path: no file '/uploads/missing.pdf'")):
        run(tmp_path, "pdfExtract", {"path": "/uploads/missing.pdf"})
    assert broken["size"] > 0


def test_extract_refuses_a_password_protected_pdf(tmp_path: Path) -> None:
    writer = pypdf.PdfWriter()
    writer.add_blank_page(200, 200)
    writer.encrypt(user_password="s3cret", owner_password="owner")
    buffer = io.BytesIO()
    writer.write(buffer)
    locked = upload(tmp_path, "/uploads/locked.pdf", buffer.getvalue())
    with pytest.raises(
        NodeExecutionError, match=re.escape("file: 'locked.pdf' is encrypted with a password")
    ):
        run(tmp_path, "pdfExtract", {"file": locked})


# -- ocrExtraction ----------------------------------------------------------------------------------


def test_ocr_reads_rendered_text_with_blocks_and_confidence(tmp_path: Path) -> None:
    scan = upload(
        tmp_path,
        "/uploads/scan.png",
        png(words_image(["Invoice number 4711", "Total due 128 EUR"])),
    )
    result = out(tmp_path, "ocrExtraction", {"image": "{{doc}}", "language": "eng"}, {"doc": scan})
    assert "Invoice number 4711" in result["text"]
    assert "Total due 128 EUR" in result["text"]
    assert result["language"] == "eng"
    assert result["pages"] == 1
    assert 50 < result["confidence"] <= 100
    assert result["file"]["sha256"] == scan["sha256"]
    assert len(result["blocks"]) == 2
    first = result["blocks"][0]
    assert first["text"] == "Invoice number 4711"
    assert first["page"] == 1
    assert 50 < first["confidence"] <= 100
    assert set(first["bbox"]) == {"x", "y", "width", "height"}
    assert 30 <= first["bbox"]["x"] <= 70 and 30 <= first["bbox"]["y"] <= 80
    assert 300 < first["bbox"]["width"] < 700


def test_ocr_reads_a_scanned_pdf_page_by_page(tmp_path: Path) -> None:
    pages = [words_image(["Scanned page one"]), words_image(["Second sheet here"])]
    buffer = io.BytesIO()
    pages[0].save(buffer, format="PDF", save_all=True, append_images=pages[1:], resolution=150)
    scan = upload(tmp_path, "/uploads/scan.pdf", buffer.getvalue())
    result = out(tmp_path, "ocrExtraction", {"image": scan, "language": "English"})
    assert result["language"] == "eng"
    assert result["pages"] == 2
    assert "Scanned page one" in result["text"] and "Second sheet here" in result["text"]
    assert [b["page"] for b in result["blocks"]] == [1, 2]
    second = out(tmp_path, "ocrExtraction", {"image": scan, "pages": "2"})
    assert second["pages"] == 1 and "Scanned page one" not in second["text"]
    with pytest.raises(NodeExecutionError, match=r"image: 2 pages to read; at most 1"):
        run(tmp_path, "ocrExtraction", {"image": scan}, None, settings(ocr_max_pages=1))
    # A page is rasterised at no more pixels than the cap, whatever its size in points.
    small = out(
        tmp_path,
        "ocrExtraction",
        {"image": scan, "pages": 1},
        None,
        settings(max_image_pixels=400_000),
    )
    assert small["pages"] == 1


def test_ocr_reads_each_frame_of_a_tiff(tmp_path: Path) -> None:
    frames = [words_image(["Alpha frame"]), words_image(["Beta frame"])]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="TIFF", save_all=True, append_images=frames[1:])
    scan = upload(tmp_path, "/uploads/scan.tiff", buffer.getvalue())
    result = out(tmp_path, "ocrExtraction", {"file": scan})
    assert result["pages"] == 2
    assert "Alpha frame" in result["text"] and "Beta frame" in result["text"]


def test_ocr_reads_text_on_a_transparent_background(tmp_path: Path) -> None:
    image = Image.new("RGBA", (1400, 200), (0, 0, 0, 0))  # transparent black
    ImageDraw.Draw(image).text(
        (50, 50), "Clear glass label", font=ImageFont.truetype(FONT, 44), fill=(0, 0, 0, 255)
    )
    scan = upload(tmp_path, "/uploads/label.png", png(image))
    assert "Clear glass label" in out(tmp_path, "ocrExtraction", {"image": scan})["text"]


def test_ocr_refuses_what_it_cannot_read_naming_the_field(tmp_path: Path) -> None:
    text = upload(tmp_path, "/uploads/notes.txt", b"plain words, not pixels")
    with pytest.raises(
        NodeExecutionError, match=re.escape("image: 'notes.txt' is not an image Tesseract can read")
    ) as info:
        run(tmp_path, "ocrExtraction", {"image": text})
    assert info.value.details == {"field": "image"}
    scan = upload(tmp_path, "/uploads/big.png", png(words_image(["big"])))
    with pytest.raises(
        NodeExecutionError, match=r"image: the image has 588,000 pixels; at most 1,000"
    ):
        run(tmp_path, "ocrExtraction", {"image": scan}, None, settings(max_image_pixels=1000))
    fake = upload(tmp_path, "/uploads/fake.png", b"\x89PNG\r\n\x1a\n" + b"\x00garbage" * 40)
    with pytest.raises(
        NodeExecutionError, match=re.escape("image: 'fake.png' is not an image Tesseract can read")
    ):
        run(tmp_path, "ocrExtraction", {"image": fake})


def test_ocr_language_spellings_and_missing_language_data(tmp_path: Path) -> None:
    assert tesseract_language("eng") == "eng"
    assert tesseract_language("en") == "eng"
    assert tesseract_language("English") == "eng"
    assert tesseract_language("en-US") == "eng"
    assert tesseract_language("eng+deu") == "eng+deu"
    assert tesseract_language("en, de") == "eng+deu"
    assert tesseract_language("chi_sim") == "chi_sim"
    assert tesseract_language("script/Latin") == "script/Latin"
    assert tesseract_language("Klingon!") is None
    assert tesseract_language("") is None
    scan = upload(tmp_path, "/uploads/scan.png", png(words_image(["Hallo Welt"])))
    with pytest.raises(
        NodeConfigurationError,
        match=r"language: no Tesseract language data for zul.*installed: .*eng",
    ) as info:
        run(tmp_path, "ocrExtraction", {"image": scan, "language": "{{lang}}"}, {"lang": "zul"})
    assert info.value.details == {"field": "language"}
    with pytest.raises(NodeConfigurationError, match="language: 'Klingon!' is not a language"):
        run(
            tmp_path, "ocrExtraction", {"image": scan, "language": "{{lang}}"}, {"lang": "Klingon!"}
        )
    with pytest.raises(
        NodeConfigurationError, match="psm: expected a Tesseract page segmentation mode"
    ):
        run(tmp_path, "ocrExtraction", {"image": scan, "psm": "{{p}}"}, {"p": 42})
    single_line = out(tmp_path, "ocrExtraction", {"image": scan, "psm": 7})
    assert "Hallo Welt" in single_line["text"]


def test_parse_pages() -> None:
    assert parse_pages(None, 3) == [1, 2, 3]
    assert parse_pages("all", 3) == [1, 2, 3]
    assert parse_pages("2-", 4) == [2, 3, 4]
    assert parse_pages("1-99", 3) == [1, 2, 3]
    assert parse_pages("3, 1-2, 3", 5) == [3, 1, 2]
    assert parse_pages([2, "4"], 5) == [2, 4]
    for bad in ("0", "3-1", "x", True, "1;2"):
        with pytest.raises(ValueError):
            parse_pages(bad, 5)


# -- end to end ------------------------------------------------------------------------------------


def test_a_workflow_generates_then_extracts_passing_only_the_reference(tmp_path: Path) -> None:
    """input → pdfGeneration → pdfExtract as Dagster ops: the file goes through the store,
    the run state carries its reference."""
    from flowmaestro_dagster.settings import FileSettings
    from flowmaestro_dagster.testing import run_workflow

    definition = flow(
        [
            node("in", "input", inputName="notes"),
            node(
                "gen",
                "pdfGeneration",
                content="{{notes}}",
                template="meeting-notes",
                outputVariable="report",
            ),
            node("read", "pdfExtract", file="{{report}}", outputVariable="extracted"),
        ],
        [("in", "gen"), ("gen", "read")],
    )
    config = Settings().model_copy(update={"files": FileSettings(url=str(tmp_path / "files"))})
    result = run_workflow(definition, {"notes": NOTES}, settings=config)
    report = result.output("gen")["report"]
    assert set(report) == {"file", "pages", "sizeBytes", "template"}
    assert report["file"]["path"].endswith("/gen/meeting-notes.pdf")
    assert (tmp_path / "files" / "workflows").is_dir()
    extracted = result.output("read")["extracted"]
    assert "Ship the invoice exporter on Friday" in extracted["text"]
    assert extracted["file"]["sha256"] == report["file"]["sha256"]


# -- deploy-time checks -----------------------------------------------------------------------------


def test_literal_mistakes_are_validation_problems_naming_the_field() -> None:
    assert fields(problems_of("pdfGeneration", content="x", template="nope")) == {"template"}
    assert fields(problems_of("pdfGeneration", content="x", pageSize="A99")) == {"pageSize"}
    assert fields(problems_of("pdfGeneration", content="x", orientation="diagonal")) == {
        "orientation"
    }
    assert fields(problems_of("pdfGeneration", content="x", format="docx")) == {"format"}
    assert fields(problems_of("pdfGeneration", content="x", marginTop="1 mile")) == {"marginTop"}
    assert fields(problems_of("pdfGeneration", template="meeting-notes")) == {"content"}
    assert fields(problems_of("pdfExtract", file="/a.pdf", outputFormat="xml")) == {"outputFormat"}
    assert fields(problems_of("pdfExtract", file="/a.pdf", pages="1;2")) == {"pages"}
    assert fields(problems_of("pdfExtract", extractText=True)) == {"file"}
    assert fields(problems_of("ocrExtraction", image="/a.png", language="Klingon!")) == {"language"}
    assert fields(problems_of("ocrExtraction", image="/a.png", psm=99)) == {"psm"}
    assert fields(problems_of("ocrExtraction", language="eng")) == {"image"}


def test_good_and_templated_values_are_not_problems() -> None:
    good = {
        "content": "{{x}}",
        "template": "Meeting-Notes",
        "pageSize": "Letter",
        "orientation": "landscape",
        "marginTop": "1in",
        "marginLeft": 20,
        "format": "markdown",
    }
    assert fields(problems_of("pdfGeneration", **good)) == set()
    assert (
        fields(problems_of("pdfGeneration", content="x", template="{{params.template}}")) == set()
    )
    assert fields(problems_of("pdfGeneration", content="x", pageSize="${input.data.size}")) == set()
    assert fields(problems_of("ocrExtraction", image="{{doc}}", language="en")) == set()
    assert fields(problems_of("ocrExtraction", image="{{doc}}", language="{{lang}}")) == set()
    assert fields(problems_of("pdfExtract", path="${input.data.pdfPath}", pages="1-3")) == set()


CORPUS_FILES = [
    "document-processing/contract-clause-analyzer.json",
    "document-processing/multi-format-document-converter.json",
    "document-processing/report-template-filler-2.json",
    "fixtures/node-patterns--document-generation/createpdfextractdefinition.json",
    "fixtures/node-patterns--document-generation/createpdfgenerationdefinition.json",
    "fixtures/node-patterns--document-generation/createpdfprocessingdefinition.json",
    "fixtures/node-patterns--document-generation/createreportgenerationdefinition.json",
    "healthcare/insurance-claim-processor.json",
    "healthcare/medical-image-analyzer.json",
    "healthcare/medical-records-summarizer.json",
    "healthcare/patient-intake-automator.json",
    "marketing/trend-research-automator.json",
    "sales/ai-proposal-generator-2.json",
    "sales/competitor-battlecard-creator.json",
    "voice-audio/interview-analyzer-2.json",
    "voice-audio/meeting-transcription-pipeline-2.json",
    "voice-audio/podcast-production-suite-2.json",
]


@pytest.mark.parametrize("relative", CORPUS_FILES)
def test_corpus_workflows_with_document_nodes_compile_without_problems(relative: str) -> None:
    definition = load_corpus(relative)
    ours = {"pdfGeneration", "pdfExtract", "ocrExtraction"}
    compiled = compile_workflow(definition)
    node_ids = {n.id for n in compiled.spec.nodes.values() if n.type in ours}
    assert node_ids
    assert [
        p for p in validate(definition) if p.node_id in node_ids and p.severity == "error"
    ] == []
