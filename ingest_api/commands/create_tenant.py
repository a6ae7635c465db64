"""ingest-api create-tenant NAME --sender-domain DOMAIN"""

from __future__ import annotations

import uuid

import click

from ingest_api.commands.sender_domains import checked_sender_domains
from shared.cli_support import settings_or_exit
from shared.db import connect
from shared.queries import QUERIES


@click.command("create-tenant")
@click.argument("name")
@click.option(
    "--sender-domain", "sender_domains", multiple=True, required=True,
    help="a domain this tenant may send from (repeat for several); checked by the rules"
    " the API applies to a sender address, so not .test, .local or .invalid",
)  # fmt: skip
def create_tenant(name: str, sender_domains: tuple[str, ...]) -> None:
    """Create a tenant that may send from the given domains.

    Change them later with add-sender-domain and remove-sender-domain.
    """
    domains = checked_sender_domains(sender_domains)
    settings = settings_or_exit("ingest-api", ["database_url"])
    with connect(settings.database_url) as conn:
        if conn.execute(QUERIES["find_tenant_by_name"], {"name": name}).fetchone():
            raise click.ClickException(f"a tenant named {name!r} already exists")
        conn.execute(
            QUERIES["insert_tenant"],
            {"id": uuid.uuid4(), "name": name, "sender_domains": domains},
        )
    click.echo(f"created tenant {name} (sender domains: {', '.join(domains)})")
