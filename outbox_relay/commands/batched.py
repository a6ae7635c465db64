"""What the batched admin commands (replay, dlq retry, dlq discard) share: the
progress bar, the audit record, the printed summary and the exit codes (0 done,
1 database error, 130 interrupted; a rerun of the same command continues where
an interrupted one stopped)."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import click
import psycopg

from outbox_relay.admin.audit import record_admin_action
from outbox_relay.admin.replay import BatchOptions, BatchRun, Progress, Selection, count_selected
from outbox_relay.commands.output import echo_table
from shared.cli_support import error_line

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
    selection: Selection,
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
        record_admin_action(conn, action, actor, arguments, result)
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


def describe_selection(selection: Selection) -> str:
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
