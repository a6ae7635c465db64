"""The ``ingest-api`` command."""

from __future__ import annotations

import click

from ingest_api.commands.create_key import create_key
from ingest_api.commands.create_tenant import create_tenant
from ingest_api.commands.list_keys import list_keys
from ingest_api.commands.revoke_key import revoke_key
from ingest_api.commands.rotate_webhook_secret import rotate_webhook_secret
from ingest_api.commands.sender_domains import add_sender_domain, remove_sender_domain
from ingest_api.commands.serve import serve


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
