"""outbox-relay dlq discard: dead mails an operator decides not to send, with the reason."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

import click
import psycopg

from outbox_relay.admin.dead_letters import discard
from outbox_relay.admin.replay import DEFAULT_BATCH_SIZE, BatchOptions, BatchRun, Selection
from outbox_relay.commands.batched import (
    audit,
    database_errors_exit_1,
    describe_selection,
    finish,
    print_summary,
    row_document,
    run_with_progress,
)
from outbox_relay.commands.dlq.retry import dead_letter_selection
from outbox_relay.commands.output import echo_json
from outbox_relay.commands.params import (
    MAIL_ID,
    actor_option,
    batch_size_option,
    json_option,
    scope_options,
    window_options,
)
from outbox_relay.commands.session import admin_connection


def execute_discard(
    conn: psycopg.Connection,
    selection: Selection,
    options: BatchOptions,
    *,
    actor: str,
    reason: str,
    as_json: bool,
) -> None:
    if not as_json:
        click.echo(f"discard: {describe_selection(selection)}")
    show_progress = not as_json and not options.dry_run
    with database_errors_exit_1():
        run = run_with_progress(
            conn,
            selection,
            show_progress,
            "discarding",
            lambda progress: discard(
                conn, selection, options, actor=actor, reason=reason, progress=progress
            ),
        )
    if not options.dry_run:
        arguments = {**selection.describe(), "reason": reason, "batch_size": options.batch_size}
        audit(conn, "dlq discard", run, actor=actor, arguments=arguments, changed_key="discarded")
    if as_json:
        echo_json(discard_document(selection, options, reason, run))
    else:
        print_summary(options, run, "discard")
    finish(run)


def discard_document(
    selection: Selection, options: BatchOptions, reason: str, run: BatchRun
) -> dict[str, Any]:
    described = selection.describe()
    return {
        "dry_run": options.dry_run,
        "reason": reason,
        "window": {"since": described["since"], "until": described["until"]},
        "discarded": [row_document(row) for row in run.changed],
        "discarded_count": len(run.changed),
        "skipped": run.skipped,
        "skipped_counts": run.skipped_counts(),
        "interrupted": run.interrupted,
    }


@click.command("discard")
@click.argument("mail_ids", nargs=-1, type=MAIL_ID)
@click.option("--reason", required=True, help="why these mails will not be sent (recorded)")
@window_options()
@scope_options
@batch_size_option(DEFAULT_BATCH_SIZE)
@click.option("--dry-run", is_flag=True, help="change nothing; print what would be discarded")
@actor_option
@json_option
def discard_command(
    *,
    mail_ids: tuple[uuid.UUID, ...],
    reason: str,
    since: datetime | None,
    until: datetime | None,
    tenant: str | None,
    stream: str | None,
    batch_size: int,
    dry_run: bool,
    actor: str,
    as_json: bool,
) -> None:
    """Dead mails become 'discarded': kept with their history, out of the dead-letter queue."""
    if not reason.strip():
        raise click.BadParameter("say why", param_hint="'--reason'")
    with admin_connection() as (_, conn):
        selection = dead_letter_selection(
            conn, mail_ids, since, until, tenant=tenant, stream=stream
        )
        options = BatchOptions(batch_size, None, dry_run)
        execute_discard(
            conn, selection, options, actor=actor, reason=reason.strip(), as_json=as_json
        )
