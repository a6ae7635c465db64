"""ingest-api rotate-webhook-secret TENANT: prints the new secret as the last line."""

from __future__ import annotations

import secrets

import click

from shared.cli_support import settings_or_exit
from shared.db import connect
from shared.queries import QUERIES


@click.command("rotate-webhook-secret")
@click.argument("tenant")
def rotate_webhook_secret(tenant: str) -> None:
    """Give TENANT a new webhook secret; signatures made with the old one stop working now.

    The secret signs CDP events (POST /v1/cdp/events); it is stored as is,
    since checking an HMAC needs it, and shown now.
    """
    settings = settings_or_exit("ingest-api", ["database_url"])
    secret = secrets.token_hex(32)
    with connect(settings.database_url) as conn:
        row = conn.execute(
            QUERIES["set_webhook_secret"], {"name": tenant, "secret": secret}
        ).fetchone()
    if row is None:
        raise click.ClickException(f"no tenant named {tenant!r}")
    click.echo(f"new webhook secret for tenant {tenant} (X-Mailroom-Tenant: {row[0]}):")
    click.echo(secret)
