"""Ordered SQL migrations, applied once each, safe when several processes race.

Each file in ``shared/migrations`` runs in its own transaction together with the
row that records it, under a transaction-level advisory lock, so two
``outbox-relay migrate`` at once apply each migration exactly once.

Hand-written, not Alembic or yoyo: plain SQL files and one advisory lock are all we
need, and ``tests/test_migrations.py`` holds their result equal to ``schema.sql``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from importlib import resources

import psycopg

from shared.queries import QUERIES

# An arbitrary constant that names "the mailroom schema" among advisory locks.
MIGRATION_LOCK_KEY = 0x6D61696C726F6F6D  # "mailroom"

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Migration:
    version: str
    sql: str


def available_migrations() -> list[Migration]:
    folder = resources.files("shared").joinpath("migrations")
    files = sorted(
        (entry for entry in folder.iterdir() if entry.name.endswith(".sql")),
        key=lambda entry: entry.name,
    )
    return [Migration(entry.name.removesuffix(".sql"), entry.read_text("utf-8")) for entry in files]


def _applied(conn: psycopg.Connection) -> set[str]:
    conn.execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations ("
        " version text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
    )
    return {row[0] for row in conn.execute(QUERIES["applied_migrations"]).fetchall()}


def migrate(conn: psycopg.Connection) -> list[str]:
    """Apply what is missing; return the versions this call applied."""
    applied_now: list[str] = []
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK_KEY,))
        done = _applied(conn)
        for migration in available_migrations():
            if migration.version in done:
                continue
            log.info("applying migration", extra={"migration": migration.version})
            conn.execute(migration.sql.encode())
            conn.execute(QUERIES["record_migration"], {"version": migration.version})
            applied_now.append(migration.version)
    return applied_now


def pending_migrations(conn: psycopg.Connection) -> list[str]:
    """Versions not yet applied (an empty list means the schema is current)."""
    exists = conn.execute("SELECT to_regclass('schema_migrations') IS NOT NULL").fetchone()
    done: set[str] = set()
    if exists and exists[0]:
        done = {row[0] for row in conn.execute(QUERIES["applied_migrations"]).fetchall()}
    return [m.version for m in available_migrations() if m.version not in done]
