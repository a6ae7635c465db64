"""outbox-relay dlq: the dead-letter queue, the mails the pipeline gave up on ('dead')."""

from __future__ import annotations

import click

from outbox_relay.commands.dlq.discard import discard_command
from outbox_relay.commands.dlq.list_dead import list_dead
from outbox_relay.commands.dlq.retry import retry_command
from outbox_relay.commands.dlq.show_dead import show_dead


@click.group("dlq")
def dlq() -> None:
    """Dead mails: list, show, retry (replay) or discard them."""


for command in (list_dead, show_dead, retry_command, discard_command):
    dlq.add_command(command)
