"""ingest-api create-tenant NAME --sender-domain DOMAIN"""

from __future__ import annotations

import uuid

import click

from shared.cli_support import settings_or_exit
from shared.db import connect
from shared.queries import QUERIES


@click.command("create-tenant")
@click.argument("name")
@click.option(
    "--sender-domain", "sender_domains", multiple=True, required=True,
    help="a domain this tenant may send from (repeat for several)",
)  # fmt: skip
def create_tenant(name: str, sender_domains: tuple[str, ...]) -> None:
    """Create a tenant that may send from the given domains."""
    settings = settings_or_exit("ingest-api", ["database_url"])
    domains = sorted({d.strip().lower().encode("idna").decode() for d in sender_domains})
    with connect(settings.database_url) as conn:
        if conn.execute(QUERIES["find_tenant_by_name"], {"name": name}).fetchone():
            raise click.ClickException(f"a tenant named {name!r} already exists")
        conn.execute(
            QUERIES["insert_tenant"],
            {"id": uuid.uuid4(), "name": name, "sender_domains": domains},
        )
    click.echo(f"created tenant {name} (sender domains: {', '.join(domains)})")
