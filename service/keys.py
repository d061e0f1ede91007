"""API keys, one or more per lab: created, listed and revoked by ``mcvae keys``.

A key is ``mcvae_<id>_<secret>``: ``id`` (10 hex characters) is public and names the row,
``secret`` is 32 random bytes. Only the sha256 of the whole token is stored: a high-entropy
token needs no slow password hash, and a leaked database reveals no usable key. Comparison is
constant-time.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import re
import secrets
import threading
import time
from dataclasses import dataclass

from sqlalchemy import select, update

from . import db
from .records import ApiKeyRecord, utcnow

LAB_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
TOKEN_PATTERN = re.compile(r"^mcvae_([0-9a-f]{10})_([A-Za-z0-9_-]{20,100})$")


@dataclass(frozen=True)
class KeyInfo:
    id: str
    lab: str
    created_at: dt.datetime
    revoked_at: dt.datetime | None

    @property
    def active(self) -> bool:
        return self.revoked_at is None


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def check_lab(lab: str) -> str:
    if not isinstance(lab, str) or not LAB_PATTERN.match(lab):
        raise ValueError(f"lab: expected 1-64 letters, digits, '.', '_' or '-' (starting with a "
                         f"letter or digit), got {lab!r}")
    return lab


def create_key(lab: str) -> str:
    """Make a key for ``lab`` and return it in plain text: the only time it is ever shown."""
    check_lab(lab)
    key_id = secrets.token_hex(5)
    token = f"mcvae_{key_id}_{secrets.token_urlsafe(32)}"
    with db.session() as s:
        s.add(ApiKeyRecord(id=key_id, lab=lab, digest=_digest(token), created_at=utcnow()))
    return token


def revoke_key(key_id: str) -> bool:
    """Revoke a key by its id (the part after ``mcvae_``, as ``list_keys`` shows it; a whole
    token is accepted too). False if there is no such active key."""
    match = TOKEN_PATTERN.match(key_id or "")
    key_id = match.group(1) if match else key_id
    with db.session() as s:
        done = s.execute(update(ApiKeyRecord)
                         .where(ApiKeyRecord.id == key_id, ApiKeyRecord.revoked_at.is_(None))
                         .values(revoked_at=utcnow()))
    _cache.clear()
    return done.rowcount == 1


def list_keys(lab: str | None = None, include_revoked: bool = False) -> list[KeyInfo]:
    """Keys (never their secrets), oldest first."""
    query = select(ApiKeyRecord).order_by(ApiKeyRecord.created_at, ApiKeyRecord.id)
    if lab is not None:
        query = query.where(ApiKeyRecord.lab == lab)
    if not include_revoked:
        query = query.where(ApiKeyRecord.revoked_at.is_(None))
    with db.session() as s:
        return [KeyInfo(r.id, r.lab, r.created_at, r.revoked_at) for r in s.scalars(query)]


# -- verification (the gateway) ----------------------------------------------------------------
class _Cache:
    """token digest -> (key id, lab, expiry); short-lived, so revocations elsewhere land soon."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._items: dict[str, tuple[str, str, float]] = {}

    def get(self, digest: str) -> tuple[str, str] | None:
        with self._lock:
            item = self._items.get(digest)
            if item is None or item[2] < time.monotonic():
                self._items.pop(digest, None)
                return None
            return item[0], item[1]

    def put(self, digest: str, key_id: str, lab: str, ttl: float) -> None:
        if ttl > 0:
            with self._lock:
                if len(self._items) > 10_000:  # bounded: a flood of keys cannot grow it forever
                    self._items.clear()
                self._items[digest] = (key_id, lab, time.monotonic() + ttl)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()


_cache = _Cache()
_DUMMY_DIGEST = _digest(f"mcvae_{secrets.token_hex(5)}_{secrets.token_urlsafe(32)}")  # matches no token


def verify_key(token: str, cache_seconds: float = 0.0) -> tuple[str, str] | None:
    """(key id, lab) for a valid, unrevoked key; None otherwise."""
    match = TOKEN_PATTERN.match(token or "")
    if not match:
        return None
    digest = _digest(token)
    cached = _cache.get(digest)
    if cached is not None:
        return cached
    # The same work whether or not the id exists: one query for plain columns (no ORM object
    # built for a known id only), and a comparison against a dummy digest for an unknown one,
    # so the answer's timing does not tell a guesser which ids exist.
    with db.session() as s:
        row = s.execute(select(ApiKeyRecord.digest, ApiKeyRecord.lab, ApiKeyRecord.revoked_at)
                        .where(ApiKeyRecord.id == match.group(1))).first()
    same = hmac.compare_digest(row.digest if row is not None else _DUMMY_DIGEST, digest)
    if row is None or row.revoked_at is not None or not same:
        return None
    _cache.put(digest, match.group(1), row.lab, cache_seconds)
    return match.group(1), row.lab
