"""ingest-api add-sender-domain / remove-sender-domain TENANT DOMAIN...: change the
domains a tenant may send from; and the check every sender domain passes."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable
from typing import Any

import click
from email_validator import EmailNotValidError, validate_email
from psycopg.rows import dict_row

from shared.cli_support import error_line, settings_or_exit
from shared.db import connect
from shared.queries import QUERIES

# ingest_api.auth.KEY_CACHE_SECONDS: API processes cache a tenant (its domains too) per
# key this long. Importing that module here would load prometheus_client into the CLI.
CACHE_NOTE = "Running API processes use the new domains within 10 s (their key cache time)."


def checked_sender_domains(given: Iterable[str]) -> list[str]:
    """The domains, in the form the API compares a sender's domain with (lower-case
    ASCII, IDNs as xn--), sorted and deduplicated; a domain the API would refuse in
    every sender address (not a domain, a special-use one such as .test) stops the
    command with one line on stderr and exit status 2."""
    domains: set[str] = set()
    for text in given:
        try:
            # The API's rule for a sender address (ingest_api.schemas.fields.Mailbox).
            checked = validate_email(
                f"postmaster@{text.strip()}", check_deliverability=False, allow_smtputf8=True
            )
        except EmailNotValidError as exc:
            click.echo(f"ingest-api: {text!r} is not a sender domain: {error_line(exc)}", err=True)
            sys.exit(2)
        domains.add(checked.ascii_domain)
    return sorted(domains)


def _as_stored(text: str) -> str:
    """A domain to remove, as it would have been stored; one stored before the checks
    above existed (say ``foo.test``) can still be named and removed."""
    try:
        return validate_email(
            f"postmaster@{text.strip()}", check_deliverability=False, allow_smtputf8=True
        ).ascii_domain
    except EmailNotValidError:
        return text.strip().lower()


def _change(tenant: str, change: Callable[[list[str]], list[str]]) -> None:
    settings = settings_or_exit("ingest-api", ["database_url"])
    with connect(settings.database_url) as conn:
        cursor = conn.cursor(row_factory=dict_row)
        rows: list[dict[str, Any]] = cursor.execute(
            QUERIES["lock_tenant_sender_domains"], {"tenant": tenant}
        ).fetchall()
        if not rows:
            raise click.ClickException(f"no tenant named {tenant!r} (or with that id)")
        if len(rows) > 1:
            raise click.ClickException(f"{tenant!r} names one tenant and is another's id")
        (row,) = rows
        before = list(row["sender_domains"])
        after = change(before)
        if after != before:
            conn.execute(
                QUERIES["set_tenant_sender_domains"], {"id": row["id"], "sender_domains": after}
            )
    click.echo(f"tenant {row['name']} sender domains: {', '.join(after)}")


@click.command("add-sender-domain", epilog=CACHE_NOTE)
@click.argument("tenant")
@click.argument("domains", nargs=-1, required=True)
def add_sender_domain(tenant: str, domains: tuple[str, ...]) -> None:
    """Let TENANT (its name or id) send from DOMAINS as well.

    Domains it has already are left as they are.
    """
    added = checked_sender_domains(domains)
    _change(tenant, lambda before: sorted({*before, *added}))


@click.command("remove-sender-domain", epilog=CACHE_NOTE)
@click.argument("tenant")
@click.argument("domains", nargs=-1, required=True)
def remove_sender_domain(tenant: str, domains: tuple[str, ...]) -> None:
    """Stop TENANT (its name or id) sending from DOMAINS.

    Mail already accepted is still sent. Removing every domain is refused: a
    tenant without one could not send at all.
    """
    removed = {_as_stored(domain) for domain in domains}

    def without(before: list[str]) -> list[str]:
        missing = sorted(removed - set(before))
        if missing:
            raise click.ClickException(
                f"not a sender domain of this tenant: {', '.join(missing)}; nothing was removed"
            )
        after = [domain for domain in before if domain not in removed]
        if not after:
            raise click.ClickException(
                "a tenant needs at least one sender domain; nothing was removed"
            )
        return after

    _change(tenant, without)
