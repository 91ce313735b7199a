"""Dagster's SQLite and PostgreSQL storages, with two schema checks done once instead of on every
call or every run.

Launching a run made every process that touched it (webserver, daemon, run worker) repeat work
whose answer never changes (`bench/api.py` run_throughput, profiled with py-spy):

- **run storage:** `has_run_stats_index_cols` reflects the `runs` table's columns on each call,
  and each run event and each `get_run_records` calls it: 0.75 ms on SQLite, 5.8 ms of a
  9.5 ms `get_run_records` on PostgreSQL. The columns only ever appear (a migration adds them),
  so a True answer is kept;
- **SQLite event log:** each run has its own database file, and each process's first write to
  it checked it with Alembic: loading every migration script from disk (about 20 ms), then, in
  the process that creates it, creating the tables and stamping them (loading the scripts
  again). A file stamped with a revision needs nothing (that is all Dagster's check asks), so it
  is one query here; a new file is a copy of a template built once per Dagster version by
  Dagster's own initialisation. And each connection to a shard built a new SQLAlchemy engine,
  whose compiled statements went with it: a run's ~20 event writes compiled the same insert
  ~20 times. The engines of the runs a process is writing are kept.

Measured (bench/api.py `--launch`, 2-node runs, 2 cores): CPU per run, all processes, SQLite
0.45 → 0.31 s, PostgreSQL 0.46 → 0.39 s.

Everything else is Dagster's. Configure in dagster.yaml (orchestration/instance_config.py does):

    storage:
      custom:
        module: flowmaestro_dagster.engines.storage
        class: SqliteStorage        # or PostgresStorage, with postgres_url
        config:
          base_dir: /path/to/DAGSTER_HOME
"""

import os
import shutil
import threading
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Self

import dagster
import sqlalchemy as sa
from dagster_postgres import (
    DagsterPostgresStorage,
    PostgresEventLogStorage,
    PostgresRunStorage,
    PostgresScheduleStorage,
)
from dagster_postgres.utils import get_token_provider_from_config, pg_url_from_config

from flowmaestro_dagster.dagster_internals import (
    SQLITE_BUSY_TIMEOUT_SECONDS,
    ConfigurableClassData,
    DagsterSqliteStorage,
    SqliteEventLogStorage,
    SqliteRunStorage,
    SqliteScheduleStorage,
    event_logs_directory,
    runs_directory,
    schedule_directory,
)

KEPT_ENGINES = 64  # run shards whose engine a process keeps: the runs it is writing now


class _RunStatsColumnsKept:
    """`has_run_stats_index_cols` asks the database until it answers True, then never again."""

    _run_stats_columns = False

    def has_run_stats_index_cols(self) -> bool:
        if not self._run_stats_columns:
            self._run_stats_columns = super().has_run_stats_index_cols()  # type: ignore[misc]
        return self._run_stats_columns


class KeptColumnsSqliteRunStorage(_RunStatsColumnsKept, SqliteRunStorage):
    pass


class KeptColumnsPostgresRunStorage(_RunStatsColumnsKept, PostgresRunStorage):
    pass


class TemplateShardEventLogStorage(SqliteEventLogStorage):
    """Run shards: stamped means ready (one query); a new one is copied from a template. Each
    shard's engine is kept for the next connection (the last `KEPT_ENGINES` of them)."""

    def __init__(self, base_dir: str, inst_data: ConfigurableClassData | None = None) -> None:
        # Set first: Dagster's __init__ may connect (it reindexes a new index shard).
        self._engines: OrderedDict[str, sa.Engine] = OrderedDict()
        self._template = os.path.join(
            os.path.abspath(base_dir), f".run-shard-template-{dagster.__version__}.db"
        )
        super().__init__(base_dir, inst_data)

    @contextmanager
    def _connect(self, shard: str) -> Iterator[sa.Connection]:
        """Dagster's, but the shard's engine is kept instead of built and disposed of around
        every connection: an engine holds the statements it has compiled, so a run's ~20 event
        writes compiled each statement ~20 times. NullPool still: no connection stays open."""
        with self._db_lock:
            engine = self._engines.pop(shard, None) or sa.create_engine(
                self.conn_string_for_shard(shard),
                poolclass=sa.pool.NullPool,
                connect_args={"timeout": SQLITE_BUSY_TIMEOUT_SECONDS},
            )
            self._engines[shard] = engine  # the most recent last
            while len(self._engines) > KEPT_ENGINES:
                self._engines.popitem(last=False)[1].dispose()
            if shard not in self._initialized_dbs:
                self._initdb(engine)
                self._initialized_dbs.add(shard)
            with engine.connect() as connection, connection.begin():
                yield connection

    def _initdb(self, engine: sa.Engine, for_index_shard: bool = False) -> None:
        path = engine.url.database
        if not for_index_shard and path:
            if not os.path.exists(path):
                self._copy_template(path)
            if _stamped(engine):
                return
        super()._initdb(engine, for_index_shard)

    def _copy_template(self, path: str) -> None:
        """Put a ready shard at `path` unless something is there already (then Dagster's own
        initialisation deals with it): copied aside, then linked in, so it appears whole. Dagster
        lists runs by `*.db` files, which the dot-named template and `.new` files are not."""
        if not os.path.exists(self._template):
            aside = f"{self._template}.{_writer()}.new"
            engine = sa.create_engine(f"sqlite:///{aside}", poolclass=sa.pool.NullPool)
            try:
                super()._initdb(engine)
            finally:
                engine.dispose()
            os.replace(aside, self._template)
        aside = f"{path}.{_writer()}.new"
        shutil.copyfile(self._template, aside)
        try:
            os.link(aside, path)
        except FileExistsError:
            pass  # another process created it first
        finally:
            os.unlink(aside)


def _writer() -> str:
    """Unique to this process and thread: the name of a file being written aside."""
    return f"{os.getpid()}-{threading.get_ident()}"


def _stamped(engine: sa.Engine) -> bool:
    """The shard carries an Alembic revision: Dagster's `_initdb` would do nothing to it."""
    try:
        with engine.connect() as connection:
            statement = sa.text("SELECT version_num FROM alembic_version")
            return connection.execute(statement).first() is not None
    except sa.exc.OperationalError:  # no alembic_version table yet
        return False


class SqliteStorage(DagsterSqliteStorage):
    """Dagster's embedded storage with the storages above."""

    def __init__(self, base_dir: str, inst_data: ConfigurableClassData | None = None) -> None:
        # Not super().__init__: it would build (and check) Dagster's own three storages first.
        self.base_dir = base_dir
        self._run_storage = KeptColumnsSqliteRunStorage.from_local(runs_directory(base_dir))
        self._event_log_storage = TemplateShardEventLogStorage(event_logs_directory(base_dir))
        self._schedule_storage = SqliteScheduleStorage.from_local(schedule_directory(base_dir))
        self._inst_data = inst_data
        super(DagsterSqliteStorage, self).__init__()

    @classmethod
    def from_config_value(  # type: ignore[override]
        cls, inst_data: ConfigurableClassData, config_value: dict[str, Any]
    ) -> Self:
        return cls.from_local(inst_data=inst_data, **config_value)


class PostgresStorage(DagsterPostgresStorage):
    """Dagster's PostgreSQL storage with the run storage above."""

    def __init__(
        self,
        postgres_url: str,
        should_autocreate_tables: bool = True,
        inst_data: ConfigurableClassData | None = None,
        token_provider: Any = None,
    ) -> None:
        # Not super().__init__: it would build (and check) Dagster's own run storage first.
        self.postgres_url = postgres_url
        self.should_autocreate_tables = should_autocreate_tables
        self._inst_data = inst_data
        options: dict[str, Any] = {"token_provider": token_provider}
        self._run_storage = KeptColumnsPostgresRunStorage(
            postgres_url, should_autocreate_tables, **options
        )
        self._event_log_storage = PostgresEventLogStorage(
            postgres_url, should_autocreate_tables, **options
        )
        self._schedule_storage = PostgresScheduleStorage(
            postgres_url, should_autocreate_tables, **options
        )
        super(DagsterPostgresStorage, self).__init__()

    @classmethod
    def from_config_value(  # type: ignore[override]
        cls, inst_data: ConfigurableClassData | None, config_value: dict[str, Any]
    ) -> Self:
        return cls(
            inst_data=inst_data,
            postgres_url=pg_url_from_config(config_value),
            should_autocreate_tables=config_value.get("should_autocreate_tables", True),
            token_provider=get_token_provider_from_config(config_value),
        )
