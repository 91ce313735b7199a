"""The connections store: users' provider connections, their secrets encrypted at rest.

A connection belongs to its owner: every read and write here names the owner, and another
owner's connection is answered like one that does not exist. Its credentials (an object of
strings: `api_key`, `token`, `password`, OAuth2's `access_token` and `refresh_token`, ...) are
one Fernet token in the row (`encrypted_credentials`); what is not secret (provider, name,
base_url, scopes, account label, token expiry, the names of the credential keys) is in the
clear, so listing connections never decrypts anything. No API answer carries a secret.

Keys (docs/security.md#connections): `FLOWMAESTRO_CONNECTIONS_KEYS`, comma-separated Fernet
keys; the first encrypts, every one decrypts (`MultiFernet`), so a new key goes first, the
old one stays until `flowmaestro connections rotate-keys` has re-encrypted every row with the
new one (`rotate_keys`). With none set (development), one key is generated once and kept in
DAGSTER_HOME, as `Settings.secret()` keeps the other development secrets.

Nodes reach connections through `ConnectionStore.resolve` (the `connections` service): the
owner's connection by id or name, else the owner's default for the provider, as the
`ConnectionSettings` the connectors read. OAuth2 tokens are refreshed through the `refresher`
the wiring gives it (control/oauth.py), one refresh at a time per connection across processes
(`locked_connection`: `SELECT ... FOR UPDATE` on PostgreSQL, `BEGIN IMMEDIATE` on SQLite).
"""

import hashlib
import json
import logging
import os
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from pydantic import ValidationError
from sqlalchemy import Engine, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from flowmaestro_dagster.errors import Conflict, FlowMaestroError, NotFound, Unprocessable
from flowmaestro_dagster.settings import DEFAULT_HOME, ConnectionSettings, Settings
from flowmaestro_dagster.store.db import get_engine, session_scope
from flowmaestro_dagster.store.models import ProviderConnection, utcnow

log = logging.getLogger(__name__)

KEYS_SETTING = "FLOWMAESTRO_CONNECTIONS_KEYS"
KEY_FILE = ".connections-keys"
"""The development key's file in DAGSTER_HOME (when FLOWMAESTRO_CONNECTIONS_KEYS is unset)."""
REFRESH_MARGIN_SECONDS = 60
"""An OAuth2 access token this close to its expiry is refreshed before a node uses it."""
MAX_CREDENTIALS = 32
MAX_CREDENTIAL_CHARS = 16_384
"""One credential value (a service account's JSON key, a PEM private key fit)."""
MAX_CREDENTIALS_CHARS = 65_536
CREDENTIAL_KEY = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,63}")
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9 _.:-]{0,99}")
# Keys a user may not set: `*_env` would read the servers' environment variables (someone
# else's secrets) into the user's requests; `headers` is not a string.
_REFUSED_KEYS = frozenset({"headers"})
_KEPT_FROM_NODES = frozenset({"refresh_token"})
"""OAuth2 credentials that stay in the store: a connector needs the access token only."""


class UnreadableCredentials(FlowMaestroError):
    """The connection's secrets cannot be decrypted with FLOWMAESTRO_CONNECTIONS_KEYS: the key
    that encrypted them was removed before `flowmaestro connections rotate-keys` ran."""


# -- keys and encryption ----------------------------------------------------------------------


def _home() -> Path:
    return Path(os.environ.get("DAGSTER_HOME") or DEFAULT_HOME)


def connection_keys(settings: Settings) -> list[str]:
    """The Fernet keys, first the one that encrypts: the setting's, else the development file's
    (generated once, readable by this user alone)."""
    if settings.connections_keys is not None:
        raw = settings.connections_keys.get_secret_value()
    else:
        path = _home() / KEY_FILE
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            try:  # exclusive: two processes starting at once keep one key
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            except FileExistsError:
                pass
            else:
                with os.fdopen(fd, "w") as handle:
                    handle.write(Fernet.generate_key().decode())
        raw = path.read_text()
    keys = [part.strip() for part in raw.split(",") if part.strip()]
    if not keys:
        raise ValueError(f"{KEYS_SETTING} holds no key")
    return keys


def key_id(key: str | bytes) -> str:
    """A key's fingerprint (not the key): which key encrypted a row, for rotation."""
    data = key.encode() if isinstance(key, str) else key
    return hashlib.sha256(data).hexdigest()[:16]


class ConnectionCipher:
    """Encrypts credentials (and OAuth2 states) with the first key; decrypts with any."""

    def __init__(self, keys: Sequence[str | bytes]) -> None:
        if not keys:
            raise ValueError(f"{KEYS_SETTING} holds no key")
        fernets = []
        for position, key in enumerate(keys, 1):
            try:
                fernets.append(Fernet(key))
            except (ValueError, TypeError) as exc:
                raise ValueError(
                    f"{KEYS_SETTING}: key {position} is not a Fernet key (32 url-safe base64 "
                    "bytes: `python -c 'from cryptography.fernet import Fernet; "
                    "print(Fernet.generate_key().decode())'`)"
                ) from exc
        self._fernet = MultiFernet(fernets)
        self.key_id = key_id(keys[0])
        self.key_ids = frozenset(key_id(k) for k in keys)

    @classmethod
    def from_settings(cls, settings: Settings) -> "ConnectionCipher":
        return cls(connection_keys(settings))

    def encrypt(self, credentials: Mapping[str, str]) -> str:
        payload = json.dumps(dict(credentials), separators=(",", ":"), sort_keys=True)
        return self._fernet.encrypt(payload.encode()).decode()

    def decrypt(self, token: str) -> dict[str, str]:
        try:
            data = json.loads(self._fernet.decrypt(token.encode()))
        except InvalidToken as exc:
            raise UnreadableCredentials() from exc
        return {str(k): str(v) for k, v in data.items()}

    def rotate(self, token: str) -> str:
        """The same credentials encrypted with the first key (any key may have made `token`)."""
        try:
            return self._fernet.rotate(token.encode()).decode()
        except InvalidToken as exc:
            raise UnreadableCredentials() from exc

    def seal(self, purpose: str, payload: Mapping[str, Any]) -> str:
        """A signed, encrypted, timestamped token of `payload` (an OAuth2 state): its holder
        can neither read nor change it, and `unseal` refuses it once it is older than its ttl."""
        data = json.dumps({"purpose": purpose, **payload}, separators=(",", ":"))
        return self._fernet.encrypt(data.encode()).decode()

    def unseal(self, purpose: str, token: str, *, ttl_seconds: int) -> dict[str, Any] | None:
        """The payload, or None when the token is forged, altered, expired or for another use."""
        try:
            data = json.loads(self._fernet.decrypt(token.encode(), ttl=ttl_seconds))
        except (InvalidToken, ValueError, UnicodeError):
            return None
        if not isinstance(data, dict) or data.pop("purpose", None) != purpose:
            return None
        return data


# -- what users may store ---------------------------------------------------------------------


def normalise_provider(provider: str) -> str:
    """Provider ids as the builder writes them: lower case, `-` (env names hold `_`)."""
    return provider.strip().lower().replace("_", "-")


def known_providers() -> frozenset[str]:
    """The builder's provider ids, the declarative catalogue's and the installed connectors'."""
    from flowmaestro_dagster.nodes.connectors import default_registry
    from flowmaestro_dagster.spec.providers import PROVIDER_IDS

    known = set(PROVIDER_IDS) | {normalise_provider(p) for p in default_registry().providers()}
    known |= {normalise_provider(p) for p in _catalogue()}
    return frozenset(known)


def _catalogue() -> Mapping[str, Any]:
    """The declarative connector catalogue (providers' OAuth2 endpoints and scopes), if any."""
    try:
        from flowmaestro_dagster.nodes.connectors.declarative import catalogue
    except ImportError:
        return {}
    entries: Mapping[str, Any] = catalogue()
    return entries


def catalogue_entry(provider: str) -> Any:
    """The provider's catalogue entry (`.auth.scheme`, `.auth.token_url`, ...), or None."""
    entries = _catalogue()
    wanted = normalise_provider(provider)
    for key, entry in entries.items():
        if normalise_provider(key) == wanted:
            return entry
    return None


def _problem(field: str, message: str) -> dict[str, str]:
    return {"code": "invalid_field", "field": field, "message": message}


def _invalid(problems: list[dict[str, str]]) -> Unprocessable:
    detail = "; ".join(f"{p['field']}: {p['message']}" for p in problems)
    return Unprocessable(f"invalid connection: {detail}", problems=problems)


def _shadows(key: str) -> bool:
    """A name of the settings' own attributes (`secret`, `model_dump`): not a credential."""
    return hasattr(ConnectionSettings, key) and key not in ConnectionSettings.model_fields


def check_credentials(
    credentials: Mapping[str, Any], *, base_url: str | None = None
) -> dict[str, str]:
    """The credentials if a connector can use them (an object of strings within the caps,
    no key a user may not set, fields the connection settings accept); else 422 naming each
    field."""
    problems = []
    if len(credentials) > MAX_CREDENTIALS:
        problems.append(_problem("credentials", f"at most {MAX_CREDENTIALS} keys"))
    total = 0
    for key, value in credentials.items():
        field = f"credentials.{key}"
        if not isinstance(key, str) or not CREDENTIAL_KEY.fullmatch(key):
            problems.append(_problem("credentials", f"key {str(key)[:70]!r} is not a name"))
        elif key.endswith("_env"):
            reason = "names a server environment variable: only operators configure those"
            problems.append(_problem(field, reason))
        elif key == "base_url":
            problems.append(_problem(field, "base_url is a field of the connection, not a secret"))
        elif key in _REFUSED_KEYS or _shadows(key):
            problems.append(_problem(field, "is not a credential a connector reads"))
        if not isinstance(value, str):
            problems.append(_problem(field, "must be a string"))
            continue
        if len(value) > MAX_CREDENTIAL_CHARS:
            problems.append(_problem(field, f"longer than {MAX_CREDENTIAL_CHARS} characters"))
        total += len(value)
    if total > MAX_CREDENTIALS_CHARS:
        problems.append(_problem("credentials", f"more than {MAX_CREDENTIALS_CHARS} characters"))
    if not problems:
        try:
            ConnectionSettings.model_validate({**credentials, "base_url": base_url})
        except ValidationError as exc:
            for err in exc.errors():
                name = ".".join(str(p) for p in err["loc"])
                field = "base_url" if name == "base_url" else f"credentials.{name}"
                problems.append(_problem(field, str(err["msg"])))
    if problems:
        raise _invalid(problems)
    return {str(k): str(v) for k, v in credentials.items()}


def connection_settings(
    row: ProviderConnection, credentials: Mapping[str, str]
) -> ConnectionSettings:
    """What connectors read: the credentials as fields and extras (`secret("api_key")`,
    `secret("access_token")`, ...) and the row's base_url; the refresh token stays here."""
    values: dict[str, Any] = {k: v for k, v in credentials.items() if k not in _KEPT_FROM_NODES}
    return ConnectionSettings.model_validate({**values, "base_url": row.base_url})


# -- the owner's connections ------------------------------------------------------------------


def _conflict(exc: IntegrityError, name: str, provider: str) -> Conflict:
    text = str(exc.orig)
    if "uq_connection_default" in text or "connections.provider" in text:
        return Conflict(
            f"another connection became your default for {provider} at the same time: try again"
        )
    return Conflict(f"you already have a connection named {name!r}")


def clear_default(session: Session, owner_id: str, provider: str) -> None:
    """The owner's default connection for `provider` is one no longer (another becomes it)."""
    session.execute(
        update(ProviderConnection)
        .where(
            ProviderConnection.owner_id == owner_id,
            ProviderConnection.provider == provider,
            ProviderConnection.is_default.is_(True),
        )
        .values(is_default=False, updated_at=utcnow())
    )


def _has_default(session: Session, owner_id: str, provider: str) -> bool:
    found = session.scalar(
        select(ProviderConnection.id).where(
            ProviderConnection.owner_id == owner_id,
            ProviderConnection.provider == provider,
            ProviderConnection.is_default.is_(True),
        )
    )
    return found is not None


def check_provider(provider: str) -> str:
    """The provider id, normalised, if the builder, the catalogue or a connector knows it."""
    normal = normalise_provider(provider)
    if normal not in known_providers():
        raise _invalid([_problem("provider", f"unknown provider {provider!r}")])
    return normal


def check_name(name: str) -> str:
    if not NAME.fullmatch(name):
        raise _invalid(
            [
                _problem(
                    "name",
                    "1-100 letters, digits, spaces or `_.:-`, starting with one of the first two",
                )
            ]
        )
    return name


def create_connection(
    session: Session,
    *,
    cipher: ConnectionCipher,
    owner_id: str,
    provider: str,
    name: str,
    credentials: Mapping[str, str],
    auth_type: str = "credentials",
    base_url: str | None = None,
    scopes: Sequence[str] = (),
    account_label: str | None = None,
    token_expires_at: datetime | None = None,
    is_default: bool | None = None,
) -> ProviderConnection:
    """A new connection of `owner_id`; the first of its provider becomes the default unless
    `is_default` says otherwise, and `is_default=True` takes the default from another."""
    provider = check_provider(provider)
    name = check_name(name)
    credentials = check_credentials(credentials, base_url=base_url)
    if is_default is None:
        is_default = not _has_default(session, owner_id, provider)
    elif is_default:
        clear_default(session, owner_id, provider)
    row = ProviderConnection(
        owner_id=owner_id,
        provider=provider,
        name=name,
        auth_type=auth_type,
        is_default=is_default,
        encrypted_credentials=cipher.encrypt(credentials),
        key_id=cipher.key_id,
        credential_keys=sorted(credentials),
        base_url=base_url,
        scopes=list(scopes),
        account_label=account_label,
        token_expires_at=token_expires_at,
        refreshed_at=utcnow() if auth_type == "oauth2" else None,
        status="active",
    )
    session.add(row)
    try:
        session.flush()
    except IntegrityError as exc:
        session.rollback()
        raise _conflict(exc, name, provider) from None
    return row


def get_connection(session: Session, *, owner_id: str, connection_id: str) -> ProviderConnection:
    """The owner's connection (404 for another owner's: whether it exists is not said)."""
    row = session.scalar(
        select(ProviderConnection).where(
            ProviderConnection.id == connection_id, ProviderConnection.owner_id == owner_id
        )
    )
    if row is None:
        raise NotFound(f"no connection {connection_id} of yours")
    return row


def find_connection(session: Session, *, owner_id: str, name: str) -> ProviderConnection | None:
    return session.scalar(
        select(ProviderConnection).where(
            ProviderConnection.owner_id == owner_id, ProviderConnection.name == name
        )
    )


def list_connections(
    session: Session, *, owner_id: str, provider: str | None = None
) -> Sequence[ProviderConnection]:
    query = select(ProviderConnection).where(ProviderConnection.owner_id == owner_id)
    if provider:
        query = query.where(ProviderConnection.provider == normalise_provider(provider))
    return session.scalars(
        query.order_by(ProviderConnection.created_at, ProviderConnection.id)
    ).all()


def store_credentials(
    row: ProviderConnection,
    *,
    cipher: ConnectionCipher,
    credentials: Mapping[str, str],
    token_expires_at: datetime | None = None,
) -> None:
    """Replace the row's secrets (encrypted with the first key) and what is said about them."""
    row.encrypted_credentials = cipher.encrypt(credentials)
    row.key_id = cipher.key_id
    row.credential_keys = sorted(credentials)
    row.token_expires_at = token_expires_at
    row.status = "active"
    row.updated_at = utcnow()


def replace_credentials(
    session: Session,
    *,
    cipher: ConnectionCipher,
    owner_id: str,
    connection_id: str,
    credentials: Mapping[str, str],
) -> ProviderConnection:
    """New secrets for a connection (a rotated API key): the old ones are gone."""
    row = get_connection(session, owner_id=owner_id, connection_id=connection_id)
    if row.auth_type == "oauth2":
        raise Conflict(
            f"connection {row.name!r} gets its tokens by authorization: authorize it again with "
            f"POST /connections/oauth/{row.provider}/authorize (name {row.name!r})"
        )
    checked = check_credentials(credentials, base_url=row.base_url)
    store_credentials(row, cipher=cipher, credentials=checked)
    session.flush()
    return row


def read_credentials(cipher: ConnectionCipher, row: ProviderConnection) -> dict[str, str]:
    return cipher.decrypt(row.encrypted_credentials)


def rotate_keys(database_url: str, cipher: ConnectionCipher, *, batch: int = 200) -> dict[str, int]:
    """Re-encrypt every connection not yet under the first key with it (MultiFernet.rotate).
    A row a refresh rewrote meanwhile is left as that refresh wrote it (with the first key
    too). Returns {rotated, current, unreadable}: unreadable rows were encrypted with a key no
    longer configured."""
    engine = get_engine(database_url)
    counts = {"rotated": 0, "current": 0, "unreadable": 0}
    after = ""
    while True:
        with session_scope(engine) as session:
            rows = session.execute(
                select(
                    ProviderConnection.id,
                    ProviderConnection.key_id,
                    ProviderConnection.encrypted_credentials,
                )
                .where(ProviderConnection.id > after)
                .order_by(ProviderConnection.id)
                .limit(batch)
            ).all()
            for row_id, row_key, token in rows:
                if row_key == cipher.key_id:
                    counts["current"] += 1
                    continue
                try:
                    rotated = cipher.rotate(token)
                except UnreadableCredentials:
                    counts["unreadable"] += 1
                    continue
                session.execute(
                    update(ProviderConnection)
                    .where(
                        ProviderConnection.id == row_id,
                        ProviderConnection.encrypted_credentials == token,
                    )
                    .values(encrypted_credentials=rotated, key_id=cipher.key_id)
                )
                counts["rotated"] += 1
        if len(rows) < batch:
            return counts
        after = rows[-1][0]


@contextmanager
def locked_connection(engine: Engine, connection_id: str) -> Iterator[ProviderConnection | None]:
    """The connection's row, locked until the block ends (and committed then): one refresh
    at a time per connection, across processes. PostgreSQL locks the row (`SELECT ... FOR
    UPDATE`); SQLite takes the database's write lock (`BEGIN IMMEDIATE`), its finest lock.
    Whoever waited reads the row again here, as the refresh before it left it."""
    if engine.dialect.name == "sqlite":
        with engine.connect() as raw:
            connection = raw.execution_options(isolation_level="AUTOCOMMIT")
            connection.exec_driver_sql("BEGIN IMMEDIATE")
            session = Session(bind=connection, expire_on_commit=False)
            try:
                yield session.get(ProviderConnection, connection_id)
                session.flush()
            except BaseException:
                connection.exec_driver_sql("ROLLBACK")
                raise
            else:
                connection.exec_driver_sql("COMMIT")
            finally:
                session.close()
        return
    with session_scope(engine) as session:
        yield session.scalar(
            select(ProviderConnection)
            .where(ProviderConnection.id == connection_id)
            .with_for_update()
        )


# -- what nodes use ---------------------------------------------------------------------------


class Refresher(Protocol):
    """Refreshes a connection's OAuth2 tokens (control/oauth.py `refresh_connection`): returns
    the fresh credentials, or raises `RefreshFailed`. `stale_token`: the access token a
    provider refused (refresh unless another process already did); None: refresh if the
    token expires within the margin."""

    def __call__(
        self,
        *,
        database_url: str,
        cipher: ConnectionCipher,
        connection_id: str,
        stale_token: str | None,
    ) -> dict[str, str]: ...


class RefreshFailed(FlowMaestroError):
    """A connection's OAuth2 tokens could not be refreshed."""

    def __init__(self, message: str, *, transient: bool = False) -> None:
        super().__init__(message)
        self.transient = transient


@dataclass(frozen=True)
class ResolvedConnection:
    """A node's connection from the store: its name, its settings for the connector, how to
    refresh its OAuth2 token (after a 401), or why it cannot be used (`problem`)."""

    id: str
    name: str
    provider: str
    settings: ConnectionSettings | None
    refresh: Callable[[], ConnectionSettings | None] | None = None
    problem: str | None = None
    transient: bool = False


class ConnectionStore:
    """The `connections` service of run workers: owners' connections as connectors read them."""

    def __init__(
        self,
        database_url: str,
        *,
        cipher: ConnectionCipher | Callable[[], ConnectionCipher],
        refresher: Refresher | None = None,
        refresh_margin_seconds: float = REFRESH_MARGIN_SECONDS,
    ) -> None:
        self.database_url = database_url
        self._cipher = cipher
        self.refresher = refresher
        self.refresh_margin = timedelta(seconds=refresh_margin_seconds)

    @property
    def cipher(self) -> ConnectionCipher:
        """Built at first use: a run that never reads a connection needs no key."""
        if not isinstance(self._cipher, ConnectionCipher):
            self._cipher = self._cipher()
        return self._cipher

    def resolve(
        self, owner_id: str | None, connection_id: str | None, provider: str | None
    ) -> ResolvedConnection | None:
        """The owner's connection named `connection_id` (its id or its name), else the owner's
        default for `provider`; None when the owner has none (or there is no owner: a run
        nobody launched through the API uses the operators' connections alone)."""
        if not owner_id or not (connection_id or provider):
            return None
        query = select(ProviderConnection).where(ProviderConnection.owner_id == owner_id)
        if connection_id:
            query = query.where(
                or_(
                    ProviderConnection.id == connection_id,
                    ProviderConnection.name == connection_id,
                )
            )
        else:
            query = query.where(
                ProviderConnection.provider == normalise_provider(str(provider)),
                ProviderConnection.is_default.is_(True),
            )
        with session_scope(get_engine(self.database_url)) as session:
            rows = session.scalars(query).all()
        if not rows:
            return None
        row = next((r for r in rows if r.id == connection_id), rows[0])
        return self._resolved(row)

    def _resolved(self, row: ProviderConnection) -> ResolvedConnection:
        def unusable(problem: str, transient: bool = False) -> ResolvedConnection:
            return ResolvedConnection(
                row.id, row.name, row.provider, None, problem=problem, transient=transient
            )

        reauthorize = (
            f"authorize it again with POST /connections/oauth/{row.provider}/authorize "
            f"(name {row.name!r})"
        )
        if row.status == "needs_reauth":
            return unusable(f"connection {row.name!r} was refused by {row.provider}: {reauthorize}")
        try:
            credentials = read_credentials(self.cipher, row)
        except UnreadableCredentials as exc:
            return unusable(f"connection {row.name!r}: {exc}")
        if row.auth_type == "oauth2" and self.refresher is not None:
            expires = row.token_expires_at
            if expires is not None and expires - utcnow() < self.refresh_margin:
                try:
                    credentials = self._refresh(row.id, None)
                except RefreshFailed as exc:
                    if expires <= utcnow():  # no token left that could work
                        return unusable(
                            f"connection {row.name!r}: {exc} ({reauthorize} if it persists)",
                            exc.transient,
                        )
                    log.warning("connection %s: early refresh failed: %s", row.id, exc)
        try:
            settings = connection_settings(row, credentials)
        except ValidationError as exc:
            return unusable(f"connection {row.name!r} has invalid credentials: {exc}")
        refresh = None
        if row.auth_type == "oauth2" and self.refresher is not None:
            refresh = self._refresh_after_401(row, credentials.get("access_token"))
        return ResolvedConnection(row.id, row.name, row.provider, settings, refresh=refresh)

    def _refresh(self, connection_id: str, stale_token: str | None) -> dict[str, str]:
        assert self.refresher is not None
        return self.refresher(
            database_url=self.database_url,
            cipher=self.cipher,
            connection_id=connection_id,
            stale_token=stale_token,
        )

    def _refresh_after_401(
        self, row: ProviderConnection, token: str | None
    ) -> Callable[[], ConnectionSettings | None]:
        seen = {"token": token}

        def refresh() -> ConnectionSettings | None:
            """Fresh settings after the provider refused the token; None if there are none."""
            try:
                credentials = self._refresh(row.id, seen["token"] or "")
            except RefreshFailed as exc:
                log.warning("connection %s: refresh after a refusal failed: %s", row.id, exc)
                return None
            seen["token"] = credentials.get("access_token")
            return connection_settings(row, credentials)

        return refresh


__all__ = [
    "KEYS_SETTING",
    "REFRESH_MARGIN_SECONDS",
    "ConnectionCipher",
    "ConnectionStore",
    "RefreshFailed",
    "Refresher",
    "ResolvedConnection",
    "UnreadableCredentials",
    "catalogue_entry",
    "check_credentials",
    "check_name",
    "check_provider",
    "clear_default",
    "connection_keys",
    "connection_settings",
    "create_connection",
    "find_connection",
    "get_connection",
    "key_id",
    "known_providers",
    "list_connections",
    "locked_connection",
    "normalise_provider",
    "read_credentials",
    "replace_credentials",
    "rotate_keys",
    "store_credentials",
]
