"""Fixtures over real services: a fresh database cloned from a migrated template
per test, a Redis key prefix per test, and a real SMTP server per test."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass, replace

import psycopg
import pytest

from shared.config import Settings, parse_smtp_url
from shared.db import connect
from shared.devstack.smtp_sink import SmtpSink
from shared.migrate import migrate
from shared.queries import QUERIES
from tests import services


@pytest.fixture(scope="session")
def template_database() -> Iterator[str]:
    """A database migrated once per session; each test clones it."""
    name = services.unique_name("mailroom_tpl")
    services.create_database(name)
    try:
        with connect(services.database_url_for(name)) as conn:
            migrate(conn)
        yield name
    finally:
        services.drop_database(name)


@pytest.fixture
def database_url(template_database: str) -> Iterator[str]:
    name = services.unique_name("mailroom_t")
    services.create_database(name, template=template_database)
    try:
        yield services.database_url_for(name)
    finally:
        services.drop_database(name)


@pytest.fixture
def db(database_url: str) -> Iterator[psycopg.Connection]:
    with connect(database_url) as conn:
        yield conn


@pytest.fixture
def broker_url() -> str:
    return services.redis_url()


@pytest.fixture
def broker_key_prefix(broker_url: str) -> Iterator[str]:
    prefix = f"mailroom-test-{uuid.uuid4().hex[:12]}:"
    yield prefix
    services.delete_redis_keys(broker_url, prefix)


@pytest.fixture
def smtp_sink() -> Iterator[SmtpSink]:
    sink = SmtpSink().start()
    yield sink
    sink.stop()


@pytest.fixture
def settings(
    database_url: str, broker_url: str, broker_key_prefix: str, smtp_sink: SmtpSink
) -> Settings:
    return Settings(
        database_url=database_url,
        broker_url=broker_url,
        broker_key_prefix=broker_key_prefix,
        smtp=parse_smtp_url(smtp_sink.url),
        message_id_domain="mail.test",
        relay_poll_interval=0.2,
        relay_publish_timeout=2.0,
        db_connect_timeout=2.0,
        db_pool_size=4,
    )


def settings_env(settings: Settings, smtp_url: str | None = None) -> dict[str, str]:
    """The environment a child process needs to load the same settings."""
    env = {
        "MAILROOM_DATABASE_URL": settings.database_url,
        "MAILROOM_BROKER_URL": settings.broker_url,
        "MAILROOM_BROKER_KEY_PREFIX": settings.broker_key_prefix,
        "MAILROOM_MESSAGE_ID_DOMAIN": settings.message_id_domain,
        "MAILROOM_RELAY_POLL_INTERVAL": str(settings.relay_poll_interval),
        "MAILROOM_RELAY_VISIBILITY_TIMEOUT": str(settings.relay_visibility_timeout),
        "MAILROOM_DB_CONNECT_TIMEOUT": str(settings.db_connect_timeout),
    }
    if smtp_url:
        env["MAILROOM_SMTP_URL"] = smtp_url
    return env


@dataclass(frozen=True)
class TenantKey:
    tenant_id: uuid.UUID
    name: str
    key: str


def make_tenant(conn: psycopg.Connection, name: str, domains: list[str]) -> TenantKey:
    """A tenant and an API key, written with the same queries the CLI uses."""
    from ingest_api.api_keys import display_prefix, key_digest, new_api_key  # noqa: PLC0415

    tenant_id = uuid.uuid4()
    key = new_api_key()
    conn.execute(
        QUERIES["insert_tenant"], {"id": tenant_id, "name": name, "sender_domains": domains}
    )
    conn.execute(
        QUERIES["insert_api_key"],
        {
            "id": uuid.uuid4(),
            "tenant_id": tenant_id,
            "key_prefix": display_prefix(key),
            "key_hash": key_digest(key),
        },
    )
    return TenantKey(tenant_id, name, key)


@pytest.fixture
def tenant(db: psycopg.Connection) -> TenantKey:
    return make_tenant(db, "acme", ["example.com"])


@pytest.fixture
def other_tenant(db: psycopg.Connection) -> TenantKey:
    return make_tenant(db, "globex", ["globex.test"])


__all__ = ["TenantKey", "make_tenant", "replace", "settings_env"]
