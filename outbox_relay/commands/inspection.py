"""The admin commands that look (status, list, show, report, dlq list, dlq show) and
the ones that hold mail in the outbox (pause, resume)."""

from __future__ import annotations

import json
import sys
import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import click
import psycopg

from outbox_relay.admin.inspection import (
    BROKEN,
    VERDICTS,
    PauseScope,
    gather,
    pause,
    resume,
    verdict,
)
from outbox_relay.admin.retention import reconcile
from outbox_relay.commands.options import (
    MAIL_ID,
    STATUS_LIST,
    actor_option,
    admin_connection,
    cell,
    check_window,
    echo_json,
    echo_table,
    json_option,
    scope_options,
    tenant_id_or_fail,
    tenant_or_fail,
    to_jsonable,
    window_options,
)
from shared.states import MailStatus
from shared.store import outbox as outbox_store
from shared.store.outbox import MailSelection

# ----- status -----

SCOPE_COLUMNS = (
    "tenant",
    "stream",
    "backlog",
    "due",
    "in_flight",
    "oldest_undispatched_s",
    "oldest_in_flight_s",
    "retrying",
    "failing",
    "dead",
    "paused",
    "mails",
)


def _print_status(report: dict[str, Any], code: int, reasons: list[str]) -> None:
    click.echo(f"pipeline: {VERDICTS[code]}" + (f" ({'; '.join(reasons)})" if reasons else ""))
    for queue, canary in report["canary"].items():
        click.echo(f"  canary {queue:<14} {canary['state']:<8} {canary['detail']}")
    outbox = report["outbox"]
    click.echo(
        f"outbox: {outbox['rows']} rows, {outbox['due']} due, {outbox['in_flight']} in flight;"
        f" oldest undispatched {outbox['oldest_undispatched_seconds']} s,"
        f" oldest in flight {outbox['oldest_in_flight_seconds']} s"
    )
    if report["pauses"]:
        click.echo("paused ('-' = any):")
        print_pauses(report["pauses"])
    echo_table(
        [_scope_cells(scope) for scope in report["by_tenant"]], SCOPE_COLUMNS, wide=("mails",)
    )


def _scope_cells(scope: dict[str, Any]) -> dict[str, Any]:
    outbox = scope["outbox"]
    return {
        **scope,
        "backlog": outbox["rows"],
        "due": outbox["due"],
        "in_flight": outbox["in_flight"],
        "oldest_undispatched_s": outbox["oldest_undispatched_seconds"],
        "oldest_in_flight_s": outbox["oldest_in_flight_seconds"],
        "paused": "yes" if scope["paused"] else "",
        "mails": " ".join(f"{status}={count}" for status, count in sorted(scope["mails"].items())),
    }


# ----- list and show -----

LIST_COLUMNS = (
    "id",
    "tenant",
    "stream",
    "status",
    "attempts",
    "created_at",
    "subject",
    "last_error",
)


def print_mails(rows: Sequence[dict[str, Any]], as_json: bool) -> None:
    if as_json:
        echo_json({"mails": list(rows), "count": len(rows)})
        return
    echo_table(rows, LIST_COLUMNS)
    click.echo(f"{len(rows)} mail(s)")


def filtered_mails(
    statuses: tuple[MailStatus, ...] | None, tenant: str | None, limit: int, **filters: Any
) -> list[dict[str, Any]]:
    with admin_connection() as (_, conn):
        selection = MailSelection(statuses, tenant_id_or_fail(conn, tenant), **filters)
        return outbox_store.list_mails(conn, selection, limit)


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


FIELDS = (
    "id",
    "tenant",
    "stream",
    "source",
    "status",
    "attempts",
    "last_error",
    "subject",
    "created_at",
    "updated_at",
    "send_at",
    "expires_at",
    "tags",
    "campaign_key",
)


def print_mail(detail: dict[str, Any], as_json: bool) -> None:
    if as_json:
        echo_json(detail)
        return
    for field in FIELDS:
        click.echo(f"{field + ':':<14}{cell(detail.get(field))}")
    outbox = detail["outbox"]
    if outbox is None:
        click.echo(f"{'outbox:':<14}-")
    else:
        click.echo(
            f"{'outbox:':<14}queue {outbox['queue']}, due {cell(outbox['available_at'])},"
            f" dispatched {outbox['dispatch_count']} time(s)"
        )
    click.echo("events:")
    for event in detail["events"]:
        detail_text = json.dumps(to_jsonable(event["detail"])) if event["detail"] else ""
        click.echo(f"  {cell(event['created_at'])}  {event['kind']:<14} {detail_text}")


def load_mail_or_exit(mail_id: uuid.UUID) -> dict[str, Any]:
    with admin_connection() as (_, conn):
        detail = outbox_store.mail_detail(conn, mail_id)
    if detail is None:
        click.echo(f"outbox-relay: no mail {mail_id}", err=True)
        sys.exit(1)
    return detail


@click.command("show")
@click.argument("mail_id", type=MAIL_ID)
@json_option
def show(mail_id: uuid.UUID, as_json: bool) -> None:
    """A mail, its state and its whole event history."""
    print_mail(load_mail_or_exit(mail_id), as_json)


# ----- the dead-letter queue (outbox-relay dlq list|show) -----


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
        selection = MailSelection((MailStatus.DEAD,), tenant_id, stream, since, until, tag)
        rows = outbox_store.list_mails(conn, selection, limit)
    print_mails(rows, as_json)


@click.command("show")
@click.argument("mail_id", type=MAIL_ID)
@json_option
def show_dead(mail_id: uuid.UUID, as_json: bool) -> None:
    """A dead mail and its whole history; exit 1 if it is not dead (printed anyway)."""
    with admin_connection() as (_, conn):
        detail = outbox_store.mail_detail(conn, mail_id)
    if detail is None:
        click.echo(f"outbox-relay: no mail {mail_id}", err=True)
        sys.exit(1)
    print_mail(detail, as_json)
    if detail["status"] != MailStatus.DEAD:
        click.echo(
            f"outbox-relay: mail {mail_id} is not in the dead-letter queue"
            f" (status {detail['status']})",
            err=True,
        )
        sys.exit(1)


# ----- report -----

NOT_FINAL_COLUMNS = ("id", "tenant", "stream", "status", "created_at", "updated_at", "last_error")


@click.command("report")
@window_options(required=True)
@scope_options
@json_option
def report(
    since: datetime, until: datetime, tenant: str | None, stream: str | None, as_json: bool
) -> None:
    """Reconcile a window: accepted, by status, final, and every mail not final yet."""
    check_window(since, until)
    with admin_connection() as (_settings, conn):
        # The name, also when the operator gave the id: the report goes to a customer.
        found = tenant_or_fail(conn, tenant)
        window = MailSelection(
            tenant_id=found.id if found else None, stream=stream, since=since, until=until
        )
        document = reconcile(conn, window, found.name if found else None)
    if as_json:
        echo_json(document)
    else:
        _print_report(document)


def _print_report(document: dict[str, Any]) -> None:
    window = document["window"]
    click.echo(
        f"mails accepted from {cell(window['since'])} to {cell(window['until'])} (UTC);"
        f" tenant {document['tenant'] or 'all'}; stream {document['stream'] or 'all'}"
    )
    for warning in document["warnings"]:
        click.echo(f"warning: {warning}")
    click.echo(
        f"accepted {document['accepted']}, final {document['final']},"
        f" not final {document['not_final']}"
    )
    echo_table(
        [{"status": status, "mails": n} for status, n in document["by_status"].items()],
        ["status", "mails"],
    )
    if document["tenant"] is None:
        click.echo("")
        echo_table(
            [{"tenant": name, **counts} for name, counts in document["tenants"].items()],
            ["tenant", "accepted", "final", "not_final"],
        )
    click.echo("")
    click.echo(f"not final ({document['not_final']}):")
    echo_table(document["not_final_mails"], NOT_FINAL_COLUMNS)


# ----- pause and resume -----

PAUSE_COLUMNS = ("stream", "tenant", "held", "actor", "created_at", "reason")


def scope_or_fail(
    conn: psycopg.Connection, stream: str | None, tenant: str | None, everything: bool
) -> PauseScope:
    """The scope an operator named; pausing everything has to be said with --all."""
    if everything == bool(stream or tenant):
        raise click.UsageError("name --stream and/or --tenant, or --all for every mail")
    found = tenant_or_fail(conn, tenant)
    return PauseScope(stream, found.id, found.name) if found else PauseScope(stream, None)


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
        pauses = outbox_store.list_relay_pauses(conn)
    if as_json:
        echo_json(
            {"paused": scope.audit_arguments(), "already_paused": not paused_now, "pauses": pauses}
        )
        return
    state = "paused" if paused_now else "already paused"
    click.echo(f"{state}: {scope.describe()} (relays stop publishing on their next poll)")
    print_pauses(pauses)


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
        pauses = outbox_store.list_relay_pauses(conn)
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


@click.command("status")
@json_option
def status(as_json: bool) -> None:
    """Per tenant and stream: counts by status, backlog and ages; canaries; pauses."""
    with admin_connection(unreachable_exit=BROKEN) as (settings, conn):
        report = gather(conn, settings.canary_threshold)
    code, reasons = verdict(report, settings.canary_threshold)
    if as_json:
        echo_json({**report, "verdict": VERDICTS[code], "reasons": reasons})
    else:
        _print_status(report, code, reasons)
    sys.exit(code)
