"""outbox-relay status: the pipeline at a glance; exit 0 healthy, 1 degraded, 2 broken."""

from __future__ import annotations

import sys
from typing import Any

import click
import psycopg
from psycopg.rows import dict_row

from outbox_relay.admin.pauses import list_pauses
from outbox_relay.commands.output import echo_json, echo_table
from outbox_relay.commands.params import json_option
from outbox_relay.commands.pause import print_pauses
from outbox_relay.commands.session import admin_connection
from shared.pipeline_health import pipeline_health
from shared.queries import QUERIES

HEALTHY, DEGRADED, BROKEN = 0, 1, 2
VERDICTS = ("healthy", "degraded", "broken")
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


def _scope_rows(conn: psycopg.Connection) -> list[dict[str, Any]]:
    with conn.cursor(row_factory=dict_row) as cursor:
        rows = cursor.execute(QUERIES["status_by_tenant_and_stream"]).fetchall()
    return [
        {
            "tenant": row["tenant"],
            "stream": row["stream"],
            "mails": row["by_status"],
            "retrying": row["by_status"].get("retrying", 0),
            "failing": row["failing"],
            "dead": row["by_status"].get("dead", 0),
            "paused": row["paused"],
            "outbox": {
                "rows": row["outbox_rows"],
                "due": row["due"],
                "in_flight": row["in_flight"],
                "oldest_undispatched_seconds": round(row["oldest_undispatched"], 1),
                "oldest_in_flight_seconds": round(row["oldest_in_flight"], 1),
            },
        }
        for row in rows
    ]


def _outbox_totals(conn: psycopg.Connection) -> dict[str, Any]:
    stats = conn.execute(QUERIES["outbox_stats"]).fetchone()
    assert stats is not None
    due, total, in_flight, oldest_undispatched, oldest_in_flight = stats
    return {
        "rows": total,
        "due": due,
        "in_flight": in_flight,
        "oldest_undispatched_seconds": round(float(oldest_undispatched), 1),
        "oldest_in_flight_seconds": round(float(oldest_in_flight), 1),
    }


def _mails_by_stream(scopes: list[dict[str, Any]]) -> dict[str, dict[str, int]]:
    totals: dict[str, dict[str, int]] = {}
    for scope in scopes:
        stream = totals.setdefault(scope["stream"], {})
        for status, count in scope["mails"].items():
            stream[status] = stream.get(status, 0) + count
    return totals


def gather(conn: psycopg.Connection, threshold: float) -> dict[str, Any]:
    scopes = _scope_rows(conn)
    return {
        "mails": _mails_by_stream(scopes),
        "outbox": _outbox_totals(conn),
        "by_tenant": scopes,
        "pauses": list_pauses(conn),
        "canary": {
            item.queue: {
                "state": item.state,
                "age_seconds": item.age_seconds,
                "detail": item.reason,
            }
            for item in pipeline_health(conn, threshold)
        },
    }


def verdict(report: dict[str, Any], threshold: float) -> tuple[int, list[str]]:
    """Broken when a canary is; degraded by anything an operator should look at."""
    states = {queue["state"] for queue in report["canary"].values()}
    if "broken" in states:
        broken = [
            queue for queue, canary in report["canary"].items() if canary["state"] == "broken"
        ]
        return BROKEN, [f"canary broken on {', '.join(broken)}"]
    reasons = []
    if "unknown" in states:
        reasons.append("no canary result yet")
    if report["outbox"]["oldest_undispatched_seconds"] > threshold:
        reasons.append(
            f"outbox rows undispatched for {report['outbox']['oldest_undispatched_seconds']} s"
        )
    failing = sum(scope["failing"] for scope in report["by_tenant"])
    if failing:
        reasons.append(
            f"{failing} mail(s) still unsent after 2 or more attempts:"
            " outbox-relay list --status retrying"
        )
    dead = sum(stream.get("dead", 0) for stream in report["mails"].values())
    if dead:
        reasons.append(f"{dead} dead mail(s): outbox-relay dlq list")
    if report["pauses"]:
        reasons.append(f"{len(report['pauses'])} pause(s) in place: outbox-relay resume")
    return (DEGRADED if reasons else HEALTHY), reasons


def _print_table(report: dict[str, Any], code: int, reasons: list[str]) -> None:
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
        _print_table(report, code, reasons)
    sys.exit(code)
