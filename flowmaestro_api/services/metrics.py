"""The platform's Prometheus metrics: collectors read the platform DB and Dagster at scrape time.

Each app has its own `CollectorRegistry` (`metrics_registry`), so apps built side by side (the
tests make many) never share or double-register a metric. Every DB reading is one aggregate
query (GROUP BY); the node duration histogram is the one stateful part: Dagster's finished
runs are read once each, since the last scrape. The families are built by hand
(`*MetricFamily`), so no `_created` samples are written.
"""

import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from datetime import UTC, datetime
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from sqlalchemy import ColumnElement, and_, case, extract, func, select
from sqlalchemy.orm import Session, sessionmaker

from flowmaestro_api.services.events import EventFeed
from flowmaestro_dagster.control.client import DagsterClient
from flowmaestro_dagster.control.timeline import FINISHED
from flowmaestro_dagster.store.db import session_scope
from flowmaestro_dagster.store.models import Decision, Execution, NodeAttempt, Waitpoint
from flowmaestro_dagster.tags import DEFAULT_QUEUE
from flowmaestro_dagster.tags import WORKFLOW_NAME_TAG as WORKFLOW_TAG

BUCKETS: tuple[float, ...] = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900)
# An approval waits for a person: seconds to days.
APPROVAL_BUCKETS: tuple[float, ...] = (5, 30, 60, 300, 900, 1800, 3600, 14400, 86400, 259200)
STATUSES = ("queued", "running", "waiting", "succeeded", "failed", "cancelled")
OPEN_WAITPOINTS = ("pending", "resolved", "resuming")


def op_type(op_definition_name: str) -> str:
    """`llm_node_e` → `llm`, `shared_memory_node` → `shared_memory` (see adapter.OpShape)."""
    base, found, _ = op_definition_name.rpartition("_node")
    return base if found and base else "other"


def histogram_buckets(bounds: Sequence[float], counts: Sequence[int]) -> list[tuple[str, float]]:
    """Cumulative `(le, count)` pairs ending with `+Inf`; `counts` has one more than bounds."""
    pairs = [(f"{bound:g}", float(count)) for bound, count in zip(bounds, counts, strict=False)]
    return [*pairs, ("+Inf", float(counts[-1]))]


class NodeDurationHistogram:
    """Node running time (the attempts of each step) by node type, counted once per finished
    run. Cumulative for the life of the API process, as Prometheus expects of a histogram;
    each scrape reads the runs that finished since the last one."""

    def __init__(self, batch: int = 500) -> None:
        self.batch = batch
        self._lock = threading.Lock()
        self.counts: dict[str, list[int]] = {}
        self.sums: dict[str, float] = {}
        self._seen: dict[str, float] = {}  # run id -> update time
        self._watermark: float | None = None
        self._types: dict[str, dict[str, str]] = {}  # job snapshot id -> alias -> type

    def observe(self, node_type: str, seconds: float) -> None:
        counts = self.counts.setdefault(node_type, [0] * (len(BUCKETS) + 1))
        for index, bound in enumerate(BUCKETS):
            if seconds <= bound:
                counts[index] += 1
        counts[-1] += 1  # +Inf
        self.sums[node_type] = self.sums.get(node_type, 0.0) + seconds

    def update(self, instance: Any, *, max_batches: int = 4) -> None:
        """Read runs finished since the last update (at most `max_batches` batches)."""
        from dagster import DagsterRunStatus, RunsFilter

        statuses = [DagsterRunStatus(s) for s in sorted(FINISHED)]
        with self._lock:
            for _ in range(max_batches):
                after = (
                    datetime.fromtimestamp(self._watermark - 1, UTC)
                    if self._watermark is not None
                    else None
                )
                records = instance.get_run_records(
                    filters=RunsFilter(statuses=statuses, updated_after=after),
                    limit=self.batch,
                    order_by="update_timestamp",
                    ascending=True,
                )
                fresh = [r for r in records if r.dagster_run.run_id not in self._seen]
                for record in records:
                    updated = record.update_timestamp.timestamp()
                    self._watermark = max(self._watermark or updated, updated)
                for record in fresh:
                    self._seen[record.dagster_run.run_id] = record.update_timestamp.timestamp()
                    if WORKFLOW_TAG in record.dagster_run.tags:
                        self._observe_run(instance, record.dagster_run)
                if self._watermark is not None:
                    horizon = self._watermark - 3600
                    self._seen = {k: v for k, v in self._seen.items() if v >= horizon}
                if len(records) < self.batch or not fresh:
                    break

    def _observe_run(self, instance: Any, run: Any) -> None:
        types = self._types.get(run.job_snapshot_id)
        if types is None:
            types = {}
            try:
                snapshot = instance.get_job_snapshot(run.job_snapshot_id)
                for invocation in snapshot.dep_structure_snapshot.node_invocation_snaps:
                    types[invocation.node_name] = op_type(invocation.node_def_name)
            except Exception:  # noqa: BLE001 - no snapshot: the steps count as type "other"
                types = {}
            self._types[run.job_snapshot_id] = types
        for stat in instance.get_run_step_stats(run.run_id):
            alias = stat.step_key.split("[", 1)[0]
            markers = [m for m in (stat.attempts_list or []) if m.start_time and m.end_time]
            if markers:
                seconds = sum(m.end_time - m.start_time for m in markers)
            elif stat.start_time and stat.end_time:
                seconds = stat.end_time - stat.start_time
            else:
                continue
            self.observe(types.get(alias, "other"), max(seconds, 0.0))

    def family(self) -> HistogramMetricFamily:
        family = HistogramMetricFamily(
            "flowmaestro_node_duration_seconds",
            "Running time of node steps (all attempts), by node type.",
            labels=["type"],
        )
        with self._lock:
            for node_type in sorted(self.counts):
                family.add_metric(
                    [node_type],
                    histogram_buckets(BUCKETS, self.counts[node_type]),
                    self.sums[node_type],
                )
        return family


def _seconds_between(later: Any, earlier: Any, dialect: str) -> ColumnElement[Any]:
    """`later - earlier` in seconds, in SQL (PostgreSQL's epoch, SQLite's julian days)."""
    if dialect == "sqlite":
        return (func.julianday(later) - func.julianday(earlier)) * 86400.0
    return extract("epoch", later - earlier)


def _aware(moment: datetime) -> datetime:
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment


class PlatformCollector(Collector):
    """What the platform DB knows: executions by status, the queue by queue and priority,
    launches, waitpoints, node attempts and approval latency."""

    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self.sessions = sessions

    def collect(self) -> Iterator[Metric]:
        with session_scope(self.sessions) as session:
            yield from self._executions(session)
            yield from self._waitpoints(session)
            yield from self._attempts(session)
            yield self._approval_latency(session)

    def _executions(self, session: Session) -> Iterable[Metric]:
        statuses = dict.fromkeys(STATUSES, 0)
        for status, count in session.execute(
            select(Execution.status, func.count()).group_by(Execution.status)
        ):
            statuses[status] = int(count)
        executions = GaugeMetricFamily(
            "flowmaestro_executions",
            "Executions by status (as last recorded by the platform).",
            labels=["status"],
        )
        for status, count in sorted(statuses.items()):
            executions.add_metric([status], count)
        yield executions

        pending = session.scalar(
            select(func.count())
            .select_from(Execution)
            .where(Execution.launched_at.is_(None), Execution.status == "queued")
        )
        yield GaugeMetricFamily(
            "flowmaestro_executions_pending_launch",
            "Executions committed but not launched as a Dagster run yet.",
            value=int(pending or 0),
        )

        queue = func.coalesce(Execution.queue, DEFAULT_QUEUE)
        depth = GaugeMetricFamily(
            "flowmaestro_queued_executions",
            "Queued executions (not started yet) by queue and priority.",
            labels=["queue", "priority"],
        )
        oldest = GaugeMetricFamily(
            "flowmaestro_queued_oldest_age_seconds",
            "Age of the oldest queued execution by queue and priority.",
            labels=["queue", "priority"],
        )
        now = datetime.now(UTC)
        rows = session.execute(
            select(queue, Execution.priority, func.count(), func.min(Execution.created_at))
            .where(Execution.status == "queued")
            .group_by(queue, Execution.priority)
        )
        for name, priority, count, first in rows:
            labels = [str(name), str(priority)]
            depth.add_metric(labels, int(count))
            oldest.add_metric(labels, max((now - _aware(first)).total_seconds(), 0.0))
        yield depth
        yield oldest

        # ix_executions_pending_launch (launched_at, status) covers both.
        retrying, given_up = session.execute(
            select(
                func.count().filter(
                    and_(Execution.status == "queued", Execution.launch_attempts > 0)
                ),
                func.count().filter(
                    and_(Execution.status == "failed", Execution.launch_attempts > 0)
                ),
            ).where(Execution.launched_at.is_(None))
        ).one()
        yield GaugeMetricFamily(
            "flowmaestro_launch_retrying",
            "Unlaunched executions whose launch failed at least once (the reconciler retries).",
            value=int(retrying or 0),
        )
        yield GaugeMetricFamily(
            "flowmaestro_launches_given_up",
            "Executions failed without a run after launch attempts (the reconciler gave up).",
            value=int(given_up or 0),
        )

    def _waitpoints(self, session: Session) -> Iterable[Metric]:
        family = GaugeMetricFamily(
            "flowmaestro_waitpoints",
            "Open waitpoints by kind and status (pending, resolved, resuming).",
            labels=["kind", "status"],
        )
        pending = 0
        for kind, status, count in session.execute(
            select(Waitpoint.kind, Waitpoint.status, func.count())
            .where(Waitpoint.status.in_(OPEN_WAITPOINTS))
            .group_by(Waitpoint.kind, Waitpoint.status)
        ):
            family.add_metric([kind, status], int(count))
            pending += int(count) if status == "pending" else 0
        yield family
        yield GaugeMetricFamily(
            "flowmaestro_waitpoints_waiting",
            "Waitpoints waiting to be resolved (parked executions).",
            value=pending,
        )

    def _attempts(self, session: Session) -> Iterable[Metric]:
        attempts = CounterMetricFamily(
            "flowmaestro_node_attempts",
            "Node attempts by outcome (succeeded, retrying, failed, handled, parked).",
            labels=["status"],
        )
        errors = CounterMetricFamily(
            "flowmaestro_node_errors",
            "Failed node attempts by error class and outcome (retrying, failed, handled).",
            labels=["error_class", "status"],
        )
        by_status: dict[str, int] = {}
        for status, error_class, count in session.execute(
            select(NodeAttempt.status, NodeAttempt.error_class, func.count()).group_by(
                NodeAttempt.status, NodeAttempt.error_class
            )
        ):
            by_status[status] = by_status.get(status, 0) + int(count)
            if error_class is not None:
                errors.add_metric([error_class, status], int(count))
        for status, count in sorted(by_status.items()):
            attempts.add_metric([status], count)
        yield attempts
        yield errors

    def _approval_latency(self, session: Session) -> Metric:
        seconds = _seconds_between(
            Decision.created_at, Waitpoint.created_at, session.get_bind().dialect.name
        )
        columns = [func.count(case((seconds <= bound, 1))) for bound in APPROVAL_BUCKETS]
        row = session.execute(
            select(*columns, func.count(), func.coalesce(func.sum(seconds), 0.0))
            .select_from(Decision)
            .join(Waitpoint, Waitpoint.id == Decision.waitpoint_id)
            .where(Waitpoint.kind == "approval")
        ).one()
        family = HistogramMetricFamily(
            "flowmaestro_approval_latency_seconds",
            "Time from an approval's request to its decision (all decided approvals).",
        )
        counts = [int(value or 0) for value in row[: len(APPROVAL_BUCKETS) + 1]]
        family.add_metric([], histogram_buckets(APPROVAL_BUCKETS, counts), float(row[-1] or 0))
        return family


class DagsterCollector(Collector):
    """What Dagster's storage knows: its run queue, runs in progress, node durations. When it
    cannot be read, `flowmaestro_dagster_up` is 0 and the other families have no samples."""

    def __init__(self, client: DagsterClient, histogram: NodeDurationHistogram) -> None:
        self.client = client
        self.histogram = histogram

    def collect(self) -> Iterator[Metric]:
        depth = GaugeMetricFamily("flowmaestro_queue_depth", "Runs waiting in Dagster's run queue.")
        in_progress = GaugeMetricFamily("flowmaestro_runs_in_progress", "Runs starting or running.")
        up = 1
        try:
            from dagster import DagsterRunStatus, RunsFilter

            instance = self.client.instance
            queued = instance.get_runs_count(RunsFilter(statuses=[DagsterRunStatus.QUEUED]))
            running = instance.get_runs_count(
                RunsFilter(statuses=[DagsterRunStatus.STARTING, DagsterRunStatus.STARTED])
            )
            depth.add_metric([], queued)
            in_progress.add_metric([], running)
            self.histogram.update(instance)
        except Exception:  # noqa: BLE001 - metrics must answer even when Dagster cannot be read
            up = 0
        yield depth
        yield in_progress
        yield self.histogram.family()
        yield GaugeMetricFamily(
            "flowmaestro_dagster_up", "1 if Dagster's storage could be read.", value=up
        )
        yield GaugeMetricFamily(
            "flowmaestro_scrape_timestamp_seconds",
            "When these were read.",
            value=round(time.time(), 3),
        )


class EventFeedCollector(Collector):
    """This API process's live-event feed: who listens, what it follows, what its ticks cost
    (a feed falling behind shows as tick seconds growing as fast as the clock)."""

    def __init__(self, feed: EventFeed) -> None:
        self.feed = feed

    def collect(self) -> Iterator[Metric]:
        feed = self.feed
        yield GaugeMetricFamily(
            "flowmaestro_event_subscribers",
            "Open event streams (GET /executions/{id}/events) on this API process.",
            value=len(feed.subscribers),
        )
        yield GaugeMetricFamily(
            "flowmaestro_event_feed_followed_executions",
            "Executions the feed follows for them.",
            value=len(feed.followed),
        )
        yield GaugeMetricFamily(
            "flowmaestro_event_feed_joining",
            "Streams opened but not yet taken in by a tick of the feed.",
            value=len(feed.joining) + feed.taking_in,
        )
        yield CounterMetricFamily(
            "flowmaestro_event_feed_ticks", "Ticks of the feed.", value=feed.ticks
        )
        yield CounterMetricFamily(
            "flowmaestro_event_feed_tick_seconds",
            "Time spent in the feed's ticks.",
            value=round(feed.tick_seconds, 6),
        )


def metrics_registry(
    *, sessions: sessionmaker[Session], client: DagsterClient, feed: EventFeed | None = None
) -> CollectorRegistry:
    """A registry of the platform's collectors, one per app (never the global default)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(PlatformCollector(sessions))
    registry.register(DagsterCollector(client, NodeDurationHistogram()))
    if feed is not None:
        registry.register(EventFeedCollector(feed))
    return registry


__all__ = [
    "BUCKETS",
    "DagsterCollector",
    "EventFeedCollector",
    "NodeDurationHistogram",
    "PlatformCollector",
    "metrics_registry",
    "op_type",
]
