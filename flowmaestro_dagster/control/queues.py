"""Run queues: the tags and pool limits behind priority, named queues, per-user and
per-workflow limits; the queue overview (GET /queues); and "why is this execution queued".

Dagster's QueuedRunCoordinator does all the queueing (see docs/queues.md). This module
only (1) tags runs and sets pool slot counts so that Dagster enforces our limits, (2) changes
those tags at runtime for the queue controls (pause a queue, priorities, a user's own limit),
and (3) reads the queue back and replays the daemon's dequeue pass over it, which says where a
queued run stands and which limit holds it back. Nothing here holds or counts a slot: a
run that parked at a waitpoint has ended, so Dagster no longer counts it anywhere.
"""

import logging
import os
import time
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from dagster import DagsterInstance, DagsterRun, DagsterRunStatus, QueuedRunCoordinator, RunsFilter
from sqlalchemy import exists, func, select
from sqlalchemy.orm import Session, object_session

from flowmaestro_dagster.control.client import DagsterClient, RunInfo, delete_run_tags
from flowmaestro_dagster.errors import Conflict, NotFound, PlatformError, Unprocessable
from flowmaestro_dagster.settings import Settings
from flowmaestro_dagster.store.models import (
    Execution,
    PausedQueue,
    User,
    UserRunLimit,
    Workflow,
    utcnow,
)
from flowmaestro_dagster.tags import (
    DEFAULT_QUEUE,
    EXECUTION_TAG,
    PRIORITY_TAG,
    QUEUE_PAUSED_TAG,
    QUEUE_TAG,
    USER_LIMIT_TAG_PREFIX,
    USER_TAG,
    USER_WORKFLOW_TAG,
    WORKFLOW_POOL_PREFIX,
    user_limit_tag,
    workflow_pool,
)
from flowmaestro_dagster.tags import WORKFLOW_ID_TAG as WORKFLOW_TAG

log = logging.getLogger(__name__)

ACTIVE_STATUSES = (DagsterRunStatus.STARTING, DagsterRunStatus.STARTED, DagsterRunStatus.CANCELING)
# The daemon's own knobs (queued_run_coordinator_daemon.py, op_concurrency_limits_counter.py).
PAGE_SIZE = int(os.getenv("DAGSTER_RUN_QUEUE_PAGE_SIZE", "100"))
STARTED_RUN_POOL_SECONDS = int(
    os.getenv("DAGSTER_OP_CONCURRENCY_KEYS_ALLOTTED_FOR_STARTED_RUN_SECONDS", "5")
)

# -- tags and limits: what makes Dagster enforce ours -----------------------------------------


def user_workflow_value(workflow_id: str, user_id: str) -> str:
    """The `USER_WORKFLOW_TAG` value: one run at a time per (workflow, user)."""
    return f"{workflow_id}:{user_id}"


def queue_tags(execution: Execution) -> dict[str, str]:
    """The queue a run waits in, the one-at-a-time-per-user tag if the workflow asks, the
    paused mark if an operator paused the queue, and the user's own limit if they have one."""
    queue = execution.queue or DEFAULT_QUEUE
    tags = {QUEUE_TAG: queue}
    session = object_session(execution)
    if session is None:
        return tags
    workflow = session.get(Workflow, execution.workflow_id)
    if workflow is not None and workflow.one_at_a_time_per_user:
        tags[USER_WORKFLOW_TAG] = user_workflow_value(execution.workflow_id, execution.user_id)
    if session.get(PausedQueue, queue) is not None:
        tags[QUEUE_PAUSED_TAG] = "true"
    own = session.get(UserRunLimit, execution.user_id)
    if own is not None:
        tags[user_limit_tag(own.run_limit)] = execution.user_id
    return tags


def apply_workflow_limits(instance: DagsterInstance, workflow: Workflow) -> None:
    """Make Dagster enforce a workflow's settings now, without a restart or a reload.

    The concurrency limit is the slot count of the workflow's pool (every op of its deployed
    versions is in it; with pool granularity `run` a slot is a run). The one-at-a-time switch
    is a run tag with a per-value limit of 1: runs already queued or running are re-tagged,
    so a change applies to them too (switched off, each run gets a value of its own).
    """
    storage = instance.event_log_storage
    pool = workflow_pool(workflow.id)
    if workflow.concurrency_limit is None:
        if pool in storage.get_concurrency_keys():
            storage.delete_concurrency_limit(pool)
    else:
        storage.set_concurrency_slots(pool, workflow.concurrency_limit)
    active = instance.get_runs(
        RunsFilter(
            tags={WORKFLOW_TAG: workflow.id},
            statuses=[DagsterRunStatus.QUEUED, *ACTIVE_STATUSES],
        )
    )
    for run in active:
        current = run.tags.get(USER_WORKFLOW_TAG)
        if workflow.one_at_a_time_per_user:
            wanted: str | None = user_workflow_value(workflow.id, run.tags.get(USER_TAG, ""))
        else:
            wanted = None if current is None else f"off:{run.run_id}"
        if wanted is not None and wanted != current:
            instance.add_run_tags(run.run_id, {USER_WORKFLOW_TAG: wanted})


# -- operator controls: pause a queue, change priorities, a user's own limit ------------------
#
# Each writes the platform database first (so the next launch tags its run the same way, see
# `queue_tags`), then re-tags the runs already in Dagster's queue; the daemon reads run tags
# at every dequeue pass, so a change takes effect at the next pass, without a restart.

PRIORITY_RANGE = (-1000, 1000)  # as `queue_priority` (spec/configs.py)


def user_limit_ceiling(settings: Settings) -> int:
    """Per-user limits an operator can set live are 0 .. this - 1: below the instance's
    per-user limit (the rule every run is under), else below `max_concurrent_runs`. Each has a
    rule rendered into dagster.yaml (`instance_config.tag_concurrency_limits`)."""
    if settings.user_run_limit is not None:
        return settings.user_run_limit
    return max(settings.max_concurrent_runs, 0)


def _untag(instance: DagsterInstance, run_id: str, key: str, neutral: str) -> None:
    """Take a tag off a run; where the run storage cannot, give it a value no rule matches."""
    if not delete_run_tags(instance, run_id, [key]):
        instance.add_run_tags(run_id, {key: neutral})


def is_known_queue(session: Session, settings: Settings, name: str) -> bool:
    """A configured queue, `default`, a paused one, or one a workflow or execution names."""
    if name == DEFAULT_QUEUE or name in settings.queue_limits:
        return True
    if session.get(PausedQueue, name) is not None:
        return True
    named = (
        select(exists().where(Execution.queue == name)),
        select(exists().where(Workflow.queue == name)),
    )
    return any(bool(session.scalar(query)) for query in named)


def paused_queues(session: Session) -> dict[str, PausedQueue]:
    return {row.name: row for row in session.scalars(select(PausedQueue))}


def hold_queued_runs(instance: DagsterInstance, name: str) -> int:
    """Tag the queue's queued runs paused (a limit of 0 keeps them queued); a run the daemon
    dequeued meanwhile loses the mark again, so a retry of it does not inherit it."""
    queued = instance.get_runs(
        RunsFilter(tags={QUEUE_TAG: name}, statuses=[DagsterRunStatus.QUEUED])
    )
    for run in queued:
        if run.tags.get(QUEUE_PAUSED_TAG) != "true":
            instance.add_run_tags(run.run_id, {QUEUE_PAUSED_TAG: "true"})
    tagged = [run.run_id for run in queued]
    for run in instance.get_runs(RunsFilter(run_ids=tagged)) if tagged else ():
        if run.status != DagsterRunStatus.QUEUED:
            _untag(instance, run.run_id, QUEUE_PAUSED_TAG, "false")
    return len(queued)


def release_queued_runs(instance: DagsterInstance, name: str) -> int:
    """Take the paused mark off the queue's queued runs: the next pass considers them again."""
    held = instance.get_runs(
        RunsFilter(
            tags={QUEUE_TAG: name, QUEUE_PAUSED_TAG: "true"}, statuses=[DagsterRunStatus.QUEUED]
        )
    )
    for run in held:
        _untag(instance, run.run_id, QUEUE_PAUSED_TAG, "false")
    return len(held)


def pause_queue(
    session: Session, instance: DagsterInstance, settings: Settings, *, name: str, by: str
) -> int:
    """Pause a queue: its queued runs stay queued (nothing is lost), running ones finish, new
    ones queue behind the pause. Idempotent. How many queued runs it holds."""
    if not is_known_queue(session, settings, name):
        raise NotFound(f"no queue named {name!r}")
    if session.get(PausedQueue, name) is None:
        session.add(PausedQueue(name=name, paused_by=by))
    session.commit()  # before the re-tagging: a launch from now on reads the pause
    return hold_queued_runs(instance, name)


def resume_queue(
    session: Session, instance: DagsterInstance, settings: Settings, *, name: str
) -> int:
    """Resume a queue: its held runs go at the next dequeue pass, in their priority and FIFO
    order. Idempotent. How many queued runs it released."""
    if not is_known_queue(session, settings, name):
        raise NotFound(f"no queue named {name!r}")
    row = session.get(PausedQueue, name)
    if row is not None:
        session.delete(row)
    session.commit()
    return release_queued_runs(instance, name)


def settle_launched_run(instance: DagsterInstance, session: Session, run_id: str) -> None:
    """After a launch: if the run's queue was paused or resumed between reading its tags and
    Dagster storing the run (the pause's re-tagging could not see it), fix its mark now. Reads
    the committed pause state on a connection of its own (not the launch's transaction)."""
    run = instance.get_run_by_id(run_id)
    if run is None or run.status != DagsterRunStatus.QUEUED:
        return
    queue = run.tags.get(QUEUE_TAG, DEFAULT_QUEUE)
    with session.get_bind().connect() as connection:  # type: ignore[union-attr]
        paused = connection.scalar(
            select(func.count()).select_from(PausedQueue).where(PausedQueue.name == queue)
        )
    marked = run.tags.get(QUEUE_PAUSED_TAG) == "true"
    if paused and not marked:
        instance.add_run_tags(run_id, {QUEUE_PAUSED_TAG: "true"})
    elif marked and not paused:
        _untag(instance, run_id, QUEUE_PAUSED_TAG, "false")


def set_priority(
    session: Session,
    instance: DagsterInstance,
    *,
    priority: int,
    execution: Execution | None = None,
    workflow_id: str | None = None,
    user_id: str | None = None,
) -> tuple[list[str], int]:
    """Change the priority of queued executions: one, all of a workflow's, or all of a user's.

    Queued means its run waits in Dagster's queue (re-tagged `dagster/priority`, which the
    daemon sorts by at each pass) or it is not handed to Dagster yet (launched with the new
    value). The execution row keeps the new priority for its later runs (a resume).
    (execution ids changed, runs re-tagged)."""
    low, high = PRIORITY_RANGE
    if not low <= priority <= high:
        raise Unprocessable(
            f"priority must be between {low} and {high}",
            problems=[{"field": "priority", "message": f"must be between {low} and {high}"}],
        )
    if execution is not None:
        column, tag, value = Execution.id, EXECUTION_TAG, execution.id
    elif workflow_id is not None:
        column, tag, value = Execution.workflow_id, WORKFLOW_TAG, workflow_id
    elif user_id is not None:
        column, tag, value = Execution.user_id, USER_TAG, user_id
    else:
        raise ValueError("name an execution, a workflow or a user")
    if execution is not None and execution.status in ("succeeded", "failed", "cancelled"):
        raise Conflict(f"execution {execution.id} has {execution.status}: nothing waits to start")
    runs = instance.get_runs(RunsFilter(tags={tag: value}, statuses=[DagsterRunStatus.QUEUED]))
    queued_ids = {run.tags[EXECUTION_TAG] for run in runs if EXECUTION_TAG in run.tags}
    rows = list(
        session.scalars(
            select(Execution).where(
                column == value,
                Execution.id.in_(queued_ids)
                | ((Execution.status == "queued") & Execution.launched_at.is_(None)),
            )
        )
    )
    if execution is not None and execution not in rows:
        rows.append(execution)  # waiting or paused: its next run gets the new priority
    for row in rows:
        row.priority = priority
    session.commit()
    for run in runs:
        instance.add_run_tags(run.run_id, {PRIORITY_TAG: str(priority)})
    return sorted(row.id for row in rows), len(runs)


def set_user_limit(
    session: Session,
    instance: DagsterInstance,
    settings: Settings,
    *,
    user_id: str,
    limit: int | None,
    by: str,
) -> int | None:
    """Give a user a limit of their own (None: back to the instance's per-user limit), at once:
    their queued and running runs are re-tagged, so running ones count against it. The new
    effective limit."""
    if session.get(User, user_id) is None:
        raise NotFound(f"no user {user_id}")
    ceiling = user_limit_ceiling(settings)
    if limit is not None and not 0 <= limit < ceiling:
        message = (
            f"must be between 0 and {ceiling - 1} (below the instance's per-user limit; "
            "raise FLOWMAESTRO_USER_RUN_LIMIT and restart Dagster for more)"
            if ceiling
            else "no per-user limit can be set: the instance has no per-user or instance limit"
        )
        raise Unprocessable(f"limit {message}", problems=[{"field": "limit", "message": message}])
    row = session.get(UserRunLimit, user_id)
    if limit is None and row is not None:
        session.delete(row)
    elif limit is not None and row is None:
        session.add(UserRunLimit(user_id=user_id, run_limit=limit, updated_by=by))
    elif row is not None and limit is not None:
        row.run_limit, row.updated_by, row.updated_at = limit, by, utcnow()
    session.commit()
    apply_user_limit(instance, user_id, limit)
    return limit if limit is not None else settings.user_run_limit


def apply_user_limit(instance: DagsterInstance, user_id: str, limit: int | None) -> int:
    """Re-tag a user's queued and running runs with their limit's tag (and off any other)."""
    wanted = user_limit_tag(limit) if limit is not None else None
    runs = instance.get_runs(
        RunsFilter(tags={USER_TAG: user_id}, statuses=[DagsterRunStatus.QUEUED, *ACTIVE_STATUSES])
    )
    for run in runs:
        for key in [k for k in run.tags if k.startswith(USER_LIMIT_TAG_PREFIX) and k != wanted]:
            _untag(instance, run.run_id, key, f"off:{run.run_id}")
        if wanted is not None and run.tags.get(wanted) != user_id:
            instance.add_run_tags(run.run_id, {wanted: user_id})
    return len(runs)


# -- the queue as the daemon sees it ----------------------------------------------------------


@dataclass(frozen=True)
class RunView:
    """A run as the dequeue pass sees it: its tags and the pools its steps are in."""

    run_id: str
    status: str
    tags: Mapping[str, str]
    all_pools: frozenset[str] = frozenset()
    root_pools: Mapping[str, int] = field(default_factory=dict)
    unconstrained_roots: bool = False
    start_time: float | None = None

    @classmethod
    def of(cls, run: DagsterRun, start_time: float | None = None) -> "RunView":
        concurrency = run.run_op_concurrency
        return cls(
            run_id=run.run_id,
            status=run.status.value,
            tags=dict(run.tags),
            all_pools=frozenset(concurrency.all_pools or ()) if concurrency else frozenset(),
            root_pools=dict(concurrency.root_key_counts) if concurrency else {},
            unconstrained_roots=bool(concurrency and concurrency.has_unconstrained_root_nodes),
            start_time=start_time,
        )

    @property
    def priority(self) -> int:
        try:
            return int(self.tags.get(PRIORITY_TAG, "0"))
        except ValueError:
            return 0


@dataclass(frozen=True)
class PoolState:
    slot_count: int
    pending_steps: int = 0


@dataclass(frozen=True)
class QueueSnapshot:
    """Everything one dequeue pass reads: limits, queued runs (enqueue order), active runs."""

    max_concurrent_runs: int
    tag_limits: Sequence[Mapping[str, Any]]
    granularity: str  # "run" | "op"
    queued: Sequence[RunView]
    in_progress: Sequence[RunView]
    pools: Mapping[str, PoolState] = field(default_factory=dict)
    slot_buffer: int = 0
    block_on_pools: bool = True
    dequeue_interval_seconds: float = 1.0
    now: float = 0.0


def read_snapshot(instance: DagsterInstance) -> QueueSnapshot:
    """The run queue from the instance's storage (what the daemon's next pass will read)."""
    coordinator = instance.run_coordinator
    config = instance.get_concurrency_config()
    queue = config.run_queue_config
    if not isinstance(coordinator, QueuedRunCoordinator) or queue is None:
        raise PlatformError(
            "the Dagster instance has no run queue (run_coordinator in dagster.yaml)"
        )
    granularity = config.pool_config.pool_granularity
    granularity_name = granularity.value if granularity is not None else "op"
    queued = [
        RunView.of(run)
        for run in instance.get_runs(RunsFilter(statuses=[DagsterRunStatus.QUEUED]), ascending=True)
    ]
    records = instance.get_run_records(filters=RunsFilter(statuses=list(ACTIVE_STATUSES)))
    in_progress = [RunView.of(r.dagster_run, r.start_time) for r in records]
    pools: dict[str, PoolState] = {}
    if queue.should_block_op_concurrency_limited_runs:
        storage = instance.event_log_storage
        wanted = {
            pool
            for run in queued
            for pool in (run.all_pools if granularity_name == "run" else run.root_pools)
        }
        configured = sorted(wanted & storage.get_concurrency_keys())
        if configured:
            infos = storage.get_concurrency_infos(configured)
            pools = {
                key: PoolState(info.slot_count, len(info.pending_steps))
                for key, info in infos.items()
            }
    return QueueSnapshot(
        max_concurrent_runs=queue.max_concurrent_runs,
        tag_limits=list(queue.tag_concurrency_limits or ()),
        granularity=granularity_name,
        queued=queued,
        in_progress=in_progress,
        pools=pools,
        slot_buffer=queue.op_concurrency_slot_buffer,
        block_on_pools=queue.should_block_op_concurrency_limited_runs,
        dequeue_interval_seconds=coordinator.dequeue_interval_seconds,
        now=time.time(),
    )


# -- why a run is queued: the daemon's pass, replayed -----------------------------------------


@dataclass(frozen=True)
class Hold:
    """One limit that keeps a queued run from starting: `running` runs hold it now and
    `ahead` runs before this one in the queue take what is left."""

    kind: str  # user | user_workflow | queue | workflow | tag | pool | instance
    key: str
    value: str | None
    limit: int
    running: int
    ahead: int = 0

    def describe(self) -> str:
        ahead = f" and {self.ahead} ahead of it in the queue" if self.ahead else ""
        if self.kind == "user":
            return (
                f"per-user limit: this user has {self.running} run(s) in progress{ahead}; "
                f"the limit is {self.limit}"
            )
        if self.kind == "user_workflow":
            return "one at a time per user: this user's run of this workflow " + (
                "is still in progress" if self.running else "ahead of it runs first"
            )
        if self.kind == "queue":
            if self.limit == 0:
                return f"queue '{self.value}' is paused (limit 0)"
            return (
                f"queue '{self.value}' is full: {self.running} run(s) in progress{ahead}; "
                f"the limit is {self.limit}"
            )
        if self.kind == "workflow":
            return (
                f"workflow concurrency limit: {self.running} run(s) of this workflow in "
                f"progress{ahead}; the limit is {self.limit}"
            )
        if self.kind == "instance":
            return (
                f"instance limit: {self.running} run(s) in progress{ahead}; "
                f"max_concurrent_runs is {self.limit}"
            )
        what = f"{self.key}={self.value}" if self.value is not None else self.key
        return f"{self.kind} limit {what}: {self.running} in progress{ahead}; limit {self.limit}"


@dataclass(frozen=True)
class Verdict:
    run_id: str
    position: int  # 1-based, in the order the daemon considers queued runs
    queued: int
    holds: tuple[Hold, ...]
    dequeue_interval_seconds: float = 1.0

    @property
    def reason(self) -> str:
        if not self.holds:
            return (
                "no limit holds it back: it starts at the next dequeue "
                f"(every {self.dequeue_interval_seconds:g} s)"
            )
        return "; ".join(hold.describe() for hold in self.holds)


def priority_sort(runs: Iterable[RunView]) -> list[RunView]:
    """Highest `dagster/priority` first; stable, so FIFO among equals (as the daemon)."""
    return sorted(runs, key=lambda run: run.priority, reverse=True)


def _tag_kind(key: str) -> str:
    if key.startswith(USER_LIMIT_TAG_PREFIX):
        return "user"  # the user's own limit
    kinds = {
        USER_TAG: "user",
        USER_WORKFLOW_TAG: "user_workflow",
        QUEUE_TAG: "queue",
        QUEUE_PAUSED_TAG: "queue",
    }
    return kinds.get(key, "tag")


class _TagCounter:
    """Dagster's TagConcurrencyLimitsCounter, telling which limit blocks and why."""

    def __init__(self, rules: Sequence[Mapping[str, Any]], in_progress: Sequence[RunView]) -> None:
        self.key_limits: dict[str, int] = {}
        self.key_value_limits: dict[tuple[str, str], int] = {}
        self.unique_limits: dict[str, int] = {}
        for rule in rules:
            key, value, limit = rule["key"], rule.get("value"), int(rule["limit"])
            if isinstance(value, str):
                self.key_value_limits[(key, value)] = limit
            elif not value or not value.get("applyLimitPerUniqueValue"):
                self.key_limits[key] = limit
            else:
                self.unique_limits[key] = limit
        self.running: Counter[tuple[str, str | None]] = Counter()
        self.ahead: Counter[tuple[str, str | None]] = Counter()
        for run in in_progress:
            for slot, _ in self._slots(run):
                self.running[slot] += 1

    def _slots(self, run: RunView) -> Iterable[tuple[tuple[str, str | None], int]]:
        for key, value in run.tags.items():
            if key in self.key_limits:
                yield (key, None), self.key_limits[key]
            if (key, value) in self.key_value_limits:
                yield (key, value), self.key_value_limits[(key, value)]
            if key in self.unique_limits:
                yield (key, value), self.unique_limits[key]

    def holds(self, run: RunView) -> list[Hold]:
        blocked = []
        for slot, limit in self._slots(run):
            if self.running[slot] + self.ahead[slot] >= limit:
                key, value = slot
                if key == QUEUE_PAUSED_TAG:  # name the queue, not the mark
                    value = run.tags.get(QUEUE_TAG, DEFAULT_QUEUE)
                blocked.append(
                    Hold(_tag_kind(key), key, value, limit, self.running[slot], self.ahead[slot])
                )
        return blocked

    def add(self, run: RunView) -> None:
        for slot, _ in self._slots(run):
            self.ahead[slot] += 1


class _PoolCounter:
    """Dagster's GlobalOpConcurrencyLimitsCounter (both granularities), telling which pool."""

    def __init__(self, snapshot: QueueSnapshot) -> None:
        self.run_level = snapshot.granularity == "run"
        self.pools = snapshot.pools
        self.offset = snapshot.slot_buffer
        self.running: Counter[str] = Counter()
        self.ahead: Counter[str] = Counter()
        for run in snapshot.in_progress:
            if self._holds_slots(run, snapshot.now):
                for pool, count in self._slot_counts(run).items():
                    self.running[pool] += count

    def _holds_slots(self, run: RunView, now: float) -> bool:
        if not run.all_pools:
            return False
        if self.run_level or run.status == DagsterRunStatus.STARTING.value:
            return True
        return (
            run.status == DagsterRunStatus.STARTED.value
            and run.start_time is not None
            and now - run.start_time < STARTED_RUN_POOL_SECONDS
        )

    def _slot_counts(self, run: RunView) -> Mapping[str, int]:
        return {pool: 1 for pool in run.all_pools} if self.run_level else run.root_pools

    def _hold(self, pool: str, state: PoolState) -> Hold:
        is_workflow = pool.startswith(WORKFLOW_POOL_PREFIX)
        return Hold(
            "workflow" if is_workflow else "pool",
            pool,
            pool.removeprefix(WORKFLOW_POOL_PREFIX) if is_workflow else None,
            state.slot_count,
            self.running[pool],
            self.ahead[pool],
        )

    def holds(self, run: RunView) -> list[Hold]:
        if not run.all_pools:
            return []
        if self.run_level:
            return [
                self._hold(pool, state)
                for pool in sorted(run.all_pools)
                if (state := self.pools.get(pool)) is not None
                and state.slot_count - self.ahead[pool] - self.running[pool] + self.offset <= 0
            ]
        if run.unconstrained_roots:
            return []
        blocked = []
        for pool in run.root_pools:
            state = self.pools.get(pool)
            if state is None:
                return []
            free = state.slot_count - state.pending_steps - self.ahead[pool] - self.running[pool]
            if free + self.offset > 0:
                return []
            blocked.append(self._hold(pool, state))
        return blocked

    def add(self, run: RunView) -> None:
        for pool, count in self._slot_counts(run).items():
            self.ahead[pool] += count


def simulate(snapshot: QueueSnapshot, page_size: int = PAGE_SIZE) -> dict[str, Verdict]:
    """Replay one dequeue pass of Dagster's QueuedRunCoordinatorDaemon over the snapshot.

    Same steps as `_get_runs_to_dequeue`: pages of queued runs in enqueue order, the batch
    re-sorted by priority after each page, tag limits then pool limits per run (counting
    active runs and the runs launched earlier in the pass), the batch cut to the free
    instance slots. A run in the final batch launches at the next pass; every other run gets
    the limits that stopped it the last time the pass looked at it.
    """
    order = priority_sort(snapshot.queued)
    positions = {run.run_id: index for index, run in enumerate(order, 1)}
    holds: dict[str, tuple[Hold, ...]] = {}
    running = len(snapshot.in_progress)
    limited = snapshot.max_concurrent_runs != -1
    capacity = snapshot.max_concurrent_runs - running
    if limited and capacity <= 0:
        full = (
            Hold("instance", "max_concurrent_runs", None, snapshot.max_concurrent_runs, running),
        )
        holds = {run.run_id: full for run in order}
    else:
        batch: list[RunView] = []
        queued = list(snapshot.queued)
        for start in range(0, len(queued), page_size):
            batch = priority_sort([*batch, *queued[start : start + page_size]])
            tags = _TagCounter(snapshot.tag_limits, snapshot.in_progress)
            pools = _PoolCounter(snapshot)
            kept: list[RunView] = []
            for run in batch:
                blocked = tags.holds(run)
                if not blocked:
                    tags.add(run)  # the daemon counts it before looking at pools
                    blocked = pools.holds(run) if snapshot.block_on_pools else []
                    if not blocked:
                        pools.add(run)
                if blocked:
                    holds[run.run_id] = tuple(blocked)
                    continue
                holds.pop(run.run_id, None)
                kept.append(run)
            batch = kept
            if limited and capacity >= 1:
                for run in batch[capacity:]:
                    holds[run.run_id] = (
                        Hold(
                            "instance",
                            "max_concurrent_runs",
                            None,
                            snapshot.max_concurrent_runs,
                            running,
                            capacity,
                        ),
                    )
                batch = batch[:capacity]
    return {
        run.run_id: Verdict(
            run.run_id,
            positions[run.run_id],
            len(order),
            holds.get(run.run_id, ()),
            snapshot.dequeue_interval_seconds,
        )
        for run in order
    }


def explain(instance: DagsterInstance, run_id: str) -> Verdict | None:
    """Where a queued run stands and what holds it back (None if it is not queued)."""
    return simulate(read_snapshot(instance)).get(run_id)


@lru_cache(maxsize=8)
def _client(graphql_url: str, timeout: float, dagster_home: str | None) -> DagsterClient:
    return DagsterClient(graphql_url, timeout=timeout)


def instance_for(settings: Settings) -> DagsterInstance:
    """The instance the API reads (DAGSTER_HOME), opened once per process."""
    client = _client(
        settings.dagster_graphql_url,
        settings.graphql_timeout_seconds,
        os.environ.get("DAGSTER_HOME"),
    )
    instance: DagsterInstance = client.instance
    return instance


def queue_status(
    execution: Execution, runs: Sequence[RunInfo], settings: Settings
) -> tuple[int | None, str | None]:
    """(queue position, why it is queued) for an execution that waits to start."""
    if not runs:
        if execution.status == "queued" and execution.launched_at is None:
            waiting = "submitted: not yet in Dagster's run queue (the launch is pending"
            return None, waiting + (f": {execution.error})" if execution.error else ")")
        return None, None
    latest = runs[-1]
    if latest.status == DagsterRunStatus.STARTING.value:
        return None, "dequeued: its run worker is starting"
    if latest.status != DagsterRunStatus.QUEUED.value:
        return None, None
    try:
        verdict = explain(instance_for(settings), latest.run_id)
    except Exception as exc:  # noqa: BLE001 - an explanation must never fail the execution view
        log.warning("cannot explain why execution %s is queued: %s", execution.id, exc)
        return None, None
    if verdict is None:  # it left the queue between the two reads
        return None, None
    return verdict.position, verdict.reason


# -- GET /queues ------------------------------------------------------------------------------


@dataclass
class Counts:
    queued: int = 0
    running: int = 0


@dataclass
class QueueOverview:
    max_concurrent_runs: int | None
    running: int
    queued: int
    queues: list[dict[str, Any]]
    users: list[dict[str, Any]]
    workflows: list[dict[str, Any]]


def _count(snapshot: QueueSnapshot, key: str) -> dict[str, Counts]:
    counts: dict[str, Counts] = {}
    for run in snapshot.queued:
        if key in run.tags:
            counts.setdefault(run.tags[key], Counts()).queued += 1
    for run in snapshot.in_progress:
        if key in run.tags:
            counts.setdefault(run.tags[key], Counts()).running += 1
    return counts


def overview(session: Session, instance: DagsterInstance, user: User) -> QueueOverview:
    """Queued and running runs per queue (everyone's), for the caller and per workflow of
    the caller's. Runs parked at a waitpoint have ended: they are `waiting`, not running."""
    snapshot = read_snapshot(instance)
    queue_limits = {
        str(rule["value"]): int(rule["limit"])
        for rule in snapshot.tag_limits
        if rule["key"] == QUEUE_TAG and isinstance(rule.get("value"), str)
    }
    user_limit = next(
        (
            int(rule["limit"])
            for rule in snapshot.tag_limits
            if rule["key"] == USER_TAG and isinstance(rule.get("value"), Mapping)
        ),
        None,
    )
    per_queue = _count(snapshot, QUEUE_TAG)
    paused = paused_queues(session)
    queues = [
        {
            "name": name,
            "limit": queue_limits.get(name),
            "paused": name in paused,
            **vars(per_queue.get(name, Counts())),
        }
        for name in sorted(set(queue_limits) | set(per_queue) | set(paused) | {DEFAULT_QUEUE})
    ]
    mine = _count(snapshot, USER_TAG).get(user.id, Counts())
    waiting: dict[str, int] = {
        str(workflow_id): int(count)
        for workflow_id, count in session.execute(
            select(Execution.workflow_id, func.count())
            .where(Execution.user_id == user.id, Execution.status == "waiting")
            .group_by(Execution.workflow_id)
        ).all()
    }
    pending = session.scalar(
        select(func.count()).where(
            Execution.user_id == user.id,
            Execution.status == "queued",
            Execution.launched_at.is_(None),
        )
    )
    own = session.get(UserRunLimit, user.id)
    users = [
        {
            "user_id": user.id,
            "limit": own.run_limit if own is not None else user_limit,
            **vars(mine),
            "waiting": sum(waiting.values()),
            "pending_launch": int(pending or 0),
        }
    ]
    per_workflow = _count(snapshot, WORKFLOW_TAG)
    applied = {p.name: p.limit for p in instance.event_log_storage.get_pool_limits()}
    rows = session.scalars(
        select(Workflow)
        .where(
            Workflow.owner_id == user.id,
            Workflow.archived_at.is_(None),
            Workflow.deployed_version.is_not(None),
        )
        .order_by(Workflow.created_at)
    ).all()
    workflows = [
        {
            "workflow_id": row.id,
            "name": row.name,
            "concurrency_limit": row.concurrency_limit,
            "applied_limit": applied.get(workflow_pool(row.id)),
            "one_at_a_time_per_user": row.one_at_a_time_per_user,
            **vars(per_workflow.get(row.id, Counts())),
            "waiting": int(waiting.get(row.id, 0)),
        }
        for row in rows
    ]
    return QueueOverview(
        max_concurrent_runs=None
        if snapshot.max_concurrent_runs == -1
        else snapshot.max_concurrent_runs,
        running=len(snapshot.in_progress),
        queued=len(snapshot.queued),
        queues=queues,
        users=users,
        workflows=workflows,
    )
