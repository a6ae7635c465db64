"""outbox-relay replay: put the finished mails of a window back through the outbox.

``execute_replay`` also serves ``dlq retry``; what every batched command shares
is in ``outbox_relay.commands.batched``.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

import click
import psycopg

from outbox_relay.admin.replay import (
    DEFAULT_BATCH_SIZE,
    BatchOptions,
    BatchRun,
    Progress,
    ReplayRequest,
    Selection,
    count_selected,
    replay,
)
from outbox_relay.commands.batched import (
    audit,
    database_errors_exit_1,
    describe_selection,
    finish,
    print_summary,
    row_document,
    run_with_progress,
)
from outbox_relay.commands.output import echo_json
from outbox_relay.commands.params import (
    DURATION,
    STATUS_LIST,
    actor_option,
    batch_size_option,
    check_window,
    json_option,
    scope_options,
    window_options,
)
from outbox_relay.commands.session import admin_connection, tenant_id_or_fail
from shared.states import (
    FINAL_STATUSES,
    REPLAY_BY_DEFAULT,
    MailStatus,
    statuses_that_may_become,
)

# What the state machine lets an operator move back to ACCEPTED, plus expired, which
# may be named but is always reported as skipped (its expires_at has passed). Sent
# needs --include-sent: its recipients would get it twice.
_BACK_TO_ACCEPTED = frozenset(map(MailStatus, statuses_that_may_become(MailStatus.ACCEPTED)))
NAMEABLE = (_BACK_TO_ACCEPTED | {MailStatus.EXPIRED}) - {MailStatus.SENT}
_NEVER_REPLAYED_BECAUSE = {MailStatus.CANCELLED: "the client cancelled them"}


def resolve_statuses(
    statuses: tuple[MailStatus, ...] | None, include_sent: bool
) -> tuple[MailStatus, ...]:
    """--status (default dead, failed) checked against the state machine, plus sent
    with --include-sent."""
    chosen = set(statuses or REPLAY_BY_DEFAULT)
    for status in sorted(chosen):
        _check_nameable(status, include_sent)
    if include_sent:
        chosen.add(MailStatus.SENT)
    return tuple(sorted(chosen))


def _check_nameable(status: MailStatus, include_sent: bool) -> None:
    if status in NAMEABLE or (status is MailStatus.SENT and include_sent):
        return
    if status is MailStatus.SENT:
        message = "sent mails were delivered already; add --include-sent to resend them"
    elif status not in FINAL_STATUSES:
        message = (
            f"{status} mails are still the pipeline's to deliver; replay takes"
            f" {', '.join(sorted(NAMEABLE))} (sent with --include-sent)"
        )
    else:
        why = _NEVER_REPLAYED_BECAUSE.get(status, "they may never be sent")
        message = f"{status} mails are never replayed: {why}"
    raise click.BadParameter(message, param_hint="'--status'")


def execute_replay(
    request: ReplayRequest,
    options: BatchOptions,
    *,
    conn: psycopg.Connection,
    actor: str,
    via: str,
    as_json: bool,
    yes: bool = False,
) -> None:
    """Run, record, print, exit: replay and dlq retry."""
    if not as_json:
        click.echo(f"replay key {request.key}: {describe_selection(request.selection)}")
        click.echo(f"statuses: {', '.join(request.selection.params()['statuses'])}")
    if not options.dry_run:
        confirm_resend(conn, request, yes)

    def work(progress: Progress | None) -> BatchRun:
        return replay(conn, request, options, actor=actor, via=via, progress=progress)

    show_progress = not as_json and not options.dry_run
    with database_errors_exit_1():
        run = run_with_progress(conn, request.selection, show_progress, "replaying", work)
    if not options.dry_run:
        arguments = replay_arguments(request, options)
        audit(conn, via, run, actor=actor, arguments=arguments, changed_key="replayed")
    if as_json:
        echo_json(replay_document(request, options, run))
    else:
        print_summary(options, run, "replay")
    finish(run)


def replay_arguments(request: ReplayRequest, options: BatchOptions) -> dict[str, Any]:
    return {
        "replay_key": request.key,
        **request.selection.describe(),
        "include_sent": request.include_sent,
        "max_age": request.max_age.total_seconds() if request.max_age else None,
        "limit": options.limit,
        "batch_size": options.batch_size,
    }


def replay_document(request: ReplayRequest, options: BatchOptions, run: BatchRun) -> dict[str, Any]:
    described = request.selection.describe()
    return {
        "replay_key": request.key,
        "dry_run": options.dry_run,
        "window": {"since": described["since"], "until": described["until"]},
        "statuses": described["statuses"],
        "replayed": [row_document(row) for row in run.changed],
        "replayed_count": len(run.changed),
        "skipped": run.skipped,
        "skipped_counts": run.skipped_counts(),
        "interrupted": run.interrupted,
    }


def confirm_resend(conn: psycopg.Connection, request: ReplayRequest, yes: bool) -> None:
    """--include-sent without --yes: name how many recipients would get a mail twice."""
    if not request.include_sent or yes:
        return
    sent = replace(request.selection, statuses=(MailStatus.SENT,))
    with database_errors_exit_1():
        count = count_selected(conn, sent)
    if count:
        click.confirm(
            f"Resend {count} mails that were already sent? Their recipients get them twice.",
            abort=True,
            err=True,
        )


@click.command("replay")
@window_options(required=True)
@click.option(
    "--status",
    "statuses",
    type=STATUS_LIST,
    help="comma-separated; default dead,failed (also suppressed, discarded, expired)",
)
@scope_options
@click.option("--dry-run", is_flag=True, help="change nothing; print what would be replayed")
@click.option("--max-age", type=DURATION, help="skip mails accepted longer ago than this")
@click.option("--limit", type=click.IntRange(min=1), help="replay at most this many mails")
@batch_size_option(DEFAULT_BATCH_SIZE)
@click.option("--include-sent", is_flag=True, help="also resend mails that were sent")
@click.option("--yes", is_flag=True, help="do not ask before resending sent mails")
@actor_option
@json_option
def replay_command(
    *,
    since: datetime,
    until: datetime,
    statuses: tuple[MailStatus, ...] | None,
    tenant: str | None,
    stream: str | None,
    dry_run: bool,
    max_age: timedelta | None,
    limit: int | None,
    batch_size: int,
    include_sent: bool,
    yes: bool,
    actor: str,
    as_json: bool,
) -> None:
    """Put finished mails accepted in a window back through the outbox.

    Rerunning the same command (same absolute window) replays nothing twice.
    """
    check_window(since, until)
    chosen = resolve_statuses(statuses, include_sent)
    if include_sent and as_json and not yes and not dry_run:
        raise click.UsageError("--include-sent with --json needs --yes (nobody can confirm)")
    with admin_connection() as (_, conn):
        tenant_id = tenant_id_or_fail(conn, tenant)
        selection = Selection(chosen, since, until, tenant_id, stream)
        request = ReplayRequest(selection, include_sent, max_age)
        options = BatchOptions(batch_size, limit, dry_run)
        execute_replay(
            request, options, conn=conn, actor=actor, via="replay", as_json=as_json, yes=yes
        )
