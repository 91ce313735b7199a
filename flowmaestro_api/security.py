"""API keys: random, shown once, stored as SHA-256; the user of a request comes from its key
(remembered for a few seconds in each API process: `KeyCache`)."""

import hashlib
import hmac
import secrets
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session, make_transient_to_detached

from flowmaestro_api.errors import Unauthenticated
from flowmaestro_dagster.store.models import ApiKey, User, utcnow

KEY_PREFIX = "fm"
_TOUCH_EVERY = timedelta(minutes=1)


def hash_key(raw: str) -> str:
    return hashlib.sha256(raw.encode()).hexdigest()


def generate_key() -> tuple[str, str]:
    """(the key to show once, its lookup prefix)."""
    prefix = secrets.token_hex(6)
    return f"{KEY_PREFIX}_{prefix}_{secrets.token_urlsafe(32)}", prefix


def ensure_user(session: Session, *, email: str, name: str = "") -> User:
    user = session.scalar(select(User).where(User.email == email))
    if user is None:
        user = User(email=email, name=name or email.split("@", maxsplit=1)[0])
        session.add(user)
        session.flush()
    return user


def create_api_key(session: Session, *, user: User, name: str = "") -> str:
    raw, prefix = generate_key()
    session.add(ApiKey(user_id=user.id, prefix=prefix, key_hash=hash_key(raw), name=name))
    session.flush()
    return raw


def authenticate(session: Session, raw: str | None) -> User:
    if not raw:
        raise Unauthenticated("send an API key as 'Authorization: Bearer <key>' or 'X-API-Key'")
    parts = raw.strip().split("_", 2)
    if len(parts) != 3 or parts[0] != KEY_PREFIX:
        raise Unauthenticated("malformed API key")
    key = session.scalar(select(ApiKey).where(ApiKey.prefix == parts[1]))
    if (
        key is None
        or key.revoked_at is not None
        or not hmac.compare_digest(key.key_hash, hash_key(raw.strip()))
    ):
        raise Unauthenticated("unknown or revoked API key")
    now = utcnow()
    last = key.last_used_at
    if (
        last is None
        or now - (last if last.tzinfo else last.replace(tzinfo=now.tzinfo)) > _TOUCH_EVERY
    ):
        key.last_used_at = now
    return key.user


@dataclass(frozen=True)
class _Known:
    """A key's user as authenticated, and until when (monotonic seconds) that holds."""

    user_id: str
    email: str
    name: str
    created_at: datetime
    until: float


class KeyCache:
    """The users of API keys authenticated in the last `ttl` seconds, by the key's SHA-256
    (FLOWMAESTRO_API_KEY_CACHE_SECONDS; 0: off), at most `size` keys (least recently used
    first out): a request with a known key reads nothing from the database, where every
    request otherwise paid a SELECT of its key and one of its user.

    No API endpoint revokes a key (`revoked_at` is set in the database): a revoked key keeps
    working in a process that knew it for at most `ttl` seconds; `forget` drops one at once.
    `last_used_at` is still touched, when an entry is made (at least once a minute of use, as
    `authenticate` does). Only successes are kept: a new key works at once. The lock is held
    for dictionary work only, never across I/O."""

    def __init__(self, ttl: float, size: int = 4096) -> None:
        self.ttl = ttl
        self.size = size
        self._known: OrderedDict[str, _Known] = OrderedDict()
        self._lock = threading.Lock()

    def user(self, raw: str | None) -> User | None:
        """The key's user if it was authenticated less than `ttl` seconds ago, else None: a
        new User object each time (detached: requests share no ORM instance)."""
        if not raw or self.ttl <= 0:
            return None
        digest = hash_key(raw.strip())
        with self._lock:
            known = self._known.get(digest)
            if known is None:
                return None
            if known.until <= time.monotonic():
                del self._known[digest]
                return None
            self._known.move_to_end(digest)
        return _detached(known)

    def remember(self, raw: str, user: User) -> User:
        """Keep `user` as the key's for `ttl` seconds; a detached copy of it."""
        known = _Known(user.id, user.email, user.name, user.created_at, time.monotonic() + self.ttl)
        if self.ttl > 0:
            digest = hash_key(raw.strip())
            with self._lock:
                self._known[digest] = known
                self._known.move_to_end(digest)
                while len(self._known) > self.size:
                    self._known.popitem(last=False)
        return _detached(known)

    def forget(self, raw: str) -> None:
        """Drop a key (revoked): its next request is authenticated against the database."""
        with self._lock:
            self._known.pop(hash_key(raw.strip()), None)


def _detached(known: _Known) -> User:
    user = User(id=known.user_id, email=known.email, name=known.name, created_at=known.created_at)
    make_transient_to_detached(user)  # a persistent row's copy: never INSERTed if added
    return user
