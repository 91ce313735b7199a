"""`/connections` (issue 19): CRUD scoped to the owner, secrets in and never out, and the
OAuth2 flow end to end against a fake provider on 127.0.0.1 (authorization URL, consent,
callback, the exact token request, refresh on expiry, revocation on delete)."""

import base64
import hashlib
import json
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import httpx
import httpx2  # what starlette's TestClient answers with
import pytest
from cryptography.fernet import Fernet
from fastapi.testclient import TestClient

from flowmaestro_api.main import create_app
from flowmaestro_api.settings import ApiSettings
from flowmaestro_dagster.control.oauth import refresh_connection
from flowmaestro_dagster.store.connections import ConnectionCipher, ConnectionStore
from flowmaestro_dagster.store.db import get_engine, session_scope
from flowmaestro_dagster.store.models import ProviderConnection
from tests.api.conftest import UNREACHABLE_DAGSTER
from tests.test_connections_store import NEW_KEY, FakeOAuthServer

SECRET = "xoxb-very-secret-token-1234"
PUBLIC = "http://testserver"  # the TestClient's origin: the provider redirects back to it
CALLBACK = f"{PUBLIC}/connections/oauth/callback"
PROVIDER = "google-sheets"  # OAuth2 with PKCE, client credentials in the form (catalogue)


@pytest.fixture
def provider() -> Iterator[FakeOAuthServer]:
    with FakeOAuthServer() as server:
        yield server


@pytest.fixture
def settings(database_url: str, provider: FakeOAuthServer) -> ApiSettings:
    return ApiSettings(
        database_url=database_url,
        dagster_graphql_url=UNREACHABLE_DAGSTER,
        graphql_timeout_seconds=2,
        connections_keys=NEW_KEY,
        public_api_url=PUBLIC,
        oauth={
            PROVIDER: {
                "client_id": "fm-client",
                "client_secret": "fm-client-secret",
                "authorize_url": provider.url("/authorize"),
                "token_url": provider.url("/token"),
                "revoke_url": provider.url("/revoke"),
            }
        },
    )


@pytest.fixture
def api(settings: ApiSettings) -> Iterator[TestClient]:
    with TestClient(create_app(settings), raise_server_exceptions=False) as test_client:
        yield test_client


def _create(api: TestClient, auth: dict[str, str], **body: Any) -> httpx2.Response:
    payload = {"provider": "slack", "name": "team", "credentials": {"url": SECRET}, **body}
    return api.post("/connections", json=payload, headers=auth)


# -- CRUD ---------------------------------------------------------------------------------------


def test_created_connections_never_show_their_secrets(
    api: TestClient, auth: dict[str, str], database_url: str
) -> None:
    created = _create(api, auth, credentials={"url": SECRET, "signing_secret": "s3cr3t-sign"})
    assert created.status_code == 201, created.text
    body = created.json()
    assert body["credential_keys"] == ["signing_secret", "url"]
    assert body["provider"] == "slack" and body["is_default"] is True
    assert body["auth_type"] == "credentials" and body["status"] == "active"
    listed = api.get("/connections", headers=auth)
    read = api.get(f"/connections/{body['id']}", headers=auth)
    assert [c["id"] for c in listed.json()["items"]] == [body["id"]]
    assert read.json() == body
    for response in (created, listed, read):
        assert SECRET not in response.text and "s3cr3t-sign" not in response.text
    with session_scope(get_engine(database_url)) as session:
        stored = session.get(ProviderConnection, body["id"])
        assert stored is not None and SECRET not in stored.encrypted_credentials


def test_another_users_connections_are_not_found(
    api: TestClient, auth: dict[str, str], other_auth: dict[str, str]
) -> None:
    connection_id = _create(api, auth).json()["id"]
    assert api.get("/connections", headers=other_auth).json() == {"items": []}
    for response in (
        api.get(f"/connections/{connection_id}", headers=other_auth),
        api.post(
            f"/connections/{connection_id}/rotate",
            json={"credentials": {"url": "https://hooks.example.com/x"}},
            headers=other_auth,
        ),
        api.delete(f"/connections/{connection_id}", headers=other_auth),
    ):
        assert response.status_code == 404
        assert response.headers["content-type"] == "application/problem+json"
        assert response.json()["detail"] == f"no connection {connection_id} of yours"
    assert api.get(f"/connections/{connection_id}", headers=auth).status_code == 200
    assert api.get("/connections", headers={}).status_code == 401


def test_invalid_connections_are_refused_naming_the_field(
    api: TestClient, auth: dict[str, str]
) -> None:
    assert _create(api, auth).status_code == 201
    duplicate = _create(api, auth)
    assert duplicate.status_code == 409
    assert "already have a connection named 'team'" in duplicate.json()["detail"]
    unknown = _create(api, auth, provider="no-such-provider", name="x")
    assert unknown.status_code == 422
    assert unknown.json()["problems"][0]["field"] == "provider"
    environment = _create(api, auth, name="y", credentials={"url_env": "FLOWMAESTRO_SECRET_KEY"})
    assert environment.status_code == 422
    assert environment.json()["problems"][0]["field"] == "credentials.url_env"
    for credentials in ({"url": 42}, {"url": "x" * 16_385}, {"bad key": "v"}):
        response = _create(api, auth, name="z", credentials=credentials)
        assert response.status_code == 422, credentials
    assert len(api.get("/connections", headers=auth).json()["items"]) == 1


def test_rotate_replaces_every_secret_and_delete_forgets_the_connection(
    api: TestClient, auth: dict[str, str], database_url: str
) -> None:
    connection_id = _create(api, auth).json()["id"]
    rotated = api.post(
        f"/connections/{connection_id}/rotate",
        json={"credentials": {"url": "https://hooks.example.com/new-7781"}},
        headers=auth,
    )
    assert rotated.status_code == 200, rotated.text
    assert "new-7781" not in rotated.text
    with session_scope(get_engine(database_url)) as session:
        row = session.get(ProviderConnection, connection_id)
        assert row is not None
        assert ConnectionCipher([NEW_KEY]).decrypt(row.encrypted_credentials) == {
            "url": "https://hooks.example.com/new-7781"
        }
    deleted = api.delete(f"/connections/{connection_id}", headers=auth)
    assert deleted.status_code == 204 and deleted.headers["connection-revoked"] == "false"
    assert api.get(f"/connections/{connection_id}", headers=auth).status_code == 404


# -- OAuth2 -------------------------------------------------------------------------------------


def _consent(api: TestClient, auth: dict[str, str], name: str = "sheets") -> httpx2.Response:
    """Ask for the authorization URL, consent at the provider, follow it back (a browser)."""
    started = api.post(
        f"/connections/oauth/{PROVIDER}/authorize", json={"name": name}, headers=auth
    )
    assert started.status_code == 200, started.text
    at_provider = httpx.get(started.json()["authorization_url"], follow_redirects=False)
    assert at_provider.status_code == 302
    back = urlsplit(at_provider.headers["location"])
    assert f"{back.scheme}://{back.netloc}{back.path}" == CALLBACK
    return api.get(f"{back.path}?{back.query}")


def test_the_oauth2_flow_stores_tokens_refreshes_them_and_revokes_them_on_delete(
    api: TestClient,
    auth: dict[str, str],
    provider: FakeOAuthServer,
    settings: ApiSettings,
    database_url: str,
) -> None:
    provider.expires_in = 30  # inside the refresh margin: the first use refreshes
    answer = _consent(api, auth)
    assert answer.status_code == 200, answer.text
    connection = answer.json()
    assert connection["auth_type"] == "oauth2" and connection["name"] == "sheets"
    assert connection["credential_keys"] == ["access_token", "refresh_token", "token_type"]
    assert connection["scopes"] == ["read", "write"] and connection["token_expires_at"]
    assert "access-1" not in answer.text and "refresh-1" not in answer.text

    # what the user was sent to: this client, the callback, S256 PKCE, the catalogue's scope
    # and extra parameters
    (asked,) = provider.authorizations
    assert asked["response_type"] == "code" and asked["client_id"] == "fm-client"
    assert asked["redirect_uri"] == CALLBACK
    assert asked["scope"] == "https://www.googleapis.com/auth/spreadsheets"
    assert asked["access_type"] == "offline" and asked["prompt"] == "consent"
    assert asked["code_challenge_method"] == "S256"

    # the exact token request
    (exchange,) = provider.token_requests()
    verifier = exchange.form["code_verifier"]
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest())
    assert asked["code_challenge"] == challenge.decode().rstrip("=")
    assert exchange.form == {
        "grant_type": "authorization_code",
        "code": "code-1",
        "redirect_uri": CALLBACK,
        "code_verifier": verifier,
        "client_id": "fm-client",  # the catalogue says: client credentials in the form
        "client_secret": "fm-client-secret",
    }
    assert "authorization" not in exchange.headers
    assert exchange.headers["accept"] == "application/json"
    assert verifier not in asked["state"]  # the state is sealed: the verifier is not in it

    # a node uses it: the token is about to expire, so it is refreshed first (as wired in
    # orchestration/resources.py)
    store = ConnectionStore(
        database_url,
        cipher=ConnectionCipher([NEW_KEY]),
        refresher=lambda **kw: refresh_connection(settings=settings, **kw),
    )
    owner = _owner(database_url, connection["id"])
    resolved = store.resolve(owner, None, PROVIDER)
    assert resolved is not None and resolved.settings is not None
    assert resolved.settings.secret("access_token") == "access-2"
    refresh = provider.token_requests()[1]
    assert refresh.form == {
        "grant_type": "refresh_token",
        "refresh_token": "refresh-1",
        "client_id": "fm-client",
        "client_secret": "fm-client-secret",
    }

    deleted = api.delete(f"/connections/{connection['id']}", headers=auth)
    assert deleted.status_code == 204 and deleted.headers["connection-revoked"] == "true"
    (revocation,) = [r for r in provider.requests if r.path == "/revoke"]
    assert revocation.form == {
        "token": "refresh-2",
        "token_type_hint": "refresh_token",
        "client_id": "fm-client",
        "client_secret": "fm-client-secret",
    }
    assert api.get(f"/connections/{connection['id']}", headers=auth).status_code == 404


def _owner(database_url: str, connection_id: str) -> str:
    with session_scope(get_engine(database_url)) as session:
        row = session.get(ProviderConnection, connection_id)
        assert row is not None
        return row.owner_id


def test_authorizing_a_name_again_replaces_the_tokens_and_browsers_get_a_page(
    api: TestClient, auth: dict[str, str], provider: FakeOAuthServer, database_url: str
) -> None:
    first = _consent(api, auth).json()
    started = api.post(
        f"/connections/oauth/{PROVIDER}/authorize", json={"name": "sheets"}, headers=auth
    )
    back = urlsplit(httpx.get(started.json()["authorization_url"]).headers["location"])
    page = api.get(f"{back.path}?{back.query}", headers={"Accept": "text/html"})
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "<strong>sheets</strong>" in page.text
    listed = api.get("/connections", headers=auth).json()["items"]
    assert [c["id"] for c in listed] == [first["id"]]
    with session_scope(get_engine(database_url)) as session:
        row = session.get(ProviderConnection, first["id"])
        assert row is not None
        tokens = ConnectionCipher([NEW_KEY]).decrypt(row.encrypted_credentials)
    assert tokens["access_token"] == "access-2"


def test_a_bad_or_expired_state_or_a_refusal_is_a_400_that_says_so(
    api: TestClient, auth: dict[str, str], provider: FakeOAuthServer
) -> None:
    started = api.post(
        f"/connections/oauth/{PROVIDER}/authorize", json={"name": "sheets"}, headers=auth
    )
    state = dict(parse_qsl(urlsplit(started.json()["authorization_url"]).query))["state"]
    tampered = state[:-6] + ("AAAAAA" if not state.endswith("AAAAAA") else "BBBBBB")
    stale = (
        Fernet(NEW_KEY)
        .encrypt_at_time(
            json.dumps(
                {"purpose": "oauth2-state", "user": "u", "provider": PROVIDER, "name": "sheets"}
            ).encode(),
            int(time.time()) - 3600,
        )
        .decode()
    )
    for query in (
        {"code": "c"},
        {"code": "c", "state": tampered},
        {"code": "c", "state": stale},
        {"code": "c", "state": "not-a-state"},
    ):
        response = api.get("/connections/oauth/callback", params=query)
        assert response.status_code == 400, query
        assert response.headers["content-type"] == "application/problem+json"
        assert "state is missing, invalid or expired" in response.json()["detail"]
    refused = api.get(
        "/connections/oauth/callback",
        params={"state": state, "error": "access_denied", "error_description": "said no"},
    )
    assert refused.status_code == 400
    assert (
        "did not authorize connection 'sheets': access_denied: said no"
        in (refused.json()["detail"])
    )
    assert provider.token_requests() == []
    assert api.get("/connections", headers=auth).json() == {"items": []}


def test_a_provider_without_an_oauth2_client_is_a_422_naming_the_setting(
    api: TestClient, auth: dict[str, str]
) -> None:
    response = api.post("/connections/oauth/notion/authorize", json={"name": "n"}, headers=auth)
    assert response.status_code == 422
    assert "FLOWMAESTRO_OAUTH__NOTION__CLIENT_ID" in response.json()["detail"]
    taken = _create(api, auth, name="sheets")
    assert taken.status_code == 201
    clash = api.post(
        f"/connections/oauth/{PROVIDER}/authorize", json={"name": "sheets"}, headers=auth
    )
    assert clash.status_code == 409
