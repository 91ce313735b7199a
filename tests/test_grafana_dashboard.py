"""docs/grafana-dashboard.json only asks for metrics `GET /metrics` exposes.

The exposed names come from the app's own collectors (a real app on an empty database), so a
renamed or removed metric breaks this test rather than a panel nobody looks at.
"""

import json
import re
from pathlib import Path
from typing import Any

from dagster import DagsterInstance
from prometheus_client import CollectorRegistry

from flowmaestro_api.main import create_app
from flowmaestro_api.settings import ApiSettings
from flowmaestro_dagster.control.client import DagsterClient

DASHBOARD = Path(__file__).resolve().parents[1] / "docs" / "grafana-dashboard.json"
UNREACHABLE_DAGSTER = "http://127.0.0.1:9/graphql"
SUFFIXES = {"histogram": ("_bucket", "_sum", "_count"), "counter": ("_total",)}
METRIC = re.compile(r"\bflowmaestro_[a-zA-Z0-9_:]*")


def exposed_names(registry: CollectorRegistry) -> set[str]:
    """Every series name the registry writes: a family's name, with its type's suffixes."""
    names: set[str] = set()
    for family in registry.collect():
        suffixes = SUFFIXES.get(family.type, ("",))
        names.update(family.name + suffix for suffix in suffixes)
    return names


def exprs(node: Any) -> list[str]:
    if isinstance(node, dict):
        found = [node["expr"]] if isinstance(node.get("expr"), str) else []
        return found + [e for value in node.values() for e in exprs(value)]
    if isinstance(node, list):
        return [e for value in node for e in exprs(value)]
    return []


def used_names(expr: str) -> set[str]:
    without_strings = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # label values are not names
    return set(METRIC.findall(without_strings))


def test_every_dashboard_expr_uses_only_exposed_metrics(platform_db: str) -> None:
    settings = ApiSettings(database_url=platform_db, dagster_graphql_url=UNREACHABLE_DAGSTER)
    with DagsterInstance.ephemeral() as instance:
        app = create_app(settings, dagster=DagsterClient(UNREACHABLE_DAGSTER, instance=instance))
        exposed = exposed_names(app.state.metrics_registry)
    queries = exprs(json.loads(DASHBOARD.read_text()))
    assert len(queries) >= 6
    unknown = {expr: used_names(expr) - exposed for expr in queries if used_names(expr) - exposed}
    assert unknown == {}
    assert all(used_names(expr) for expr in queries), "every panel reads a FlowMaestro metric"
    for wanted in ("flowmaestro_executions", "flowmaestro_node_duration_seconds_bucket"):
        assert wanted in exposed


def test_names_are_read_with_their_type_suffixes() -> None:
    assert used_names('rate(flowmaestro_x_total{status="flowmaestro_y"}[5m])') == {
        "flowmaestro_x_total"
    }
