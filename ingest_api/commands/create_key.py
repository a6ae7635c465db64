"""ingest-api create-key TENANT [--scope send] [--scope read]: prints the new key
once, as the last line."""

from __future__ import annotations

import uuid

import click

from ingest_api.api_keys import SCOPES, display_prefix, key_digest, new_api_key
from shared.cli_support import settings_or_exit
from shared.db import connect
from shared.queries import QUERIES


@click.command("create-key")
@click.argument("tenant")
@click.option(
    "--scope", "scopes", multiple=True, type=click.Choice(SCOPES),
    help="what the key may do (repeat for several; default: all of them)",
)  # fmt: skip
def create_key(tenant: str, scopes: tuple[str, ...]) -> None:
    """Create an API key for TENANT; it is shown now and never again."""
    settings = settings_or_exit("ingest-api", ["database_url"])
    granted = [scope for scope in SCOPES if scope in scopes] if scopes else list(SCOPES)
    key = new_api_key()
    with connect(settings.database_url) as conn:
        row = conn.execute(QUERIES["find_tenant_by_name"], {"name": tenant}).fetchone()
        if row is None:
            raise click.ClickException(f"no tenant named {tenant!r}")
        conn.execute(
            QUERIES["insert_api_key_with_scopes"],
            {
                "id": uuid.uuid4(),
                "tenant_id": row[0],
                "key_prefix": display_prefix(key),
                "key_hash": key_digest(key),
                "scopes": granted,
            },
        )
    click.echo(
        f"created key {display_prefix(key)}… for tenant {tenant}"
        f" (scopes: {', '.join(granted)}); store it now:"
    )
    click.echo(key)
