import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from dagster import DagsterInstance
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from flowmaestro_api.main import create_app
from flowmaestro_api.security import create_api_key, ensure_user
from flowmaestro_api.settings import ApiSettings
from flowmaestro_dagster.control.client import DagsterClient
from flowmaestro_dagster.store.db import get_engine, session_scope
from flowmaestro_dagster.store.models import Base
from tests.services import database_from, migrated_template

ROOT = Path(__file__).resolve().parents[2]
UNREACHABLE_DAGSTER = "http://127.0.0.1:9/graphql"  # nothing listens: launches are deferred


@pytest.fixture(scope="session", params=["sqlite", "postgres"])
def db_template(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, str]]:
    kind = request.param
    with migrated_template(kind, tmp_path_factory.mktemp(f"tpl-{kind}")) as template:
        yield kind, template


@pytest.fixture
def database_url(db_template: tuple[str, str], tmp_path: Path) -> Iterator[str]:
    kind, template = db_template
    with database_from(kind, template, tmp_path) as url:
        yield url


@pytest.fixture
def api_settings(database_url: str) -> ApiSettings:
    return ApiSettings(
        database_url=database_url,
        dagster_graphql_url=UNREACHABLE_DAGSTER,
        graphql_timeout_seconds=2,
    )


@pytest.fixture
def client(api_settings: ApiSettings) -> Iterator[TestClient]:
    with TestClient(create_app(api_settings), raise_server_exceptions=False) as test_client:
        yield test_client


@pytest.fixture
def instance() -> Iterator[DagsterInstance]:
    """An ephemeral Dagster instance: the test runs its executions' runs in it, in process."""
    with DagsterInstance.ephemeral() as ephemeral:
        yield ephemeral


@pytest.fixture
def api(database_url: str, instance: DagsterInstance) -> Iterator[TestClient]:
    """The API reading Dagster's storage from `instance`; it launches nothing itself."""
    settings = ApiSettings(
        database_url=database_url,
        dagster_graphql_url=UNREACHABLE_DAGSTER,
        graphql_timeout_seconds=1,
        launch_on_submit=False,
    )
    app = create_app(settings, dagster=DagsterClient(UNREACHABLE_DAGSTER, instance=instance))
    with TestClient(app, raise_server_exceptions=False) as test_client:
        yield test_client


def make_key(database_url: str, email: str) -> dict[str, str]:
    with session_scope(get_engine(database_url)) as session:
        user = ensure_user(session, email=email)
        key = create_api_key(session, user=user)
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture
def auth(database_url: str) -> dict[str, str]:
    return make_key(database_url, "ada@example.com")


@pytest.fixture
def other_auth(database_url: str) -> dict[str, str]:
    return make_key(database_url, "grace@example.com")


def row_counts(database_url: str) -> dict[str, int]:
    with session_scope(get_engine(database_url)) as session:
        return {
            table.name: session.scalar(select(func.count()).select_from(table)) or 0
            for table in Base.metadata.sorted_tables
            if table.name not in ("api_keys", "users")
        }


def example(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((ROOT / "workflows" / "examples" / name).read_text())
    return data


GREETER = {
    "name": "Greeter",
    "nodes": [
        {
            "id": "in",
            "type": "input",
            "position": {"x": 0, "y": 0},
            "data": {"label": "Who", "inputName": "who", "required": True},
        },
        {
            "id": "n",
            "type": "input",
            "position": {"x": 0, "y": 100},
            "data": {
                "label": "Times",
                "inputName": "times",
                "inputType": "number",
                "defaultValue": 1,
            },
        },
        {
            "id": "out",
            "type": "output",
            "position": {"x": 200, "y": 0},
            "data": {
                "label": "Greeting",
                "outputName": "greeting",
                "value": "hello {{who}} x{{times}}",
            },
        },
    ],
    "edges": [
        {"id": "e1", "source": "in", "target": "out"},
        {"id": "e2", "source": "n", "target": "out"},
    ],
}


def patch_settings(
    client: TestClient, auth: dict[str, str], workflow_id: str, **settings: Any
) -> dict[str, Any]:
    """PATCH the workflow's settings; the answer's body."""
    response = client.patch(f"/workflows/{workflow_id}", json={"settings": settings}, headers=auth)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def deployed_workflow(
    client: TestClient, auth: dict[str, str], definition: dict[str, Any] | None = None
) -> str:
    response = client.post("/workflows", json={"definition": definition or GREETER}, headers=auth)
    assert response.status_code == 201, response.text
    workflow_id: str = response.json()["id"]
    deploy = client.post(f"/workflows/{workflow_id}/versions/1/deploy", headers=auth)
    assert deploy.status_code == 200, deploy.text
    return workflow_id
