"""Schemathesis against the OpenAPI document: no generated request makes the API answer 5xx
(EXAMPLES per operation: a few hundred, as issue 15's fuzz pass asks)."""

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from dagster import DagsterInstance
from fastapi import FastAPI
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings

from flowmaestro_api.main import create_app
from flowmaestro_api.settings import ApiSettings
from flowmaestro_dagster.control.client import DagsterClient
from flowmaestro_dagster.store.db import dispose_engines, migrate
from flowmaestro_dagster.testing.stack import INSTANCE_YAML
from tests.api.conftest import GREETER, UNREACHABLE_DAGSTER, make_key

EXAMPLES = 200


@pytest.fixture(scope="module")
def fuzz_target(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[FastAPI, dict[str, str]]]:
    workdir: Path = tmp_path_factory.mktemp("fuzz")
    url = f"sqlite:///{workdir / 'api.db'}"
    migrate(url)
    home = workdir / "dagster"  # a real (idle) Dagster instance: reads work, launches defer
    home.mkdir()
    (home / "dagster.yaml").write_text(INSTANCE_YAML)
    patch = pytest.MonkeyPatch()
    patch.setenv("DAGSTER_HOME", str(home))
    instance = DagsterInstance.from_config(str(home))
    app = create_app(
        ApiSettings(
            database_url=url, dagster_graphql_url=UNREACHABLE_DAGSTER, graphql_timeout_seconds=1
        ),
        dagster=DagsterClient(UNREACHABLE_DAGSTER, timeout=1, instance=instance),
    )
    auth = make_key(url, "fuzz@example.com")
    with TestClient(app) as client:  # a real workflow, so that some requests find something
        client.post("/workflows", json={"definition": GREETER}, headers=auth)
    yield app, auth
    app.state.launcher.shutdown(wait=True)
    dispose_engines()
    instance.dispose()
    patch.undo()


def operations(app: FastAPI) -> list[Any]:
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    return [result.ok() for result in schema.get_all_operations()]


def test_no_generated_request_makes_the_api_answer_5xx(
    fuzz_target: tuple[FastAPI, dict[str, str]],
) -> None:
    app, auth = fuzz_target
    failures: list[str] = []
    checked = 0
    for operation in operations(app):
        if operation.path.endswith("/events"):
            continue  # a stream; the end-to-end tests read it

        @given(case=operation.as_strategy())
        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            database=None,
        )
        def exercise(case: Any) -> None:
            nonlocal checked
            response = case.call(headers=auth)
            checked += 1
            if response.status_code >= 500:
                failures.append(
                    f"{case.method} {case.formatted_path} -> {response.status_code}: {response.text[:200]}"
                )

        exercise()
    assert checked > 10 * EXAMPLES  # every operation ran (most to EXAMPLES)
    assert failures == []
