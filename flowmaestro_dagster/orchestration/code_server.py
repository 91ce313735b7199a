"""One code-server process for every deployed-workflow location (`flowmaestro code-server`).

Dagster's own code server serves one location per process, and reloading it starts a new
process that imports everything and compiles and snapshots every job of the location again
(docs/deployment.md: at 1,000 workflows in one location a deploy took ~50 s). Here one process
serves all `flowmaestro-workflows-<i>` locations, each on its own gRPC endpoint (a unix socket,
or `port + i`) as the workspace's `grpc_server` entries expect, and a reload rebuilds only the
reloaded shard, in process: the shard's repository is read again from the platform database,
and only versions not built before are compiled (`definitions.build_shard` keeps the built jobs,
whose Dagster snapshots are cached on them). The webserver then fetches the job snapshots of
that one location only; locations are small because shards cost no process each.

Every endpoint answers Dagster's whole code-server API (runs, schedules, partitions) with
Dagster's own servicer; only ReloadCode differs, and how server-id polls and job snapshots are
sent (uncompressed; a reload's snapshots serialized once for all the clients that fetch them).
"""

import gc
import logging
import os
import signal
import sys
import threading
import time
import uuid
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc  # type: ignore[import-untyped]  # no stubs; Dagster's transport

from flowmaestro_dagster.dagster_internals import (
    DagsterApiServer,
    DagsterGrpcServer,
    ExternalJobReply,
    FuturesAwareThreadPoolExecutor,
    LoadableTargetOrigin,
    LoadedRepositories,
    ReloadCodeReply,
    serializable_error_info_from_exc_info,
)
from flowmaestro_dagster.orchestration.workspace import (
    MODULE,
    SHARD_LOCATION,
    CodeServerAddress,
    one_build_per_load,
)

log = logging.getLogger(__name__)

# Calls served at once over all locations (snapshot fetches of a reload, run launches, pings).
DEFAULT_THREADS = 16
# A reload's new server id is announced once the reloading client has fetched every job of the
# location, or after this long at the latest (see ShardApiServer).
ANNOUNCE_AFTER_SECONDS = 15.0
# Every client fetches every job's snapshot again and again: the webserver's watcher and the
# daemon after each reload, and the daemon every location every minute (Dagster's daemon
# refreshes its whole workspace every 60 s). A snapshot is serialized once per job (~2 ms,
# ~60 KB) and kept compressed (~8 KB; 0.15 ms to inflate): ~80 MB at 10,000 jobs.
SNAPSHOT_COMPRESSION_LEVEL = 1
SHUTDOWN_GRACE_SECONDS = 10
# Dagster's gRPC server gzips every answer. The two calls that dominate its CPU here, the
# watchers' server-id polls (a new connection each, 2 per location and second) and the job
# snapshots of a reload (~50 KB each), are sent as they are: a third less CPU per poll, and
# no compressing and decompressing on either side of a reload (they are local or LAN calls).
UNCOMPRESSED = grpc.Compression.NoCompression


class ShardApiServer(DagsterApiServer):
    """Dagster's code-server servicer for one shard location, with a reload that stays in the
    process: a new repository from the database (unchanged jobs reused) and a new server id.

    The webserver and the daemon poll each location's server id every second and fetch the
    whole location again when it changes. So the new id is announced only once the client that
    asked for the reload (the webserver, for the API's deploy) has fetched the new repository:
    the daemon's and the webserver's own refreshes then follow it instead of competing with it
    for the CPU (on 2 cores, three concurrent fetches of a 300-job location took 8-10 s).
    """

    def __init__(
        self,
        shard: int,
        *,
        termination: threading.Event,
        executor: FuturesAwareThreadPoolExecutor,
    ) -> None:
        self.location_name = SHARD_LOCATION.format(shard)
        self._lock = threading.Lock()
        self._snapshots: dict[str, tuple[Any, bytes]] = {}  # job name: (job, its reply)
        self._unfetched: set[str] = set()  # jobs of a reload not fetched yet
        self._next_server_id: str | None = None  # the reload's id, until announced
        with one_build_per_load():
            super().__init__(
                server_termination_event=termination,
                logger=log,
                server_threadpool_executor=executor,
                loadable_target_origin=LoadableTargetOrigin(
                    executable_path=sys.executable,
                    module_name=MODULE,
                    attribute=f"shard_{shard}",
                ),
                # A location that fails to load (database down) answers with its error, as a
                # Dagster code server does, instead of stopping every other location.
                lazy_load_user_code=True,
                location_name=self.location_name,
            )

    def ReloadCode(self, request: Any, context: Any) -> Any:  # Dagster's gRPC method name
        started = time.perf_counter()
        # Dagster's servicer reads `_loaded_repositories` / `_serializable_load_error` and
        # answers GetServerId with `_server_id`; a reload swaps the first two under its lock
        # and `_server_id` once the new repository has been fetched.
        with self._reload_lock, one_build_per_load():
            try:
                loaded: Any = LoadedRepositories(
                    self._loadable_target_origin,
                    entry_point=self._entry_point,
                    container_image=self._container_image,
                    container_context=self._container_context,
                    code_location_name=self.location_name,
                )
                error = None
                jobs = {
                    job.name
                    for repository in loaded.definitions_by_name.values()
                    for job in repository.get_all_jobs()
                }
            except Exception:  # the location shows the error, as after a failed restart
                loaded, error = None, serializable_error_info_from_exc_info(sys.exc_info())
                jobs = set()
                log.exception("reloading %s failed", self.location_name)
            with self._lock:
                self._loaded_repositories = loaded
                self._serializable_load_error = error
                self._snapshots = {n: v for n, v in self._snapshots.items() if n in jobs}
                self._unfetched = jobs
                self._next_server_id = str(uuid.uuid4())
                announced = self._next_server_id
            if not jobs:
                self._announce()
        timer = threading.Timer(ANNOUNCE_AFTER_SECONDS, lambda: self._announce(announced))
        timer.daemon = True
        timer.start()
        log.info("reloaded %s in %.2f s", self.location_name, time.perf_counter() - started)
        return ReloadCodeReply()

    def GetServerId(self, request: Any, context: Any) -> Any:  # Dagster's gRPC method name
        """What the webserver's and the daemon's watchers ask every location every second."""
        context.set_compression(UNCOMPRESSED)
        return super().GetServerId(request, context)

    def ExternalJob(self, request: Any, context: Any) -> Any:  # Dagster's gRPC method name
        """A job's snapshot, serialized once per job (see SNAPSHOT_COMPRESSION_LEVEL)."""
        context.set_compression(UNCOMPRESSED)
        job = self._current_job(request.job_name)
        with self._lock:
            cached = self._snapshots.get(request.job_name)
        if job is not None and cached is not None and cached[0] is job:
            reply = ExternalJobReply(serialized_job_data=zlib.decompress(cached[1]).decode())
        else:
            reply = super().ExternalJob(request, context)  # or Dagster's error answer
            if job is not None and reply.serialized_job_data:
                packed = zlib.compress(
                    reply.serialized_job_data.encode(), SNAPSHOT_COMPRESSION_LEVEL
                )
                with self._lock:
                    self._snapshots[request.job_name] = (job, packed)
        with self._lock:
            self._unfetched.discard(request.job_name)
            fetched = self._next_server_id is not None and not self._unfetched
        if fetched:
            self._announce()
        return reply

    def _current_job(self, name: str) -> Any:
        """The loaded job called `name` (None: not in this location, or it failed to load)."""
        loaded = self._loaded_repositories
        if loaded is None:
            return None
        for repository in loaded.definitions_by_name.values():
            if repository.has_job(name):
                return repository.get_job(name)
        return None

    def _announce(self, server_id: str | None = None) -> None:
        """Answer GetServerId with the last reload's id (the watchers then fetch again);
        `server_id`: only if that reload is still the last one."""
        with self._lock:
            if self._next_server_id is not None and server_id in (None, self._next_server_id):
                self._server_id, self._next_server_id = self._next_server_id, None
                self._unfetched = set()


@dataclass
class SharedCodeServer:
    """The shard locations' servers in this process; `serve` blocks until `stop`."""

    servers: list[DagsterGrpcServer]
    termination: threading.Event

    def serve(self) -> None:
        threads = [
            threading.Thread(target=server.serve, name=f"code-server-{i}", daemon=True)
            for i, server in enumerate(self.servers)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    def stop(self) -> None:
        self.termination.set()


def start_code_server(
    address: CodeServerAddress, shards: int, *, threads: int = DEFAULT_THREADS
) -> SharedCodeServer:
    """Load every shard and bind its endpoint (a location loads before the next one binds)."""
    termination = threading.Event()
    executor = FuturesAwareThreadPoolExecutor(max_workers=threads, thread_name_prefix="code-server")
    if address.socket_dir is not None:
        address.socket_dir.mkdir(parents=True, exist_ok=True)
    servers = []
    for shard in range(shards):
        servicer = ShardApiServer(shard, termination=termination, executor=executor)
        socket, port = address.endpoint(shard)
        servers.append(
            DagsterGrpcServer(
                termination,
                servicer,
                log,
                executor,
                host=address.host,
                port=port,
                socket=str(socket) if socket is not None else None,
            )
        )
    return SharedCodeServer(servers=servers, termination=termination)


def serve_forever(
    address: CodeServerAddress, shards: int, *, ready_file: Path | None = None
) -> int:
    """`flowmaestro code-server`: serve until SIGINT or SIGTERM; `ready_file` is written once
    every location answers (what `flowmaestro dev` waits for before starting Dagster)."""
    started = time.perf_counter()
    # On SIGINT/SIGTERM, calls in flight get this long (Dagster's default: 60 s per location).
    os.environ.setdefault("DAGSTER_GRPC_SHUTDOWN_GRACE_PERIOD", str(SHUTDOWN_GRACE_SECONDS))
    server = start_code_server(address, shards)
    # Every job loaded at start stays out of the cyclic collector's full passes: with 10,000
    # jobs a pass walks ~1.5 GB of snapshots for seconds, stalling the reload it lands in.
    # (A startup job that later leaves and sits in a cycle is not collected: bounded by the
    # startup heap, the same trade-off as gc.freeze() before forking workers.)
    gc.freeze()

    def stop(_signum: int, _frame: object) -> None:
        server.stop()

    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, stop)
    watcher = threading.Thread(target=server.serve, name="code-server", daemon=True)
    watcher.start()
    log.info(
        "code server: %d location(s) at %s, loaded in %.1f s",
        shards,
        address.describe(),
        time.perf_counter() - started,
    )
    if ready_file is not None:
        ready_file.write_text(str(shards))
    while watcher.is_alive():
        watcher.join(0.5)
    return 0


def wait_until_ready(ready_file: Path, process: Any, *, timeout: float, poll: float = 0.2) -> bool:
    """Whether `process` (a Popen of `flowmaestro code-server`) wrote `ready_file` in time."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ready_file.exists():
            return True
        if process.poll() is not None:
            return False
        time.sleep(poll)
    return False


def code_server_command(
    address: CodeServerAddress, shards: int, ready_file: Path, executable: Sequence[str]
) -> list[str]:
    """The `flowmaestro code-server` command line for `address` (`executable`: how to run
    `flowmaestro`)."""
    command = [*executable, "code-server", "--shards", str(shards)]
    if address.socket_dir is not None:
        command += ["--socket-dir", str(address.socket_dir)]
    else:
        command += ["--host", address.host, "--port", str(address.port)]
    return [*command, "--ready-file", str(ready_file)]
