"""A Celery worker keeps what every step reuses (engines/celery.py): its Dagster instance, built
jobs by (job, definition hash), and a log capture that starts no process; a changed definition
under an unchanged job name is built again, and a step of a run that ended is not run.

The task body is tested in process on a real SQLite instance; the last test runs real
`flowmaestro worker` processes on real Redis (the two-worker run, the killed worker and the
missing worker are tests/test_scale_out.py, on PostgreSQL).
"""

import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from dagster import (
    DagsterEvent,
    DagsterEventType,
    DagsterInstance,
    deserialize_value,
    execute_job,
    reconstructable,
    serialize_value,
)

from flowmaestro_dagster.dagster_internals import ExecuteStepArgs, ReconstructableJob, RetryMode
from flowmaestro_dagster.engines.celery import (
    JobCache,
    WorkerComputeLogManager,
    close_worker_state,
    execute_step,
    make_celery_app,
    worker_instance_ref,
    worker_state,
)
from flowmaestro_dagster.settings import get_settings
from tests.celery_jobs import VALUE_FILE_ENV, versioned_job
from tests.services import REDIS_URL, require_redis

ROOT = Path(__file__).resolve().parents[1]

# -- the job cache -------------------------------------------------------------------------------


class _Builds:
    """A job loader that counts its builds (each build a new object)."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def __call__(self, job: Any) -> Any:
        self.calls.append(job)
        return object()


def test_the_job_cache_serves_a_job_again_until_its_definition_hash_changes() -> None:
    builds = _Builds()
    cache = JobCache(4, load=builds)
    first, cached = cache.get("job-a", "hash-1")  # type: ignore[arg-type]
    assert not cached
    again, cached = cache.get("job-a", "hash-1")  # type: ignore[arg-type]
    assert cached and again is first
    changed, cached = cache.get("job-a", "hash-2")  # type: ignore[arg-type]
    assert not cached and changed is not first
    assert builds.calls == ["job-a", "job-a"]
    assert (cache.hits, cache.builds) == (1, 2)


def test_the_job_cache_drops_the_least_recently_used_job_past_its_size() -> None:
    builds = _Builds()
    cache = JobCache(2, load=builds)
    cache.get("a", "1")  # type: ignore[arg-type]
    cache.get("b", "1")  # type: ignore[arg-type]
    cache.get("a", "1")  # type: ignore[arg-type]  # `a` is now the most recently used
    cache.get("c", "1")  # type: ignore[arg-type]  # `b` goes
    assert len(cache) == 2
    assert cache.get("a", "1")[1] and cache.get("c", "1")[1]  # type: ignore[arg-type]
    assert not cache.get("b", "1")[1]  # type: ignore[arg-type]
    assert builds.calls == ["a", "b", "c", "b"]


def test_a_run_without_a_definition_hash_is_never_served_from_the_cache() -> None:
    builds = _Builds()
    cache = JobCache(4, load=builds)
    assert cache.get("a", None)[0] is not cache.get("a", None)[0]  # type: ignore[arg-type]
    assert len(cache) == 0 and len(builds.calls) == 2
    with pytest.raises(ValueError, match="≥ 0"):
        JobCache(-1)


# -- the task body, in process -------------------------------------------------------------------


@pytest.fixture
def value_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "value.txt"
    path.write_text("one", encoding="utf-8")
    monkeypatch.setenv(VALUE_FILE_ENV, str(path))
    return path


@pytest.fixture
def step_instance(tmp_path: Path) -> Iterator[DagsterInstance]:
    """A persistent SQLite instance; the worker state of this process is fresh around it."""
    close_worker_state()
    (tmp_path / "dagster").mkdir()
    with DagsterInstance.local_temp(tempdir=str(tmp_path / "dagster")) as instance:
        try:
            yield instance
        finally:
            close_worker_state()


WORKER = SimpleNamespace(request=SimpleNamespace(hostname="flowmaestro-test@here"))


def _step(instance: DagsterInstance, run_id: str | None = None) -> tuple[list[DagsterEvent], str]:
    """Run step `n` of a new run of `versioned_job` (or of run `run_id`) through the task."""
    job = reconstructable(versioned_job)
    if run_id is None:
        run_id = instance.create_run_for_job(job_def=versioned_job(), run_config={}).run_id
    run = instance.get_run_by_id(run_id)
    assert run is not None
    args = ExecuteStepArgs(
        job_origin=job.get_python_origin(),
        run_id=run_id,
        step_keys_to_execute=["n"],
        instance_ref=instance.get_ref(),
        retry_mode=RetryMode.DISABLED,
        known_state=None,
        print_serialized_events=False,
    )
    serialized = execute_step(
        WORKER,
        serialize_value(args),
        job.to_dict(),
        run.job_snapshot_id,
    )
    return [deserialize_value(event, DagsterEvent) for event in serialized], run_id


def _worker_event(events: Sequence[DagsterEvent]) -> dict[str, Any]:
    """The metadata of the worker's "Executing steps ... in celery worker" engine event."""
    (started,) = [e for e in events if e.is_engine_event and "celery worker" in (e.message or "")]
    return {k: v.value for k, v in started.engine_event_data.metadata.items()}


def _job_source(events: Sequence[DagsterEvent]) -> str:
    """How the worker got the job: "built" or "cached" (its engine event says)."""
    metadata = _worker_event(events)
    assert metadata["Celery worker"] == "flowmaestro-test@here"
    return str(metadata["job"])


def _output(events: Sequence[DagsterEvent]) -> Any:
    (output,) = [e for e in events if e.event_type == DagsterEventType.STEP_OUTPUT]
    value: Any = output.step_output_data.metadata["output"].value
    return value["result"]


def test_a_worker_keeps_its_instance_and_builds_a_job_once(
    step_instance: DagsterInstance, value_file: Path
) -> None:
    first, _ = _step(step_instance)
    second, _ = _step(step_instance)
    assert [_job_source(first), _job_source(second)] == ["built", "cached"]
    assert _output(first) == _output(second) == "one"
    assert any(e.is_step_success for e in second)
    state = worker_state()
    assert state.instance(step_instance.get_ref()) is state.instance(step_instance.get_ref())
    assert (state.jobs.hits, state.jobs.builds) == (1, 1)


def test_a_changed_definition_under_the_same_job_name_is_built_again(
    step_instance: DagsterInstance, value_file: Path
) -> None:
    before, _ = _step(step_instance)
    value_file.write_text("two", encoding="utf-8")  # same job name, another definition
    after, _ = _step(step_instance)
    assert [_job_source(before), _job_source(after)] == ["built", "built"]
    assert [_output(before), _output(after)] == ["one", "two"]


def test_a_step_of_a_run_that_ended_is_not_run(
    step_instance: DagsterInstance, value_file: Path
) -> None:
    run = step_instance.create_run_for_job(job_def=versioned_job(), run_config={})
    step_instance.report_run_failed(run)
    events, run_id = _step(step_instance, run.run_id)
    assert events == []
    logged = step_instance.get_records_for_run(run_id).records
    messages = [record.event_log_entry.message for record in logged]
    assert any("step n not run by worker flowmaestro-test@here" in m for m in messages)
    assert not any(
        record.event_log_entry.dagster_event is not None
        and record.event_log_entry.dagster_event.event_type == DagsterEventType.STEP_START
        for record in logged
    )


def test_the_worker_captures_step_logs_without_starting_processes(
    step_instance: DagsterInstance, value_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    started: list[Any] = []
    real_popen = subprocess.Popen

    def recording_popen(*args: Any, **kwargs: Any) -> Any:
        started.append(args[0] if args else kwargs.get("args"))
        return real_popen(*args, **kwargs)

    monkeypatch.setattr(subprocess, "Popen", recording_popen)
    events, run_id = _step(step_instance)
    assert started == []  # Dagster's local manager starts `tail` and a watcher per stream
    (captured,) = [e for e in events if e.event_type == DagsterEventType.LOGS_CAPTURED]
    manager = worker_state().instance(step_instance.get_ref()).compute_log_manager
    assert isinstance(manager, WorkerComputeLogManager)
    log_key = manager.build_log_key_for_run(run_id, captured.logs_captured_data.file_key)
    assert manager.is_capture_complete(log_key)  # the UI reads these files as before
    assert step_instance.get_run_by_id(run_id) is not None


def test_only_dagsters_local_log_manager_is_swapped(step_instance: DagsterInstance) -> None:
    ref = step_instance.get_ref()
    swapped = worker_instance_ref(ref)
    assert swapped.compute_logs_data.class_name == "WorkerComputeLogManager"
    assert swapped.compute_logs_data.config_yaml == ref.compute_logs_data.config_yaml
    assert swapped._replace(compute_logs_data=ref.compute_logs_data) == ref
    assert worker_instance_ref(swapped) == swapped  # not Dagster's local manager: kept


# -- real worker processes on Redis --------------------------------------------------------------


def _start_worker(queue: str, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    flowmaestro = Path(sys.executable).with_name("flowmaestro")
    return subprocess.Popen(
        [
            str(flowmaestro),
            "worker",
            "--name",
            f"cache-{uuid.uuid4().hex[:6]}",
            "--concurrency",
            "1",
        ],
        env=env,
        cwd=ROOT,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def _wait_for_consumer(queue: str, process: subprocess.Popen[bytes], log: Path) -> None:
    import time

    app = make_celery_app(broker_url=REDIS_URL, backend_url=REDIS_URL, queue=queue)
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            assert process.poll() is None, log.read_text()[-2000:]
            replies = app.control.inspect(timeout=0.5).active_queues() or {}
            if any(q["name"] == queue for qs in replies.values() for q in qs):
                return
        raise AssertionError(f"no worker on {queue}: {log.read_text()[-2000:]}")
    finally:
        app.close()


@pytest.mark.redis
@pytest.mark.slow
def test_a_worker_process_serves_a_changed_definition_not_its_cached_job(
    tmp_path: Path, value_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    require_redis()
    queue = f"fm-cache-{uuid.uuid4().hex[:10]}"
    celery_env = {
        "FLOWMAESTRO_CELERY_BROKER_URL": REDIS_URL,
        "FLOWMAESTRO_CELERY_QUEUE": queue,
        "FLOWMAESTRO_CELERY_CHECK_SECONDS": "1",
    }
    env = {**os.environ, **celery_env, "PYTHONPATH": str(ROOT)}
    log = tmp_path / "worker.log"
    worker = _start_worker(queue, env, log)
    for name, value in celery_env.items():
        monkeypatch.setenv(name, value)
    get_settings.cache_clear()
    try:
        _wait_for_consumer(queue, worker, log)
        (tmp_path / "dagster").mkdir()
        with DagsterInstance.local_temp(tempdir=str(tmp_path / "dagster")) as instance:

            def run() -> tuple[str, str, str]:
                result = execute_job(reconstructable(versioned_job), instance=instance)
                assert result.success, log.read_text()[-3000:]
                metadata = _worker_event(result.all_events)
                return _output(result.all_events), str(metadata["job"]), str(metadata["worker pid"])

            first = run()
            second = run()
            value_file.write_text("two", encoding="utf-8")  # same job name, another definition
            # This process (the run's) keeps its last built job too (Dagster's own cache).
            ReconstructableJob.get_definition.cache_clear()
            ReconstructableJob.get_repository_definition.cache_clear()
            third = run()
    finally:
        get_settings.cache_clear()
        if worker.poll() is None:
            os.killpg(worker.pid, signal.SIGTERM)
            worker.wait(timeout=30)
    assert first[0] == second[0] == "one" and third[0] == "two"
    assert [first[1], second[1], third[1]] == ["built", "cached", "built"]
    assert first[2] == second[2] == third[2]  # one pool process served all three
