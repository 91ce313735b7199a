"""Workflows and versions through the API (real SQLite and PostgreSQL)."""

import copy

from fastapi.testclient import TestClient

from tests.api.conftest import GREETER, example, row_counts


def test_create_list_get_workflow_in_either_shape(client: TestClient, auth: dict[str, str]) -> None:
    react = client.post("/workflows", json={"definition": GREETER}, headers=auth)
    backend = client.post(
        "/workflows",
        json={"definition": example("order-review.json"), "name": "Orders"},
        headers=auth,
    )
    assert react.status_code == backend.status_code == 201
    assert react.json()["latest_version"] == 1 and react.json()["deployed_version"] is None
    assert backend.json()["name"] == "Orders"
    listed = client.get("/workflows", headers=auth).json()
    assert listed["total"] == 2
    one = client.get(f"/workflows/{react.json()['id']}", headers=auth)
    assert one.status_code == 200 and one.json()["name"] == "Greeter"


def test_invalid_definition_is_422_problem_json_and_nothing_is_stored(
    client: TestClient, auth: dict[str, str], database_url: str
) -> None:
    before = row_counts(database_url)
    bad = copy.deepcopy(GREETER)
    bad["nodes"].append({"id": "x", "type": "teleport", "data": {}})
    bad["edges"].append({"id": "e9", "source": "out", "target": "ghost"})
    response = client.post("/workflows", json={"definition": bad}, headers=auth)
    assert response.status_code == 422
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert body["status"] == 422 and body["code"] == "invalid_workflow"
    codes = {(p["code"], p.get("node_id")) for p in body["problems"]}
    assert ("unknown_node_type", "x") in codes and ("edge_missing_node", None) in codes
    assert row_counts(database_url) == before


def test_each_change_makes_a_new_draft_version(client: TestClient, auth: dict[str, str]) -> None:
    workflow_id = client.post("/workflows", json={"definition": GREETER}, headers=auth).json()["id"]
    changed = copy.deepcopy(GREETER)
    changed["nodes"][2]["data"]["value"] = "hi {{who}}"
    changed["nodes"][2]["position"] = {"x": 999, "y": 999}
    updated = client.patch(f"/workflows/{workflow_id}", json={"definition": changed}, headers=auth)
    assert updated.status_code == 200 and updated.json()["latest_version"] == 2
    same = client.patch(f"/workflows/{workflow_id}", json={"definition": changed}, headers=auth)
    assert same.json()["latest_version"] == 2  # no change, no new version
    renamed = client.patch(f"/workflows/{workflow_id}", json={"name": "Hello"}, headers=auth)
    assert renamed.json()["name"] == "Hello" and renamed.json()["latest_version"] == 2
    versions = client.get(f"/workflows/{workflow_id}/versions", headers=auth).json()["items"]
    assert [v["version"] for v in versions] == [2, 1]
    assert all(v["status"] == "draft" for v in versions)


def test_diff_ignores_positions_and_names_what_changed(
    client: TestClient, auth: dict[str, str]
) -> None:
    workflow_id = client.post("/workflows", json={"definition": GREETER}, headers=auth).json()["id"]
    changed = copy.deepcopy(GREETER)
    changed["nodes"][2]["data"]["value"] = "hi {{who}}"
    for node in changed["nodes"]:
        node["position"] = {"x": 5, "y": 5}
    changed["nodes"].append(
        {
            "id": "extra",
            "type": "output",
            "position": {"x": 1, "y": 1},
            "data": {"outputName": "echo", "value": "{{who}}"},
        }
    )
    changed["edges"].append({"id": "e3", "source": "in", "target": "extra"})
    changed["nodes"] = [n for n in changed["nodes"] if n["id"] != "n"]
    changed["edges"] = [e for e in changed["edges"] if e["source"] != "n"]
    client.patch(f"/workflows/{workflow_id}", json={"definition": changed}, headers=auth)
    diff = client.get(f"/workflows/{workflow_id}/diff?from=1&to=2", headers=auth).json()
    assert diff["nodes"]["added"] == ["extra"]
    assert diff["nodes"]["removed"] == ["n"]
    assert diff["nodes"]["changed"] == [
        {
            "id": "out",
            "changes": {"config.value": {"from": "hello {{who}} x{{times}}", "to": "hi {{who}}"}},
        }
    ]
    assert diff["edges"]["added"] == [{"source": "in", "target": "extra", "sourceHandle": None}]
    assert diff["edges"]["removed"] == [{"source": "n", "target": "out", "sourceHandle": None}]


def test_revert_archive_and_deploy_rules(client: TestClient, auth: dict[str, str]) -> None:
    workflow_id = client.post("/workflows", json={"definition": GREETER}, headers=auth).json()["id"]
    changed = copy.deepcopy(GREETER)
    changed["name"] = "Greeter 2"
    changed["nodes"][2]["data"]["value"] = "v2"
    client.patch(f"/workflows/{workflow_id}", json={"definition": changed}, headers=auth)
    reverted = client.post(f"/workflows/{workflow_id}/versions/1/revert", headers=auth)
    assert reverted.status_code == 201
    assert reverted.json()["version"] == 3 and reverted.json()["source_version"] == 1
    assert reverted.json()["definition"] == GREETER
    deploy = client.post(f"/workflows/{workflow_id}/versions/3/deploy", headers=auth)
    assert deploy.status_code == 200
    assert deploy.json()["runnable"] is False  # no Dagster here: recorded, picked up later
    assert client.get(f"/workflows/{workflow_id}", headers=auth).json()["deployed_version"] == 3
    conflict = client.post(f"/workflows/{workflow_id}/versions/3/archive", headers=auth)
    assert conflict.status_code == 409 and conflict.json()["code"] == "conflict"
    archived = client.post(f"/workflows/{workflow_id}/versions/2/archive", headers=auth)
    assert archived.json()["status"] == "archived"
    assert (
        client.post(f"/workflows/{workflow_id}/versions/2/deploy", headers=auth).status_code == 409
    )


def test_workflows_are_private_to_their_owner(
    client: TestClient, auth: dict[str, str], other_auth: dict[str, str]
) -> None:
    workflow_id = client.post("/workflows", json={"definition": GREETER}, headers=auth).json()["id"]
    response = client.get(f"/workflows/{workflow_id}", headers=other_auth)
    assert response.status_code == 404 and response.json()["code"] == "not_found"
    assert client.get("/workflows", headers=other_auth).json()["total"] == 0


def test_missing_or_bad_api_key_is_401(client: TestClient) -> None:
    for headers in ({}, {"Authorization": "Bearer nope"}, {"X-API-Key": "fm_000000000000_wrong"}):
        response = client.get("/workflows", headers=headers)
        assert response.status_code == 401
        assert response.headers["content-type"] == "application/problem+json"


def test_request_body_errors_are_problem_json(
    client: TestClient, auth: dict[str, str], database_url: str
) -> None:
    before = row_counts(database_url)
    cases = [
        client.post(
            "/workflows", content=b"{not json", headers={**auth, "content-type": "application/json"}
        ),
        client.post("/workflows", json={"definition": "nope"}, headers=auth),
        client.post(
            "/workflows",
            json={"definition": GREETER, "settings": {"priority": "urgent!"}},
            headers=auth,
        ),
        client.post("/workflows", json={"definition": GREETER, "bogus": 1}, headers=auth),
        client.post(
            "/workflows",
            content=b"x" * (3 * 1024 * 1024),
            headers={**auth, "content-type": "application/json"},
        ),
    ]
    for response in cases:
        assert response.status_code in (413, 422), response.text
        assert response.headers["content-type"] == "application/problem+json"
        assert response.json()["status"] == response.status_code
    assert row_counts(database_url) == before


def test_openapi_document_lists_every_route(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    for path in (
        "/workflows",
        "/workflows/{workflow_id}/versions/{version}/deploy",
        "/workflows/{workflow_id}/executions",
        "/executions/{execution_id}",
        "/executions/{execution_id}/events",
        "/workflows/{workflow_id}/diff",
    ):
        assert path in paths
