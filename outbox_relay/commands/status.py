"""outbox-relay status: the pipeline at a glance; exit 0 healthy, 1 degraded, 2 broken."""

from __future__ import annotations

import json
import sys
from typing import Any

import click

from shared.cli_support import settings_or_exit
from shared.db import connect
from shared.pipeline_health import pipeline_health
from shared.queries import QUERIES

HEALTHY, DEGRADED, BROKEN = 0, 1, 2


def _gather(database_url: str, timeout: float, threshold: float) -> dict[str, Any]:
    with connect(database_url, timeout=timeout) as conn:
        counts = conn.execute(QUERIES["count_mails_by_stream_and_status"]).fetchall()
        stats = conn.execute(QUERIES["outbox_stats"]).fetchone()
        health = pipeline_health(conn, threshold)
    assert stats is not None
    due, total, in_flight, oldest_undispatched, oldest_in_flight = stats
    mails: dict[str, dict[str, int]] = {}
    for stream, status, count in counts:
        mails.setdefault(stream, {})[status] = count
    return {
        "mails": mails,
        "outbox": {
            "rows": total,
            "due": due,
            "in_flight": in_flight,
            "oldest_undispatched_seconds": round(float(oldest_undispatched), 1),
            "oldest_in_flight_seconds": round(float(oldest_in_flight), 1),
        },
        "canary": {
            item.queue: {
                "state": item.state,
                "age_seconds": item.age_seconds,
                "detail": item.reason,
            }
            for item in health
        },
    }


def verdict(report: dict[str, Any], threshold: float) -> int:
    states = {queue["state"] for queue in report["canary"].values()}
    if "broken" in states:
        return BROKEN
    dead = sum(stream.get("dead", 0) for stream in report["mails"].values())
    if "unknown" in states or report["outbox"]["oldest_undispatched_seconds"] > threshold or dead:
        return DEGRADED
    return HEALTHY


def _print_table(report: dict[str, Any], code: int) -> None:
    click.echo(f"pipeline: {('healthy', 'degraded', 'broken')[code]}")
    for queue, canary in report["canary"].items():
        click.echo(f"  canary {queue:<14} {canary['state']:<8} {canary['detail']}")
    outbox = report["outbox"]
    click.echo(
        f"outbox: {outbox['rows']} rows, {outbox['due']} due, {outbox['in_flight']} in flight;"
        f" oldest undispatched {outbox['oldest_undispatched_seconds']} s,"
        f" oldest in flight {outbox['oldest_in_flight_seconds']} s"
    )
    for stream, statuses in report["mails"].items():
        counts = ", ".join(f"{status} {count}" for status, count in statuses.items())
        click.echo(f"mails {stream}: {counts}")


@click.command("status")
@click.option("--json", "as_json", is_flag=True, help="print JSON instead of a table")
def status(as_json: bool) -> None:
    """Counts by status, outbox backlog and ages, canary health."""
    settings = settings_or_exit("outbox-relay", ["database_url"])
    report = _gather(settings.database_url, settings.db_connect_timeout, settings.canary_threshold)
    code = verdict(report, settings.canary_threshold)
    if as_json:
        click.echo(json.dumps({**report, "verdict": ("healthy", "degraded", "broken")[code]}))
    else:
        _print_table(report, code)
    sys.exit(code)
