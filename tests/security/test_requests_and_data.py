"""Request bodies and the data nodes reach (issue 15, rows 2, 8, 9 and 13).

* Row 2: the body limit holds while a body streams (chunked, no Content-Length), before anything
  buffers it; JSON nested deeper than the API reads is refused.
* Row 8: a SQLite database node cannot ATTACH another file (the platform database), run PRAGMAs
  or load extensions; a read-only connection refuses writes on SQLite and PostgreSQL.
* Row 9: NaN/Infinity never reach an execution's inputs; an execution whose launch keeps failing
  is failed after FLOWMAESTRO_LAUNCH_MAX_ATTEMPTS and never starves the others.
* Row 13: malformed JSON and a body that is not sent as JSON get messages a caller can act on.

API tests run on SQLite and on the local PostgreSQL (a missing server skips those locally and
fails them under CI=true); the reconciler's on a SQLite platform database with the recording
Dagster client.
"""

import asyncio
import json
import math
import os
import re
import tracemalloc
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from dagster import DagsterInstance, SkipReason, build_sensor_context
from fastapi import FastAPI
from fastapi.testclient import TestClient
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from flowmaestro_api.main import create_app
from flowmaestro_api.request_guard import MAX_JSON_DEPTH
from flowmaestro_api.settings import ApiSettings
from flowmaestro_dagster.control.executions import pending_launches, refresh, start_execution
from flowmaestro_dagster.control.requests import ExecutionCreate
from flowmaestro_dagster.errors import NodeConfigurationError, NodeExecutionError
from flowmaestro_dagster.lang.state import ExecutionState
from flowmaestro_dagster.nodes.base import NodeContext
from flowmaestro_dagster.nodes.database import execute_database
from flowmaestro_dagster.orchestration.sensors import make_launch_reconciler_sensor
from flowmaestro_dagster.settings import Settings
from flowmaestro_dagster.spec.configs import DatabaseConfig
from flowmaestro_dagster.store.db import get_engine, session_scope
from flowmaestro_dagster.store.models import ApiKey, Execution, utcnow
from flowmaestro_dagster.tags import EXECUTION_TAG
from flowmaestro_dagster.testing.recording_client import RecordingDagsterClient
from tests.api.conftest import UNREACHABLE_DAGSTER, deployed_workflow, make_key, row_counts
from tests.api.e2e import serving
from tests.builders import chain, node
from tests.deploy import deploy, fresh_user
from tests.services import database_from, migrated_template, require_postgres

PG_URL = os.environ.get(
    "FLOWMAESTRO_TEST_PG_URL", "postgresql+psycopg2://postgres@127.0.0.1:5432/test"
)
LIMIT = 1024 * 1024
CHUNK = 64 * 1024


# -- fixtures ------------------------------------------------------------------------------------


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def template(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, str]]:
    kind = request.param
    with migrated_template(kind, tmp_path_factory.mktemp(f"tpl-{kind}")) as made:
        yield kind, made


@pytest.fixture
def platform_url(template: tuple[str, str], tmp_path: Path) -> Iterator[str]:
    """A migrated platform database of this test: SQLite, then PostgreSQL."""
    kind, made = template
    with database_from(kind, made, tmp_path) as url:
        yield url


def settings_for(url: str, **overrides: Any) -> ApiSettings:
    return ApiSettings(
        database_url=url,
        dagster_graphql_url=UNREACHABLE_DAGSTER,
        graphql_timeout_seconds=1,
        launch_on_submit=False,
        **overrides,
    )


@pytest.fixture
def api(platform_url: str) -> Iterator[TestClient]:
    with TestClient(create_app(settings_for(platform_url)), raise_server_exceptions=False) as c:
        yield c


@pytest.fixture
def key(platform_url: str) -> dict[str, str]:
    return make_key(platform_url, "ada@example.com")


@pytest.fixture
def small_app(platform_db: str) -> tuple[FastAPI, list[dict[str, Any]]]:
    """The app with a 1 MiB body limit and a JSON probe route that records every call."""
    app = create_app(settings_for(platform_db, max_request_bytes=LIMIT))
    calls: list[dict[str, Any]] = []

    def probe(body: dict[str, Any]) -> dict[str, int]:
        calls.append(body)
        return {"keys": len(body)}

    app.add_api_route("/probe", probe, methods=["POST"])
    return app, calls


# -- row 2: the body limit while a body streams --------------------------------------------------


def zeros(total: int, chunk: int = CHUNK) -> Iterator[bytes]:
    for _ in range(total // chunk):
        yield bytes(chunk)


def drive(app: ASGIApp, path: str, headers: dict[str, str], chunks: Iterator[bytes]) -> Any:
    """One request straight into the ASGI app, its body pulled chunk by chunk (what a server
    does with `Transfer-Encoding: chunked`): (status, JSON body, bytes the app pulled)."""
    pulled = 0
    ended = False
    sent: list[Message] = []

    async def receive() -> Message:
        nonlocal pulled, ended
        chunk = None if ended else next(chunks, None)
        if chunk is None:
            if ended:
                return {"type": "http.disconnect"}
            ended = True
            return {"type": "http.request", "body": b"", "more_body": False}
        pulled += len(chunk)
        return {"type": "http.request", "body": chunk, "more_body": True}

    async def send(message: Message) -> None:
        sent.append(message)

    scope: Scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.4"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
        "state": {},
    }
    asyncio.run(app(scope, receive, send))  # type: ignore[arg-type]
    start = next(m for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return start["status"], json.loads(body), pulled


@pytest.mark.parametrize("content_type", ["application/json", "application/octet-stream", None])
def test_a_chunked_body_over_the_limit_is_413_before_the_app_buffers_it(
    small_app: tuple[FastAPI, list[dict[str, Any]]], content_type: str | None
) -> None:
    app, calls = small_app
    headers = {"content-type": content_type} if content_type else {}
    assert drive(app, "/probe", {"content-type": "application/json"}, iter([b'{"a": 1}']))[0] == 200
    calls.clear()  # the app is built and warm: what follows is the request alone

    tracemalloc.start()
    try:
        status, problem, pulled = drive(app, "/probe", headers, zeros(32 * LIMIT))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert status == 413
    assert problem["code"] == "payload_too_large"
    assert problem["detail"] == f"the request body is larger than {LIMIT} bytes"
    assert pulled <= LIMIT + CHUNK  # the rest of the 32 MiB was never read
    assert peak < 4 * LIMIT
    assert calls == []


def test_a_route_that_answers_before_reading_reads_nothing(
    small_app: tuple[FastAPI, list[dict[str, Any]]],
) -> None:
    """The guard reads a body when the app asks for it: a webhook refused by its rate limit
    (before its body) costs no read, however large or malformed the body."""
    app, _ = small_app

    def early() -> dict[str, str]:
        return {"status": "not read"}

    app.add_api_route("/early", early, methods=["POST"])
    headers = {"content-type": "application/json"}
    assert drive(app, "/early", headers, zeros(32 * LIMIT)) == (200, {"status": "not read"}, 0)


def test_a_declared_length_over_the_limit_is_refused_unread(
    small_app: tuple[FastAPI, list[dict[str, Any]]],
) -> None:
    app, calls = small_app
    headers = {"content-type": "application/json", "content-length": str(LIMIT + 1)}
    status, problem, pulled = drive(app, "/probe", headers, zeros(2 * LIMIT))
    assert (status, problem["code"], pulled, calls) == (413, "payload_too_large", 0, [])


class Counting:
    """Outermost ASGI layer: what the app pulled from the server, and the request headers."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.pulled = 0
        self.headers: dict[bytes, bytes] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            self.headers = dict(scope["headers"])

        async def counted() -> Message:
            message = await receive()
            self.pulled += len(message.get("body", b""))
            return message

        await self.app(scope, counted, send)


def test_a_chunked_upload_through_uvicorn_is_413_and_read_only_up_to_the_limit(
    small_app: tuple[FastAPI, list[dict[str, Any]]],
) -> None:
    app, calls = small_app
    counting = Counting(app)
    with serving(counting) as base:
        response = httpx.post(  # a generator body: httpx sends it chunked
            f"{base}/probe",
            content=zeros(4 * LIMIT, chunk=16 * 1024),
            headers={"content-type": "application/json"},
            timeout=30,
        )
        fine = httpx.post(
            f"{base}/probe",
            content=iter([b'{"a": ', b"1}"]),
            headers={"content-type": "application/json"},
            timeout=30,
        )
    assert counting.headers.get(b"transfer-encoding") == b"chunked"
    assert b"content-length" not in counting.headers
    assert response.status_code == 413
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["code"] == "payload_too_large"
    # A chunked body under the limit still arrives whole.
    assert (fine.status_code, fine.json()) == (200, {"keys": 1})
    assert calls == [{"a": 1}]


# -- row 2: nesting depth ------------------------------------------------------------------------


def nested(depth: int) -> Any:
    value: Any = "deep"
    for _ in range(depth - 1):
        value = {"x": [value]} if isinstance(value, str) else [value]
    return value


def test_json_nested_deeper_than_the_limit_is_422_naming_it(
    api: TestClient, key: dict[str, str], platform_url: str
) -> None:
    before = row_counts(platform_url)
    json_headers = {**key, "content-type": "application/json"}
    at_limit = {"definition": {"name": "x", "nodes": [], "meta": nested(MAX_JSON_DEPTH - 2)}}
    # The depth check passes a body at the limit on to the route (which refuses it for
    # other reasons: an empty workflow).
    assert api.post("/workflows", json=at_limit, headers=key).json()["code"] != "json_too_deep"
    for body in (
        json.dumps({"definition": nested(MAX_JSON_DEPTH + 1)}).encode(),
        b"[" * 100_000 + b"]" * 100_000,  # deeper than Python's parser can go: not a 500
        b'{"a": NaN, "b": ' + b"[" * 50_000,
    ):
        response = api.post("/workflows", content=body, headers=json_headers)
        assert response.status_code == 422, response.text
        assert response.headers["content-type"] == "application/problem+json"
        assert response.json()["code"] == "json_too_deep"
        assert response.json()["detail"] == (
            f"the JSON body is nested more than {MAX_JSON_DEPTH} levels deep"
        )
    assert row_counts(platform_url) == before


# -- row 9: NaN and Infinity ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("inputs", "field"),
    [
        (b'{"who": "ada\\u0000"}', "inputs.who"),  # PostgreSQL text and JSONB refuse NUL
        (b'{"who": "\\ud800"}', "inputs.who"),  # a lone surrogate: not UTF-8
        (b'{"\\udfff": 1}', "inputs.\\udfff"),  # in a key, named escaped (the answer stays UTF-8)
        (b'{"who": "ada", "tags": ["\\ud83d\\ude00", "\\udc00"]}', "inputs.tags.1"),
    ],
)
def test_unstorable_text_in_inputs_is_422_naming_the_path(
    api: TestClient, key: dict[str, str], platform_url: str, inputs: bytes, field: str
) -> None:
    workflow_id = deployed_workflow(api, key)
    before = row_counts(platform_url)
    response = api.post(
        f"/workflows/{workflow_id}/executions",
        content=b'{"inputs": ' + inputs + b"}",
        headers={**key, "content-type": "application/json"},
    )
    assert response.status_code == 422, response.text
    problem = response.json()
    assert problem["code"] == "invalid_text"
    assert [p["field"] for p in problem["problems"]] == [field]
    assert row_counts(platform_url) == before
    paired = api.post(  # an escaped surrogate pair is an ordinary character
        f"/workflows/{workflow_id}/executions",
        content=b'{"inputs": {"who": "\\ud83d\\ude00"}}',
        headers={**key, "content-type": "application/json"},
    )
    assert paired.status_code == 201, paired.text


@pytest.mark.parametrize(
    ("inputs", "field", "literal"),
    [
        (b'{"who": "ada", "times": NaN}', "inputs.times", "NaN"),
        (b'{"who": "ada", "times": Infinity}', "inputs.times", "Infinity"),
        (b'{"who": "ada", "tags": [1, {"w": -Infinity}]}', "inputs.tags.1.w", "-Infinity"),
        (b'{"who": "ada", "times": 1e999}', "inputs.times", "1e999"),
    ],
)
def test_non_finite_numbers_in_inputs_are_422_naming_the_path(
    api: TestClient,
    key: dict[str, str],
    platform_url: str,
    inputs: bytes,
    field: str,
    literal: str,
) -> None:
    workflow_id = deployed_workflow(api, key)
    before = row_counts(platform_url)
    response = api.post(
        f"/workflows/{workflow_id}/executions",
        content=b'{"inputs": ' + inputs + b"}",
        headers={**key, "content-type": "application/json"},
    )
    assert response.status_code == 422, response.text
    problem = response.json()
    assert problem["code"] == "non_finite_number"
    assert (
        problem["detail"]
        == f"{field}: {literal} is not a finite number: JSON numbers must be finite"
    )
    assert [p["field"] for p in problem["problems"]] == [field]
    assert row_counts(platform_url) == before
    finite = api.post(
        f"/workflows/{workflow_id}/executions",
        content=b'{"inputs": {"who": "ada", "times": 2.5e3}}',
        headers={**key, "content-type": "application/json"},
    )
    assert finite.status_code == 201, finite.text


# -- row 13: malformed JSON and bodies not sent as JSON ------------------------------------------


def test_malformed_json_names_line_and_column_and_no_field(
    api: TestClient, key: dict[str, str]
) -> None:
    body = b'{"definition": {\n  "name": "x",\n  "nodes": [}\n}'
    with pytest.raises(json.JSONDecodeError) as parsed:
        json.loads(body)
    response = api.post(
        "/workflows", content=body, headers={**key, "content-type": "application/json"}
    )
    assert response.status_code == 422
    problem = response.json()
    error = parsed.value
    assert (error.lineno, error.colno) == (3, 13)
    assert problem["code"] == "malformed_json"
    assert problem["detail"] == "malformed JSON at line 3 column 13: Expecting value"
    assert problem["problems"] == [
        {"code": "malformed_json", "message": problem["detail"], "line": 3, "column": 13}
    ]


@pytest.mark.parametrize(
    ("content_type", "told"), [(None, "without a Content-Type"), ("text/plain", "as text/plain")]
)
def test_a_json_endpoint_answers_415_to_a_body_not_sent_as_json(
    api: TestClient, key: dict[str, str], content_type: str | None, told: str
) -> None:
    headers = {**key, **({"content-type": content_type} if content_type else {})}
    response = api.post(
        "/workflows", content=json.dumps({"definition": {}}).encode(), headers=headers
    )
    assert response.status_code == 415
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["code"] == "unsupported_media_type"
    assert response.json()["detail"] == (
        f"this endpoint takes a JSON body (Content-Type: application/json); it was sent {told}"
    )
    empty = api.post("/workflows", headers={**key, "content-type": "application/json"})
    assert empty.status_code == 422
    assert empty.json()["detail"] == "a JSON body is required"
    assert "field" not in empty.json()["problems"][0]


# -- row 8: what a database node may do to its connection ----------------------------------------


def run_node(url: str, query: str, **connection: Any) -> Any:
    ctx = NodeContext(
        node_id="db",
        node_type="database",
        label="DB",
        config=DatabaseConfig(connection_id="main", operation="query", query=query),
        state=ExecutionState.start({}),
        services={"settings": Settings(databases={"main": {"url": url, **connection}})},
    )
    return execute_database(ctx).output


@pytest.fixture
def sqlite_file(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'crm.db'}"
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    with engine.begin() as connection:
        connection.execute(sa.text("CREATE TABLE people (id INTEGER PRIMARY KEY, name TEXT)"))
        connection.execute(sa.text("INSERT INTO people VALUES (1, 'Ann')"))
    engine.dispose()
    return url


def test_sqlite_node_cannot_attach_the_platform_database(
    sqlite_file: str, platform_db: str
) -> None:
    make_key(platform_db, "victim@example.com")
    with session_scope(get_engine(platform_db)) as session:
        assert session.scalar(sa.select(sa.func.count()).select_from(ApiKey)) == 1
    platform_path = platform_db.removeprefix("sqlite:///")
    with pytest.raises(
        NodeConfigurationError, match=r"refused ATTACH \(opening another database file"
    ):
        run_node(sqlite_file, f"ATTACH DATABASE '{platform_path}' AS platform")
    with pytest.raises(NodeConfigurationError, match="refused ATTACH"):
        run_node(sqlite_file, f"VACUUM INTO '{Path(platform_path).with_name('copy.db')}'")
    with pytest.raises(NodeConfigurationError, match="refused DETACH"):
        run_node(sqlite_file, "DETACH DATABASE main")
    assert not Path(platform_path).with_name("copy.db").exists()
    # Nothing got attached on the pooled connection either.
    with pytest.raises(NodeExecutionError, match=r"no such table: platform\.api_keys"):
        run_node(sqlite_file, "SELECT key_hash FROM platform.api_keys")


@pytest.mark.parametrize(
    ("query", "refused"),
    [
        ("PRAGMA journal_mode = OFF", "PRAGMA journal_mode"),
        ("PRAGMA writable_schema = ON", "PRAGMA writable_schema"),
        ("SELECT * FROM pragma_database_list", "PRAGMA database_list"),
        ("SELECT load_extension('/tmp/evil.so')", "load_extension()"),
    ],
)
def test_sqlite_node_refuses_pragmas_and_extensions(
    sqlite_file: str, query: str, refused: str
) -> None:
    with pytest.raises(NodeConfigurationError, match=re.escape(f"refused {refused}")) as caught:
        run_node(sqlite_file, query)
    assert "may not attach databases, run PRAGMAs or load extensions" in str(caught.value)
    assert run_node(sqlite_file, "SELECT name FROM people")["rows"] == [{"name": "Ann"}]


def test_a_read_only_sqlite_connection_refuses_writes(sqlite_file: str) -> None:
    with pytest.raises(NodeConfigurationError, match="the connection is read-only"):
        run_node(sqlite_file, "INSERT INTO people VALUES (2, 'Bob')", read_only=True)
    with pytest.raises(NodeConfigurationError, match="the connection is read-only"):
        run_node(sqlite_file, "CREATE TEMP TABLE scratch (x)", read_only=True)
    assert run_node(sqlite_file, "SELECT count(*) AS n FROM people", read_only=True)["rows"] == [
        {"n": 1}
    ]
    run_node(sqlite_file, "INSERT INTO people VALUES (2, 'Bob')")  # the same file, writable
    assert run_node(sqlite_file, "SELECT count(*) AS n FROM people")["rows"] == [{"n": 2}]


def test_a_read_only_postgres_connection_refuses_writes() -> None:
    require_postgres(PG_URL)
    table = f"fm_ro_{uuid.uuid4().hex[:10]}"
    engine = sa.create_engine(PG_URL, poolclass=sa.pool.NullPool)
    with engine.begin() as connection:
        connection.execute(sa.text(f"CREATE TABLE {table} (id INTEGER)"))
    try:
        with pytest.raises(
            NodeConfigurationError, match="the connection is read-only: cannot execute INSERT"
        ):
            run_node(PG_URL, f"INSERT INTO {table} VALUES (1)", read_only=True)
        assert run_node(PG_URL, f"SELECT count(*) AS n FROM {table}", read_only=True)["rows"] == [
            {"n": 0}
        ]
        run_node(PG_URL, f"INSERT INTO {table} VALUES (1)")
        assert run_node(PG_URL, f"SELECT count(*) AS n FROM {table}")["rows"] == [{"n": 1}]
    finally:
        with engine.begin() as connection:
            connection.execute(sa.text(f"DROP TABLE IF EXISTS {table}"))
        engine.dispose()


# -- row 9: the launch reconciler gives up ---------------------------------------------------------


class WireClient(RecordingDagsterClient):
    """The recording client, its requests encoded as the GraphQL transport encodes them: a run
    config holding NaN cannot be sent (requests refuses it), so that launch fails every time."""

    def _send(self, action: str, arguments: Any, send: Any) -> Any:
        json.dumps(arguments, allow_nan=False)
        return super()._send(action, arguments, send)


def echo_flow() -> dict[str, Any]:
    return chain(
        node("in", "input", inputName="who"),
        node("out", "output", outputName="said", value="hi {{who}}"),
        name="Echo",
    )


def committed(settings: Settings, inputs: dict[str, Any], *, age_seconds: float) -> str:
    """An execution as the API committed it before NaN was refused (no run yet)."""
    with session_scope(get_engine(settings.database_url)) as session:
        user = fresh_user(session)
        workflow_id = deploy(session, user, echo_flow())
        session.commit()
        execution, _ = start_execution(
            session,
            user=user,
            workflow_id=workflow_id,
            body=ExecutionCreate(inputs=inputs),
            idempotency_key=None,
            default_ttl_seconds=3600,
            shards=1,
        )
        execution.created_at = utcnow() - timedelta(seconds=age_seconds)
        return execution.id


def row(settings: Settings, execution_id: str) -> Execution:
    with session_scope(get_engine(settings.database_url)) as session:
        found = session.get(Execution, execution_id)
        assert found is not None
        return found


@pytest.fixture
def reconciler_settings(platform_db: str) -> Settings:
    return Settings(
        database_url=platform_db,
        reconcile_after_seconds=10,
        launch_lease_seconds=60,
        launch_max_attempts=3,
        secret_key="security-test-secret-0123456789",
        callback_signing_secret="security-test-signing-0123456789",
    )


def test_the_reconciler_gives_up_on_a_launch_that_keeps_failing_and_launches_the_rest(
    reconciler_settings: Settings, instance: DagsterInstance
) -> None:
    settings = reconciler_settings
    client = WireClient(instance)
    bad = committed(settings, {"who": "ada", "score": math.nan}, age_seconds=120)
    good = committed(settings, {"who": "bob"}, age_seconds=60)
    sensor = make_launch_reconciler_sensor(settings=settings, client_factory=lambda _: client)

    def tick() -> str:
        result = sensor(build_sensor_context(instance=instance, sensor_name=sensor.name))
        assert isinstance(result, SkipReason)
        return str(result.skip_message).split(";")[0]

    assert tick() == "launched 1, held elsewhere 0, failed 1"  # the good one, beside the bad
    assert [call.arguments["tags"][EXECUTION_TAG] for call in client.calls] == [good]
    assert row(settings, bad).launch_attempts == 1
    assert tick() == "launched 0, held elsewhere 0, failed 1"  # the first retry: the next tick
    assert tick() == "launched 0, held elsewhere 0, failed 0"  # then it backs off (30 s)
    retry_at = row(settings, bad).launch_retry_at
    assert retry_at is not None and timedelta(seconds=20) < retry_at - utcnow() <= timedelta(
        seconds=30
    )

    with session_scope(get_engine(settings.database_url)) as session:  # the 30 s pass
        session.execute(sa.update(Execution).values(launch_retry_at=utcnow()))
    assert tick() == "launched 0, held elsewhere 0, failed 1, gave up on 1"

    failed = row(settings, bad)
    assert (failed.status, failed.launch_attempts, failed.launched_at) == ("failed", 3, None)
    assert failed.finished_at is not None
    assert failed.error is not None and failed.error.startswith(
        "gave up after 3 launch attempts (FLOWMAESTRO_LAUNCH_MAX_ATTEMPTS=3); the last: "
        "launch failed: Out of range float values are not JSON compliant"
    )
    assert tick() == "launched 0, held elsewhere 0, failed 0"
    assert len(client.calls) == 1 and row(settings, good).run_id == client.calls[0].run_id
    # Reading it back (GET /executions/{id} refreshes from Dagster) keeps it failed.
    with session_scope(get_engine(settings.database_url)) as session:
        execution = session.get(Execution, bad)
        assert execution is not None
        assert refresh(session, client, execution).execution.status == "failed"


def test_executions_that_keep_failing_wait_behind_the_others(
    reconciler_settings: Settings,
) -> None:
    settings = reconciler_settings
    stuck = [committed(settings, {"who": f"s{i}"}, age_seconds=600 + i) for i in range(3)]
    fresh = committed(settings, {"who": "new"}, age_seconds=60)
    with session_scope(get_engine(settings.database_url)) as session:
        session.execute(
            sa.update(Execution).where(Execution.id.in_(stuck)).values(launch_attempts=2)
        )
    with session_scope(get_engine(settings.database_url)) as session:
        first = pending_launches(session, older_than_seconds=10, limit=1, max_attempts=3)
        every = pending_launches(session, older_than_seconds=10, max_attempts=3)
        exhausted = pending_launches(session, older_than_seconds=10, max_attempts=2)
    assert first == [fresh]
    assert every == [fresh, *reversed(stuck)]  # then the least tried, oldest first
    assert exhausted == [fresh]  # used-up ones are the reconciler's to give up, not to launch
