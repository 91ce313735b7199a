"""A real Dagster for tests and benchmarks: `dagster dev` (webserver + daemon + code locations)
on a temporary DAGSTER_HOME, loading the platform location and deployed-workflow shards."""

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from flowmaestro_dagster.orchestration.instance_config import prepare_storage
from flowmaestro_dagster.orchestration.workspace import render_workspace
from flowmaestro_dagster.store.db import migrate

_WORKSPACE_STATUS = """
{ workspaceOrError { __typename ... on Workspace { locationEntries { name loadStatus } } } }
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


INSTANCE_YAML = """
telemetry:
  enabled: false
run_coordinator:
  module: dagster
  class: QueuedRunCoordinator
  config:
    max_concurrent_runs: 10
    dequeue_interval_seconds: 1
"""


class DagsterStack:
    """`dagster dev` (webserver + daemon) on a temporary home, loading the platform location
    and one deployed-workflow shard that read `database_url`."""

    def __init__(
        self,
        home: Path,
        database_url: str,
        *,
        extra_env: dict[str, str] | None = None,
        shards: int = 1,
        instance_yaml: str | None = None,
    ) -> None:
        self.home = home
        self.shards = shards
        # Default: what `flowmaestro dev` renders (run queue, limits, warm run launcher, retries;
        # the instance storage in PostgreSQL when `database_url` is a PostgreSQL URL).
        self.instance_yaml = instance_yaml if instance_yaml is not None else _rendered(database_url)
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
                "FLOWMAESTRO_CODE_LOCATION_SHARDS": str(self.shards),
                **self.extra_env,
            }
        )
        return env

    def start(self, timeout: float = 180) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        (self.home / "dagster.yaml").write_text(self.instance_yaml)
        workspace = self.home / "workspace.yaml"
        workspace.write_text(render_workspace(self.shards, "# test stack", examples=False))
        migrate(self.database_url)
        prepare_storage(_settings(self.database_url))
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
                    json={"query": _WORKSPACE_STATUS},
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

    def instance(self) -> Any:
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


def _settings(database_url: str) -> Any:
    from flowmaestro_dagster.settings import Settings

    return Settings(database_url=database_url)


def _rendered(database_url: str) -> str:
    from flowmaestro_dagster.orchestration.instance_config import render_instance_yaml

    return render_instance_yaml(_settings(database_url))
