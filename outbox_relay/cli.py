"""The ``outbox-relay`` command: the relay (run, migrate, check) and its admin commands.

The admin commands live in :mod:`outbox_relay.commands.inspection` (status, list,
show, report, pause, resume, dlq list|show) and :mod:`outbox_relay.commands.batches`
(replay, dlq retry|discard, purge); what they share is in
:mod:`outbox_relay.commands.options`.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from typing import Any

import click

from outbox_relay.commands.batches import discard_command, purge, replay_command, retry_command
from outbox_relay.commands.inspection import (
    list_command,
    list_dead,
    pause_command,
    report,
    resume_command,
    show,
    show_dead,
    status,
)
from outbox_relay.health import run_checks
from outbox_relay.relay import Relay
from shared.cli_support import settings_or_exit
from shared.db import connect
from shared.migrate import migrate as apply_migrations

log = logging.getLogger(__name__)


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


# ----- the relay's own commands -----


@click.command("run")
def run() -> None:
    """Relay due outbox rows to Celery; SIGTERM finishes the current round and exits."""
    settings = settings_or_exit("outbox-relay", ["database_url", "broker_url"])
    for result in run_checks(settings, canary=False):
        # The relay runs even when a check fails: mail waits safely in the outbox,
        # and the canary keeps reporting until the link works.
        (log.info if result.ok else log.error)("preflight", extra={"check": result.line()})
    relay = Relay(settings)
    relay.install_signal_handlers()
    relay.serve_metrics()
    relay.run()


@click.command("migrate")
def migrate() -> None:
    """Apply pending migrations (idempotent; safe to run from several processes)."""
    settings = settings_or_exit("outbox-relay", ["database_url"])
    with connect(settings.database_url, timeout=settings.db_connect_timeout) as conn:
        applied = apply_migrations(conn)
    click.echo(f"applied: {', '.join(applied)}" if applied else "schema is up to date")


@click.command("check")
@click.option("--timeout", default=10.0, show_default=True, help="seconds to wait for the canary")
@click.option("--no-canary", is_flag=True, help="skip the round trip through a worker")
def check(timeout: float, no_canary: bool) -> None:
    """Database migrated, broker reachable, queues consumed, canary round trip."""
    settings = settings_or_exit("outbox-relay", ["database_url", "broker_url"])
    results = run_checks(settings, canary=not no_canary, timeout=timeout)
    for result in results:
        click.echo(result.line())
    sys.exit(0 if all(result.ok for result in results) else 1)


# ----- the admin commands -----


@click.group("dlq")
def dlq() -> None:
    """Dead mails: list, show, retry (replay) or discard them."""


for dead_letter_command in (list_dead, show_dead, retry_command, discard_command):
    dlq.add_command(dead_letter_command)


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
