"""Executions without a running Dagster: idempotency, inputs, 4xx paths (SQLite and PostgreSQL).

Launches are deferred here (nothing answers the GraphQL URL): the execution is committed and
waits for the reconciler, which tests/api/test_end_to_end.py exercises against a real Dagster.
"""

from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

from fastapi.testclient import TestClient
from sqlalchemy import select, update

from flowmaestro_dagster.control.executions import purge_expired_keys
from flowmaestro_dagster.store.db import get_engine, session_scope
from flowmaestro_dagster.store.models import Execution, IdempotencyKey, utcnow
from tests.api.conftest import deployed_workflow, patch_settings, row_counts


def start(
    client: TestClient, auth: dict[str, str], workflow_id: str, body: dict, key: str | None = None
):  # type: ignore[no-untyped-def]
    headers = {**auth, **({"Idempotency-Key": key} if key else {})}
    return client.post(f"/workflows/{workflow_id}/executions", json=body, headers=headers)


def test_first_request_creates_and_a_repeat_replays(
    client: TestClient, auth: dict[str, str], database_url: str
) -> None:
    workflow_id = deployed_workflow(client, auth)
    first = start(client, auth, workflow_id, {"inputs": {"who": "Ada"}}, key="order-1")
    assert first.status_code == 201
    assert "Idempotent-Replayed" not in first.headers
    assert first.headers["location"] == f"/executions/{first.json()['id']}"
    again = start(client, auth, workflow_id, {"inputs": {"who": "Ada"}}, key="order-1")
    assert again.status_code == 200
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.json()["id"] == first.json()["id"]
    assert row_counts(database_url)["executions"] == 1


def test_same_key_different_payload_is_422_and_writes_nothing(
    client: TestClient, auth: dict[str, str], database_url: str
) -> None:
    workflow_id = deployed_workflow(client, auth)
    start(client, auth, workflow_id, {"inputs": {"who": "Ada"}}, key="k")
    before = row_counts(database_url)
    response = start(client, auth, workflow_id, {"inputs": {"who": "Bob"}}, key="k")
    assert response.status_code == 422
    assert response.json()["code"] == "idempotency_key_reused"
    assert response.headers["content-type"] == "application/problem+json"
    assert row_counts(database_url) == before


def test_keys_are_scoped_to_user_and_workflow(
    client: TestClient, auth: dict[str, str], other_auth: dict[str, str]
) -> None:
    mine = deployed_workflow(client, auth)
    mine_too = deployed_workflow(client, auth)
    theirs = deployed_workflow(client, other_auth)
    a = start(client, auth, mine, {"inputs": {"who": "x"}}, key="shared")
    b = start(client, auth, mine_too, {"inputs": {"who": "x"}}, key="shared")
    c = start(client, other_auth, theirs, {"inputs": {"who": "x"}}, key="shared")
    assert {a.status_code, b.status_code, c.status_code} == {201}
    assert len({a.json()["id"], b.json()["id"], c.json()["id"]}) == 3


def test_without_a_key_every_request_starts_an_execution(
    client: TestClient, auth: dict[str, str], database_url: str
) -> None:
    workflow_id = deployed_workflow(client, auth)
    for _ in range(3):
        assert start(client, auth, workflow_id, {"inputs": {"who": "x"}}).status_code == 201
    assert row_counts(database_url)["executions"] == 3


def test_expired_keys_start_anew_and_are_purged(
    client: TestClient, auth: dict[str, str], database_url: str
) -> None:
    workflow_id = deployed_workflow(client, auth)
    first = start(client, auth, workflow_id, {"inputs": {"who": "x"}}, key="old").json()["id"]
    engine = get_engine(database_url)
    with session_scope(engine) as session:
        session.execute(update(IdempotencyKey).values(expires_at=utcnow() - timedelta(seconds=1)))
    second = start(client, auth, workflow_id, {"inputs": {"who": "y"}}, key="old")
    assert second.status_code == 201 and second.json()["id"] != first
    with session_scope(engine) as session:
        session.execute(update(IdempotencyKey).values(expires_at=utcnow() - timedelta(seconds=1)))
        assert purge_expired_keys(session) == 1
        assert session.scalars(select(IdempotencyKey)).all() == []


def test_key_ttl_follows_the_workflow_setting(
    client: TestClient, auth: dict[str, str], database_url: str
) -> None:
    workflow_id = deployed_workflow(client, auth)
    patch_settings(client, auth, workflow_id, idempotency_ttl_seconds=120)
    start(client, auth, workflow_id, {"inputs": {"who": "x"}}, key="ttl")
    with session_scope(get_engine(database_url)) as session:
        key = session.scalars(select(IdempotencyKey)).one()
        lifetime = key.expires_at - key.created_at
    assert timedelta(seconds=119) < lifetime <= timedelta(seconds=121)


def test_inputs_are_checked_before_anything_starts(
    client: TestClient, auth: dict[str, str], database_url: str
) -> None:
    workflow_id = deployed_workflow(client, auth)
    before = row_counts(database_url)
    missing = start(client, auth, workflow_id, {"inputs": {}}, key="m")
    assert missing.status_code == 422
    body = missing.json()
    assert body["code"] == "invalid_inputs"
    assert body["problems"] == [
        {
            "code": "missing_input",
            "node_id": "in",
            "field": "who",
            "message": "input 'who' is required",
        }
    ]
    wrong_type = start(client, auth, workflow_id, {"inputs": {"who": "x", "times": "many"}})
    assert wrong_type.status_code == 422 and wrong_type.json()["problems"][0]["field"] == "times"
    assert row_counts(database_url) == before


def test_execution_requests_that_cannot_start(
    client: TestClient, auth: dict[str, str], database_url: str
) -> None:
    not_deployed = client.post(
        "/workflows",
        json={
            "definition": {
                "name": "x",
                "nodes": [{"id": "a", "type": "input", "data": {"inputName": "q"}}],
                "edges": [],
            }
        },
        headers=auth,
    ).json()["id"]
    before = row_counts(database_url)
    responses = {
        "not deployed": start(client, auth, not_deployed, {"inputs": {}}),
        "unknown workflow": start(client, auth, "does-not-exist", {"inputs": {}}),
        "bad priority": start(client, auth, not_deployed, {"inputs": {}, "priority": "asap"}),
        "long key": start(client, auth, not_deployed, {"inputs": {}}, key="k" * 300),
        "bad queue": start(
            client, auth, not_deployed, {"inputs": {}, "queue": "no spaces allowed"}
        ),
    }
    expected = {
        "not deployed": 409,
        "unknown workflow": 404,
        "bad priority": 422,
        "long key": 400,
        "bad queue": 422,
    }
    for name, response in responses.items():
        assert response.status_code == expected[name], (name, response.text)
        assert response.headers["content-type"] == "application/problem+json", name
    assert row_counts(database_url) == before


def test_priority_and_queue_come_from_request_or_workflow(
    client: TestClient, auth: dict[str, str], database_url: str
) -> None:
    workflow_id = deployed_workflow(client, auth)
    patch_settings(client, auth, workflow_id, priority="high", queue="ai-workflows")
    default = start(client, auth, workflow_id, {"inputs": {"who": "x"}}).json()
    explicit = start(
        client, auth, workflow_id, {"inputs": {"who": "x"}, "priority": "low", "queue": "batch"}
    ).json()
    assert (default["priority"], default["queue"]) == (10, "ai-workflows")
    assert (explicit["priority"], explicit["queue"]) == (-10, "batch")


def test_unlaunched_execution_reads_as_queued_and_records_why(
    client: TestClient, auth: dict[str, str], database_url: str
) -> None:
    workflow_id = deployed_workflow(client, auth)
    execution_id = start(client, auth, workflow_id, {"inputs": {"who": "x"}}).json()["id"]
    client.app.state.launcher.shutdown(wait=True)  # let the deferred launch attempt finish
    with session_scope(get_engine(database_url)) as session:
        row = session.get(Execution, execution_id)
        assert row is not None and row.launched_at is None and row.launch_claimed_at is None
        assert row.error is not None and "launch failed" in row.error
    listed = client.get(f"/executions?workflow_id={workflow_id}&status=queued", headers=auth).json()
    assert [e["id"] for e in listed["items"]] == [execution_id]
    one = client.get(f"/executions/{execution_id}", headers=auth)
    assert one.status_code == 200 and one.json()["status"] == "queued" and one.json()["runs"] == []


def test_executions_are_private(
    client: TestClient, auth: dict[str, str], other_auth: dict[str, str]
) -> None:
    workflow_id = deployed_workflow(client, auth)
    execution_id = start(client, auth, workflow_id, {"inputs": {"who": "x"}}).json()["id"]
    for path in (f"/executions/{execution_id}", f"/executions/{execution_id}/events"):
        assert client.get(path, headers=other_auth).status_code == 404
    assert client.post(f"/executions/{execution_id}/cancel", headers=other_auth).status_code == 404


def replays_of(database_url: str, execution_id: str) -> tuple[int, object]:
    with session_scope(get_engine(database_url)) as session:
        execution = session.get(Execution, execution_id)
        assert execution is not None
        return execution.replays, execution.last_replayed_at


def test_a_replay_says_so_in_header_and_body_and_is_counted(
    client: TestClient, auth: dict[str, str], database_url: str
) -> None:
    workflow_id = deployed_workflow(client, auth)
    first = start(client, auth, workflow_id, {"inputs": {"who": "Ada"}}, key="dup")
    assert first.status_code == 201 and first.json()["idempotent_replayed"] is False
    assert replays_of(database_url, first.json()["id"]) == (0, None)
    again = start(client, auth, workflow_id, {"inputs": {"who": "Ada"}}, key="dup")
    assert again.status_code == 200
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.json()["idempotent_replayed"] is True
    assert again.json()["id"] == first.json()["id"]
    replays, last = replays_of(database_url, first.json()["id"])
    assert replays == 1 and last is not None
    # Only the answer to the replay says so; reading the execution does not.
    read = client.get(f"/executions/{first.json()['id']}", headers=auth)
    assert read.json()["idempotent_replayed"] is False
    # A different body under the key is still refused, and is no duplicate prevented.
    refused = start(client, auth, workflow_id, {"inputs": {"who": "Bob"}}, key="dup")
    assert refused.status_code == 422
    assert replays_of(database_url, first.json()["id"])[0] == 1


def test_concurrent_repeats_start_one_execution_and_count_every_replay(
    client: TestClient, auth: dict[str, str], database_url: str
) -> None:
    workflow_id = deployed_workflow(client, auth)
    body = {"inputs": {"who": "Ada"}}
    with ThreadPoolExecutor(max_workers=8) as pool:
        answers = list(
            pool.map(lambda _: start(client, auth, workflow_id, body, key="race"), range(8))
        )
    assert sorted(a.status_code for a in answers) == [200] * 7 + [201]
    assert len({a.json()["id"] for a in answers}) == 1
    assert sum(a.json()["idempotent_replayed"] for a in answers) == 7
    assert replays_of(database_url, answers[0].json()["id"])[0] == 7
    with ThreadPoolExecutor(max_workers=8) as pool:
        again = list(
            pool.map(lambda _: start(client, auth, workflow_id, body, key="race"), range(8))
        )
    assert {a.status_code for a in again} == {200}
    assert replays_of(database_url, answers[0].json()["id"])[0] == 15
    assert row_counts(database_url)["executions"] == 1


def test_analytics_count_duplicates_prevented_of_executions_created_in_the_range(
    api: TestClient, auth: dict[str, str], database_url: str
) -> None:
    workflow_id = deployed_workflow(api, auth)
    url = f"/workflows/{workflow_id}/analytics"
    assert api.get(url, headers=auth).json()["duplicates_prevented"] == 0
    fresh = start(api, auth, workflow_id, {"inputs": {"who": "Ada"}}, key="a").json()["id"]
    old = start(api, auth, workflow_id, {"inputs": {"who": "Bob"}}, key="b").json()["id"]
    for _ in range(2):
        assert start(api, auth, workflow_id, {"inputs": {"who": "Ada"}}, key="a").status_code == 200
    assert start(api, auth, workflow_id, {"inputs": {"who": "Bob"}}, key="b").status_code == 200
    with session_scope(get_engine(database_url)) as session:  # created ten days ago: left out
        session.execute(
            update(Execution)
            .where(Execution.id == old)
            .values(created_at=utcnow() - timedelta(days=10))
        )
    week = api.get(url, headers=auth)
    assert week.status_code == 200, week.text
    assert week.json()["duplicates_prevented"] == 2 and week.json()["executions"] == 1
    month = api.get(
        url,
        params={"from": (utcnow() - timedelta(days=30)).isoformat()},
        headers=auth,
    ).json()
    assert month["duplicates_prevented"] == 3
    # Counted on the execution: the key's expiry and purge do not take the count with it.
    with session_scope(get_engine(database_url)) as session:
        session.execute(update(IdempotencyKey).values(expires_at=utcnow() - timedelta(seconds=1)))
        assert purge_expired_keys(session) == 2
    assert api.get(url, headers=auth).json()["duplicates_prevented"] == 2
    assert replays_of(database_url, fresh)[0] == 2
