"""outbox-relay show ID: one mail, its state, its outbox row and its whole history."""

from __future__ import annotations

import json
import sys
import uuid
from typing import Any

import click

from outbox_relay.admin.inspection import mail_detail
from outbox_relay.commands.output import cell, echo_json, to_jsonable
from outbox_relay.commands.params import MAIL_ID, json_option
from outbox_relay.commands.session import admin_connection

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
        detail = mail_detail(conn, mail_id)
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
