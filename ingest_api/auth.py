"""Bearer-key authentication: every /v1 request resolves to exactly one tenant."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from flask import current_app, g, request
from flask_smorest import abort
from psycopg_pool import ConnectionPool

from ingest_api.api_keys import key_digest
from shared.queries import QUERIES


@dataclass(frozen=True)
class Tenant:
    id: uuid.UUID
    name: str
    sender_domains: tuple[str, ...]


def _bearer_key() -> str:
    header = request.headers.get("Authorization", "")
    scheme, _, key = header.partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        abort(
            401,
            message="send 'Authorization: Bearer <api key>'",
            headers={"WWW-Authenticate": "Bearer"},
        )
    return key.strip()


def current_tenant() -> Tenant:
    """The tenant of the request's API key, looked up once per request."""
    if "tenant" not in g:
        pool: ConnectionPool = current_app.extensions["mailroom.pool"]
        with pool.connection() as conn:
            row = conn.execute(
                QUERIES["find_tenant_by_key_hash"], {"key_hash": key_digest(_bearer_key())}
            ).fetchone()
        if row is None:
            abort(401, message="unknown or revoked API key", headers={"WWW-Authenticate": "Bearer"})
        g.tenant = Tenant(row["id"], row["name"], tuple(row["sender_domains"]))
    tenant: Tenant = g.tenant
    return tenant
