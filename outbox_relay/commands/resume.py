"""outbox-relay resume: lift a pause; relays publish the held mails on their next poll."""

from __future__ import annotations

import sys

import click

from outbox_relay.admin.pauses import list_pauses, resume
from outbox_relay.commands.output import echo_json
from outbox_relay.commands.params import actor_option, json_option, scope_options
from outbox_relay.commands.pause import print_pauses, scope_or_fail
from outbox_relay.commands.session import admin_connection


@click.command("resume")
@scope_options
@click.option("--all", "everything", is_flag=True, help="lift the pause of everything")
@actor_option
@json_option
def resume_command(
    stream: str | None, tenant: str | None, everything: bool, actor: str, as_json: bool
) -> None:
    """Lift the pause of exactly this scope (as given to pause)."""
    with admin_connection() as (_, conn):
        scope = scope_or_fail(conn, stream, tenant, everything)
        lifted = resume(conn, scope, actor)
        pauses = list_pauses(conn)
    if as_json:
        echo_json(
            {
                "resumed": scope.audit_arguments(),
                "was_paused": lifted is not None,
                "lifted": lifted,
                "pauses": pauses,
            }
        )
    elif lifted is None:
        click.echo(f"outbox-relay: {scope.describe()} was not paused", err=True)
        print_pauses(pauses)
    else:
        click.echo(f"resumed: {scope.describe()} (paused by {lifted['actor']})")
        print_pauses(pauses)
    sys.exit(0 if lifted is not None else 1)
