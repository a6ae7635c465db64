"""Bearer-key authentication: every /v1 request resolves to exactly one tenant.

Resolved keys are remembered per process for ``KEY_CACHE_SECONDS``, which saves
a database round trip on every request; a revoked key therefore stops working
within that many seconds.
"""

from __future__ import annotations

import threading
import time
import uuid
from dataclasses import dataclass

from flask import current_app, g, request

from ingest_api.api_keys import key_digest
from ingest_api.errors import refuse
from shared.db import DictPool
from shared.queries import QUERIES

CHALLENGE = {"WWW-Authenticate": "Bearer"}
KEY_CACHE_SECONDS = 10.0
KEY_CACHE_MAX_ENTRIES = 10_000


@dataclass(frozen=True)
class Tenant:
    id: uuid.UUID
    name: str
    sender_domains: tuple[str, ...]


class KeyCache:
    """Known keys (by digest) and their tenants, each for a short while."""

    def __init__(self, ttl: float) -> None:
        self.ttl = ttl
        self._entries: dict[bytes, tuple[float, Tenant]] = {}
        self._lock = threading.Lock()

    def get(self, digest: bytes) -> Tenant | None:
        entry = self._entries.get(digest)
        if entry is None or entry[0] < time.monotonic():
            return None
        return entry[1]

    def put(self, digest: bytes, tenant: Tenant) -> None:
        with self._lock:
            if len(self._entries) >= KEY_CACHE_MAX_ENTRIES:
                self._entries.clear()  # bounded memory; a refill is cheap
            self._entries[digest] = (time.monotonic() + self.ttl, tenant)


def _bearer_key() -> str:
    header = request.headers.get("Authorization", "")
    scheme, _, key = header.partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        refuse(401, "send 'Authorization: Bearer <api key>'", headers=CHALLENGE)
    return key.strip()


def _look_up(digest: bytes) -> Tenant:
    pool: DictPool = current_app.extensions["mailroom.pool"]
    with pool.connection() as conn:
        row = conn.execute(QUERIES["find_tenant_by_key_hash"], {"key_hash": digest}).fetchone()
    if row is None:
        refuse(401, "unknown or revoked API key", headers=CHALLENGE)
    return Tenant(row["id"], row["name"], tuple(row["sender_domains"]))


def current_tenant() -> Tenant:
    """The tenant of the request's API key."""
    if "tenant" not in g:
        cache: KeyCache = current_app.extensions["mailroom.key_cache"]
        digest = key_digest(_bearer_key())
        tenant = cache.get(digest)
        if tenant is None:
            tenant = _look_up(digest)
            cache.put(digest, tenant)
        g.tenant = tenant
    found: Tenant = g.tenant
    return found
