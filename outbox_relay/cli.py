"""The ``outbox-relay`` command: the relay and its admin commands, one module each."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

import click

from outbox_relay.commands.check import check
from outbox_relay.commands.dlq import dlq
from outbox_relay.commands.list_mails import list_command
from outbox_relay.commands.migrate import migrate
from outbox_relay.commands.pause import pause_command
from outbox_relay.commands.purge import purge
from outbox_relay.commands.replay import replay_command
from outbox_relay.commands.report import report
from outbox_relay.commands.resume import resume_command
from outbox_relay.commands.run import run
from outbox_relay.commands.show import show
from outbox_relay.commands.status import status


class OneLineErrors(click.Group):
    """Bad arguments print one line (no usage block) and exit 2; an abort exits 1."""

    def main(
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        try:
            result = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except click.exceptions.NoArgsIsHelpError as exc:
            click.echo(exc.format_message(), err=True)
            sys.exit(2)
        except click.UsageError as exc:
            command = exc.ctx.command_path if exc.ctx else "outbox-relay"
            click.echo(f"{command}: error: {exc.format_message()}", err=True)
            sys.exit(2)
        except click.ClickException as exc:
            click.echo(f"outbox-relay: error: {exc.format_message()}", err=True)
            sys.exit(exc.exit_code)
        except click.Abort:
            click.echo("outbox-relay: aborted", err=True)
            sys.exit(1)
        sys.exit(result if isinstance(result, int) else 0)


@click.group(cls=OneLineErrors)
def cli() -> None:
    """The mailroom outbox relay and its admin commands."""


COMMANDS = (
    run,
    migrate,
    check,
    status,
    list_command,
    show,
    replay_command,
    dlq,
    pause_command,
    resume_command,
    purge,
    report,
)
for command in COMMANDS:
    cli.add_command(command)


def main() -> None:
    cli()
