"""Fair scheduling between users, on a real Dagster (`dagster dev`) with the default queue
settings (`max_concurrent_runs` 10, per-user limit 3; docs/queues.md, "Fair scheduling").

One user (the light user) submits a burst of runs at once, first on an idle instance, then
while another user (the flooder) has a flood queued — all at the same priority. Per run of
the burst: enqueued → dequeued (the daemon picked it) and enqueued → started; the figure is
the light user's wait with the flood over the wait on the idle instance (p50 and mean), and
the burst's makespan (first enqueue → last end) likewise.

For scale, what strict priority-then-FIFO without the per-user limit would have meant: the
light user's first run behind every flood run still queued, at the throughput the flood got
(an estimate from the measured figures, not a run).

`python -m bench.fairness [--quick]` prints the result as JSON; `run(quick)` returns it.
"""

import json
import statistics
import sys
import tempfile
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from dagster import DagsterRunStatus, RunsFilter

from bench.queues import QUICK, Platform, platform, queue_waits, summary
from flowmaestro_dagster.tags import WORKFLOW_ID_TAG

FLOOD = 1000
LIGHT = 10
SETTINGS = {"max_concurrent_runs": 10, "user_run_limit": 3}


def burst(p: Platform, auth: dict[str, str], workflow_id: str, n: int) -> dict[str, Any]:
    """`n` runs submitted back to back; their waits once all have finished."""
    ids = [p.submit(auth, workflow_id) for _ in range(n)]
    records = [p.finished(execution_id) for execution_id in ids]
    times = [p.times(record.dagster_run.run_id) for record in records]
    dequeue = [t["dequeued"] - t["enqueued"] for t in times]
    start = [t["started"] - t["enqueued"] for t in times]
    makespan = max(r.end_time for r in records) - min(t["enqueued"] for t in times)
    return {
        "runs": n,
        "enqueued_to_dequeued_s": {**summary(dequeue), "mean": round(statistics.mean(dequeue), 3)},
        "enqueued_to_started_s": {**summary(start), "mean": round(statistics.mean(start), 3)},
        "makespan_s": round(makespan, 2),
    }


def queued_count(p: Platform) -> int:
    return p.instance.get_runs_count(RunsFilter(statuses=[DagsterRunStatus.QUEUED]))


def ratio(loaded: float, idle: float) -> float | None:
    return round(loaded / idle, 2) if idle else None


def main(flood: int = FLOOD, light: int = LIGHT) -> dict[str, Any]:
    warnings.filterwarnings("ignore")
    result: dict[str, Any] = {"settings": SETTINGS, "shape": {"flood": flood, "light": light}}
    with tempfile.TemporaryDirectory() as tmp, platform(Path(tmp), **SETTINGS) as p:
        light_user, flooder = p.user(), p.user()
        probe = p.deploy(light_user, QUICK)
        flood_flow = p.deploy(flooder, QUICK)
        queue_waits(p, light_user, probe, 2)  # warm-up: the first runs load the code location
        result["idle"] = burst(p, light_user, probe, light)

        started = time.perf_counter()
        with ThreadPoolExecutor(max_workers=8) as pool:
            list(pool.map(lambda _: p.submit(flooder, flood_flow), range(flood)))
        # Launches are asynchronous: wait until every flood run is in Dagster (queued or on).
        p.wait(
            lambda: (
                p.instance.get_runs_count(RunsFilter(tags={WORKFLOW_ID_TAG: flood_flow})) >= flood
            ),
            timeout=1800,
        )
        result["flood_submit_s"] = round(time.perf_counter() - started, 1)
        done_before = p.instance.get_runs_count(
            RunsFilter(statuses=[DagsterRunStatus.SUCCESS, DagsterRunStatus.FAILURE])
        )
        result["flood_queued_at_burst"] = queued_count(p)
        burst_started = time.perf_counter()
        result["flooded"] = burst(p, light_user, probe, light)
        burst_seconds = time.perf_counter() - burst_started
        done_after = p.instance.get_runs_count(
            RunsFilter(statuses=[DagsterRunStatus.SUCCESS, DagsterRunStatus.FAILURE])
        )
        result["flood_still_queued_after"] = queued_count(p)
        # Runs finished per second while the burst ran (the flood's and the burst's).
        throughput = (done_after - done_before) / burst_seconds if burst_seconds else 0.0
        result["throughput_runs_per_s"] = round(throughput, 2)
        ahead = result["flood_queued_at_burst"]
        result["fifo_estimate_first_wait_s"] = round(ahead / throughput, 1) if throughput else None

    idle, flooded = result["idle"], result["flooded"]
    for measure in ("enqueued_to_dequeued_s", "enqueued_to_started_s"):
        for stat in ("p50", "mean"):
            result[f"{measure}_{stat}_ratio"] = ratio(flooded[measure][stat], idle[measure][stat])
    result["makespan_ratio"] = ratio(flooded["makespan_s"], idle["makespan_s"])
    return result


def run(quick: bool = False) -> dict[str, Any]:
    """The `fairness` section: 1,000 against 10, or smoke-sized (`quick`: 60 against 4)."""
    if quick:
        return main(flood=60, light=4)
    return main()


if __name__ == "__main__":
    json.dump(run("--quick" in sys.argv), sys.stdout, indent=2)
    print()
