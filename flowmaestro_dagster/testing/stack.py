"""A real Dagster for tests and benchmarks: `dagster dev` (webserver + daemon + code locations)
on a temporary DAGSTER_HOME, loading the platform location and deployed-workflow shards (served,
as `flowmaestro dev` does by default, by one `flowmaestro code-server` process)."""

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx

from flowmaestro_dagster.orchestration.code_server import code_server_command, wait_until_ready
from flowmaestro_dagster.orchestration.instance_config import prepare_storage
from flowmaestro_dagster.orchestration.workspace import (
    CodeServerAddress,
    code_server_dir,
    render_workspace,
)
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


@contextlib.contextmanager
def dagster_home(home: Path) -> Iterator[None]:
    """DAGSTER_HOME set to `home` in this process (an API in process reads the queue from its
    instance), then restored."""
    previous = os.environ.get("DAGSTER_HOME")
    os.environ["DAGSTER_HOME"] = str(home)
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop("DAGSTER_HOME", None)
        else:
            os.environ["DAGSTER_HOME"] = previous


class DagsterStack:
    """`dagster dev` (webserver + daemon) on a temporary home, loading the platform location
    and the deployed-workflow shards that read `database_url`; `shards` and `code_server`
    default to the settings' defaults (FLOWMAESTRO_CODE_LOCATION_SHARDS, _CODE_SERVER).

    `command_prefix` goes before both commands it starts (e.g. `ip netns exec <ns>`: the
    stack on another network namespace, tests/test_multi_host.py); `host` is the address the
    webserver binds and its URLs name."""

    def __init__(
        self,
        home: Path,
        database_url: str,
        *,
        extra_env: dict[str, str] | None = None,
        shards: int | None = None,
        instance_yaml: str | None = None,
        code_server: str | None = None,
        command_prefix: Sequence[str] = (),
        host: str = "127.0.0.1",
    ) -> None:
        from flowmaestro_dagster.settings import Settings

        self.home = home
        self.shards = shards or Settings.model_fields["code_location_shards"].default
        self.code_server = code_server or Settings.model_fields["code_server"].default
        self.code_server_process: subprocess.Popen[bytes] | None = None
        self.code_server_log = home / "code-server.log"
        # Default: what `flowmaestro dev` renders (run queue, limits, warm run launcher, retries;
        # the instance storage in PostgreSQL when `database_url` is a PostgreSQL URL).
        self.instance_yaml = (
            instance_yaml if instance_yaml is not None else _rendered(database_url, home)
        )
        self.database_url = database_url
        self.command_prefix = list(command_prefix)
        self.host = host
        self.port = free_port()
        self.graphql_url = f"http://{host}:{self.port}/graphql"
        self.ui_url = f"http://{host}:{self.port}"
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
                "FLOWMAESTRO_CODE_SERVER": self.code_server,
                **self.extra_env,
            }
        )
        return env

    def start(self, timeout: float = 180) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        (self.home / "dagster.yaml").write_text(self.instance_yaml)
        workspace = self.home / "workspace.yaml"
        migrate(self.database_url)
        prepare_storage(_settings(self.database_url))
        address = self._start_code_server(timeout) if self.code_server == "shared" else None
        workspace.write_text(
            render_workspace(self.shards, "# test stack", examples=False, code_server=address)
        )
        dagster = Path(sys.executable).with_name("dagster")
        command = [str(dagster), "dev", "-w", str(workspace), "-h", self.host, "-p", str(self.port)]
        signal.signal(signal.SIGINT, signal.default_int_handler)  # children must get SIGINT
        self.process = subprocess.Popen(
            [*self.command_prefix, *command],
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

    def _start_code_server(self, timeout: float) -> CodeServerAddress:
        """`flowmaestro code-server` for the shard locations, answering before Dagster starts."""
        address = CodeServerAddress(socket_dir=code_server_dir(self.home / "code-server"))
        ready = self.home / "code-server.ready"
        ready.unlink(missing_ok=True)
        command = code_server_command(
            address, self.shards, ready, [sys.executable, "-m", "flowmaestro_api.cli"]
        )
        self.code_server_process = subprocess.Popen(
            [*self.command_prefix, *command],
            env=self.env(),
            stdout=self.code_server_log.open("wb"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        if not wait_until_ready(ready, self.code_server_process, timeout=timeout):
            self.stop()
            raise RuntimeError(
                f"the code server did not start: {self.code_server_log.read_text()[-3000:]}"
            )
        return address

    def instance(self) -> Any:
        from dagster import DagsterInstance

        return DagsterInstance.from_config(str(self.home))

    def stop(self) -> None:
        """Dagster first (its daemon may be calling the code server), then the code server;
        each one's process group is killed if it has not stopped within a minute."""
        for process in (self.process, self.code_server_process):
            if process is not None:
                _stop(process)
        self.process = self.code_server_process = None


def _stop(process: "subprocess.Popen[bytes]") -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGINT)
    try:
        process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=30)


def _settings(database_url: str) -> Any:
    from flowmaestro_dagster.settings import Settings

    return Settings(database_url=database_url)


def _rendered(database_url: str, home: Path) -> str:
    from flowmaestro_dagster.orchestration.instance_config import render_instance_yaml

    return render_instance_yaml(_settings(database_url), home=home)
