"""`WaitpointStore` on the platform database: what the waitpoint executors call in run workers.

Starting a child workflow's execution is the control plane's (`control.waitpoints`); it is
handed in as `start_child` by the resource that wires this store.
"""

from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from flowmaestro_dagster.errors import NodeConfigurationError
from flowmaestro_dagster.nodes.waitpoints import WaitpointRecord
from flowmaestro_dagster.store.db import get_engine, session_scope
from flowmaestro_dagster.store.models import Waitpoint


def _record(row: Waitpoint) -> WaitpointRecord:
    return WaitpointRecord(
        id=row.id,
        kind=row.kind,
        status=row.status,
        resolution=row.resolution,
        due_at=row.due_at,
        spec=row.spec,
    )


class DatabaseWaitpointStore:
    """`WaitpointStore` on the platform database (what the waitpoint executors call)."""

    def __init__(
        self,
        database_url: str,
        *,
        sleep_threshold_seconds: float,
        start_child: Callable[[str, Mapping[str, Any]], str] | None = None,
    ) -> None:
        self.database_url = database_url
        self._threshold = sleep_threshold_seconds
        self._start_child = start_child

    def sleep_threshold_seconds(self) -> float:
        return self._threshold

    def park(
        self,
        *,
        execution_id: str,
        node_id: str,
        iteration: str,
        step_key: str,
        run_id: str,
        kind: str,
        spec: Mapping[str, Any],
        due_at: datetime | None = None,
        expires_at: datetime | None = None,
        on_expiry: str | None = None,
    ) -> WaitpointRecord:
        engine = get_engine(self.database_url)
        with session_scope(engine) as session:
            row = find_waitpoint(session, execution_id, node_id, iteration)
            if row is not None:
                return _record(row)
        child_id = None
        if kind == "child":
            if self._start_child is None:
                raise NodeConfigurationError("child workflows need the platform (the API)")
            child_id = self._start_child(execution_id, spec)
        try:
            with session_scope(engine) as session:
                row = Waitpoint(
                    execution_id=execution_id,
                    node_id=node_id,
                    iteration=iteration,
                    step_key=step_key,
                    run_id=run_id,
                    kind=kind,
                    status="pending",
                    due_at=due_at,
                    expires_at=expires_at,
                    on_expiry=on_expiry,
                    spec=dict(spec),
                    child_execution_id=child_id,
                )
                session.add(row)
                session.flush()
                return _record(row)
        except IntegrityError:  # the same node parked twice at once (a retried step)
            with session_scope(engine) as session:
                found = find_waitpoint(session, execution_id, node_id, iteration)
                assert found is not None
                return _record(found)

    def find(self, *, execution_id: str, node_id: str, iteration: str) -> WaitpointRecord | None:
        """The waitpoint of this node and iteration key if it parked there, else None: a node
        that parks again and again (videoGeneration's polls, one key each) finds its last one
        without creating it."""
        with session_scope(get_engine(self.database_url)) as session:
            row = find_waitpoint(session, execution_id, node_id, iteration)
            return _record(row) if row is not None else None


def find_waitpoint(
    session: Session, execution_id: str, node_id: str, iteration: str
) -> Waitpoint | None:
    return session.scalar(
        select(Waitpoint).where(
            Waitpoint.execution_id == execution_id,
            Waitpoint.node_id == node_id,
            Waitpoint.iteration == iteration,
        )
    )
