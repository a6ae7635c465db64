"""The ``ingest-api`` command."""

from __future__ import annotations

import click

from ingest_api.commands.serve import serve
from ingest_api.commands.tenants import (
    add_sender_domain,
    create_key,
    create_tenant,
    list_keys,
    remove_sender_domain,
    revoke_key,
    rotate_webhook_secret,
)


@click.group()
def cli() -> None:
    """The mailroom ingest API."""


cli.add_command(serve)
cli.add_command(create_tenant)
cli.add_command(add_sender_domain)
cli.add_command(remove_sender_domain)
cli.add_command(create_key)
cli.add_command(revoke_key)
cli.add_command(list_keys)
cli.add_command(rotate_webhook_secret)


def main() -> None:
    cli()
