"""outbox-relay run: move outbox rows into the broker until stopped."""

from __future__ import annotations

import logging

import click

from outbox_relay.preflight import run_checks
from outbox_relay.relay import Relay
from shared.cli_support import settings_or_exit

log = logging.getLogger(__name__)


@click.command("run")
def run() -> None:
    """Relay due outbox rows to Celery; SIGTERM finishes the current round and exits."""
    settings = settings_or_exit("outbox-relay", ["database_url", "broker_url"])
    for result in run_checks(settings, canary=False):
        # The relay runs even when a check fails: mail waits safely in the outbox,
        # and the canary keeps reporting until the link works.
        (log.info if result.ok else log.error)("preflight", extra={"check": result.line()})
    relay = Relay(settings)
    relay.install_signal_handlers()
    relay.serve_metrics()
    relay.run()
