"""outbox-relay report: what became of the mails accepted in a window (read-only)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import click

from outbox_relay.admin.filters import find_tenant
from outbox_relay.admin.reconciliation import ReportScope, reconcile
from outbox_relay.commands.output import cell, echo_json, echo_table
from outbox_relay.commands.params import (
    check_window,
    json_option,
    scope_options,
    window_options,
)
from outbox_relay.commands.session import admin_connection, tenant_id_or_fail

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
        tenant_id = tenant_id_or_fail(conn, tenant)
        # The name, also when the operator gave the id: the report goes to a customer.
        tenant_name = find_tenant(conn, str(tenant_id))[1] if tenant_id else None
        document = reconcile(conn, ReportScope(since, until, tenant_id, tenant_name, stream))
    if as_json:
        echo_json(document)
    else:
        _print_table(document)


def _print_table(document: dict[str, Any]) -> None:
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
