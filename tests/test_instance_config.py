"""The instance configuration renderer: its YAML is what Dagster itself accepts and reads back."""

from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml
from dagster import DagsterInstance
from dagster._core.run_coordinator.queued_run_coordinator import QueuedRunCoordinator
from pydantic import ValidationError

from flowmaestro_dagster.orchestration.instance_config import (
    SECTIONS,
    instance_config,
    render_instance_yaml,
    write_instance_yaml,
)
from flowmaestro_dagster.settings import Settings
from flowmaestro_dagster.tags import USER_TAG, USER_WORKFLOW_TAG

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _no_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Defaults mean defaults: no FLOWMAESTRO_* variable from the shell."""
    import os

    for name in list(os.environ):
        if name.startswith("FLOWMAESTRO_"):
            monkeypatch.delenv(name)


def settings(**values: Any) -> Settings:
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


def load(tmp_path: Path, text: str) -> DagsterInstance:
    """Dagster's own loader: it validates against the instance config schema."""
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    (home / "dagster.yaml").write_text(text)
    return DagsterInstance.from_config(str(home))


@pytest.fixture
def instance(tmp_path: Path) -> Iterator[DagsterInstance]:
    with load(tmp_path, render_instance_yaml(settings())) as loaded:
        yield loaded


def test_the_committed_dagster_yaml_is_the_rendering_of_the_defaults() -> None:
    committed = (ROOT / "dagster_home" / "dagster.yaml").read_text()
    assert committed == render_instance_yaml(settings())


def test_dagster_reads_back_the_default_run_queue(instance: DagsterInstance) -> None:
    coordinator = instance.run_coordinator
    assert isinstance(coordinator, QueuedRunCoordinator)  # Dagster's, taking a fraction
    assert coordinator.dequeue_interval_seconds == 0.5
    config = instance.get_concurrency_config()
    queue = config.run_queue_config
    assert queue is not None and queue.max_concurrent_runs == 10
    assert queue.max_user_code_failure_retries == 3
    assert list(queue.tag_concurrency_limits) == [
        {"key": USER_TAG, "value": {"applyLimitPerUniqueValue": True}, "limit": 3},
        {
            "key": USER_WORKFLOW_TAG,
            "value": {"applyLimitPerUniqueValue": True},
            "limit": 1,
        },
        {
            "key": "flowmaestro/concurrency_key",
            "value": {"applyLimitPerUniqueValue": True},
            "limit": 1,
        },
        {"key": "flowmaestro/queue", "value": "ai-workflows", "limit": 3},
        {"key": "flowmaestro/queue", "value": "data-processing", "limit": 5},
        {"key": "flowmaestro/queue_paused", "value": "true", "limit": 0},  # a paused queue
        *(  # the per-user limits an operator can set live: below the instance's (3)
            {
                "key": f".dagster/flowmaestro/user_limit/{n}",
                "value": {"applyLimitPerUniqueValue": True},
                "limit": n,
            }
            for n in range(3)
        ),
    ]
    assert config.pool_config.pool_granularity is not None
    assert config.pool_config.pool_granularity.value == "run"
    assert config.pool_config.default_pool_limit is None  # a workflow without a limit is free
    assert instance.event_log_storage.supports_global_concurrency_limits
    assert instance.run_monitoring_enabled


def test_every_setting_reaches_dagster(tmp_path: Path) -> None:
    custom = settings(
        max_concurrent_runs=25,
        user_run_limit=None,
        queue_limits={"ai-workflows": 2, "default": 8, "nightly": 0},
        dequeue_interval_seconds=1.5,
        dequeue_use_threads=True,
        dequeue_num_workers=4,
        pool_granularity="op",
    )
    with load(tmp_path, render_instance_yaml(custom)) as loaded:
        coordinator = loaded.run_coordinator
        assert isinstance(coordinator, QueuedRunCoordinator)
        assert coordinator.dequeue_interval_seconds == 1.5
        assert coordinator.dequeue_use_threads and coordinator.dequeue_num_workers == 4
        config = loaded.get_concurrency_config()
        queue = config.run_queue_config
        assert queue is not None and queue.max_concurrent_runs == 25
        limits = {(r["key"], str(r.get("value"))): r["limit"] for r in queue.tag_concurrency_limits}
        assert (USER_TAG, "{'applyLimitPerUniqueValue': True}") not in limits
        assert limits[("flowmaestro/queue", "nightly")] == 0
        assert limits[("flowmaestro/queue", "default")] == 8
        assert config.pool_config.pool_granularity is not None
        assert config.pool_config.pool_granularity.value == "op"


def test_dagsters_own_queue_daemon_passes_every_half_second(instance: DagsterInstance) -> None:
    """The daemon Dagster builds for this instance: its own QueuedRunCoordinatorDaemon, with
    the fractional interval (Dagster's coordinator alone would refuse 0.5)."""
    from dagster._daemon.controller import create_daemon_of_type
    from dagster._daemon.run_coordinator.queued_run_coordinator_daemon import (
        QueuedRunCoordinatorDaemon,
    )

    daemon = create_daemon_of_type(QueuedRunCoordinatorDaemon.daemon_type(), instance)
    assert type(daemon) is QueuedRunCoordinatorDaemon
    assert daemon.interval_seconds == 0.5  # type: ignore[attr-defined]
    assert QueuedRunCoordinatorDaemon.daemon_type() in instance.get_required_daemon_types()


def test_a_fraction_below_the_daemons_step_is_refused_by_the_coordinator() -> None:
    from flowmaestro_dagster.engines.run_queue import SubsecondRunCoordinator

    with pytest.raises(ValueError, match=r"at least 0\.5"):
        SubsecondRunCoordinator(dequeue_interval_seconds=0.1)
    assert SubsecondRunCoordinator().dequeue_interval_seconds == 1.0  # Dagster's default is 5


def test_run_workers_keep_connections_unless_told_not_to(tmp_path: Path) -> None:
    from flowmaestro_dagster.engines.launcher import ForkserverRunLauncher

    (tmp_path / "on").mkdir()
    (tmp_path / "off").mkdir()
    with load(tmp_path / "on", render_instance_yaml(settings())) as loaded:
        launcher = loaded.run_launcher
        assert isinstance(launcher, ForkserverRunLauncher) and launcher._keep_connections
    off = render_instance_yaml(settings(run_keep_connections=False))
    with load(tmp_path / "off", off) as loaded:
        launcher = loaded.run_launcher
        assert isinstance(launcher, ForkserverRunLauncher) and not launcher._keep_connections


def test_no_instance_limit_renders_minus_one(tmp_path: Path) -> None:
    with load(tmp_path, render_instance_yaml(settings(max_concurrent_runs=-1))) as loaded:
        queue = loaded.get_concurrency_config().run_queue_config
        assert queue is not None and queue.max_concurrent_runs == -1


def test_the_yaml_has_no_legacy_or_conflicting_keys() -> None:
    """`run_queue` excludes `run_coordinator`; run limits live only under `concurrency`."""
    data = yaml.safe_load(render_instance_yaml(settings()))
    assert "run_queue" not in data
    assert "max_concurrent_runs" not in data["run_coordinator"]["config"]
    assert "tag_concurrency_limits" not in data["run_coordinator"]["config"]
    assert list(data) == [
        "telemetry",
        "run_coordinator",
        "concurrency",
        "run_monitoring",
        "run_retries",
        "run_launcher",
    ]


def test_a_new_section_plugs_in_and_dagster_accepts_it(tmp_path: Path) -> None:
    """How issue 8 adds storage: one function, appended to SECTIONS."""

    def storage_section(_: Settings) -> Mapping[str, Any]:
        return {"storage": {"sqlite": {"base_dir": str(tmp_path / "storage")}}}

    text = render_instance_yaml(settings(), (*SECTIONS, storage_section))
    with load(tmp_path, text) as loaded:
        loaded.get_runs()
    assert (tmp_path / "storage").is_dir()


def test_two_sections_setting_one_key_is_an_error() -> None:
    with pytest.raises(ValueError, match="telemetry"):
        instance_config(settings(), (*SECTIONS, SECTIONS[0]))


def test_dagster_rejects_what_the_renderer_must_not_produce(tmp_path: Path) -> None:
    """The schema check is real: a stray key is refused by Dagster's loader."""
    from dagster._core.errors import DagsterInvalidConfigError

    text = render_instance_yaml(settings()) + "\nrun_queue:\n  dequeue_interval_seconds: 1\n"
    with pytest.raises(DagsterInvalidConfigError):
        load(tmp_path, text)


def test_write_instance_yaml_writes_dagster_home(tmp_path: Path) -> None:
    path = write_instance_yaml(tmp_path / "new-home", settings(max_concurrent_runs=4))
    assert path == tmp_path / "new-home" / "dagster.yaml"
    assert yaml.safe_load(path.read_text())["concurrency"]["runs"]["max_concurrent_runs"] == 4


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"user_run_limit": 10, "max_concurrent_runs": 10}, "lower than max_concurrent_runs"),
        ({"queue_limits": {"bad name": 1}}, "must match"),
        ({"queue_limits": {"ok": -1}}, "0 or more"),
        ({"pool_granularity": "step"}, "run"),
        ({"max_concurrent_runs": -2}, "greater than or equal"),
        ({"dequeue_interval_seconds": 0.2}, "greater than or equal to 0.5"),
    ],
)
def test_settings_that_would_break_the_queue_are_refused(
    values: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValidationError, match=message):
        settings(**values)


def test_settings_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLOWMAESTRO_MAX_CONCURRENT_RUNS", "20")
    monkeypatch.setenv("FLOWMAESTRO_USER_RUN_LIMIT", "2")
    monkeypatch.setenv("FLOWMAESTRO_QUEUE_LIMITS", '{"ai-workflows": 1}')
    loaded = settings()
    assert (loaded.max_concurrent_runs, loaded.user_run_limit) == (20, 2)
    assert loaded.queue_limits == {"ai-workflows": 1}
