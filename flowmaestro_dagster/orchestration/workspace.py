"""The Dagster workspace: examples, platform sensors, and the deployed-workflow shards.

The shard locations are either all served by one `flowmaestro code-server` process
(`grpc_server` entries at a `CodeServerAddress`: the default, see orchestration/code_server.py)
or each by a code server that `dagster dev` starts and restarts on every reload
(`python_module` entries: `FLOWMAESTRO_CODE_SERVER=per_location`).
"""

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Any

EXAMPLES_LOCATION = "flowmaestro-examples"
PLATFORM_LOCATION = "flowmaestro-platform"
SHARD_LOCATION = "flowmaestro-workflows-{}"
MODULE = "flowmaestro_dagster.definitions"
# A unix socket path is at most 107 bytes; longer directories get a short one (code_server_dir).
MAX_SOCKET_PATH = 100


GENERATED = "# Written by `flowmaestro dev` from FLOWMAESTRO_CODE_LOCATION_SHARDS; edits are lost."


@dataclass(frozen=True)
class CodeServerAddress:
    """Where the shared code server serves shard `i`: `socket_dir/shard-<i>.sock`, or
    `host:port + i` when there is no socket directory (servers on other machines)."""

    socket_dir: Path | None = None
    host: str = "127.0.0.1"
    port: int = 4100

    def endpoint(self, shard: int) -> tuple[Path | None, int | None]:
        """(socket, port) of shard `shard`: exactly one is set."""
        if self.socket_dir is not None:
            return self.socket_dir / f"shard-{shard}.sock", None
        return None, self.port + shard

    def describe(self) -> str:
        return str(self.socket_dir) if self.socket_dir else f"{self.host}:{self.port}+<shard>"


def render_workspace(
    shards: int,
    header: str = GENERATED,
    *,
    examples: bool = True,
    code_server: CodeServerAddress | None = None,
) -> str:
    """workspace.yaml; `code_server`: where the shared code server serves the shards (None:
    one `python_module` location each, a code server per location started by `dagster dev`)."""
    entries = [(EXAMPLES_LOCATION, "defs")] if examples else []
    entries += [(PLATFORM_LOCATION, "platform_defs")]
    if code_server is None:
        entries += [(SHARD_LOCATION.format(i), f"shard_{i}") for i in range(shards)]
    lines = [header, "load_from:"]
    for location, attribute in entries:
        lines += [
            "  - python_module:",
            f"      module_name: {MODULE}",
            f"      attribute: {attribute}",
            f"      location_name: {location}",
        ]
    if code_server is not None:
        for shard in range(shards):
            socket, port = code_server.endpoint(shard)
            lines += ["  - grpc_server:"]
            lines += (
                [f"      socket: {socket}"]
                if socket is not None
                else [f"      host: {code_server.host}", f"      port: {port}"]
            )
            lines += [f"      location_name: {SHARD_LOCATION.format(shard)}"]
    return "\n".join(lines) + "\n"


def write_workspace(
    path: Path, shards: int, *, code_server: CodeServerAddress | None = None
) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_workspace(shards, code_server=code_server))
    return path


def code_server_dir(preferred: Path) -> Path:
    """A directory for the shard sockets: `preferred`, or a new one under the system's temporary
    directory when `preferred`'s socket paths would be too long for a unix socket."""
    import tempfile

    if len(str(preferred / "shard-999.sock")) <= MAX_SOCKET_PATH:
        preferred.mkdir(parents=True, exist_ok=True)
        return preferred
    return Path(tempfile.mkdtemp(prefix="fm-code-server-"))


# The shard repositories built during one load of a location (see `one_build_per_load`).
_shard_builds: ContextVar[dict[int, Any] | None] = ContextVar("shard_builds", default=None)


@contextmanager
def one_build_per_load() -> Iterator[None]:
    """Within this block, each shard's repository is built once: Dagster's loader reads a
    location's attribute twice (to find it, then to load it), and a build reads the database."""
    token = _shard_builds.set({})
    try:
        yield
    finally:
        _shard_builds.reset(token)


def shard_builds() -> dict[int, Any] | None:
    """The builds of the enclosing `one_build_per_load` block (None outside one)."""
    return _shard_builds.get()
