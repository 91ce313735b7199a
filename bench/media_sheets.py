"""spreadsheetGeneration and chartGeneration on their typical inputs (issue 18): a 1,000-row
sheet (8 columns: ints, floats, text, ISO dates, booleans; striped, bold header) as xlsx and as
csv, and one bar chart (12 categories x 2 series, 800 x 600, PNG and SVG).

Each case runs in a fresh child process (spawned), with the figures every media row has
(bench/media_common.py): the first call (library imports, and for charts vl-convert starting
its JavaScript engine), the median, min and max of `REPEATS` calls, the peak of Python
allocations during one call (vl-convert's engine is native memory tracemalloc does not see) and
the child's peak resident set. The files go to a temporary file store, as a run's would.

`python -m bench.media_sheets [--large]` prints the result as JSON; `run()` returns it
(`--large` / `run(large=True)` adds a 100,000-row xlsx: the default row cap, streamed).
"""

import json
import sys
import tempfile
from typing import Any

from bench.media_common import file_store, node_call, run_in_children, time_calls

REPEATS = 10


def _rows(count: int) -> list[dict[str, Any]]:
    return [
        {
            "id": i,
            "customer": f"Customer {i % 97}",
            "region": ("North", "South", "East", "West")[i % 4],
            "amount": round(i * 13.37 % 5000, 2),
            "units": i % 50,
            "orderedAt": f"2024-{i % 12 + 1:02d}-{i % 28 + 1:02d}",
            "shippedAt": f"2024-{i % 12 + 1:02d}-{i % 28 + 1:02d}T10:{i % 60:02d}:00Z",
            "paid": i % 3 != 0,
        }
        for i in range(count)
    ]


def _chart_data() -> dict[str, Any]:
    months = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]
    return {
        "labels": months,
        "datasets": [
            {"label": "Revenue", "data": [120 + 7 * i for i in range(12)]},
            {"label": "Costs", "data": [90 + 5 * i for i in range(12)]},
        ],
    }


CASES: dict[str, tuple[str, dict[str, Any], str]] = {
    "xlsx_1000": (
        "spreadsheetGeneration",
        {"dataSource": "{{rows}}", "format": "xlsx", "alternateRows": True, "sheetName": "Orders"},
        "1,000 rows x 8 columns",
    ),
    "csv_1000": (
        "spreadsheetGeneration",
        {"dataSource": "{{rows}}", "format": "csv"},
        "1,000 rows x 8 columns",
    ),
    "bar_chart": (
        "chartGeneration",
        {
            "chartType": "bar",
            "dataSource": "{{chart}}",
            "title": "Revenue and costs",
            "xAxisLabel": "Month",
            "yAxisLabel": "USD (k)",
            "width": 800,
            "height": 600,
            "showValues": True,
        },
        "12 categories x 2 series, 800 x 600 px",
    ),
    "xlsx_100000": (
        "spreadsheetGeneration",
        {"dataSource": "{{rows}}", "format": "xlsx"},
        "100,000 rows x 8 columns",
    ),
}


def _measure(case: str) -> dict[str, Any]:
    """In the child: time and memory of one node type on its input."""
    node_type, raw, shape = CASES[case]
    rows = 100_000 if case == "xlsx_100000" else 1_000
    inputs = {"rows": _rows(rows), "chart": _chart_data()}
    with tempfile.TemporaryDirectory() as tmp:
        call = node_call(node_type, raw, inputs, file_store(tmp))
        output, figures = time_calls(call, 2 if rows > 1_000 else REPEATS)
    return {
        "case": case,
        "node": node_type,
        "input": shape,
        **figures,
        "output_bytes": output["file"]["size"],
    }


def run(large: bool = False) -> list[dict[str, Any]]:
    """One row a case, each measured in its own spawned process."""
    cases = ["xlsx_1000", "csv_1000", "bar_chart", *(["xlsx_100000"] if large else [])]
    return run_in_children(_measure, cases)


if __name__ == "__main__":
    print(json.dumps(run(large="--large" in sys.argv[1:]), indent=2))
