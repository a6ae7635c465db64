"""outbox-relay migrate: apply the schema migrations that have not run yet."""

from __future__ import annotations

import click

from shared.cli_support import settings_or_exit
from shared.db import connect
from shared.migrate import migrate as apply_migrations


@click.command("migrate")
def migrate() -> None:
    """Apply pending migrations (idempotent; safe to run from several processes)."""
    settings = settings_or_exit("outbox-relay", ["database_url"])
    with connect(settings.database_url, timeout=settings.db_connect_timeout) as conn:
        applied = apply_migrations(conn)
    click.echo(f"applied: {', '.join(applied)}" if applied else "schema is up to date")
