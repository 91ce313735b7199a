"""spreadsheetGeneration: rows from the run's data written as an xlsx (openpyxl) or csv file.

The sheet goes to the file store (`store_output`) and the node outputs its reference, never
the bytes. openpyxl runs in write-only mode: rows stream to a temporary file as they are
appended, so a 100,000-row sheet never becomes a workbook of cell objects in memory; the csv
is streamed to the store in chunks by the standard library's writer.

Cells keep their types (numbers, booleans, ISO dates as date cells, nested values as JSON
text) and text never becomes a formula: an xlsx cell holding `=...` is written as a string,
a csv field starting with `= + - @` (or a tab / carriage return) gets OWASP's `'` prefix.

The small helpers at the top (reading a field by its spellings, literal detection, JSON text)
are shared with `nodes/charts.py`, the other generator of this family.
"""

import contextlib
import csv
import io
import json
import math
import re
import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import IO, Any

from flowmaestro_dagster.errors import NodeConfigurationError
from flowmaestro_dagster.lang.templates import find_references
from flowmaestro_dagster.nodes.base import (
    ConfigCheck,
    Executor,
    NodeContext,
    NodeResult,
    wrap_output,
)
from flowmaestro_dagster.nodes.filestore import safe_name, store_output
from flowmaestro_dagster.settings import SheetSettings
from flowmaestro_dagster.spec.models import NodeSpec
from flowmaestro_dagster.spec.problems import Problem, error, warning

FORMATS = ("xlsx", "csv")
XLSX_TYPE = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
CSV_TYPE = "text/csv"
DATA_FIELDS = ("dataSource", "data", "rows")
# The builder's defaults (its config panel shows these when a field was never set).
DEFAULT_SHEET = "Sheet1"
DEFAULT_HEADER_FILL = "#4F46E5"
DEFAULT_HEADER_FONT = "#FFFFFF"
ALTERNATE_FILL = "FFF2F2F2"
COLUMN_FORMATS = {
    "text": "@",
    "number": "#,##0.00",
    "integer": "#,##0",
    "currency": '"$"#,##0.00',
    "percentage": "0.00%",
    "percent": "0.00%",
    "date": "yyyy-mm-dd",
    "datetime": "yyyy-mm-dd hh:mm:ss",
}
_CHUNK = 256 * 1024
_MAX_EXACT_INT = 2**53  # Excel stores doubles: larger integers (ids) are kept as text
_SHEET_UNSAFE = re.compile(r"[\[\]:*?/\\]")
_COLOR = re.compile(r"#?([0-9A-Fa-f]{6}|[0-9A-Fa-f]{3})")
_ISO_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
_ISO_DATETIME = re.compile(
    r"\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(?::\d{2}(?:\.\d{1,6})?)?(?:Z|[+-]\d{2}:?\d{2})?"
)
_CSV_TRIGGERS = ("=", "+", "-", "@", "\t", "\r")
_XLSX_ILLEGAL = re.compile(r"[\000-\010]|[\013-\014]|[\016-\037]")
_XLSX_ERROR_CODES = frozenset(
    ("#NULL!", "#DIV/0!", "#VALUE!", "#REF!", "#NAME?", "#NUM!", "#N/A", "#GETTING_DATA")
)
_PREFERRED_LISTS = ("rows", "data", "items", "records", "results", "values")


# -- shared by the generator nodes ---------------------------------------------------------------


class FieldError(ValueError):
    """A config value that cannot work; the executor turns it into a node error naming the field."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


def pick(config: Mapping[str, Any], *keys: str) -> tuple[str, Any]:
    """The first of `keys` the config sets (not None, not ""), with the spelling it used."""
    for key in keys:
        value = config.get(key)
        if value is not None and value != "":
            return key, value
    return keys[0], None


def is_template(value: Any) -> bool:
    """Whether a value is only known at run time (it holds a `{{...}}` / `${...}` reference)."""
    if isinstance(value, str):
        return next(find_references(value), None) is not None
    if isinstance(value, Mapping):
        return any(is_template(v) for v in value.values())
    if isinstance(value, list | tuple):
        return any(is_template(v) for v in value)
    return False


def structured(value: Any, field: str) -> Any:
    """A value as data: JSON text (what the builder's textareas hold) is parsed."""
    if isinstance(value, str):
        text = value.strip()
        if is_template(text):  # rendered already: what is left resolved to nothing
            raise FieldError(field, f"{text[:80]!r} resolved to nothing")
        if text[:1] in ("[", "{"):
            try:
                return json.loads(text)
            except ValueError as exc:
                raise FieldError(field, f"not valid JSON ({exc})") from None
    return value


def as_bool(value: Any, field: str, default: bool) -> bool:
    """A checkbox value: a boolean, or its text as templates render it."""
    if value is None or value == "":
        return default
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float):
        return value != 0
    if isinstance(value, str) and value.strip().lower() in ("true", "yes", "on", "1"):
        return True
    if isinstance(value, str) and value.strip().lower() in ("false", "no", "off", "0"):
        return False
    raise FieldError(field, f"expected true or false, got {_short(value)}")


def file_stem(name: Any, default: str, extensions: Sequence[str]) -> str:
    """The builder's `filename` ("without extension"): one safe path segment, a known extension
    dropped (`report.xlsx` stays `report`)."""
    text = safe_name(str(name or "").strip(), default)
    lower = text.lower()
    for ext in extensions:
        if lower.endswith(f".{ext}") and len(text) > len(ext) + 1:
            return text[: -len(ext) - 1]
    return text


def _short(value: Any, limit: int = 60) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return repr(text[:limit] + "...") if len(text) > limit else repr(text)


# -- the sheet's rows ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Column:
    key: str | int  # an object key, or a position in list rows
    header: str
    width: float | None = None
    number_format: str | None = None


@dataclass(frozen=True)
class Table:
    """What goes in the sheet: columns (header row when `header`), and rows of raw values."""

    columns: list[Column]
    header: bool
    rows: Sequence[Any]  # objects (Mapping) or lists, as `columns` keys them
    objects: bool

    def values(self) -> Iterator[list[Any]]:
        if self.objects:
            keys = [str(c.key) for c in self.columns]
            for row in self.rows:
                yield [row.get(k) for k in keys]
            return
        positions = [c.key if isinstance(c.key, int) else -1 for c in self.columns]
        for row in self.rows:
            yield [row[p] if 0 <= p < len(row) else None for p in positions]


def sheet_rows(value: Any, field: str) -> Sequence[Any]:
    """The rows a data value holds: a list, one object (one row), or an object holding the list
    (`{"records": [...]}`), or columns (`{"name": [...], "age": [...]}`, equal lengths)."""
    value = structured(value, field)
    if isinstance(value, list | tuple):
        return list(value)
    if isinstance(value, Mapping):
        lists = {k: v for k, v in value.items() if isinstance(v, list)}
        if len(lists) > 1 and len(lists) == len(value):
            lengths = {len(v) for v in lists.values()}
            if len(lengths) == 1:  # columnar: one list per column
                keys = list(lists)
                return [
                    dict(zip(keys, cells, strict=True))
                    for cells in zip(*lists.values(), strict=True)
                ]
        if len(lists) == 1:
            return list(next(iter(lists.values())))
        for key in _PREFERRED_LISTS:
            if key in lists:
                return list(lists[key])
        if not lists:
            return [value]  # one record: one row
        raise FieldError(
            field,
            f"an object with several lists ({', '.join(list(lists)[:5])}): name the one to "
            "write, e.g. {{node.rows}}",
        )
    if value is None:
        raise FieldError(field, "no data (the reference resolved to nothing)")
    raise FieldError(
        field, f"expected a list of rows (objects or lists), got {type(value).__name__}"
    )


def parse_columns(value: Any, field: str = "columns") -> list[Column] | None:
    """`columns`: names (`["id", "name"]`, `"id, name"`) or objects
    (`{key, header, width, format}`, the upstream tool's column config)."""
    value = structured(value, field)
    if value is None or value in ("", []):
        return None
    if isinstance(value, str):
        value = [part.strip() for part in value.split(",") if part.strip()]
    if not isinstance(value, list):
        raise FieldError(field, "expected a list of column names or {key, header} objects")
    columns = []
    for index, item in enumerate(value):
        if isinstance(item, str | int | float) and not isinstance(item, bool):
            columns.append(Column(key=str(item), header=str(item)))
            continue
        if not isinstance(item, Mapping) or not isinstance(item.get("key", item.get("field")), str):
            raise FieldError(field, f"item {index}: expected a name or an object with a key")
        key = str(item.get("key", item.get("field")))
        width = item.get("width")
        fmt = item.get("format")
        if fmt is not None and str(fmt).lower() not in COLUMN_FORMATS:
            raise FieldError(
                field, f"item {index}: format {fmt!r} is not one of {', '.join(COLUMN_FORMATS)}"
            )
        columns.append(
            Column(
                key=key,
                header=str(item.get("header") or item.get("label") or key),
                width=float(width) if isinstance(width, int | float) and width > 0 else None,
                number_format=COLUMN_FORMATS[str(fmt).lower()] if fmt is not None else None,
            )
        )
    return columns


def build_table(rows: Sequence[Any], columns: list[Column] | None, field: str) -> Table:
    """Columns and header: `columns` when given; else the union of the objects' keys in the
    order first seen; list rows take their first row as the header when it is all text."""
    if not rows:
        return Table(columns or [], header=bool(columns), rows=[], objects=True)
    if all(isinstance(r, Mapping) for r in rows):
        if columns is None:
            seen: dict[str, None] = {}
            for row in rows:
                seen.update(dict.fromkeys(str(k) for k in row))
            columns = [Column(key=k, header=k) for k in seen]
        return Table(columns, header=True, rows=rows, objects=True)
    if all(isinstance(r, list | tuple) for r in rows):
        width = max(len(r) for r in rows)
        if columns is not None:
            positional = [
                Column(i, c.header, c.width, c.number_format) for i, c in enumerate(columns)
            ]
            return Table(positional, header=True, rows=rows, objects=False)
        first = rows[0]
        if first and all(isinstance(c, str) and c for c in first):
            names = [*first, *[f"column{i + 1}" for i in range(len(first), width)]]
            cols = [Column(i, str(n)) for i, n in enumerate(names)]
            return Table(cols, header=True, rows=rows[1:], objects=False)
        return Table([Column(i, "") for i in range(width)], header=False, rows=rows, objects=False)
    if all(not isinstance(r, Mapping | list | tuple) for r in rows):
        name = columns[0].header if columns else "value"
        return Table([Column(0, name)], header=True, rows=[[r] for r in rows], objects=False)
    kinds = sorted({type(r).__name__ for r in rows})
    raise FieldError(field, f"rows must be all objects or all lists, got {', '.join(kinds)}")


# -- cells --------------------------------------------------------------------------------------


def typed(value: Any, limit: int, where: str) -> Any:
    """A cell's value: None, bool, int, float, date, datetime or str (capped)."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        return value if abs(value) <= _MAX_EXACT_INT else str(value)
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, datetime):
        return value.astimezone(UTC).replace(tzinfo=None) if value.tzinfo else value
    if isinstance(value, date):
        return value
    if isinstance(value, str):
        parsed = _iso(value)
        if parsed is not None:
            return parsed
        text = value
    else:
        text = json.dumps(value, ensure_ascii=False, default=str, separators=(",", ":"))
    if len(text) > limit:
        raise FieldError(where, f"{len(text):,} characters: more than {limit:,} in a cell")
    return text


def _iso(text: str) -> date | datetime | None:
    """ISO 8601 dates and date-times (aware ones in UTC: Excel has no time zones)."""
    if len(text) > 40:
        return None
    try:
        if _ISO_DATE.fullmatch(text):
            return date.fromisoformat(text)
        if _ISO_DATETIME.fullmatch(text):
            moment = datetime.fromisoformat(text)
            return moment.astimezone(UTC).replace(tzinfo=None) if moment.tzinfo else moment
    except ValueError:
        return None
    return None


def csv_text(value: Any) -> str:
    """A csv field: text never starts like a formula (OWASP: a leading `'`)."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, int | float):
        return repr(value)
    text = str(value)
    return "'" + text if text.startswith(_CSV_TRIGGERS) else text


# -- the node -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class SheetOptions:
    format: str
    stem: str
    sheet_name: str
    header_bold: bool
    header_fill: str | None  # aRGB
    header_font: str | None  # aRGB
    alternate_rows: bool
    freeze_header: bool


def sheet_name(value: Any) -> str:
    """A worksheet name Excel accepts: 1-31 characters, none of `[]:*?/\\`, no leading or
    trailing apostrophe, not `History` (Excel reserves it)."""
    text = _SHEET_UNSAFE.sub("_", str(value or "")).strip().strip("'").strip()
    text = _XLSX_ILLEGAL.sub("", text)[:31].strip() or DEFAULT_SHEET
    return "History_" if text.lower() == "history" else text


def argb(value: Any, field: str) -> str | None:
    """`#RRGGBB` / `RRGGBB` / `#RGB` as openpyxl's aRGB; "" / None / transparent: no colour."""
    if value is None or (isinstance(value, str) and value.strip().lower() in ("", "none")):
        return None
    match = _COLOR.fullmatch(str(value).strip())
    if match is None:
        raise FieldError(field, f"{_short(value)} is not a hex colour like #4F46E5")
    digits = match.group(1).upper()
    if len(digits) == 3:
        digits = "".join(c * 2 for c in digits)
    return "FF" + digits


def sheet_format(value: Any, field: str = "format") -> str:
    text = str(value or "xlsx").strip().lower().lstrip(".")
    if text not in FORMATS:
        raise FieldError(field, f"{_short(value)} is not a spreadsheet format (xlsx or csv)")
    return text


def _options(ctx: NodeContext, config: Mapping[str, Any]) -> SheetOptions:
    def rendered(*keys: str) -> tuple[str, Any]:
        key, value = pick(config, *keys)
        return key, ctx.render(value)

    fmt_key, fmt = rendered("format", "outputFormat")
    _, filename = rendered("filename", "fileName")
    _, name = rendered("sheetName", "sheet")
    bold_key, bold = rendered("headerBold")
    fill_key, fill = pick(config, "headerBackgroundColor")
    font_key, font = pick(config, "headerFontColor")
    alt_key, alternate = rendered("alternateRows")
    freeze_key, freeze = rendered("freezeHeader")
    form = sheet_format(fmt, fmt_key)
    fill_value = ctx.render(fill) if "headerBackgroundColor" in config else DEFAULT_HEADER_FILL
    font_value = ctx.render(font) if "headerFontColor" in config else DEFAULT_HEADER_FONT
    return SheetOptions(
        format=form,
        stem=file_stem(filename, "spreadsheet", ("xlsx", "csv", "xls")),
        sheet_name=sheet_name(name),
        header_bold=as_bool(bold, bold_key, True),
        header_fill=argb(fill_value, fill_key),
        header_font=argb(font_value, font_key),
        alternate_rows=as_bool(alternate, alt_key, False),
        freeze_header=as_bool(freeze, freeze_key, True),
    )


def execute_spreadsheet_generation(ctx: NodeContext) -> NodeResult:
    """Write the data as one sheet; output its file reference and shape."""
    config = ctx.config.extras()
    limits: SheetSettings = ctx.settings.sheets
    try:
        options = _options(ctx, config)
        data_key, raw = pick(config, *DATA_FIELDS)
        if raw is None:
            raise FieldError("dataSource", "no data: set dataSource (e.g. {{node.rows}})")
        rows = sheet_rows(ctx.render(raw), data_key)
        columns_key, columns_raw = pick(config, "columns")
        table = build_table(rows, parse_columns(ctx.render(columns_raw), columns_key), data_key)
        if len(table.rows) > limits.max_rows:
            raise FieldError(
                data_key,
                f"{len(table.rows):,} rows: more than {limits.max_rows:,} "
                "(FLOWMAESTRO_SHEETS__MAX_ROWS)",
            )
        if len(table.columns) > limits.max_columns:
            raise FieldError(
                data_key,
                f"{len(table.columns):,} columns: more than {limits.max_columns:,} "
                "(FLOWMAESTRO_SHEETS__MAX_COLUMNS)",
            )
        filename = f"{options.stem}.{options.format}"
        if options.format == "xlsx":
            ref = store_output(
                ctx, filename, _xlsx_chunks(table, options, limits, data_key), XLSX_TYPE
            )
        else:
            ref = store_output(ctx, filename, _csv_chunks(table, limits, data_key), CSV_TYPE)
    except FieldError as exc:
        raise ctx.error(str(exc), NodeConfigurationError) from None
    output = {
        "file": ref.to_value(),
        "format": options.format,
        "sheetName": options.sheet_name if options.format == "xlsx" else None,
        "rows": len(table.rows),
        "columns": len(table.columns),
        "header": [c.header for c in table.columns] if table.header else [],
        # the upstream engine's result fields, for templates written against it
        "path": ref.path,
        "filename": ref.name,
        "size": ref.size,
        "rowCount": len(table.rows),
        "sheetCount": 1,
    }
    return NodeResult(output=wrap_output(output, ctx.config.output_variable))


def _cells(table: Table, limits: SheetSettings, field: str) -> Iterator[list[Any]]:
    for index, values in enumerate(table.values()):
        yield [
            typed(v, limits.max_cell_chars, f"{field} (row {index + 1}, {c.header or i + 1})")
            for i, (c, v) in enumerate(zip(table.columns, values, strict=True))
        ]


def _csv_chunks(table: Table, limits: SheetSettings, field: str) -> Iterator[bytes]:
    """RFC 4180 csv (`\\r\\n`), UTF-8, encoded and handed on every ~256 KB."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    if table.header:
        writer.writerow([csv_text(c.header) for c in table.columns])
    for cells in _cells(table, limits, field):
        writer.writerow([csv_text(v) for v in cells])
        if buffer.tell() >= _CHUNK:
            yield buffer.getvalue().encode("utf-8")
            buffer.seek(0)
            buffer.truncate()
    yield buffer.getvalue().encode("utf-8")


def _xlsx_chunks(
    table: Table, options: SheetOptions, limits: SheetSettings, field: str
) -> Iterator[bytes]:
    """The workbook written in write-only mode to a temporary file, then read back in chunks."""
    with tempfile.TemporaryFile() as spool:
        _write_xlsx(spool, table, options, limits, field)
        spool.seek(0)
        while chunk := spool.read(_CHUNK):
            yield chunk


def _write_xlsx(
    out: IO[bytes], table: Table, options: SheetOptions, limits: SheetSettings, field: str
) -> None:
    from openpyxl import Workbook
    from openpyxl.cell import WriteOnlyCell
    from openpyxl.styles import Font, PatternFill
    from openpyxl.utils import get_column_letter

    workbook = Workbook(write_only=True)
    sheet = workbook.create_sheet(options.sheet_name)
    for index, width in enumerate(_widths(table), start=1):
        sheet.column_dimensions[get_column_letter(index)].width = width
    if table.header and options.freeze_header:
        sheet.freeze_panes = "A2"
    stripe = PatternFill("solid", fgColor=ALTERNATE_FILL) if options.alternate_rows else None
    formats = [c.number_format for c in table.columns]
    styled_columns = any(formats)

    def text_cell(value: str) -> Any:
        cell = WriteOnlyCell(sheet, value=value)
        cell.data_type = "s"  # never a formula or an error code: text is text
        return cell

    def cell_of(value: Any, column: int, fill: PatternFill | None) -> Any:
        if isinstance(value, str):
            value = _XLSX_ILLEGAL.sub("", value)
            plain = not (value.startswith("=") or value in _XLSX_ERROR_CODES)
        else:
            plain = True
        if plain and fill is None and not (styled_columns and formats[column]):
            return value
        cell = text_cell(value) if not plain else WriteOnlyCell(sheet, value=value)
        if fill is not None:
            cell.fill = fill
        if formats[column] and not isinstance(value, str):
            cell.number_format = formats[column]
        return cell

    if table.header:
        font = Font(bold=options.header_bold, color=options.header_font)
        header_fill = (
            PatternFill("solid", fgColor=options.header_fill) if options.header_fill else None
        )
        header = []
        for column in table.columns:
            cell = text_cell(_XLSX_ILLEGAL.sub("", column.header)[: limits.max_cell_chars])
            cell.font = font
            if header_fill is not None:
                cell.fill = header_fill
            header.append(cell)
        sheet.append(header)
    try:
        for index, cells in enumerate(_cells(table, limits, field)):
            fill = stripe if stripe is not None and index % 2 == 1 else None
            sheet.append([cell_of(v, i, fill) for i, v in enumerate(cells)])
    except BaseException:
        # A cell over a cap mid-sheet: end the streamed XML in order (left to the garbage
        # collector, openpyxl's writer would fail noisily), then report the cell.
        with contextlib.suppress(Exception):
            sheet.close()
        raise
    workbook.save(out)


def _widths(table: Table, sample: int = 200) -> list[float]:
    """Column widths from the header and the first rows: readable, capped at 60."""
    widths = []
    head = list(table.rows[:sample])
    sample_table = Table(table.columns, table.header, head, table.objects)
    samples = list(sample_table.values())
    for index, column in enumerate(table.columns):
        if column.width is not None:
            widths.append(column.width)
            continue
        longest = len(column.header) if table.header else 0
        for values in samples:
            value = values[index]
            if isinstance(value, str | int | float):
                longest = max(longest, len(str(value)))
            elif value is not None:
                longest = max(longest, 20)
        widths.append(float(min(max(longest + 2, 8), 60)))
    return widths


# -- deploy-time checks --------------------------------------------------------------------------


def check_spreadsheet_generation(node: NodeSpec) -> Iterable[Problem]:
    """What a literal config gets wrong: a format other than xlsx/csv, no data, colours that
    are not colours, a checkbox that is not a boolean, data that is not rows."""
    config = node.original_config
    fmt_key, fmt = pick(config, "format", "outputFormat")
    if fmt is not None and not is_template(fmt):
        try:
            sheet_format(fmt, fmt_key)
        except FieldError as exc:
            yield error("invalid_config", exc.message, node_id=node.id, field=exc.field)
    data_key, data = pick(config, *DATA_FIELDS)
    if data is None:
        yield error(
            "missing_field",
            "spreadsheetGeneration needs dataSource (the rows to write, e.g. {{node.rows}})",
            node_id=node.id,
            field="dataSource",
        )
    elif not is_template(data):
        try:
            build_table(sheet_rows(data, data_key), None, data_key)
        except FieldError as exc:
            yield error("invalid_config", exc.message, node_id=node.id, field=exc.field)
    for key in ("headerBackgroundColor", "headerFontColor"):
        value = config.get(key)
        if value is not None and not is_template(value):
            try:
                argb(value, key)
            except FieldError as exc:
                yield error("invalid_config", exc.message, node_id=node.id, field=key)
    for key in ("headerBold", "alternateRows", "freezeHeader"):
        value = config.get(key)
        if value is not None and not is_template(value):
            try:
                as_bool(value, key, True)
            except FieldError as exc:
                yield error("invalid_config", exc.message, node_id=node.id, field=key)
    columns = config.get("columns")
    if columns is not None and not is_template(columns):
        try:
            parse_columns(columns)
        except FieldError as exc:
            yield error("invalid_config", exc.message, node_id=node.id, field="columns")
    name = config.get("sheetName")
    if isinstance(name, str) and name and not is_template(name) and sheet_name(name) != name:
        yield warning(
            "sheet_name_changed",
            f"Excel does not take {name!r} as a sheet name: it will be {sheet_name(name)!r}",
            node_id=node.id,
            field="sheetName",
        )


EXECUTORS: Mapping[str, Executor] = {"spreadsheetGeneration": execute_spreadsheet_generation}
CONFIG_CHECKS: Mapping[str, ConfigCheck] = {"spreadsheetGeneration": check_spreadsheet_generation}

__all__ = [
    "CONFIG_CHECKS",
    "EXECUTORS",
    "FieldError",
    "check_spreadsheet_generation",
    "execute_spreadsheet_generation",
]
