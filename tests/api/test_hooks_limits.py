"""Per-hook rate limits: past its window a hook answers 429 with Retry-After, records nothing and
starts nothing; other hooks keep their own count; Redis storage shares the count between API
processes (a real Redis)."""

from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

from flowmaestro_api.main import create_app
from flowmaestro_api.settings import ApiSettings
from tests.api.conftest import deployed_workflow, row_counts
from tests.api.test_hooks_api import HOOKED, deliveries, path, signed
from tests.services import REDIS_URL


def hooks_of(client: TestClient, auth: dict[str, str]) -> dict[str, dict[str, Any]]:
    workflow_id = deployed_workflow(client, auth, HOOKED)
    items = client.get(f"/workflows/{workflow_id}/triggers", headers=auth).json()["items"]
    return {t["id"]: {**t, "workflow_id": workflow_id} for t in items}


@pytest.fixture
def limited(api_settings: ApiSettings) -> Iterator[TestClient]:
    settings = api_settings.model_copy(update={"hook_rate_limit": "3/minute"})
    with TestClient(create_app(settings), raise_server_exceptions=False) as test_client:
        yield test_client


def test_past_the_window_a_hook_is_429_and_nothing_is_recorded(
    limited: TestClient, auth: dict[str, str], database_url: str
) -> None:
    hooks = hooks_of(limited, auth)
    hook, other = hooks["hook"], hooks["gh"]
    before = row_counts(database_url)["executions"]
    answers = [signed(limited, hook, {"order": n}).status_code for n in range(3)]
    assert answers == [202, 202, 202]

    refused = signed(limited, hook, {"order": 4})
    assert refused.status_code == 429, refused.text
    assert refused.json()["code"] == "rate_limited"
    assert "3 per 1 minute" in refused.json()["detail"]
    assert 1 <= int(refused.headers["retry-after"]) <= 60
    # Refused before the body is read: not even an unsigned one gets further.
    unsigned = limited.post(path(hook), content=b"{}", headers={"content-type": "text/plain"})
    assert unsigned.status_code == 429
    assert row_counts(database_url)["executions"] == before + 3
    assert [d["outcome"] for d in deliveries(limited, auth, hook)] == ["accepted"] * 3

    # The other trigger of the same workflow counts on its own.
    assert signed(limited, other, {"x": 1}).status_code == 202


def test_no_limit_when_set_to_none(api_settings: ApiSettings, auth: dict[str, str]) -> None:
    settings = api_settings.model_copy(update={"hook_rate_limit": "none"})
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        hook = hooks_of(client, auth)["hook"]
        answers = {signed(client, hook, {"order": n}).status_code for n in range(25)}
    assert answers == {202}


def test_an_unreadable_limit_is_a_settings_error(database_url: str) -> None:
    with pytest.raises(ValidationError, match="hook_rate_limit"):
        ApiSettings(database_url=database_url, hook_rate_limit="lots per day")


def test_redis_storage_counts_across_api_processes(
    api_settings: ApiSettings, auth: dict[str, str]
) -> None:
    settings = api_settings.model_copy(
        update={"hook_rate_limit": "2/minute", "hook_rate_limit_storage": REDIS_URL}
    )
    with (
        TestClient(create_app(settings), raise_server_exceptions=False) as first,
        TestClient(create_app(settings), raise_server_exceptions=False) as second,
    ):
        hook = hooks_of(first, auth)["hook"]
        assert signed(first, hook, {"order": 1}).status_code == 202
        assert signed(second, hook, {"order": 2}).status_code == 202
        assert signed(first, hook, {"order": 3}).status_code == 429
        assert signed(second, hook, {"order": 4}).status_code == 429
