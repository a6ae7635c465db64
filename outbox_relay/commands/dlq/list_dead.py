"""outbox-relay dlq list: dead mails, newest first."""

from __future__ import annotations

from datetime import datetime

import click

from outbox_relay.admin.filters import MailFilter
from outbox_relay.admin.inspection import list_mails
from outbox_relay.commands.list_mails import print_mails
from outbox_relay.commands.params import json_option, scope_options, window_options
from outbox_relay.commands.session import admin_connection, tenant_id_or_fail
from shared.states import MailStatus


@click.command("list")
@scope_options
@window_options()
@click.option("--tag", help="only mails carrying this tag")
@click.option("--limit", type=click.IntRange(1, 100_000), default=50, show_default=True)
@json_option
def list_dead(
    *,
    tenant: str | None,
    stream: str | None,
    since: datetime | None,
    until: datetime | None,
    tag: str | None,
    limit: int,
    as_json: bool,
) -> None:
    """Dead mails across tenants, newest first (outbox-relay list --status dead)."""
    with admin_connection() as (_, conn):
        tenant_id = tenant_id_or_fail(conn, tenant)
        mail_filter = MailFilter((MailStatus.DEAD,), tenant_id, stream, since, until, tag)
        rows = list_mails(conn, mail_filter, limit)
    print_mails(rows, as_json)
