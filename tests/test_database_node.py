"""Database node on SQLite (a temporary file) and on the local PostgreSQL.

PostgreSQL tests use the real server (127.0.0.1:5432, database `test`, user `postgres`) with
their own uniquely named tables, dropped afterwards. An unreachable server skips them locally
and fails them under CI=true.
"""

import os
import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from flowmaestro_dagster.errors import (
    ConnectorNotConfiguredError,
    NodeConfigurationError,
    NodeExecutionError,
)
from flowmaestro_dagster.lang.state import ExecutionState
from flowmaestro_dagster.nodes.base import NodeContext
from flowmaestro_dagster.nodes.database import SQLError, execute_database, parameterise
from flowmaestro_dagster.settings import Settings
from flowmaestro_dagster.spec.configs import DatabaseConfig
from flowmaestro_dagster.testing import run_workflow
from tests.builders import chain, node
from tests.services import require_postgres

PG_URL = os.environ.get(
    "FLOWMAESTRO_TEST_PG_URL", "postgresql+psycopg2://postgres@127.0.0.1:5432/test"
)
EVIL = "x'); DROP TABLE {table}; --"


@pytest.fixture
def postgres_url() -> str:
    """The local PostgreSQL; skipped when unreachable, except under CI=true (a failure)."""
    require_postgres(PG_URL)
    return PG_URL


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'test.db'}"


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request: pytest.FixtureRequest) -> Iterator[tuple[str, str]]:
    """(url, table): a fresh `people` table with a unique name, dropped afterwards."""
    url = request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "postgres_url")
    table = f"fm_people_{uuid.uuid4().hex[:10]}"
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    with engine.begin() as connection:
        connection.execute(
            sa.text(
                f"CREATE TABLE {table} (id INTEGER PRIMARY KEY, name TEXT, email TEXT, score NUMERIC)"
            )
        )
        connection.execute(sa.text(f"INSERT INTO {table} VALUES (1, 'Ann', 'ann@corp.eu', 9.5)"))
    try:
        yield url, table
    finally:
        with engine.begin() as connection:
            connection.execute(sa.text(f"DROP TABLE IF EXISTS {table}"))
        engine.dispose()


def _count(url: str, table: str) -> int:
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as connection:
            return int(connection.execute(sa.text(f"SELECT COUNT(*) FROM {table}")).scalar_one())
    finally:
        engine.dispose()


def _ctx(url: str, inputs: dict[str, Any] | None = None, **config: Any) -> NodeContext:
    state = ExecutionState.start(inputs or {})
    return NodeContext(
        node_id="db",
        node_type="database",
        label="DB",
        config=DatabaseConfig(connection_id="main", **config),
        state=state,
        services={"settings": Settings(databases={"main": url})},
    )


def _run(url: str, inputs: dict[str, Any] | None = None, **config: Any) -> Any:
    return execute_database(_ctx(url, inputs, **config)).output


# -- turning SQL into a parameterised statement ------------------------------------------------


def test_parameterise_binds_every_kind_of_value() -> None:
    state = ExecutionState.start({"name": "Ann", "q": "o'k"})
    bound = parameterise(
        "SELECT * FROM t WHERE a = $1 AND b = :b AND c = {{name}} AND d LIKE '%{{q}}%' AND e = $1",
        state,
        positional=[10],
        named={"b": True},
    )
    assert bound.text == (
        "SELECT * FROM t WHERE a = :fm_p1 AND b = :fm_n_b AND c = :fm_t1 AND d LIKE :fm_t2 AND e = :fm_p1"
    )
    assert bound.values == {"fm_p1": 10, "fm_n_b": True, "fm_t1": "Ann", "fm_t2": "%o'k%"}


def test_parameterise_leaves_literals_comments_casts_and_dollar_quotes_alone() -> None:
    state = ExecutionState.start({})
    sql = "SELECT 'a:b', x::int, $$ :c $$ -- :d\n/* :e */ FROM \"t:x\""
    bound = parameterise(sql, state)
    assert bound.values == {}
    assert bound.text == "SELECT 'a\\:b', x::int, $$ \\:c $$ -- \\:d\n/* \\:e */ FROM \"t\\:x\""


@pytest.mark.parametrize(
    ("sql", "message"),
    [
        ("SELECT * FROM {{params.table}} WHERE a = 1", "where a table name goes"),
        ('SELECT "{{col}}" FROM t', "cannot be used as identifiers"),
        ("SELECT * FROM t WHERE a = $2", r"\$2 has no value"),
        ("SELECT * FROM t WHERE a = :missing", ":missing has no value"),
    ],
)
def test_parameterise_refuses_what_cannot_be_bound(sql: str, message: str) -> None:
    with pytest.raises(SQLError, match=message):
        parameterise(
            sql, ExecutionState.start({"params": {"table": "t"}, "col": "a"}), positional=[1]
        )


# -- running against real databases ----------------------------------------------------------


def test_query_with_positional_values_and_output_shape(database: tuple[str, str]) -> None:
    url, table = database
    output = _run(
        url,
        {"data": {"email": "ann@corp.eu"}},
        operation="query",
        parameters={
            "query": f"SELECT id, name, score FROM {table} WHERE email = $1",
            "values": ["${data.email}"],
        },
        output_variable="found",
    )
    assert output == {
        "found": {
            "rows": [{"id": 1, "name": "Ann", "score": 9.5}],
            "rowCount": 1,
            "columns": ["id", "name", "score"],
            "operation": "query",
        }
    }


def test_injection_through_an_input_value_is_just_data(database: tuple[str, str]) -> None:
    url, table = database
    evil = EVIL.format(table=table)
    inputs = {"name": evil}
    _run(
        url,
        inputs,
        operation="insert",
        query=f"INSERT INTO {table} (id, name) VALUES (2, {{{{name}}}})",
    )
    _run(
        url,
        inputs,
        operation="insert",
        query=f"INSERT INTO {table} (id, name) VALUES (3, '{{{{name}}}}')",
    )
    found = _run(
        url,
        inputs,
        operation="select",
        query=f"SELECT id, name FROM {table} WHERE name = {{{{name}}}} ORDER BY id",
    )
    assert found["rows"] == [{"id": 2, "name": evil}, {"id": 3, "name": evil}]
    assert _count(url, table) == 3  # the table is still there


def test_structured_insert_select_update_delete(database: tuple[str, str]) -> None:
    url, table = database
    inserted = _run(
        url,
        {"person": {"name": "Bo", "email": "bo@corp.eu"}},
        operation="insert",
        parameters={
            "table": table,
            "data": {"id": 2, "name": "{{person.name}}", "email": "{{person.email}}"},
            "returning": ["id", "name"],
        },
    )
    assert inserted["rows"] == [{"id": 2, "name": "Bo"}] and inserted["rowCount"] == 1
    selected = _run(
        url,
        operation="select",
        parameters={
            "table": table,
            "columns": ["id", "name"],
            "where": {"id": [1, 2]},
            "orderBy": "id desc",
            "limit": 5,
        },
    )
    assert selected["rows"] == [{"id": 2, "name": "Bo"}, {"id": 1, "name": "Ann"}]
    updated = _run(
        url,
        operation="update",
        parameters={
            "table": table,
            "data": {"name": "Bob"},
            "where": "id = $1",
            "whereParameters": [2],
        },
    )
    assert updated["rowCount"] == 1
    deleted = _run(url, operation="delete", parameters={"table": table, "where": {"name": "Bob"}})
    assert deleted["rowCount"] == 1
    assert _count(url, table) == 1
    tables = _run(url, operation="listTables")["tables"]
    assert table in tables


def test_unconditional_writes_and_templated_identifiers_are_refused(
    database: tuple[str, str],
) -> None:
    url, table = database
    with pytest.raises(NodeConfigurationError, match="needs a where clause"):
        _run(url, operation="delete", parameters={"table": table})
    with pytest.raises(NodeConfigurationError, match="must be a literal SQL name"):
        _run(url, {"t": table}, operation="select", parameters={"table": "{{t}}"})
    with pytest.raises(NodeConfigurationError, match="where a table name goes"):
        _run(url, {"t": table}, operation="select", query="SELECT * FROM {{t}}")


def test_sql_errors_fail_the_node_without_echoing_values(database: tuple[str, str]) -> None:
    url, table = database
    with pytest.raises(NodeExecutionError, match="database error") as caught:
        _run(
            url,
            {"secret": "s3cr3t-value"},
            operation="query",
            query=f"SELECT nope FROM {table} WHERE name = {{{{secret}}}}",
        )
    assert "s3cr3t-value" not in str(caught.value)


def test_postgres_arrays_and_json(postgres_url: str) -> None:
    table = f"fm_docs_{uuid.uuid4().hex[:10]}"
    try:
        _run(postgres_url, operation="query", query=f"CREATE TABLE {table} (id INT, doc JSONB)")
        _run(
            postgres_url,
            {"doc": {"a": [1, 2]}},
            operation="insert",
            parameters={"table": table, "data": {"id": 1, "doc": "{{doc}}"}},
        )
        found = _run(
            postgres_url,
            {"ids": [1, 5]},
            operation="select",
            query=f"SELECT id, doc FROM {table} WHERE id = ANY({{{{ids}}}})",
        )
        assert found["rows"] == [{"id": 1, "doc": {"a": [1, 2]}}]
    finally:
        _run(postgres_url, operation="query", query=f"DROP TABLE IF EXISTS {table}")


def test_connection_is_chosen_by_connection_id_or_provider(sqlite_url: str) -> None:
    ctx = NodeContext(
        node_id="db",
        node_type="database",
        label="DB",
        config=DatabaseConfig(provider="postgresql", operation="query", query="SELECT 1 AS one"),
        state=ExecutionState.start({}),
        services={"settings": Settings(databases={"postgresql": sqlite_url})},
    )
    assert execute_database(ctx).output["rows"] == [{"one": 1}]
    with pytest.raises(
        ConnectorNotConfiguredError, match="no database connection configured for 'conn-pg'"
    ):
        execute_database(
            replace(
                _ctx(sqlite_url), config=DatabaseConfig(connection_id="conn-pg", query="SELECT 1")
            )
        )


def test_postgres_urls_must_name_psycopg2() -> None:
    with pytest.raises(NodeConfigurationError, match=r"postgresql\+psycopg2://") as caught:
        _run("postgresql://app:hunter2@127.0.0.1/test", operation="query", query="SELECT 1")
    assert "hunter2" not in str(caught.value)


def test_database_node_in_a_job(database: tuple[str, str]) -> None:
    url, table = database
    query = {"query": f"SELECT name FROM {table} WHERE email = $1", "values": ["{{email}}"]}
    definition = chain(
        node("in", "input", inputName="email"),
        node("q", "database", connectionId="main", provider="postgresql", operation="query", parameters=query, outputVariable="people"),
        node("out", "output", outputName="name", value="{{people.rows[0].name}}"),
        name="db job",
    )  # fmt: skip
    result = run_workflow(
        definition, {"email": "ann@corp.eu"}, settings=Settings(databases={"main": url})
    )
    assert result.status == "succeeded"
    assert result.outputs == {"name": "Ann"}
