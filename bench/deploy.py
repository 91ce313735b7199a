"""Deploy benchmark (`deploy` section): deploy → runnable with 10, 200 and 1000 workflows deployed.

A real Dagster (`dagster dev` on a temporary home, `flowmaestro_dagster.testing.stack`) and the
API in process (`create_app` + TestClient) on one SQLite platform database. For each size, the
workflows are deployed straight into the database (corpus definitions in turn, each its own
workflow: a deploy only marks a version `deployed`; the code location reads them when it loads),
then, per sample, one more workflow is deployed through the API and timed:

* deploy → runnable: `POST /workflows/{id}/versions/1/deploy` until it answers; the API reloads
  only the workflow's code location and answers once the job is visible in Dagster's GraphQL
  (`runnable: true`);
* deploy → launched: until a run of an execution submitted right after the deploy exists in
  Dagster (the API launches it through GraphQL), i.e. the job can be launched;
* shard snapshot (a diagnostic): in this process, building the shard's repository from the
  database and Dagster's snapshot of every job in it (`RepositorySnap.from_def`), the part of a
  reload that grows with the workflows; the rest is starting the code server process.

Deployed workflows are spread over `FLOWMAESTRO_CODE_LOCATION_SHARDS` code locations; the
section runs twice, with 1 shard (the default: every workflow in one location, the worst case
for a reload) and with SHARDED_SHARDS, and records both.

`python -m bench.deploy [--quick]` prints the result as JSON.
"""

import json
import os
import statistics
import sys
import tempfile
import time
import uuid
import warnings
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient

from bench.common import echo_flow, stack_settings, wait_until
from flowmaestro_api.main import create_app
from flowmaestro_api.security import create_api_key, ensure_user
from flowmaestro_api.settings import ApiSettings
from flowmaestro_dagster.control.client import DagsterClient
from flowmaestro_dagster.control.workflows import create_workflow, mark_deployed
from flowmaestro_dagster.engines.jobs import build_job
from flowmaestro_dagster.errors import InvalidWorkflowError
from flowmaestro_dagster.store.db import dispose_engines, get_engine, migrate, session_scope
from flowmaestro_dagster.testing.stack import DagsterStack

ROOT = Path(__file__).resolve().parents[1]
CORPUS = ROOT / "tests" / "corpus" / "flowmaestro"
SIZES = (10, 200, 1000)
GOAL_S_AT_1000 = 3.0
# About 30 workflows per location at 1000: a reload stays near the cost of starting a code server.
SHARDED_SHARDS = 32
PROBE = echo_flow("Deploy probe", "greeting", "hi {{who}}")


def corpus_definitions() -> list[dict[str, Any]]:
    """Every corpus definition that compiles (the cyclic ones are rejected)."""
    found = []
    for path in sorted(CORPUS.rglob("*.json")):
        definition = json.loads(path.read_text())
        try:
            build_job(definition)
        except InvalidWorkflowError:
            continue
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
    """Build shard 0 as its code server does and snapshot every job in it."""
    from dagster._core.remote_representation.external_data import RepositorySnap

    from flowmaestro_api.settings import get_api_settings
    from flowmaestro_dagster.definitions import build_shard

    os.environ["FLOWMAESTRO_DATABASE_URL"] = url
    os.environ["FLOWMAESTRO_CODE_LOCATION_SHARDS"] = str(shards)
    get_api_settings.cache_clear()
    started = time.perf_counter()
    RepositorySnap.from_def(build_shard(0))
    return time.perf_counter() - started


def summary(values: list[float]) -> dict[str, Any]:
    return {
        "samples": len(values),
        "median_s": round(statistics.median(values), 3),
        "min_s": round(min(values), 3),
        "max_s": round(max(values), 3),
    }


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
    sizes: tuple[int, ...] = SIZES, samples: int = 3, shards: int | None = None
) -> dict[str, Any]:
    """One shard count (default: the setting's value in the environment)."""
    warnings.filterwarnings("ignore")
    if shards is None:
        shards = ApiSettings(_env_file=None).code_location_shards
    default_shards = ApiSettings.model_fields["code_location_shards"].default
    pool = corpus_definitions()
    results: dict[str, Any] = {
        "shards": shards,
        "shards_default": default_shards,
        "corpus_definitions": len(pool),
        "samples": samples,
        "sizes": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{Path(tmp) / 'platform.db'}"
        migrate(url)
        email = f"bench-{uuid.uuid4().hex[:6]}@example.com"
        stack = DagsterStack(Path(tmp) / "home", url, shards=shards)
        stack.start(timeout=180 + 10 * shards)  # a code server per shard starts
        try:
            settings = stack_settings(
                url, stack, code_location_shards=shards, reconcile_after_seconds=3600
            )
            dagster = DagsterClient(stack.graphql_url, instance=stack.instance())
            with session_scope(get_engine(url)) as session:
                user = ensure_user(session, email=email)
                auth = {"Authorization": f"Bearer {create_api_key(session, user=user)}"}
            with TestClient(create_app(settings, dagster=dagster)) as http:
                prober = Prober(http, dagster, auth)
                deployed = 0
                for size in sizes:
                    started = time.perf_counter()
                    populate(url, email, deployed, size - deployed, pool)
                    insert_s = time.perf_counter() - started
                    deployed = size
                    if size == sizes[0]:
                        prober.sample()  # warm-up: first deploy and run through the API
                    found = [prober.sample() for _ in range(samples)]
                    snapshot_s = shard_snapshot_seconds(url, shards)
                    results["sizes"][str(size)] = {
                        "workflows": size,
                        "insert_s": round(insert_s, 1),
                        "deploy_to_runnable": summary([f["runnable_s"] for f in found]),
                        "reload_and_visible": summary([f["reload_s"] for f in found]),
                        "deploy_to_launched": summary([f["launched_s"] for f in found]),
                        "shard_snapshot_s": round(snapshot_s, 3),
                    }
                    deployed += samples + (1 if size == sizes[0] else 0)
        finally:
            stack.stop()
            dispose_engines()
    largest = results["sizes"][str(max(sizes))]["deploy_to_runnable"]["median_s"]
    smallest = results["sizes"][str(min(sizes))]["deploy_to_runnable"]["median_s"]
    results["largest_over_smallest"] = round(largest / smallest, 2) if smallest else None
    results["goals"] = {
        "runnable_s_at_1000_max": GOAL_S_AT_1000,
        "met": largest <= GOAL_S_AT_1000 if max(sizes) >= 1000 else None,
    }
    return results


def run(quick: bool = False) -> dict[str, Any]:
    """The `deploy` section: 10, 200, 1000 workflows (10 and 100 for a smoke run), with one
    shard (the default: every workflow in the location a deploy reloads) and with
    SHARDED_SHARDS locations side by side."""
    sizes, samples = ((10, 100), 1) if quick else (SIZES, 3)
    return {"variants": [main(sizes, samples, shards=n) for n in (1, SHARDED_SHARDS)]}


if __name__ == "__main__":
    print(json.dumps(run("--quick" in sys.argv), indent=2))
