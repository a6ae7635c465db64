"""outbox-relay dlq show ID: a dead mail and its history."""

from __future__ import annotations

import sys
import uuid

import click

from outbox_relay.admin.inspection import mail_detail
from outbox_relay.commands.params import MAIL_ID, json_option
from outbox_relay.commands.session import admin_connection
from outbox_relay.commands.show import print_mail
from shared.states import MailStatus


@click.command("show")
@click.argument("mail_id", type=MAIL_ID)
@json_option
def show_dead(mail_id: uuid.UUID, as_json: bool) -> None:
    """A dead mail and its whole history; exit 1 if it is not dead (printed anyway)."""
    with admin_connection() as (_, conn):
        detail = mail_detail(conn, mail_id)
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
