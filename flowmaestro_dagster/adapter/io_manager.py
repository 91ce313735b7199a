"""An IO manager that keeps node outputs (execution states, as JSON) in the platform database.

Any process can read them: a run worker on another machine, a re-execution that resumes a
parked run (its inputs come from the parent run's rows), and the API's state inspector.
"""

from collections.abc import Sequence
from typing import Any

from dagster import ConfigurableIOManager, InputContext, OutputContext
from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from flowmaestro_dagster.lang.state import ExecutionState
from flowmaestro_dagster.settings import get_settings
from flowmaestro_dagster.store.db import get_engine, session_scope
from flowmaestro_dagster.store.models import NodeOutput
from flowmaestro_dagster.tags import EXECUTION_TAG


def _identity(identifier: Sequence[str]) -> tuple[str, str, str]:
    """(run_id, step_key, output name incl. mapping key) from Dagster's output identifier."""
    run_id, step_key, *rest = identifier
    return run_id, step_key, "/".join(rest)


class NodeOutputIOManager(ConfigurableIOManager):
    """Stores each step output in the `node_outputs` table of the platform database."""

    database_url: str = ""

    def _url(self) -> str:
        return self.database_url or get_settings().database_url

    def handle_output(self, context: OutputContext, obj: Any) -> None:
        if not isinstance(obj, ExecutionState):
            raise TypeError(f"expected an ExecutionState, got {type(obj).__name__}")
        run_id, step_key, output_name = _identity(context.get_identifier())
        mapping_key = step_key.partition("[")[2].rstrip("]") or context.mapping_key or None
        values = {
            "run_id": run_id,
            "step_key": step_key,
            "output_name": output_name,
            "execution_id": _execution_id(context),
            "node_id": obj.producer,
            "mapping_key": mapping_key,
            "value": obj.to_dict(),
        }
        engine = get_engine(self._url())
        insert = pg_insert if engine.dialect.name == "postgresql" else sqlite_insert
        statement = insert(NodeOutput).values(**values)
        statement = statement.on_conflict_do_update(
            index_elements=["run_id", "step_key", "output_name"],
            set_={"value": statement.excluded.value, "node_id": statement.excluded.node_id},
        )
        with session_scope(engine) as session:
            session.execute(statement)

    def load_input(self, context: InputContext) -> ExecutionState:
        upstream = context.upstream_output
        if upstream is None:
            raise LookupError(f"input {context.name} has no upstream output to load")
        run_id, step_key, output_name = _identity(upstream.get_identifier())
        with session_scope(get_engine(self._url())) as session:
            value = session.scalar(
                select(NodeOutput.value).where(
                    NodeOutput.run_id == run_id,
                    NodeOutput.step_key == step_key,
                    NodeOutput.output_name == output_name,
                )
            )
        if value is None:
            raise LookupError(f"no stored output {step_key}.{output_name} of run {run_id}")
        return ExecutionState.from_dict(value)


def _execution_id(context: OutputContext) -> str | None:
    try:
        tags = context.step_context.dagster_run.tags
    except Exception:  # noqa: BLE001 - contexts built outside a run have no step
        return None
    value = tags.get(EXECUTION_TAG)
    return str(value) if value else None
