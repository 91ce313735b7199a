"""Engines, sessions and migrations of the platform database (SQLite file or PostgreSQL)."""

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import NullPool

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
_engines: dict[str, Engine] = {}
_lock = threading.Lock()


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")  # readers don't block the writer
    cursor.execute("PRAGMA busy_timeout=30000")  # run workers, sensors and the API share it
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


POOL_SIZE = 10  # connections a process keeps open (get_engine's default)
POOL_CONNECTIONS_MAX = 30  # kept plus overflow (closed when returned), unless the kept are more
PING_IDLE_SECONDS = 10.0


def make_engine(url: str, *, pool_size: int = POOL_SIZE) -> Engine:
    """The engine of one platform database: `pool_size` connections kept (size it for the
    threads that use it at once: a connection past it is opened for one use and closed, which
    on PostgreSQL starts and ends a server process), up to POOL_CONNECTIONS_MAX in all."""
    overflow = max(POOL_CONNECTIONS_MAX - pool_size, 10)
    if url.startswith("sqlite"):
        path = url.removeprefix("sqlite:///")
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        in_memory = path in ("", ":memory:") or url == "sqlite://" or "mode=memory" in url
        sized = {} if in_memory else {"pool_size": pool_size, "max_overflow": overflow}
        engine = create_engine(
            url, connect_args={"check_same_thread": False, "timeout": 30}, **sized
        )
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    engine = create_engine(url, pool_size=pool_size, max_overflow=overflow)
    _ping_when_idle(engine)
    return engine


def _ping_when_idle(engine: Engine) -> None:
    """`pool_pre_ping`, for connections that sat in the pool more than PING_IDLE_SECONDS only:
    a busy pool's checkouts then cost no round trip (a submission is one transaction; a ping
    was one round trip more of six). A connection that fails its ping is replaced (the pool
    retries on DisconnectionError); one that broke while in use fails its statement, and the
    pool then replaces every connection older than that failure."""

    def stamp(_dbapi_connection: Any, record: Any, *_: Any) -> None:
        record.info["returned_at"] = time.monotonic()

    def checkout(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        returned = record.info.get("returned_at")
        if returned is not None and time.monotonic() - returned < PING_IDLE_SECONDS:
            return
        try:
            engine.dialect.do_ping(dbapi_connection)
        except Exception as exc:
            raise DisconnectionError(f"ping failed: {exc}") from exc

    event.listen(engine.pool, "connect", stamp)  # a new connection needs no ping
    event.listen(engine.pool, "checkin", stamp)
    event.listen(engine.pool, "checkout", checkout)


def get_engine(url: str, *, pool_size: int = POOL_SIZE) -> Engine:
    """One engine (and pool) per URL per process; `pool_size` counts when it is made (the
    API sizes its pool for its request and launch threads)."""
    with _lock:
        engine = _engines.get(url)
        if engine is None:
            engine = _engines[url] = make_engine(url, pool_size=pool_size)
        return engine


def dispose_engines() -> None:
    with _lock:
        for engine in _engines.values():
            engine.dispose()
        _engines.clear()


def session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


@contextmanager
def session_scope(source: Engine | sessionmaker[Session]) -> Iterator[Session]:
    """A session (from an engine, or a factory) that commits on success and rolls back on any
    error: the one transaction boundary of sensors, run workers and API requests."""
    session = (
        source() if isinstance(source, sessionmaker) else Session(source, expire_on_commit=False)
    )
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


def migrate(url: str) -> None:
    """Bring the database to the newest schema (alembic upgrade head)."""
    from alembic import command
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    engine = create_engine(url, poolclass=NullPool)
    try:
        with engine.begin() as connection:
            config.attributes["connection"] = connection
            command.upgrade(config, "head")
    finally:
        engine.dispose()
