"""Tenants, their sender domains and their API keys."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from psycopg.rows import class_row, dict_row, scalar_row

from shared.queries import QUERIES
from shared.store import Conflict, Conn, NotFound, StoreError

# (owner: the ingest_api helper)


@dataclass(frozen=True)
class Tenant:
    id: uuid.UUID
    name: str
    sender_domains: tuple[str, ...]


@dataclass(frozen=True)
class ApiKey:
    """An unrevoked key: whose it is and what it may do."""

    id: uuid.UUID
    tenant: Tenant
    scopes: frozenset[str]


def _tenant(row: dict[str, Any]) -> Tenant:
    return Tenant(row["id"], row["name"], tuple(row["sender_domains"]))


def find_api_key(conn: Conn, key_hash: bytes) -> ApiKey | None:
    """The unrevoked key with this digest, with its tenant and scopes; None if there is none."""
    with conn.cursor(row_factory=dict_row) as cursor:
        row = cursor.execute(QUERIES["find_api_key_by_hash"], {"key_hash": key_hash}).fetchone()
    if row is None:
        return None
    return ApiKey(row["key_id"], _tenant(row), frozenset(row["scopes"]))


def find_signing_tenant(conn: Conn, tenant_id: uuid.UUID) -> tuple[Tenant, str | None] | None:
    """The tenant with this id and the webhook secret it signs with (None: it has none)."""
    with conn.cursor(row_factory=dict_row) as cursor:
        row = cursor.execute(
            QUERIES["find_tenant_webhook_secret"], {"tenant_id": tenant_id}
        ).fetchone()
    return None if row is None else (_tenant(row), row["webhook_secret"])


def _tenant_id(conn: Conn, name: str) -> uuid.UUID | None:
    with conn.cursor(row_factory=scalar_row) as cursor:
        found: uuid.UUID | None = cursor.execute(
            QUERIES["find_tenant_by_name"], {"name": name}
        ).fetchone()
    return found


def create_tenant(conn: Conn, name: str, sender_domains: Sequence[str]) -> uuid.UUID:
    """A new tenant that may send from *sender_domains*; Conflict if the name is taken."""
    if _tenant_id(conn, name) is not None:
        raise Conflict(name)
    tenant_id = uuid.uuid4()
    conn.execute(
        QUERIES["insert_tenant"],
        {"id": tenant_id, "name": name, "sender_domains": list(sender_domains)},
    )
    return tenant_id


class AmbiguousTenant(StoreError):
    """The text names one tenant and is another's id."""


@dataclass(frozen=True)
class TenantDomains:
    id: uuid.UUID
    name: str
    sender_domains: list[str]


def change_sender_domains(
    conn: Conn, tenant: str, change: Callable[[list[str]], list[str]]
) -> TenantDomains:
    """Replace the sender domains of *tenant* (its name or id) by ``change(before)``, under
    a lock held until the caller's COMMIT (two changes apply one after the other); run it
    in a transaction. NotFound, or AmbiguousTenant; what *change* raises stops it."""
    with conn.cursor(row_factory=class_row(TenantDomains)) as cursor:
        rows = cursor.execute(QUERIES["lock_tenant_sender_domains"], {"tenant": tenant}).fetchall()
    if not rows:
        raise NotFound(tenant)
    if len(rows) > 1:
        raise AmbiguousTenant(tenant)
    (row,) = rows
    after = change(list(row.sender_domains))
    if after != row.sender_domains:
        conn.execute(QUERIES["set_tenant_sender_domains"], {"id": row.id, "sender_domains": after})
    return TenantDomains(row.id, row.name, after)


def set_webhook_secret(conn: Conn, tenant: str, secret: str) -> uuid.UUID:
    """Give the tenant named *tenant* a new webhook secret; its id. NotFound otherwise."""
    with conn.cursor(row_factory=scalar_row) as cursor:
        tenant_id: uuid.UUID | None = cursor.execute(
            QUERIES["set_webhook_secret"], {"name": tenant, "secret": secret}
        ).fetchone()
    if tenant_id is None:
        raise NotFound(tenant)
    return tenant_id


def create_api_key(
    conn: Conn, tenant: str, *, key_prefix: str, key_hash: bytes, scopes: Sequence[str]
) -> uuid.UUID:
    """Store a new key of the tenant named *tenant* as its digest; NotFound for no such tenant."""
    tenant_id = _tenant_id(conn, tenant)
    if tenant_id is None:
        raise NotFound(tenant)
    key_id = uuid.uuid4()
    conn.execute(
        QUERIES["insert_api_key_with_scopes"],
        {
            "id": key_id,
            "tenant_id": tenant_id,
            "key_prefix": key_prefix,
            "key_hash": key_hash,
            "scopes": list(scopes),
        },
    )
    return key_id


@dataclass(frozen=True)
class ApiKeyListing:
    """A key as listings show it (never its digest)."""

    key_prefix: str
    scopes: list[str]
    created_at: datetime
    revoked_at: datetime | None


def api_keys_of_tenant(conn: Conn, tenant: str) -> list[ApiKeyListing]:
    """The keys of the tenant named *tenant*, oldest first; NotFound for no such tenant."""
    if _tenant_id(conn, tenant) is None:
        raise NotFound(tenant)
    with conn.cursor(row_factory=class_row(ApiKeyListing)) as cursor:
        return cursor.execute(QUERIES["list_api_keys_of_tenant"], {"tenant": tenant}).fetchall()


@dataclass(frozen=True)
class KeyToRevoke:
    id: uuid.UUID
    key_prefix: str
    created_at: datetime
    revoked_at: datetime | None
    tenant: str  # its name


def api_keys_named(
    conn: Conn, *, key_hash: bytes | None, key_prefix: str | None
) -> list[KeyToRevoke]:
    """The keys a revoke-key argument names (the one with this digest, or all with this
    display prefix), oldest first, revoked ones included."""
    with conn.cursor(row_factory=class_row(KeyToRevoke)) as cursor:
        return cursor.execute(
            QUERIES["find_api_keys_to_revoke"], {"key_hash": key_hash, "key_prefix": key_prefix}
        ).fetchall()


def revoke_api_key(conn: Conn, key_id: uuid.UUID) -> None:
    """Revoke one key; a key already revoked keeps its first revoked_at."""
    conn.execute(QUERIES["revoke_api_key"], {"id": key_id})
