"""outbox-relay pause: hold a stream and/or a tenant in the outbox; every relay honours it."""

from __future__ import annotations

from typing import Any

import click
import psycopg

from outbox_relay.admin.pauses import PauseScope, list_pauses, pause
from outbox_relay.commands.output import echo_json, echo_table
from outbox_relay.commands.params import actor_option, json_option, scope_options
from outbox_relay.commands.session import admin_connection, tenant_or_fail

PAUSE_COLUMNS = ("stream", "tenant", "held", "actor", "created_at", "reason")


def scope_or_fail(
    conn: psycopg.Connection, stream: str | None, tenant: str | None, everything: bool
) -> PauseScope:
    """The scope an operator named; pausing everything has to be said with --all."""
    if everything == bool(stream or tenant):
        raise click.UsageError("name --stream and/or --tenant, or --all for every mail")
    found = tenant_or_fail(conn, tenant)
    return PauseScope(stream, *found) if found else PauseScope(stream, None)


def print_pauses(pauses: list[dict[str, Any]]) -> None:
    """Pauses with the outbox rows each holds; '-' means any stream or tenant."""
    if pauses:
        echo_table(pauses, PAUSE_COLUMNS)
    else:
        click.echo("nothing is paused")


@click.command("pause")
@scope_options
@click.option("--all", "everything", is_flag=True, help="pause every stream of every tenant")
@click.option("--reason", help="why, shown by status")
@actor_option
@json_option
def pause_command(
    *,
    stream: str | None,
    tenant: str | None,
    everything: bool,
    reason: str | None,
    actor: str,
    as_json: bool,
) -> None:
    """Hold mails in the outbox (they stay safe there) until resume."""
    with admin_connection() as (_, conn):
        scope = scope_or_fail(conn, stream, tenant, everything)
        paused_now = pause(conn, scope, actor, reason)
        pauses = list_pauses(conn)
    if as_json:
        echo_json(
            {"paused": scope.audit_arguments(), "already_paused": not paused_now, "pauses": pauses}
        )
        return
    state = "paused" if paused_now else "already paused"
    click.echo(f"{state}: {scope.describe()} (relays stop publishing on their next poll)")
    print_pauses(pauses)
