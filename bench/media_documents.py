"""pdfGeneration, pdfExtract and ocrExtraction on their typical inputs (issue 18): a 20-page
report generated from Markdown (headings, paragraphs, lists and a table a section; A4, page
numbers, the meeting-notes template), the same 20-page PDF read back, and one scanned page read
by Tesseract, as a PNG (A4 at 200 dpi, 30 lines of text) and as a one-page scanned PDF
(rasterised by pdfium at 300 dpi first).

Each case runs in a fresh child process (spawned), with the figures every media row has
(bench/media_common.py): the first call (library imports, fonts, Tesseract's language data),
the median, min and max of a few calls, the peak of Python allocations during one call (pango's
and Tesseract's native memory is not seen there; Tesseract runs as a child process) and the
child's peak resident set. Inputs are made in the child and files go to a temporary file
store, as a run's would.

`python -m bench.media_documents` prints the result as JSON; `run()` returns it.
"""

import io
import json
import tempfile
from typing import Any

from bench.media_common import WORKFLOW, file_store, node_call, run_in_children, time_calls

FONT = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"
SECTIONS = 24  # sections of the report: 20 A4 pages with the default template


def _report_markdown() -> str:
    sentence = (
        "The quarterly review covers revenue, churn and the delivery of the roadmap items "
        "agreed with each customer segment, with the figures the finance team confirmed. "
    )
    parts = ["# Quarterly operations report\n"]
    for i in range(1, SECTIONS + 1):
        parts.append(f"## Section {i}: findings\n\n" + sentence * 6 + "\n")
        parts.append("\n".join(f"- Action {i}.{j}: follow up with owner {j}" for j in range(6)))
        parts.append("\n| metric | value | change |\n|---|---|---|")
        parts.append("\n".join(f"| metric {j} | {j * 37 % 101} | +{j}% |" for j in range(6)))
        parts.append("\n" + sentence * 4 + "\n")
    return "\n".join(parts)


def _scan_png() -> bytes:
    from PIL import Image, ImageDraw, ImageFont

    page = Image.new("L", (1654, 2339), 255)  # A4 at 200 dpi
    draw = ImageDraw.Draw(page)
    font = ImageFont.truetype(FONT, 30)
    for line in range(30):
        draw.text(
            (120, 150 + line * 68),
            f"Line {line + 1}: invoice 47{line:02d} due on 2024-05-{line % 28 + 1:02d}, total {line * 13} EUR",
            font=font,
            fill=0,
        )
    buffer = io.BytesIO()
    page.save(buffer, format="PNG")
    return buffer.getvalue()


def _scan_pdf(png: bytes) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.open(io.BytesIO(png)).save(buffer, format="PDF", resolution=200)
    return buffer.getvalue()


CASES: dict[str, tuple[str, dict[str, Any], str, int]] = {
    "pdf_generation_20_pages": (
        "pdfGeneration",
        {
            "content": "{{report}}",
            "format": "markdown",
            "template": "meeting-notes",
            "pageSize": "A4",
            "includePageNumbers": True,
            "headerText": "Quarterly operations report",
        },
        f"Markdown report, {SECTIONS} sections (~20 A4 pages)",
        5,
    ),
    "pdf_extract_20_pages": (
        "pdfExtract",
        {"file": "{{pdf}}", "extractText": True, "extractMetadata": True},
        "the 20-page generated PDF",
        5,
    ),
    "ocr_png_page": (
        "ocrExtraction",
        {"image": "{{png}}", "language": "eng"},
        "A4 scan at 200 dpi (1654 x 2339), 30 lines",
        3,
    ),
    "ocr_scanned_pdf_page": (
        "ocrExtraction",
        {"image": "{{scan}}", "language": "eng"},
        "the same page as a one-page scanned PDF, rasterised at 300 dpi",
        3,
    ),
}


def _measure(case: str) -> dict[str, Any]:
    """In the child: time and memory of one node type on its input."""
    node_type, raw, shape, repeats = CASES[case]
    with tempfile.TemporaryDirectory() as tmp:
        files = file_store(tmp)
        inputs: dict[str, Any] = {"report": _report_markdown()}
        if node_type == "pdfExtract":  # its input: the generated report, made before timing
            generate = CASES["pdf_generation_20_pages"][1]
            made = node_call("pdfGeneration", generate, inputs, files, node_id="setup")()
            inputs["pdf"] = made["file"]
        if node_type == "ocrExtraction":
            png = _scan_png()
            area = files.area(WORKFLOW)
            inputs["png"] = area.write("/uploads/scan.png", png).to_value()
            inputs["scan"] = area.write("/uploads/scan.pdf", _scan_pdf(png)).to_value()

        output, figures = time_calls(node_call(node_type, raw, inputs, files), repeats)
    pages = output["pageCount"] if node_type == "pdfExtract" else output["pages"]
    return {
        "case": case,
        "node": node_type,
        "input": shape,
        "pages": pages,
        **figures,
        **({"output_bytes": output["file"]["size"]} if node_type == "pdfGeneration" else {}),
        **({"text_chars": len(output["text"])} if node_type != "pdfGeneration" else {}),
        **({"confidence": output["confidence"]} if node_type == "ocrExtraction" else {}),
    }


def run() -> list[dict[str, Any]]:
    """One row a case, each measured in its own spawned process."""
    return run_in_children(_measure, CASES)


if __name__ == "__main__":
    print(json.dumps(run(), indent=2))
