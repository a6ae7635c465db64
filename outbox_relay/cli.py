"""The ``outbox-relay`` command."""

from __future__ import annotations

import click

from outbox_relay.commands.check import check
from outbox_relay.commands.migrate import migrate
from outbox_relay.commands.run import run
from outbox_relay.commands.status import status


@click.group()
def cli() -> None:
    """The mailroom outbox relay and its admin commands."""


cli.add_command(run)
cli.add_command(migrate)
cli.add_command(check)
cli.add_command(status)


def main() -> None:
    cli()
