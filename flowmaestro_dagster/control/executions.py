"""Executions: idempotent starts, exactly-once launches, and their status read from Dagster.

Starting an execution commits it first and launches it after; a launch claims the execution
with a lease (a conditional UPDATE), looks for a Dagster run already tagged with the
execution's id, and only then asks Dagster for a run. A process that dies between commit and
launch leaves the execution for the reconciler (`reconcile_launches`, run by a sensor), which
goes through the same claim, so every execution gets exactly one first run. A launch that keeps
failing backs off (`launch_retry_delay`), waits behind executions tried fewer times, and after
FLOWMAESTRO_LAUNCH_MAX_ATTEMPTS the execution is failed with the last launch error. A cancel
wins over a launch in flight: the launch records its run only if `cancelled_at` is still unset,
and otherwise terminates it (`stop_run`; cancel and retry are in control/lifecycle.py).
"""

import hashlib
import json
import logging
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import cache, lru_cache
from typing import Any, cast

from sqlalchemy import (
    Row,
    Select,
    Table,
    and_,
    bindparam,
    case,
    delete,
    exists,
    func,
    insert,
    or_,
    select,
    update,
)
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session, aliased, make_transient_to_detached, object_session
from sqlalchemy.sql.schema import CallableColumnDefault, ScalarElementColumnDefault

from flowmaestro_dagster.compile.compiler import (
    CONCURRENCY_KEY_TAG,
    CompiledWorkflow,
    QueueSettings,
    load_spec,
    queue_settings_of,
)
from flowmaestro_dagster.control.client import DagsterClient, RunInfo
from flowmaestro_dagster.control.requests import ExecutionCreate
from flowmaestro_dagster.control.workflows import location_for
from flowmaestro_dagster.engines.jobs import build_job
from flowmaestro_dagster.engines.local import run_config_for
from flowmaestro_dagster.engines.results import NodeRun, final_outputs
from flowmaestro_dagster.errors import (
    Conflict,
    DagsterUnavailable,
    ExpressionBudgetError,
    IdempotencyKeyReused,
    InvalidInputs,
    InvalidRequest,
    NotFound,
    PlatformError,
    Unprocessable,
)
from flowmaestro_dagster.lang.expressions import Budget, Limits
from flowmaestro_dagster.lang.state import ExecutionState
from flowmaestro_dagster.lang.templates import render_string
from flowmaestro_dagster.nodes.io_nodes import coerce_input
from flowmaestro_dagster.settings import get_settings
from flowmaestro_dagster.spec.configs import InputConfig
from flowmaestro_dagster.spec.models import WorkflowSpec
from flowmaestro_dagster.spec.problems import error as problem_error
from flowmaestro_dagster.store.models import (
    Execution,
    ExecutionNodeStats,
    IdempotencyKey,
    NodeAttempt,
    NodeOutput,
    User,
    Waitpoint,
    Workflow,
    WorkflowVersion,
    new_id,
    utcnow,
)
from flowmaestro_dagster.tags import (
    EXECUTION_TAG,
    FAILURE_REASON_TAG,
    LAUNCHED_BY_TAG,
    PAUSED_TAG,
    PRIORITY_TAG,
    USER_TAG,
    VERSION_TAG,
    WILL_RETRY_TAG,
    WORKFLOW_ID_TAG,
)

log = logging.getLogger(__name__)

TERMINAL = frozenset({"succeeded", "failed", "cancelled"})
RUN_STATUS = {
    "QUEUED": "queued",
    "NOT_STARTED": "queued",
    "STARTING": "queued",
    "MANAGED": "queued",
    "STARTED": "running",
    "CANCELING": "running",
    "SUCCESS": "succeeded",
    "FAILURE": "failed",
    "CANCELED": "cancelled",
}
MAX_KEY_LENGTH = 255
LAUNCH_RETRY_BASE_SECONDS = 30
LAUNCH_RETRY_MAX_SECONDS = 15 * 60


def _aware(moment: datetime | None) -> datetime | None:
    """SQLite gives naive datetimes back; everything here is UTC."""
    if moment is None or moment.tzinfo is not None:
        return moment
    return moment.replace(tzinfo=UTC)


# -- starting ------------------------------------------------------------------------------------


def request_fingerprint(body: ExecutionCreate) -> str:
    canonical = json.dumps(
        {"inputs": body.inputs, "priority": body.priority, "queue": body.queue},
        sort_keys=True,
        separators=(",", ":"),
        default=str,
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


@lru_cache(maxsize=512)
def compiled_version(workflow_id: str, version: int, definition_json: str) -> CompiledWorkflow:
    """A version's compiled job (versions never change, so this caches by content)."""
    return build_job(definition_json)


def compiled_for(row: WorkflowVersion) -> CompiledWorkflow:
    return compiled_version(
        row.workflow_id, row.version, json.dumps(row.definition, sort_keys=True)
    )


@dataclass(frozen=True)
class Submittable:
    """What a submission checks against a version: its validated spec and queue settings. Not
    the Dagster job: building one costs 0.05-1 s of CPU (more on a busy machine), which each
    API worker would spend on the first submission of every version, stalling its requests."""

    spec: WorkflowSpec
    queue_settings: QueueSettings | None


@lru_cache(maxsize=512)
def submittable_version(workflow_id: str, version: int, definition_json: str) -> Submittable:
    """A version's spec and queue settings (versions never change: cached by content)."""
    spec = load_spec(definition_json)
    return Submittable(spec, queue_settings_of(spec))


def submittable_for(row: WorkflowVersion) -> Submittable:
    return submittable_version(
        row.workflow_id, row.version, json.dumps(row.definition, sort_keys=True)
    )


def check_inputs(spec: WorkflowSpec, inputs: Mapping[str, Any]) -> None:
    """Required inputs present, typed inputs of the right type: else 422 before anything starts."""
    problems = []
    for node in spec.nodes.values():
        config = node.config
        if not isinstance(config, InputConfig) or not config.name:
            continue
        names = config.names or [config.name]
        given = next((n for n in names if n in inputs), None)
        if given is None:
            if config.required and not config.has_default:
                problems.append(
                    {
                        "code": "missing_input",
                        "node_id": node.id,
                        "field": config.name,
                        "message": f"input '{config.name}' is required",
                    }
                )
            continue
        value = inputs[given]
        kind = config.input_type.lower()
        coerced = coerce_input(value, kind)
        bad = (kind == "number" and not isinstance(coerced, int | float)) or (
            kind in ("boolean", "bool") and not isinstance(coerced, bool)
        )
        if bad or (kind == "number" and isinstance(coerced, bool)):
            problems.append(
                {
                    "code": "invalid_input",
                    "node_id": node.id,
                    "field": given,
                    "message": f"input '{given}' must be a {kind}, got {type(value).__name__}",
                }
            )
    if problems:
        raise InvalidInputs("; ".join(p["message"] for p in problems[:5]), problems=problems)


# Statements built once: SQLAlchemy then reuses their cache key (and compiled SQL) instead of
# building both again for every submission.
_WORKFLOWS = cast(Table, Workflow.__table__)
_VERSIONS = cast(Table, WorkflowVersion.__table__)
# The columns, not the entities: a Core row, no ORM instance to build (nothing here changes it).
_WORKFLOW_AND_DEPLOYED = (
    select(
        _WORKFLOWS.c.id,
        _WORKFLOWS.c.archived_at,
        _WORKFLOWS.c.deployed_version,
        _WORKFLOWS.c.priority,
        _WORKFLOWS.c.queue,
        _WORKFLOWS.c.idempotency_ttl_seconds,
        _VERSIONS.c.id.label("version_id"),
        _VERSIONS.c.version,
        _VERSIONS.c.job_name,
    )
    .select_from(
        _WORKFLOWS.outerjoin(
            _VERSIONS,
            and_(
                _VERSIONS.c.workflow_id == _WORKFLOWS.c.id,
                _VERSIONS.c.version == _WORKFLOWS.c.deployed_version,
            ),
        )
    )
    .where(
        _WORKFLOWS.c.id == bindparam("workflow_id"),
        _WORKFLOWS.c.owner_id == bindparam("owner_id"),
    )
)
_DEFINITION = select(WorkflowVersion.definition).where(WorkflowVersion.id == bindparam("id"))
_KEY = select(IdempotencyKey).where(
    IdempotencyKey.user_id == bindparam("user_id"),
    IdempotencyKey.workflow_id == bindparam("workflow_id"),
    IdempotencyKey.key == bindparam("key"),
)
_KEY_COLUMNS = ("id", "user_id", "workflow_id", "key", "request_hash", "execution_id")
_SUBMITTABLE_BY_ROW_SIZE = 512
_submittable_by_row: OrderedDict[tuple[str, str, int], Submittable] = OrderedDict()
_submittable_lock = threading.Lock()


@cache
def _claim_key(dialect: str) -> Any:
    """INSERT the key, or take over an expired one (the same row, new values); RETURNING the
    execution it now names. A live key with the same (user, workflow, key) returns nothing: the
    request is a replay. The unique constraint decides between concurrent requests (PostgreSQL
    waits for the other transaction; SQLite's writers take turns)."""
    insert = pg_insert if dialect == "postgresql" else sqlite_insert
    table = cast(Table, IdempotencyKey.__table__)  # the table: no ORM bulk-insert machinery
    values: dict[str, Any] = {
        name: bindparam(name) for name in (*_KEY_COLUMNS, "created_at", "expires_at")
    }
    statement = insert(table).values(values)
    return statement.on_conflict_do_update(
        index_elements=[table.c.user_id, table.c.workflow_id, table.c.key],
        set_={
            name: statement.excluded[name]
            for name in ("request_hash", "execution_id", "created_at", "expires_at")
        },
        where=table.c.expires_at <= bindparam("created_at"),
    ).returning(table.c.execution_id)


def submittable_by_row(
    session: Session, *, version_id: str, workflow_id: str, version: int
) -> Submittable:
    """The spec and queue settings of the version row `version_id`, its definition read only
    the first time in this process: a row's definition never changes (an edit is a new version
    row), so a submission does not load and re-serialize it."""
    key = (version_id, workflow_id, version)
    with _submittable_lock:
        found = _submittable_by_row.get(key)
        if found is not None:
            _submittable_by_row.move_to_end(key)
            return found
    definition = session.scalar(_DEFINITION, {"id": version_id})
    found = submittable_version(workflow_id, version, json.dumps(definition, sort_keys=True))
    with _submittable_lock:
        _submittable_by_row[key] = found
        while len(_submittable_by_row) > _SUBMITTABLE_BY_ROW_SIZE:
            _submittable_by_row.popitem(last=False)
    return found


@dataclass(frozen=True)
class _Deployed:
    """What a submission takes from its workflow's deployed version."""

    version: int
    job_name: str
    submittable: Submittable


def _deployed(session: Session, workflow: Row[*tuple[Any, ...]]) -> _Deployed:
    """The deployed version of `workflow` (a `_WORKFLOW_AND_DEPLOYED` row: the version's
    columns NULL when there is none), if new executions may start; else the refusal."""
    version_id, number, job_name = workflow.version_id, workflow.version, workflow.job_name
    if workflow.archived_at is not None:
        raise Conflict("the workflow is archived")
    if workflow.deployed_version is None:
        raise Conflict("the workflow has no deployed version: deploy one first")
    if version_id is None or number is None or job_name is None:
        raise NotFound(f"workflow {workflow.id} has no version {workflow.deployed_version}")
    found = submittable_by_row(
        session, version_id=version_id, workflow_id=workflow.id, version=number
    )
    return _Deployed(number, job_name, found)


def start_execution(
    session: Session,
    *,
    user: User,
    workflow_id: str,
    body: ExecutionCreate,
    idempotency_key: str | None,
    default_ttl_seconds: int,
    shards: int,
) -> tuple[Execution, bool]:
    """The execution for this request (created, or replayed for a repeated key) and whether
    it was replayed. Commits: the caller launches it afterwards.

    A new submission is one transaction: the workflow with its deployed version (one SELECT),
    the execution's INSERT, the key's INSERT ... ON CONFLICT (`_claim_key`), COMMIT. A key
    that is live already rolls that back and answers the replay (or 422 for another body); so
    does a request refused (archived, not deployed, bad inputs) whose key names an earlier one."""
    if idempotency_key is not None and not 0 < len(idempotency_key) <= MAX_KEY_LENGTH:
        raise InvalidRequest(f"Idempotency-Key must be 1 to {MAX_KEY_LENGTH} characters")
    fingerprint = request_fingerprint(body)
    workflow = session.execute(
        _WORKFLOW_AND_DEPLOYED, {"workflow_id": workflow_id, "owner_id": user.id}
    ).first()
    if workflow is None:
        raise NotFound(f"no workflow {workflow_id}")
    try:
        deployed = _deployed(session, workflow)
        check_inputs(deployed.submittable.spec, body.inputs)
        # The request's values, else the definition's queueConfig node, else the workflow's.
        node = deployed.submittable.queue_settings
        if node is not None and node.concurrency_key:
            checked_concurrency_key(node, body.inputs)  # a hostile key: 422 now, not at launch
    except PlatformError:
        replay = (
            _replay(
                session,
                user_id=user.id,
                workflow_id=workflow.id,
                key=idempotency_key,
                fingerprint=fingerprint,
            )
            if idempotency_key is not None
            else None
        )
        if replay is not None:
            return replay, True
        raise
    node_priority = node.priority if node is not None else None
    execution = _insert_execution(
        session,
        id=str(uuid.uuid4()),
        workflow_id=workflow.id,
        version=deployed.version,
        user_id=user.id,
        status="queued",
        priority=next(
            p for p in (body.priority, node_priority, workflow.priority, 0) if p is not None
        ),
        queue=body.queue or (node.queue if node is not None else None) or workflow.queue,
        inputs=body.inputs,
        job_name=deployed.job_name,
        location_name=location_for(workflow.id, shards),
    )
    if idempotency_key is None:
        session.commit()
        return execution, False
    now = utcnow()
    ttl = workflow.idempotency_ttl_seconds or default_ttl_seconds
    claimed = session.execute(
        _claim_key(session.get_bind().dialect.name),
        {
            "id": new_id(),
            "user_id": user.id,
            "workflow_id": workflow.id,
            "key": idempotency_key,
            "request_hash": fingerprint,
            "execution_id": execution.id,
            "created_at": now,
            "expires_at": now + timedelta(seconds=ttl),
        },
    ).scalar()
    if claimed == execution.id:
        session.commit()
        return execution, False
    # A live key: this request repeats an earlier one (or reuses its key with another body).
    session.expunge(execution)  # its row goes with the rollback
    session.rollback()
    replay = _replay(
        session,
        user_id=user.id,
        workflow_id=workflow.id,
        key=idempotency_key,
        fingerprint=fingerprint,
    )
    if replay is None:  # the key expired or went away between the two statements: again
        return start_execution(
            session,
            user=user,
            workflow_id=workflow_id,
            body=body,
            idempotency_key=idempotency_key,
            default_ttl_seconds=default_ttl_seconds,
            shards=shards,
        )
    return replay, True


_EXECUTIONS = cast(Table, Execution.__table__)


def _insert_execution(session: Session, **given: Any) -> Execution:
    """INSERT a new execution's row, each column its given value or its default, and return it
    as a persistent, unchanged ORM object of `session` (what the row holds: no SELECT back).

    One Core INSERT instead of the unit of work's flush, which cost a third of a submission's
    CPU. Every column of `executions` has a Python-side default (or none): the ORM would
    write the same row."""
    values: dict[str, Any] = {}
    for column in _EXECUTIONS.columns:
        default = column.default
        if column.key in given:
            values[column.key] = given[column.key]
        elif isinstance(default, ScalarElementColumnDefault):
            values[column.key] = default.arg
        elif isinstance(default, CallableColumnDefault):
            # SQLAlchemy wraps a no-argument callable in one that takes (and ignores) a context
            values[column.key] = default.arg(cast(Any, None))
        else:
            values[column.key] = None
    session.execute(insert(_EXECUTIONS), values)
    execution = Execution(**values)
    make_transient_to_detached(execution)  # the row exists: a persistent object, never INSERTed
    session.add(execution)
    return execution


def _replay(
    session: Session, *, user_id: str, workflow_id: str, key: str, fingerprint: str
) -> Execution | None:
    """The execution an earlier request with this key started (its replay counted), None if
    the key is not live; 422 if that request had another body."""
    row = session.scalar(_KEY, {"user_id": user_id, "workflow_id": workflow_id, "key": key})
    if row is None:
        return None
    if _aware(row.expires_at) <= utcnow():  # type: ignore[operator]
        session.execute(delete(IdempotencyKey).where(IdempotencyKey.id == row.id))
        session.commit()
        return None
    if row.request_hash != fingerprint:
        raise IdempotencyKeyReused(
            "this Idempotency-Key was used with a different request body; use a new key"
        )
    return count_replay(session, execution_id=row.execution_id)


def count_replay(session: Session, *, execution_id: str) -> Execution | None:
    """Count one duplicate prevented: a request answered with `execution_id` as a replay; the
    execution as it is then (None if it is gone).

    One `UPDATE ... SET replays = replays + 1 ... RETURNING` (the database adds, so concurrent
    replays are all counted; no SELECT after), committed. On the execution, not the key: a key
    is purged at its expiry."""
    execution = session.scalars(
        update(Execution)
        .where(Execution.id == execution_id)
        .values(replays=Execution.replays + 1, last_replayed_at=utcnow())
        .returning(Execution),
        execution_options={"populate_existing": True},
    ).one_or_none()
    session.commit()
    return execution


def purge_expired_keys(session: Session) -> int:
    result = session.execute(delete(IdempotencyKey).where(IdempotencyKey.expires_at <= utcnow()))
    session.commit()
    return int(result.rowcount or 0)  # type: ignore[attr-defined]


# -- launching -----------------------------------------------------------------------------------


def launch_config(inputs: Mapping[str, Any]) -> dict[str, Any]:
    """The run config of a launch, a resume or a retry: the execution's inputs, and the run
    worker's console log level (FLOWMAESTRO_RUN_CONSOLE_LOG_LEVEL) when the operator set one."""
    return run_config_for(inputs, log_level=get_settings().run_console_log_level)


def run_tags(execution: Execution) -> dict[str, str]:
    """Tags of every run of an execution; the run queue's limits key on them (queues.py).

    The user shows twice: their email as Dagster's `user` (the UI's "Launched by", a filter an
    operator types), and their id as a hidden tag the per-user limit keys on (an id never
    changes while a run waits in the queue; docs/operations.md)."""
    from flowmaestro_dagster.control.queues import queue_tags

    session = object_session(execution)
    user = session.get(User, execution.user_id) if session is not None else None
    launched_by = {LAUNCHED_BY_TAG: user.email} if user is not None and user.email else {}
    return {
        EXECUTION_TAG: execution.id,
        WORKFLOW_ID_TAG: execution.workflow_id,
        VERSION_TAG: str(execution.version),
        USER_TAG: execution.user_id,
        **launched_by,
        PRIORITY_TAG: str(execution.priority),
        **queue_tags(execution),
        **concurrency_key_tags(execution),
    }


def concurrency_key_tags(execution: Execution) -> dict[str, str]:
    """`flowmaestro/concurrency_key` from the definition's queueConfig node, its references
    rendered against the execution's inputs (one run per key at a time: docs/queues.md)."""
    session = object_session(execution)
    version = version_row(session, execution) if session is not None else None
    if version is None:
        return {}
    settings = submittable_for(version).queue_settings
    if settings is None or not settings.concurrency_key:
        return {}
    key = concurrency_key(settings, execution.inputs or {})
    return {CONCURRENCY_KEY_TAG: key.strip()[:255]} if key.strip() else {}


def concurrency_key(settings: QueueSettings, inputs: Mapping[str, Any]) -> str:
    """A queueConfig node's concurrencyKey rendered against the execution's inputs. It comes
    from the definition and runs in the API process: on the expression budget
    (FLOWMAESTRO_EXPRESSION_MAX_STEPS / _MAX_SIZE), `ExpressionBudgetError` past it."""
    budget = Budget(Limits.from_settings(get_settings()))
    return render_string(settings.concurrency_key, ExecutionState.start(inputs), budget=budget)


def checked_concurrency_key(settings: QueueSettings, inputs: Mapping[str, Any]) -> str:
    """`concurrency_key`, a key over budget refused as the request's fault (422)."""
    try:
        return concurrency_key(settings, inputs)
    except ExpressionBudgetError as exc:
        problem = problem_error(
            "expression_budget",
            f"the concurrency key went over the expression budget: {exc}",
            node_id=settings.node_id,
            field="concurrencyKey",
        )
        raise Unprocessable(problem.message, problems=[problem]) from exc


def launch_execution(
    session: Session, client: DagsterClient, execution_id: str, *, lease_seconds: int
) -> str | None:
    """Launch one execution's first run, exactly once; None if someone else holds it."""
    token = str(uuid.uuid4())
    now = utcnow()
    claimed = session.execute(
        update(Execution)
        .where(
            Execution.id == execution_id,
            Execution.launched_at.is_(None),
            Execution.status != "cancelled",
            Execution.cancelled_at.is_(None),
            (Execution.launch_claimed_at.is_(None))
            | (Execution.launch_claimed_at < now - timedelta(seconds=lease_seconds)),
        )
        .values(
            launch_token=token, launch_claimed_at=now, launch_attempts=Execution.launch_attempts + 1
        )
    ).rowcount  # type: ignore[attr-defined]
    session.commit()
    if not claimed:
        return None
    execution = session.get(Execution, execution_id, populate_existing=True)
    assert execution is not None
    try:
        existing = client.runs_for_execution(execution_id)
        # Launched before a crash? Record that run, never launch a second one.
        run_id = existing[0].run_id if existing else _launch_loading_if_needed(client, execution)
    except Exception as exc:
        # Leave it to the reconciler: release the claim, record why and when to try again.
        session.execute(
            update(Execution)
            .where(Execution.id == execution_id, Execution.launch_token == token)
            .values(
                launch_token=None,
                launch_claimed_at=None,
                launch_retry_at=utcnow() + launch_retry_delay(execution.launch_attempts),
                error=f"launch failed: {exc}"[:4000],
            )
        )
        session.commit()
        raise
    # The record is conditional too: a cancel that claimed the execution while Dagster was being
    # asked wins, and the run it may not have seen yet is stopped here (`stop_run`).
    mine = update(Execution).where(Execution.id == execution_id, Execution.launch_token == token)
    ran = {"run_id": run_id, "latest_run_id": run_id, "launched_at": utcnow(), "launch_token": None}
    recorded = session.execute(
        mine.where(Execution.cancelled_at.is_(None)).values(**ran, launch_retry_at=None, error=None)
    ).rowcount  # type: ignore[attr-defined]
    if recorded:
        session.commit()
        return run_id
    cancelled = session.execute(mine.values(**ran)).rowcount  # type: ignore[attr-defined]
    session.commit()
    if cancelled:  # else the lease ran out and another launcher took over: it records the run
        stop_run(client, run_id)
    return None


def stop_run(client: DagsterClient, run_id: str) -> None:
    """Terminate the run a launch, retry or resume created for an execution that was cancelled
    meanwhile: the cancel claimed the execution first (`cancelled_at`), so that launcher's
    conditional record failed, and the cancel may not have seen the run yet. A run that has
    already ended (or that the cancel terminated first) is left as it is."""
    try:
        client.terminate(run_id)
    except Conflict:
        log.info("run %s of a cancelled execution had already ended", run_id)


def launch_retry_delay(attempts: int) -> timedelta:
    """How long a launch that failed on attempt `attempts` waits: the next reconciler tick after
    the first failure, then 30 s doubling up to 15 min, so with 8 attempts a Dagster outage of
    about half an hour costs no execution, and one that never launches stops being tried."""
    if attempts <= 1:
        return timedelta(0)
    return timedelta(
        seconds=min(LAUNCH_RETRY_BASE_SECONDS * 2 ** (attempts - 2), LAUNCH_RETRY_MAX_SECONDS)
    )


def _launch_loading_if_needed(client: DagsterClient, execution: Execution) -> str:
    """Launch; if the job is not loaded yet (a deploy whose reload failed), reload and retry."""

    def launch() -> str:
        run_id = client.launch(
            location=execution.location_name,
            job=execution.job_name,
            run_config=launch_config(execution.inputs),
            tags=run_tags(execution),
        )
        _settle_queue_pause(client, execution, run_id)
        return run_id

    try:
        return launch()
    except Conflict:
        client.reload_location(execution.location_name)
        client.wait_for_job(execution.location_name, execution.job_name, timeout=30)
        return launch()


def _settle_queue_pause(client: DagsterClient, execution: Execution, run_id: str) -> None:
    """A queue paused or resumed while this run was being launched: fix its mark (queues.py)."""
    from flowmaestro_dagster.control.queues import settle_launched_run

    session = object_session(execution)
    if session is None:
        return
    try:
        settle_launched_run(client.instance, session, run_id)
    except Exception as exc:  # noqa: BLE001 - the launch stands; the pause re-tags on its next call
        log.warning("cannot check the queue pause of run %s: %s", run_id, exc)


def pending_launches(
    session: Session,
    *,
    older_than_seconds: float,
    limit: int = 100,
    max_attempts: int | None = None,
) -> list[str]:
    """Executions to launch now: committed, unlaunched, past their retry time and (with
    `max_attempts`) not yet given up. Least-tried first, then oldest: executions whose launch
    keeps failing wait behind the others, so they never fill the batch and starve them."""
    now = utcnow()
    query = select(Execution.id).where(
        Execution.launched_at.is_(None),
        Execution.status == "queued",
        Execution.created_at <= now - timedelta(seconds=older_than_seconds),
        or_(Execution.launch_retry_at.is_(None), Execution.launch_retry_at <= now),
    )
    if max_attempts is not None:
        query = query.where(Execution.launch_attempts < max_attempts)
    return list(
        session.scalars(
            query.order_by(Execution.launch_attempts, Execution.created_at).limit(limit)
        )
    )


def give_up_launches(
    session: Session, *, max_attempts: int, lease_seconds: int, limit: int = 100
) -> list[str]:
    """Fail unlaunched executions that have had `max_attempts` launches (a run config Dagster
    cannot take, a job that never loads): their error says so and keeps the last launch error.
    Conditional, like a claim: an execution someone is launching right now is left alone."""
    now = utcnow()
    unclaimed = (Execution.launch_claimed_at.is_(None)) | (
        Execution.launch_claimed_at < now - timedelta(seconds=lease_seconds)
    )
    exhausted = session.execute(
        select(Execution.id, Execution.launch_attempts, Execution.error)
        .where(
            Execution.launched_at.is_(None),
            Execution.status == "queued",
            Execution.launch_attempts >= max_attempts,
            unclaimed,
        )
        .order_by(Execution.created_at)
        .limit(limit)
    ).all()
    given_up: list[str] = []
    for execution_id, attempts, error in exhausted:
        reason = (
            f"gave up after {attempts} launch attempts (FLOWMAESTRO_LAUNCH_MAX_ATTEMPTS="
            f"{max_attempts}); the last: {error or 'no error recorded'}"
        )
        done = session.execute(
            update(Execution)
            .where(
                Execution.id == execution_id,
                Execution.launched_at.is_(None),
                Execution.status == "queued",
                unclaimed,
            )
            .values(
                status="failed",
                finished_at=now,
                launch_retry_at=None,
                error=reason[:4000],
                facts_recorded_at=now,  # settled without a run: no duration, no node numbers
            )
        ).rowcount  # type: ignore[attr-defined]
        if done:
            log.warning("execution %s failed: %s", execution_id, reason)
            given_up.append(str(execution_id))
    session.commit()
    return given_up


def reconcile_launches(
    session: Session,
    client: DagsterClient,
    *,
    older_than_seconds: float,
    lease_seconds: int,
    max_attempts: int = 8,
    batch: int = 100,
) -> dict[str, int]:
    """Launch committed-but-unlaunched executions (after a crash or a failed launch), at most
    `batch` a tick; then fail those whose launches are used up (`give_up_launches`)."""
    launched = skipped = failed = 0
    pending = pending_launches(
        session, older_than_seconds=older_than_seconds, limit=batch, max_attempts=max_attempts
    )
    for execution_id in pending:
        try:
            run_id = launch_execution(session, client, execution_id, lease_seconds=lease_seconds)
        except Exception as exc:  # noqa: BLE001 - one bad execution must not stop the rest
            log.warning("could not launch execution %s: %s", execution_id, exc)
            failed += 1
            continue
        if run_id is None:
            skipped += 1
        else:
            launched += 1
    gave_up = give_up_launches(
        session, max_attempts=max_attempts, lease_seconds=lease_seconds, limit=batch
    )
    return {"launched": launched, "skipped": skipped, "failed": failed, "gave_up": len(gave_up)}


# -- reading -------------------------------------------------------------------------------------


def get_execution(session: Session, *, user: User, execution_id: str) -> Execution:
    execution = session.get(Execution, execution_id)
    if execution is None or execution.user_id != user.id:
        raise NotFound(f"no execution {execution_id}")
    return execution


def list_executions(
    session: Session,
    *,
    user: User,
    workflow_id: str | None,
    status: str | None,
    limit: int,
    offset: int,
) -> tuple[Sequence[Execution], int]:
    query = select(Execution).where(Execution.user_id == user.id)
    if workflow_id:
        query = query.where(Execution.workflow_id == workflow_id)
    if status:
        query = query.where(Execution.status == status)
    total = session.scalar(select(func.count()).select_from(query.subquery())) or 0
    rows = session.scalars(
        query.order_by(Execution.created_at.desc()).limit(limit).offset(offset)
    ).all()
    return rows, total


@dataclass
class ExecutionView:
    execution: Execution
    runs: list[RunInfo]
    nodes: list[dict[str, Any]]
    # The execution's workflow version, when `refresh` read it (it does when there are runs).
    version: WorkflowVersion | None = None


def execution_status(execution: Execution, runs: Sequence[RunInfo]) -> str:
    if execution.cancelled_at is not None:
        return "cancelled"  # a cancel won: final until a retry, whatever its runs still say
    if execution.status in ("cancelled", "failed") and not runs:
        return execution.status  # cancelled before its launch, or its launch was given up
    if not runs:
        return "queued"
    return run_status(runs[-1])


def run_status(run: RunInfo) -> str:
    if run.tags.get(PAUSED_TAG) == "true" and run.status in ("CANCELING", "CANCELED"):
        return "pausing" if run.status == "CANCELING" else "paused"
    if run.status == "FAILURE" and _retry_pending(run):
        return "running"  # its run worker died; Dagster's run retries re-execute it from failure
    return RUN_STATUS.get(run.status, "running")


# Dagster writes a run's FAILURE status first and its `dagster/will_retry` decision a moment
# later (DagsterInstance.handle_new_event): a failure read in between is not final yet.
RETRY_DECISION_GRACE_SECONDS = 10.0


def _retry_pending(run: RunInfo, now: float | None = None) -> bool:
    decision = run.tags.get(WILL_RETRY_TAG)
    if decision is not None:
        return decision == "true"
    if run.tags.get(FAILURE_REASON_TAG) == "STEP_FAILURE" or run.end_time is None:
        return False  # a node failed: run retries never re-execute those (nodes retry themselves)
    return (time.time() if now is None else now) - run.end_time < RETRY_DECISION_GRACE_SECONDS


_VERSION_ROW = select(WorkflowVersion).where(
    WorkflowVersion.workflow_id == bindparam("workflow_id"),
    WorkflowVersion.version == bindparam("version"),
)


def version_row(session: Session, execution: Execution) -> WorkflowVersion | None:
    return session.scalar(
        _VERSION_ROW, {"workflow_id": execution.workflow_id, "version": execution.version}
    )


def refresh(session: Session, client: DagsterClient, execution: Execution) -> ExecutionView:
    """Read the execution's runs, steps and node outputs from Dagster and the output store,
    and write the status back so lists and filters stay current."""
    try:
        runs = client.runs_for_execution(execution.id)
    except DagsterUnavailable as exc:
        log.warning("showing stored state of execution %s: %s", execution.id, exc)
        return ExecutionView(execution, [], [])
    status = execution_status(execution, runs)
    # Without runs nothing is parked or has a node status: neither is read (a queued execution's
    # read is its row and its waitpoints, nothing more).
    parked = _parked_nodes(session, execution.id) if runs else {}
    if parked and status in ("succeeded", "queued") and (status == "succeeded" or runs):
        status = "waiting"  # the run ended at a waitpoint, or its resume is queued
    version = version_row(session, execution) if runs else None
    nodes: list[dict[str, Any]] = []
    outputs: dict[str, Any] | None = execution.outputs
    if version is not None and runs:
        compiled = compiled_for(version)
        node_runs = _node_runs(session, client, compiled, execution, runs)
        for node_id, waitpoint_status in parked.items():
            if node_id in node_runs and waitpoint_status == "pending":
                node_runs[node_id][0].status = "waiting"
        nodes = [_node_public(run, extra) for run, extra in node_runs.values()]
        failed = [run for run, _ in node_runs.values() if run.status == "failed" and run.error]
        if status == "failed" and failed and not execution.error:
            execution.error = f"node '{failed[0].node_id}' failed: {failed[0].error}"[:4000]
        if status == "succeeded":
            outputs = final_outputs(compiled, {k: v[0] for k, v in node_runs.items()})
    changes: dict[str, Any] = {}
    if status != execution.status:
        changes["status"] = status
    if runs:
        first, last = runs[0], runs[-1]
        if first.start_time and execution.started_at is None:
            changes["started_at"] = datetime.fromtimestamp(first.start_time, UTC)
        if status in TERMINAL and last.end_time:
            changes["finished_at"] = datetime.fromtimestamp(last.end_time, UTC)
        if last.run_id != execution.latest_run_id:
            changes["latest_run_id"] = last.run_id
        if execution.run_id is None:
            changes["run_id"] = first.run_id
    if outputs != execution.outputs:
        changes["outputs"] = outputs
    for key, value in changes.items():
        setattr(execution, key, value)
    if record_facts(session, execution, runs, changed=bool(changes)) or changes:
        session.commit()
    return ExecutionView(execution, runs, nodes, version)


# -- analytics facts (issue 20): recorded where the status is synced ------------------------------

# Statuses an execution rests in until something starts a run again.
SETTLED = frozenset({*TERMINAL, "waiting", "paused"})
ERROR_ATTEMPTS = ("retrying", "failed", "handled")


def attempt_node_stats(*where: Any) -> Select[str, str, int, int, int]:
    """Per execution and node, from its node attempts: failed attempts (`errors`: retried,
    final and handled ones), retry requests, and steps or loop items whose last attempt failed
    (`failures`). Migration 0015 backfills with the same query in SQL."""
    later = aliased(NodeAttempt)
    superseded = exists().where(
        later.execution_id == NodeAttempt.execution_id,
        later.node_id == NodeAttempt.node_id,
        later.iteration == NodeAttempt.iteration,
        or_(
            later.started_at > NodeAttempt.started_at,
            and_(later.started_at == NodeAttempt.started_at, later.attempt > NodeAttempt.attempt),
        ),
    )
    failed_last = and_(NodeAttempt.status == "failed", ~superseded)
    errors = func.sum(case((NodeAttempt.status.in_(ERROR_ATTEMPTS), 1), else_=0))
    # The status is tested in the sums, not the WHERE: SQLite (without ANALYZE statistics)
    # would otherwise walk every failed attempt by `ix_node_attempts_errors` instead of the
    # execution's own by `ix_node_attempts_node`.
    return (
        select(
            NodeAttempt.execution_id,
            NodeAttempt.node_id,
            errors.label("errors"),
            func.sum(case((failed_last, 1), else_=0)).label("failures"),
            func.sum(case((NodeAttempt.status == "retrying", 1), else_=0)).label("retries"),
        )
        .where(*where)
        .group_by(NodeAttempt.execution_id, NodeAttempt.node_id)
        .having(errors > 0)
    )


def record_facts(
    session: Session, execution: Execution, runs: Sequence[RunInfo], *, changed: bool
) -> bool:
    """What workflow analytics read of an execution, written when it settles (its status
    changed to, or was first synced as, a SETTLED one): its duration (submission to its last
    run's end, finished executions only) and its nodes' numbers. Cleared while it runs again,
    so analytics read its attempts meanwhile. Upserts: a sensor tick and a request may record
    at once. True when something was written."""
    settled = execution.status in SETTLED
    if not settled and execution.facts_recorded_at is None:
        return False
    if settled and not changed and execution.facts_recorded_at is not None:
        return False
    rows = session.execute(attempt_node_stats(NodeAttempt.execution_id == execution.id)).all()
    if settled and rows:
        dialect = session.get_bind().dialect.name
        insert = pg_insert if dialect == "postgresql" else sqlite_insert
        statement = insert(ExecutionNodeStats).values(
            [
                {
                    "execution_id": execution.id,
                    "node_id": row.node_id,
                    "workflow_id": execution.workflow_id,
                    "created_at": execution.created_at,
                    "errors": row.errors,
                    "failures": row.failures,
                    "retries": row.retries,
                }
                for row in rows
            ]
        )
        session.execute(
            statement.on_conflict_do_update(
                index_elements=["execution_id", "node_id"],
                set_={k: statement.excluded[k] for k in ("errors", "failures", "retries")},
            )
        )
    kept = [row.node_id for row in rows] if settled else []
    session.execute(
        delete(ExecutionNodeStats).where(
            ExecutionNodeStats.execution_id == execution.id, ExecutionNodeStats.node_id.not_in(kept)
        )
    )
    ends = [run.end_time for run in runs if run.end_time]
    created = execution.created_at.replace(tzinfo=execution.created_at.tzinfo or UTC)
    execution.duration_ms = (
        round(max(max(ends) - created.timestamp(), 0.0) * 1000, 3)
        if execution.status in TERMINAL and ends
        else None
    )
    execution.facts_recorded_at = utcnow() if settled else None
    return True


_PARKED = select(Waitpoint.node_id, Waitpoint.status).where(
    Waitpoint.execution_id == bindparam("execution_id"),
    Waitpoint.status.in_(("pending", "resolved", "resuming")),
)


def _parked_nodes(session: Session, execution_id: str) -> dict[str, str]:
    """Nodes with a waitpoint not yet resumed: node id -> waitpoint status."""
    rows = session.execute(_PARKED, {"execution_id": execution_id}).all()
    return {str(node_id): str(status) for node_id, status in rows}


def _node_runs(
    session: Session,
    client: DagsterClient,
    compiled: CompiledWorkflow,
    execution: Execution,
    runs: Sequence[RunInfo],
) -> dict[str, tuple[NodeRun, dict[str, Any]]]:
    """Per node: status, attempts, times, output — later runs override re-executed steps."""
    stats: dict[str, Any] = {}
    errors: dict[str, str] = {}
    for dagster_run in runs:
        for stat in client.step_stats(dagster_run.run_id):
            stats[stat.step_key] = stat
        errors.update(client.step_errors(dagster_run.run_id))
    states: dict[str, dict[str, ExecutionState]] = {}
    errored: set[str] = set()  # aliases whose failure only an error edge / goto handled
    for row in session.scalars(
        select(NodeOutput).where(
            NodeOutput.execution_id == execution.id, NodeOutput.output_name.in_(("result", "error"))
        )
    ):
        alias = row.step_key.split("[", 1)[0]
        if row.output_name == "error":
            errored.add(alias)
            continue
        states.setdefault(alias, {})[row.mapping_key or ""] = ExecutionState.from_dict(row.value)
    result: dict[str, tuple[NodeRun, dict[str, Any]]] = {}
    for node_id, node in compiled.spec.nodes.items():
        node_run = NodeRun(node_id, node.label, node.source_type, "not_run")
        extra: dict[str, Any] = {}
        result[node_id] = (node_run, extra)
        node_alias = compiled.aliases.get(node_id)
        if node_alias is None:
            continue
        mine = [
            s for key, s in stats.items() if key == node_alias or key.startswith(f"{node_alias}[")
        ]
        if not mine:
            continue
        node_run.attempts = sum(int(getattr(s, "attempts", 1) or 1) for s in mine)
        starts = [s.start_time for s in mine if s.start_time]
        ends = [s.end_time for s in mine if s.end_time]
        if starts:
            extra["started_at"] = datetime.fromtimestamp(min(starts), UTC)
        if ends:
            extra["finished_at"] = datetime.fromtimestamp(max(ends), UTC)
        if starts and ends:
            extra["duration_ms"] = round((max(ends) - min(starts)) * 1000, 1)
        statuses = {s.status.value if s.status else "IN_PROGRESS" for s in mine}
        node_states = states.get(node_alias, {})
        failures = [m for key, m in errors.items() if key.split("[", 1)[0] == node_alias]
        if "FAILURE" in statuses:
            node_run.status = "failed"
            node_run.error = failures[-1] if failures else None
        elif "IN_PROGRESS" in statuses:
            node_run.status = "running"
        elif statuses == {"SKIPPED"}:
            node_run.status = "skipped"
        else:
            node_run.status = "succeeded"
            live = [s for s in node_states.values() if not s.skipped]
            if not live and node_alias in errored:
                node_run.status = "failed"  # handled by its error path
            elif not live:  # it yielded nothing, or only skip markers: nothing reached it
                node_run.status = "skipped"
        if "" in node_states and len(node_states) == 1:
            state = node_states[""]
            node_run.output = None if state.skipped else state.outputs.get(node_id)
        elif node_states:
            ordered = [node_states[k] for k in sorted(node_states)]
            node_run.iterations = len(ordered)
            node_run.output = [None if s.skipped else s.outputs.get(node_id) for s in ordered]
    return result


def _node_public(run: NodeRun, extra: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "node_id": run.node_id,
        "label": run.label,
        "type": run.type,
        "status": run.status,
        "attempts": run.attempts,
        "iterations": run.iterations,
        "output": run.output,
        "error": run.error,
        **extra,
    }


# -- control -------------------------------------------------------------------------------------


def ids(rows: Iterable[Execution]) -> list[str]:
    return [row.id for row in rows]
