"""spreadsheetGeneration and chartGeneration with the real libraries on data made here: sheets
read back with openpyxl and the csv module, charts decoded with Pillow and parsed as SVG."""

import csv
import io
import json
import zipfile
from datetime import datetime
from pathlib import Path
from typing import Any

import openpyxl
import pytest
from defusedxml import ElementTree
from PIL import Image

from flowmaestro_dagster.compile.compiler import compile_workflow
from flowmaestro_dagster.compile.validation import validate
from flowmaestro_dagster.errors import NodeConfigurationError
from flowmaestro_dagster.lang.state import ExecutionState
from flowmaestro_dagster.nodes import NodeContext, NodeResult, get_executor
from flowmaestro_dagster.nodes.charts import CHART_TYPES, VEGA_THEMES, chart_data, render
from flowmaestro_dagster.nodes.filestore import FileStore
from flowmaestro_dagster.settings import ChartSettings, Settings, SheetSettings
from flowmaestro_dagster.spec.configs import normalise_config
from flowmaestro_dagster.spec.problems import Problem
from flowmaestro_dagster.tags import WORKFLOW_ID_TAG
from tests.builders import flow, node
from tests.conftest import load_corpus

MB = 1024 * 1024
SALES = {
    "labels": ["Jan", "Feb", "Mar", "Apr", "May"],
    "datasets": [
        {"label": "Sales", "data": [10, 20, 15, 30, 25]},
        {"label": "Costs", "data": [8, 12, 14, 20, 18]},
    ],
}


def run(
    tmp_path: Path,
    node_type: str,
    raw: dict[str, Any],
    inputs: dict[str, Any] | None = None,
    settings: Settings | None = None,
) -> NodeResult:
    """One node as a plain function, with a file store in tmp_path (workflow `wf-1`)."""
    config, problems = normalise_config(node_type, raw, node_id="report")
    assert problems == []
    ctx = NodeContext(
        node_id="report",
        node_type=node_type,
        label="report",
        config=config,
        state=ExecutionState.start(inputs or {}),
        services={
            "settings": settings or Settings(),
            "files": FileStore(str(tmp_path / "store"), max_bytes=50 * MB),
        },
        run_tags={WORKFLOW_ID_TAG: "wf-1"},
        execution_id="exec-1",
    )
    return get_executor(node_type)(ctx)


def stored(tmp_path: Path, ref: dict[str, Any]) -> Path:
    """Where the store keeps a file: inside workflow wf-1's area, nowhere else."""
    path = tmp_path / "store" / "workflows" / "wf-1" / ref["path"].lstrip("/")
    assert path.is_file()
    assert path.stat().st_size == ref["size"]
    return path


def sheet(tmp_path: Path, raw: dict[str, Any], inputs: dict[str, Any] | None = None) -> Any:
    output = run(tmp_path, "spreadsheetGeneration", {**raw, "outputVariable": "s"}, inputs).output
    return output["s"]


def problems_of(node_type: str, **config: Any) -> list[Problem]:
    return [p for p in validate(flow([node("n", node_type, **config)], [])) if p.node_id == "n"]


def fields(problems: list[Problem], severity: str = "error") -> set[str | None]:
    return {p.field for p in problems if p.severity == severity}


# -- spreadsheetGeneration: xlsx ------------------------------------------------------------------

ROWS = [
    {
        "id": 1,
        "name": "Ann",
        "score": 9.5,
        "joined": "2024-05-01",
        "seen": "2024-05-01T10:30:00Z",
        "vip": True,
    },
    {"id": 2, "name": "Bob", "score": 7.25, "joined": None, "vip": False, "tags": ["a", "b"]},
]


def test_xlsx_reads_back_with_header_types_name_bold_header_and_frozen_pane(
    tmp_path: Path,
) -> None:
    out = sheet(
        tmp_path,
        {
            "dataSource": "{{rows}}",
            "format": "xlsx",
            "sheetName": "Win-Loss Analysis",
            "filename": "report.xlsx",
            "headerBackgroundColor": "#4472C4",
            "headerFontColor": "FFF",
        },
        {"rows": ROWS},
    )
    assert out["file"]["type"] == "file"
    assert out["file"]["name"] == "report.xlsx"
    assert out["file"]["path"] == "/executions/exec-1/report/report.xlsx"
    assert out["file"]["mediaType"].endswith("spreadsheetml.sheet")
    assert (out["rows"], out["columns"], out["format"]) == (2, 7, "xlsx")
    assert out["sheetName"] == "Win-Loss Analysis"
    assert out["header"] == ["id", "name", "score", "joined", "seen", "vip", "tags"]
    assert (out["path"], out["rowCount"], out["sheetCount"]) == (out["file"]["path"], 2, 1)

    book = openpyxl.load_workbook(stored(tmp_path, out["file"]))
    assert book.sheetnames == ["Win-Loss Analysis"]
    ws = book["Win-Loss Analysis"]
    rows = [[c.value for c in row] for row in ws.iter_rows()]
    assert rows[0] == ["id", "name", "score", "joined", "seen", "vip", "tags"]
    assert rows[1] == [
        1,
        "Ann",
        9.5,
        datetime(2024, 5, 1),
        datetime(2024, 5, 1, 10, 30),
        True,
        None,
    ]
    assert rows[2] == [2, "Bob", 7.25, None, None, False, '["a","b"]']
    assert [ws.cell(2, c).data_type for c in range(1, 7)] == ["n", "s", "n", "d", "d", "b"]
    assert ws["D2"].number_format == "yyyy-mm-dd"
    header = ws["A1"]
    assert header.font.b is True
    assert header.fill.fgColor.rgb == "FF4472C4"
    assert header.font.color.rgb == "FFFFFFFF"
    assert ws.freeze_panes == "A2"


def test_xlsx_builder_defaults_and_alternate_rows(tmp_path: Path) -> None:
    out = sheet(
        tmp_path,
        {"data": "{{rows}}", "alternateRows": True},
        {"rows": [{"n": i} for i in range(4)]},
    )
    ws = openpyxl.load_workbook(stored(tmp_path, out["file"])).active
    assert ws.title == "Sheet1"
    assert out["file"]["name"] == "spreadsheet.xlsx"
    assert ws["A1"].font.b is True and ws["A1"].fill.fgColor.rgb == "FF4F46E5"
    assert ws.freeze_panes == "A2"
    fills = [ws.cell(r, 1).fill.fill_type for r in range(2, 6)]
    assert fills == [None, "solid", None, "solid"]


def test_xlsx_style_switches_off(tmp_path: Path) -> None:
    raw = {
        "data": [{"a": 1}],
        "headerBold": "false",
        "freezeHeader": False,
        "headerBackgroundColor": "",
    }
    ws = openpyxl.load_workbook(stored(tmp_path, sheet(tmp_path, raw)["file"])).active
    assert not ws["A1"].font.b
    assert ws["A1"].fill.fill_type is None
    assert ws.freeze_panes is None


def test_text_is_never_a_formula(tmp_path: Path) -> None:
    evil = ['=HYPERLINK("http://x","y")', "+1+1", "-2+3", "@SUM(A1)", "#N/A", "=1"]
    rows = [{"=cmd|' /C calc'!A0": v} for v in evil]
    out = sheet(tmp_path, {"data": "{{rows}}"}, {"rows": rows})
    path = stored(tmp_path, out["file"])
    with zipfile.ZipFile(path) as archive:
        xml = archive.read("xl/worksheets/sheet1.xml").decode()
    assert "<f>" not in xml and "<f " not in xml
    ws = openpyxl.load_workbook(path).active
    assert [ws.cell(r, 1).value for r in range(1, 8)] == ["=cmd|' /C calc'!A0", *evil]
    assert {ws.cell(r, 1).data_type for r in range(1, 8)} == {"s"}

    out = sheet(tmp_path, {"data": "{{rows}}", "format": "csv"}, {"rows": rows})
    text = stored(tmp_path, out["file"]).read_text()
    assert list(csv.reader(io.StringIO(text))) == [
        ["'=cmd|' /C calc'!A0"],
        *[["'" + v] if v[0] in "=+-@" else [v] for v in evil],
    ]


def test_a_thousand_row_sheet(tmp_path: Path) -> None:
    rows = [
        {"id": i, "name": f"row {i}", "amount": i * 1.5, "day": f"2024-01-{i % 28 + 1:02d}"}
        for i in range(1000)
    ]
    out = sheet(tmp_path, {"data": "{{rows}}", "alternateRows": True}, {"rows": rows})
    assert out["rows"] == 1000
    ws = openpyxl.load_workbook(stored(tmp_path, out["file"]), read_only=True).active
    values = list(ws.iter_rows(values_only=True))
    assert len(values) == 1001
    assert values[-1] == (999, "row 999", 1498.5, datetime(2024, 1, 20))


# -- spreadsheetGeneration: csv and data shapes ---------------------------------------------------


def test_csv_reads_back(tmp_path: Path) -> None:
    out = sheet(
        tmp_path, {"dataSource": "{{rows}}", "format": "CSV", "filename": "log"}, {"rows": ROWS}
    )
    assert out["file"]["name"] == "log.csv"
    assert out["file"]["mediaType"] == "text/csv"
    assert (out["format"], out["sheetName"], out["rows"]) == ("csv", None, 2)
    raw = stored(tmp_path, out["file"]).read_bytes()
    assert raw.endswith(b"\r\n")
    assert list(csv.reader(io.StringIO(raw.decode()))) == [
        ["id", "name", "score", "joined", "seen", "vip", "tags"],
        ["1", "Ann", "9.5", "2024-05-01", "2024-05-01T10:30:00", "true", ""],
        ["2", "Bob", "7.25", "", "", "false", '["a","b"]'],
    ]


@pytest.mark.parametrize(
    ("data", "columns", "expected"),
    [
        (
            [["name", "age"], ["Ann", 30], ["Bob", 25]],
            None,
            [["name", "age"], ["Ann", 30], ["Bob", 25]],
        ),
        ([[1, 2], [3, 4]], None, [[1, 2], [3, 4]]),
        ([[1, 2], [3, 4]], ["a", "b"], [["a", "b"], [1, 2], [3, 4]]),
        ({"records": [{"a": 1}, {"b": 2}]}, None, [["a", "b"], [1, None], [None, 2]]),
        ({"claim": "C-1", "amount": 120}, None, [["claim", "amount"], ["C-1", 120]]),
        (
            {"name": ["Ann", "Bob"], "age": [30, 25]},
            None,
            [["name", "age"], ["Ann", 30], ["Bob", 25]],
        ),
        ('[{"a": 1, "b": "x"}]', None, [["a", "b"], [1, "x"]]),
        ([{"a": 1, "b": 2, "c": 3}], "c, a", [["c", "a"], [3, 1]]),
        ([{"a": 1}], [{"key": "a", "header": "Amount"}], [["Amount"], [1]]),
        (["x", "y"], None, [["value"], ["x"], ["y"]]),
    ],
)
def test_data_shapes(tmp_path: Path, data: Any, columns: Any, expected: list[list[Any]]) -> None:
    raw: dict[str, Any] = {"data": "{{d}}", "format": "xlsx"}
    if columns is not None:
        raw["columns"] = columns
    out = sheet(tmp_path, raw, {"d": data})
    ws = openpyxl.load_workbook(stored(tmp_path, out["file"])).active
    assert [[c.value for c in row] for row in ws.iter_rows()] == expected
    assert out["columns"] == len(expected[0])


def test_column_formats(tmp_path: Path) -> None:
    columns = [{"key": "price", "header": "Price", "format": "currency", "width": 30}]
    out = sheet(tmp_path, {"data": [{"price": 9.99}], "columns": columns})
    ws = openpyxl.load_workbook(stored(tmp_path, out["file"])).active
    assert ws["A2"].number_format == '"$"#,##0.00'
    assert ws.column_dimensions["A"].width == 30


def test_sheet_name_follows_excel_rules(tmp_path: Path) -> None:
    out = sheet(
        tmp_path, {"data": [{"a": 1}], "sheetName": "Q1/Q2: [draft]* report for the whole year"}
    )
    assert out["sheetName"] == "Q1_Q2_ _draft__ report for the"
    assert openpyxl.load_workbook(stored(tmp_path, out["file"])).sheetnames == [out["sheetName"]]


@pytest.mark.parametrize(
    ("data", "field", "says"),
    [
        ("{{missing}}", "data", "'{{missing}}' resolved to nothing"),
        ("[not json", "data", "not valid JSON"),
        (42, "data", "a list of rows"),
        ([{"a": 1}, [1]], "data", "all objects or all lists"),
        ({"x": [1], "y": [2, 3], "z": 1}, "data", "several lists"),
    ],
)
def test_bad_data_is_a_node_error_naming_the_field(
    tmp_path: Path, data: Any, field: str, says: str
) -> None:
    with pytest.raises(NodeConfigurationError) as info:
        sheet(tmp_path, {"data": data})
    assert info.value.reason.startswith(f"{field}:")
    assert says in info.value.reason


def test_caps_refuse_rather_than_cut(tmp_path: Path) -> None:
    settings = Settings().model_copy(
        update={"sheets": SheetSettings(max_rows=3, max_columns=2, max_cell_chars=10)}
    )
    cases = [
        ([{"a": i} for i in range(4)], "4 rows: more than 3"),
        ([{"a": 1, "b": 2, "c": 3}], "3 columns: more than 2"),
        ([{"a": "x" * 11}], "dataSource (row 1, a): 11 characters"),
    ]
    for rows, says in cases:
        with pytest.raises(NodeConfigurationError, match=r"dataSource") as info:
            run(tmp_path, "spreadsheetGeneration", {"dataSource": "{{r}}"}, {"r": rows}, settings)
        assert says in info.value.reason
    assert not list((tmp_path / "store").rglob("*.xlsx"))


def test_format_from_a_template_is_checked_when_the_node_runs(tmp_path: Path) -> None:
    with pytest.raises(NodeConfigurationError, match=r"^.*format: 'xls' is not a spreadsheet"):
        sheet(tmp_path, {"data": [{"a": 1}], "format": "{{f}}"}, {"f": "xls"})


def test_spreadsheet_deploy_time_problems() -> None:
    assert fields(problems_of("spreadsheetGeneration", data="{{rows}}", format="xls")) == {"format"}
    assert fields(problems_of("spreadsheetGeneration", data="{{rows}}", format="{{fmt}}")) == set()
    assert fields(problems_of("spreadsheetGeneration", format="csv")) == {"dataSource"}
    assert fields(problems_of("spreadsheetGeneration", dataSource="[oops")) == {"dataSource"}
    assert fields(problems_of("spreadsheetGeneration", data="{{r}}", headerFontColor="white")) == {
        "headerFontColor"
    }
    assert fields(problems_of("spreadsheetGeneration", data="{{r}}", freezeHeader="maybe")) == {
        "freezeHeader"
    }
    renamed = problems_of("spreadsheetGeneration", data="{{r}}", sheetName="a/b")
    [warned] = [p for p in renamed if p.code == "sheet_name_changed"]
    assert (warned.severity, warned.field) == ("warning", "sheetName")
    assert "'a_b'" in warned.message and fields(renamed) == set()


# -- chartGeneration ------------------------------------------------------------------------------

KIND_DATA: dict[str, Any] = {
    "bar": SALES,
    "horizontal_bar": SALES,
    "line": SALES,
    "area": SALES,
    "pie": {"Email": 40, "Search": 25, "Social": 35},
    "donut": {"Email": 40, "Search": 25, "Social": 35},
    "scatter": [{"x": 1, "y": 2}, {"x": 2, "y": 4.5}, {"x": 3, "y": 3}],
    "histogram": [1, 2, 2, 3, 3, 3, 4, 5, 7, 9, 9, 10],
    "heatmap": [
        {"x": "Mon", "y": "AM", "value": 3},
        {"x": "Mon", "y": "PM", "value": 5},
        {"x": "Tue", "y": "AM", "value": 1},
        {"x": "Tue", "y": "PM", "value": 7},
    ],
    "gauge": 72,
    "radar": SALES,
}


def chart(tmp_path: Path, raw: dict[str, Any], inputs: dict[str, Any] | None = None) -> Any:
    return run(tmp_path, "chartGeneration", {**raw, "outputVariable": "c"}, inputs).output["c"]


def png_of(tmp_path: Path, out: dict[str, Any]) -> Image.Image:
    image = Image.open(stored(tmp_path, out["file"]))
    image.load()
    return image


def test_every_chart_type_is_offered() -> None:
    assert set(CHART_TYPES.values()) == set(KIND_DATA)


@pytest.mark.parametrize("kind", sorted(KIND_DATA))
def test_each_chart_type_renders_png_svg_and_keeps_its_spec(tmp_path: Path, kind: str) -> None:
    raw = {
        "chartType": kind,
        "data": "{{d}}",
        "title": "{{title}}",
        "xAxisLabel": "Month",
        "yAxisLabel": "Amount",
        "width": 640,
        "height": 400,
        "showValues": True,
        "filename": f"{kind}-chart",
    }
    out = chart(tmp_path, raw, {"d": KIND_DATA[kind], "title": "Quarterly"})
    assert (out["chartType"], out["width"], out["height"]) == (kind, 640, 400)
    image = png_of(tmp_path, out)
    assert image.format == "PNG" and image.size == (640, 400)
    assert out["file"]["mediaType"] == "image/png"
    assert out["file"]["name"] == f"{kind}-chart.png"
    assert out["path"] == out["file"]["path"] and out["size"] == out["file"]["size"]
    svg = ElementTree.fromstring(stored(tmp_path, out["svgFile"]).read_bytes())
    assert svg.tag.endswith("svg")
    assert (svg.get("width"), svg.get("height")) == ("640", "400")
    assert out["svgFile"]["mediaType"] == "image/svg+xml"
    spec = out["spec"]
    assert spec["$schema"].startswith("https://vega.github.io/schema/vega-lite/")
    assert (spec["width"], spec["height"], spec["title"]["text"]) == (640, 400, "Quarterly")
    json.dumps(spec)  # plain JSON: a UI re-renders it as it is


def test_the_image_is_exactly_the_size_asked(tmp_path: Path) -> None:
    out = chart(
        tmp_path, {"chartType": "bar", "data": {"a": 1, "b": 2}, "width": 1234, "height": 567}
    )
    assert png_of(tmp_path, out).size == (1234, 567)
    out = chart(tmp_path, {"chartType": "pie", "data": {"a": 1, "b": 2}})
    assert png_of(tmp_path, out).size == (800, 600)  # the builder's default


def test_the_spec_renders_again_to_the_same_image(tmp_path: Path) -> None:
    out = chart(tmp_path, {"chartType": "line", "data": SALES})
    png, _ = render(out["spec"])
    assert png == stored(tmp_path, out["file"]).read_bytes()


def test_dark_and_light_themes(tmp_path: Path) -> None:
    dark = png_of(tmp_path, chart(tmp_path, {"chartType": "bar", "data": [1, 2], "theme": "dark"}))
    light = png_of(
        tmp_path, chart(tmp_path, {"chartType": "bar", "data": [1, 2], "theme": "default"})
    )
    assert dark.convert("RGB").getpixel((2, 2)) == (0x33, 0x33, 0x33)
    assert light.convert("RGB").getpixel((2, 2)) == (255, 255, 255)


def test_the_builders_own_fixture_fields(tmp_path: Path) -> None:
    """createchartdefinition: datasets in dataSource, labels in dataLabels, legend, grid."""
    raw = {
        "chartType": "bar",
        "dataSource": "${input.data.datasets}",
        "dataLabels": "${input.data.labels}",
        "title": "${input.data.title}",
        "theme": "default",
        "legend": "bottom",
        "showGrid": False,
    }
    inputs = {"data": {"datasets": SALES["datasets"], "labels": SALES["labels"], "title": "T"}}
    out = chart(tmp_path, raw, inputs)
    values = out["spec"]["data"]["values"]
    assert [v["category"] for v in values[:5]] == SALES["labels"]
    assert {v["series"] for v in values} == {"Sales", "Costs"}
    assert out["spec"]["config"]["legend"] == {"orient": "bottom"}
    assert out["spec"]["config"]["axis"]["grid"] is False


@pytest.mark.parametrize(
    ("data", "labels", "expected"),
    [
        (SALES, None, ("Jan", "Sales", 10)),
        (SALES["datasets"], "Jan, Feb, Mar, Apr, May", ("Jan", "Sales", 10)),
        (SALES["datasets"], '["Jan", "Feb"]', ("Jan", "Sales", 10)),
        (
            [{"label": "SMB", "value": 0.4}, {"label": "Ent", "value": 0.6}],
            None,
            ("SMB", "value", 0.4),
        ),
        ([{"name": "SMB", "count": 3}], None, ("SMB", "value", 3)),
        ([{"segment": "SMB", "wins": 3, "losses": 5}], None, ("SMB", "wins", 3)),
        ([{"month": "Jan", "series": "A", "y": 4}], None, ("Jan", "A", 4)),
        ({"Price": 12, "Timing": "8"}, None, ("Price", "value", 12)),
        ({"SMB": {"won": 3, "lost": 1}}, None, ("SMB", "won", 3)),
        ({"trends": [{"name": "AI", "score": 9}]}, None, ("AI", "value", 9)),
        ([3, 4, 5], ["a", "b", "c"], ("a", "value", 3)),
        ([["x", 1], ["y", 2]], None, ("x", "value", 1)),
        ('{"a": 1, "b": 2}', None, ("a", "value", 1)),
        (72, None, ("value", "value", 72)),
        ("72.5", None, ("value", "value", 72.5)),
        ({"value": 7, "max": 10}, None, ("value", "value", 7)),
    ],
)
def test_chart_data_shapes(data: Any, labels: Any, expected: tuple[str, str, float]) -> None:
    from flowmaestro_dagster.nodes.charts import parse_labels

    table = chart_data(data, parse_labels(labels, "dataLabels"), "data")
    first = table.rows[0]
    assert (first["category"], first["series"], first["value"]) == expected


def test_gauge_bounds_come_from_config_or_data(tmp_path: Path) -> None:
    out = chart(tmp_path, {"chartType": "gauge", "data": {"value": 7, "max": 10}})
    assert out["spec"]["data"]["values"] == [{"category": "value", "value": 7, "min": 0, "max": 10}]
    out = chart(tmp_path, {"chartType": "gauge", "data": "{{q}}", "max": 5}, {"q": 3})
    assert out["spec"]["data"]["values"][0]["max"] == 5
    out = chart(tmp_path, {"chartType": "gauge", "data": 0.8})
    assert out["spec"]["data"]["values"][0]["max"] == 1


@pytest.mark.parametrize(
    ("raw", "field", "says"),
    [
        ({"data": "{{missing}}"}, "data", "resolved to nothing"),
        ({"data": ["a", "b"]}, "data", "points must be all numbers, objects or pairs"),
        ({"data": {"a": "x", "b": "y"}}, "data", "neither"),
        ({"data": []}, "data", "no data points"),
        ({"dataSource": [{"label": "a"}]}, "dataSource", "no number to plot"),
        ({"data": [{"label": "a", "value": True}]}, "data[0]", "True is not a number"),
        (
            {"data": {"datasets": [{"label": "s", "data": ["x"]}]}},
            "data.datasets[0].data[0]",
            "not a number",
        ),
        ({"data": {"a": -1, "b": 2}, "chartType": "pie"}, "data", "cannot be negative"),
        ({"data": [1, 2], "chartType": "{{t}}"}, "chartType", "not a chart type"),
        ({"data": [1, 2], "width": "{{w}}"}, "width", "must be 50 to 4000"),
        ({"data": [1, 2], "theme": "{{t}}"}, "theme", "not a theme"),
        ({"data": {"a": 1, "b": 2}, "chartType": "radar"}, "data", "at least 3 categories"),
    ],
)
def test_bad_chart_config_is_a_node_error_naming_the_field(
    tmp_path: Path, raw: dict[str, Any], field: str, says: str
) -> None:
    inputs = {"t": "sunburst", "w": 9000}
    with pytest.raises(NodeConfigurationError) as info:
        chart(tmp_path, raw, inputs)
    assert info.value.reason.startswith(f"{field}:")
    assert says in info.value.reason


def test_points_are_capped(tmp_path: Path) -> None:
    settings = Settings().model_copy(update={"charts": ChartSettings(max_points=5)})
    with pytest.raises(NodeConfigurationError, match="6 points: more than 5"):
        run(tmp_path, "chartGeneration", {"data": "{{d}}"}, {"d": list(range(6))}, settings)


def test_the_theme_list_is_vl_converts() -> None:
    import vl_convert

    assert set(VEGA_THEMES) == set(vl_convert.get_themes())


def test_the_renderer_fetches_nothing() -> None:
    spec = {"data": {"url": "http://127.0.0.1:9/data.json"}, "mark": "bar"}
    with pytest.raises(ValueError, match="not allowed"):
        render(spec)


def test_chart_deploy_time_problems() -> None:
    assert fields(problems_of("chartGeneration", chartType="sunburst", data="{{d}}")) == {
        "chartType"
    }
    assert (
        fields(problems_of("chartGeneration", chartType="{{params.chartType}}", data="{{d}}"))
        == set()
    )
    assert fields(problems_of("chartGeneration", chartType="Doughnut", data="{{d}}")) == set()
    assert fields(problems_of("chartGeneration", data="{{d}}", width=10, height=9000)) == {
        "width",
        "height",
    }
    assert fields(problems_of("chartGeneration", data="{{d}}", theme="neon")) == {"theme"}
    assert fields(problems_of("chartGeneration", data="{{d}}", legend="middle")) == {"legend"}
    assert fields(problems_of("chartGeneration", chartType="bar")) == {"dataSource"}
    assert fields(problems_of("chartGeneration", data='{"a": "x"}')) == {"data"}


# -- real workflows ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "relative",
    [
        "sales/win-loss-analysis-dashboard.json",
        "fixtures/node-patterns--document-generation/createchartdefinition.json",
        "fixtures/node-patterns--document-generation/createspreadsheetdefinition.json",
        "voice-audio/call-center-analytics-2.json",
    ],
)
def test_corpus_workflows_with_sheets_and_charts_compile_without_problems(relative: str) -> None:
    definition = load_corpus(relative)
    ours = {"chartGeneration", "spreadsheetGeneration"}
    compiled = compile_workflow(definition)
    nodes = [n for n in compiled.spec.nodes.values() if n.type in ours]
    assert nodes
    node_ids = {n.id for n in nodes}
    assert [
        p for p in validate(definition) if p.node_id in node_ids and p.severity == "error"
    ] == []


def test_real_workflow_data_renders(tmp_path: Path) -> None:
    """win-loss-analysis-dashboard: an LLM's segment map to a bar chart, reasons to a pie, and
    the closed deals to a sheet, as that workflow wires them."""
    spec = compile_workflow(load_corpus("sales/win-loss-analysis-dashboard.json")).spec
    analysis = {
        "winRateBySegment": {"SMB": 0.42, "Mid-market": 0.35, "Enterprise": 0.28},
        "lossReasons": [{"reason": "Price", "count": 12}, {"reason": "Timing", "count": 5}],
    }
    deals = [{"id": "D-1", "amount": 12000, "closedAt": "2024-03-01", "won": True}]
    upstream = {"analysis": analysis, "closedDeals": deals}
    for node_id in (
        "chartGeneration-winrate",
        "chartGeneration-reasons",
        "spreadsheetGeneration-1",
    ):
        raw = spec.nodes[node_id].original_config
        result = run(tmp_path, spec.nodes[node_id].type, raw, upstream)
        [value] = result.output.values()
        assert stored(tmp_path, value["file"]).stat().st_size > 0


def test_a_compiled_run_passes_references_not_bytes(tmp_path: Path) -> None:
    """input → spreadsheetGeneration → chartGeneration → output in a Dagster run: the run's
    outputs hold file references; the files are in the store."""
    from flowmaestro_dagster.testing import run_workflow
    from tests.builders import chain

    definition = chain(
        node("in", "input", inputName="deals"),
        node("sheet", "spreadsheetGeneration", dataSource="{{deals}}", outputVariable="sheet"),
        node("plot", "chartGeneration", chartType="bar", data="{{deals}}", outputVariable="chart"),
        node("out", "output", outputName="files", value="{{sheet.file.path}} {{chart.file.path}}"),
        react=True,
    )
    deals = [{"name": f"deal {i}", "amount": i * 100} for i in range(50)]
    settings = Settings().model_copy(update={"dagster_home": tmp_path})
    result = run_workflow(definition, {"deals": deals}, settings=settings)
    assert result.status == "succeeded", result.nodes
    sheet_path, chart_path = result.outputs["files"].split()
    assert sheet_path.endswith("/sheet/spreadsheet.xlsx") and chart_path.endswith("/plot/chart.png")
    found = {p.name for p in tmp_path.rglob("*") if p.is_file()}
    assert {"spreadsheet.xlsx", "chart.png", "chart.svg"} <= found
    sheet_output = result.nodes["sheet"].output["sheet"]
    assert set(sheet_output["file"]) == {
        "type",
        "name",
        "filename",
        "mediaType",
        "size",
        "sha256",
        "path",
        "uri",
    }
    states = json.dumps({n: r.output for n, r in result.nodes.items()})
    assert len(states) < 50_000  # references and the chart spec, never file bytes
