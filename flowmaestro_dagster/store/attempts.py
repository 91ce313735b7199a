"""Node attempts on the platform database: what the op adapter records in run workers and what
`GET /executions/{id}/nodes/{node}` reads."""

from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from flowmaestro_dagster.store.db import get_engine, session_scope
from flowmaestro_dagster.store.models import NodeAttempt, NodeOutput, new_id


class DatabaseAttemptStore:
    """One INSERT per attempt; an attempt recorded again (a step re-run after a lost worker)
    replaces its row."""

    def __init__(self, database_url: str) -> None:
        self.database_url = database_url

    def record(self, values: Mapping[str, Any]) -> None:
        engine = get_engine(self.database_url)
        insert = pg_insert if engine.dialect.name == "postgresql" else sqlite_insert
        statement = insert(NodeAttempt).values(id=new_id(), **values)
        statement = statement.on_conflict_do_update(
            index_elements=["run_id", "step_key", "attempt"],
            set_={k: statement.excluded[k] for k in values if k not in ("run_id", "step_key")},
        )
        with session_scope(engine) as session:
            session.execute(statement)


def node_attempts(session: Session, *, execution_id: str, node_id: str) -> Sequence[NodeAttempt]:
    """A node's attempts in an execution, in the order they ran (one indexed query)."""
    return session.scalars(
        select(NodeAttempt)
        .where(NodeAttempt.execution_id == execution_id, NodeAttempt.node_id == node_id)
        .order_by(NodeAttempt.started_at, NodeAttempt.attempt)
    ).all()


def full_output(
    session: Session, *, execution_id: str, node_id: str, run_id: str, step_key: str
) -> Any:
    """A node's whole output in one run's step, from the state the IO manager stored after it;
    LookupError when it stored none (a failed or parked attempt, a run outside the platform)."""
    states = session.scalars(
        select(NodeOutput.value).where(
            NodeOutput.run_id == run_id,
            NodeOutput.step_key == step_key,
            NodeOutput.execution_id == execution_id,
        )
    ).all()
    for state in states:
        outputs = state.get("outputs") if isinstance(state, dict) else None
        if isinstance(outputs, dict) and node_id in outputs:
            return outputs[node_id]
    raise LookupError(f"no stored output of {node_id} in step {step_key} of run {run_id}")


__all__ = ["DatabaseAttemptStore", "full_output", "node_attempts"]
