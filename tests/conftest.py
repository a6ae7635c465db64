"""Fixtures over real services: a fresh database cloned from a migrated template
per test, a Redis key prefix per test, and a real SMTP server per test."""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import psycopg
import pytest
from click.testing import CliRunner, Result
from flask import Flask
from flask.testing import FlaskClient

from ingest_api.app import create_app
from mail_worker.smtp import SmtpClient
from outbox_relay.cli import cli
from outbox_relay.publish import Publisher
from shared.config import Settings, parse_networks, parse_smtp_url
from shared.db import DictPool, connect, create_pool
from shared.devstack.smtp_sink import SmtpSink
from shared.migrate import migrate
from shared.queries import QUERIES
from tests import services
from tests.processes import Processes
from tests.webhook_support import Receiver


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
        # Webhook receivers in tests listen on loopback, which is otherwise refused.
        webhook_allow_networks=parse_networks("127.0.0.0/8,::1/128"),
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
        "MAILROOM_RELAY_METRICS_PORT": "0",  # tests run several relays on one machine
        "MAILROOM_WEBHOOK_ALLOW_NETWORKS": ",".join(map(str, settings.webhook_allow_networks)),
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
        QUERIES["insert_api_key_with_scopes"],
        {
            "id": uuid.uuid4(),
            "tenant_id": tenant_id,
            "key_prefix": display_prefix(key),
            "key_hash": key_digest(key),
            "scopes": ["send", "read"],
        },
    )
    return TenantKey(tenant_id, name, key)


@pytest.fixture
def tenant(db: psycopg.Connection) -> TenantKey:
    return make_tenant(db, "acme", ["example.com"])


@pytest.fixture
def other_tenant(db: psycopg.Connection) -> TenantKey:
    return make_tenant(db, "globex", ["globex.com"])


def make_app(settings: Settings) -> Flask:
    """The API app over a test's database, with its pool ready."""
    app = create_app({"MAILROOM_SETTINGS": settings, "TESTING": True})
    app.extensions["mailroom.pool"].wait(timeout=10)
    return app


@pytest.fixture
def app(settings: Settings) -> Iterator[Flask]:
    app = make_app(settings)
    yield app
    app.extensions["mailroom.pool"].close()


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


__all__ = ["TenantKey", "make_app", "make_tenant", "replace", "settings_env"]


@pytest.fixture
def rabbitmq_url() -> Iterator[str]:
    """A fresh vhost on the RabbitMQ named by MAILROOM_TEST_RABBITMQ_URL."""
    base = services.rabbitmq_base_url()
    if base is None or shutil.which("rabbitmqctl") is None:
        pytest.skip("set MAILROOM_TEST_RABBITMQ_URL (and have rabbitmqctl) for RabbitMQ tests")
    vhost = services.create_vhost()
    try:
        yield base.rstrip("/") + "/" + vhost
    finally:
        services.delete_vhost(vhost)


@pytest.fixture
def amqp_settings(settings: Settings, rabbitmq_url: str) -> Settings:
    return replace(settings, broker_url=rabbitmq_url, broker_key_prefix="")


@pytest.fixture
def procs(
    request: pytest.FixtureRequest, tmp_path: Path, settings: Settings, smtp_sink: SmtpSink
) -> Iterator[Processes]:
    """Real API, relay and worker processes this test starts (and stops)."""
    processes = Processes(settings_env(settings, smtp_sink.url), tmp_path)
    yield processes
    processes.stop_all()
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed:
        print(processes.logs())


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"rep_{report.when}", report)


def new_key(procs: Processes, tenant: str = "acme") -> str:
    """A tenant sending from example.com and its key, through the real console scripts."""
    procs.cli("ingest-api", "create-tenant", tenant, "--sender-domain", "example.com")
    return procs.cli("ingest-api", "create-key", tenant).strip().splitlines()[-1]


@pytest.fixture
def pool(settings: Settings) -> Iterator[DictPool]:
    """A worker-style database pool over the test's database."""
    pool = create_pool(settings, name="test", max_size=2)
    pool.wait(timeout=10)
    yield pool
    pool.close()


@pytest.fixture
def smtp(settings: Settings) -> Iterator[SmtpClient]:
    """The worker's SMTP client, pointed at the test's aiosmtpd server."""
    assert settings.smtp is not None
    client = SmtpClient(settings.smtp, timeout=5)
    yield client
    client.close()


def run_relay_cli(settings: Settings, *args: str, input: str | None = None) -> Result:
    """``outbox-relay ARGS`` in-process, through the real group (one-line errors, exit codes)."""
    return CliRunner().invoke(cli, list(args), env=settings_env(settings), input=input)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    """A real HTTP server on a loopback port that records what webhooks POST to it."""
    server = Receiver().start()
    yield server
    server.stop()


@pytest.fixture
def publisher(settings: Settings) -> Iterator[Publisher]:
    """The relay's publisher into the test's broker (Redis, its own key prefix)."""
    publisher = Publisher(settings)
    yield publisher
    publisher.close()
