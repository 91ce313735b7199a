"""chartGeneration: the builder's chart types as Vega-Lite specs, rendered to PNG and SVG.

The node turns whatever shape its data comes in (Chart.js `{labels, datasets}`, a list of
points, an object map, a single number for a gauge) into one long table (category, series,
value) and builds a Vega-Lite spec over it. vl-convert renders the spec with Vega's own
renderer in an embedded JavaScript engine (no browser, no network: external data URLs are
refused), and the spec is kept in the output, so a UI re-renders exactly the same chart.
`autosize: fit` makes the image exactly `width` x `height` pixels.

Both images go to the file store (`store_output`); the output holds their references.
"""

import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from flowmaestro_dagster.errors import NodeConfigurationError, NodeExecutionError
from flowmaestro_dagster.nodes.base import (
    ConfigCheck,
    Executor,
    NodeContext,
    NodeResult,
    wrap_output,
)
from flowmaestro_dagster.nodes.filestore import store_output
from flowmaestro_dagster.nodes.sheets import (
    FieldError,
    as_bool,
    file_stem,
    is_template,
    pick,
    structured,
)
from flowmaestro_dagster.spec.models import NodeSpec
from flowmaestro_dagster.spec.problems import Problem, error

# The builder's chart types (its config panel), `gauge` (seed templates) and `radar`, with the
# spellings workflows use for them.
CHART_TYPES: Mapping[str, str] = {
    "bar": "bar",
    "column": "bar",
    "horizontal_bar": "horizontal_bar",
    "horizontalbar": "horizontal_bar",
    "hbar": "horizontal_bar",
    "line": "line",
    "area": "area",
    "pie": "pie",
    "donut": "donut",
    "doughnut": "donut",
    "scatter": "scatter",
    "histogram": "histogram",
    "heatmap": "heatmap",
    "gauge": "gauge",
    "radar": "radar",
}
DATA_FIELDS = ("dataSource", "data")
LABEL_FIELDS = ("dataLabels", "labels", "categories")
MIN_SIZE, MAX_SIZE = 50, 4000  # pixels, each side
DEFAULT_WIDTH, DEFAULT_HEIGHT = 800, 600  # the builder's
LEGEND_ORIENTS = ("top", "bottom", "left", "right")
LIGHT_THEMES = ("", "light", "default")
VEGA_THEMES = (
    "carbong10", "carbong100", "carbong90", "carbonwhite", "dark", "excel", "fivethirtyeight",
    "ggplot2", "googlecharts", "latimes", "powerbi", "quartz", "urbaninstitute", "vox",
)  # fmt: skip
VL_VERSION = "5.21"  # the Vega-Lite the spec is written for (what UIs' vega-embed ship)
SCHEMA = "https://vega.github.io/schema/vega-lite/v5.json"
VALUE_FORMAT = ",.2~f"
PNG_TYPE, SVG_TYPE = "image/png", "image/svg+xml"

CATEGORY_KEYS = (
    "label",
    "name",
    "category",
    "x",
    "key",
    "segment",
    "month",
    "date",
    "period",
    "stage",
    "type",
    "title",
)
SERIES_KEYS = ("series", "dataset", "group")
VALUE_KEYS = (
    "value",
    "y",
    "count",
    "amount",
    "total",
    "score",
    "percentage",
    "percent",
    "rate",
)
_LIST_KEYS = ("data", "values", "items", "points", "rows", "series")
_COLOR_KEYS = ("color", "backgroundColor", "borderColor")
_GAUGE_KEYS = {"value", "min", "max", "label", "title", "name", "unit", "target"}
_NON_CARTESIAN = ("pie", "donut", "gauge", "radar")


def chart_type(value: Any, field: str = "chartType") -> str:
    """The canonical chart type of a spelling (`Doughnut`, `horizontal-bar`, ...)."""
    key = str(value or "bar").strip().lower().replace("-", "_").replace(" ", "_")
    if key not in CHART_TYPES:
        key = key.replace("_", "")
    if key not in CHART_TYPES:
        known = ", ".join(sorted(set(CHART_TYPES.values())))
        raise FieldError(field, f"{str(value)[:60]!r} is not a chart type ({known})")
    return CHART_TYPES[key]


def chart_size(value: Any, field: str, default: int) -> int:
    if value is None or value == "":
        return default
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise FieldError(field, f"expected a number of pixels, got {str(value)[:60]!r}") from None
    if not math.isfinite(number) or not MIN_SIZE <= number <= MAX_SIZE:
        raise FieldError(field, f"{value} px: must be {MIN_SIZE} to {MAX_SIZE}")
    return round(number)


# -- the data: any accepted shape as one long table ----------------------------------------------


@dataclass
class ChartData:
    """Rows of `{index, category, series, value}` (`x` too when categories are numbers)."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    series: list[str] = field(default_factory=list)
    colors: dict[str, str] = field(default_factory=dict)
    labelled: bool = True  # categories were given (labels, keys), not positions
    bounds: dict[str, float] = field(default_factory=dict)  # a gauge's min / max from its data

    def add(self, category: Any, series: str, value: float | None) -> None:
        if series not in self.series:
            self.series.append(series)
        row: dict[str, Any] = {"index": len(self.rows), "series": series, "value": value}
        if isinstance(category, int | float) and not isinstance(category, bool):
            row["x"] = category
        row["category"] = _text(category)
        self.rows.append(row)

    @property
    def numeric_x(self) -> bool:
        return bool(self.rows) and all("x" in r for r in self.rows)


def _text(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return value if isinstance(value, str) else json.dumps(value, default=str)


def _number(value: Any, where: str) -> float | None:
    """A data value: a number, numeric text, or None (a gap)."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise FieldError(where, f"{value!r} is not a number")
    if isinstance(value, int | float):
        if not math.isfinite(value):
            return None
        return value
    if isinstance(value, str):
        text = value.strip().removesuffix("%").strip()
        try:
            number = float(text)
        except ValueError:
            pass
        else:
            if math.isfinite(number):
                return int(number) if number.is_integer() and "." not in text else number
    raise FieldError(where, f"{str(value)[:60]!r} is not a number")


def _numeric(value: Any) -> bool:
    try:
        _number(value, "")
    except FieldError:
        return False
    return True


def parse_labels(value: Any, field: str) -> list[str] | None:
    """Category labels: a list, JSON text of one, or comma-separated text (`Jan, Feb`)."""
    value = structured(value, field)
    if value is None or value == "" or isinstance(value, bool):
        return None
    if isinstance(value, str):
        return [part.strip() for part in value.split(",")]
    if isinstance(value, list | tuple):
        return [_text(v) for v in value]
    raise FieldError(field, f"expected a list of labels, got {type(value).__name__}")


def chart_data(value: Any, labels: list[str] | None, field: str) -> ChartData:
    """One table from any accepted data shape (docs/nodes.md#chartgeneration)."""
    value = structured(value, field)
    data = ChartData()
    if isinstance(value, str) and value.strip():
        parts = [p for p in value.split(",") if p.strip()]
        value = [_number(p, field) for p in parts] if len(parts) > 1 else _number(value, field)
    if value is None or value == "":
        raise FieldError(field, "no data (the reference resolved to nothing)")
    if isinstance(value, int | float) and not isinstance(value, bool):
        data.add(labels[0] if labels else "value", "value", _number(value, field))
        return data
    if isinstance(value, Mapping):
        _from_object(data, value, labels, field)
    elif isinstance(value, list | tuple):
        _from_list(data, list(value), labels, field)
    else:
        raise FieldError(field, f"expected chart data, got {type(value).__name__}")
    if not data.rows:
        raise FieldError(field, "no data points")
    return data


def _from_object(data: ChartData, value: Mapping[str, Any], labels: Any, field: str) -> None:
    if "datasets" in value:
        given = labels or parse_labels(value.get("labels"), f"{field}.labels")
        _datasets(data, value["datasets"], given, f"{field}.datasets")
    elif "value" in value and set(value) <= _GAUGE_KEYS and _numeric(value["value"]):
        for bound in ("min", "max"):
            if value.get(bound) is not None:
                number = _number(value[bound], f"{field}.{bound}")
                if number is not None:
                    data.bounds[bound] = number
        label = value.get("label") or value.get("name") or value.get("title") or "value"
        data.add(label, "value", _number(value["value"], f"{field}.value"))
    elif value and all(_numeric(v) for v in value.values()):  # {segment: value}
        for key, item in value.items():
            data.add(key, "value", _number(item, f"{field}.{key}"))
    elif value and all(isinstance(v, Mapping) for v in value.values()):  # {segment: {a: 1}}
        for key, inner in value.items():
            for name, item in inner.items():
                data.add(key, str(name), _number(item, f"{field}.{key}.{name}"))
    else:
        lists = [k for k, v in value.items() if isinstance(v, list)]
        chosen = lists[0] if len(lists) == 1 else next((k for k in _LIST_KEYS if k in lists), None)
        if chosen is None:
            raise FieldError(
                field,
                "an object that is neither {labels, datasets}, {segment: value} nor one "
                f"holding a list of points (keys: {', '.join(list(value)[:6])})",
            )
        _from_list(data, value[chosen], labels, f"{field}.{chosen}")


def _from_list(data: ChartData, items: list[Any], labels: list[str] | None, field: str) -> None:
    if not items:
        raise FieldError(field, "no data points (an empty list)")
    if all(_numeric(v) for v in items):
        data.labelled = labels is not None
        for index, item in enumerate(items):
            data.add(_label(labels, index), "value", _number(item, f"{field}[{index}]"))
    elif all(isinstance(v, Mapping) for v in items):
        if all(isinstance(v.get("data"), list) for v in items):
            _datasets(data, items, labels, field)
        else:
            _points(data, items, field)
    elif all(isinstance(v, list | tuple) and len(v) == 2 for v in items):  # [label, value]
        for index, (label, item) in enumerate(items):
            data.add(label, "value", _number(item, f"{field}[{index}][1]"))
    else:
        kinds = ", ".join(sorted({type(v).__name__ for v in items}))
        raise FieldError(field, f"points must be all numbers, objects or pairs, got {kinds}")


def _label(labels: list[str] | None, index: int) -> Any:
    return labels[index] if labels is not None and index < len(labels) else index + 1


def _datasets(data: ChartData, datasets: Any, labels: list[str] | None, field: str) -> None:
    """Chart.js datasets: `[{label, data: [...], color?}]`, data as numbers (one per label),
    `{x, y}` points or `[x, y]` pairs."""
    if not isinstance(datasets, list) or not datasets:
        raise FieldError(field, "expected a non-empty list of {label, data} datasets")
    data.labelled = labels is not None
    for number, dataset in enumerate(datasets):
        where = f"{field}[{number}]"
        if not isinstance(dataset, Mapping) or not isinstance(dataset.get("data"), list):
            raise FieldError(where, "expected {label, data: [...]}")
        name = str(dataset.get("label") or dataset.get("name") or f"Series {number + 1}")
        if name in data.series:
            name = f"{name} ({number + 1})"
        color = next((dataset[k] for k in _COLOR_KEYS if isinstance(dataset.get(k), str)), None)
        if color:
            data.colors[name] = color[:100]
        for index, item in enumerate(dataset["data"]):
            if isinstance(item, Mapping) and "y" in item:
                data.labelled = True
                x = item.get("x", _label(labels, index))
                data.add(x, name, _number(item["y"], f"{where}.data[{index}].y"))
            elif isinstance(item, list | tuple) and len(item) == 2:
                data.labelled = True
                data.add(item[0], name, _number(item[1], f"{where}.data[{index}][1]"))
            else:
                data.add(_label(labels, index), name, _number(item, f"{where}.data[{index}]"))


def _points(data: ChartData, items: list[Mapping[str, Any]], field: str) -> None:
    """Objects: `{label|name|x|..., value|y|count|...}`, optionally `series`; `{x, y, value}`
    (a heatmap's cells); or wide rows (`{segment, wins, losses}`: each number column a series)."""
    keys: dict[str, None] = {}
    for item in items:
        keys.update(dict.fromkeys(str(k) for k in item))
    value_key = next((k for k in VALUE_KEYS if k in keys), None)
    category_key: str | None
    series_key: str | None
    if value_key == "value" and "x" in keys and "y" in keys:
        category_key, series_key = "x", "y"  # heatmap cells
    else:
        series_key = next((k for k in SERIES_KEYS if k in keys), None)
        category_key = next((k for k in CATEGORY_KEYS if k in keys and k != value_key), None)
    if category_key is None:
        category_key = next(
            (k for k in keys if k not in (value_key, series_key) and not _numeric_column(items, k)),
            None,
        )
    if value_key is not None:
        for index, item in enumerate(items):
            category = item.get(category_key) if category_key else index + 1
            series = str(item.get(series_key, "value")) if series_key else "value"
            data.add(category, series, _number(item.get(value_key), f"{field}[{index}]"))
        return
    numeric = [k for k in keys if k not in (category_key, series_key) and _numeric_column(items, k)]
    if not numeric:
        raise FieldError(field, "the objects have no number to plot (e.g. a `value` key)")
    for index, item in enumerate(items):
        category = item.get(category_key) if category_key else index + 1
        for key in numeric:
            data.add(category, key, _number(item.get(key), f"{field}[{index}].{key}"))


def _numeric_column(items: list[Mapping[str, Any]], key: str) -> bool:
    values = [item.get(key) for item in items]
    return any(v is not None for v in values) and all(
        v is None or (_numeric(v) and not isinstance(v, str)) for v in values
    )


# -- the spec ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ChartOptions:
    kind: str
    width: int
    height: int
    title: str
    subtitle: str
    x_label: str
    y_label: str
    theme: dict[str, Any]
    legend: str | None  # orient, or None: hidden
    show_grid: bool
    show_values: bool
    gauge_min: float | None = None
    gauge_max: float | None = None


def theme_name(value: Any, field: str = "theme") -> str:
    """`light` (also `default`, empty), `dark`, or another vega-themes name; checked against a
    list kept here, so validation never starts vl-convert's JavaScript engine."""
    name = str(value or "").strip().lower()
    if name in LIGHT_THEMES:
        return "light"
    if name not in VEGA_THEMES:
        known = ", ".join(["light", *VEGA_THEMES])
        raise FieldError(field, f"{str(value)[:60]!r} is not a theme ({known})")
    return name


def theme_config(value: Any, field: str = "theme") -> dict[str, Any]:
    """The Vega-Lite config of a theme (vega-themes', as vl-convert ships them)."""
    name = theme_name(value, field)
    if name == "light":
        return {"background": "white"}
    import vl_convert

    themes = {str(key): config for key, config in vl_convert.get_themes().items()}
    return dict(themes[name])


def legend_orient(value: Any, field: str = "legend") -> str | None:
    if value is None or value is True or value == "":
        return "top"
    if value is False:
        return None
    text = str(value).strip().lower()
    if text in LEGEND_ORIENTS:
        return text
    if text in ("true", "show", "yes", "on"):
        return "top"
    if text in ("false", "none", "hidden", "hide", "no", "off"):
        return None
    raise FieldError(field, f"{str(value)[:60]!r}: expected top, bottom, left, right or false")


def build_spec(data: ChartData, opts: ChartOptions) -> dict[str, Any]:
    """The Vega-Lite spec of a chart: data inline, exactly `width` x `height` pixels."""
    config: dict[str, Any] = {
        key: value for key, value in opts.theme.items() if key != "background"
    }
    config["axis"] = {**config.get("axis", {}), "grid": opts.show_grid}
    config["legend"] = {"orient": opts.legend} if opts.legend else {"disable": True}
    if opts.kind in _NON_CARTESIAN:
        config["view"] = {**config.get("view", {}), "stroke": None}
    spec: dict[str, Any] = {
        "$schema": SCHEMA,
        "width": opts.width,
        "height": opts.height,
        "autosize": {"type": "fit", "contains": "padding"},
        "background": opts.theme.get("background", "white"),
        "padding": 10,
        "config": config,
    }
    if opts.title or opts.subtitle:
        spec["title"] = {"text": opts.title or "", "anchor": "middle"}
        if opts.subtitle:
            spec["title"]["subtitle"] = opts.subtitle
    builder = _BUILDERS[opts.kind]
    spec.update(builder(data, opts))
    return spec


def _values(data: ChartData, first_series_only: bool = False) -> list[dict[str, Any]]:
    if not first_series_only:
        return data.rows
    first = data.series[0]
    return [r for r in data.rows if r["series"] == first]


def _color(data: ChartData, opts: ChartOptions, field: str = "series") -> dict[str, Any]:
    names = data.series if field == "series" else _categories(data)
    scale: dict[str, Any] = {"domain": names}
    if field == "series" and data.colors and all(n in data.colors for n in names):
        scale["range"] = [data.colors[n] for n in names]
    return {"field": field, "type": "nominal", "scale": scale, "title": None}


def _categories(data: ChartData) -> list[str]:
    return list(dict.fromkeys(r["category"] for r in data.rows))


def _mark_color(data: ChartData) -> dict[str, Any]:
    single = data.series[0] if len(data.series) == 1 else None
    return {"color": data.colors[single]} if single in data.colors else {}


def _axis_title(text: str) -> str | None:
    return text or None


def _category_axis(data: ChartData, opts: ChartOptions, kind: str) -> dict[str, Any]:
    """Categories along x in their given order; labels level while they fit, else slanted."""
    categories = _categories(data)
    room = opts.width * 0.8 / max(len(categories), 1)
    widest = max((len(c) for c in categories), default=0) * 7 + 6
    return {
        "field": "category",
        "type": kind,
        "sort": None,
        "title": _axis_title(opts.x_label),
        "axis": {"labelAngle": 0 if widest <= room else -45},
    }


def _with_values(
    spec: dict[str, Any],
    text_mark: dict[str, Any],
    opts: ChartOptions,
    text_color: dict[str, Any] | None = None,
) -> None:
    """`showValues`: the mark and a text layer over it sharing its encoding; with
    `text_color`, the colour encoding stays on the mark (text coloured like the slice or cell
    it sits on would not show)."""
    if not opts.show_values:
        return
    mark: dict[str, Any] = {"mark": spec.pop("mark")}
    text: dict[str, Any] = {
        "text": {"field": "value", "type": "quantitative", "format": VALUE_FORMAT}
    }
    if text_color is not None:
        mark["encoding"] = {"color": spec["encoding"].pop("color")}
        text["color"] = text_color
    spec["layer"] = [mark, {"mark": text_mark, "encoding": text}]


def _bar(data: ChartData, opts: ChartOptions) -> dict[str, Any]:
    horizontal = opts.kind == "horizontal_bar"
    category = _category_axis(data, opts, "nominal")
    value = {"field": "value", "type": "quantitative", "title": _axis_title(opts.y_label)}
    if horizontal:
        category.pop("axis")
        category["title"], value["title"] = _axis_title(opts.y_label), _axis_title(opts.x_label)
    encoding: dict[str, Any] = (
        {"y": category, "x": value} if horizontal else {"x": category, "y": value}
    )
    if len(data.series) > 1:
        encoding["color"] = _color(data, opts)
        offset = {"field": "series", "type": "nominal", "scale": {"domain": data.series}}
        encoding["yOffset" if horizontal else "xOffset"] = offset
    spec: dict[str, Any] = {
        "data": {"values": _values(data)},
        "mark": {"type": "bar", "tooltip": True, **_mark_color(data)},
        "encoding": encoding,
    }
    if horizontal:
        _with_values(spec, {"type": "text", "align": "left", "dx": 3}, opts)
    else:
        _with_values(spec, {"type": "text", "baseline": "bottom", "dy": -2}, opts)
    return spec


def _line(data: ChartData, opts: ChartOptions) -> dict[str, Any]:
    x: dict[str, Any] = _category_axis(data, opts, "ordinal")
    if data.numeric_x:
        x = {"field": "x", "type": "quantitative", "title": _axis_title(opts.x_label)}
    y: dict[str, Any] = {
        "field": "value",
        "type": "quantitative",
        "title": _axis_title(opts.y_label),
    }
    encoding: dict[str, Any] = {"x": x, "y": y}
    if len(data.series) > 1:
        encoding["color"] = _color(data, opts)
    if opts.kind == "area":
        y["stack"] = None  # overlapping, as the builder's Chart.js areas
        mark = {"type": "area", "line": True, "opacity": 0.4 if len(data.series) > 1 else 0.6}
    else:
        mark = {"type": "line", "point": True}
    spec: dict[str, Any] = {
        "data": {"values": _values(data)},
        "mark": {**mark, "tooltip": True, **_mark_color(data)},
        "encoding": encoding,
    }
    _with_values(spec, {"type": "text", "baseline": "bottom", "dy": -6}, opts)
    return spec


def _scatter(data: ChartData, opts: ChartOptions) -> dict[str, Any]:
    spec = _line(data, opts)
    spec["mark"] = {"type": "point", "filled": True, "size": 60, "tooltip": True}
    spec["mark"].update(_mark_color(data))
    if "layer" in spec:
        spec["layer"][0]["mark"] = spec.pop("mark")
    return spec


def _pie(data: ChartData, opts: ChartOptions) -> dict[str, Any]:
    values = _values(data, first_series_only=True)
    negative = [r["category"] for r in values if (r["value"] or 0) < 0]
    if negative:
        raise FieldError("data", f"a pie slice cannot be negative ({negative[0]!r})")
    outer = "min(width, height) / 2"
    mark: dict[str, Any] = {"type": "arc", "tooltip": True, "outerRadius": {"expr": outer}}
    if opts.kind == "donut":
        mark["innerRadius"] = {"expr": f"{outer} * 0.5"}
    categories = list(dict.fromkeys(r["category"] for r in values))
    spec: dict[str, Any] = {
        "data": {"values": values},
        "mark": mark,
        "encoding": {
            "theta": {"field": "value", "type": "quantitative", "stack": True},
            "color": {
                "field": "category",
                "type": "nominal",
                "scale": {"domain": categories},
                "title": None,
            },
            "order": {"field": "index", "type": "quantitative"},
        },
    }
    radius = {"expr": f"{outer} * {0.75 if opts.kind == 'donut' else 0.62}"}
    text_mark = {"type": "text", "radius": radius, "fontWeight": "bold"}
    _with_values(spec, text_mark, opts, text_color={"value": "white"})
    return spec


def _histogram(data: ChartData, opts: ChartOptions) -> dict[str, Any]:
    if data.labelled:  # already counted per bin: bars without gaps
        spec = _bar(data, opts)
        spec["encoding"]["x"]["scale"] = {"paddingInner": 0.02}
        return spec
    spec = {
        "data": {"values": _values(data)},
        "mark": {"type": "bar", "tooltip": True, **_mark_color(data)},
        "encoding": {
            "x": {
                "field": "value",
                "type": "quantitative",
                "bin": {"maxbins": 20},
                "title": _axis_title(opts.x_label),
            },
            "y": {"aggregate": "count", "type": "quantitative", "title": opts.y_label or "Count"},
        },
    }
    if opts.show_values:
        mark = spec.pop("mark")
        text = {"aggregate": "count", "type": "quantitative"}
        text_mark = {"type": "text", "baseline": "bottom", "dy": -2}
        spec["layer"] = [{"mark": mark}, {"mark": text_mark, "encoding": {"text": text}}]
    return spec


def _heatmap(data: ChartData, opts: ChartOptions) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "data": {"values": _values(data)},
        "mark": {"type": "rect", "tooltip": True},
        "encoding": {
            "x": _category_axis(data, opts, "nominal"),
            "y": {
                "field": "series",
                "type": "nominal",
                "sort": data.series,
                "title": _axis_title(opts.y_label),
            },
            "color": {"field": "value", "type": "quantitative", "title": None},
        },
    }
    numbers = [r["value"] for r in data.rows if r["value"] is not None]
    middle = (min(numbers) + max(numbers)) / 2 if numbers else 0
    contrast = {
        "condition": {"test": f"datum.value > {middle}", "value": "white"},
        "value": "black",
    }
    _with_values(spec, {"type": "text", "baseline": "middle"}, opts, text_color=contrast)
    return spec


def _gauge(data: ChartData, opts: ChartOptions) -> dict[str, Any]:
    """A half-ring: a grey track and a coloured arc to the value's share of [min, max]."""
    value = next((r["value"] for r in data.rows if r["value"] is not None), 0)
    low = opts.gauge_min if opts.gauge_min is not None else data.bounds.get("min", 0)
    high = opts.gauge_max if opts.gauge_max is not None else data.bounds.get("max")
    if high is None:
        high = _gauge_max(value, low)
    if high <= low:
        raise FieldError("max", f"the gauge's max ({high}) must be above its min ({low})")
    radius = "min(width / 2, height * 0.8) * 0.95"
    centre = {"y": {"expr": f"height / 2 + {radius} / 2"}}
    ring = {
        "innerRadius": {"expr": f"{radius} * 0.6"},
        "outerRadius": {"expr": radius},
        **centre,
    }
    half = round(math.pi / 2, 6)
    label = data.rows[0]["category"]
    values = [{"category": label, "value": value, "min": low, "max": high}]
    text_size = {"expr": f"{radius} * 0.28"}
    color = data.colors.get(data.series[0]) if data.series else None
    return {
        "data": {"values": values},
        "transform": [
            {
                "calculate": "clamp((datum.value - datum.min) / (datum.max - datum.min), 0, 1)",
                "as": "share",
            },
            {"calculate": f"-{half} + PI * datum.share", "as": "end"},
        ],
        "layer": [
            {"mark": {"type": "arc", "theta": -half, "theta2": half, "color": "#e5e7eb", **ring}},
            {
                "mark": {"type": "arc", "theta": -half, "color": color or "#4c78a8", **ring},
                "encoding": {"theta2": {"field": "end", "type": "quantitative", "scale": None}},
            },
            {
                "mark": {
                    "type": "text",
                    "fontSize": text_size,
                    "fontWeight": "bold",
                    "baseline": "bottom",
                    "x": {"expr": "width / 2"},
                    **centre,
                },
                "encoding": {
                    "text": {"field": "value", "type": "quantitative", "format": VALUE_FORMAT}
                },
            },
        ],
    }


def _gauge_max(value: float, low: float) -> float:
    """No max given: 1 for a share (0-1), 100 for a percentage or score, else the next power
    of ten above the value."""
    if 0 <= value <= 1 and low == 0:
        return 1
    if value <= 100:
        return 100
    return float(10 ** math.ceil(math.log10(value)))


def _radar(data: ChartData, opts: ChartOptions) -> dict[str, Any]:
    """Polar points computed here (Vega-Lite has no radar mark): one closed line a series over
    rings and spokes, the first category at the top, clockwise."""
    categories = _categories(data)
    if len(categories) < 3:
        raise FieldError("data", "a radar chart needs at least 3 categories")
    top = max((r["value"] or 0 for r in data.rows), default=0) or 1
    angle = {c: math.pi / 2 - 2 * math.pi * i / len(categories) for i, c in enumerate(categories)}

    def at(share: float, category: str) -> tuple[float, float]:
        return (
            round(share * math.cos(angle[category]), 6),
            round(share * math.sin(angle[category]), 6),
        )

    points = []
    for series in data.series:
        rows = [r for r in data.rows if r["series"] == series and r["value"] is not None]
        for order, row in enumerate([*rows, *rows[:1]]):
            px, py = at(max(row["value"], 0) / top, row["category"])
            points.append({**row, "px": px, "py": py, "order": order})
    rings = [
        {"ring": share, "px": at(share, c)[0], "py": at(share, c)[1], "order": i}
        for share in (0.25, 0.5, 0.75, 1.0)
        for i, c in enumerate([*categories, categories[0]])
    ]
    spokes = [
        {"category": c, "px": px, "py": py, "order": end}
        for c in categories
        for end, (px, py) in enumerate([(0.0, 0.0), at(1, c)])
    ]
    names = [
        {"category": c, **dict(zip(("px", "py"), at(1.14, c), strict=True))} for c in categories
    ]
    aspect, tall = "max(1, width / height)", "max(1, height / width)"
    x = {
        "field": "px",
        "type": "quantitative",
        "axis": None,
        "scale": {"domain": {"expr": f"[-1.3 * {aspect}, 1.3 * {aspect}]"}},
    }
    y = {
        "field": "py",
        "type": "quantitative",
        "axis": None,
        "scale": {"domain": {"expr": f"[-1.3 * {tall}, 1.3 * {tall}]"}},
    }
    grey = {"color": "#d1d5db", "strokeWidth": 1}
    series_layer: dict[str, Any] = {
        "data": {"values": points},
        "mark": {"type": "line", "point": True, "tooltip": True, **_mark_color(data)},
        "encoding": {"x": x, "y": y, "order": {"field": "order", "type": "quantitative"}},
    }
    if len(data.series) > 1:
        series_layer["encoding"]["color"] = _color(data, opts)
    layers: list[dict[str, Any]] = [
        {
            "data": {"values": rings},
            "mark": {"type": "line", **grey},
            "encoding": {
                "x": x,
                "y": y,
                "detail": {"field": "ring", "type": "nominal"},
                "order": {"field": "order", "type": "quantitative"},
            },
        },
        {
            "data": {"values": spokes},
            "mark": {"type": "line", **grey},
            "encoding": {
                "x": x,
                "y": y,
                "detail": {"field": "category", "type": "nominal"},
                "order": {"field": "order", "type": "quantitative"},
            },
        },
        {
            "data": {"values": names},
            "mark": {"type": "text", "baseline": "middle"},
            "encoding": {
                "x": x,
                "y": y,
                "text": {"field": "category", "type": "nominal"},
            },
        },
        series_layer,
    ]
    if opts.show_values:
        text = {"field": "value", "type": "quantitative", "format": VALUE_FORMAT}
        layers.append(
            {
                "data": {"values": [p for p in points if p["order"] < len(categories)]},
                "mark": {"type": "text", "dy": -8},
                "encoding": {"x": x, "y": y, "text": text},
            }
        )
    return {"layer": layers, "resolve": {"scale": {"x": "shared", "y": "shared"}}}


_BUILDERS = {
    "bar": _bar,
    "horizontal_bar": _bar,
    "line": _line,
    "area": _line,
    "scatter": _scatter,
    "pie": _pie,
    "donut": _pie,
    "histogram": _histogram,
    "heatmap": _heatmap,
    "gauge": _gauge,
    "radar": _radar,
}


def render(spec: dict[str, Any]) -> tuple[bytes, str]:
    """PNG (1 px a unit) and SVG of a spec; no external data may be fetched."""
    import vl_convert

    png: bytes = vl_convert.vegalite_to_png(
        spec, vl_version=VL_VERSION, scale=1, allowed_base_urls=[]
    )
    svg: str = vl_convert.vegalite_to_svg(spec, vl_version=VL_VERSION, allowed_base_urls=[])
    return png, svg


def png_size(png: bytes) -> tuple[int, int]:
    """Width and height from a PNG's IHDR chunk."""
    return int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")


# -- the node -----------------------------------------------------------------------------------


def _options(ctx: NodeContext, config: Mapping[str, Any]) -> tuple[ChartOptions, str]:
    def rendered(*keys: str) -> tuple[str, Any]:
        key, value = pick(config, *keys)
        return key, ctx.render(value)

    kind_key, kind = rendered("chartType")
    width_key, width = rendered("width")
    height_key, height = rendered("height")
    theme_key, theme = rendered("theme")
    legend_key, legend = rendered("legend", "legendPosition")
    grid_key, grid = rendered("showGrid")
    values_key, values = rendered("showValues")
    _, labels = rendered(*LABEL_FIELDS)
    min_key, low = rendered("min", "minValue")
    max_key, high = rendered("max", "maxValue")
    _, filename = rendered("filename", "fileName")
    show_values = as_bool(values, values_key, False)
    if isinstance(labels, bool):  # `dataLabels: true` in some workflows: show the values
        show_values = show_values or labels
    options = ChartOptions(
        kind=chart_type(kind, kind_key),
        width=chart_size(width, width_key, DEFAULT_WIDTH),
        height=chart_size(height, height_key, DEFAULT_HEIGHT),
        title=ctx.render_text(config.get("title") or ""),
        subtitle=ctx.render_text(config.get("subtitle") or ""),
        x_label=ctx.render_text(config.get("xAxisLabel") or ""),
        y_label=ctx.render_text(config.get("yAxisLabel") or ""),
        theme=theme_config(theme, theme_key),
        legend=legend_orient(legend, legend_key),
        show_grid=as_bool(grid, grid_key, True),
        show_values=show_values,
        gauge_min=_number(low, min_key),
        gauge_max=_number(high, max_key),
    )
    return options, file_stem(filename, "chart", ("png", "svg"))


def execute_chart_generation(ctx: NodeContext) -> NodeResult:
    """Build the spec, render it, store PNG and SVG; output their references and the spec."""
    config = ctx.config.extras()
    max_points = ctx.settings.charts.max_points
    try:
        options, stem = _options(ctx, config)
        data_key, raw = pick(config, *DATA_FIELDS)
        if raw is None:
            raise FieldError("dataSource", "no data: set dataSource (e.g. {{node.values}})")
        labels_key, labels = pick(config, *LABEL_FIELDS)
        labels = ctx.render(labels)
        given = None if isinstance(labels, bool) else parse_labels(labels, labels_key)
        data = chart_data(ctx.render(raw), given, data_key)
        if len(data.rows) > max_points:
            raise FieldError(
                data_key,
                f"{len(data.rows):,} points: more than {max_points:,} "
                "(FLOWMAESTRO_CHARTS__MAX_POINTS)",
            )
        try:
            spec = build_spec(data, options)
        except FieldError as exc:
            raise FieldError(data_key if exc.field == "data" else exc.field, exc.message) from None
    except FieldError as exc:
        raise ctx.error(str(exc), NodeConfigurationError) from None
    try:
        png, svg = render(spec)
    except (ValueError, RuntimeError) as exc:
        lines = [line.strip() for line in str(exc).splitlines()[1:]]
        reason = next((line for line in lines if line and not line.startswith("at ")), "")
        raise ctx.error(
            f"{data_key}: Vega-Lite could not render the {options.kind} chart: "
            f"{reason[:300] or type(exc).__name__}",
            NodeExecutionError,
        ) from None
    png_ref = store_output(ctx, f"{stem}.png", png, PNG_TYPE)
    svg_ref = store_output(ctx, f"{stem}.svg", svg.encode("utf-8"), SVG_TYPE)
    width, height = png_size(png)
    output = {
        "file": png_ref.to_value(),
        "svgFile": svg_ref.to_value(),
        "spec": spec,
        "chartType": options.kind,
        "width": width,
        "height": height,
        # the upstream engine's result fields, for templates written against it
        "format": "png",
        "path": png_ref.path,
        "filename": png_ref.name,
        "size": png_ref.size,
    }
    return NodeResult(output=wrap_output(output, ctx.config.output_variable))


# -- deploy-time checks --------------------------------------------------------------------------


def check_chart_generation(node: NodeSpec) -> Iterable[Problem]:
    """Literal values that cannot work: an unknown chart type, a size out of range, an unknown
    theme or legend position, no data, or literal data that is no chart data."""
    config = node.original_config

    def problem(exc: FieldError) -> Problem:
        return error("invalid_config", exc.message, node_id=node.id, field=exc.field)

    literal_checks: list[tuple[tuple[str, ...], Any]] = [
        (("chartType",), chart_type),
        (("width",), lambda v, f: chart_size(v, f, DEFAULT_WIDTH)),
        (("height",), lambda v, f: chart_size(v, f, DEFAULT_HEIGHT)),
        (("theme",), theme_name),
        (("legend", "legendPosition"), legend_orient),
        (("showGrid",), lambda v, f: as_bool(v, f, True)),
        (("showValues",), lambda v, f: as_bool(v, f, False)),
    ]
    for keys, check in literal_checks:
        key, value = pick(config, *keys)
        if value is not None and not is_template(value):
            try:
                check(value, key)
            except FieldError as exc:
                yield problem(exc)
    data_key, data = pick(config, *DATA_FIELDS)
    if data is None:
        yield error(
            "missing_field",
            "chartGeneration needs dataSource (the values to plot, e.g. {{node.values}})",
            node_id=node.id,
            field="dataSource",
        )
        return
    labels_key, labels = pick(config, *LABEL_FIELDS)
    if is_template(data) or is_template(labels):
        return
    try:
        given = None if isinstance(labels, bool) else parse_labels(labels, labels_key)
        chart_data(data, given, data_key)
    except FieldError as exc:
        yield problem(exc)


EXECUTORS: Mapping[str, Executor] = {"chartGeneration": execute_chart_generation}
CONFIG_CHECKS: Mapping[str, ConfigCheck] = {"chartGeneration": check_chart_generation}

__all__ = [
    "CHART_TYPES",
    "CONFIG_CHECKS",
    "EXECUTORS",
    "build_spec",
    "chart_data",
    "check_chart_generation",
    "execute_chart_generation",
]
