"""Run history retention: old finished executions deleted with their Dagster runs, event logs
and platform rows, one batch per tick of the `run_history_retention` sensor.

The policy (docs/operations.md, "Run history retention"), both rules off by default:

* `days` (FLOWMAESTRO_RETENTION_DAYS): an execution that finished more than `days` ago goes;
* `keep` (FLOWMAESTRO_RETENTION_KEEP_PER_WORKFLOW): of each workflow's finished executions,
  all but the newest `keep` (by creation) go.

An execution goes when either rule set says so. Only finished ones (succeeded, failed,
cancelled) are ever deleted, and never one that still has an open waitpoint, is the child an
open waitpoint waits for, has a pause to resume, or has a Dagster run that has not finished
(or is about to be retried by Dagster's run retries): a queued, running, waiting or paused
execution keeps all its runs and rows, and does not count towards `keep`.

A batch: pick the oldest `batch_size` candidates; claim them with the launch lease a retry
takes (a conditional UPDATE, committed at once: a retry asked meanwhile gets 409, and a retry
already holding the lease keeps its execution); check their runs in Dagster; delete each run
with `DagsterInstance.delete_run` (the run, its tags and its event log) and its captured
stdout/stderr; then delete the platform rows of those executions in one short transaction.
Dagster's side goes first: a batch interrupted in between leaves platform rows whose runs are
gone, still claimed until the lease runs out, and a later tick deletes them. Runs without an
execution (the example location, `flowmaestro run`) are not the platform's and are left alone.
"""

import logging
import uuid
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from dagster import DagsterInstance, RunsFilter
from sqlalchemy import ColumnElement, and_, delete, exists, func, or_, select, update
from sqlalchemy.orm import Session, aliased

from flowmaestro_dagster.control.executions import TERMINAL
from flowmaestro_dagster.settings import Settings
from flowmaestro_dagster.store.models import (
    Checkpoint,
    Decision,
    Execution,
    ExecutionNodeStats,
    IdempotencyKey,
    NodeAttempt,
    NodeOutput,
    Waitpoint,
    WebhookDelivery,
    utcnow,
)
from flowmaestro_dagster.tags import EXECUTION_TAG, WILL_RETRY_TAG

log = logging.getLogger(__name__)

OPEN_WAITPOINTS = ("pending", "resolved", "resuming")
DEFAULT_BATCH_SIZE = 100


@dataclass(frozen=True)
class RetentionPolicy:
    """How much finished history to keep; a rule left None does not delete anything."""

    days: float | None = None
    keep: int | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> "RetentionPolicy":
        return cls(days=settings.retention_days, keep=settings.retention_keep_per_workflow)

    @property
    def active(self) -> bool:
        return self.days is not None or self.keep is not None

    def describe(self) -> str:
        rules = []
        if self.days is not None:
            rules.append(f"finished more than {self.days:g} days ago")
        if self.keep is not None:
            rules.append(f"beyond the newest {self.keep} per workflow")
        return " or ".join(rules) if rules else "off"


@dataclass
class RetentionResult:
    """What one batch did: executions and runs deleted, platform rows deleted by table, and
    executions left because Dagster still has (or is about to have) a run of theirs."""

    executions: int = 0
    runs: int = 0
    rows: dict[str, int] = field(default_factory=dict)
    skipped: int = 0
    policy: RetentionPolicy = field(default_factory=RetentionPolicy)

    def summary(self) -> str:
        if not self.policy.active:
            return (
                "retention off (set FLOWMAESTRO_RETENTION_DAYS or "
                "FLOWMAESTRO_RETENTION_KEEP_PER_WORKFLOW)"
            )
        skipped = f", left {self.skipped} whose runs are not finished" if self.skipped else ""
        return (
            f"deleted {self.executions} executions ({self.runs} Dagster runs with their event "
            f"logs){skipped}; policy: delete finished executions {self.policy.describe()}"
        )


def retention_candidates(
    session: Session, policy: RetentionPolicy, *, limit: int, now: datetime | None = None
) -> list[str]:
    """Ids of the oldest finished executions the policy deletes (at most `limit`), none that
    anything still waits on."""
    if not policy.active:
        return []
    ended = func.coalesce(Execution.finished_at, Execution.created_at)
    finished = select(
        Execution.id.label("id"),
        ended.label("ended"),
    ).where(Execution.status.in_(TERMINAL))
    if policy.keep is not None:
        finished = finished.add_columns(
            func.row_number()
            .over(
                partition_by=Execution.workflow_id,
                order_by=(Execution.created_at.desc(), Execution.id.desc()),
            )
            .label("rank")
        )
    ranked = finished.subquery()
    rules = []
    if policy.days is not None:
        cutoff = (now or utcnow()) - timedelta(days=policy.days)
        rules.append(ranked.c.ended < cutoff)
    if policy.keep is not None:
        rules.append(ranked.c.rank > policy.keep)
    own = aliased(Waitpoint)
    waited_for = aliased(Waitpoint)
    query = (
        select(Execution.id)
        .join(ranked, ranked.c.id == Execution.id)
        .where(
            or_(*rules),
            Execution.paused_run_id.is_(None),
            ~exists().where(own.execution_id == Execution.id, own.status.in_(OPEN_WAITPOINTS)),
            ~exists().where(
                waited_for.child_execution_id == Execution.id,
                waited_for.status.in_(OPEN_WAITPOINTS),
            ),
        )
        .order_by(ranked.c.ended, Execution.id)
        .limit(limit)
    )
    return list(session.scalars(query))


def _claim(
    session: Session, ids: Sequence[str], token: str, *, lease_seconds: int, now: datetime
) -> list[str]:
    """Take the launch lease of `ids` that are still finished and free; the ids taken."""
    if not ids:
        return []
    session.execute(
        update(Execution)
        .where(
            Execution.id.in_(ids),
            Execution.status.in_(TERMINAL),
            Execution.paused_run_id.is_(None),
            or_(
                Execution.launch_token.is_(None),
                Execution.launch_claimed_at < now - timedelta(seconds=lease_seconds),
            ),
        )
        .values(launch_token=token, launch_claimed_at=now)
        .execution_options(synchronize_session=False)
    )
    session.commit()
    claimed = list(
        session.scalars(
            select(Execution.id).where(Execution.id.in_(ids), Execution.launch_token == token)
        )
    )
    session.commit()  # no transaction stays open while Dagster is asked
    return claimed


def _runs_by_execution(instance: DagsterInstance, ids: Sequence[str]) -> dict[str, list[Any]]:
    runs: dict[str, list[Any]] = defaultdict(list)
    for record in instance.get_run_records(filters=RunsFilter(tags={EXECUTION_TAG: list(ids)})):
        execution_id = record.dagster_run.tags.get(EXECUTION_TAG)
        if execution_id is not None and execution_id in ids:
            runs[execution_id].append(record.dagster_run)
    return runs


def runs_settled(runs: Sequence[Any]) -> bool:
    """Every run finished, and none is a failure Dagster's run retries are about to re-execute
    (`dagster/will_retry=true` with no run retrying it yet)."""
    if not all(run.is_finished for run in runs):
        return False
    parents = {run.parent_run_id for run in runs}
    return not any(
        run.tags.get(WILL_RETRY_TAG) == "true" and run.run_id not in parents for run in runs
    )


def _delete_dagster_runs(instance: DagsterInstance, run_ids: Sequence[str]) -> None:
    for run_id in run_ids:
        instance.delete_run(run_id)  # the run, its tags, its event log
        try:
            instance.compute_log_manager.delete_logs(prefix=[run_id])  # captured stdout/stderr
        except Exception as exc:  # noqa: BLE001 - a manager that cannot delete by prefix
            log.debug("captured logs of run %s left: %s", run_id, exc)


# The platform tables that hold an execution's rows, deleted with it (decisions go with their
# waitpoints, the execution row last); tests/test_retention.py checks no such table is missing.
PER_EXECUTION: tuple[Any, ...] = (
    Waitpoint,
    Checkpoint,
    NodeAttempt,
    NodeOutput,
    IdempotencyKey,
    WebhookDelivery,
    ExecutionNodeStats,  # workflow analytics' rolled-up node numbers (issue 20)
)


def _delete_rows(
    session: Session, ids: Sequence[str], run_ids: Sequence[str], token: str
) -> dict[str, int]:
    """The platform rows of the claimed executions `ids` (and outputs of `run_ids`)."""

    def gone(statement: Any) -> int:
        result = session.execute(statement.execution_options(synchronize_session=False))
        return int(getattr(result, "rowcount", 0) or 0)

    waitpoints = select(Waitpoint.id).where(Waitpoint.execution_id.in_(ids))
    outputs: ColumnElement[bool] = NodeOutput.execution_id.in_(ids)
    if run_ids:
        outputs = or_(outputs, NodeOutput.run_id.in_(run_ids))
    rows = {"decisions": gone(delete(Decision).where(Decision.waitpoint_id.in_(waitpoints)))}
    for model in PER_EXECUTION:
        where = outputs if model is NodeOutput else model.execution_id.in_(ids)
        rows[model.__tablename__] = gone(delete(model).where(where))
    rows["executions"] = gone(
        delete(Execution).where(and_(Execution.id.in_(ids), Execution.launch_token == token))
    )
    return rows


def _release(session: Session, ids: Sequence[str], token: str) -> None:
    if ids:
        session.execute(
            update(Execution)
            .where(Execution.id.in_(ids), Execution.launch_token == token)
            .values(launch_token=None, launch_claimed_at=None)
            .execution_options(synchronize_session=False)
        )
        session.commit()


def apply_retention(
    session: Session,
    instance: DagsterInstance,
    *,
    policy: RetentionPolicy,
    batch_size: int = DEFAULT_BATCH_SIZE,
    lease_seconds: int = 60,
    now: datetime | None = None,
) -> RetentionResult:
    """Delete one batch (at most `batch_size` executions) of what `policy` no longer keeps:
    their Dagster runs and event logs, then their platform rows. Commits as it goes."""
    result = RetentionResult(policy=policy)
    now = now or utcnow()
    candidates = retention_candidates(session, policy, limit=batch_size, now=now)
    token = str(uuid.uuid4())
    claimed = _claim(session, candidates, token, lease_seconds=lease_seconds, now=now)
    if not claimed:
        return result
    runs = _runs_by_execution(instance, claimed)
    settled = [e for e in claimed if runs_settled(runs.get(e, []))]
    unsettled = sorted(set(claimed) - set(settled))
    result.skipped = len(unsettled)
    run_ids = [run.run_id for e in settled for run in runs.get(e, [])]
    try:
        _delete_dagster_runs(instance, run_ids)
        result.rows = _delete_rows(session, settled, run_ids, token) if settled else {}
        session.commit()
    except Exception:
        session.rollback()
        raise  # the claim lapses with its lease; a later tick finishes the batch
    finally:
        _release(session, unsettled, token)
    result.executions = result.rows.get("executions", 0)
    result.runs = len(run_ids)
    return result


__all__ = [
    "RetentionPolicy",
    "RetentionResult",
    "apply_retention",
    "retention_candidates",
    "runs_settled",
]
