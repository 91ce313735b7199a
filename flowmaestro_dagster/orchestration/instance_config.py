"""The Dagster instance configuration (`dagster.yaml`), rendered from the platform settings.

Limits live in `FLOWMAESTRO_*` settings, not in hand-edited YAML: `flowmaestro dev` writes
`DAGSTER_HOME/dagster.yaml` from `render_instance_yaml(settings)` and the committed
`dagster_home/dagster.yaml` is that rendering for the default settings.

The file is a list of sections; each is a function `settings -> {top-level key: value}`.
To add one (storage, run retries, run monitoring ...), write such a function and put it in
`SECTIONS` — nothing else changes. Dagster rejects some combinations: `run_queue` excludes a
`run_coordinator` entry, and with `concurrency: runs:` the run limits must not also appear
under the coordinator's config (see `dagster._core.instance.config`).

The run queue (see docs/queues.md):

* `run_coordinator` — Dagster's QueuedRunCoordinator, as `SubsecondRunCoordinator`
  (flowmaestro_dagster/engines/run_queue.py: the same class, taking a fractional
  `dequeue_interval_seconds`); its daemon dequeues every `dequeue_interval_seconds`, highest
  `dagster/priority` first, FIFO among equals;
* `concurrency: runs:` — `max_concurrent_runs`, and tag limits on the tags the API puts on
  every run (`run_tags` in flowmaestro_dagster/control/executions.py): one per user
  (`USER_TAG`, the hidden `.dagster/flowmaestro/user`: the user's id, per unique value), one for
  "one at a time per user" workflows (`USER_WORKFLOW_TAG`, hidden, per unique value, limit 1),
  one per named queue
  (`flowmaestro/queue`), a limit of 0 on `flowmaestro/queue_paused: true` (a paused queue's
  runs), and one per-unique-value rule per per-user limit an operator may set live
  (`.dagster/flowmaestro/user_limit/<n>`, n below the per-user limit);
* `concurrency: pools:` — per-workflow limits are pools (one per workflow, on every op) whose
  slot counts the API sets at runtime; `granularity: run` makes a slot a run, not an op.

Storage (docs/deployment.md): SQLite under DAGSTER_HOME by default; with a PostgreSQL
`FLOWMAESTRO_DATABASE_URL`, PostgreSQL storage in the same database, schema
`FLOWMAESTRO_DAGSTER_SCHEMA` (`dagster`). Same database, so one server, one backup and one
setting; own schema, because Dagster and the API's migrations both keep their revision in a
table named `alembic_version` (no other table name is shared). `prepare_storage` creates the
schema (Dagster creates its tables on first use, never the schema). Both are Dagster's storages
as `storage: custom:` subclasses that check their schema once (engines/storage.py).
"""

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import sqlalchemy as sa
import yaml  # type: ignore[import-untyped]  # PyYAML ships no stubs; Dagster depends on it

from flowmaestro_dagster.control.queues import user_limit_ceiling
from flowmaestro_dagster.settings import Settings
from flowmaestro_dagster.tags import (
    CONCURRENCY_KEY_TAG,
    QUEUE_PAUSED_TAG,
    QUEUE_TAG,
    USER_TAG,
    USER_WORKFLOW_TAG,
    user_limit_tag,
)

Section = Callable[[Settings], Mapping[str, Any]]

HEADER = (
    "# The Dagster instance. Written by `flowmaestro dev` from the FLOWMAESTRO_* settings\n"
    "# (flowmaestro_dagster/orchestration/instance_config.py); edits are lost.\n"
    "# Storage: SQLite under DAGSTER_HOME unless a storage section says otherwise.\n"
)


def telemetry_section(settings: Settings) -> Mapping[str, Any]:
    return {"telemetry": {"enabled": False}}


RUN_COORDINATOR = {
    "module": "flowmaestro_dagster.engines.run_queue",
    "class": "SubsecondRunCoordinator",
}


def run_queue_section(settings: Settings) -> Mapping[str, Any]:
    """The run queue: Dagster's QueuedRunCoordinator with a sub-second dequeue interval (the
    limits are under `concurrency: runs:`)."""
    run_queue: dict[str, Any] = {
        "dequeue_interval_seconds": settings.dequeue_interval_seconds,
        # A deploy reloads a code location; a run dequeued meanwhile is put back in the queue
        # (up to 3 times, 5 s apart) instead of being failed.
        "max_user_code_failure_retries": 3,
        "user_code_failure_retry_delay": 5,
    }
    if settings.dequeue_use_threads:
        run_queue["dequeue_use_threads"] = True
        if settings.dequeue_num_workers is not None:
            run_queue["dequeue_num_workers"] = settings.dequeue_num_workers
    return {"run_coordinator": {**RUN_COORDINATOR, "config": run_queue}}


def tag_concurrency_limits(settings: Settings) -> list[dict[str, Any]]:
    """Per user, one-at-a-time-per-user workflows, and each named queue."""
    limits: list[dict[str, Any]] = []
    if settings.user_run_limit is not None:
        limits.append(
            {
                "key": USER_TAG,
                "value": {"applyLimitPerUniqueValue": True},
                "limit": settings.user_run_limit,
            }
        )
    # Only runs of workflows with the switch on carry this tag (value: workflow and user).
    limits.append(
        {"key": USER_WORKFLOW_TAG, "value": {"applyLimitPerUniqueValue": True}, "limit": 1}
    )
    # Only runs of workflows whose queueConfig node names a key carry this tag.
    limits.append(
        {"key": CONCURRENCY_KEY_TAG, "value": {"applyLimitPerUniqueValue": True}, "limit": 1}
    )
    for name, limit in sorted(settings.queue_limits.items()):
        limits.append({"key": QUEUE_TAG, "value": name, "limit": limit})
    # A paused queue's queued runs carry this tag (POST /queues/{name}/pause): a limit of 0.
    limits.append({"key": QUEUE_PAUSED_TAG, "value": "true", "limit": 0})
    # One rule per per-user limit an operator can set live (PUT /queues/users/{id}/limit): a
    # user with their own limit n has their runs tagged `user_limit_tag(n)` = their id.
    for limit in range(user_limit_ceiling(settings)):
        limits.append(
            {
                "key": user_limit_tag(limit),
                "value": {"applyLimitPerUniqueValue": True},
                "limit": limit,
            }
        )
    return limits


def concurrency_section(settings: Settings) -> Mapping[str, Any]:
    return {
        "concurrency": {
            "runs": {
                "max_concurrent_runs": settings.max_concurrent_runs,
                "tag_concurrency_limits": tag_concurrency_limits(settings),
            },
            # No default_limit: a pool without a limit set (a workflow without one) is free.
            "pools": {"granularity": settings.pool_granularity},
        }
    }


def run_monitoring_section(settings: Settings) -> Mapping[str, Any]:
    """Detects run workers that died; a run that outlives the max runtime is failed."""
    monitoring: dict[str, Any] = {
        "enabled": True,
        "poll_interval_seconds": 5,
        "start_timeout_seconds": 180,
    }
    if settings.run_max_runtime_seconds:
        monitoring["max_runtime_seconds"] = settings.run_max_runtime_seconds
    return {"run_monitoring": monitoring}


def run_retries_section(settings: Settings) -> Mapping[str, Any]:
    """A run whose worker died is re-executed from failure (finished nodes are not redone).

    Op failures are not retried at the run level: nodes have their own retry policies.
    """
    if not settings.run_retries:
        return {}
    return {
        "run_retries": {
            "enabled": True,
            "max_retries": settings.run_retries,
            "retry_on_asset_or_op_failure": False,
        }
    }


def run_launcher_section(settings: Settings) -> Mapping[str, Any]:
    """Warm run workers forked from a preloaded server (flowmaestro_dagster/engines/launcher.py)."""
    if settings.run_launcher != "forkserver":
        return {}
    launcher: dict[str, Any] = {
        "module": "flowmaestro_dagster.engines.launcher",
        "class": "ForkserverRunLauncher",
    }
    if not settings.run_keep_connections:
        launcher["config"] = {"keep_connections": False}
    return {"run_launcher": launcher}


def storage_url(settings: Settings) -> str:
    """The database URL with the Dagster schema as the connections' search path."""
    url = sa.make_url(settings.database_url)
    url = url.update_query_dict({"options": f"-csearch_path={settings.dagster_schema}"})
    return url.render_as_string(hide_password=False)


STORAGE_MODULE = "flowmaestro_dagster.engines.storage"


def storage_section(settings: Settings) -> Mapping[str, Any]:
    """Runs, event logs and schedules in PostgreSQL when the platform database is: Dagster's
    PostgreSQL storage that checks its schema once (engines/storage.py). SQLite: see
    `sqlite_storage`, which needs the home's path."""
    if not settings.postgres:
        return {}
    return _custom_storage("PostgresStorage", postgres_url=storage_url(settings))


def sqlite_storage(home: Path) -> Mapping[str, Any]:
    """The embedded storage under `home`, checking its schema once (engines/storage.py). Where
    the home is not known (the committed, portable file) the section is left out and Dagster's
    own embedded storage, the same files, is used."""
    return _custom_storage("SqliteStorage", base_dir=str(home.resolve()))


def _custom_storage(name: str, **config: str) -> Mapping[str, Any]:
    return {"storage": {"custom": {"module": STORAGE_MODULE, "class": name, "config": config}}}


def prepare_storage(settings: Settings) -> None:
    """Create the Dagster schema of a PostgreSQL database (idempotent; SQLite: nothing)."""
    if not settings.postgres:
        return
    engine = sa.create_engine(settings.database_url, poolclass=sa.pool.NullPool)
    try:
        with engine.begin() as connection:
            connection.execute(sa.text(f'CREATE SCHEMA IF NOT EXISTS "{settings.dagster_schema}"'))
    finally:
        engine.dispose()


SECTIONS: tuple[Section, ...] = (
    telemetry_section,
    run_queue_section,
    concurrency_section,
    run_monitoring_section,
    run_retries_section,
    run_launcher_section,
    storage_section,
)


def instance_config(
    settings: Settings, sections: Sequence[Section] = SECTIONS, home: Path | None = None
) -> dict[str, Any]:
    """The configuration as data; a key set by two sections is a bug, so it raises. With the
    `home` it is written to, SQLite's storage section too (`sqlite_storage`)."""
    config: dict[str, Any] = {}
    extra = [sqlite_storage(home)] if home is not None and not settings.postgres else []
    for part in [*(section(settings) for section in sections), *extra]:
        for key, value in part.items():
            if key in config:
                raise ValueError(f"instance config key {key!r} is set by two sections")
            config[key] = value
    return config


def render_instance_yaml(
    settings: Settings, sections: Sequence[Section] = SECTIONS, home: Path | None = None
) -> str:
    """`dagster.yaml` text: the header, then one block per top-level key."""
    blocks = [
        yaml.safe_dump({key: value}, sort_keys=False, default_flow_style=False)
        for key, value in instance_config(settings, sections, home).items()
    ]
    return HEADER + "\n" + "\n".join(blocks)


def write_instance_yaml(home: Path, settings: Settings) -> Path:
    """Write `dagster.yaml` (owner-only: a PostgreSQL URL may hold a password)."""
    path = home / "dagster.yaml"
    home.mkdir(parents=True, exist_ok=True)
    path.write_text(render_instance_yaml(settings, home=home))
    if settings.postgres:
        path.chmod(0o600)
    return path
