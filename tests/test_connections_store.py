"""The connections store (issue 19): secrets encrypted at rest, key rotation, which connection
a node gets (the owner's by id or name, the owner's default, then the operators'), another
owner's connection refused, and one OAuth2 refresh at a time per connection.

Every test runs on SQLite and on PostgreSQL; token endpoints are a fake OAuth2 server on
127.0.0.1 that records each request.
"""

import json
import stat
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

import httpx
import pytest
from sqlalchemy import select, text

from flowmaestro_dagster import cli
from flowmaestro_dagster.control.oauth import refresh_connection
from flowmaestro_dagster.errors import (
    Conflict,
    ConnectorNotConfiguredError,
    NotFound,
    Unprocessable,
)
from flowmaestro_dagster.lang.state import ExecutionState
from flowmaestro_dagster.nodes.base import NodeContext
from flowmaestro_dagster.nodes.connectors import (
    ConnectorRegistry,
    ConnectorRequest,
    builtin_registry,
)
from flowmaestro_dagster.nodes.integration import execute_integration
from flowmaestro_dagster.settings import HttpSettings, Settings, get_settings
from flowmaestro_dagster.spec.configs import IntegrationConfig
from flowmaestro_dagster.store import connections as store
from flowmaestro_dagster.store.connections import (
    KEY_FILE,
    ConnectionCipher,
    ConnectionStore,
    RefreshFailed,
    UnreadableCredentials,
)
from flowmaestro_dagster.store.db import get_engine, session_scope
from flowmaestro_dagster.store.models import ProviderConnection, User, utcnow
from flowmaestro_dagster.tags import USER_TAG
from flowmaestro_dagster.testing.local_server import LocalHTTPServer
from tests.services import database_from, migrated_template

OLD_KEY = "2Xq9Glx7H-8h4rpzl53gydH3pP_WJPv-GSylK3hgOhg="
NEW_KEY = "kUtHMbBKdf5NTkegfxatmRjlnC1ietqYCwC7HipT7bM="
API_KEY = "sk-live-do-not-leak-8412"
PROVIDER = "todoist"  # known to the builder; its OAuth2 endpoints come from the settings here


# -- a fake OAuth2 provider ---------------------------------------------------------------------


@dataclass(frozen=True)
class TokenRequest:
    path: str
    headers: dict[str, str]
    form: dict[str, str]


class FakeOAuthServer(LocalHTTPServer):
    """Authorization endpoint (`GET /authorize`: consents at once, redirects to the
    redirect_uri with `code-N`), token endpoint (`/token`: codes and refresh tokens in,
    `access-N`/`refresh-N` out), revocation endpoint (`/revoke`) and an API (`GET /api/...`:
    200 for the newest access token, 401 otherwise). `delay_s` holds each token answer (a slow provider); `refuse`
    answers the next refreshes with `invalid_grant`."""

    name = "fake OAuth2 server"

    def __init__(self, *, expires_in: int = 3600, delay_s: float = 0.0) -> None:
        self.requests: list[TokenRequest] = []
        self.api_calls: list[str] = []
        self.authorizations: list[dict[str, str]] = []
        self.expires_in = expires_in
        self.delay_s = delay_s
        self.refuse = False
        self.issued = 0
        self.valid: str | None = None
        self.lock = threading.Lock()
        super().__init__()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def token_requests(self) -> list[TokenRequest]:
        return [r for r in self.requests if r.path == "/token"]

    class handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def _answer(self, status: int, body: dict[str, Any]) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_POST(self) -> None:
            owner: FakeOAuthServer = self.server.owner  # type: ignore[attr-defined]
            length = int(self.headers.get("content-length") or 0)
            form = dict(parse_qsl(self.rfile.read(length).decode()))
            headers = {k.lower(): v for k, v in self.headers.items()}
            path = urlsplit(self.path).path
            with owner.lock:
                owner.requests.append(TokenRequest(path, headers, form))
            if path == "/revoke":
                self._answer(200, {})
                return
            if owner.delay_s:
                owner.closing.wait(owner.delay_s)
            if form.get("grant_type") == "refresh_token" and owner.refuse:
                self._answer(400, {"error": "invalid_grant", "error_description": "revoked"})
                return
            with owner.lock:
                owner.issued += 1
                n = owner.issued
                owner.valid = f"access-{n}"
            self._answer(
                200,
                {
                    "access_token": f"access-{n}",
                    "refresh_token": f"refresh-{n}",
                    "token_type": "Bearer",
                    "expires_in": owner.expires_in,
                    "scope": "read write",
                },
            )

        def do_GET(self) -> None:
            owner: FakeOAuthServer = self.server.owner  # type: ignore[attr-defined]
            parts = urlsplit(self.path)
            if parts.path == "/authorize":  # the user consents: back to redirect_uri with a code
                query = dict(parse_qsl(parts.query))
                with owner.lock:
                    owner.authorizations.append(query)
                    code = f"code-{len(owner.authorizations)}"
                back = {"code": code, "state": query.get("state", "")}
                self.send_response(302)
                self.send_header("Location", f"{query['redirect_uri']}?{urlencode(back)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            token = (self.headers.get("authorization") or "").removeprefix("Bearer ")
            with owner.lock:
                owner.api_calls.append(token)
            if token and token == owner.valid:
                self._answer(200, {"ok": True, "token": token})
            else:
                self._answer(401, {"error": "invalid_token"})


def oauth_settings(server: FakeOAuthServer, **more: Any) -> Settings:
    """Settings whose `todoist` OAuth2 client points at the fake server."""
    client = {
        "client_id": "client-1",
        "client_secret": "client-secret-1",
        "authorize_url": server.url("/authorize"),
        "token_url": server.url("/token"),
        "revoke_url": server.url("/revoke"),
        "scopes": ["read", "write"],
        "token_auth": "basic",
        "pkce": True,
    }
    return Settings(
        connections_keys=NEW_KEY,
        oauth={PROVIDER: client},
        public_api_url="https://fm.example.com",
        **more,
    )


# -- databases ----------------------------------------------------------------------------------


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def template(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, str]]:
    kind = request.param
    with migrated_template(kind, tmp_path_factory.mktemp(f"conn-{kind}")) as made:
        yield kind, made


@pytest.fixture
def database_url(template: tuple[str, str], tmp_path: Path) -> Iterator[str]:
    kind, made = template
    with database_from(kind, made, tmp_path) as url:
        yield url


def make_user(database_url: str, email: str) -> str:
    with session_scope(get_engine(database_url)) as session:
        user = User(email=email)
        session.add(user)
        session.flush()
        return user.id


@pytest.fixture
def ada(database_url: str) -> str:
    return make_user(database_url, "ada@example.com")


@pytest.fixture
def grace(database_url: str) -> str:
    return make_user(database_url, "grace@example.com")


def add(
    database_url: str,
    owner: str,
    *,
    cipher: ConnectionCipher | None = None,
    provider: str = "webhook",
    name: str = "main",
    credentials: dict[str, str] | None = None,
    **kw: Any,
) -> str:
    with session_scope(get_engine(database_url)) as session:
        row = store.create_connection(
            session,
            cipher=cipher or ConnectionCipher([NEW_KEY]),
            owner_id=owner,
            provider=provider,
            name=name,
            credentials=credentials if credentials is not None else {"api_key": API_KEY},
            **kw,
        )
        return row.id


def raw_row(database_url: str, connection_id: str) -> dict[str, Any]:
    with get_engine(database_url).connect() as connection:
        row = connection.execute(
            text("SELECT * FROM connections WHERE id = :id"), {"id": connection_id}
        ).one()
        return dict(row._mapping)


# -- encryption at rest and keys -----------------------------------------------------------------


def test_credentials_are_encrypted_at_rest_and_only_their_names_are_in_the_clear(
    database_url: str, ada: str
) -> None:
    connection_id = add(database_url, ada, credentials={"api_key": API_KEY, "username": "bot"})
    row = raw_row(database_url, connection_id)
    everything = json.dumps(row, default=str)
    assert API_KEY not in everything and "bot" not in row["encrypted_credentials"]
    assert row["key_id"] == store.key_id(NEW_KEY)
    assert sorted(
        json.loads(row["credential_keys"])
        if isinstance(row["credential_keys"], str)
        else row["credential_keys"]
    ) == ["api_key", "username"]
    with session_scope(get_engine(database_url)) as session:
        found = store.get_connection(session, owner_id=ada, connection_id=connection_id)
        credentials = store.read_credentials(ConnectionCipher([NEW_KEY]), found)
    assert credentials == {"api_key": API_KEY, "username": "bot"}


def test_an_old_key_still_decrypts_and_rotate_keys_re_encrypts_with_the_first(
    database_url: str,
    ada: str,
    grace: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    old = ConnectionCipher([OLD_KEY])
    first = add(database_url, ada, cipher=old)
    second = add(database_url, grace, cipher=old, name="other")
    both = ConnectionCipher([NEW_KEY, OLD_KEY])
    before = raw_row(database_url, first)["encrypted_credentials"]
    assert both.decrypt(before) == {"api_key": API_KEY}  # the old key still reads it
    with pytest.raises(UnreadableCredentials):
        ConnectionCipher([NEW_KEY]).decrypt(before)

    # the documented procedure: the new key first, the old one after it, then rotate-keys
    monkeypatch.setenv("FLOWMAESTRO_DATABASE_URL", database_url)
    monkeypatch.setenv("FLOWMAESTRO_CONNECTIONS_KEYS", f"{NEW_KEY},{OLD_KEY}")
    get_settings.cache_clear()
    try:
        assert cli.main(["connections", "rotate-keys"]) == cli.EXIT_OK
    finally:
        get_settings.cache_clear()
    assert "re-encrypted 2 connection(s)" in capsys.readouterr().out
    for connection_id in (first, second):
        row = raw_row(database_url, connection_id)
        assert row["key_id"] == store.key_id(NEW_KEY)
        assert ConnectionCipher([NEW_KEY]).decrypt(row["encrypted_credentials"]) == {
            "api_key": API_KEY
        }
        with pytest.raises(UnreadableCredentials):  # the old key can now be dropped
            old.decrypt(row["encrypted_credentials"])
    assert store.rotate_keys(database_url, both) == {"rotated": 0, "current": 2, "unreadable": 0}


def test_without_keys_one_is_generated_once_in_dagster_home(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "home"))
    keys = store.connection_keys(Settings())
    path = tmp_path / "home" / KEY_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert store.connection_keys(Settings()) == keys and len(keys) == 1
    ConnectionCipher(keys).decrypt(ConnectionCipher(keys).encrypt({"a": "b"}))
    with pytest.raises(ValueError, match="FLOWMAESTRO_CONNECTIONS_KEYS: key 2 is not a Fernet"):
        ConnectionCipher([NEW_KEY, "not-a-key"])


# -- what users may store -----------------------------------------------------------------------


def test_owners_names_are_unique_and_one_default_per_provider(
    database_url: str, ada: str, grace: str
) -> None:
    first = add(database_url, ada, name="a")
    second = add(database_url, ada, name="b")
    add(database_url, grace, name="a")  # another owner's names are theirs
    with pytest.raises(Conflict, match="already have a connection named 'a'"):
        add(database_url, ada, name="a")
    third = add(database_url, ada, name="c", is_default=True)
    with session_scope(get_engine(database_url)) as session:
        rows = {r.id: r for r in store.list_connections(session, owner_id=ada)}
    assert [rows[i].is_default for i in (first, second, third)] == [False, False, True]
    assert len(rows) == 3


def test_credentials_that_would_read_server_variables_or_are_not_strings_are_refused(
    database_url: str, ada: str
) -> None:
    with pytest.raises(Unprocessable) as caught:
        add(database_url, ada, credentials={"password_env": "FLOWMAESTRO_SECRET_KEY"})
    assert caught.value.problems[0]["field"] == "credentials.password_env"
    with pytest.raises(Unprocessable, match=r"credentials\.port"):
        add(database_url, ada, credentials={"port": "not-a-port"})
    with pytest.raises(Unprocessable, match="provider: unknown provider 'nope'"):
        add(database_url, ada, provider="nope")
    with pytest.raises(Unprocessable, match="base_url"):
        add(database_url, ada, base_url="ftp://files.example.com")


# -- which connection a node gets ----------------------------------------------------------------


def _echo_registry() -> ConnectorRegistry:
    """A connector that reports the connection it was given (names, never used elsewhere)."""
    registry = ConnectorRegistry()

    @registry.register("webhook", needs_connection=True)
    def report(request: ConnectorRequest) -> dict[str, Any]:
        connection = request.connection
        return {
            "name": request.connection_name,
            "api_key": connection.secret("api_key") if connection else None,
        }

    return registry


def _run(
    database_url: str,
    owner: str | None,
    *,
    connection_id: str | None = None,
    settings: Settings | None = None,
    registry: ConnectorRegistry | None = None,
    provider: str = "webhook",
    operation: str = "send",
    cipher: ConnectionCipher | None = None,
    refresher: Any = None,
) -> Any:
    settings = settings or Settings(connections_keys=NEW_KEY)
    services = {
        "settings": settings,
        "connectors": registry or _echo_registry(),
        "connections": ConnectionStore(
            database_url, cipher=cipher or ConnectionCipher([NEW_KEY]), refresher=refresher
        ),
    }
    ctx = NodeContext(
        node_id="call",
        node_type="integration",
        label="Call",
        config=IntegrationConfig(
            provider=provider, operation=operation, connection_id=connection_id
        ),
        state=ExecutionState.start({}),
        services=services,
        run_tags={USER_TAG: owner} if owner else {},
    )
    return execute_integration(ctx).output


def test_a_node_gets_the_owners_connection_by_id_or_name_then_default_then_the_operators(
    database_url: str, ada: str, grace: str
) -> None:
    operators = Settings(
        connections_keys=NEW_KEY, connections={"webhook": {"api_key": "operator-key"}}
    )
    # nothing stored: the operators' bootstrap connection
    assert _run(database_url, ada, settings=operators) == {
        "name": "webhook",
        "api_key": "operator-key",
    }
    default = add(database_url, ada, name="mine", credentials={"api_key": "ada-default"})
    add(database_url, ada, name="spare", credentials={"api_key": "ada-spare"}, is_default=False)
    assert _run(database_url, ada, settings=operators) == {"name": "mine", "api_key": "ada-default"}
    assert _run(database_url, ada, connection_id="spare")["api_key"] == "ada-spare"
    assert _run(database_url, ada, connection_id=default)["api_key"] == "ada-default"
    # grace has none: the operators' connection, never ada's
    assert _run(database_url, grace, settings=operators)["api_key"] == "operator-key"
    # a run nobody launched through the API has no owner: the operators' connections only
    assert _run(database_url, None, settings=operators)["api_key"] == "operator-key"


def test_someone_elses_connection_id_is_refused_like_one_that_does_not_exist(
    database_url: str, ada: str, grace: str
) -> None:
    adas = add(database_url, ada, name="mine")
    with pytest.raises(ConnectorNotConfiguredError) as theirs:
        _run(database_url, grace, connection_id=adas)
    with pytest.raises(ConnectorNotConfiguredError) as nobodys:
        _run(database_url, grace, connection_id="8a1f7a5e-0000-4000-8000-000000000000")
    assert f"no connection named '{adas}' of yours" in str(theirs.value)
    assert API_KEY not in str(theirs.value)
    assert "POST /connections (provider webhook)" in str(theirs.value)
    assert str(nobodys.value).replace("8a1f7a5e-0000-4000-8000-000000000000", adas) == str(
        theirs.value
    )
    with pytest.raises(ConnectorNotConfiguredError):  # by name neither
        _run(database_url, grace, connection_id="mine")


def test_a_provider_without_any_connection_fails_naming_how_to_add_one(
    database_url: str, ada: str
) -> None:
    with pytest.raises(ConnectorNotConfiguredError) as caught:
        _run(
            database_url,
            ada,
            registry=builtin_registry(),
            provider="slack",
            operation="sendMessage",
        )
    message = str(caught.value)
    assert "no Slack webhook configured" in message
    assert "POST /connections (provider slack) or FLOWMAESTRO_CONNECTIONS__SLACK__" in message


def test_a_connection_encrypted_with_a_removed_key_fails_the_node_clearly(
    database_url: str, ada: str
) -> None:
    add(database_url, ada, cipher=ConnectionCipher([OLD_KEY]))
    with pytest.raises(ConnectorNotConfiguredError, match="cannot be decrypted") as caught:
        _run(database_url, ada)
    assert "rotate-keys" in str(caught.value)


# -- OAuth2 refresh -----------------------------------------------------------------------------


def oauth_connection(
    database_url: str, owner: str, *, expires_in: float, token: str = "access-0"
) -> str:
    return add(
        database_url,
        owner,
        provider=PROVIDER,
        name="oauth",
        credentials={"access_token": token, "refresh_token": "refresh-0", "token_type": "Bearer"},
        auth_type="oauth2",
        token_expires_at=utcnow() + timedelta(seconds=expires_in),
    )


def _refresher(settings: Settings) -> Callable[..., dict[str, str]]:
    def refresher(**kw: Any) -> dict[str, str]:
        return refresh_connection(settings=settings, **kw)

    return refresher


def test_two_threads_refreshing_one_connection_make_one_token_request(
    database_url: str, ada: str
) -> None:
    with FakeOAuthServer(delay_s=0.3) as server:
        settings = oauth_settings(server)
        connection_id = oauth_connection(database_url, ada, expires_in=3600)
        start = threading.Barrier(2)
        results: list[dict[str, str]] = []
        errors: list[BaseException] = []

        def refresh() -> None:
            start.wait()
            try:
                results.append(
                    refresh_connection(
                        settings=settings,
                        database_url=database_url,
                        cipher=ConnectionCipher([NEW_KEY]),
                        connection_id=connection_id,
                        stale_token="access-0",  # both saw the provider refuse it
                    )
                )
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

        threads = [threading.Thread(target=refresh) for _ in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        assert errors == []
        assert len(server.token_requests()) == 1  # the second found the fresh token
        assert [r["access_token"] for r in results] == ["access-1", "access-1"]
        sent = server.token_requests()[0]
        assert sent.form == {"grant_type": "refresh_token", "refresh_token": "refresh-0"}
        assert sent.headers["authorization"] == "Basic Y2xpZW50LTE6Y2xpZW50LXNlY3JldC0x"
    row = raw_row(database_url, connection_id)
    credentials = ConnectionCipher([NEW_KEY]).decrypt(row["encrypted_credentials"])
    assert credentials["refresh_token"] == "refresh-1"
    assert "access-1" not in json.dumps(row, default=str)


def test_a_token_about_to_expire_is_refreshed_before_the_node_uses_it(
    database_url: str, ada: str
) -> None:
    with FakeOAuthServer() as server:
        settings = oauth_settings(server)
        oauth_connection(database_url, ada, expires_in=30)  # inside the 60 s margin
        registry = ConnectorRegistry()

        @registry.register(PROVIDER)
        def token(request: ConnectorRequest) -> dict[str, Any]:
            assert request.connection is not None
            assert request.connection.secret("refresh_token") is None  # stays in the store
            return {"token": request.connection.secret("access_token")}

        output = _run(
            database_url,
            ada,
            provider=PROVIDER,
            registry=registry,
            settings=settings,
            refresher=_refresher(settings),
        )
        assert output == {"token": "access-1"}
        assert len(server.token_requests()) == 1
        # fresh now: the next node makes no token request
        _run(
            database_url,
            ada,
            provider=PROVIDER,
            registry=registry,
            settings=settings,
            refresher=_refresher(settings),
        )
        assert len(server.token_requests()) == 1
    with session_scope(get_engine(database_url)) as session:
        row = session.scalars(select(ProviderConnection)).one()
        assert row.token_expires_at is not None and row.token_expires_at > utcnow() + timedelta(
            seconds=3000
        )


def test_a_401_refreshes_once_and_the_call_is_made_again(database_url: str, ada: str) -> None:
    with FakeOAuthServer() as server:
        settings = oauth_settings(server)
        oauth_connection(database_url, ada, expires_in=3600)  # the provider revoked access-0
        registry = ConnectorRegistry()

        @registry.register(PROVIDER)
        def call(request: ConnectorRequest) -> Any:
            connection = request.connection
            for _ in range(2):
                assert connection is not None
                token = connection.secret("access_token")
                answer = httpx.get(
                    server.url("/api/me"), headers={"Authorization": f"Bearer {token}"}
                )
                if answer.status_code != 401 or request.refresh is None:
                    return answer.json()
                connection = request.refresh()
            return None

        output = _run(
            database_url,
            ada,
            provider=PROVIDER,
            registry=registry,
            settings=settings,
            refresher=_refresher(settings),
        )
        assert output == {"ok": True, "token": "access-1"}
        assert server.api_calls == ["access-0", "access-1"]
        assert len(server.token_requests()) == 1


def test_a_refused_refresh_token_marks_the_connection_for_reauthorization(
    database_url: str, ada: str
) -> None:
    with FakeOAuthServer() as server:
        server.refuse = True
        settings = oauth_settings(server)
        connection_id = oauth_connection(database_url, ada, expires_in=-10)  # expired
        with pytest.raises(RefreshFailed, match="invalid_grant"):
            refresh_connection(
                settings=settings,
                database_url=database_url,
                cipher=ConnectionCipher([NEW_KEY]),
                connection_id=connection_id,
                stale_token=None,
            )
        assert raw_row(database_url, connection_id)["status"] == "needs_reauth"
        with pytest.raises(ConnectorNotConfiguredError, match="authorize it again"):
            _run(
                database_url,
                ada,
                provider=PROVIDER,
                settings=settings,
                refresher=_refresher(settings),
            )


def test_get_connection_is_scoped_to_its_owner(database_url: str, ada: str, grace: str) -> None:
    adas = add(database_url, ada)
    with session_scope(get_engine(database_url)) as session, pytest.raises(NotFound):
        store.get_connection(session, owner_id=grace, connection_id=adas)


def test_a_catalogued_operation_refreshes_after_a_401_and_is_sent_again(
    database_url: str, ada: str
) -> None:
    """The declarative executor (nodes/connectors/declarative.py) with a stored OAuth2
    connection: the provider refuses the stored token, the store refreshes it, the call is
    made again with the new one."""
    with FakeOAuthServer() as server:
        settings = Settings(
            connections_keys=NEW_KEY,
            http=HttpSettings(allow_loopback=True),
            oauth={
                "google-sheets": {
                    "client_id": "client-1",
                    "client_secret": "client-secret-1",
                    "token_url": server.url("/token"),
                }
            },
        )
        add(
            database_url,
            ada,
            provider="google-sheets",
            name="sheets",
            credentials={"access_token": "access-0", "refresh_token": "refresh-0"},
            auth_type="oauth2",
            base_url=server.url("/api"),  # where an operator's proxy would be
            token_expires_at=utcnow() + timedelta(hours=1),
        )
        ctx = NodeContext(
            node_id="read",
            node_type="integration",
            label="Read",
            config=IntegrationConfig(
                provider="google-sheets",
                operation="getValues",
                parameters={"spreadsheetId": "sheet-1", "range": "A1:B2"},
            ),
            state=ExecutionState.start({}),
            services={
                "settings": settings,
                "connections": ConnectionStore(
                    database_url,
                    cipher=ConnectionCipher([NEW_KEY]),
                    refresher=_refresher(settings),
                ),
            },
            run_tags={USER_TAG: ada},
        )
        output = execute_integration(ctx).output
        assert output == {"ok": True, "token": "access-1"}
        assert server.api_calls == ["access-0", "access-1"]
        (refresh,) = server.token_requests()
        assert refresh.form == {
            "grant_type": "refresh_token",
            "refresh_token": "refresh-0",
            "client_id": "client-1",  # the catalogue's client_auth: in the form
            "client_secret": "client-secret-1",
        }
