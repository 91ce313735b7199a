"""Excel (Graph): appending rows. Graph appends to a table (`tables/{t}/rows`) but has no
append for a plain worksheet, so the rows go to the range right below the sheet's used range
(read first), as wide as the longest row.
"""

import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

from flowmaestro_dagster.nodes.connectors.declarative import (
    HookApi,
    ParameterError,
    PreparedRequest,
)

MAX_ROWS = 5000
"""Rows one node may append in one request (Graph's payload limit is a few MB)."""
_CELL = re.compile(r"^\$?([A-Z]{1,3})\$?(\d+)$")


def column_letters(number: int) -> str:
    """1 → A, 27 → AA (Excel's column names)."""
    letters = ""
    while number > 0:
        number, rest = divmod(number - 1, 26)
        letters = chr(ord("A") + rest) + letters
    return letters


def column_number(letters: str) -> int:
    """A → 1, AA → 27."""
    number = 0
    for letter in letters:
        number = number * 26 + ord(letter) - ord("A") + 1
    return number


def _bounds(address: str) -> tuple[int, int, bool] | None:
    """(first column, last row, single cell) of an address such as `'Sheet 1'!B2:F10`."""
    first, _, last = address.rsplit("!", 1)[-1].partition(":")
    start, end = _CELL.match(first.upper()), _CELL.match((last or first).upper())
    if not start or not end:
        return None
    return column_number(start.group(1)), int(end.group(2)), not last


def next_row_start(api: HookApi, sheet_path: str) -> tuple[int, int]:
    """(first column, first empty row) below the sheet's used range. Only the address is
    read (not the values of a large sheet); a single-cell range is looked at once more, as
    an empty sheet's used range is its empty A1."""
    used = api.get(f"{sheet_path}/usedRange(valuesOnly=true)", [("$select", "address")])
    bounds = _bounds(str(used.get("address") or "")) if isinstance(used, Mapping) else None
    if bounds is None:
        return 1, 1
    column, last_row, single = bounds
    if single:
        cell = f"{column_letters(column)}{last_row}"
        read = api.get(f"{sheet_path}/range(address='{cell}')", [("$select", "values")])
        values = read.get("values") if isinstance(read, Mapping) else None
        if not values or all(v in ("", None) for row in values for v in row):
            return column, last_row
    return column, last_row + 1


def append_rows(
    prepared: PreparedRequest, params: Mapping[str, Any], api: HookApi
) -> PreparedRequest:
    """appendRow: POST to a table's rows, or PATCH the range below the used range."""
    rows = params["values"]
    if not rows or len(rows) > MAX_ROWS:
        raise ParameterError("values", f"parameters.values must hold 1 to {MAX_ROWS} rows")
    workbook = prepared.path.rsplit("/worksheets/", 1)[0]
    if params.get("table"):
        prepared.method = "POST"
        prepared.path = f"{workbook}/tables/{quote(str(params['table']), safe='')}/rows"
        prepared.json = {"values": rows}
        return prepared
    first_column, first_row = next_row_start(api, prepared.path)
    width = max(len(row) for row in rows)
    if width == 0:
        raise ParameterError("values", "parameters.values holds empty rows")
    padded = [list(row) + [""] * (width - len(row)) for row in rows]
    top_left = f"{column_letters(first_column)}{first_row}"
    bottom_right = f"{column_letters(first_column + width - 1)}{first_row + len(rows) - 1}"
    prepared.path = f"{prepared.path}/range(address='{top_left}:{bottom_right}')"
    prepared.json = {"values": padded}
    return prepared
