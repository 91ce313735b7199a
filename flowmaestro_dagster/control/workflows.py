"""Workflows and their versions: create, update (a new draft each time), deploy, revert, diff."""

import zlib
from collections.abc import Sequence
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from flowmaestro_dagster.compile.compiler import compile_workflow
from flowmaestro_dagster.compile.naming import sanitize
from flowmaestro_dagster.control.requests import WorkflowSettingsIn
from flowmaestro_dagster.errors import Conflict, InvalidWorkflow, InvalidWorkflowError, NotFound
from flowmaestro_dagster.spec.parse import parse_workflow
from flowmaestro_dagster.spec.problems import Problem
from flowmaestro_dagster.store.models import Execution, User, Workflow, WorkflowVersion, utcnow

# An execution on one of these still needs its version's job (a paused one resumes on it).
ACTIVE_EXECUTION_STATUSES = ("queued", "running", "waiting", "pausing", "paused")
LOCATION_PREFIX = "flowmaestro-workflows"


IN_CHUNK = 500  # ids per IN (...) list: well under SQLite's bound-parameter limit


def location_for(workflow_id: str, shards: int) -> str:
    """The code location that holds a workflow's jobs (stable for a given shard count)."""
    return f"{LOCATION_PREFIX}-{zlib.crc32(workflow_id.encode()) % shards}"


def job_name_for(workflow: Workflow, version: int) -> str:
    return f"{sanitize(workflow.name.lower())[:40]}__{workflow.id[:8]}_v{version}"


def check_definition(definition: dict[str, Any]) -> list[Problem]:
    """Compile to be sure it becomes a job; errors raise InvalidWorkflow, warnings are returned."""
    try:
        compiled = compile_workflow(definition)
    except InvalidWorkflowError as exc:
        errors = [p for p in exc.problems if p.severity == "error"]
        raise InvalidWorkflow(
            f"the definition has {len(errors)} error(s): "
            + "; ".join(p.describe() for p in errors[:3]),
            problems=exc.problems,
        ) from exc
    return compiled.warnings


def _apply_settings(workflow: Workflow, settings: WorkflowSettingsIn | None) -> None:
    if settings is None:
        return
    for field in settings.model_fields_set:
        setattr(workflow, field, getattr(settings, field))


def create_workflow(
    session: Session,
    *,
    user: User,
    definition: dict[str, Any],
    name: str | None,
    description: str | None,
    settings: WorkflowSettingsIn | None,
) -> tuple[Workflow, list[Problem]]:
    warnings = check_definition(definition)
    spec, _ = parse_workflow(definition)
    assert spec is not None
    workflow = Workflow(
        owner_id=user.id,
        name=(name or spec.name or "workflow").strip()[:300],
        description=description if description is not None else spec.description,
        latest_version=0,
    )
    _apply_settings(workflow, settings)
    session.add(workflow)
    session.flush()
    _new_version(session, workflow, user=user, definition=definition)
    return workflow, warnings


def _new_version(
    session: Session,
    workflow: Workflow,
    *,
    user: User,
    definition: dict[str, Any],
    source_version: int | None = None,
) -> WorkflowVersion:
    workflow.latest_version += 1
    version = WorkflowVersion(
        workflow_id=workflow.id,
        version=workflow.latest_version,
        definition=definition,
        status="draft",
        source_version=source_version,
        job_name=job_name_for(workflow, workflow.latest_version),
        created_by=user.id,
    )
    session.add(version)
    session.flush()  # the (workflow_id, version) constraint guards concurrent updates
    return version


def get_workflow(
    session: Session, *, user: User, workflow_id: str, for_update: bool = False
) -> Workflow:
    query = select(Workflow).where(Workflow.id == workflow_id, Workflow.owner_id == user.id)
    if for_update:
        query = query.with_for_update()
    workflow = session.scalar(query)
    if workflow is None:
        raise NotFound(f"no workflow {workflow_id}")
    return workflow


def list_workflows(
    session: Session, *, user: User, limit: int, offset: int, include_archived: bool
) -> tuple[Sequence[Workflow], int]:
    query = select(Workflow).where(Workflow.owner_id == user.id)
    if not include_archived:
        query = query.where(Workflow.archived_at.is_(None))
    total = session.scalar(select(func.count()).select_from(query.subquery())) or 0
    rows = session.scalars(
        query.order_by(Workflow.created_at.desc()).limit(limit).offset(offset)
    ).all()
    return rows, total


def update_workflow(
    session: Session,
    *,
    user: User,
    workflow_id: str,
    definition: dict[str, Any] | None,
    name: str | None,
    description: str | None,
    settings: WorkflowSettingsIn | None,
) -> tuple[Workflow, list[Problem]]:
    warnings: list[Problem] = []
    if definition is not None:
        warnings = check_definition(definition)  # before touching anything
    workflow = get_workflow(session, user=user, workflow_id=workflow_id, for_update=True)
    if name is not None:
        workflow.name = name.strip()[:300]
    if description is not None:
        workflow.description = description
    _apply_settings(workflow, settings)
    if definition is not None:
        latest = get_version(session, workflow=workflow, version=workflow.latest_version)
        if latest.definition != definition:
            _new_version(session, workflow, user=user, definition=definition)
    workflow.updated_at = utcnow()
    return workflow, warnings


def get_version(session: Session, *, workflow: Workflow, version: int) -> WorkflowVersion:
    row = session.scalar(
        select(WorkflowVersion).where(
            WorkflowVersion.workflow_id == workflow.id, WorkflowVersion.version == version
        )
    )
    if row is None:
        raise NotFound(f"workflow {workflow.id} has no version {version}")
    return row


def list_versions(session: Session, *, workflow: Workflow) -> Sequence[WorkflowVersion]:
    return session.scalars(
        select(WorkflowVersion)
        .where(WorkflowVersion.workflow_id == workflow.id)
        .order_by(WorkflowVersion.version.desc())
    ).all()


def mark_deployed(
    session: Session, *, user: User, workflow_id: str, version: int
) -> WorkflowVersion:
    workflow = get_workflow(session, user=user, workflow_id=workflow_id, for_update=True)
    if workflow.archived_at is not None:
        raise Conflict("the workflow is archived")
    row = get_version(session, workflow=workflow, version=version)
    if row.status == "archived":
        raise Conflict(f"version {version} is archived; revert it to deploy its definition")
    if workflow.deployed_version is not None and workflow.deployed_version != version:
        previous = get_version(session, workflow=workflow, version=workflow.deployed_version)
        previous.status = "draft"
    row.status = "deployed"
    row.deployed_at = utcnow()
    workflow.deployed_version = version
    return row


def archive_version(
    session: Session, *, user: User, workflow_id: str, version: int
) -> WorkflowVersion:
    workflow = get_workflow(session, user=user, workflow_id=workflow_id, for_update=True)
    row = get_version(session, workflow=workflow, version=version)
    if workflow.deployed_version == version:
        raise Conflict("the deployed version cannot be archived; deploy another version first")
    row.status = "archived"
    return row


def revert_to(session: Session, *, user: User, workflow_id: str, version: int) -> WorkflowVersion:
    workflow = get_workflow(session, user=user, workflow_id=workflow_id, for_update=True)
    source = get_version(session, workflow=workflow, version=version)
    check_definition(source.definition)
    workflow.updated_at = utcnow()
    return _new_version(
        session, workflow, user=user, definition=source.definition, source_version=version
    )


def archive_workflow(session: Session, *, user: User, workflow_id: str) -> Workflow:
    workflow = get_workflow(session, user=user, workflow_id=workflow_id, for_update=True)
    workflow.archived_at = workflow.archived_at or utcnow()
    return workflow


# -- what the code locations load --------------------------------------------------------------


def loadable_versions(session: Session, *, shard: int, shards: int) -> list[WorkflowVersion]:
    """Deployed versions, and any version an unfinished execution still runs on, of one shard.

    Keys first, definitions only for this shard's versions: a code server (and every run
    worker) of one shard out of many does not read every deployed definition.
    """
    keys = set(
        session.execute(
            select(WorkflowVersion.workflow_id, WorkflowVersion.version).where(
                WorkflowVersion.status == "deployed"
            )
        ).tuples()
    )
    keys |= set(
        session.execute(
            select(Execution.workflow_id, Execution.version)
            .where(Execution.status.in_(ACTIVE_EXECUTION_STATUSES))
            .distinct()
        ).tuples()
    )
    suffix = f"-{shard}"
    mine = {key for key in keys if location_for(key[0], shards).endswith(suffix)}
    workflow_ids = sorted({workflow_id for workflow_id, _ in mine})
    rows: dict[tuple[str, int], WorkflowVersion] = {}
    for start in range(0, len(workflow_ids), IN_CHUNK):
        chunk = workflow_ids[start : start + IN_CHUNK]
        for row in session.scalars(
            select(WorkflowVersion).where(WorkflowVersion.workflow_id.in_(chunk))
        ):
            if (row.workflow_id, row.version) in mine:
                rows[(row.workflow_id, row.version)] = row
    return [row for _, row in sorted(rows.items())]


# -- diff ----------------------------------------------------------------------------------------


def diff_definitions(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """Nodes, edges and config added / removed / changed; positions are ignored."""
    old_spec, _ = parse_workflow(old)
    new_spec, _ = parse_workflow(new)
    assert old_spec is not None and new_spec is not None
    nodes: dict[str, list[Any]] = {"added": [], "removed": [], "changed": []}
    for node_id in new_spec.nodes:
        if node_id not in old_spec.nodes:
            nodes["added"].append(node_id)
    for node_id, before in old_spec.nodes.items():
        after = new_spec.nodes.get(node_id)
        if after is None:
            nodes["removed"].append(node_id)
            continue
        changes: dict[str, dict[str, Any]] = {}
        if before.source_type != after.source_type:
            changes["type"] = {"from": before.source_type, "to": after.source_type}
        if before.label != after.label:
            changes["label"] = {"from": before.label, "to": after.label}
        _deep_diff("config", before.original_config, after.original_config, changes)
        before_error = before.on_error.model_dump() if before.on_error else None
        after_error = after.on_error.model_dump() if after.on_error else None
        if before_error != after_error:
            changes["onError"] = {"from": before_error, "to": after_error}
        if changes:
            nodes["changed"].append({"id": node_id, "changes": changes})

    def edge_key(edge: Any) -> tuple[str, str, str | None]:
        return (edge.source, edge.target, edge.handle)

    old_edges = {edge_key(e) for e in old_spec.edges}
    new_edges = {edge_key(e) for e in new_spec.edges}

    def edge_view(key: tuple[str, str, str | None]) -> dict[str, Any]:
        return {"source": key[0], "target": key[1], "sourceHandle": key[2]}

    settings: dict[str, dict[str, Any]] = {}
    _deep_diff(
        "settings",
        old_spec.settings.model_dump(by_alias=True),
        new_spec.settings.model_dump(by_alias=True),
        settings,
    )
    return {
        "nodes": nodes,
        "edges": {
            "added": [edge_view(k) for k in sorted(new_edges - old_edges, key=str)],
            "removed": [edge_view(k) for k in sorted(old_edges - new_edges, key=str)],
            "changed": [],
        },
        "settings": settings,
    }


def _deep_diff(path: str, old: Any, new: Any, out: dict[str, dict[str, Any]]) -> None:
    if isinstance(old, dict) and isinstance(new, dict):
        for key in sorted(set(old) | set(new), key=str):
            if key == "position":
                continue
            _deep_diff(f"{path}.{key}", old.get(key), new.get(key), out)
    elif old != new:
        out[path] = {"from": old, "to": new}
