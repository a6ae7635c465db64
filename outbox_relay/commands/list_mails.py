"""outbox-relay list: mails across tenants by status, tenant, stream, window and tag."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import click

from outbox_relay.admin.filters import MailFilter
from outbox_relay.admin.inspection import list_mails
from outbox_relay.commands.output import echo_json, echo_table
from outbox_relay.commands.params import (
    STATUS_LIST,
    json_option,
    scope_options,
    window_options,
)
from outbox_relay.commands.session import admin_connection, tenant_id_or_fail
from shared.states import MailStatus

COLUMNS = ("id", "tenant", "stream", "status", "attempts", "created_at", "subject", "last_error")


def print_mails(rows: Sequence[dict[str, Any]], as_json: bool) -> None:
    if as_json:
        echo_json({"mails": list(rows), "count": len(rows)})
        return
    echo_table(rows, COLUMNS)
    click.echo(f"{len(rows)} mail(s)")


def filtered_mails(
    statuses: tuple[MailStatus, ...] | None, tenant: str | None, limit: int, **filters: Any
) -> list[dict[str, Any]]:
    with admin_connection() as (_, conn):
        mail_filter = MailFilter(statuses, tenant_id_or_fail(conn, tenant), **filters)
        return list_mails(conn, mail_filter, limit)


@click.command("list")
@click.option("--status", "statuses", type=STATUS_LIST, help="comma-separated: dead,failed")
@scope_options
@window_options()
@click.option("--tag", help="only mails carrying this tag")
@click.option("--limit", type=click.IntRange(1, 100_000), default=50, show_default=True)
@json_option
def list_command(
    statuses: tuple[MailStatus, ...] | None,
    tenant: str | None,
    limit: int,
    as_json: bool,
    **filters: Any,
) -> None:
    """Mails newest first, across tenants."""
    print_mails(filtered_mails(statuses, tenant, limit, **filters), as_json)
