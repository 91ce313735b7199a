"""What each deployed-workflow code location loads (`loadable_versions`): its shard's deployed
versions and the versions unfinished executions still run on — nothing of other shards."""

from typing import Any

import pytest

from flowmaestro_api.security import ensure_user
from flowmaestro_dagster.control.workflows import (
    create_workflow,
    loadable_versions,
    location_for,
    mark_deployed,
    update_workflow,
)
from flowmaestro_dagster.store.db import get_engine, session_scope
from flowmaestro_dagster.store.models import Execution

SHARDS = 4
DEFINITION: dict[str, Any] = {
    "name": "Shard probe",
    "nodes": {
        "in": {"type": "input", "config": {"inputName": "who"}},
        "out": {"type": "output", "config": {"outputName": "greeting", "value": "hi {{who}}"}},
    },
    "edges": [{"id": "e", "source": "in", "target": "out"}],
}


def loaded(url: str) -> dict[int, set[tuple[str, int]]]:
    with session_scope(get_engine(url)) as session:
        return {
            shard: {
                (row.workflow_id, row.version)
                for row in loadable_versions(session, shard=shard, shards=SHARDS)
            }
            for shard in range(SHARDS)
        }


@pytest.mark.parametrize("status", ["running", "paused", "succeeded"])
def test_each_shard_loads_its_own_deployed_and_still_needed_versions(
    database_url: str, status: str
) -> None:
    with session_scope(get_engine(database_url)) as session:
        user = ensure_user(session, email="shards@example.com")
        ids = []
        for i in range(12):
            workflow, _ = create_workflow(
                session,
                user=user,
                definition={**DEFINITION, "name": f"probe {i}"},
                name=f"probe {i}",
                description=None,
                settings=None,
            )
            mark_deployed(session, user=user, workflow_id=workflow.id, version=1)
            ids.append(workflow.id)
        # The first workflow moves on to version 2 while an execution is still on version 1.
        update_workflow(
            session,
            user=user,
            workflow_id=ids[0],
            definition={**DEFINITION, "name": "v2"},
            name=None,
            description=None,
            settings=None,
        )
        mark_deployed(session, user=user, workflow_id=ids[0], version=2)
        session.add(
            Execution(
                workflow_id=ids[0],
                version=1,
                user_id=user.id,
                status=status,
                job_name="old",
                location_name=location_for(ids[0], SHARDS),
            )
        )
        session.commit()

    found = loaded(database_url)
    expected: dict[int, set[tuple[str, int]]] = {shard: set() for shard in range(SHARDS)}
    for workflow_id in ids:
        shard = int(location_for(workflow_id, SHARDS).rsplit("-", 1)[1])
        expected[shard].add((workflow_id, 2 if workflow_id == ids[0] else 1))
    first = int(location_for(ids[0], SHARDS).rsplit("-", 1)[1])
    if status != "succeeded":  # a finished execution no longer needs version 1
        expected[first].add((ids[0], 1))
    assert found == expected
