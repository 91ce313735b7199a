"""Live-events benchmark (`events` section): `GET /executions/{id}/events`, the server-sent
event stream of flowmaestro_api/services/events.py, on a real `dagster dev` (platform and
Dagster storage on PostgreSQL) with the API in its own process (`flowmaestro api`, one worker:
one `EventFeed`), the SSE clients async httpx streams in this process.

* Event latency: a node's STEP_SUCCESS record in the run's Dagster event log (its timestamp,
  the `timestamp` of the `node.succeeded` event) → that event read by the client, over
  executions of a 10-transform chain (12 nodes with the input and output) run one at a time,
  the client subscribed right after the submission; with that one subscriber, then with 1,000
  idle subscribers open as well. Events replayed from before the subscription are not counted.
* Memory: the API process's RSS before and after opening the 1,000 idle subscribers; and its
  CPU time over a quiet spell (no request made) before and after, a figure the machine's load
  does not move the way it moves wall times.
* Other requests: GET /health and GET /executions/{id}, one at a time, with no subscriber and
  with the 1,000 idle subscribers open.

Two ways to hold 1,000 idle subscribers, each on a fresh API process with its own baseline:
all on one execution parked at an approval (the feed follows one execution), and one each on
1,000 queued executions that are never launched (the feed follows 1,000; their launch is held
back, so the stack's launch reconciler leaves them alone).

`python -m bench.events [--quick]` prints the result as JSON.
"""

import asyncio
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
import warnings
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import sqlalchemy as sa

from bench.api import ApiProcess
from bench.common import (
    drop_pg,
    percentile,
    pg_database,
    process_tree,
    tree_cpu_seconds,
    user_key,
)
from flowmaestro_api.settings import ApiSettings
from flowmaestro_dagster.store.db import get_engine, session_scope
from flowmaestro_dagster.store.models import Execution, utcnow
from flowmaestro_dagster.testing.stack import DagsterStack

SECRET = "bench-events-secret-key-0123456789"
NODES = 10  # transforms in the chain
IDLE = 1000  # idle subscribers
OPEN_AT_ONCE = 50  # idle subscriptions being opened at once
RUN_TIMEOUT_S = 180
# The asks: p99 ≤ 1 s with 1,000 subscribers; other requests unhurt by them.
GOALS = {"latency_p99_s_max": 1.0, "requests_p99_ratio_max": 1.5}
APPROVAL = {
    "name": "Bench events approval",
    "nodes": {
        "in": {"type": "input", "config": {"inputName": "who"}},
        "ask": {"type": "humanReview", "config": {"reviewPrompt": "ok?", "outputVariable": "a"}},
        "out": {"type": "output", "config": {"outputName": "r", "value": "{{a.decision}}"}},
    },
    "edges": [
        {"id": "e1", "source": "in", "target": "ask"},
        {"id": "e2", "source": "ask", "target": "out"},
    ],
}


def chain_flow(nodes: int = NODES) -> dict[str, Any]:
    """input → `nodes` template transforms → output (backend shape)."""
    spec: dict[str, Any] = {"in": {"type": "input", "config": {"inputName": "who"}}}
    edges: list[dict[str, str]] = []
    previous = "in"
    for i in range(1, nodes + 1):
        name = f"t{i}"
        spec[name] = {
            "type": "transform",
            "config": {"operation": "template", "template": f"{{{{who}}}} {i}"},
        }
        edges.append({"id": f"e{i}", "source": previous, "target": name})
        previous = name
    spec["out"] = {"type": "output", "config": {"outputName": "r", "value": "{{who}}"}}
    edges.append({"id": "e-out", "source": previous, "target": "out"})
    return {"name": f"Bench events chain of {nodes}", "nodes": spec, "edges": edges}


# -- SSE clients ---------------------------------------------------------------------------------


@dataclass
class Followed:
    """What one subscriber read of an execution's stream, until its `end` event."""

    opened: float = 0.0  # wall clock: the answer's headers arrived
    events: list[tuple[str, dict[str, Any], float]] = field(
        default_factory=list
    )  # name, data, read

    @property
    def end(self) -> dict[str, Any] | None:
        return next((data for name, data, _ in self.events if name == "end"), None)


async def follow(http: httpx.AsyncClient, execution_id: str) -> Followed:
    """Read the execution's events until `end`, each stamped with the wall clock as read."""
    found = Followed()
    async with http.stream("GET", f"/executions/{execution_id}/events") as response:
        if response.status_code != 200:
            raise RuntimeError(f"stream refused: {response.status_code}")
        found.opened = time.time()
        name, data = "message", ""
        async for line in response.aiter_lines():
            if line.startswith("event:"):
                name = line[6:].strip()
            elif line.startswith("data:"):
                data += line[5:].strip()
            elif not line and data:
                found.events.append((name, json.loads(data), time.time()))
                if name == "end":
                    return found
                name, data = "message", ""
    return found


@dataclass
class Idle:
    """The idle subscribers: how many opened, failed, read an event or saw their stream end."""

    opened: int = 0
    events: int = 0
    ended: int = 0
    failed: Counter[str] = field(default_factory=Counter)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    async def hold(self, http: httpx.AsyncClient, path: str, gate: asyncio.Semaphore) -> None:
        """Open `path` (at most OPEN_AT_ONCE being opened) and hold it, reading what comes."""
        await gate.acquire()
        opening = True
        try:
            async with http.stream("GET", path) as response:
                gate.release()
                opening = False
                if response.status_code != 200:
                    self.failed[str(response.status_code)] += 1
                    return
                self.opened += 1
                async for line in response.aiter_lines():
                    if line.startswith("event:"):
                        self.events += 1
                self.ended += 1
        except httpx.HTTPError as exc:
            self.failed[type(exc).__name__] += 1
        finally:
            if opening:
                gate.release()

    async def open(self, http: httpx.AsyncClient, paths: list[str]) -> float:
        """Open one subscriber on each path; the seconds until all answered."""
        gate = asyncio.Semaphore(OPEN_AT_ONCE)
        started = time.perf_counter()
        self.tasks = [asyncio.create_task(self.hold(http, path, gate)) for path in paths]
        deadline = started + 300
        while self.opened + sum(self.failed.values()) < len(paths):
            if time.perf_counter() > deadline:
                raise TimeoutError(f"{self.opened} of {len(paths)} subscribers open after 300 s")
            await asyncio.sleep(0.05)
        return time.perf_counter() - started

    async def close(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)


# -- measures ------------------------------------------------------------------------------------


def rss_kib(pid: int) -> int:
    """Resident memory of process `pid` and its children (KiB, /proc)."""
    total = 0
    for member in process_tree(pid):
        try:
            for line in Path(f"/proc/{member}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total


async def cpu_share(pid: int, seconds: float) -> float:
    """The API process's CPU time over `seconds` of wall time with no request made (cores
    busy): what holding the subscribers costs, whatever else runs on the machine."""
    before = tree_cpu_seconds(pid)
    await asyncio.sleep(seconds)
    return round((tree_cpu_seconds(pid) - before) / seconds, 3)


def summary_s(values: list[float]) -> dict[str, Any]:
    return {
        "samples": len(values),
        "p50_s": round(statistics.median(values), 3),
        "p99_s": round(percentile(values, 0.99), 3),
        "min_s": round(min(values), 3),
        "max_s": round(max(values), 3),
    }


async def submit(http: httpx.AsyncClient, workflow_id: str) -> str:
    response = await http.post(
        f"/workflows/{workflow_id}/executions", json={"inputs": {"who": "bench"}}
    )
    if response.status_code != 201:
        raise RuntimeError(f"submission refused: {response.text}")
    execution_id: str = response.json()["id"]
    return execution_id


async def event_latency(
    http: httpx.AsyncClient, workflow_id: str, executions: int
) -> dict[str, Any]:
    """Run the chain `executions` times, one at a time, each followed from its submission."""
    latencies: list[float] = []
    replayed = 0
    for _ in range(executions):
        execution_id = await submit(http, workflow_id)
        found = await asyncio.wait_for(follow(http, execution_id), RUN_TIMEOUT_S)
        end = found.end
        if end is None or end["status"] != "succeeded":
            raise RuntimeError(f"execution {execution_id} ended {end}")
        succeeded = [(d, read) for name, d, read in found.events if name == "node.succeeded"]
        if len(succeeded) != NODES + 2:
            raise RuntimeError(f"{len(succeeded)} node.succeeded events of {NODES + 2} nodes")
        for data, read in succeeded:
            if data["timestamp"] < found.opened:
                replayed += 1  # finished before the subscription: not a live event
            else:
                latencies.append(read - data["timestamp"])
    if not latencies:
        raise RuntimeError("every event was replayed: no live event measured")
    return {**summary_s(latencies), "executions": executions, "replayed": replayed}


async def request_latency(http: httpx.AsyncClient, paths: list[str], count: int) -> dict[str, Any]:
    """`count` GETs of each path, one at a time, the paths interleaved: p50/p99 per path (ms)."""
    times: dict[str, list[float]] = {path: [] for path in paths}
    failed: Counter[str] = Counter()
    for _ in range(count):
        for path in paths:
            started = time.perf_counter()
            response = await http.get(path)
            times[path].append(time.perf_counter() - started)
            if response.status_code != 200:
                failed[str(response.status_code)] += 1
    found: dict[str, Any] = {
        path: {
            "requests": len(values),
            "p50_ms": round(percentile(values, 0.5) * 1000, 1),
            "p99_ms": round(percentile(values, 0.99) * 1000, 1),
            "max_ms": round(max(values) * 1000, 1),
        }
        for path, values in times.items()
    }
    found["failed"] = dict(failed)
    return found


# -- one variant: an API process, its baseline, then 1,000 idle subscribers ----------------------


async def deploy(http: httpx.AsyncClient, definition: dict[str, Any]) -> str:
    workflow_id: str = (await http.post("/workflows", json={"definition": definition})).json()["id"]
    deployed = (await http.post(f"/workflows/{workflow_id}/versions/1/deploy")).json()
    if not deployed.get("runnable"):
        raise RuntimeError(f"deploy failed: {deployed}")
    return workflow_id


async def parked_execution(http: httpx.AsyncClient, workflow_id: str) -> str:
    """An execution parked at its approval (its run ended; the execution waits)."""
    execution_id = await submit(http, workflow_id)
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while time.monotonic() < deadline:
        status = (await http.get(f"/executions/{execution_id}")).json()["status"]
        if status == "waiting":
            return execution_id
        await asyncio.sleep(0.5)
    raise TimeoutError(f"execution {execution_id} not waiting after {RUN_TIMEOUT_S} s")


def queued_executions(url: str, like: str, count: int) -> list[str]:
    """`count` queued executions of the same workflow as execution `like`, never launched: each
    one's launch is held back a day, so the launch reconciler skips them."""
    ids = [str(uuid.uuid4()) for _ in range(count)]
    with session_scope(get_engine(url)) as session:
        model = session.get(Execution, like)
        if model is None:
            raise RuntimeError(f"no execution {like}")
        now = utcnow()
        rows = [
            {
                "id": execution_id,
                "workflow_id": model.workflow_id,
                "version": model.version,
                "user_id": model.user_id,
                "status": "queued",
                "priority": 0,
                "inputs": {"who": "idle"},
                "job_name": model.job_name,
                "location_name": model.location_name,
                "launch_attempts": 0,
                "launch_retry_at": now + timedelta(days=1),
                "created_at": now,
            }
            for execution_id in ids
        ]
        session.execute(sa.insert(Execution), rows)
    return ids


@dataclass
class Held:
    opened: int
    failed: dict[str, int]
    open_s: float


class Holder:
    """The idle subscribers in a process of their own (`python -m bench.events --hold`): in
    the measuring process, their 1,000 streams would share its event loop (and httpx's pool
    bookkeeping) with the requests it times, and the client's cost would pass for the API's."""

    def __init__(self, base: str, auth: dict[str, str], paths: list[str]) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "bench.events", "--hold"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=Path(__file__).resolve().parents[1],
        )
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps({"base": base, "auth": auth, "paths": paths}) + "\n")
        self.process.stdin.flush()

    def open(self) -> Held:
        """Blocks until the holder says how many streams it opened."""
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError("the subscriber holder exited before opening its streams")
        return Held(**json.loads(line))

    def close(self) -> dict[str, Any]:
        """Close the streams; what they read meanwhile."""
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.close()
        line = self.process.stdout.readline()
        self.process.wait(timeout=60)
        found: dict[str, Any] = json.loads(line) if line else {}
        return found


async def hold_main() -> None:
    """The holder process: open the streams named on stdin, say so, hold them until stdin
    closes, then say what they read."""
    spec = json.loads(await asyncio.to_thread(sys.stdin.readline))
    paths: list[str] = spec["paths"]
    limits = httpx.Limits(max_connections=len(paths) + 20, max_keepalive_connections=20)
    timeout = httpx.Timeout(60.0, read=None)  # idle streams read a ping every 15 s
    idle = Idle()
    async with httpx.AsyncClient(
        base_url=spec["base"], headers=spec["auth"], limits=limits, timeout=timeout
    ) as client:
        open_s = await idle.open(client, paths)
        print(
            json.dumps({"opened": idle.opened, "failed": dict(idle.failed), "open_s": open_s}),
            flush=True,
        )
        await asyncio.to_thread(sys.stdin.read)  # until the parent closes it
        events, ended = idle.events, idle.ended
        await idle.close()
    print(json.dumps({"events_read": events, "still_open": idle.opened - ended}), flush=True)


async def feed_figures(http: httpx.AsyncClient) -> dict[str, float]:
    """The API's live-feed figures from its /metrics (`flowmaestro_event_*`)."""
    text = (await http.get("/metrics")).text
    wanted = {
        "flowmaestro_event_subscribers": "subscribers",
        "flowmaestro_event_feed_followed_executions": "followed",
        "flowmaestro_event_feed_joining": "joining",
        "flowmaestro_event_feed_tick_seconds_total": "tick_seconds",
    }
    found: dict[str, float] = {}
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name in wanted:
            found[wanted[name]] = float(value)
    return found


async def taken_in(
    http: httpx.AsyncClient, subscribers: int, executions: int, timeout_s: float = 300
) -> float:
    """Seconds until the feed has taken every opened stream in (`subscribers` subscribed, none
    joining, `executions` followed): what comes after is the feed at rest, not still loading its subscribers."""
    started = time.perf_counter()
    while time.perf_counter() - started < timeout_s:
        figures = await feed_figures(http)
        if (
            figures.get("subscribers", 0) >= subscribers
            and figures.get("joining") == 0
            and figures.get("followed", 0) >= executions
        ):
            return time.perf_counter() - started
        await asyncio.sleep(0.2)
    raise TimeoutError(f"the feed took its subscribers in for {timeout_s} s")


async def variant(
    base: str,
    pid: int,
    auth: dict[str, str],
    *,
    idle_on: Callable[[httpx.AsyncClient, str, str], Awaitable[list[str]]],
    executions: int,
    requests: int,
    quiet_s: float,
) -> dict[str, Any]:
    """Baseline (no subscriber but the measuring one), then with IDLE idle subscribers on the
    executions `idle_on(http, chain workflow, a finished chain execution)` names."""
    timeout = httpx.Timeout(60.0, read=None)
    async with httpx.AsyncClient(base_url=base, headers=auth, timeout=timeout) as http:
        chain = await deploy(http, chain_flow())
        # Warm-up: the job loaded, the paths taken once; its execution is the one GET reads.
        sample = await submit(http, chain)
        await asyncio.wait_for(follow(http, sample), RUN_TIMEOUT_S)
        print(f"[events] {base}: warmed up", flush=True)
        paths = ["/health", f"/executions/{sample}"]
        found: dict[str, Any] = {}
        await request_latency(http, paths, 20)  # warm-up
        rss_before = rss_kib(pid)
        found["without"] = {
            "rss_kib": rss_before,
            "cpu_share": await cpu_share(pid, quiet_s),
            "requests": await request_latency(http, paths, requests),
            "latency": await event_latency(http, chain, executions),
        }
        print(f"[events] {base}: baseline measured", flush=True)
        targets = await idle_on(http, chain, sample)
        holder = Holder(base, auth, [f"/executions/{e}/events" for e in targets])
        try:
            idle = await asyncio.to_thread(holder.open)
            opened_s = idle.open_s
            taken_s = await taken_in(http, idle.opened, len(set(targets)))
            print(f"[events] {base}: {idle.opened} idle subscribers open", flush=True)
            rss_after = rss_kib(pid)
            ticks_before = await feed_figures(http)
            cpu_at_rest = await cpu_share(pid, quiet_s)
            ticks_after = await feed_figures(http)
            found["with_idle"] = {
                "rss_kib": rss_after,
                "cpu_share": cpu_at_rest,
                "feed_tick_share": round(
                    (ticks_after["tick_seconds"] - ticks_before["tick_seconds"]) / quiet_s, 3
                ),
                "requests": await request_latency(http, paths, requests),
                "latency": await event_latency(http, chain, executions),
            }
            found["idle"] = {
                "subscribers": len(targets),
                "executions": len(set(targets)),
                "opened": idle.opened,
                "failed": dict(idle.failed),
                "open_s": round(opened_s, 2),
                "taken_in_s": round(taken_s, 2),
            }
        finally:
            held = await asyncio.to_thread(holder.close)
            found.setdefault("idle", {}).update(held)
        found["rss_per_subscriber_kib"] = round((rss_after - rss_before) / len(targets), 1)
        found["requests_p99_ratio"] = {
            label: round(
                found["with_idle"]["requests"][path]["p99_ms"]
                / found["without"]["requests"][path]["p99_ms"],
                2,
            )
            for label, path in zip(("health", "execution"), paths, strict=True)
        }
    return found


def run_variants(workdir: Path, executions: int, requests: int, quiet_s: float) -> dict[str, Any]:
    name, url = pg_database()
    stack = DagsterStack(workdir / "home", url, extra_env={"FLOWMAESTRO_SECRET_KEY": SECRET})
    try:
        stack.start(timeout=600)  # a busy machine loads the code locations slowly
        settings = ApiSettings(
            _env_file=None,
            database_url=url,
            dagster_graphql_url=stack.graphql_url,
            reconcile_after_seconds=3600,
        )
        auth = user_key(url)

        async def on_one_parked(http: httpx.AsyncClient, _chain: str, _sample: str) -> list[str]:
            approval = await deploy(http, APPROVAL)
            return [await parked_execution(http, approval)] * IDLE

        async def on_queued(http: httpx.AsyncClient, _chain: str, sample: str) -> list[str]:
            return await asyncio.to_thread(queued_executions, url, sample, IDLE)

        found: dict[str, Any] = {}
        for label, idle_on in (("one_parked", on_one_parked), ("many_queued", on_queued)):
            server = ApiProcess(settings, stack.home, workers=1)
            server.env["FLOWMAESTRO_SECRET_KEY"] = SECRET
            with server as base:
                assert server.process is not None
                print(f"[events] {label}: API pid {server.process.pid}", flush=True)
                found[label] = asyncio.run(
                    variant(
                        base,
                        server.process.pid,
                        auth,
                        idle_on=idle_on,
                        executions=executions,
                        requests=requests,
                        quiet_s=quiet_s,
                    )
                )
        return found
    finally:
        stack.stop()
        drop_pg(name)


def raise_open_files() -> int:
    """The soft limit on open files raised to the hard one (the API process inherits it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = hard if hard != resource.RLIM_INFINITY else max(soft, 65536)
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def main(executions: int = 10, requests: int = 500, quiet_s: float = 15.0) -> dict[str, Any]:
    warnings.filterwarnings("ignore")
    open_files = raise_open_files()
    if open_files < 2 * IDLE + 200:
        raise RuntimeError(f"{open_files} open files allowed: too few for {IDLE} subscribers")
    with tempfile.TemporaryDirectory() as tmp:
        variants = run_variants(Path(tmp), executions, requests, quiet_s)
    worst_latency = max(v["with_idle"]["latency"]["p99_s"] for v in variants.values())
    worst_ratio = max(r for v in variants.values() for r in v["requests_p99_ratio"].values())
    results: dict[str, Any] = {
        "variants": variants,
        "shape": {
            "nodes": NODES + 2,
            "idle_subscribers": IDLE,
            "executions": executions,
            "requests": requests,
            "quiet_s": quiet_s,
            "open_files": open_files,
        },
        "goals": {
            **GOALS,
            "latency_met": worst_latency <= GOALS["latency_p99_s_max"],
            "requests_met": worst_ratio <= GOALS["requests_p99_ratio_max"],
        },
    }
    print(
        f"[events] event latency p99 with {IDLE} subscribers: {worst_latency} s "
        f"(goal ≤ {GOALS['latency_p99_s_max']} s: "
        f"{'met' if results['goals']['latency_met'] else 'NOT met'}); other requests' p99 "
        f"with / without: {worst_ratio} (goal ≤ {GOALS['requests_p99_ratio_max']}: "
        f"{'met' if results['goals']['requests_met'] else 'NOT met'})",
        flush=True,
    )
    return results


def run(quick: bool = False) -> dict[str, Any]:
    """The `events` section: full or smoke-sized (`quick`; still 1,000 idle subscribers)."""
    return main(executions=1, requests=100, quiet_s=5.0) if quick else main()


if __name__ == "__main__":
    if "--hold" in sys.argv:
        asyncio.run(hold_main())
    else:
        print(json.dumps(run("--quick" in sys.argv), indent=2))
