"""`CheckpointStore` on the platform database: what the checkpoint executor calls in run workers."""

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from flowmaestro_dagster.store.db import get_engine, session_scope
from flowmaestro_dagster.store.models import Checkpoint, new_id, utcnow


class DatabaseCheckpointStore:
    """`CheckpointStore` on the platform database."""

    def __init__(self, database_url: str) -> None:
        self.database_url = database_url

    def save(
        self,
        *,
        execution_id: str,
        node_id: str,
        iteration: str,
        name: str,
        run_id: str,
        step_key: str,
        state: Mapping[str, Any],
        expires_at: datetime,
        pause_here: bool,
    ) -> None:
        engine = get_engine(self.database_url)
        insert = pg_insert if engine.dialect.name == "postgresql" else sqlite_insert
        now = utcnow()
        values = {
            "execution_id": execution_id,
            "node_id": node_id,
            "iteration": iteration,
            "name": name,
            "run_id": run_id,
            "step_key": step_key,
            "pause_here": pause_here,
            "state": dict(state),
            "saved_at": now,
            "expires_at": expires_at,
        }
        statement = insert(Checkpoint).values(id=new_id(), created_at=now, **values)
        statement = statement.on_conflict_do_update(
            index_elements=["execution_id", "node_id", "iteration"],
            set_={k: statement.excluded[k] for k in values if k not in ("execution_id",)},
        )
        with session_scope(engine) as session:
            session.execute(statement)
