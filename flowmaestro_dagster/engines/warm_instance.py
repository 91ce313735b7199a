"""The Dagster instance a run worker uses, built once in the launcher's forkserver.

Building an instance costs a run worker 0.15-0.2 s of CPU on SQLite (each storage loads
Alembic's ~90 revision files to compare schema versions) and a round of table inspections on
PostgreSQL: a large share of a small run's CPU. Importing this module builds the instance of
`DAGSTER_HOME`: only the launcher's forkserver imports it (after its preloads), so the instance
exists before any run worker is forked, and each fork inherits it ready. That is safe because
Dagster's storages hold no connection between operations (NullPool engines) and start no
thread until something watches events: a fork copies no open socket and no held lock.

A run launched for another instance (its ref differs) gets its own, as before. Either way the
instance captures the run's output in process (`compute_logs.MirroredComputeLogManager`).

In the run worker (after the fork), `keep_connections` makes the PostgreSQL storages keep their
connections open for the run, as Dagster's webserver does: a small run otherwise opens ~37
connections, one per storage operation (a new PostgreSQL backend each time, 7 ms apiece on the
client alone)."""

import os
from typing import Any

from dagster import DagsterEventType, DagsterInstance

from flowmaestro_dagster.dagster_internals import InstanceRef
from flowmaestro_dagster.engines.compute_logs import run_worker_ref
from flowmaestro_dagster.settings import get_settings


def _build() -> tuple[DagsterInstance, InstanceRef] | None:
    home = os.environ.get("DAGSTER_HOME")
    if not home:
        return None
    try:
        get_settings()  # the platform's settings, parsed once for every run worker
        ref = InstanceRef.from_dir(home)
        instance = DagsterInstance.from_ref(run_worker_ref(ref))
        # One read through the event index, so that (on SQLite) its schema check is done here
        # too; a run's own event shard is new per run (one query: engines/storage.py).
        instance.fetch_run_status_changes(DagsterEventType.RUN_SUCCESS, limit=1)
    except Exception:  # noqa: BLE001 - a warm-up only: each run worker builds its own instead
        return None
    return instance, ref


def instance_for(instance_ref: Any) -> DagsterInstance:
    """The forkserver's instance when it is the one the run was launched for, else a new one
    (used as a context manager: the run worker disposes it when the run ends)."""
    if _warm is not None and _warm[1] == instance_ref:
        return _warm[0]
    return DagsterInstance.from_ref(run_worker_ref(instance_ref))


# A run's steps write events from several threads (the threaded executor): beyond the one kept
# connection per storage, this many more are opened while needed and closed after.
OVERFLOW_CONNECTIONS = 8


def keep_connections(instance: DagsterInstance) -> None:
    """Pooled storage engines for this process (PostgreSQL; a no-op on SQLite). Only after the
    fork: a connection must never be shared by two processes."""
    instance.optimize_for_webserver(
        statement_timeout=0, pool_recycle=3600, max_overflow=OVERFLOW_CONNECTIONS
    )


_warm = _build()
