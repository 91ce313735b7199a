import json
import logging
import os
import socket
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from dagster import DagsterInstance, instance_for_test

from flowmaestro_dagster.engines.results import WorkflowRunResult
from flowmaestro_dagster.store.db import dispose_engines, migrate
from flowmaestro_dagster.testing import EchoServer, FakeLLMServer, run_workflow
from flowmaestro_dagster.testing.recording_client import RecordingDagsterClient
from tests.builders import flow  # noqa: F401 - re-exported: the unit tests import it from here

ROOT = Path(__file__).resolve().parents[1]
CORPUS = Path(os.environ.get("FLOWMAESTRO_CORPUS", ROOT / "tests" / "corpus" / "flowmaestro"))
# Definitions with a back-edge (retry / escalation loops drawn as cycles).
CYCLIC = {
    "advanced-logic/retry-with-exponential-backoff.json",
    "advanced-logic/retry-with-exponential-backoff-2.json",
    "advanced-logic/multi-stage-approval-workflow.json",
    "patterns/basic/quality-reviewer.json",
}

# Started before everything else: a file that mostly waits on the wall clock (a schedule's
# minute-aligned tick) and one long test that starts no stack (a ~1 min fuzz pass).
LONG_FIRST = ("test_schedules_e2e.py", "test_openapi_fuzz.py")

warnings.filterwarnings("ignore", module="dagster")
logging.getLogger("dagster").setLevel(logging.WARNING)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Longest files first: the test command runs whole files on pytest-xdist workers
    (`--dist loadfile --no-loadscope-reorder`) in this order, so the end-to-end files (marked
    slow, each with its own Dagster stack) start at once and the many short unit files fill
    in behind them, instead of a two-minute file starting last and ending the run alone."""
    files: dict[str, list[int]] = {}  # file -> [slow tests, tests]
    for item in items:
        counts = files.setdefault(item.nodeid.split("::", 1)[0], [0, 0])
        counts[0] += item.get_closest_marker("slow") is not None
        counts[1] += 1

    def weight(item: pytest.Item) -> tuple[bool, int, int]:
        path = item.nodeid.split("::", 1)[0]
        slow, total = files[path]
        return (not path.endswith(LONG_FIRST), -slow, -total)

    items.sort(key=weight)


def corpus_files() -> list[Path]:
    return sorted(CORPUS.rglob("*.json"))


def corpus_id(path: Path) -> str:
    return path.relative_to(CORPUS).as_posix()


def load_corpus(relative: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((CORPUS / relative).read_text())
    return data


@pytest.fixture
def run() -> Callable[..., WorkflowRunResult]:
    """Run a definition in process: `run(definition, inputs)`."""

    def _run(definition: Any, inputs: dict[str, Any] | None = None, **kw: Any) -> WorkflowRunResult:
        return run_workflow(definition, inputs or {}, **kw)

    return _run


@pytest.fixture
def llm() -> Iterator[FakeLLMServer]:
    """A fake OpenAI-compatible server (answers and records chat and embeddings requests)."""
    with FakeLLMServer() as server:
        yield server


@pytest.fixture
def echo() -> Iterator[EchoServer]:
    """An HTTP server that answers with what it was sent."""
    with EchoServer() as server:
        yield server


@pytest.fixture
def instance() -> Iterator[DagsterInstance]:
    """A Dagster instance of this test alone (tests/api overrides it with an ephemeral one)."""
    with instance_for_test() as test_instance:
        yield test_instance


@pytest.fixture
def client(instance: DagsterInstance) -> RecordingDagsterClient:
    """The webserver's stand-in on `instance`: records requests, adds the runs a launch makes."""
    return RecordingDagsterClient(instance)


@pytest.fixture
def platform_db(tmp_path: Path) -> Iterator[str]:
    """The URL of a migrated platform database (a SQLite file) of this test alone."""
    url = f"sqlite:///{tmp_path / 'platform.db'}"
    migrate(url)
    yield url
    dispose_engines()


class SmtpInbox:
    """What the `smtp` fixture's server received: recipients and raw message, per message."""

    def __init__(self) -> None:
        self.messages: list[dict[str, Any]] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.messages.append({"to": list(envelope.rcpt_tos), "data": envelope.content.decode()})
        return "250 Message accepted"


@pytest.fixture
def smtp() -> Iterator[tuple[SmtpInbox, int]]:
    """A real SMTP server on 127.0.0.1 (no auth, no TLS): its inbox and port."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    inbox = SmtpInbox()
    controller = Controller(inbox, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield inbox, port
    finally:
        controller.stop()
