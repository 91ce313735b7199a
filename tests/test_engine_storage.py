"""The storages that check their schema once (flowmaestro_dagster/engines/storage.py): what they
skip is counted in statements and Alembic script loads, and what they build is compared with
what Dagster's own storage builds."""

import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import alembic.script
import pytest
import sqlalchemy as sa
from dagster import DagsterInstance, job, op
from dagster_postgres import PostgresRunStorage

from flowmaestro_dagster.dagster_internals import SqliteEventLogStorage, SqliteRunStorage
from flowmaestro_dagster.engines import storage as storage_module
from flowmaestro_dagster.engines.storage import (
    KeptColumnsPostgresRunStorage,
    KeptColumnsSqliteRunStorage,
    TemplateShardEventLogStorage,
)
from flowmaestro_dagster.orchestration.instance_config import render_instance_yaml
from flowmaestro_dagster.settings import Settings
from tests.services import fresh_pg_database


@op
def produce() -> int:
    return 42


@op
def consume(value: int) -> int:
    return value + 1


@job
def handed_over() -> None:
    """Two steps, one output passed on: the event kinds a run writes to its shard."""
    consume(produce())


@pytest.fixture
def statements() -> Iterator[list[str]]:
    """Every statement any engine runs during the test (Dagster's SQLite run storage makes an
    engine per connection)."""
    seen: list[str] = []

    def record(*args: Any) -> None:
        seen.append(args[2])

    sa.event.listen(sa.Engine, "before_cursor_execute", record)
    yield seen
    sa.event.remove(sa.Engine, "before_cursor_execute", record)


def script_loads(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts Alembic reading its migration scripts (what Dagster's shard check does)."""
    loads: list[int] = []
    original = alembic.script.ScriptDirectory.from_config

    def counted(*args: Any, **kwargs: Any) -> Any:
        loads.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(alembic.script.ScriptDirectory, "from_config", counted)
    return loads


def schema(path: Path) -> tuple[list[tuple[str, str]], list[str], str]:
    """A SQLite file's tables and indexes, its Alembic revision and its journal mode."""
    with sqlite3.connect(path) as connection:
        objects = connection.execute(
            "SELECT type, name FROM sqlite_master WHERE name NOT LIKE 'sqlite_%' ORDER BY 2"
        ).fetchall()
        revision = [row[0] for row in connection.execute("SELECT version_num FROM alembic_version")]
        (mode,) = connection.execute("PRAGMA journal_mode").fetchone()
    return objects, revision, mode


def test_the_run_tables_columns_are_asked_for_once_they_are_there(
    tmp_path: Path, statements: list[str]
) -> None:
    def reflections() -> int:
        found = sum("pragma" in s.lower() and "info(" in s.lower() for s in statements)
        statements.clear()
        return found

    storage = KeptColumnsSqliteRunStorage.from_local(str(tmp_path / "ours"))
    plain = SqliteRunStorage.from_local(str(tmp_path / "plain"))
    reflections()
    for _ in range(3):
        assert storage.has_run_stats_index_cols()
        storage.get_run_records(limit=1)
    assert reflections() <= 1  # none if building the storage already asked
    for _ in range(3):
        plain.has_run_stats_index_cols()
        plain.get_run_records(limit=1)
    assert reflections() == 6  # what Dagster's does: one per call


def test_an_answer_of_no_is_asked_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Before a migration adds the columns the answer is No; once added it must become Yes."""
    storage = KeptColumnsSqliteRunStorage.from_local(str(tmp_path))
    storage._run_stats_columns = False  # as built on a database from before that migration
    answers = iter([False, True])
    monkeypatch.setattr(SqliteRunStorage, "has_run_stats_index_cols", lambda self: next(answers))
    assert storage.has_run_stats_index_cols() is False
    assert storage.has_run_stats_index_cols() is True
    assert storage.has_run_stats_index_cols() is True  # kept: no third answer is read


def test_a_new_run_shard_is_the_same_database_as_dagsters(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ours = TemplateShardEventLogStorage(str(tmp_path / "ours"))
    theirs = SqliteEventLogStorage(str(tmp_path / "theirs"))
    with ours.run_connection("run-1"):  # the first: builds the template
        pass
    loads = script_loads(monkeypatch)
    with ours.run_connection("run-2"):
        pass
    assert loads == []  # a copy, no Alembic
    with theirs.run_connection("run-2"):
        pass
    assert loads  # Dagster's check reads the scripts
    copied = schema(tmp_path / "ours" / "run-2.db")
    assert copied == schema(tmp_path / "theirs" / "run-2.db") and copied[2] == "wal"
    # The template is no run: Dagster lists runs from `<run id>.db` files only.
    assert sorted(ours.get_all_run_ids()) == ["run-1", "run-2"]


def test_another_process_opening_a_stamped_shard_runs_one_query(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, statements: list[str]
) -> None:
    TemplateShardEventLogStorage(str(tmp_path)).run_connection("run").__enter__()
    other = TemplateShardEventLogStorage(str(tmp_path))  # e.g. the daemon, then the run worker
    loads = script_loads(monkeypatch)
    statements.clear()
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'run.db'}", poolclass=sa.pool.NullPool)
    other._initdb(engine)
    assert loads == [] and statements == ["SELECT version_num FROM alembic_version"]


def test_a_shard_someone_else_started_is_left_to_dagsters_initialisation(tmp_path: Path) -> None:
    """An empty file already there (another process connected first): not overwritten; Dagster's
    own initialisation creates the tables in it."""
    storage = TemplateShardEventLogStorage(str(tmp_path))
    sqlite3.connect(tmp_path / "run.db").close()  # an empty database file
    with storage.run_connection("run"):
        pass
    objects, revision, _ = schema(tmp_path / "run.db")
    assert ("table", "event_logs") in objects and revision


def test_a_shards_engine_is_kept_across_connections_for_the_last_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run's event writes reuse its shard's engine (and its compiled statements); the engines
    of runs long written are let go."""
    monkeypatch.setattr(storage_module, "KEPT_ENGINES", 3)
    storage = TemplateShardEventLogStorage(str(tmp_path))
    built: list[str] = []
    original = sa.create_engine

    def counted(url: Any, **kwargs: Any) -> sa.Engine:
        built.append(str(url))
        return original(url, **kwargs)

    monkeypatch.setattr(sa, "create_engine", counted)
    for _ in range(5):
        with storage.run_connection("run-a") as connection:
            connection.execute(sa.text("SELECT count(*) FROM event_logs"))
    assert [u for u in built if u.endswith("run-a.db")] == [built[0]]  # one engine, 5 uses
    for name in ("run-b", "run-c", "run-d"):
        with storage.run_connection(name):
            pass
    assert list(storage._engines) == ["run-b", "run-c", "run-d"]  # run-a's was let go
    with storage.run_connection("run-a") as connection:  # and is built again when needed
        assert connection.execute(sa.text("SELECT count(*) FROM event_logs")).scalar() == 0
    assert len([u for u in built if u.endswith("run-a.db")]) == 2


def test_many_writers_creating_one_shard_at_once_lose_no_event(tmp_path: Path) -> None:
    errors: list[BaseException] = []

    def write(n: int) -> None:
        try:
            storage = TemplateShardEventLogStorage(str(tmp_path))  # one per "process"
            with storage.run_connection("shared") as connection:
                connection.execute(sa.text("INSERT INTO event_logs (run_id, event, timestamp) VALUES ('shared', :e, CURRENT_TIMESTAMP)"), {"e": f"w{n}"})  # fmt: skip
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    with sqlite3.connect(tmp_path / "shared.db") as connection:
        assert connection.execute("SELECT count(*) FROM event_logs").fetchone() == (8,)
    assert not [p for p in tmp_path.iterdir() if p.name.endswith((".new", ".tmp"))]


def test_runs_on_an_instance_rendered_for_its_home(tmp_path: Path) -> None:
    (tmp_path / "dagster.yaml").write_text(render_instance_yaml(Settings(_env_file=None), home=tmp_path))  # fmt: skip
    with DagsterInstance.from_config(str(tmp_path)) as instance:
        assert isinstance(instance.run_storage, KeptColumnsSqliteRunStorage)
        assert isinstance(instance.event_log_storage, TemplateShardEventLogStorage)
        runs = [handed_over.execute_in_process(instance=instance) for _ in range(2)]
        assert all(run.success for run in runs)
        for run in runs:
            kinds = [e.dagster_event_type for e in instance.all_logs(run.run_id) if e.dagster_event]
            assert kinds[-1] is not None and kinds[-1].value == "PIPELINE_SUCCESS"
        records = instance.get_run_records()
        assert [r.dagster_run.run_id for r in records] == [r.run_id for r in reversed(runs)]
    assert (tmp_path / "history" / "runs" / f"{runs[0].run_id}.db").exists()


@pytest.fixture
def postgres_url() -> Iterator[str]:
    with fresh_pg_database() as url:
        yield url


@pytest.mark.postgres
def test_postgres_asks_for_the_run_tables_columns_once(
    postgres_url: str, statements: list[str]
) -> None:
    url = sa.make_url(postgres_url).set(drivername="postgresql+psycopg2")
    text = url.render_as_string(hide_password=False)
    ours, plain = KeptColumnsPostgresRunStorage(text), PostgresRunStorage(text)

    def reflections() -> int:
        found = sum("pg_attribute" in s for s in statements)
        statements.clear()
        return found

    try:
        reflections()
        for _ in range(3):
            assert ours.has_run_stats_index_cols()
            ours.get_run_records(limit=1)
        assert reflections() <= 1
        for _ in range(3):
            plain.has_run_stats_index_cols()
            plain.get_run_records(limit=1)
        assert reflections() >= 6  # Dagster's: one reflection (or more) per call
    finally:
        ours.dispose()
        plain.dispose()
