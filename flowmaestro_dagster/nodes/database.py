"""database nodes: SQL on a named connection (SQLAlchemy), every value a bound parameter.

The node names a connection of `Settings.databases` by `connectionId`, else by `provider`.
Values never become SQL text. The SQL a node carries is read token by token (string literals,
quoted identifiers, comments and dollar-quoted bodies are recognised) and rewritten into a
statement with named bind parameters:

* `$1`, `$2`, ... take the positional values (`parameters.values`, or `parameters` as a list);
* `:name` takes the named value (`parameters.values`, or `parameters` as an object);
* `{{expr}}` / `${expr}` in SQL becomes a bind parameter holding the referenced value;
* a string literal containing references (`'%{{q}}%'`) becomes one bound string;
* a reference where a table name goes, or inside a quoted identifier, is refused.

Structured operations (`insert`/`update`/`delete`/`select` with `table`, `data`, `where`, ...)
build the statement with SQLAlchemy Core from literal identifiers and bound values.
Output: `{rows, rowCount, columns, operation}` (docs/node-types.md, database).

On SQLite, SQLite's authorizer refuses ATTACH, DETACH, PRAGMA and `load_extension()` on every
connection, whatever the SQL looks like: a node cannot open another database file (the platform
database holds API key hashes) or change how its own is opened. A connection with `read_only`
opens SQLite with `mode=ro` (plus `PRAGMA query_only`) and PostgreSQL sessions whose
transactions default to READ ONLY.
"""

import base64
import datetime as dt
import json
import os
import re
import sqlite3
import threading
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any
from urllib.parse import quote

from flowmaestro_dagster.errors import (
    ConnectorNotConfiguredError,
    NodeConfigurationError,
    NodeExecutionError,
    TransientNodeError,
)
from flowmaestro_dagster.lang import templates
from flowmaestro_dagster.lang.expressions import Budget, Scope
from flowmaestro_dagster.nodes.base import Executor, NodeContext, NodeResult, wrap_output
from flowmaestro_dagster.settings import DatabaseConnection
from flowmaestro_dagster.spec.configs import DatabaseConfig

RAW_OPERATIONS = frozenset({"query", "select", "execute", "raw", "sql", "read", "write", "run"})
WRITE_OPERATIONS = frozenset({"insert", "update", "delete", "upsert"})
LIST_OPERATIONS = frozenset({"listTables", "list_tables", "tables"})
_STRUCTURE_KEYS = frozenset(
    {
        "query",
        "sql",
        "values",
        "params",
        "parameters",
        "table",
        "schema",
        "data",
        "set",
        "where",
        "whereParameters",
        "returning",
        "columns",
        "orderBy",
        "limit",
        "offset",
        "returnFormat",
    }
)
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_TABLE_KEYWORDS = re.compile(r"\b(from|join|into|update|table)\s*$", re.IGNORECASE)
_TRANSIENT_SQLSTATES = frozenset({"40001", "40P01", "57P01", "57P03", "08000", "08003", "08006"})


# -- turning SQL with references and placeholders into a parameterised statement ----------------


@dataclass(frozen=True)
class BoundSQL:
    """SQL for `sqlalchemy.text()` (`:name` binds, other colons escaped) and its values."""

    text: str
    values: dict[str, Any]


class SQLError(ValueError):
    """The SQL cannot be parameterised as written (a configuration error of the node)."""


def parameterise(
    sql: str,
    scope: Scope,
    *,
    positional: Sequence[Any] = (),
    named: Mapping[str, Any] | None = None,
    prefix: str = "fm",
    budget: Budget | None = None,
) -> BoundSQL:
    """Rewrite `sql` so every value is a bind parameter; references resolve against `scope`
    (on `budget`: one for the whole statement)."""
    budget = budget if budget is not None else Budget()
    named = dict(named or {})
    out: list[str] = []
    values: dict[str, Any] = {}
    i = 0
    n = len(sql)
    templates_seen = 0

    def bind(name: str, value: Any) -> str:
        values[name] = value
        return f":{name}"

    while i < n:
        ch = sql[i]
        nxt = sql[i + 1] if i + 1 < n else ""
        if ch == "'":
            end = _literal_end(sql, i, "'")
            body = sql[i + 1 : end - 1]
            if "{{" in body or "${" in body:
                templates_seen += 1
                text = templates.render_string(body.replace("''", "'"), scope, budget=budget)
                out.append(bind(f"{prefix}_t{templates_seen}", text))
            else:
                out.append(_escape_colons(sql[i:end]))
            i = end
        elif ch == '"':
            end = _literal_end(sql, i, '"')
            if "{{" in sql[i:end] or "${" in sql[i:end]:
                raise SQLError("references cannot be used as identifiers (table or column names)")
            out.append(_escape_colons(sql[i:end]))
            i = end
        elif ch == "-" and nxt == "-":
            end = sql.find("\n", i)
            end = n if end < 0 else end
            out.append(_escape_colons(sql[i:end]))
            i = end
        elif ch == "/" and nxt == "*":
            end = sql.find("*/", i + 2)
            end = n if end < 0 else end + 2
            out.append(_escape_colons(sql[i:end]))
            i = end
        elif (ch == "{" and nxt == "{") or (ch == "$" and nxt == "{"):
            close = sql.find("}}" if ch == "{" else "}", i + 2)
            if close < 0:
                raise SQLError("unterminated reference in SQL")
            end = close + (2 if ch == "{" else 1)
            if _TABLE_KEYWORDS.search("".join(out)):
                raise SQLError(
                    f"{sql[i:end]} stands where a table name goes: references are bound as "
                    "values and cannot name tables or columns"
                )
            templates_seen += 1
            value = templates.render(sql[i:end], scope, budget=budget)
            out.append(bind(f"{prefix}_t{templates_seen}", value))
            i = end
        elif ch == "$" and nxt.isdigit():
            j = i + 1
            while j < n and sql[j].isdigit():
                j += 1
            index = int(sql[i + 1 : j])
            if not 1 <= index <= len(positional):
                raise SQLError(
                    f"${index} has no value: the query has {len(positional)} positional "
                    "value(s) (parameters.values)"
                )
            out.append(bind(f"{prefix}_p{index}", positional[index - 1]))
            i = j
        elif ch == "$":
            tag = re.match(r"\$[A-Za-z_]*\$", sql[i:])
            if tag:
                end = sql.find(tag.group(0), i + len(tag.group(0)))
                end = n if end < 0 else end + len(tag.group(0))
                out.append(_escape_colons(sql[i:end]))
                i = end
            else:
                out.append(ch)
                i += 1
        elif ch == ":" and nxt == ":":
            out.append("::")
            i += 2
        elif ch == ":" and (nxt.isalpha() or nxt == "_") and not _word_before(sql, i):
            match = re.match(r":([A-Za-z_][A-Za-z0-9_]*)", sql[i:])
            assert match is not None
            name = match.group(1)
            if name not in named:
                raise SQLError(f":{name} has no value (parameters.values has no key '{name}')")
            out.append(bind(f"{prefix}_n_{name}", named[name]))
            i += len(match.group(0))
        else:
            out.append(ch)
            i += 1
    return BoundSQL("".join(out), values)


def _literal_end(sql: str, start: int, quote: str) -> int:
    """Index after the closing quote (a doubled quote is an escaped one)."""
    i = start + 1
    while i < len(sql):
        if sql[i] == quote:
            if i + 1 < len(sql) and sql[i + 1] == quote:
                i += 2
                continue
            return i + 1
        i += 1
    raise SQLError(f"unterminated {quote}-quoted text in SQL")


def _word_before(sql: str, index: int) -> bool:
    return index > 0 and (sql[index - 1].isalnum() or sql[index - 1] in "_\\")


def _escape_colons(text: str) -> str:
    return text.replace(":", "\\:")


# -- engines -----------------------------------------------------------------------------------

_ENGINES: dict[tuple[int, str], Any] = {}
_ENGINES_LOCK = threading.Lock()


def engine_for(connection: DatabaseConnection) -> Any:
    """One pooled engine per URL per process (a forked worker builds its own)."""
    from sqlalchemy import create_engine, event
    from sqlalchemy.engine import make_url

    url = make_url(connection.resolved_url())
    password = connection.resolved_password()
    if password is not None:
        url = url.set(password=password)
    sqlite = url.get_backend_name() == "sqlite"
    if connection.read_only:
        url = _read_only_sqlite(url) if sqlite else _read_only_session(url)
    key = (os.getpid(), url.render_as_string(hide_password=False))
    with _ENGINES_LOCK:
        engine = _ENGINES.get(key)
        if engine is None:
            options: dict[str, Any] = {"pool_pre_ping": True}
            if not sqlite:
                options.update(pool_size=connection.pool_size, max_overflow=connection.max_overflow)
            engine = create_engine(url, **options)
            if sqlite:
                event.listen(engine, "connect", _sqlite_guard(read_only=connection.read_only))
            _ENGINES[key] = engine
        return engine


def _read_only_sqlite(url: Any) -> Any:
    """The same file opened as a `mode=ro` URI (SQLite itself refuses every write)."""
    database = url.database or ""
    if database in ("", ":memory:"):
        return url  # nothing on disk to protect; `query_only` still applies
    if not (database.startswith("file:") and str(url.query.get("uri")).lower() in ("true", "1")):
        database = "file:" + quote(database)
    return url.set(database=database).update_query_dict({"mode": "ro", "uri": "true"})


def _read_only_session(url: Any) -> Any:
    """PostgreSQL (libpq `options`): every transaction of the session starts READ ONLY."""
    options = url.query.get("options")
    setting = "-c default_transaction_read_only=on"
    combined = f"{options} {setting}" if isinstance(options, str) and options else setting
    return url.update_query_dict({"options": combined})


# What SQLite's authorizer refuses: another database file, connection settings, extensions.
_REFUSED = threading.local()


def _sqlite_guard(*, read_only: bool) -> Callable[[Any, Any], None]:
    def guard(dbapi_connection: Any, _record: Any) -> None:
        if read_only:
            dbapi_connection.execute("PRAGMA query_only = ON")  # before PRAGMA is refused
        disable = getattr(dbapi_connection, "enable_load_extension", None)
        if disable is not None:  # absent when Python is built without extension loading
            disable(False)
        dbapi_connection.set_authorizer(_sqlite_authorizer)

    return guard


def _sqlite_authorizer(action: int, arg1: str | None, arg2: str | None, *_: Any) -> int:
    """Called by SQLite for every action of a statement it prepares; DENY fails the statement
    ("not authorized") and the refusal is kept for the node's error message."""
    refused: str | None = None
    if action == sqlite3.SQLITE_ATTACH:
        refused = "ATTACH (opening another database file, as VACUUM does too)"
    elif action == sqlite3.SQLITE_DETACH:
        refused = "DETACH"
    elif action == sqlite3.SQLITE_PRAGMA:
        refused = f"PRAGMA {arg1}"
    elif action == sqlite3.SQLITE_FUNCTION and (arg2 or "").lower() == "load_extension":
        refused = "load_extension() (loading a SQLite extension)"
    if refused is None:
        return sqlite3.SQLITE_OK
    _REFUSED.action = refused
    return sqlite3.SQLITE_DENY


def _take_refusal() -> str | None:
    refused: str | None = getattr(_REFUSED, "action", None)
    _REFUSED.action = None
    return refused


def dispose_engines() -> None:
    """Close every pooled connection of this process (tests, shutdown)."""
    with _ENGINES_LOCK:
        for (pid, _), engine in list(_ENGINES.items()):
            if pid == os.getpid():
                engine.dispose()
        _ENGINES.clear()


# -- the executor --------------------------------------------------------------------------------


def _connection(ctx: NodeContext, config: DatabaseConfig) -> tuple[str, DatabaseConnection]:
    databases = ctx.settings.databases
    wanted = [n for n in (config.connection_id, config.provider) if n]
    for name in wanted:
        if name in databases:
            return name, databases[name]
    named = " or ".join(f"'{n}'" for n in wanted) or "(the node names none)"
    raise ctx.error(
        f"no database connection configured for {named}: add it to FLOWMAESTRO_DATABASES "
        "(name → SQLAlchemy URL)",
        ConnectorNotConfiguredError,
    )


def execute_database(ctx: NodeContext) -> NodeResult:
    config = ctx.typed_config(DatabaseConfig)
    operation = config.operation or "query"
    name, connection = _connection(ctx, config)
    try:
        engine = engine_for(connection)
    except ValueError as exc:  # a missing or malformed URL
        raise ctx.error(f"database connection '{name}': {exc}", NodeConfigurationError) from exc
    structure, values = _split_parameters(ctx, config.parameters)
    sql = config.query if isinstance(config.query, str) and config.query.strip() else None
    sql = sql or _text(structure.get("query")) or _text(structure.get("sql"))
    try:
        if operation in LIST_OPERATIONS:
            output = _list_tables(ctx, engine)
        elif sql is not None:
            output = _run_raw(ctx, engine, connection, operation, sql, values, structure)
        elif operation in WRITE_OPERATIONS | {"select"} and structure.get("table"):
            output = _run_structured(ctx, engine, connection, operation, structure)
        elif operation in RAW_OPERATIONS | WRITE_OPERATIONS:
            raise ctx.error(f"{operation} needs a query (or a table)", NodeConfigurationError)
        else:
            raise ctx.error(
                f"no connector configured for provider {config.provider or name} "
                f"(operation {operation}): database nodes run SQL operations "
                "(query, select, insert, update, delete, listTables)",
                ConnectorNotConfiguredError,
            )
    except SQLError as exc:
        raise ctx.error(str(exc), NodeConfigurationError) from exc
    output["operation"] = operation
    return NodeResult(wrap_output(output, config.output_variable))


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value.strip() else None


def _split_parameters(ctx: NodeContext, raw: Any) -> tuple[dict[str, Any], Any]:
    """(structure, values): `parameters` is a structure (query/table/...) or the values."""
    if isinstance(raw, str):
        raw = ctx.render(raw)  # `"{{values}}"`: a reference to a list or object
    if raw is None:
        return {}, None
    if isinstance(raw, list):
        return {}, raw
    if isinstance(raw, dict):
        if set(raw) & _STRUCTURE_KEYS:
            values = raw.get("values", raw.get("params", raw.get("parameters")))
            return raw, values
        return {}, raw
    raise ctx.error(
        f"parameters must be a list or an object, got {type(raw).__name__}",
        NodeConfigurationError,
    )


def _render_value(ctx: NodeContext, value: Any) -> Any:
    return ctx.render(value)


def _bind_value(value: Any, dialect: str) -> Any:
    """Adapt a JSON value for the driver: objects as JSON text, lists as arrays on PostgreSQL."""
    if isinstance(value, dict):
        return json.dumps(value)
    if isinstance(value, list):
        return value if dialect == "postgresql" else json.dumps(value)
    return value


def _run_raw(
    ctx: NodeContext,
    engine: Any,
    connection: DatabaseConnection,
    operation: str,
    sql: str,
    values: Any,
    structure: Mapping[str, Any],
) -> dict[str, Any]:
    from sqlalchemy import text

    positional: list[Any] = []
    named: dict[str, Any] = {}
    if isinstance(values, list):
        positional = [_render_value(ctx, v) for v in values]
    elif isinstance(values, dict):
        named = {str(k): _render_value(ctx, v) for k, v in values.items()}
    elif values is not None:
        positional = [_render_value(ctx, values)]
    bound = parameterise(sql, ctx.state, positional=positional, named=named, budget=ctx.budget)
    dialect = engine.dialect.name
    params = {k: _bind_value(v, dialect) for k, v in bound.values.items()}
    output = _execute(ctx, engine, connection, lambda conn: conn.execute(text(bound.text), params))
    fmt = structure.get("returnFormat")
    if fmt == "single":
        output["row"] = output["rows"][0] if output["rows"] else None
    return output


def _identifier(ctx: NodeContext, value: Any, what: str) -> str:
    if not isinstance(value, str) or not all(_IDENTIFIER.match(p) for p in value.split(".")):
        raise ctx.error(
            f"{what} must be a literal SQL name (letters, digits, _), got {value!r}; "
            "references cannot name tables or columns",
            NodeConfigurationError,
        )
    return value


def _identifiers(ctx: NodeContext, value: Any, what: str) -> list[str]:
    if value is None:
        return []
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list):
        raise ctx.error(f"{what} must be a list of names", NodeConfigurationError)
    names: list[str] = []
    for item in items:
        for part in str(item).split(","):
            if part.strip():
                names.append(_identifier(ctx, part.strip(), what))
    return names


def _table(ctx: NodeContext, structure: Mapping[str, Any], columns: Sequence[str]) -> Any:
    from sqlalchemy import column, table

    name = _identifier(ctx, structure.get("table"), "table")
    schema = structure.get("schema")
    if "." in name and not schema:
        schema, name = name.split(".", 1)
    if schema is not None:
        schema = _identifier(ctx, schema, "schema")
    return table(name, *(column(c) for c in dict.fromkeys(columns)), schema=schema)


def _where(ctx: NodeContext, structure: Mapping[str, Any], table: Any) -> Any:
    """`where` as an object (column → value: equality, null, list membership) or SQL text."""
    from sqlalchemy import and_, column, text

    where = structure.get("where")
    if isinstance(where, dict):
        clauses = []
        for key, raw in where.items():
            col: Any = column(_identifier(ctx, key, "where column"))
            value = _render_value(ctx, raw)
            if value is None:
                clauses.append(col.is_(None))
            elif isinstance(value, list):
                clauses.append(col.in_(value))
            else:
                clauses.append(col == value)
        return and_(*clauses) if clauses else None
    if isinstance(where, str) and where.strip():
        positional = [_render_value(ctx, v) for v in (structure.get("whereParameters") or [])]
        bound = parameterise(
            where, ctx.state, positional=positional, prefix="fw", budget=ctx.budget
        )
        return text(bound.text).bindparams(**bound.values)
    return None


def _run_structured(
    ctx: NodeContext,
    engine: Any,
    connection: DatabaseConnection,
    operation: str,
    structure: Mapping[str, Any],
) -> dict[str, Any]:
    from sqlalchemy import column, delete, insert, literal_column, select, update

    returning = _identifiers(ctx, structure.get("returning"), "returning")
    if operation in ("insert", "upsert"):
        data = structure.get("data", structure.get("values"))
        rows = data if isinstance(data, list) else [data]
        if not rows or not all(isinstance(r, dict) and r for r in rows):
            raise ctx.error(
                "insert needs data: an object (or a list of them)", NodeConfigurationError
            )
        columns = [_identifier(ctx, k, "column") for r in rows for k in r]
        table = _table(ctx, structure, columns)
        dialect = engine.dialect.name
        values = [
            {k: _bind_value(_render_value(ctx, v), dialect) for k, v in r.items()} for r in rows
        ]
        stmt: Any = insert(table)
        if returning:
            stmt = stmt.returning(*(column(c) for c in returning))
        if len(values) == 1:
            stmt = stmt.values(values[0])
            return _execute(ctx, engine, connection, lambda conn: conn.execute(stmt))
        return _execute(ctx, engine, connection, lambda conn: conn.execute(stmt, values))
    if operation == "select":
        columns = _identifiers(ctx, structure.get("columns"), "columns")
        table = _table(ctx, structure, columns)
        stmt = select(*(column(c) for c in columns)) if columns else select(literal_column("*"))
        stmt = stmt.select_from(table)
        condition = _where(ctx, structure, table)
        if condition is not None:
            stmt = stmt.where(condition)
        for spec in _order(structure.get("orderBy")):
            name, _, direction = spec.partition(" ")
            col: Any = column(_identifier(ctx, name, "orderBy"))
            stmt = stmt.order_by(col.desc() if direction.strip().lower() == "desc" else col)
        if structure.get("limit") is not None:
            stmt = stmt.limit(int(ctx.render(structure["limit"])))
        if structure.get("offset") is not None:
            stmt = stmt.offset(int(ctx.render(structure["offset"])))
        return _execute(ctx, engine, connection, lambda conn: conn.execute(stmt))
    # update / delete: an unconditional write must say so (`where: "1 = 1"`).
    data = structure.get("data", structure.get("set", structure.get("values")))
    if operation == "update" and not (isinstance(data, dict) and data):
        raise ctx.error("update needs data: an object of column → value", NodeConfigurationError)
    columns = [_identifier(ctx, k, "column") for k in (data or {})] if operation == "update" else []
    table = _table(ctx, structure, columns)
    condition = _where(ctx, structure, table)
    if condition is None:
        raise ctx.error(f"{operation} needs a where clause", NodeConfigurationError)
    if operation == "update":
        dialect = engine.dialect.name
        assert isinstance(data, dict)
        changes = {k: _bind_value(_render_value(ctx, v), dialect) for k, v in data.items()}
        stmt = update(table).where(condition).values(changes)
    else:
        stmt = delete(table).where(condition)
    if returning:
        stmt = stmt.returning(*(column(c) for c in returning))
    return _execute(ctx, engine, connection, lambda conn: conn.execute(stmt))


def _order(value: Any) -> list[str]:
    if value is None:
        return []
    items = value if isinstance(value, list) else str(value).split(",")
    return [str(i).strip() for i in items if str(i).strip()]


def _list_tables(ctx: NodeContext, engine: Any) -> dict[str, Any]:
    from sqlalchemy import inspect
    from sqlalchemy.exc import SQLAlchemyError

    _take_refusal()
    try:
        names = sorted(inspect(engine).get_table_names())
    except SQLAlchemyError as exc:
        raise _database_error(ctx, exc) from exc
    rows = [{"name": n} for n in names]
    return {"rows": rows, "rowCount": len(rows), "columns": ["name"], "tables": names}


def _execute(
    ctx: NodeContext,
    engine: Any,
    connection: DatabaseConnection,
    run: Callable[[Any], Any],
) -> dict[str, Any]:
    """Run one statement in a transaction; rows as JSON data, at most `max_rows` of them."""
    from sqlalchemy.exc import SQLAlchemyError

    _take_refusal()
    try:
        with engine.begin() as conn:
            return _collect(run(conn), connection.max_rows)
    except SQLAlchemyError as exc:
        raise _database_error(ctx, exc) from exc


def _collect(result: Any, max_rows: int) -> dict[str, Any]:
    """`rowCount`: rows a read returned, rows a write changed (with or without RETURNING)."""
    output: dict[str, Any] = {"rows": [], "rowCount": 0, "columns": []}
    context = getattr(result, "context", None)
    is_write = any(getattr(context, a, False) for a in ("isinsert", "isupdate", "isdelete"))
    if result.returns_rows:
        columns = list(result.keys())
        rows: list[dict[str, Any]] = []
        for row in result:
            if len(rows) >= max_rows:
                output["truncated"] = True
                break
            rows.append({c: _json_value(v) for c, v in zip(columns, row, strict=False)})
        output.update(rows=rows, columns=columns, rowCount=len(rows))
        if is_write and result.rowcount >= 0:
            output["rowCount"] = result.rowcount
    else:
        output["rowCount"] = max(result.rowcount, 0)
    return output


def _database_error(ctx: NodeContext, exc: Exception) -> NodeExecutionError:
    """The driver's message (never the SQL or its bound values); connection trouble is retried."""
    from sqlalchemy.exc import DBAPIError, DisconnectionError, InterfaceError, OperationalError

    original = getattr(exc, "orig", None) or exc
    message = str(original).strip().splitlines()[0] if str(original).strip() else type(exc).__name__
    refused = _take_refusal()
    if refused is not None:
        return ctx.error(
            f"refused {refused}: database nodes on SQLite may not attach databases, run PRAGMAs "
            "or load extensions",
            NodeConfigurationError,
        )
    sqlstate = getattr(original, "pgcode", None)
    if sqlstate == "25006" or getattr(original, "sqlite_errorname", None) == "SQLITE_READONLY":
        return ctx.error(f"the connection is read-only: {message}", NodeConfigurationError)
    transient = (
        isinstance(exc, DisconnectionError)
        or (isinstance(exc, DBAPIError) and exc.connection_invalidated)
        or sqlstate in _TRANSIENT_SQLSTATES
        or (isinstance(exc, InterfaceError | OperationalError) and _looks_like_connection(message))
    )
    if transient:
        return ctx.error(f"database unavailable: {message}", TransientNodeError)
    return ctx.error(f"database error: {message}", NodeExecutionError)


def _looks_like_connection(message: str) -> bool:
    lowered = message.lower()
    return any(
        marker in lowered
        for marker in (
            "could not connect",
            "connection refused",
            "server closed",
            "terminating connection",
            "timeout expired",
        )
    )


def _json_value(value: Any) -> Any:
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, Decimal):
        return (
            int(value)
            if value == value.to_integral_value() and abs(value) < 2**53
            else float(value)
        )
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, bytes | bytearray | memoryview):
        return base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, dict):
        return {str(k): _json_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set):
        return [_json_value(v) for v in value]
    return str(value)


EXECUTORS: Mapping[str, Executor] = {"database": execute_database}
