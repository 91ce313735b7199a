"""The Dagster code locations; the only place that wires Dagster.

* `defs` — the example workflows in `workflows/` (location `flowmaestro-examples`);
* `platform_defs` — the platform's sensors (location `flowmaestro-platform`);
* `shard_<i>` — the workflow versions deployed through the API, split over
  `FLOWMAESTRO_CODE_LOCATION_SHARDS` locations so a deploy reloads only one
  (location `flowmaestro-workflows-<i>`). Jobs there are built lazily: a run worker compiles
  only its own job. A deployed version whose trigger is a schedule adds a schedule that
  targets its job by name (docs/triggers.md). A process that builds a shard again (the shared
  code server reloading it, orchestration/code_server.py) reuses the jobs it already built.
"""

import hashlib
import json
from collections.abc import Callable
from typing import Any

import dagster as dg

from flowmaestro_dagster.adapter.ops import INPUTS_RESOURCE, SERVICES_RESOURCE
from flowmaestro_dagster.adapter.resources import default_resources, workflow_inputs_resource
from flowmaestro_dagster.orchestration.catalog import load_catalog
from flowmaestro_dagster.orchestration.workspace import shard_builds
from flowmaestro_dagster.settings import get_settings

# The jobs this process built for each shard: job name -> (definition digest, job). Building a
# shard again compiles only new versions, and Dagster's snapshot of a job (cached on its
# JobDefinition, ~8 ms each to compute) is computed once per process. A rebuild keeps only the
# shard's current jobs, so versions that left the shard are dropped.
_built_jobs: dict[int, dict[str, tuple[str, dg.JobDefinition]]] = {}


def definition_digest(definition: dict[str, Any]) -> str:
    """What identifies a definition's content (a version's never changes; this guards it)."""
    encoded = json.dumps(definition, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.blake2b(encoded.encode(), digest_size=16).hexdigest()


def node_resources(*, database_outputs: bool = False) -> dict[str, Any]:
    """The ops' resources; `database_outputs`: the platform's (outputs and waitpoints in its
    database, so a resumed run reads what the parked run produced)."""
    if not database_outputs:
        return default_resources()
    from flowmaestro_dagster.adapter.io_manager import NodeOutputIOManager
    from flowmaestro_dagster.orchestration.resources import PlatformResource

    return {
        INPUTS_RESOURCE: workflow_inputs_resource,
        SERVICES_RESOURCE: PlatformResource(),
        "io_manager": NodeOutputIOManager(),
    }


def build_definitions() -> dg.Definitions:
    catalog = load_catalog(get_settings().workflows_dir, resource_defs=node_resources())
    jobs = [entry.compiled.job for entry in catalog if entry.compiled is not None]
    return dg.Definitions(jobs=jobs)


@dg.definitions
def defs() -> dg.Definitions:
    return build_definitions()


@dg.definitions
def platform_defs() -> dg.Definitions:
    from flowmaestro_dagster.orchestration.sensors import platform_sensors
    from flowmaestro_dagster.store.db import get_engine, migrate

    settings = get_settings()
    migrate(settings.database_url)
    get_engine(settings.database_url)
    if settings.python_isolation == "none":  # said when the platform starts, not at a first node
        from flowmaestro_dagster.nodes.sandbox.python import warn_unisolated

        warn_unisolated()
    return dg.Definitions(sensors=platform_sensors())


def build_shard(shard: int) -> dg.RepositoryDefinition:
    """Deployed workflow versions of one shard, as a repository of lazily built jobs."""
    from sqlalchemy.exc import OperationalError

    from flowmaestro_dagster.control.schedules import WorkflowSchedule, deployed_schedules
    from flowmaestro_dagster.control.workflows import loadable_versions
    from flowmaestro_dagster.engines.jobs import build_job
    from flowmaestro_dagster.store.db import get_engine, migrate, session_scope
    from flowmaestro_dagster.tags import pool_op_tags

    settings = get_settings()

    def load() -> tuple[list[tuple[str, dict[str, Any], str]], list[WorkflowSchedule]]:
        with session_scope(get_engine(settings.database_url)) as session:
            rows = loadable_versions(session, shard=shard, shards=settings.code_location_shards)
            schedules = deployed_schedules(
                session, rows, default_timezone=settings.schedule_timezone
            )
            return [(row.job_name, row.definition, row.workflow_id) for row in rows], schedules

    try:
        versions, schedules = load()
    except OperationalError:  # a new database: migrate once (run workers skip this cost)
        migrate(settings.database_url)
        versions, schedules = load()
    resources = node_resources(database_outputs=True)
    built = _built_jobs.setdefault(shard, {})
    for gone in set(built) - {name for name, _, _ in versions}:
        del built[gone]

    def loader(
        job_name: str, definition: dict[str, Any], workflow_id: str
    ) -> Callable[[], dg.JobDefinition]:
        def load() -> dg.JobDefinition:
            digest = definition_digest(definition)
            cached = built.get(job_name)
            if cached is not None and cached[0] == digest:
                return cached[1]
            # Every op is in the workflow's pool: the API sets its slots to the workflow's
            # concurrency limit (pool granularity `run`: a slot is a run; docs/queues.md).
            job = build_job(
                definition,
                job_name=job_name,
                resource_defs=resources,
                op_tags=pool_op_tags(workflow_id),
            ).job
            built[job_name] = (digest, job)
            return job

        return load

    jobs = {name: loader(name, definition, wid) for name, definition, wid in versions}

    def schedule_loader(entry: WorkflowSchedule) -> Callable[[], dg.ScheduleDefinition]:
        from flowmaestro_dagster.orchestration.schedules import make_workflow_schedule

        return lambda: make_workflow_schedule(entry)

    workflow_schedules = {entry.name: schedule_loader(entry) for entry in schedules}

    @dg.repository(name="__repository__")
    def shard_repository() -> dict[str, Any]:
        return {"jobs": jobs, "schedules": workflow_schedules}

    return shard_repository


def __getattr__(name: str) -> Any:
    if name.startswith("shard_") and name.removeprefix("shard_").isdigit():
        shard = int(name.removeprefix("shard_"))
        builds = shard_builds()
        if builds is None:
            return build_shard(shard)
        if shard not in builds:
            builds[shard] = build_shard(shard)
        return builds[shard]
    raise AttributeError(name)
