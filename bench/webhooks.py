"""Webhook benchmark (`webhooks` section): signed deliveries to `POST /hooks/{workflow}/{trigger}`
(docs/webhooks.md) against the API as deployed (`flowmaestro api --workers N`, its own
processes), on SQLite and PostgreSQL side by side.

* Delivery → 202 under an open-loop load: deliveries sent on a fixed schedule (200 a second by
  default) by an async httpx client in this process, each with its own Idempotency-Key and an
  `X-FlowMaestro-Signature`; a latency runs from the delivery's scheduled send time to its
  answer, so a server (or a client) falling behind shows in the figures instead of slowing the
  offered load down. Launch excluded (`launch_on_submit` off, no Dagster: the request path
  alone), with 1 and with 2 API workers; launch included (each accepted delivery is launched
  right after its answer, on a real `dagster dev`), 2 workers. With each load, the CPU time
  the API's processes and the client spent per delivery (wall times are noisy on a shared
  machine). Before the 2-worker load, a ramp of short steps at rising rates: the highest rate
  whose p99 stays within the goal.
* Delivery → first node running: one delivery at a time, from the POST to the first node's
  STEP_START in the run's Dagster event log (what GET /executions/{id}/timeline reports, to the
  millisecond), split into the answer, the run's creation (the launch) and its start.
* A duplicate (an Idempotency-Key seen before) → its 200, one at a time, interleaved with new
  deliveries → 202 on the same unloaded API.

Every phase has its own fresh platform database (bench/api.py says why).

`python -m bench.webhooks [--quick]` prints the result as JSON.
"""

import asyncio
import contextlib
import hashlib
import hmac
import json
import os
import signal
import sys
import tempfile
import time
import uuid
import warnings
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from bench.api import API_WORKERS, UNREACHABLE, ApiProcess, fresh_database, launched_count
from bench.common import (
    drop_pg,
    first_step_start,
    percentile,
    process_tree,
    started_at_ticks,
    tree_cpu_seconds,
    user_key,
)
from flowmaestro_api.settings import ApiSettings
from flowmaestro_dagster.control.client import DagsterClient
from flowmaestro_dagster.testing.stack import DagsterStack

SECRET = "bench-webhook-platform-secret-0123456789"  # FLOWMAESTRO_SECRET_KEY: hook secrets
CONNECTIONS = 256  # the load client's connections: deliveries in flight at once, at most
POOLS = 8  # httpx clients sharing them (open_loop says why)
# Per-hook rate limit of the API under test: both default windows (20/s, 600/min) kept, raised
# far above the offered load, so the check runs as deployed and never refuses a delivery.
HOOK_RATE_LIMIT = "100000/second;1000000/minute"
STEP_TIMEOUT_S = 120
FINISHED = frozenset({"SUCCESS", "FAILURE", "CANCELED"})
WORKFLOW = {
    "name": "Bench webhook",
    "nodes": [
        {
            "id": "hook",
            "type": "trigger",
            "data": {"triggerType": "webhook", "outputVariable": "event"},
        },
        {"id": "out", "type": "output", "data": {"outputName": "n", "value": "{{event.body.n}}"}},
    ],
    "edges": [{"id": "e", "source": "hook", "target": "out"}],
}
# The ask: 202 p99 ≤ 100 ms at 200 deliveries a second; first node running as soon as
# a submission's (the `api` section: p50 1.4-1.9 s).
GOALS = {"p99_ms_max": 100.0, "kept_up_per_second_min": 200.0, "first_node_p50_s_max": 2.0}


@dataclass(frozen=True)
class Hook:
    workflow_id: str
    path: str  # /hooks/{workflow}/{trigger}, on the API's own address
    secret: str
    runnable: bool


def signed(secret: str, payload: dict[str, Any], key: str) -> tuple[bytes, dict[str, str]]:
    """The body and headers of a delivery signed as docs/webhooks.md tells callers to."""
    body = json.dumps(payload).encode()
    t = int(time.time())
    digest = hmac.new(secret.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    return body, {
        "content-type": "application/json",
        "X-FlowMaestro-Signature": f"t={t},v1={digest}",
        "Idempotency-Key": key,
    }


def deploy_hook(base: str, auth: dict[str, str]) -> Hook:
    """Create and deploy the webhook workflow; its trigger's path and secret, as listed."""
    with httpx.Client(base_url=base, timeout=120, headers=auth) as http:
        workflow_id: str = http.post("/workflows", json={"definition": WORKFLOW}).json()["id"]
        deployed = http.post(f"/workflows/{workflow_id}/versions/1/deploy").json()
        listing = http.get(f"/workflows/{workflow_id}/triggers").json()
    trigger = next(t for t in listing["items"] if t["webhook"])
    if not listing["live"]:
        raise RuntimeError(f"the webhook is not live after the deploy: {deployed}")
    return Hook(
        workflow_id=workflow_id,
        path=f"/hooks/{workflow_id}/{trigger['id']}",
        secret=trigger["secret"],
        runnable=bool(deployed.get("runnable")),
    )


def ms(values: list[float], q: float) -> float:
    return round(percentile(values, q) * 1000, 1)


# -- delivery → 202 under an open-loop load ------------------------------------------------------


@dataclass
class Load:
    summary: dict[str, Any]
    accepted: dict[str, tuple[int, str]]  # Idempotency-Key -> (payload n, execution id)


async def open_loop(
    base: str, hook: Hook, *, rate: float, seconds: float, tag: str, api_pid: int
) -> Load:
    """`rate` deliveries a second for `seconds`, each due at its scheduled time whatever the
    answers to earlier ones, sent as soon as one of CONNECTIONS is free; the CPU time the API's
    processes (`api_pid` and its children) and this client spent meanwhile.

    The connections are split among POOLS httpx clients, and a delivery waits for a free one
    on its pool's semaphore, not in httpx's pool: httpx's pool costs CPU per request that grows
    with its connections and waiting requests, taken from the server on this machine. A
    delivery is signed as it goes (one that waited minutes would otherwise carry a stale
    timestamp)."""
    total = max(1, round(rate * seconds))
    from_schedule: list[float] = []  # due → answer
    from_send: list[float] = []  # sent → answer
    lags: list[float] = []  # due → sent: waiting for a connection, or the client behind
    statuses: Counter[str] = Counter()
    accepted: dict[str, tuple[int, str]] = {}
    size = CONNECTIONS // POOLS
    limits = httpx.Limits(max_connections=size, max_keepalive_connections=size)
    slots = [asyncio.Semaphore(size) for _ in range(POOLS)]
    load_before = os.getloadavg()[0]  # the machine before this load (after: ours included)
    async with contextlib.AsyncExitStack() as stack:
        pools = [
            await stack.enter_async_context(
                httpx.AsyncClient(base_url=base, timeout=60, limits=limits)
            )
            for _ in range(POOLS)
        ]

        async def one(n: int, due: float) -> None:
            key = f"{tag}-{n}-{uuid.uuid4().hex[:12]}"
            async with slots[n % POOLS]:
                body, headers = signed(hook.secret, {"n": n, "tag": tag}, key)
                sent = time.perf_counter()
                try:
                    response = await pools[n % POOLS].post(hook.path, content=body, headers=headers)
                except httpx.HTTPError as exc:
                    statuses[type(exc).__name__] += 1
                    return
            done = time.perf_counter()
            statuses[str(response.status_code)] += 1
            if response.status_code == 202 and n >= 0:
                from_schedule.append(done - due)
                from_send.append(done - sent)
                lags.append(sent - due)
                accepted[key] = (n, response.json()["execution_id"])

        # Warm-up, not counted: connections opened, both workers' first requests served.
        await asyncio.gather(*(one(-1 - i, time.perf_counter()) for i in range(4 * POOLS)))
        statuses.clear()
        tasks: list[asyncio.Task[None]] = []
        api_cpu, client_cpu = tree_cpu_seconds(api_pid), time.process_time()
        start = time.perf_counter() + 0.05
        for n in range(total):
            due = start + n / rate
            pause = due - time.perf_counter()
            if pause > 0:
                await asyncio.sleep(pause)
            tasks.append(asyncio.create_task(one(n, due)))
        last_send = time.perf_counter()
        await asyncio.gather(*tasks)
        finished = time.perf_counter()
        api_cpu = tree_cpu_seconds(api_pid) - api_cpu
        client_cpu = time.process_time() - client_cpu
    if not from_schedule:
        raise RuntimeError(f"no delivery was accepted: {dict(statuses)}")
    refused = {k: v for k, v in statuses.items() if not k.startswith("2")}
    return Load(
        summary={
            "offered_per_second": rate,
            "seconds": seconds,
            "sent": total,
            "accepted": len(from_schedule),
            "refused": refused,
            "sent_per_second": round(total / max(last_send - start, 1e-9), 1),
            "answered_per_second": round(len(from_schedule) / (finished - start), 1),
            "p50_ms": ms(from_schedule, 0.5),
            "p95_ms": ms(from_schedule, 0.95),
            "p99_ms": ms(from_schedule, 0.99),
            "max_ms": round(max(from_schedule) * 1000, 1),
            "min_ms": round(min(from_schedule) * 1000, 1),
            "from_send_p50_ms": ms(from_send, 0.5),
            "from_send_p99_ms": ms(from_send, 0.99),
            "client_lag_p99_ms": ms(lags, 0.99),
            "client_lag_max_ms": round(max(lags) * 1000, 1),
            "api_cpu_ms_per_delivery": round(api_cpu * 1000 / total, 2),
            "client_cpu_ms_per_delivery": round(client_cpu * 1000 / total, 2),
            "load_average_before": round(load_before, 2),
            "load_average_after": round(os.getloadavg()[0], 2),
        },
        accepted=accepted,
    )


def ramp(
    base: str, hook: Hook, *, rates: tuple[float, ...], seconds: float, api_pid: int
) -> dict[str, Any]:
    """Open-loop steps at rising rates until one misses the p99 goal, refuses a delivery or
    answers fewer than 95% of the offered rate: the highest step that kept up."""
    steps: list[dict[str, Any]] = []
    kept_up = None
    for rate in rates:
        load = asyncio.run(
            open_loop(base, hook, rate=rate, seconds=seconds, tag=f"ramp{rate:g}", api_pid=api_pid)
        )
        d = load.summary
        steps.append(
            {
                k: d[k]
                for k in (
                    "offered_per_second",
                    "answered_per_second",
                    "p50_ms",
                    "p99_ms",
                    "refused",
                )
            }
        )
        if (
            d["refused"]
            or d["p99_ms"] > GOALS["p99_ms_max"]
            or d["answered_per_second"] < 0.95 * rate
        ):
            break
        kept_up = rate
        time.sleep(1)
    return {"steps": steps, "kept_up_per_second": kept_up, "seconds": seconds}


# -- one at a time: new and duplicate deliveries, delivery → first node running -----------------


def new_and_duplicate(
    base: str, hook: Hook, accepted: dict[str, tuple[int, str]], samples: int
) -> dict[str, Any]:
    """`samples` pairs, one request at a time: a new delivery (202), then a redelivery of a key
    accepted under load (200 `duplicate`, the first execution's id)."""
    new: list[float] = []
    duplicate: list[float] = []
    wrong = 0
    keys = list(accepted)[:samples]
    with httpx.Client(base_url=base, timeout=60) as http:
        for i, old in enumerate(keys):
            body, headers = signed(hook.secret, {"n": i, "tag": "single"}, uuid.uuid4().hex)
            t0 = time.perf_counter()
            response = http.post(hook.path, content=body, headers=headers)
            if response.status_code == 202:
                new.append(time.perf_counter() - t0)
            n, execution_id = accepted[old]
            body, headers = signed(hook.secret, {"n": n, "tag": "load"}, old)
            t0 = time.perf_counter()
            response = http.post(hook.path, content=body, headers=headers)
            elapsed = time.perf_counter() - t0
            answer = response.json() if response.status_code == 200 else {}
            if answer.get("status") == "duplicate" and answer["execution_id"] == execution_id:
                duplicate.append(elapsed)
            else:
                wrong += 1
    if not new or not duplicate:
        raise RuntimeError(f"no sample: {len(new)} new, {len(duplicate)} duplicates, {wrong} wrong")
    return {
        "samples": len(keys),
        "new_p50_ms": ms(new, 0.5),
        "new_p95_ms": ms(new, 0.95),
        "duplicate_p50_ms": ms(duplicate, 0.5),
        "duplicate_p95_ms": ms(duplicate, 0.95),
        "duplicate_min_ms": round(min(duplicate) * 1000, 1),
        "duplicate_max_ms": round(max(duplicate) * 1000, 1),
        "duplicate_wrong": wrong,
    }


def first_node_running(
    base: str, hook: Hook, client: DagsterClient, samples: int
) -> dict[str, Any]:
    """One delivery at a time, each once the previous run has finished: POST → the first node's
    STEP_START, and the answer, the run's creation and its start on the way."""
    instance = client.instance
    marks: dict[str, list[float]] = {"answered": [], "run_created": [], "run_started": []}
    delays: list[float] = []
    timed_out = 0
    with httpx.Client(base_url=base, timeout=60) as http:
        for i in range(samples):
            body, headers = signed(hook.secret, {"n": i, "tag": "first"}, uuid.uuid4().hex)
            posted = time.time()
            response = http.post(hook.path, content=body, headers=headers)
            answered = time.time()
            if response.status_code != 202:
                raise RuntimeError(f"delivery refused: {response.status_code} {response.text}")
            execution_id = response.json()["execution_id"]
            first_step, run = None, None
            deadline = time.monotonic() + STEP_TIMEOUT_S
            while first_step is None and time.monotonic() < deadline:
                runs = client.runs_for_execution(execution_id)
                if runs:
                    run = runs[0]
                    first_step = first_step_start(instance, run.run_id)
                time.sleep(0.05)
            if first_step is None or run is None:
                timed_out += 1
                continue
            delays.append(first_step - posted)
            run = client.runs_for_execution(execution_id)[0]
            marks["answered"].append(answered - posted)
            marks["run_created"].append((run.create_time or first_step) - posted)
            marks["run_started"].append((run.start_time or first_step) - posted)
            while run.status not in FINISHED and time.monotonic() < deadline:
                time.sleep(0.1)
                run = client.runs_for_execution(execution_id)[0]
            time.sleep(0.5)  # a low rate: the machine settles between samples
    if not delays:
        raise RuntimeError(f"no run started a node within {STEP_TIMEOUT_S} s ({timed_out} tries)")
    return {
        "samples": len(delays),
        "timed_out": timed_out,
        "p50_s": round(percentile(delays, 0.5), 3),
        "p90_s": round(percentile(delays, 0.9), 3),
        "min_s": round(min(delays), 3),
        "max_s": round(max(delays), 3),
        **{f"{name}_p50_s": round(percentile(v, 0.5), 3) for name, v in marks.items()},
        "source": "STEP_START of the run's first step, Dagster event log",
    }


# -- the phases ----------------------------------------------------------------------------------


class HookApi(ApiProcess):
    """bench/api.py's `flowmaestro api --workers N`, with what deliveries need: one platform
    secret for every worker (the hook secrets derive from it) and the rate limit raised."""

    def __init__(self, settings: ApiSettings, dagster_home: Path, workers: int) -> None:
        super().__init__(settings, dagster_home, workers)
        self.env["FLOWMAESTRO_SECRET_KEY"] = SECRET
        self.env["FLOWMAESTRO_PUBLIC_API_URL"] = f"http://127.0.0.1:{self.port}"
        self.env["FLOWMAESTRO_HOOK_RATE_LIMIT"] = HOOK_RATE_LIMIT

    @property
    def pid(self) -> int:
        if self.process is None:
            raise RuntimeError("the API is not running")
        return self.process.pid

    def __exit__(self, *exc: object) -> None:
        """Stopped as bench/api.py does; then any worker left behind is killed too (a worker
        still draining thousands of launches outlives its supervisor's SIGKILL)."""
        tree = process_tree(self.pid) if self.process is not None else set()
        started = {pid: started_at_ticks(pid) for pid in tree}
        super().__exit__(*exc)
        for pid, ticks in started.items():
            if ticks is not None and started_at_ticks(pid) == ticks:  # the same process
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)


def launch_excluded(
    kind: str,
    workdir: Path,
    created: list[str],
    *,
    workers: int,
    rate: float,
    seconds: float,
    duplicates: int,
    ramp_rates: tuple[float, ...],
) -> dict[str, Any]:
    """The API alone (no Dagster, nothing launched): the ramp (if `ramp_rates`), the load, and
    new / duplicate deliveries one at a time (if `duplicates`)."""
    url = fresh_database(kind, workdir, f"excluded-{workers}", created)
    home = workdir / f"idle-home-{kind}-{workers}"
    home.mkdir(exist_ok=True)
    settings = ApiSettings(
        _env_file=None, database_url=url, dagster_graphql_url=UNREACHABLE, launch_on_submit=False
    )
    auth = user_key(url)
    server = HookApi(settings, home, workers)
    found: dict[str, Any] = {"api_workers": workers}
    with server as base:
        hook = deploy_hook(base, auth)
        if ramp_rates:
            found["ramp"] = ramp(
                base, hook, rates=ramp_rates, seconds=min(seconds, 3), api_pid=server.pid
            )
        load = asyncio.run(
            open_loop(base, hook, rate=rate, seconds=seconds, tag="load", api_pid=server.pid)
        )
        found["load"] = load.summary
        if duplicates:
            found["one_at_a_time"] = new_and_duplicate(base, hook, load.accepted, duplicates)
    return found


def launch_included(
    kind: str,
    workdir: Path,
    created: list[str],
    *,
    rate: float,
    seconds: float,
    samples: int,
    launch_grace: float,
) -> dict[str, Any]:
    """On a real `dagster dev`: delivery → first node running first (on an idle stack), then
    the load with every accepted delivery launched after its answer."""
    url = fresh_database(kind, workdir, "stack", created)
    stack = DagsterStack(
        workdir / f"home-{kind}", url, extra_env={"FLOWMAESTRO_SECRET_KEY": SECRET}
    )
    stack.start()
    try:
        settings = ApiSettings(
            _env_file=None,
            database_url=url,
            dagster_graphql_url=stack.graphql_url,
            reconcile_after_seconds=3600,
        )
        client = DagsterClient(stack.graphql_url, instance=stack.instance())
        auth = user_key(url)
        server = HookApi(settings, stack.home, API_WORKERS)
        with server as base:
            hook = deploy_hook(base, auth)
            running = first_node_running(base, hook, client, samples)
            before = launched_count(url)
            load = asyncio.run(
                open_loop(
                    base, hook, rate=rate, seconds=seconds, tag="launched", api_pid=server.pid
                )
            )
            time.sleep(launch_grace)
            launched = launched_count(url) - before
        client.instance.dispose()
    finally:
        stack.stop()
    return {
        "load": {**load.summary, "launched": launched, "launch_grace_s": launch_grace},
        "api_workers": API_WORKERS,
        "deploy_runnable": hook.runnable,
        "delivery_to_first_node": running,
    }


def run_backend(
    kind: str,
    workdir: Path,
    *,
    rate: float,
    seconds: float,
    samples: int,
    duplicates: int,
    launch_grace: float,
    ramp_rates: tuple[float, ...],
) -> dict[str, Any]:
    created: list[str] = []
    try:
        excluded = {
            f"workers_{workers}": launch_excluded(
                kind,
                workdir,
                created,
                workers=workers,
                rate=rate,
                seconds=seconds,
                duplicates=duplicates if workers == API_WORKERS else 0,
                ramp_rates=ramp_rates if workers == API_WORKERS else (),
            )
            for workers in sorted({1, API_WORKERS})
        }
        included = launch_included(
            kind,
            workdir,
            created,
            rate=rate,
            seconds=seconds,
            samples=samples,
            launch_grace=launch_grace,
        )
        return {"launch_excluded": excluded, "launch_included": included}
    finally:
        for name in created:
            drop_pg(name)


def main(
    rate: float = 200,
    seconds: float = 10,
    samples: int = 20,
    duplicates: int = 50,
    launch_grace: float = 5,
    ramp_rates: tuple[float, ...] = (25, 50, 75, 100, 150, 200),
) -> dict[str, Any]:
    warnings.filterwarnings("ignore")
    with tempfile.TemporaryDirectory() as tmp:
        found: dict[str, Any] = {
            kind: run_backend(
                kind,
                Path(tmp),
                rate=rate,
                seconds=seconds,
                samples=samples,
                duplicates=duplicates,
                launch_grace=launch_grace,
                ramp_rates=ramp_rates,
            )
            for kind in ("sqlite", "postgres")
        }
    found["shape"] = {
        "rate": rate,
        "seconds": seconds,
        "samples": samples,
        "duplicates": duplicates,
        "cores": os.cpu_count(),
        "connections": CONNECTIONS,
        "client_pools": POOLS,
        "api_workers": API_WORKERS,
        "launch_grace_s": launch_grace,
        "ramp_rates": list(ramp_rates),
        "ramp_seconds": min(seconds, 3),
        "hook_rate_limit": HOOK_RATE_LIMIT,
    }
    worst_p99 = max(found[k]["launch_included"]["load"]["p99_ms"] for k in ("sqlite", "postgres"))
    worst_first = max(
        found[k]["launch_included"]["delivery_to_first_node"]["p50_s"]
        for k in ("sqlite", "postgres")
    )
    kept_up = [
        found[k]["launch_excluded"][f"workers_{API_WORKERS}"]["ramp"]["kept_up_per_second"] or 0
        for k in ("sqlite", "postgres")
    ]
    found["goals"] = {
        **GOALS,
        "p99_met": worst_p99 <= GOALS["p99_ms_max"],
        "kept_up_met": min(kept_up) >= GOALS["kept_up_per_second_min"],
        "first_node_met": worst_first <= GOALS["first_node_p50_s_max"],
    }
    return found


def run(quick: bool = False) -> dict[str, Any]:
    """The `webhooks` section: full or smoke-sized (`quick`)."""
    if quick:
        return main(seconds=2, samples=3, duplicates=10, launch_grace=2, ramp_rates=(25, 50))
    return main()


if __name__ == "__main__":
    print(json.dumps(run("--quick" in sys.argv), indent=2))
