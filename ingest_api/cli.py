"""The ``ingest-api`` command."""

from __future__ import annotations

import click

from ingest_api.commands.create_key import create_key
from ingest_api.commands.create_tenant import create_tenant
from ingest_api.commands.serve import serve


@click.group()
def cli() -> None:
    """The mailroom ingest API."""


cli.add_command(serve)
cli.add_command(create_tenant)
cli.add_command(create_key)


def main() -> None:
    cli()
