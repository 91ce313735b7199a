"""Real local servers for tests: PostgreSQL databases and a running Dagster (webserver + daemon).

Nothing here is a fake: PostgreSQL is the local server, Dagster is `dagster dev` on a temporary
DAGSTER_HOME. A missing PostgreSQL skips locally but fails under CI=true.
"""

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa

from flowmaestro_api.db import dispose_engines, migrate

PG_ADMIN_URL = os.environ.get(
    "FLOWMAESTRO_TEST_PG_ADMIN_URL", "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres"
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def require_postgres() -> None:
    try:
        engine = sa.create_engine(PG_ADMIN_URL, poolclass=sa.pool.NullPool)
        with engine.connect() as connection:
            connection.execute(sa.text("SELECT 1"))
    except sa.exc.OperationalError as exc:
        if os.environ.get("CI") == "true":
            pytest.fail(f"PostgreSQL is required under CI=true and is unreachable: {exc}")
        pytest.skip(f"PostgreSQL not reachable at {PG_ADMIN_URL} (run scripts/services.sh)")


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


INSTANCE_YAML = """
telemetry:
  enabled: false
run_coordinator:
  module: dagster._core.run_coordinator
  class: QueuedRunCoordinator
  config:
    max_concurrent_runs: 10
    dequeue_interval_seconds: 1
"""


class DagsterStack:
    """`dagster dev` (webserver + daemon) on a temporary home, loading the platform location
    and one deployed-workflow shard that read `database_url`."""

    def __init__(
        self, home: Path, database_url: str, *, extra_env: dict[str, str] | None = None
    ) -> None:
        self.home = home
        self.database_url = database_url
        self.port = free_port()
        self.graphql_url = f"http://127.0.0.1:{self.port}/graphql"
        self.ui_url = f"http://127.0.0.1:{self.port}"
        self.extra_env = extra_env or {}
        self.process: subprocess.Popen[bytes] | None = None
        self.log = home / "dagster-dev.log"

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            {
                "DAGSTER_HOME": str(self.home),
                "FLOWMAESTRO_DATABASE_URL": self.database_url,
                "FLOWMAESTRO_DAGSTER_GRAPHQL_URL": self.graphql_url,
                "FLOWMAESTRO_DAGSTER_UI_URL": self.ui_url,
                "FLOWMAESTRO_RECONCILE_AFTER_SECONDS": "2",
                "FLOWMAESTRO_RECONCILER_INTERVAL_SECONDS": "2",
                **self.extra_env,
            }
        )
        return env

    def start(self, timeout: float = 180) -> None:
        from flowmaestro_dagster.workspace import PLATFORM_LOCATION, SHARD_LOCATION

        self.home.mkdir(parents=True, exist_ok=True)
        (self.home / "dagster.yaml").write_text(INSTANCE_YAML)
        workspace = self.home / "workspace.yaml"
        workspace.write_text(
            "load_from:\n"
            f"  - python_module: {{module_name: flowmaestro_dagster.definitions, attribute: platform_defs, location_name: {PLATFORM_LOCATION}}}\n"
            f"  - python_module: {{module_name: flowmaestro_dagster.definitions, attribute: shard_0, location_name: {SHARD_LOCATION.format(0)}}}\n"
        )
        migrate(self.database_url)
        dagster = Path(sys.executable).with_name("dagster")
        signal.signal(signal.SIGINT, signal.default_int_handler)  # children must get SIGINT
        self.process = subprocess.Popen(
            [str(dagster), "dev", "-w", str(workspace), "-h", "127.0.0.1", "-p", str(self.port)],
            env=self.env(),
            stdout=self.log.open("wb"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"dagster dev exited: {self.log.read_text()[-3000:]}")
            try:
                response = httpx.post(
                    self.graphql_url,
                    json={
                        "query": "{ workspaceOrError { __typename ... on Workspace { locationEntries { name loadStatus } } } }"
                    },
                    timeout=5,
                )
                entries = response.json()["data"]["workspaceOrError"].get("locationEntries", [])
                if entries and all(e["loadStatus"] == "LOADED" for e in entries):
                    return
            except (httpx.HTTPError, KeyError, ValueError):
                pass
            time.sleep(1)
        self.stop()
        raise RuntimeError(
            f"dagster dev did not come up in {timeout} s: {self.log.read_text()[-3000:]}"
        )

    def instance(self):  # type: ignore[no-untyped-def]
        from dagster import DagsterInstance

        return DagsterInstance.from_config(str(self.home))

    def stop(self) -> None:
        if self.process is None:
            return
        try:
            os.killpg(self.process.pid, signal.SIGINT)
            self.process.wait(timeout=60)
        except (subprocess.TimeoutExpired, ProcessLookupError):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=30)
        self.process = None
