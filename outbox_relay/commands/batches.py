"""The admin commands that change mails in batches: replay, dlq retry, dlq discard, purge.

Replay, dlq retry and dlq discard share the progress bar, the audit record, the
printed summary and the exit codes (0 done, 1 database error, 130 interrupted; a rerun
of the same command continues where an interrupted one stopped).
"""

from __future__ import annotations

import sys
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import click
import psycopg

from outbox_relay.admin.replay import (
    DEFAULT_BATCH_SIZE,
    BatchOptions,
    BatchRun,
    Progress,
    ReplayRequest,
    count_selected,
    discard,
    replay,
)
from outbox_relay.admin.retention import (
    PurgeCounts,
    Retention,
    count_purgeable,
    plan_retention,
    purge_finished,
)
from outbox_relay.commands.options import (
    DURATION,
    MAIL_ID,
    STATUS_LIST,
    actor_option,
    admin_connection,
    batch_size_option,
    check_window,
    echo_json,
    echo_table,
    json_option,
    scope_options,
    tenant_id_or_fail,
    window_options,
)
from shared.cli_support import error_line
from shared.states import (
    FINAL_STATUSES,
    REPLAY_BY_DEFAULT,
    MailStatus,
    statuses_that_may_become,
)
from shared.store import outbox as outbox_store
from shared.store.outbox import MailSelection

# ----- what the batched commands share -----

INTERRUPTED = 130

ROW_COLUMNS = ("id", "tenant", "stream", "status", "created_at")


@contextmanager
def database_errors_exit_1() -> Iterator[None]:
    """A failing query outside the batches is one line and exit 1."""
    try:
        yield
    except psycopg.Error as exc:
        click.echo(f"outbox-relay: database error: {error_line(exc)}", err=True)
        sys.exit(1)


def run_with_progress(
    conn: psycopg.Connection,
    selection: MailSelection,
    show: bool,
    label: str,
    work: Callable[[Progress | None], BatchRun],
) -> BatchRun:
    """A progress bar on stderr, sized by a count of the selection, when *show*."""
    if not show:
        return work(None)
    total = count_selected(conn, selection)
    with click.progressbar(length=total, label=label, file=sys.stderr) as bar:
        return work(bar.update)


def audit(
    conn: psycopg.Connection,
    action: str,
    run: BatchRun,
    *,
    actor: str,
    arguments: dict[str, Any],
    changed_key: str,
) -> None:
    """Recorded after the batches, also for an interrupted or failed run."""
    result = {
        changed_key: len(run.changed),
        "skipped": run.skipped_counts(),
        "interrupted": run.interrupted,
        "error": run.error,
    }
    try:
        outbox_store.record_admin_action(conn, action, actor, arguments, result)
    except psycopg.Error as exc:
        click.echo(f"outbox-relay: could not record the admin action: {error_line(exc)}", err=True)


def finish(run: BatchRun) -> None:
    """Exit 130 when interrupted, 1 after a database error, else return (exit 0)."""
    if run.interrupted:
        click.echo("interrupted: run the same command again to continue", err=True)
        sys.exit(INTERRUPTED)
    if run.error is not None:
        click.echo(f"outbox-relay: database error: {run.error}", err=True)
        sys.exit(1)


def describe_selection(selection: MailSelection) -> str:
    """The absolute window (what a rerun must name to continue this run) and the ids."""
    parts = []
    if selection.since is not None or selection.until is not None:
        parts.append(f"--since {_iso(selection.since)} --until {_iso(selection.until)}")
    if selection.mail_ids is not None:
        parts.append(f"{len(selection.mail_ids)} named mail(s)")
    return "; ".join(parts)


def print_rows(rows: list[dict[str, Any]]) -> None:
    if rows:
        echo_table([{**row, "status": row["previous_status"]} for row in rows], ROW_COLUMNS)


def print_skipped(run: BatchRun) -> None:
    counts = run.skipped_counts()
    if counts:
        click.echo("skipped: " + ", ".join(f"{reason} {n}" for reason, n in counts.items()))


def row_document(row: dict[str, Any]) -> dict[str, Any]:
    keys = ("id", "tenant", "stream", "previous_status", "created_at")
    return {key: row[key] for key in keys}


def print_summary(options: BatchOptions, run: BatchRun, verb: str) -> None:
    """For a dry run the mails themselves, then 'replayed N' (or 'would replay N') and skips."""
    if options.dry_run:
        print_rows(run.changed)
    done = f"would {verb}" if options.dry_run else f"{verb.removesuffix('e')}ed"
    click.echo(f"{done} {len(run.changed)}")
    print_skipped(run)


def _iso(value: datetime | None) -> str:
    return value.astimezone(UTC).isoformat() if value is not None else "-"


# ----- replay -----

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
        selection = MailSelection(chosen, tenant_id, stream, since, until)
        request = ReplayRequest(selection, include_sent, max_age)
        options = BatchOptions(batch_size, limit, dry_run)
        execute_replay(
            request, options, conn=conn, actor=actor, via="replay", as_json=as_json, yes=yes
        )


# ----- the dead-letter queue (outbox-relay dlq retry|discard) -----


def dead_letter_selection(
    conn: psycopg.Connection,
    mail_ids: tuple[uuid.UUID, ...],
    since: datetime | None,
    until: datetime | None,
    *,
    tenant: str | None,
    stream: str | None,
) -> MailSelection:
    """Dead mails named by id, by --since (--until defaults to now), or both (and)."""
    if not mail_ids and since is None:
        raise click.UsageError("name mail ids or --since (dead mails of every time is too wide)")
    if since is not None and until is None:
        until = datetime.now(UTC)
    check_window(since, until)
    tenant_id = tenant_id_or_fail(conn, tenant)
    ids = tuple(dict.fromkeys(mail_ids)) or None
    return MailSelection((MailStatus.DEAD,), tenant_id, stream, since, until, mail_ids=ids)


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


def execute_discard(
    conn: psycopg.Connection,
    selection: MailSelection,
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
    selection: MailSelection, options: BatchOptions, reason: str, run: BatchRun
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


# ----- purge -----


@click.command("purge")
@click.option(
    "--older-than",
    type=DURATION,
    required=True,
    help="delete what became final (or was stored) longer ago than this: 30d, 12h, 2w",
)
@batch_size_option(1000, "mails (and keys, events)")
@click.option("--dry-run", is_flag=True, help="count what would be deleted, delete nothing")
@click.option("--yes", is_flag=True, help="do not ask for confirmation")
@actor_option
@json_option
def purge(
    *,
    older_than: timedelta,
    batch_size: int,
    dry_run: bool,
    yes: bool,
    actor: str,
    as_json: bool,
) -> None:
    """Delete final mails (with their events and webhook deliveries) older than --older-than.

    Mails still in the outbox or with a webhook delivery pending are kept; so is
    every mail that is not final. Old idempotency keys and CDP events go too.
    """
    if as_json and not (yes or dry_run):
        raise click.UsageError(
            "--json cannot ask for confirmation: add --yes or --dry-run",
            ctx=click.get_current_context(),
        )
    with admin_connection() as (_settings, conn):
        plan = plan_retention(conn, older_than, batch_size)
        if dry_run:
            _print(plan, count_purgeable(conn, plan), as_json, dry_run=True)
            return
        if not yes:
            _print_table(plan, count_purgeable(conn, plan), "would be deleted")
            click.confirm("Delete these rows for good?", abort=True)
        counts = purge_finished(conn, plan, actor, on_batch=_progress)
    _print(plan, counts, as_json, dry_run=False)


def _progress(table: str, deleted: int) -> None:
    # stderr, so that stdout stays one JSON document or one table.
    click.echo(f"purged {deleted} {table.replace('_', ' ')}", err=True)


def _print(plan: Retention, counts: PurgeCounts, as_json: bool, *, dry_run: bool) -> None:
    if as_json:
        echo_json(_document(plan, counts, dry_run))
    else:
        _print_table(plan, counts, "dry run, nothing deleted" if dry_run else "deleted")


def _print_table(plan: Retention, counts: PurgeCounts, what: str) -> None:
    click.echo(
        f"cutoff {plan.cutoff.isoformat()} (older than {_compact(plan.older_than)}); {what}:"
    )
    rows = [{"what": f"mails {status}", "count": n} for status, n in counts.mails.items()]
    rows += [
        {"what": "mails total", "count": counts.mails_total},
        {"what": "mail events", "count": counts.events},
        {"what": "webhook deliveries", "count": counts.webhook_deliveries},
        {"what": "idempotency keys", "count": counts.idempotency_keys},
        {"what": "cdp events", "count": counts.cdp_events},
    ]
    echo_table(rows, ["what", "count"])


def _compact(duration: timedelta) -> str:
    """30d rather than '30 days, 0:00:00': the way the operator typed it."""
    seconds = duration.total_seconds()
    for unit, size in (("w", 604800), ("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


def _document(plan: Retention, counts: PurgeCounts, dry_run: bool) -> dict[str, Any]:
    """The stable JSON shape: the same keys whether anything was deleted or not."""
    return {
        "dry_run": dry_run,
        "cutoff": plan.cutoff,
        "older_than_seconds": plan.older_than.total_seconds(),
        **counts.as_dict(),
    }
