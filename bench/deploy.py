"""Deploy benchmark (`deploy` section): deploy → runnable with up to 10,000 workflows deployed.

A real Dagster (`dagster dev` on a temporary home, `flowmaestro_dagster.testing.stack`, with the
shard locations served as `flowmaestro dev` serves them) and the API in process (`create_app` +
TestClient) on one SQLite platform database. For each size, the workflows are deployed straight
into the database (corpus definitions in turn, each its own workflow: a deploy only marks a
version `deployed`), every location is then reloaded once, untimed (the steady state: each
workflow deployed before was loaded by its own deploy), the processes are let settle, and, per
sample, one more workflow is deployed through the API and timed:

* deploy → runnable: `POST /workflows/{id}/versions/1/deploy` until it answers; the API reloads
  only the workflow's code location and answers once the job is visible in Dagster's GraphQL
  (`runnable: true`);
* deploy → launched: until a run of an execution submitted right after the deploy exists in
  Dagster (the API launches it through GraphQL), i.e. the job can be launched;
* memory: resident set of the code server(s) of the shard locations (the one shared
  `flowmaestro code-server`, or every per-location code server), the webserver and the daemon;
* shard snapshot (a diagnostic): in this process, building shard 0 from the database and
  Dagster's snapshot of every job in it, cold: what a per-location code server redoes on every
  reload, and the shared one only for versions it has not built yet.

Two variants: the default configuration (`FLOWMAESTRO_CODE_SERVER=shared`,
`FLOWMAESTRO_CODE_LOCATION_SHARDS=32`) up to 10,000 workflows, and the previous one (a code
server per location, restarted on each reload, one location) up to 1,000, for comparison.

`python -m bench.deploy [--quick] [--sizes 1000,10000] [--samples N] [--shards N]
[--code-server shared|per_location]` prints the result as JSON (one variant when any option but
--quick is given).
"""

import argparse
import contextlib
import json
import os
import statistics
import tempfile
import time
import uuid
import warnings
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient

from bench.common import (
    echo_flow,
    process_tree,
    stack_settings,
    tree_cpu_seconds,
    wait_until,
)
from flowmaestro_api.main import create_app
from flowmaestro_api.security import create_api_key, ensure_user
from flowmaestro_api.settings import ApiSettings
from flowmaestro_dagster.control.client import DagsterClient
from flowmaestro_dagster.control.workflows import create_workflow, mark_deployed
from flowmaestro_dagster.engines.jobs import build_job
from flowmaestro_dagster.errors import InvalidWorkflowError
from flowmaestro_dagster.orchestration.workspace import SHARD_LOCATION
from flowmaestro_dagster.store.db import dispose_engines, get_engine, migrate, session_scope
from flowmaestro_dagster.testing.stack import DagsterStack

ROOT = Path(__file__).resolve().parents[1]
CORPUS = ROOT / "tests" / "corpus" / "flowmaestro"
SIZES = (10, 200, 1000, 10_000)
PREVIOUS_SIZES = (10, 200, 1000)  # a code server per location: ~50 s a deploy at 1,000
GOALS_S = {1000: 3.0, 10_000: 5.0}  # deploy → runnable, median, default configuration
PROBE = echo_flow("Deploy probe", "greeting", "hi {{who}}")


def corpus_definitions(*, schedules: bool = True) -> list[dict[str, Any]]:
    """Every corpus definition that compiles (the cyclic ones are rejected); `schedules=False`:
    without the ~8% whose trigger is a schedule."""
    from flowmaestro_dagster.control.schedules import schedule_trigger

    found = []
    for path in sorted(CORPUS.rglob("*.json")):
        definition = json.loads(path.read_text())
        try:
            build_job(definition)
        except InvalidWorkflowError:
            continue
        if schedules or schedule_trigger(definition) is None:
            found.append(definition)
    return found


def populate(url: str, email: str, first: int, count: int, pool: list[dict[str, Any]]) -> None:
    """Deploy `count` workflows (numbered from `first`) without reloading anything."""
    engine = get_engine(url)
    for batch in range(first, first + count, 100):
        with session_scope(engine) as session:
            user = ensure_user(session, email=email)
            for i in range(batch, min(batch + 100, first + count)):
                workflow, _ = create_workflow(
                    session,
                    user=user,
                    definition=pool[i % len(pool)],
                    name=f"bench deployed {i}",
                    description=None,
                    settings=None,
                )
                mark_deployed(session, user=user, workflow_id=workflow.id, version=1)


def shard_snapshot_seconds(url: str, shards: int) -> float:
    """Build shard 0 as a fresh code server does and snapshot every job in it."""
    from dagster._core.remote_representation.external_data import RepositorySnap

    from flowmaestro_api.settings import get_api_settings
    from flowmaestro_dagster import definitions
    from flowmaestro_dagster.settings import get_settings

    os.environ["FLOWMAESTRO_DATABASE_URL"] = url
    os.environ["FLOWMAESTRO_CODE_LOCATION_SHARDS"] = str(shards)
    get_api_settings.cache_clear()
    get_settings.cache_clear()  # build_shard reads these
    definitions._built_jobs.clear()  # cold, as a restarted code server
    started = time.perf_counter()
    RepositorySnap.from_def(definitions.build_shard(0), defer_snapshots=True)
    elapsed = time.perf_counter() - started
    definitions._built_jobs.clear()
    return elapsed


def summary(values: list[float]) -> dict[str, Any]:
    return {
        "samples": len(values),
        "median_s": round(statistics.median(values), 3),
        "min_s": round(min(values), 3),
        "max_s": round(max(values), 3),
    }


def load_average() -> list[float]:
    return [round(float(x), 2) for x in Path("/proc/loadavg").read_text().split()[:3]]


def rss_mb(pid: int) -> float:
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def memory_mb(stack: DagsterStack) -> dict[str, float]:
    """Resident memory of the shard locations' code server(s), the webserver and the daemon."""
    found = {"code_server": 0.0, "webserver": 0.0, "daemon": 0.0}
    if stack.code_server_process is not None:
        found["code_server"] = rss_mb(stack.code_server_process.pid)
    assert stack.process is not None
    for pid in process_tree(stack.process.pid):
        with contextlib.suppress(OSError):
            command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            if "dagster_webserver" in command:
                found["webserver"] += rss_mb(pid)
            elif "dagster._daemon" in command:
                found["daemon"] += rss_mb(pid)
            elif "--location-name flowmaestro-workflows-" in command:  # per-location servers
                found["code_server"] += rss_mb(pid)
    return {key: round(value) for key, value in found.items()}


def settle(stack: DagsterStack, *, cores: float = 1.2, timeout: float = 300.0) -> float:
    """Wait until Dagster's processes and the code server are back to their steady load (the
    webserver's and the daemon's fetches after a warm-up, which at 10,000 workflows take the
    daemon about a minute): two 5-second windows under `cores` of CPU, `timeout` at most."""
    assert stack.process is not None
    pids = [stack.process.pid] + (
        [stack.code_server_process.pid] if stack.code_server_process is not None else []
    )
    started = time.perf_counter()
    calm = 0
    while calm < 2 and time.perf_counter() - started < timeout:
        before = sum(tree_cpu_seconds(pid) for pid in pids)
        time.sleep(5)
        used = (sum(tree_cpu_seconds(pid) for pid in pids) - before) / 5
        calm = calm + 1 if used < cores else 0
    return time.perf_counter() - started


def warm(dagster: DagsterClient, shards: int) -> float:
    """Reload every shard location once: each then holds its workflows as if each had been
    deployed through the API (a shared code server compiles a version once, at its deploy)."""
    started = time.perf_counter()
    for shard in range(shards):
        dagster.reload_location(SHARD_LOCATION.format(shard), timeout=600)
    return time.perf_counter() - started


class Prober:
    """Deploys one more workflow through the API and times it until it can be launched."""

    def __init__(self, http: TestClient, dagster: DagsterClient, auth: dict[str, str]) -> None:
        self.http, self.dagster, self.auth = http, dagster, auth

    def sample(self) -> dict[str, float]:
        body = {"definition": PROBE, "name": f"probe {uuid.uuid4().hex[:6]}"}
        workflow_id = self.http.post("/workflows", json=body, headers=self.auth).json()["id"]
        started = time.perf_counter()
        deployed = self.http.post(f"/workflows/{workflow_id}/versions/1/deploy", headers=self.auth)
        runnable_s = time.perf_counter() - started
        answer = deployed.json()
        if deployed.status_code != 200 or not answer.get("runnable"):
            raise RuntimeError(f"the deploy did not make the job runnable: {deployed.text}")
        submitted = self.http.post(
            f"/workflows/{workflow_id}/executions",
            json={"inputs": {"who": "bench"}},
            headers=self.auth,
        )
        if submitted.status_code != 201:
            raise RuntimeError(f"submission refused: {submitted.text}")
        execution_id = submitted.json()["id"]
        runs = wait_until(lambda: self.dagster.runs_for_execution(execution_id), 120, 0.05)
        launched_s = time.perf_counter() - started
        run_id = runs[0].run_id
        wait_until(lambda: self._finished(run_id), 180, 0.05)  # quiet machine for the next sample
        return {
            "runnable_s": runnable_s,
            "reload_s": float(answer["reload_seconds"]),
            "launched_s": launched_s,
        }

    def _finished(self, run_id: str) -> bool:
        run = self.dagster.instance.get_run_by_id(run_id)
        return run is not None and run.is_finished


def main(
    sizes: tuple[int, ...] = SIZES,
    samples: int = 3,
    shards: int | None = None,
    code_server: str | None = None,
    schedules: bool = True,
) -> dict[str, Any]:
    """One configuration (default: the settings' defaults, not the environment's);
    `schedules=False` deploys no workflow whose trigger is a schedule (at 10,000 workflows the
    ~800 schedules keep the daemon's scheduler busy: a separate cost from deploys)."""
    warnings.filterwarnings("ignore")
    defaults = ApiSettings.model_fields
    shards = shards or defaults["code_location_shards"].default
    code_server = code_server or defaults["code_server"].default
    pool = corpus_definitions(schedules=schedules)
    results: dict[str, Any] = {
        "code_server": code_server,
        "code_server_default": defaults["code_server"].default,
        "shards": shards,
        "shards_default": defaults["code_location_shards"].default,
        "corpus_definitions": len(pool),
        "schedules": schedules,
        "samples": samples,
        "sizes": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{Path(tmp) / 'platform.db'}"
        migrate(url)
        email = f"bench-{uuid.uuid4().hex[:6]}@example.com"
        stack = DagsterStack(Path(tmp) / "home", url, shards=shards, code_server=code_server)
        stack.start(timeout=180 + 10 * shards)
        try:
            settings = stack_settings(
                url,
                stack,
                code_location_shards=shards,
                code_server=code_server,
                reconcile_after_seconds=3600,
            )
            dagster = DagsterClient(stack.graphql_url, instance=stack.instance())
            with session_scope(get_engine(url)) as session:
                user = ensure_user(session, email=email)
                auth = {"Authorization": f"Bearer {create_api_key(session, user=user)}"}
            with TestClient(create_app(settings, dagster=dagster)) as http:
                prober = Prober(http, dagster, auth)
                deployed = 0
                for size in sizes:
                    load_before = load_average()
                    started = time.perf_counter()
                    populate(url, email, deployed, size - deployed, pool)
                    insert_s = time.perf_counter() - started
                    deployed = size
                    warm_s = warm(dagster, shards)
                    settle_s = settle(stack)
                    if size == sizes[0]:
                        prober.sample()  # warm-up: first deploy and run through the API
                    found = [prober.sample() for _ in range(samples)]
                    snapshot_s = shard_snapshot_seconds(url, shards)
                    results["sizes"][str(size)] = {
                        "workflows": size,
                        "jobs_per_location": round(size / shards),
                        "insert_s": round(insert_s, 1),
                        "warm_s": round(warm_s, 1),
                        "settle_s": round(settle_s, 1),
                        "deploy_to_runnable": summary([f["runnable_s"] for f in found]),
                        "reload_and_visible": summary([f["reload_s"] for f in found]),
                        "deploy_to_launched": summary([f["launched_s"] for f in found]),
                        "shard_snapshot_s": round(snapshot_s, 3),
                        "memory_mb": memory_mb(stack),
                        "load": {"before": load_before, "after": load_average()},
                    }
                    deployed += samples + (1 if size == sizes[0] else 0)
        finally:
            stack.stop()
            dispose_engines()
    largest = results["sizes"][str(max(sizes))]["deploy_to_runnable"]["median_s"]
    smallest = results["sizes"][str(min(sizes))]["deploy_to_runnable"]["median_s"]
    results["largest_over_smallest"] = round(largest / smallest, 2) if smallest else None
    judged = {
        size: results["sizes"][str(size)]["deploy_to_runnable"]["median_s"] <= limit
        for size, limit in GOALS_S.items()
        if str(size) in results["sizes"]
    }
    results["goals"] = {
        "runnable_s_max": {str(size): limit for size, limit in GOALS_S.items()},
        "met_at": {str(size): met for size, met in judged.items()},
        "met": all(judged.values()) if judged else None,
    }
    return results


def run(quick: bool = False) -> dict[str, Any]:
    """The `deploy` section: the default configuration at 10, 200, 1,000 and 10,000 workflows
    and the previous one (a code server per location, one location) up to 1,000; a smoke run
    measures 10 and 100, one sample each."""
    if quick:
        variants = [main((10, 100), 1), main((10, 100), 1, shards=1, code_server="per_location")]
    else:
        variants = [main(SIZES, 3), main(PREVIOUS_SIZES, 3, shards=1, code_server="per_location")]
    return {"variants": variants}


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.deploy", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="the section's smoke run")
    parser.add_argument("--sizes", help="comma-separated workflow counts, e.g. 1000,10000")
    parser.add_argument("--samples", type=int, default=None, help="deploys timed per size")
    parser.add_argument("--shards", type=int, default=None)
    parser.add_argument("--code-server", choices=["shared", "per_location"], default=None)
    parser.add_argument("--no-schedules", action="store_true", help="no scheduled workflows")
    return parser.parse_args()


if __name__ == "__main__":
    args = _arguments()
    if args.sizes or args.samples or args.shards or args.code_server or args.no_schedules:
        sizes = tuple(int(x) for x in args.sizes.split(",")) if args.sizes else SIZES
        result = main(
            sizes, args.samples or 3, args.shards, args.code_server, not args.no_schedules
        )
    else:
        result = run(args.quick)
    print(json.dumps(result, indent=2))
