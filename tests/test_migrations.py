"""The migrations produce the declared schema, once, even when run concurrently."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from importlib import resources

import psycopg
import pytest

from shared.db import connect
from shared.migrate import available_migrations, migrate, pending_migrations
from tests import services
from tests.conftest import TenantKey

CATALOG_QUERIES = {
    "columns": """
        SELECT table_name, column_name, data_type, is_nullable, column_default, is_identity
        FROM information_schema.columns WHERE table_schema = 'public'
          AND table_name <> 'schema_migrations'
        ORDER BY 1, 2""",
    "constraints": """
        SELECT conrelid::regclass::text, conname, pg_get_constraintdef(oid)
        FROM pg_constraint WHERE connamespace = 'public'::regnamespace
          AND conrelid::regclass::text <> 'schema_migrations'
        ORDER BY 1, 2""",
    "indexes": """
        SELECT tablename, indexname, indexdef FROM pg_indexes
        WHERE schemaname = 'public' AND tablename <> 'schema_migrations' ORDER BY 1, 2""",
    "triggers": """
        SELECT event_object_table, trigger_name, event_manipulation, action_timing,
               action_orientation, action_statement
        FROM information_schema.triggers WHERE trigger_schema = 'public' ORDER BY 1, 2, 3""",
    "functions": """
        SELECT proname, pg_get_functiondef(oid) FROM pg_proc
        WHERE pronamespace = 'public'::regnamespace ORDER BY 1""",
}


def catalog(url: str) -> dict[str, list[tuple[object, ...]]]:
    with connect(url) as conn:
        return {name: conn.execute(query).fetchall() for name, query in CATALOG_QUERIES.items()}


@pytest.fixture
def empty_database() -> Iterator[str]:
    name = services.unique_name("mailroom_empty")
    services.create_database(name)
    try:
        yield services.database_url_for(name)
    finally:
        services.drop_database(name)


@pytest.fixture
def declared_database() -> Iterator[str]:
    name = services.unique_name("mailroom_declared")
    services.create_database(name)
    url = services.database_url_for(name)
    try:
        schema = resources.files("shared").joinpath("schema.sql").read_text("utf-8")
        with connect(url) as conn:
            conn.execute(schema.encode())
        yield url
    finally:
        services.drop_database(name)


def test_migrated_schema_equals_declared_schema(
    empty_database: str, declared_database: str
) -> None:
    with connect(empty_database) as conn:
        migrate(conn)
    migrated, declared = catalog(empty_database), catalog(declared_database)
    for part in CATALOG_QUERIES:
        assert migrated[part] == declared[part], part
    assert migrated["columns"], "the comparison saw no tables"


def test_migrate_is_idempotent(empty_database: str) -> None:
    with connect(empty_database) as conn:
        assert pending_migrations(conn) == [m.version for m in available_migrations()]
        first = migrate(conn)
        assert first == [m.version for m in available_migrations()]
        assert migrate(conn) == []
        assert pending_migrations(conn) == []


def test_concurrent_migrations_apply_each_once(empty_database: str) -> None:
    results: list[list[str]] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(4)

    def run() -> None:
        try:
            with connect(empty_database) as conn:
                barrier.wait()
                results.append(migrate(conn))
        except BaseException as exc:  # collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == []
    applied = [version for result in results for version in result]
    assert sorted(applied) == [m.version for m in available_migrations()]
    with connect(empty_database) as conn:
        count = conn.execute("SELECT count(*) FROM schema_migrations").fetchone()
    assert count == (len(available_migrations()),)


def test_events_are_append_only(db: psycopg.Connection, tenant: TenantKey) -> None:
    mail_id = uuid.uuid4()
    db.execute(
        "INSERT INTO mails (id, tenant_id, request, status) VALUES (%s, %s, '{}', 'accepted')",
        (mail_id, tenant.tenant_id),
    )
    db.execute("INSERT INTO mail_events (mail_id, kind) VALUES (%s, 'accepted')", (mail_id,))
    with pytest.raises(psycopg.errors.RaiseException, match="append-only"):
        db.execute("UPDATE mail_events SET kind = 'sent'")
    with pytest.raises(psycopg.errors.RaiseException, match="append-only"):
        db.execute("DELETE FROM mail_events")
    assert db.execute("SELECT kind FROM mail_events").fetchall() == [("accepted",)]


def test_a_mail_stored_with_an_unreadable_expiry_is_readable_after_migrating(
    empty_database: str,
) -> None:
    """Before dates were bounded, "9999-12-31T23:59:59-14:00" was stored as the year
    10000, which Python cannot read: every read of the mail failed."""
    before, after = [m for m in available_migrations() if m.version.startswith("0009")], []
    assert before, "the migration exists"
    with connect(empty_database) as conn:
        for migration in available_migrations():
            if not migration.version.startswith("0009"):
                conn.execute(migration.sql.encode())
        tenant_id, mail_id = uuid.uuid4(), uuid.uuid4()
        conn.execute(
            "INSERT INTO tenants (id, name, sender_domains) VALUES (%s, 't', '{example.com}')",
            (tenant_id,),
        )
        conn.execute(
            "INSERT INTO mails (id, tenant_id, status, request, expires_at)"
            " VALUES (%s, %s, 'accepted', '{}', '9999-12-31T23:59:59-14:00')",
            (mail_id, tenant_id),
        )
        with pytest.raises(psycopg.DataError):
            conn.execute("SELECT expires_at FROM mails").fetchone()
        conn.execute(before[0].sql.encode())
        after = conn.execute("SELECT expires_at FROM mails WHERE id = %s", (mail_id,)).fetchall()
    assert after == [(None,)]
