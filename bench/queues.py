"""Run-queue benchmark, on a real Dagster (`dagster dev`: webserver, daemon, code locations) whose
dagster.yaml is rendered from the settings by `flowmaestro_dagster.orchestration.instance_config`.

* queue wait of a run submitted through the API: enqueued → dequeued (the daemon's RUN_STARTING)
  → started (RUN_START, its worker running), with an empty queue and with 200 runs queued
  (held in a paused queue, so every dequeue pass scans them);
* the dequeue decision: Dagster's own `_get_runs_to_dequeue` (what the daemon does every
  `dequeue_interval_seconds` before launching anything) and our replay of it ("why queued"),
  timed in process on the same storage, with 0 and 200 queued runs; GET /executions/{id} of a
  queued execution end to end;
* pool granularity: two runs of a workflow with a concurrency limit of 1 whose node waits to be
  retried — how long before the first ended the second was dequeued (op) or after (run).

`python -m bench.queues [--quick]` prints the result as JSON; `run(quick)` returns it.
"""

import json
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from dagster import DagsterEventType, DagsterInstance, DagsterRunStatus, RunsFilter

from bench.common import (
    deploy,
    echo_flow,
    percentile,
    stack_settings,
    submit,
    user_key,
    wait_until,
)
from flowmaestro_api.main import create_app
from flowmaestro_api.settings import ApiSettings
from flowmaestro_dagster.control.client import DagsterClient
from flowmaestro_dagster.control.queues import read_snapshot, simulate
from flowmaestro_dagster.orchestration.instance_config import render_instance_yaml
from flowmaestro_dagster.store.db import dispose_engines, migrate
from flowmaestro_dagster.testing.stack import DagsterStack, dagster_home, free_port

PROBES = 15
BACKLOG = 200
DECISIONS = 20
QUICK = echo_flow("Queue probe", "done", "{{who}}")


def retrying() -> dict[str, Any]:
    """One HTTP node to a closed port, retried twice 4 s apart (the run then fails)."""
    retry = {"maxAttempts": 3, "backoffStrategy": "fixed", "minDelayMs": 4000}
    url = f"http://127.0.0.1:{free_port()}/closed"
    return {
        "name": "Retrying",
        "nodes": {
            "in": {"type": "input", "config": {"inputName": "who"}},
            "call": {"type": "http", "config": {"method": "GET", "url": url, "retry": retry}},
        },
        "edges": [{"id": "e", "source": "in", "target": "call"}],
    }


def summary(values: list[float], unit: float = 1.0, digits: int = 3) -> dict[str, float]:
    scaled = [v * unit for v in values]
    return {
        "min": round(min(scaled), digits),
        "p50": round(percentile(scaled, 0.5), digits),
        "p95": round(percentile(scaled, 0.95), digits),
        "max": round(max(scaled), digits),
    }


class Platform:
    """A Dagster stack and the API (in process) on it."""

    def __init__(self, stack: DagsterStack, settings: ApiSettings) -> None:
        from fastapi.testclient import TestClient

        self.stack = stack
        self.dagster = DagsterClient(settings.dagster_graphql_url, instance=stack.instance())
        self.client = TestClient(create_app(settings, dagster=self.dagster))
        self.database_url = settings.database_url

    @property
    def instance(self) -> DagsterInstance:
        instance: DagsterInstance = self.dagster.instance
        return instance

    def user(self) -> dict[str, str]:
        return user_key(self.database_url)

    def deploy(self, auth: dict[str, str], definition: dict[str, Any], **settings: Any) -> str:
        return deploy(self.client, auth, definition, **settings)

    def submit(self, auth: dict[str, str], workflow_id: str, **body: Any) -> str:
        return submit(self.client, auth, workflow_id, {"who": "b"}, **body)

    def record(self, execution_id: str) -> Any:
        records = self.instance.get_run_records(
            RunsFilter(tags={"flowmaestro/execution_id": execution_id})
        )
        return records[0] if records else None

    def wait(self, predicate: Callable[[], Any], timeout: float = 300) -> Any:
        return wait_until(predicate, timeout, interval=0.2)

    def finished(self, execution_id: str) -> Any:
        def done() -> Any:
            record = self.record(execution_id)
            return record if record is not None and record.dagster_run.is_finished else None

        return self.wait(done)

    def times(self, run_id: str) -> dict[str, float]:
        def at(kind: DagsterEventType) -> float:
            records = self.instance.get_records_for_run(run_id, of_type=kind).records
            return float(records[0].event_log_entry.timestamp)

        return {
            "enqueued": at(DagsterEventType.RUN_ENQUEUED),
            "dequeued": at(DagsterEventType.RUN_STARTING),
            "started": at(DagsterEventType.RUN_START),
        }


@contextmanager
def platform(workdir: Path, **queue_settings: Any) -> Iterator[Platform]:
    url = f"sqlite:///{workdir / 'platform.db'}"
    migrate(url)
    rendered = ApiSettings(_env_file=None, **queue_settings)
    stack = DagsterStack(
        workdir / "home",
        url,
        instance_yaml=render_instance_yaml(rendered),
        extra_env={"FLOWMAESTRO_HTTP__ALLOW_LOOPBACK": "true"},
    )
    stack.start()
    try:
        with dagster_home(stack.home):  # the API reads the queue from there
            yield Platform(stack, stack_settings(url, stack, **queue_settings))
    finally:
        stack.stop()
        dispose_engines()


def queue_waits(p: Platform, auth: dict[str, str], workflow_id: str, n: int) -> dict[str, Any]:
    """n runs one after another, each submitted when the previous one has finished."""
    waits: dict[str, list[float]] = {"dequeue": [], "start": [], "launch": []}
    for _ in range(n):
        record = p.finished(p.submit(auth, workflow_id))
        t = p.times(record.dagster_run.run_id)
        waits["dequeue"].append(t["dequeued"] - t["enqueued"])
        waits["start"].append(t["started"] - t["enqueued"])
        waits["launch"].append(t["started"] - t["dequeued"])
    return {
        "runs": n,
        "enqueued_to_dequeued_s": summary(waits["dequeue"]),
        "enqueued_to_started_s": summary(waits["start"]),
        "dequeued_to_started_s": summary(waits["launch"]),
    }


def decision_times(home: Path, decisions: int = DECISIONS) -> dict[str, Any]:
    """Dagster's dequeue decision and our replay, on a fresh instance of the same storage."""
    from dagster._daemon.run_coordinator.queued_run_coordinator_daemon import (
        QueuedRunCoordinatorDaemon,
    )

    with DagsterInstance.from_config(str(home)) as instance:
        daemon = QueuedRunCoordinatorDaemon(interval_seconds=1)
        queued = instance.get_runs_count(RunsFilter(statuses=[DagsterRunStatus.QUEUED]))
        dagster_ms, ours_ms = [], []
        for _ in range(decisions):
            started = time.perf_counter()
            daemon._get_runs_to_dequeue(
                instance, instance.get_concurrency_config(), fixed_iteration_time=None
            )
            dagster_ms.append(time.perf_counter() - started)
            started = time.perf_counter()
            simulate(read_snapshot(instance))
            ours_ms.append(time.perf_counter() - started)
    return {
        "queued": queued,
        "dagster_dequeue_decision_ms": summary(dagster_ms, 1000, 1),
        "why_queued_replay_ms": summary(ours_ms, 1000, 1),
    }


def granularity_gap(p: Platform, pairs: int) -> list[float]:
    """Per pair of runs of a limit-1 workflow that waits to retry: second dequeued - first ended
    (negative: both were in progress at once)."""
    auth = p.user()
    workflow_id = p.deploy(auth, retrying(), concurrency_limit=1)
    gaps = []
    for _ in range(pairs):
        first = p.submit(auth, workflow_id)

        def started(execution_id: str = first) -> bool:
            record = p.record(execution_id)
            return record is not None and record.dagster_run.status.value == "STARTED"

        p.wait(started)
        second = p.submit(auth, workflow_id)
        earlier, later = p.finished(first), p.finished(second)
        gap = p.times(later.dagster_run.run_id)["dequeued"] - earlier.end_time
        gaps.append(round(gap, 2))
    return gaps


def main(
    probes: int = PROBES, backlog_size: int = BACKLOG, pairs: int = 3, decisions: int = DECISIONS
) -> dict[str, Any]:
    warnings.filterwarnings("ignore")
    settings = {
        "max_concurrent_runs": 10,
        "user_run_limit": 3,
        "queue_limits": {"held": 0, "ai-workflows": 3, "data-processing": 5},
    }
    result: dict[str, Any] = {
        "settings": settings,
        "shape": {"probes": probes, "backlog": backlog_size, "pairs": pairs},
    }
    with tempfile.TemporaryDirectory() as tmp, platform(Path(tmp), **settings) as p:
        prober, backlog_user = p.user(), p.user()
        probe = p.deploy(prober, QUICK)
        queue_waits(p, prober, probe, 2)  # warm-up: the first runs load the code location
        result["decision_empty"] = decision_times(p.stack.home, decisions)
        result["empty_queue"] = queue_waits(p, prober, probe, probes)

        backlog = p.deploy(backlog_user, QUICK)
        started = time.perf_counter()
        with ThreadPoolExecutor(max_workers=4) as pool:
            held = list(
                pool.map(
                    lambda _: p.submit(backlog_user, backlog, queue="held"), range(backlog_size)
                )
            )
        p.wait(
            lambda: (
                p.instance.get_runs_count(
                    RunsFilter(
                        statuses=[DagsterRunStatus.QUEUED], tags={"flowmaestro/queue": "held"}
                    )
                )
                == backlog_size
            )
        )
        result["backlog_submit_s"] = round(time.perf_counter() - started, 1)
        result["decision_backlog"] = decision_times(p.stack.home, decisions)
        result["queue_backlog"] = queue_waits(p, prober, probe, probes)
        why: list[float] = []
        for execution_id in held[:decisions]:
            t0 = time.perf_counter()
            body = p.client.get(f"/executions/{execution_id}", headers=backlog_user).json()
            why.append(time.perf_counter() - t0)
        result["get_queued_execution_ms"] = summary(why, 1000, 1)
        result["why_queued_example"] = {
            "queue_position": body["queue_position"],
            "queued_reason": body["queued_reason"],
        }
        result["granularity_run_gap_s"] = granularity_gap(p, pairs)
    with (
        tempfile.TemporaryDirectory() as tmp,
        platform(Path(tmp), user_run_limit=None, pool_granularity="op") as p,
    ):
        result["granularity_op_gap_s"] = granularity_gap(p, pairs)
    empty = result["empty_queue"]["enqueued_to_started_s"]["p50"]
    backlog = result["queue_backlog"]["enqueued_to_started_s"]["p50"]
    result["backlog_over_empty_start_p50"] = round(backlog / empty, 2) if empty else None
    return result


def run(quick: bool = False) -> dict[str, Any]:
    """The `queues` section: full, or smoke-sized (`quick`: 50 queued, fewer probes)."""
    if quick:
        return main(probes=4, backlog_size=50, pairs=1, decisions=5)
    return main()


if __name__ == "__main__":
    json.dump(run("--quick" in sys.argv), sys.stdout, indent=2)
    print()
