"""outbox-relay purge: retention for finished mails, old idempotency keys and CDP events."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import click

from outbox_relay.admin.retention import (
    PurgeCounts,
    Retention,
    count_purgeable,
    plan_retention,
    purge_finished,
)
from outbox_relay.commands.output import echo_json, echo_table
from outbox_relay.commands.params import DURATION, actor_option, batch_size_option, json_option
from outbox_relay.commands.session import admin_connection


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
