"""The checkpoint node: its JSON in both shapes, validation, the executor with an in-memory
store, and the purge of expired checkpoints (a fake clock on a real SQLite database)."""

from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from flowmaestro_dagster.compile.validation import validate
from flowmaestro_dagster.control.checkpoints import list_checkpoints, purge_expired_checkpoints
from flowmaestro_dagster.engines.results import WorkflowRunResult
from flowmaestro_dagster.errors import ConnectorNotConfiguredError
from flowmaestro_dagster.lang.state import ExecutionState
from flowmaestro_dagster.nodes import NodeContext, get_executor
from flowmaestro_dagster.nodes.waitpoints import WaitpointRecord
from flowmaestro_dagster.spec.configs import CheckpointConfig, normalise_config
from flowmaestro_dagster.spec.parse import parse_workflow
from flowmaestro_dagster.store.checkpoints import DatabaseCheckpointStore
from flowmaestro_dagster.store.db import get_engine, migrate, session_scope
from flowmaestro_dagster.store.models import Checkpoint, Execution, User, Workflow
from tests.builders import chain, node


def test_react_flow_and_backend_shapes_give_the_same_config() -> None:
    react = chain(
        node("in", "input", inputName="x"),
        node("cp", "checkpoint", label="After input", checkpointName="after-input", expiresIn="24h", pauseHere=True),
        react=True,
    )  # fmt: skip
    backend = {
        "name": "t",
        "nodes": {
            "in": {"type": "input", "config": {"inputName": "x"}},
            "cp": {
                "type": "checkpoint",
                "config": {"name": "after-input", "expiresIn": "24h", "pauseHere": True},
            },
        },
        "edges": [{"id": "e", "source": "in", "target": "cp"}],
    }
    for definition in (react, backend):
        spec, problems = parse_workflow(definition)
        assert spec is not None and not [p for p in problems if p.severity == "error"]
        config = spec.nodes["cp"].config
        assert isinstance(config, CheckpointConfig)
        assert (config.name, config.expires_in, config.pause_here) == ("after-input", "24h", True)
        assert config.expiry_seconds == 86_400


def test_checkpoint_defaults_to_seven_days_without_pause() -> None:
    config, problems = normalise_config("checkpoint", {}, node_id="cp")
    assert problems == [] and isinstance(config, CheckpointConfig)
    assert config.expires_in == "7d" and config.expiry_seconds == 7 * 86_400
    assert config.pause_here is False


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        ({"expiresIn": "2w"}, "expiresIn"),
        ({"expiresIn": "0h"}, "expiresIn"),
        ({"ttl": "365d"}, "ttl"),
        ({"expiresIn": 7}, "expiresIn"),
        ({"pauseHere": "perhaps"}, "pauseHere"),
    ],
)
def test_invalid_settings_are_errors_naming_node_and_field(raw: dict[str, Any], field: str) -> None:
    definition = chain(
        node("in", "input", inputName="x"),
        node("cp", "checkpoint", **raw),
        react=True,
    )
    errors = [p for p in validate(definition) if p.severity == "error"]
    assert len(errors) == 1, errors
    assert errors[0].node_id == "cp" and errors[0].field == field
    assert errors[0].message.startswith(f"{field}: ")


class MemoryStores:
    """In-memory checkpoint and waitpoint stores (what the platform database provides)."""

    def __init__(self) -> None:
        self.saved: list[dict[str, Any]] = []
        self.waitpoints: dict[str, WaitpointRecord] = {}

    def save(self, **row: Any) -> None:
        self.saved.append(row)

    def park(self, *, node_id: str, kind: str, **_: Any) -> WaitpointRecord:
        return self.waitpoints.setdefault(node_id, WaitpointRecord("wp-1", kind, "pending"))

    def sleep_threshold_seconds(self) -> float:
        return 1.0


def _context(raw: Mapping[str, Any], stores: MemoryStores | None) -> NodeContext:
    config, _ = normalise_config("checkpoint", dict(raw), node_id="cp")
    state = ExecutionState.start({"x": 1}).with_output("prep", 1, {"prepared": "p"})
    services = {"checkpoints": stores, "waitpoints": stores} if stores else {}
    return NodeContext(
        node_id="cp",
        node_type="checkpoint",
        label="cp",
        config=config,
        state=state,
        services=services,
        run_id="run-1",
        execution_id="exec-1",
        step_key="cp",
    )


def test_executor_saves_the_state_and_parks_when_pause_here() -> None:
    stores = MemoryStores()
    result = get_executor("checkpoint")(_context({"expiresIn": "1h"}, stores))
    assert result.parked is None and result.output["saved"] is True
    assert stores.saved[0]["state"]["outputs"] == {"prep": {"prepared": "p"}}
    assert stores.saved[0]["state"]["inputs"] == {"x": 1}
    parked = get_executor("checkpoint")(_context({"pauseHere": True}, stores))
    assert parked.parked is not None and parked.parked.kind == "manual"
    stores.waitpoints["cp"] = WaitpointRecord(
        "wp-1", "manual", "resolved", {"decision": "resume", "by": "a@example.com"}
    )
    resumed = get_executor("checkpoint")(_context({"pauseHere": True}, stores))
    assert resumed.parked is None and resumed.output["resumedBy"] == "a@example.com"


def test_a_pause_nobody_resumed_before_expiry_fails_the_node() -> None:
    stores = MemoryStores()
    stores.waitpoints["cp"] = WaitpointRecord(
        "wp-1", "manual", "resolved", {"decision": "expire_fail"}
    )
    with pytest.raises(Exception, match="expired before anyone resumed"):
        get_executor("checkpoint")(_context({"pauseHere": True}, stores))


def test_outside_the_platform_a_checkpoint_passes_through_and_a_pause_needs_the_platform(
    run: Callable[..., WorkflowRunResult],
) -> None:
    definition = chain(
        node("in", "input", inputName="x"),
        node("cp", "checkpoint"),
        node("out", "output", outputName="y", value="{{x}}"),
        react=True,
    )
    result = run(definition, {"x": "kept"})
    assert result.status == "succeeded" and result.outputs == {"y": "kept"}
    assert result.nodes["cp"].output["saved"] is False
    with pytest.raises(ConnectorNotConfiguredError):
        get_executor("checkpoint")(_context({"pauseHere": True}, None))


@pytest.fixture
def database(tmp_path: Path) -> Iterator[str]:
    url = f"sqlite:///{tmp_path / 'api.db'}"
    migrate(url)
    with session_scope(get_engine(url)) as session:
        user = User(id="u1", email="u1@example.com")
        workflow = Workflow(id="w1", owner_id="u1", name="w")
        session.add_all([user, workflow])
        session.flush()
        session.add(
            Execution(
                id="e1", workflow_id="w1", version=1, user_id="u1", job_name="j", location_name="l"
            )
        )
    yield url


def test_expired_checkpoints_are_purged_at_their_time(database: str) -> None:
    store = DatabaseCheckpointStore(database)
    start = datetime(2030, 1, 1, tzinfo=UTC)
    for node_id, hours in (("short", 1), ("day", 24), ("week", 7 * 24)):
        store.save(
            execution_id="e1",
            node_id=node_id,
            iteration="",
            name=node_id,
            run_id="r1",
            step_key=node_id,
            state={"outputs": {}},
            expires_at=start + timedelta(hours=hours),
            pause_here=False,
        )
    store.save(  # running the node again replaces its checkpoint
        execution_id="e1",
        node_id="day",
        iteration="",
        name="day",
        run_id="r2",
        step_key="day",
        state={"outputs": {"a": 1}},
        expires_at=start + timedelta(hours=24),
        pause_here=False,
    )
    with session_scope(get_engine(database)) as session:
        execution = session.get(Execution, "e1")
        assert execution is not None
        assert len(list_checkpoints(session, execution=execution, now=start)) == 3
        assert purge_expired_checkpoints(session, now=start + timedelta(minutes=59)) == 0
        assert purge_expired_checkpoints(session, now=start + timedelta(hours=2)) == 1
        assert purge_expired_checkpoints(session, now=start + timedelta(days=2)) == 1
        rows = session.query(Checkpoint).all()
        assert [r.node_id for r in rows] == ["week"]
        assert purge_expired_checkpoints(session, now=start + timedelta(days=8)) == 1
        day_rows = list_checkpoints(session, execution=execution, now=start)
        assert day_rows == []
