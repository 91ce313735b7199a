"""Real local PostgreSQL databases for tests (a missing server skips locally, fails under CI=true).

The real Dagster used by end-to-end tests is `flowmaestro_dagster.testing.stack.DagsterStack`.
"""

import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import NoReturn

import pytest
import sqlalchemy as sa

from flowmaestro_dagster.store.db import dispose_engines, migrate
from flowmaestro_dagster.testing.stack import DagsterStack, free_port

PG_ADMIN_URL = os.environ.get(
    "FLOWMAESTRO_TEST_PG_ADMIN_URL", "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres"
)
REDIS_URL = os.environ.get("FLOWMAESTRO_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def _unreachable(service: str, url: str, exc: Exception) -> NoReturn:
    if os.environ.get("CI") == "true":
        pytest.fail(f"{service} is required under CI=true and is unreachable: {exc}")
    pytest.skip(f"{service} not reachable at {url} (run scripts/services.sh)")


def require_postgres(url: str = PG_ADMIN_URL) -> None:
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as connection:
            connection.execute(sa.text("SELECT 1"))
    except sa.exc.OperationalError as exc:
        _unreachable("PostgreSQL", url, exc)
    finally:
        engine.dispose()


def require_redis() -> None:
    import redis

    try:
        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2).ping()
    except redis.RedisError as exc:
        _unreachable("Redis", REDIS_URL, exc)


def _admin() -> sa.Engine:
    return sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool)


def pg_url(database: str) -> str:
    return PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{database}"


def create_pg_database(template: str | None = None) -> str:
    name = f"fm_test_{uuid.uuid4().hex[:12]}"
    with _admin().connect() as connection:
        clause = f" TEMPLATE {template}" if template else ""
        connection.execute(sa.text(f"CREATE DATABASE {name}{clause}"))
    return name


@contextmanager
def fresh_pg_database() -> Iterator[str]:
    """The URL of a new, empty PostgreSQL database, dropped after (skips without PostgreSQL)."""
    require_postgres()
    name = create_pg_database()
    try:
        yield pg_url(name)
    finally:
        drop_pg_database(name)


def drop_pg_database(name: str) -> None:
    dispose_engines()
    with _admin().connect() as connection:
        connection.execute(
            sa.text(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = :name AND pid <> pg_backend_pid()"
            ),
            {"name": name},
        )
        connection.execute(sa.text(f"DROP DATABASE IF EXISTS {name}"))


@contextmanager
def migrated_template(kind: str, workdir: Path) -> Iterator[str]:
    """A migrated database to copy per test (a SQLite file or a PostgreSQL template)."""
    if kind == "sqlite":
        path = workdir / "template.db"
        migrate(f"sqlite:///{path}")
        yield str(path)
        return
    require_postgres()
    name = create_pg_database()
    try:
        migrate(pg_url(name))
        yield name
    finally:
        drop_pg_database(name)


@contextmanager
def database_from(kind: str, template: str, workdir: Path) -> Iterator[str]:
    """A fresh database URL cloned from the template."""
    if kind == "sqlite":
        path = workdir / f"{uuid.uuid4().hex[:10]}.db"
        shutil.copy(template, path)
        yield f"sqlite:///{path}"
        dispose_engines()
        return
    name = create_pg_database(template)
    try:
        yield pg_url(name)
    finally:
        drop_pg_database(name)


__all__ = ["DagsterStack", "free_port"]
