"""OAuth2 connections: authorization code (with PKCE), token refresh, revocation.

1. `start_authorization`: the provider's authorization URL for a user, a provider and the
   connection's name. Its `state` is sealed with the connections key (store/connections.py
   `ConnectionCipher.seal`: signed, encrypted, good for `STATE_TTL_SECONDS`) and carries the
   user, provider, name and the PKCE verifier, so nothing is stored until the provider answers
   and nobody who sees the URL learns the verifier.
2. `complete_authorization` (the public callback `GET /connections/oauth/callback`): the state
   is checked, the code exchanged at the provider's token endpoint (`grant_type`, `code`,
   `redirect_uri`, `code_verifier`, the client's credentials as HTTP Basic or in the form), and
   the tokens stored encrypted in a connection of that name (created, or re-authorized).
3. `refresh_connection`: new tokens with the refresh token, when the access token is within
   `REFRESH_MARGIN_SECONDS` of its expiry or after the provider refused it (a 401). One refresh
   at a time per connection across processes: the row is locked (`locked_connection`) and read
   again under the lock, so whoever waited finds the fresh token instead of asking again. A
   refresh token the provider refuses (`invalid_grant`) marks the connection `needs_reauth`.
4. `delete_connection`: the tokens are revoked at the provider's revocation endpoint
   (RFC 7009) when it has one, then the connection is deleted, revoked or not.

The client id and secret are the operator's (`FLOWMAESTRO_OAUTH__<PROVIDER>__CLIENT_ID`,
`__CLIENT_SECRET`); endpoints and scopes come from the provider's catalogue entry
(`nodes/connectors/declarative.py`) unless those settings override them. The entry may also
rename the client id parameter (TikTok's `client_key`) and name what else a connection keeps:
fields of the token answer (`token_fields`: Salesforce's `instance_url`) and of a metadata
endpoint read with the new token (`metadata_url` + `metadata_fields`: Mailchimp's `dc`, Jira's
`cloudid`); they are kept across refreshes. Token endpoints are
the operator's or the catalogue's URLs, not users': they are called without the SSRF guard,
but with a timeout and a cap on what is read.
"""

import base64
import hashlib
import json
import logging
import secrets
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal
from urllib.parse import parse_qsl, quote_plus, urlencode

import httpx
from sqlalchemy.orm import Session

from flowmaestro_dagster.errors import (
    Conflict,
    FlowMaestroError,
    InvalidRequest,
    PlatformError,
    Unprocessable,
)
from flowmaestro_dagster.settings import OAuthClientSettings, Settings
from flowmaestro_dagster.store.connections import (
    REFRESH_MARGIN_SECONDS,
    ConnectionCipher,
    RefreshFailed,
    UnreadableCredentials,
    catalogue_entry,
    check_name,
    check_provider,
    clear_default,
    create_connection,
    find_connection,
    get_connection,
    locked_connection,
    normalise_provider,
    read_credentials,
    store_credentials,
)
from flowmaestro_dagster.store.db import get_engine
from flowmaestro_dagster.store.models import ProviderConnection, User, utcnow

log = logging.getLogger(__name__)

CALLBACK_PATH = "/connections/oauth/callback"
STATE_PURPOSE = "oauth2-state"
STATE_TTL_SECONDS = 600
"""How long a user has to consent at the provider before the state expires."""
TOKEN_TIMEOUT_S = 10.0
"""One token, refresh or revocation request (a refresh holds the connection's lock meanwhile)."""
MAX_TOKEN_RESPONSE_BYTES = 64 * 1024
MAX_SCOPES = 50
_REFUSING_GRANTS = frozenset({"invalid_grant"})
"""Token errors that say the refresh token is dead: the user must authorize again."""


class ProviderUnavailable(PlatformError, status=502, code="provider_unavailable"):
    """The provider's OAuth2 endpoint did not answer as expected."""


class TokenError(FlowMaestroError):
    """A token endpoint refused a request (`code`: its `error`) or did not answer."""

    def __init__(self, message: str, *, code: str = "", transient: bool = False) -> None:
        super().__init__(message)
        self.code = code
        self.transient = transient


@dataclass(frozen=True)
class OAuthProvider:
    """A provider's OAuth2 endpoints and this deployment's client, settings over catalogue."""

    provider: str
    client_id: str
    client_secret: str | None
    authorize_url: str
    token_url: str
    revoke_url: str | None = None
    scopes: tuple[str, ...] = ()
    extra_authorize_params: Mapping[str, str] = field(default_factory=dict)
    token_auth: Literal["basic", "post"] = "basic"
    pkce: bool = True
    scope_separator: str = " "
    client_id_param: str = "client_id"
    token_fields: Mapping[str, str] = field(default_factory=dict)
    """Connection credential name -> dotted path in the token answer, kept on the connection."""
    metadata_url: str | None = None
    metadata_fields: Mapping[str, str] = field(default_factory=dict)
    metadata_prefix: str = "Bearer "


def _variable(provider: str) -> str:
    return f"FLOWMAESTRO_OAUTH__{provider.upper().replace('-', '_')}"


def client_settings(settings: Settings, provider: str) -> OAuthClientSettings | None:
    """The provider's `FLOWMAESTRO_OAUTH__<PROVIDER>__...` (keys match case and `-`/`_` alike)."""
    wanted = normalise_provider(provider)
    for key, client in settings.oauth.items():
        if normalise_provider(key) == wanted:
            return client
    return None


def oauth_provider(settings: Settings, provider: str) -> OAuthProvider:
    """The provider's OAuth2 configuration; 422 naming what an operator has to set."""
    provider = normalise_provider(provider)
    client = client_settings(settings, provider) or OAuthClientSettings()
    entry = catalogue_entry(provider)
    auth = getattr(entry, "auth", None)
    catalogued = auth is not None and getattr(auth, "scheme", None) == "oauth2"
    variable = _variable(provider)

    def pick(name: str) -> Any:
        value = getattr(client, name, None)
        if value is None and catalogued:
            value = getattr(auth, name, None)
        return value

    authorize_url, token_url = pick("authorize_url"), pick("token_url")
    if not authorize_url or not token_url:
        if auth is not None and not catalogued:
            message = (
                f"{provider} does not use OAuth2 ({getattr(auth, 'scheme', '?')}): create the "
                "connection with POST /connections and its credentials"
            )
        else:
            message = (
                f"no OAuth2 endpoints are known for {provider}: an operator sets "
                f"{variable}__AUTHORIZE_URL and {variable}__TOKEN_URL"
            )
        raise _unprocessable("provider", message)
    if not client.client_id:
        raise _unprocessable(
            "provider",
            f"no OAuth2 client is configured for {provider}: an operator registers one with "
            f"{provider} and sets {variable}__CLIENT_ID and {variable}__CLIENT_SECRET",
        )
    # The catalogue says `client_auth: basic | body`, and whether the provider takes PKCE; a
    # provider known from the settings alone gets RFC 6749's Basic and a PKCE challenge.
    said = getattr(auth, "client_auth", None) if catalogued else None
    token_auth = client.token_auth or ("post" if said in ("body", "post") else "basic")
    if client.pkce is not None:
        pkce = client.pkce
    else:
        pkce = bool(getattr(auth, "pkce", False)) if catalogued else True
    extra = getattr(auth, "extra_authorize_params", None) if catalogued else None

    def said_map(name: str) -> dict[str, str]:
        value = getattr(auth, name, None) if catalogued else None
        return {str(k): str(v) for k, v in (value or {}).items()}

    return OAuthProvider(
        provider=provider,
        client_id=client.client_id,
        client_secret=client.resolved_client_secret(),
        authorize_url=str(authorize_url),
        token_url=str(token_url),
        revoke_url=str(pick("revoke_url")) if pick("revoke_url") else None,
        scopes=tuple(pick("scopes") or ()),
        extra_authorize_params={str(k): str(v) for k, v in (extra or {}).items()},
        token_auth="post" if token_auth == "post" else "basic",
        pkce=bool(pkce),
        scope_separator=str(getattr(auth, "scope_separator", None) or " "),
        client_id_param=str(
            (getattr(auth, "client_id_param", None) if catalogued else None) or "client_id"
        ),
        token_fields=said_map("token_fields"),
        metadata_url=(getattr(auth, "metadata_url", None) if catalogued else None),
        metadata_fields=said_map("metadata_fields"),
        metadata_prefix=str(
            (getattr(auth, "metadata_prefix", None) if catalogued else None) or "Bearer "
        ),
    )


def _unprocessable(field_name: str, message: str) -> Unprocessable:
    problem = {"code": "invalid_field", "field": field_name, "message": message}
    return Unprocessable(message, problems=[problem])


def redirect_uri(settings: Settings) -> str:
    """Where providers send the user back: the same in the authorization and token requests."""
    return settings.public_api_url.rstrip("/") + CALLBACK_PATH


# -- 1. the authorization URL ------------------------------------------------------------------


@dataclass(frozen=True)
class AuthorizationRequest:
    authorization_url: str
    state: str
    expires_at: datetime


def _challenge(verifier: str) -> str:
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).decode("ascii").rstrip("=")


def _check_scopes(scopes: Sequence[str] | None) -> list[str] | None:
    if scopes is None:
        return None
    if len(scopes) > MAX_SCOPES:
        raise _unprocessable("scopes", f"at most {MAX_SCOPES} scopes")
    for scope in scopes:
        if not scope or len(scope) > 200 or any(c.isspace() for c in scope):
            raise _unprocessable("scopes", f"not a scope: {scope[:50]!r}")
    return list(scopes)


def start_authorization(
    session: Session,
    *,
    settings: Settings,
    cipher: ConnectionCipher,
    user_id: str,
    provider: str,
    name: str,
    is_default: bool | None = None,
    scopes: Sequence[str] | None = None,
) -> AuthorizationRequest:
    """The URL the user opens to let FlowMaestro use their `provider` account as connection
    `name` (a name of theirs already used by another provider's or a non-OAuth2 connection is
    a 409 now rather than after the consent)."""
    provider = check_provider(provider)
    name = check_name(name)
    wanted_scopes = _check_scopes(scopes)
    oauth = oauth_provider(settings, provider)
    existing = find_connection(session, owner_id=user_id, name=name)
    if existing is not None and (existing.provider != provider or existing.auth_type != "oauth2"):
        raise Conflict(f"you already have a connection named {name!r} ({existing.provider})")
    verifier = secrets.token_urlsafe(48) if oauth.pkce else None
    state = cipher.seal(
        STATE_PURPOSE,
        {
            "user": user_id,
            "provider": provider,
            "name": name,
            "verifier": verifier,
            "default": is_default,
            "scopes": wanted_scopes,
            "nonce": secrets.token_urlsafe(8),
        },
    )
    chosen = wanted_scopes if wanted_scopes is not None else list(oauth.scopes)
    params: dict[str, str] = {
        "response_type": "code",
        oauth.client_id_param: oauth.client_id,
        "redirect_uri": redirect_uri(settings),
        "state": state,
    }
    if chosen:
        params["scope"] = oauth.scope_separator.join(chosen)
    if verifier is not None:
        params["code_challenge"] = _challenge(verifier)
        params["code_challenge_method"] = "S256"
    for key, value in oauth.extra_authorize_params.items():
        params.setdefault(key, value)
    joiner = "&" if "?" in oauth.authorize_url else "?"
    return AuthorizationRequest(
        authorization_url=oauth.authorize_url + joiner + urlencode(params),
        state=state,
        expires_at=utcnow() + timedelta(seconds=STATE_TTL_SECONDS),
    )


# -- 2. the callback ---------------------------------------------------------------------------


def complete_authorization(
    session: Session,
    *,
    settings: Settings,
    cipher: ConnectionCipher,
    code: str | None,
    state: str | None,
    error: str | None = None,
    error_description: str | None = None,
) -> ProviderConnection:
    """The connection the provider's answer makes: 400 for a state that is missing, forged or
    expired, or a provider's refusal; the tokens stored encrypted."""
    payload = cipher.unseal(STATE_PURPOSE, state or "", ttl_seconds=STATE_TTL_SECONDS)
    if payload is None:
        raise InvalidRequest(
            "the authorization state is missing, invalid or expired (an authorization is good "
            f"for {STATE_TTL_SECONDS // 60} minutes): start again with "
            "POST /connections/oauth/{provider}/authorize"
        )
    provider, name = str(payload["provider"]), str(payload["name"])
    if error:
        said = f"{error}: {error_description}" if error_description else error
        raise InvalidRequest(f"{provider} did not authorize connection {name!r}: {said[:300]}")
    if not code:
        raise InvalidRequest("the callback carries no authorization code")
    user = session.get(User, str(payload["user"]))
    if user is None:
        raise InvalidRequest("the user who started this authorization no longer exists")
    oauth = oauth_provider(settings, provider)
    form = {
        "grant_type": "authorization_code",
        "code": code,
        "redirect_uri": redirect_uri(settings),
    }
    if payload.get("verifier"):
        form["code_verifier"] = str(payload["verifier"])
    try:
        tokens = _token_request(oauth, form)
    except TokenError as exc:
        if exc.transient:
            raise ProviderUnavailable(str(exc)) from None
        raise InvalidRequest(f"{provider} refused the authorization code: {exc}") from None
    credentials = _credentials(tokens, {}, oauth)
    try:
        credentials.update(_metadata(oauth, credentials["access_token"]))
    except TokenError as exc:
        raise ProviderUnavailable(str(exc)) from None
    granted = _granted_scopes(tokens, oauth, payload.get("scopes"))
    expires_at = _expiry(tokens)
    label = _account_label(tokens)
    is_default = payload.get("default")
    existing = find_connection(session, owner_id=user.id, name=name)
    if existing is None:
        return create_connection(
            session,
            cipher=cipher,
            owner_id=user.id,
            provider=provider,
            name=name,
            credentials=credentials,
            auth_type="oauth2",
            scopes=granted,
            account_label=label,
            token_expires_at=expires_at,
            is_default=is_default if isinstance(is_default, bool) else None,
        )
    if existing.provider != provider or existing.auth_type != "oauth2":
        raise Conflict(f"you already have a connection named {name!r} ({existing.provider})")
    store_credentials(existing, cipher=cipher, credentials=credentials, token_expires_at=expires_at)
    existing.scopes = granted
    existing.account_label = label or existing.account_label
    existing.refreshed_at = utcnow()
    if is_default is True and not existing.is_default:
        clear_default(session, user.id, provider)
        existing.is_default = True
    session.flush()
    return existing


def _credentials(
    tokens: Mapping[str, Any], previous: Mapping[str, str], oauth: OAuthProvider | None = None
) -> dict[str, str]:
    """What is kept of a token response: the tokens (a refresh answer without a new refresh
    token keeps the old one) and the provider's declared extras (`token_fields`; the ones
    the answer leaves out, and those from its metadata endpoint, are kept from before)."""
    credentials = {"access_token": str(tokens["access_token"])}
    refresh_token = tokens.get("refresh_token") or previous.get("refresh_token")
    if refresh_token:
        credentials["refresh_token"] = str(refresh_token)
    token_type = tokens.get("token_type") or previous.get("token_type")
    if token_type:
        credentials["token_type"] = str(token_type)
    if oauth is None:
        return credentials
    for name in oauth.metadata_fields:
        if previous.get(name):
            credentials[name] = previous[name]
    for name, path in oauth.token_fields.items():
        value = _walk(tokens, path)
        if isinstance(value, str | int | float) and not isinstance(value, bool) and value != "":
            credentials[name] = str(value)
        elif previous.get(name):
            credentials[name] = previous[name]
    return credentials


def _walk(data: Any, path: str) -> Any:
    """`a.0.b` into JSON (None when a step is missing)."""
    for part in path.split("."):
        if isinstance(data, Mapping):
            data = data.get(part)
        elif isinstance(data, list) and part.isdigit() and int(part) < len(data):
            data = data[int(part)]
        else:
            return None
    return data


def _metadata(oauth: OAuthProvider, access_token: str) -> dict[str, str]:
    """The declared fields of the provider's metadata endpoint, read with the new token
    (Mailchimp's data center, Jira's cloud id); TokenError when it does not answer them."""
    if not oauth.metadata_url or not oauth.metadata_fields:
        return {}
    headers = {"Accept": "application/json", "Authorization": oauth.metadata_prefix + access_token}
    deadline = time.monotonic() + TOKEN_TIMEOUT_S
    try:
        with (
            httpx.Client(timeout=TOKEN_TIMEOUT_S, follow_redirects=False) as client,
            client.stream("GET", oauth.metadata_url, headers=headers) as response,
        ):
            body = _read_capped(response, deadline)
            status = response.status_code
    except httpx.HTTPError as exc:
        raise TokenError(
            f"{oauth.provider}'s metadata endpoint did not answer ({type(exc).__name__})",
            transient=True,
        ) from None
    try:
        data = json.loads(body.decode("utf-8", errors="replace"))
    except ValueError:
        data = None
    found: dict[str, str] = {}
    for name, path in oauth.metadata_fields.items():
        value = _walk(data, path)
        if isinstance(value, str | int | float) and not isinstance(value, bool) and value != "":
            found[name] = str(value)
    missing = sorted(set(oauth.metadata_fields) - set(found))
    if status >= 400 or missing:
        raise TokenError(
            f"{oauth.provider}'s metadata endpoint answered HTTP {status} without "
            f"{', '.join(missing) or 'what was asked'}"
        )
    return found


def _granted_scopes(tokens: Mapping[str, Any], oauth: OAuthProvider, requested: Any) -> list[str]:
    granted = tokens.get("scope")
    if isinstance(granted, str) and granted.strip():
        return [s for s in granted.replace(",", " ").split() if s]
    if isinstance(requested, list):
        return [str(s) for s in requested]
    return list(oauth.scopes)


def _expiry(tokens: Mapping[str, Any]) -> datetime | None:
    raw = tokens.get("expires_in")
    try:
        seconds = int(raw) if raw is not None and raw != "" else None
    except (TypeError, ValueError):
        return None
    return utcnow() + timedelta(seconds=seconds) if seconds and seconds > 0 else None


def _account_label(tokens: Mapping[str, Any]) -> str | None:
    """Which account the tokens are for, when the token response says (Notion, Slack)."""
    team = tokens.get("team")
    for value in (
        tokens.get("workspace_name"),
        team.get("name") if isinstance(team, dict) else None,
        tokens.get("email"),
    ):
        if isinstance(value, str) and value.strip():
            return value.strip()[:200]
    return None


# -- 3. refresh --------------------------------------------------------------------------------


def refresh_connection(
    *,
    settings: Settings,
    database_url: str,
    cipher: ConnectionCipher,
    connection_id: str,
    stale_token: str | None,
    margin_seconds: float = REFRESH_MARGIN_SECONDS,
) -> dict[str, str]:
    """The connection's credentials with a fresh access token (store.connections.Refresher).

    `stale_token` None: refresh if the token expires within the margin; a token: the provider
    refused it, refresh unless the stored one is another (someone refreshed meanwhile). Raises
    RefreshFailed (transient when the token endpoint did not answer)."""
    failure: RefreshFailed | None = None
    fresh: dict[str, str] = {}
    with locked_connection(get_engine(database_url), connection_id) as row:
        if row is None:
            raise RefreshFailed("the connection was deleted")
        try:
            credentials = read_credentials(cipher, row)
        except UnreadableCredentials as exc:
            raise RefreshFailed(str(exc)) from None
        current = credentials.get("access_token")
        if stale_token is None:
            expires = row.token_expires_at
            if expires is None or expires - utcnow() >= timedelta(seconds=margin_seconds):
                return credentials
        elif current and current != stale_token:
            return credentials
        refresh_token = credentials.get("refresh_token")
        if not refresh_token:
            raise RefreshFailed(
                f"{row.provider} gave connection {row.name!r} no refresh token: authorize it again"
            )
        try:
            oauth = oauth_provider(settings, row.provider)
        except Unprocessable as exc:
            raise RefreshFailed(exc.detail) from None
        try:
            tokens = _token_request(
                oauth, {"grant_type": "refresh_token", "refresh_token": refresh_token}
            )
        except TokenError as exc:
            if exc.code in _REFUSING_GRANTS:
                row.status = "needs_reauth"
                row.updated_at = utcnow()
            failure = RefreshFailed(
                f"{row.provider} refused to refresh connection {row.name!r}: {exc}",
                transient=exc.transient,
            )
        else:
            fresh = _credentials(tokens, credentials, oauth)
            store_credentials(
                row, cipher=cipher, credentials=fresh, token_expires_at=_expiry(tokens)
            )
            row.refreshed_at = utcnow()
    if failure is not None:  # raised after the block: a needs_reauth mark is committed
        raise failure
    return fresh


# -- 4. revocation and deletion ----------------------------------------------------------------


def revoke_tokens(settings: Settings, provider: str, credentials: Mapping[str, str]) -> bool:
    """Revoke the connection's grant at the provider (RFC 7009: the refresh token, which
    revokes the access tokens made from it, else the access token). False when the provider
    has no revocation endpoint or it did not confirm; never raises."""
    token = credentials.get("refresh_token") or credentials.get("access_token")
    if not token:
        return False
    try:
        oauth = oauth_provider(settings, provider)
    except Unprocessable:
        return False
    if not oauth.revoke_url:
        return False
    hint = "refresh_token" if credentials.get("refresh_token") else "access_token"
    try:
        status, _ = _post_form(oauth, oauth.revoke_url, {"token": token, "token_type_hint": hint})
    except TokenError as exc:
        log.warning("revoking a %s connection's tokens failed: %s", provider, exc)
        return False
    if status >= 300:
        log.warning("%s's revocation endpoint answered %s", provider, status)
    return status < 300


def delete_connection(
    session: Session,
    *,
    settings: Settings,
    cipher: ConnectionCipher,
    owner_id: str,
    connection_id: str,
) -> bool:
    """Delete the owner's connection, first revoking its OAuth2 grant when the provider can;
    True if the provider confirmed the revocation. The connection goes either way."""
    row = get_connection(session, owner_id=owner_id, connection_id=connection_id)
    revoked = False
    if row.auth_type == "oauth2":
        try:
            credentials = read_credentials(cipher, row)
        except UnreadableCredentials:
            credentials = {}
        revoked = revoke_tokens(settings, row.provider, credentials)
    session.delete(row)
    session.flush()
    return revoked


# -- the token endpoint ------------------------------------------------------------------------


def _post_form(
    oauth: OAuthProvider, url: str, form: Mapping[str, str]
) -> tuple[int, dict[str, Any]]:
    """POST a form with the client's credentials; (status, body as an object), the body read
    up to MAX_TOKEN_RESPONSE_BYTES within TOKEN_TIMEOUT_S."""
    data = dict(form)
    auth: httpx.BasicAuth | None = None
    if oauth.client_secret is not None and oauth.token_auth == "basic":
        # RFC 6749 2.3.1: both form-encoded, then Basic.
        auth = httpx.BasicAuth(quote_plus(oauth.client_id), quote_plus(oauth.client_secret))
    else:
        data[oauth.client_id_param] = oauth.client_id
        if oauth.client_secret is not None:
            data["client_secret"] = oauth.client_secret
    deadline = time.monotonic() + TOKEN_TIMEOUT_S
    try:
        with (
            httpx.Client(timeout=TOKEN_TIMEOUT_S, follow_redirects=False) as client,
            client.stream(
                "POST", url, data=data, auth=auth, headers={"Accept": "application/json"}
            ) as response,
        ):
            body = _read_capped(response, deadline)
            status = response.status_code
            content_type = response.headers.get("content-type", "")
    except httpx.HTTPError as exc:
        raise TokenError(
            f"{oauth.provider}'s OAuth2 endpoint did not answer ({type(exc).__name__})",
            transient=True,
        ) from None
    return status, _parse(body, content_type)


def _read_capped(response: httpx.Response, deadline: float) -> bytes:
    declared = response.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_TOKEN_RESPONSE_BYTES:
        raise TokenError(f"the token response is over {MAX_TOKEN_RESPONSE_BYTES} bytes")
    chunks, size = [], 0
    for chunk in response.iter_bytes():
        size += len(chunk)
        if size > MAX_TOKEN_RESPONSE_BYTES:
            raise TokenError(f"the token response is over {MAX_TOKEN_RESPONSE_BYTES} bytes")
        if time.monotonic() > deadline:
            raise httpx.ReadTimeout("the token response took longer than the timeout")
        chunks.append(chunk)
    return b"".join(chunks)


def _parse(body: bytes, content_type: str) -> dict[str, Any]:
    """JSON, or a form (some providers answer `application/x-www-form-urlencoded`)."""
    text = body.decode("utf-8", errors="replace")
    if "form-urlencoded" not in content_type:
        try:
            data = json.loads(text)
        except ValueError:
            data = None
        if isinstance(data, dict):
            return data
    return dict(parse_qsl(text)) if "=" in text else {}


def _token_request(oauth: OAuthProvider, form: Mapping[str, str]) -> dict[str, Any]:
    status, body = _post_form(oauth, oauth.token_url, form)
    refused = status >= 400 or body.get("ok") is False  # Slack answers 200 {"ok": false}
    if refused or not isinstance(body.get("access_token"), str):
        code = str(body.get("error") or "")[:100]
        description = str(body.get("error_description") or body.get("message") or "")[:300]
        said = ": ".join(part for part in (code, description) if part)
        if not refused:
            said = "the token response has no access_token"
        raise TokenError(
            f"{said or 'refused'} (HTTP {status})",
            code=code,
            transient=status == 429 or status >= 500,
        )
    return body


__all__ = [
    "CALLBACK_PATH",
    "STATE_TTL_SECONDS",
    "AuthorizationRequest",
    "OAuthProvider",
    "ProviderUnavailable",
    "TokenError",
    "client_settings",
    "complete_authorization",
    "delete_connection",
    "oauth_provider",
    "redirect_uri",
    "refresh_connection",
    "revoke_tokens",
    "start_authorization",
]
