"""What a launched run prints to its worker's terminal is the operator's choice."""

from collections.abc import Iterator

import pytest

from flowmaestro_dagster.control.executions import launch_config
from flowmaestro_dagster.settings import get_settings


@pytest.fixture(autouse=True)
def _fresh_settings() -> Iterator[None]:
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()  # the next test reads the environment again


def test_unset_leaves_dagsters_console_logger_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FLOWMAESTRO_RUN_CONSOLE_LOG_LEVEL", raising=False)
    config = launch_config({"who": "Ada"})
    assert "loggers" not in config
    assert config["resources"]["workflow_inputs"]["config"]["inputs"] == {"who": "Ada"}


def test_a_level_sets_the_run_workers_console_logger(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLOWMAESTRO_RUN_CONSOLE_LOG_LEVEL", "warning")
    config = launch_config({})
    assert config["loggers"] == {"console": {"config": {"log_level": "WARNING"}}}
