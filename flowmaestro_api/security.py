"""API keys: random, shown once, stored as SHA-256; the user of a request comes from its key."""

import hashlib
import hmac
import secrets
from datetime import timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

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
