"""Provider connections: create, list, read, rotate and delete yours; connect by OAuth2.

Secrets go in (`credentials`) and never come out: an answer says which credential keys are
set, not their values. Another user's connection is a 404, like one that does not exist.
OAuth2: `POST /connections/oauth/{provider}/authorize` gives the URL where the user consents;
the provider sends the browser back to `GET /connections/oauth/callback` (public: the signed
state says whose connection it is), which stores the tokens (docs/security.md#connections).
"""

import html
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Header, Path, Query, Request, Response, status
from fastapi.responses import HTMLResponse
from pydantic import BaseModel, ConfigDict, Field, field_validator

from flowmaestro_api.deps import CurrentUser, SessionDep, SessionRoute, SettingsDep
from flowmaestro_dagster.control import oauth
from flowmaestro_dagster.store import connections as store
from flowmaestro_dagster.store.connections import ConnectionCipher
from flowmaestro_dagster.store.models import ProviderConnection

router = APIRouter(route_class=SessionRoute, prefix="/connections", tags=["connections"])

Credentials = Annotated[
    dict[
        Annotated[str, Field(pattern=store.CREDENTIAL_KEY.pattern, max_length=64)],
        Annotated[str, Field(max_length=store.MAX_CREDENTIAL_CHARS)],
    ],
    Field(
        max_length=store.MAX_CREDENTIALS,
        description="secrets and settings the provider's connector reads (`api_key`, `token`, "
        "`password`, `url`, `username`, `host`, ...): strings, stored encrypted, never returned",
    ),
]


class ConnectionCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    provider: str = Field(min_length=1, max_length=100, description="a provider id (`notion`)")
    name: str = Field(min_length=1, max_length=100, pattern=store.NAME.pattern)
    credentials: Credentials
    base_url: str | None = Field(
        default=None,
        max_length=2048,
        description="where the connection's secrets may go instead of the provider's API root "
        "(a proxy, a self-hosted instance)",
    )
    is_default: bool | None = Field(
        default=None,
        description="the connection nodes of this provider use when they name none (default: "
        "yes for your first connection of the provider)",
    )
    account_label: str | None = Field(default=None, max_length=200)

    @field_validator("credentials")
    @classmethod
    def _within_budget(cls, value: dict[str, str]) -> dict[str, str]:
        if sum(len(v) for v in value.values()) > store.MAX_CREDENTIALS_CHARS:
            raise ValueError(f"more than {store.MAX_CREDENTIALS_CHARS} characters in all")
        return value


class ConnectionRotate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    credentials: Credentials


class AuthorizeBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=100, pattern=store.NAME.pattern)
    is_default: bool | None = None
    scopes: list[Annotated[str, Field(min_length=1, max_length=200)]] | None = Field(
        default=None, max_length=oauth.MAX_SCOPES, description="instead of the provider's"
    )


class AuthorizeAnswer(BaseModel):
    authorization_url: str = Field(description="open it in the browser to consent")
    expires_at: datetime = Field(description="consent after this fails (start again)")


class ConnectionPublic(BaseModel):
    """A connection as its owner sees it: everything but the secrets."""

    model_config = ConfigDict(from_attributes=True)

    id: str
    provider: str
    name: str
    auth_type: Literal["credentials", "oauth2"]
    is_default: bool
    status: Literal["active", "needs_reauth"]
    credential_keys: list[str] = Field(description="which credentials are set (not their values)")
    base_url: str | None
    scopes: list[str]
    account_label: str | None
    token_expires_at: datetime | None
    refreshed_at: datetime | None
    created_at: datetime
    updated_at: datetime


class ConnectionList(BaseModel):
    items: list[ConnectionPublic]


def _cipher(request: Request, settings: SettingsDep) -> ConnectionCipher:
    """The connections key, read once per app (its development file is made at first use)."""
    cipher: ConnectionCipher | None = getattr(request.app.state, "connections_cipher", None)
    if cipher is None:
        cipher = request.app.state.connections_cipher = ConnectionCipher.from_settings(settings)
    return cipher


CipherDep = Annotated[ConnectionCipher, Depends(_cipher)]
ConnectionId = Annotated[str, Path(max_length=36)]


@router.post("", status_code=status.HTTP_201_CREATED, response_model=ConnectionPublic)
def create_connection(
    body: ConnectionCreate, session: SessionDep, user: CurrentUser, cipher: CipherDep
) -> ProviderConnection:
    """A connection of yours to `provider`: 422 naming the field for an unknown provider or
    credentials its connector cannot use, 409 for a name you already use."""
    row = store.create_connection(
        session,
        cipher=cipher,
        owner_id=user.id,
        provider=body.provider,
        name=body.name,
        credentials=body.credentials,
        base_url=body.base_url,
        account_label=body.account_label,
        is_default=body.is_default,
    )
    session.commit()
    return row


@router.get("", response_model=ConnectionList)
def list_connections(
    session: SessionDep,
    user: CurrentUser,
    provider: Annotated[str | None, Query(max_length=100)] = None,
) -> ConnectionList:
    rows = store.list_connections(session, owner_id=user.id, provider=provider)
    return ConnectionList(items=[ConnectionPublic.model_validate(r) for r in rows])


@router.get("/oauth/callback", response_model=ConnectionPublic)
def oauth_callback(
    session: SessionDep,
    settings: SettingsDep,
    cipher: CipherDep,
    code: Annotated[str | None, Query(max_length=4096)] = None,
    state: Annotated[str | None, Query(max_length=4096)] = None,
    error: Annotated[str | None, Query(max_length=200)] = None,
    error_description: Annotated[str | None, Query(max_length=1000)] = None,
    accept: Annotated[str | None, Header()] = None,
) -> Any:
    """Where the provider sends the user back (no API key: the signed state names the user).
    400 for a missing, forged or expired state or a refusal; a page for browsers."""
    row = oauth.complete_authorization(
        session,
        settings=settings,
        cipher=cipher,
        code=code,
        state=state,
        error=error,
        error_description=error_description,
    )
    session.commit()
    if accept and "text/html" in accept:
        return HTMLResponse(_connected_page(row))
    return row


@router.get("/{connection_id}", response_model=ConnectionPublic)
def get_connection(
    connection_id: ConnectionId,
    session: SessionDep,
    user: CurrentUser,
) -> ProviderConnection:
    return store.get_connection(session, owner_id=user.id, connection_id=connection_id)


@router.post("/{connection_id}/rotate", response_model=ConnectionPublic)
def rotate_connection(
    connection_id: ConnectionId,
    body: ConnectionRotate,
    session: SessionDep,
    user: CurrentUser,
    cipher: CipherDep,
) -> ProviderConnection:
    """Replace the connection's secrets (all of them: the old ones are gone)."""
    row = store.replace_credentials(
        session,
        cipher=cipher,
        owner_id=user.id,
        connection_id=connection_id,
        credentials=body.credentials,
    )
    session.commit()
    return row


@router.delete("/{connection_id}", status_code=status.HTTP_204_NO_CONTENT)
def delete_connection(
    connection_id: ConnectionId,
    session: SessionDep,
    user: CurrentUser,
    settings: SettingsDep,
    cipher: CipherDep,
) -> Response:
    """Delete it; an OAuth2 connection's grant is revoked first where the provider has a
    revocation endpoint (`Connection-Revoked: true|false` says whether it confirmed)."""
    revoked = oauth.delete_connection(
        session,
        settings=settings,
        cipher=cipher,
        owner_id=user.id,
        connection_id=connection_id,
    )
    session.commit()
    return Response(
        status_code=status.HTTP_204_NO_CONTENT,
        headers={"Connection-Revoked": "true" if revoked else "false"},
    )


@router.post("/oauth/{provider}/authorize", response_model=AuthorizeAnswer)
def authorize(
    provider: Annotated[str, Path(max_length=100)],
    body: AuthorizeBody,
    session: SessionDep,
    user: CurrentUser,
    settings: SettingsDep,
    cipher: CipherDep,
) -> AuthorizeAnswer:
    """The URL where you let FlowMaestro use your `provider` account as connection `name`
    (authorizing an existing OAuth2 connection's name again replaces its tokens)."""
    started = oauth.start_authorization(
        session,
        settings=settings,
        cipher=cipher,
        user_id=user.id,
        provider=provider,
        name=body.name,
        is_default=body.is_default,
        scopes=body.scopes,
    )
    return AuthorizeAnswer(
        authorization_url=started.authorization_url, expires_at=started.expires_at
    )


def _connected_page(row: ProviderConnection) -> str:
    provider, name = html.escape(row.provider), html.escape(row.name)
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>Connected</title></head>"
        f"<body><h1>Connected</h1><p>Your {provider} account is now connection "
        f"<strong>{name}</strong>. You can close this window.</p></body></html>"
    )
