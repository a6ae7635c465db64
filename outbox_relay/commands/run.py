"""outbox-relay run: move outbox rows into the broker until stopped."""

from __future__ import annotations

import click

from outbox_relay.relay import Relay
from shared.cli_support import settings_or_exit


@click.command("run")
def run() -> None:
    """Relay due outbox rows to Celery; SIGTERM finishes the current round and exits."""
    settings = settings_or_exit("outbox-relay", ["database_url", "broker_url"])
    relay = Relay(settings)
    relay.install_signal_handlers()
    relay.run()
