"""What every admin command does first: settings, one database connection, the tenant."""

from __future__ import annotations

import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import click
import psycopg

from outbox_relay.admin.filters import UnknownTenant, find_tenant
from shared.cli_support import error_line, settings_or_exit
from shared.config import Settings
from shared.db import connect


@contextmanager
def admin_connection(
    unreachable_exit: int = 1,
) -> Iterator[tuple[Settings, psycopg.Connection]]:
    """An autocommit connection; a database that cannot be reached is one line and an exit
    (1 by default; status says 2, broken, since the API cannot accept mail either)."""
    settings = settings_or_exit("outbox-relay", ["database_url"])
    try:
        conn = connect(settings.database_url, timeout=settings.db_connect_timeout)
    except psycopg.OperationalError as exc:
        click.echo(f"outbox-relay: cannot reach the database: {error_line(exc)}", err=True)
        sys.exit(unreachable_exit)
    with conn:
        yield settings, conn


def tenant_or_fail(conn: psycopg.Connection, tenant: str | None) -> tuple[uuid.UUID, str] | None:
    """The --tenant option resolved to (id, name); an unknown tenant is a usage error (exit 2)."""
    if tenant is None:
        return None
    try:
        return find_tenant(conn, tenant)
    except UnknownTenant as exc:
        raise click.BadParameter(str(exc), param_hint="'--tenant'") from None


def tenant_id_or_fail(conn: psycopg.Connection, tenant: str | None) -> uuid.UUID | None:
    found = tenant_or_fail(conn, tenant)
    return found[0] if found else None
