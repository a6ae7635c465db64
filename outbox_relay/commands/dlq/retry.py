"""outbox-relay dlq retry: replay dead mails, named by id or by window."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import click
import psycopg

from outbox_relay.admin.replay import DEFAULT_BATCH_SIZE, BatchOptions, ReplayRequest, Selection
from outbox_relay.commands.params import (
    DURATION,
    MAIL_ID,
    actor_option,
    batch_size_option,
    check_window,
    json_option,
    scope_options,
    window_options,
)
from outbox_relay.commands.replay import execute_replay
from outbox_relay.commands.session import admin_connection, tenant_id_or_fail
from shared.states import MailStatus


def dead_letter_selection(
    conn: psycopg.Connection,
    mail_ids: tuple[uuid.UUID, ...],
    since: datetime | None,
    until: datetime | None,
    *,
    tenant: str | None,
    stream: str | None,
) -> Selection:
    """Dead mails named by id, by --since (--until defaults to now), or both (and)."""
    if not mail_ids and since is None:
        raise click.UsageError("name mail ids or --since (dead mails of every time is too wide)")
    if since is not None and until is None:
        until = datetime.now(UTC)
    check_window(since, until)
    tenant_id = tenant_id_or_fail(conn, tenant)
    ids = tuple(dict.fromkeys(mail_ids)) or None
    return Selection((MailStatus.DEAD,), since, until, tenant_id, stream, ids)


@click.command("retry")
@click.argument("mail_ids", nargs=-1, type=MAIL_ID)
@window_options()
@scope_options
@click.option("--max-age", type=DURATION, help="skip mails accepted longer ago than this")
@click.option("--limit", type=click.IntRange(min=1), help="retry at most this many mails")
@batch_size_option(DEFAULT_BATCH_SIZE)
@click.option("--dry-run", is_flag=True, help="change nothing; print what would be retried")
@actor_option
@json_option
def retry_command(
    *,
    mail_ids: tuple[uuid.UUID, ...],
    since: datetime | None,
    until: datetime | None,
    tenant: str | None,
    stream: str | None,
    max_age: timedelta | None,
    limit: int | None,
    batch_size: int,
    dry_run: bool,
    actor: str,
    as_json: bool,
) -> None:
    """Put dead mails back through the outbox (a replay of status dead)."""
    with admin_connection() as (_, conn):
        selection = dead_letter_selection(
            conn, mail_ids, since, until, tenant=tenant, stream=stream
        )
        request = ReplayRequest(selection, max_age=max_age)
        options = BatchOptions(batch_size, limit, dry_run)
        execute_replay(request, options, conn=conn, actor=actor, via="dlq retry", as_json=as_json)
