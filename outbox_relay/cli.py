"""The ``outbox-relay`` command."""

from __future__ import annotations

import click

from outbox_relay.commands.migrate import migrate
from outbox_relay.commands.run import run


@click.group()
def cli() -> None:
    """The mailroom outbox relay and its admin commands."""


cli.add_command(run)
cli.add_command(migrate)


def main() -> None:
    cli()
