"""PostgreSQL as an integration provider: `provider: postgresql` integration nodes run on the
`database` node's machinery (nodes/database.py), against the databases of
FLOWMAESTRO_DATABASES.

Why a connector and not a catalogue file: the catalogue describes HTTP APIs, and a request
hook can rewrite a request but cannot answer in its place, so SQL needs a connector of its
own. It adds no SQL handling: it builds the database node's config from the integration
node's and runs `execute_database`, so both node types bind values, refuse references as
identifiers and map driver errors alike. The database is the node's `database` parameter
(or `connectionId`), else the one named `postgresql`.

Operations: `query` (also `executeQuery`, `execute`, `sql`, `raw`, `run`, `runQuery`; SQL in
`query`/`sql`, values in `values`/`parameters` for `$1` or `:name`), `select`, `insert`,
`update`, `delete` (`table`, `data`, `where`, `whereParameters`, `returning`, `columns`,
`orderBy`, `limit`, `offset`, `schema`), `upsert` (`table`, `data`, `conflictColumn`(s):
INSERT ... ON CONFLICT ... DO UPDATE) and `listTables`. Output as the database node's:
`{rows, rowCount, columns, operation}`.

Rendering happens once. SQL text and names (`query`, `where` as text, `table`, columns) are
taken from the node's config as written, so a `{{...}}` in SQL becomes a bound value as in a
database node; values (`data`, `values`, ...) are the connector request's, already rendered,
and are not rendered again: text that arrives in data is never evaluated as a template.
"""

import re
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from flowmaestro_dagster.errors import NodeConfigurationError
from flowmaestro_dagster.nodes.base import NodeContext
from flowmaestro_dagster.nodes.connectors import ConnectorRegistry, ConnectorRequest, ConnectorSpec
from flowmaestro_dagster.nodes.database import execute_database
from flowmaestro_dagster.spec.configs import DatabaseConfig

PROVIDER = "postgresql"
OPERATIONS: Mapping[str, str] = {
    **{name: "query" for name in ("query", "executeQuery", "runQuery", "raw", "sql", "run")},
    "execute": "execute",
    "select": "select",
    **{name: "insert" for name in ("insert", "insertRow", "insertRows")},
    **{name: "update" for name in ("update", "updateRow", "updateRows")},
    **{name: "delete" for name in ("delete", "deleteRow", "deleteRows")},
    **{name: "upsert" for name in ("upsert", "upsertRow", "upsertRows")},
    **{name: "listTables" for name in ("listTables", "list_tables", "tables")},
}
"""Operation ids (and the aliases templates use) → the database node's operation."""

_SQL_TEXT = ("query", "sql")
_NAMES = ("table", "schema", "columns", "returning", "orderBy")
_VALUES = ("values", "params", "parameters", "whereParameters", "limit", "offset", "returnFormat")
_DATA = ("data", "set", "row", "rows", "record", "records")
_CONFLICT = ("conflictColumn", "conflictColumns", "conflict_column", "onConflict", "uniqueKey")
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def register(registry: ConnectorRegistry) -> None:
    registry.add(
        ConnectorSpec(
            PROVIDER,
            run,
            frozenset(OPERATIONS),
            description="SQL on FLOWMAESTRO_DATABASES (the database node's machinery)",
        )
    )


@dataclass(frozen=True)
class _Rendered(NodeContext):
    """The node's context for the database executor, over values the connector request has
    already rendered: rendering them again would evaluate `{{...}}` text found in data."""

    def render(self, value: Any) -> Any:
        return value


def run(request: ConnectorRequest) -> dict[str, Any]:
    """The integration node's operation, run by the database node's executor."""
    node = request.node
    operation = _operation(request)
    written = getattr(node.config, "parameters", None)
    written = written if isinstance(written, Mapping) else {}
    rendered = request.parameters
    structure: dict[str, Any] = {}
    for name in _NAMES:
        if written.get(name) is not None:
            structure[name] = written[name]
    for name in _VALUES:
        if rendered.get(name) is not None:
            structure[name] = rendered[name]
    data = next((rendered[n] for n in _DATA if rendered.get(n) is not None), None)
    if data is not None:
        structure["data"] = data
    where = written.get("where")
    if where is not None:  # SQL text as written (references bound); an object's values rendered
        structure["where"] = rendered.get("where") if isinstance(where, Mapping) else where
    query = next((written[n] for n in _SQL_TEXT if isinstance(written.get(n), str)), None)
    if operation == "upsert" and query is None:
        query, structure = _upsert(request, structure, written)
    database = rendered.get("database") or getattr(node.config, "connection_id", None)
    config = DatabaseConfig(
        provider=PROVIDER,
        operation=operation,
        query=query,
        parameters=structure or None,
        connection_id=str(database) if database else None,
    )
    context = _Rendered(
        **{f.name: getattr(node, f.name) for f in fields(node)} | {"config": config}
    )
    output = execute_database(context).output
    return dict(output) if isinstance(output, Mapping) else {"result": output}


def _operation(request: ConnectorRequest) -> str:
    wanted = (request.operation or "query").strip()
    for name, operation in OPERATIONS.items():
        if name.lower() == wanted.lower():
            return operation
    raise request.node.error(
        f"postgresql has no operation {wanted!r} (operations: query, select, insert, update, "
        "delete, upsert, listTables)",
        NodeConfigurationError,
        details={"field": "operation"},
    )


def _names(request: ConnectorRequest, value: Any, field: str) -> list[str]:
    """Literal table or column names (a list, or text with commas); references are refused as
    in the database node."""
    items = value if isinstance(value, list) else str(value).split(",")
    names = [str(i).strip() for i in items if str(i).strip()]
    bad = [n for n in names if not _IDENTIFIER.fullmatch(n)]
    if bad or not names:
        raise request.node.error(
            f"parameters.{field} must be literal SQL names (letters, digits, _), "
            f"got {bad[0] if bad else value!r}",
            NodeConfigurationError,
            details={"field": f"parameters.{field}"},
        )
    return names


def _upsert(
    request: ConnectorRequest, structure: dict[str, Any], written: Mapping[str, Any]
) -> tuple[str, dict[str, Any]]:
    """`INSERT ... ON CONFLICT (keys) DO UPDATE SET col = EXCLUDED.col` with every value a
    named bind (`:u<row>_<column>`), names checked and quoted as SQLAlchemy quotes them."""
    from sqlalchemy.dialects import postgresql

    quote = postgresql.dialect().identifier_preparer.quote
    conflict = next((written[n] for n in _CONFLICT if written.get(n) not in (None, "")), None)
    if conflict is None:
        raise request.node.error(
            "upsert needs parameters.conflictColumn: the unique column(s) that identify a row",
            NodeConfigurationError,
            details={"field": "parameters.conflictColumn"},
        )
    keys = _names(request, conflict, "conflictColumn")
    data = structure.get("data")
    rows: list[Mapping[str, Any]] = [
        r for r in (data if isinstance(data, list) else [data]) if isinstance(r, Mapping) and r
    ]
    if not rows or (isinstance(data, list) and len(rows) != len(data)):
        raise request.node.error(
            "upsert needs parameters.data: an object of column → value (or a list of them)",
            NodeConfigurationError,
            details={"field": "parameters.data"},
        )
    columns = list(dict.fromkeys(_names(request, [k for r in rows for k in r], "data")))
    table = _names(request, structure.get("table") or "", "table")
    if len(table) != 1:
        raise request.node.error(
            "parameters.table must name one table",
            NodeConfigurationError,
            details={"field": "parameters.table"},
        )
    target = quote(table[0])
    if structure.get("schema"):
        target = f"{quote(_names(request, structure['schema'], 'schema')[0])}.{target}"
    values: dict[str, Any] = {}
    tuples = []
    for index, row in enumerate(rows):
        binds = []
        for column in columns:
            values[f"u{index}_{column}"] = row.get(column)
            binds.append(f":u{index}_{column}")
        tuples.append(f"({', '.join(binds)})")
    updates = [f"{quote(c)} = EXCLUDED.{quote(c)}" for c in columns if c not in keys]
    action = f"DO UPDATE SET {', '.join(updates)}" if updates else "DO NOTHING"
    sql = (
        f"INSERT INTO {target} ({', '.join(quote(c) for c in columns)}) "
        f"VALUES {', '.join(tuples)} ON CONFLICT ({', '.join(quote(k) for k in keys)}) {action}"
    )
    if structure.get("returning"):
        sql += " RETURNING " + ", ".join(
            quote(c) for c in _names(request, structure["returning"], "returning")
        )
    kept = {k: v for k, v in structure.items() if k in ("returnFormat",)}
    return sql, {**kept, "values": values}


__all__ = ["OPERATIONS", "PROVIDER", "register", "run"]
