"""Live events of executions, as server-sent events: one feed per API process.

An execution's events are its runs' Dagster event-log records (nodes, runs, and the platform
events `adapter/events.py` appends: waiting, decided, notified, cancelled, warnings), in run
order then storage order. An event id is `<execution id[:8]>.<run index>.<storage id>`, so ids
grow within an execution and `Last-Event-ID` names an exact place to resume from.

The `EventFeed` follows every execution someone subscribes to with one task and one worker
thread, whatever the number of subscribers: each tick it asks Dagster once which of those
executions' runs changed (new run, status, tags: `DagsterClient.runs_for_executions`), reads
the logs of runs that are active or changed after its cursor, and fans the events out. A parked
execution costs nothing per tick; subscribers hold a queue, no thread and no connection.
"""

import asyncio
import json
import logging
import re
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import anyio
from anyio import to_thread
from dagster import DagsterEventType
from sqlalchemy import select
from sqlalchemy.orm import Session
from sse_starlette import ServerSentEvent

from flowmaestro_dagster.control.client import DagsterClient, RunInfo
from flowmaestro_dagster.control.executions import TERMINAL, execution_status
from flowmaestro_dagster.control.waitpoints import waiting_executions
from flowmaestro_dagster.runtime.progress import parse_progress
from flowmaestro_dagster.store.db import session_scope
from flowmaestro_dagster.store.models import Execution, Waitpoint
from flowmaestro_dagster.tags import (
    EVENT_DATA_METADATA,
    EVENT_KIND_METADATA,
    EXECUTION_TAG,
    PAUSED_TAG,
    RESUME_TAG,
    RETRY_TAG,
)

log = logging.getLogger("flowmaestro.api.events")

# Dagster event type -> the event name the builder sees
EVENT_NAMES: dict[DagsterEventType, str] = {
    DagsterEventType.STEP_START: "node.started",
    DagsterEventType.STEP_SUCCESS: "node.succeeded",
    DagsterEventType.STEP_FAILURE: "node.failed",
    DagsterEventType.STEP_SKIPPED: "node.skipped",
    DagsterEventType.STEP_UP_FOR_RETRY: "node.retrying",
    DagsterEventType.STEP_RESTARTED: "node.restarted",
    DagsterEventType.RUN_ENQUEUED: "execution.queued",
    DagsterEventType.RUN_DEQUEUED: "execution.dequeued",
    DagsterEventType.RUN_STARTING: "execution.starting",
    DagsterEventType.RUN_START: "execution.running",
    DagsterEventType.RUN_SUCCESS: "run.succeeded",
    DagsterEventType.RUN_FAILURE: "run.failed",
    DagsterEventType.RUN_CANCELED: "run.cancelled",
    DagsterEventType.RUN_CANCELING: "execution.cancelling",
}

# Lines end in "\n" (sse-starlette's default is "\r\n"): clients split events on "\n\n".
SEPARATOR = "\n"
HEARTBEAT_SECONDS = 15.0
ACTIVE_RUN = frozenset({"QUEUED", "NOT_STARTED", "STARTING", "MANAGED", "STARTED", "CANCELING"})
READ_LIMIT = 500
UPDATE_SLACK = timedelta(seconds=2)  # runs changed this long before the last look: read again
# How often executions without a run are checked for having ended without one (launch given
# up, cancelled, deleted): one query for all of them, but not on every tick.
SETTLED_CHECK = timedelta(seconds=1)
SUBSCRIBER_BACKLOG = 10_000  # events queued for one slow subscriber before it is cut off
_ID = re.compile(r"^([0-9a-f-]{1,8})\.(\d{1,6})\.(\d{1,18})$")

EventKey = tuple[int, int]  # (run index, storage id)


class EventIdError(ValueError):
    """A `Last-Event-ID` that is not one of this execution's (malformed, another
    execution's, or later than anything it has)."""


def event_id(execution_id: str, key: EventKey) -> str:
    return f"{execution_id[:8]}.{key[0]}.{key[1]}"


def parse_event_id(execution_id: str, raw: str) -> EventKey:
    match = _ID.match(raw.strip())
    if match is None:
        raise EventIdError(f"Last-Event-ID {raw!r} is not an event id of this API")
    if match.group(1) != execution_id[:8]:
        raise EventIdError(f"Last-Event-ID {raw!r} belongs to another execution")
    return int(match.group(2)), int(match.group(3))


def check_event_id(client: DagsterClient, execution_id: str, key: EventKey) -> None:
    """Refuse an id from the future: a run this execution does not have, or past its log."""
    runs = client.runs_for_execution(execution_id)
    index, storage_id = key
    if index >= len(runs):
        raise EventIdError(f"Last-Event-ID names run {index}; the execution has {len(runs)}")
    newest = client.last_storage_id(runs[index].run_id)
    if newest is None or storage_id > newest:
        raise EventIdError("Last-Event-ID is later than any event of this execution")


def sse(event: str, data: Mapping[str, Any], event_id: str | None = None) -> ServerSentEvent:
    return ServerSentEvent(json.dumps(data, default=str), event=event, id=event_id, sep=SEPARATOR)


@dataclass
class Event:
    key: EventKey
    name: str
    data: dict[str, Any]

    def to_sse(self, execution_id: str) -> ServerSentEvent:
        return sse(self.name, self.data, event_id(execution_id, self.key))


@dataclass
class RunContext:
    """What translating one run's records needs to know about the run."""

    index: int
    run: RunInfo
    parked: list[dict[str, Any]]  # the waitpoints this run parked at


def translate(
    record: Any,
    *,
    execution_id: str,
    context: RunContext,
    node_ids: Mapping[str, str],
    retries: Callable[[str, int], int],
) -> Event | None:
    """The event a Dagster event-log record shows the builder, or None for one it does not."""
    entry = record.event_log_entry
    event = entry.dagster_event
    run = context.run
    key = (context.index, int(record.storage_id))
    base: dict[str, Any] = {
        "execution_id": execution_id,
        "run_id": run.run_id,
        "timestamp": entry.timestamp,
    }
    if event is None:
        progress = parse_progress(entry.user_message)
        if progress is None:
            return None
        return Event(key, "node.progress", {**base, "step_key": entry.step_key, **progress})
    step_key = event.step_key
    if step_key:
        alias = step_key.split("[", 1)[0]
        base["node_id"] = node_ids.get(alias) or alias
        base["step_key"] = step_key
        if "[" in step_key:
            base["iteration"] = step_key.split("[", 1)[1].rstrip("]")
    kind = event.event_type
    if kind == DagsterEventType.ENGINE_EVENT:
        metadata = getattr(event.engine_event_data, "metadata", None) or {}
        name = metadata.get(EVENT_KIND_METADATA)
        if name is None:
            return None
        payload = metadata.get(EVENT_DATA_METADATA)
        data = payload.value if payload is not None else {}
        return Event(key, str(name.value), {**base, "message": entry.user_message, **dict(data)})
    name = EVENT_NAMES.get(kind)
    if name is None:
        return None
    if kind == DagsterEventType.STEP_FAILURE:
        failure = getattr(event.event_specific_data, "user_failure_data", None)
        error = getattr(event.event_specific_data, "error", None)
        base["error"] = getattr(failure, "description", None) or getattr(error, "message", None)
    elif kind == DagsterEventType.STEP_UP_FOR_RETRY:
        data = event.event_specific_data
        error = getattr(data, "error", None)
        attempt = retries(step_key or "", int(record.storage_id))
        base.update(
            attempt=attempt,
            next_attempt=attempt + 1,
            delay_seconds=getattr(data, "seconds_to_wait", None),
            error=getattr(error, "message", None),
        )
    elif kind == DagsterEventType.RUN_START:
        if run.tags.get(RESUME_TAG):
            name = "execution.resumed"
            base["resumed_from"] = run.parent_run_id
        elif run.tags.get(RETRY_TAG):
            name = "execution.retried"
            base["retry_of"] = run.parent_run_id
    elif kind == DagsterEventType.RUN_SUCCESS and context.parked:
        name = "execution.waiting"
        base["waitpoints"] = context.parked
    elif kind == DagsterEventType.RUN_CANCELED and run.tags.get(PAUSED_TAG) == "true":
        name = "execution.paused"
    return Event(key, name, base)


@dataclass
class Subscriber:
    execution_id: str
    node_ids: Mapping[str, str]
    after: EventKey | None
    queue: asyncio.Queue[ServerSentEvent | None] = field(default_factory=asyncio.Queue)


@dataclass
class Followed:
    """One execution someone follows: its runs, how far each run's log was read."""

    execution_id: str
    node_ids: Mapping[str, str]
    runs: list[RunInfo]
    read: dict[str, int | None]  # run id -> last storage id sent
    subscribers: set[int] = field(default_factory=set)  # id() of Subscriber
    done: bool = False


class EventFeed:
    """Follows the executions its subscribers watch; see the module docstring."""

    def __init__(
        self,
        client: DagsterClient,
        sessions: Any,
        *,
        poll_seconds: float = 0.25,
        approval_url: Callable[[str], str] | None = None,
    ) -> None:
        self.client = client
        self.sessions = sessions
        self.poll_seconds = poll_seconds
        self.approval_url = approval_url or (lambda waitpoint_id: f"/approvals/{waitpoint_id}")
        self.followed: dict[str, Followed] = {}
        self.subscribers: dict[int, Subscriber] = {}
        self.joining: list[Subscriber] = []
        self.since: datetime | None = None
        self.settled_checked = datetime.min.replace(tzinfo=UTC)
        self.task: asyncio.Task[None] | None = None
        self.wake = asyncio.Event()
        self.ticks = 0
        self.tick_seconds = 0.0  # summed over the ticks: the feed's cost, for /metrics
        self.taking_in = 0  # joiners the running tick is taking in

    # -- subscribers ----------------------------------------------------------------------

    async def follow(
        self,
        execution_id: str,
        node_ids: Mapping[str, str],
        *,
        after: EventKey | None = None,
        max_seconds: float = 3600.0,
    ) -> AsyncIterator[ServerSentEvent]:
        """The execution's events after `after`, live, until it is terminal."""
        subscriber = Subscriber(execution_id, node_ids, after)
        self.subscribers[id(subscriber)] = subscriber
        self.joining.append(subscriber)
        self._start()
        deadline = anyio.current_time() + max_seconds
        try:
            while True:
                left = deadline - anyio.current_time()
                if left <= 0:
                    return  # the client reconnects with Last-Event-ID
                try:
                    item = await asyncio.wait_for(subscriber.queue.get(), left)
                except TimeoutError:
                    return
                if item is None:
                    return
                yield item
        finally:
            self._leave(subscriber)

    def _leave(self, subscriber: Subscriber) -> None:
        self.subscribers.pop(id(subscriber), None)
        if subscriber in self.joining:
            self.joining.remove(subscriber)
        followed = self.followed.get(subscriber.execution_id)
        if followed is not None:
            followed.subscribers.discard(id(subscriber))
            if not followed.subscribers:
                del self.followed[subscriber.execution_id]

    def _start(self) -> None:
        self.wake.set()
        if self.task is None or self.task.done():
            self.task = asyncio.get_running_loop().create_task(self._run())

    # -- the loop -------------------------------------------------------------------------

    async def _run(self) -> None:
        while self.followed or self.joining:
            joining, self.joining = self.joining, []
            self.taking_in = len(joining)
            followed = dict(self.followed)
            began = anyio.current_time()
            try:
                delivered = await to_thread.run_sync(self._tick, followed, joining)
            except Exception:
                log.exception("event feed tick failed")
                self.joining.extend(s for s in joining if id(s) in self.subscribers)
                delivered = []
            for execution_id, state in followed.items():
                live = {sid for sid in state.subscribers if sid in self.subscribers}
                if state.done or not live:
                    self.followed.pop(execution_id, None)
                else:
                    state.subscribers = live
                    self.followed[execution_id] = state
            for subscriber_id, events in delivered:
                subscriber = self.subscribers.get(subscriber_id)
                if subscriber is not None:
                    self._deliver(subscriber, events)
            self.taking_in = 0
            self.ticks += 1
            self.tick_seconds += anyio.current_time() - began
            self.wake.clear()
            with anyio.move_on_after(self.poll_seconds):
                await self.wake.wait()
        self.task = None

    def _deliver(self, subscriber: Subscriber, events: Sequence[ServerSentEvent | None]) -> None:
        for item in events:
            if subscriber.queue.qsize() >= SUBSCRIBER_BACKLOG:
                log.warning(
                    "cutting off a subscriber of %s: too far behind", subscriber.execution_id
                )
                subscriber.queue.put_nowait(None)
                self._leave(subscriber)
                return
            subscriber.queue.put_nowait(item)

    # -- one tick, in a worker thread -----------------------------------------------------

    def _tick(
        self, followed: dict[str, Followed], joining: list[Subscriber]
    ) -> list[tuple[int, list[ServerSentEvent | None]]]:
        out: list[tuple[int, list[ServerSentEvent | None]]] = []
        started = datetime.now(UTC)
        with session_scope(self.sessions) as session:
            changed = self._changed_runs(followed) if followed else {}
            settled: set[str] = set()
            if joining or started - self.settled_checked >= SETTLED_CHECK:
                settled = _settled_without_runs(
                    session, [e for e, st in followed.items() if not st.runs]
                )
                self.settled_checked = started
            for execution_id, state in followed.items():
                if (
                    execution_id not in changed
                    and execution_id not in settled
                    and not any(run.status in ACTIVE_RUN for run in state.runs)
                ):
                    continue  # parked, finished or not launched, and nothing moved: no read
                events = self._advance(session, state, changed.get(execution_id, []))
                moved = bool(events) or execution_id in changed or execution_id in settled
                end = self._end(session, state, moved)
                batch: list[ServerSentEvent | None] = [e.to_sse(execution_id) for e in events]
                if end is not None:
                    batch += [end, None]
                    state.done = True
                if batch:
                    out.extend((sid, batch) for sid in list(state.subscribers))
            # Joiners of one execution from one place share its load and replay: a thousand
            # opening one stream at once cost one read of its log, not a thousand.
            taken: dict[str, Followed] = {}
            shared: dict[tuple[str, EventKey | None], list[ServerSentEvent | None]] = {}
            for subscriber in joining:
                execution_id = subscriber.execution_id
                found = taken.get(execution_id)
                if found is None:
                    found = followed.get(execution_id)
                    if found is None or found.done:
                        found = self._load(execution_id, subscriber.node_ids)
                        followed[execution_id] = found
                    taken[execution_id] = found
                found.subscribers.add(id(subscriber))
                replayed = shared.get((execution_id, subscriber.after))
                if replayed is None:
                    replay = self._replay(session, found, subscriber.after)
                    replayed = [e.to_sse(execution_id) for e in replay]
                    end = self._end(session, found, True)
                    if end is not None:
                        replayed += [end, None]
                        found.done = True
                    shared[(execution_id, subscriber.after)] = replayed
                out.append((id(subscriber), replayed))
        self.since = started
        return out

    def _changed_runs(self, followed: Mapping[str, Followed]) -> dict[str, list[RunInfo]]:
        # The first tick looks back only the slack: a state loaded on joining has its runs.
        since = (self.since or datetime.now(UTC)) - UPDATE_SLACK
        changed: dict[str, list[RunInfo]] = {}
        for run in self.client.runs_for_executions(list(followed), updated_after=since):
            changed.setdefault(run.tags.get(EXECUTION_TAG, ""), []).append(run)
        return changed

    def _load(self, execution_id: str, node_ids: Mapping[str, str]) -> Followed:
        """Start following: the runs as they are, each read up to its newest record (what came
        before is replayed to each subscriber from its own Last-Event-ID)."""
        runs = self.client.runs_for_execution(execution_id)
        read = {run.run_id: self.client.last_storage_id(run.run_id) for run in runs}
        return Followed(execution_id, node_ids, runs, read)

    def _advance(
        self, session: Session, state: Followed, changed: Sequence[RunInfo]
    ) -> list[Event]:
        """Read what is new in the runs that are active or changed."""
        known = {run.run_id: i for i, run in enumerate(state.runs)}
        touched: set[str] = set()
        for run in changed:
            if run.run_id in known:
                state.runs[known[run.run_id]] = run
            else:
                known[run.run_id] = len(state.runs)
                state.runs.append(run)
                state.read[run.run_id] = None
            touched.add(run.run_id)
        events: list[Event] = []
        for index, run in enumerate(state.runs):
            if run.run_id in touched or run.status in ACTIVE_RUN:
                events += self._read(session, state, index, state.read.get(run.run_id), None)
        return events

    def _replay(self, session: Session, state: Followed, after: EventKey | None) -> list[Event]:
        events: list[Event] = []
        for index, run in enumerate(state.runs):
            if after is not None and index < after[0]:
                continue
            start = after[1] if after is not None and index == after[0] else None
            upto = state.read.get(run.run_id)
            if upto is None or (start is not None and start >= upto):
                continue
            events += self._read(session, state, index, start, upto, advance=False)
        return events

    def _read(
        self,
        session: Session,
        state: Followed,
        index: int,
        after: int | None,
        upto: int | None,
        *,
        advance: bool = True,
    ) -> list[Event]:
        run = state.runs[index]
        context = RunContext(index, run, [])
        parked_loaded = False
        events: list[Event] = []
        position = after
        while True:
            records = self.client.event_records_after(run.run_id, position, READ_LIMIT)
            if upto is not None:
                records = [r for r in records if r.storage_id <= upto]
            for record in records:
                entry = record.event_log_entry.dagster_event
                if (
                    not parked_loaded
                    and entry is not None
                    and entry.event_type == DagsterEventType.RUN_SUCCESS
                ):
                    context.parked = self._parked(session, run.run_id)
                    parked_loaded = True
                shown = translate(
                    record,
                    execution_id=state.execution_id,
                    context=context,
                    node_ids=state.node_ids,
                    retries=lambda step, storage_id: self._attempt(run.run_id, step, storage_id),
                )
                if shown is not None:
                    events.append(shown)
                position = record.storage_id
            if advance and position is not None:
                state.read[run.run_id] = position
            if len(records) < READ_LIMIT:
                return events

    def _attempt(self, run_id: str, step_key: str, storage_id: int) -> int:
        """Which attempt of the step failed, for a STEP_UP_FOR_RETRY record."""
        records = self.client.instance.get_records_for_run(
            run_id, of_type=DagsterEventType.STEP_UP_FOR_RETRY
        ).records
        return sum(
            1
            for r in records
            if r.storage_id <= storage_id and r.event_log_entry.step_key == step_key
        )

    def _parked(self, session: Session, run_id: str) -> list[dict[str, Any]]:
        rows = session.scalars(
            select(Waitpoint).where(Waitpoint.run_id == run_id).order_by(Waitpoint.created_at)
        ).all()
        return [
            {
                "waitpoint_id": row.id,
                "node_id": row.node_id,
                "kind": row.kind,
                "due_at": row.due_at,
                "expires_at": row.expires_at,
                **({"approval_url": self.approval_url(row.id)} if row.kind == "approval" else {}),
            }
            for row in rows
        ]

    def _end(self, session: Session, state: Followed, changed: bool) -> ServerSentEvent | None:
        """The `end` event once the execution (not a run) is terminal."""
        if any(run.status in ACTIVE_RUN for run in state.runs):
            return None
        if not changed:
            return None  # nothing moved since the last look
        execution = session.get(Execution, state.execution_id)
        if execution is None:
            return sse("end", {"execution_id": state.execution_id, "status": "deleted"})
        session.refresh(execution)
        status = execution_status(execution, state.runs)
        if status not in TERMINAL:
            return None
        if status == "succeeded" and _parked_open(session, execution.id):
            return None  # the run ended at a waitpoint: the execution waits
        return sse("end", {"execution_id": state.execution_id, "status": status})


def _settled_without_runs(session: Session, execution_ids: Sequence[str]) -> set[str]:
    """Of executions with no run yet, those that will never get one (launch given up,
    cancelled, deleted): one query for all of them, not two per execution per tick."""
    if not execution_ids:
        return set()
    rows = session.execute(
        select(Execution.id, Execution.status, Execution.cancelled_at).where(
            Execution.id.in_(list(execution_ids))
        )
    ).all()
    found = {row.id for row in rows}
    ended = {row.id for row in rows if row.cancelled_at is not None or row.status in TERMINAL}
    return ended | (set(execution_ids) - found)


def _parked_open(session: Session, execution_id: str) -> bool:
    return bool(waiting_executions(session, [execution_id]))
