"""outbox-relay check: preflight for a deploy; exit 0 only when every check passes."""

from __future__ import annotations

import sys

import click

from outbox_relay.preflight import run_checks
from shared.cli_support import settings_or_exit


@click.command("check")
@click.option("--timeout", default=10.0, show_default=True, help="seconds to wait for the canary")
@click.option("--no-canary", is_flag=True, help="skip the round trip through a worker")
def check(timeout: float, no_canary: bool) -> None:
    """Database migrated, broker reachable, queues consumed, canary round trip."""
    settings = settings_or_exit("outbox-relay", ["database_url", "broker_url"])
    results = run_checks(settings, canary=not no_canary, timeout=timeout)
    for result in results:
        click.echo(result.line())
    sys.exit(0 if all(result.ok for result in results) else 1)
