"""ingest-api list-keys TENANT: a tenant's keys by display prefix, never the keys themselves."""

from __future__ import annotations

from datetime import datetime

import click

from shared.cli_support import settings_or_exit
from shared.db import connect
from shared.queries import QUERIES

HEADINGS = ("PREFIX", "SCOPES", "CREATED", "REVOKED")


def _when(moment: datetime | None) -> str:
    return "-" if moment is None else moment.strftime("%Y-%m-%d %H:%M:%S %Z")


@click.command("list-keys")
@click.argument("tenant")
def list_keys(tenant: str) -> None:
    """List TENANT's API keys, oldest first: prefix, scopes, created, revoked."""
    settings = settings_or_exit("ingest-api", ["database_url"])
    with connect(settings.database_url) as conn:
        if conn.execute(QUERIES["find_tenant_by_name"], {"name": tenant}).fetchone() is None:
            raise click.ClickException(f"no tenant named {tenant!r}")
        rows = conn.execute(QUERIES["list_api_keys_of_tenant"], {"tenant": tenant}).fetchall()
    table = [HEADINGS] + [
        (f"{prefix}…", ",".join(scopes), _when(created), _when(revoked))
        for prefix, scopes, created, revoked in rows
    ]
    widths = [max(len(line[column]) for line in table) for column in range(len(HEADINGS))]
    for line in table:
        cells = (cell.ljust(width) for cell, width in zip(line, widths, strict=True))
        click.echo("  ".join(cells).rstrip())
