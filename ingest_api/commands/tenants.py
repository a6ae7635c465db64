"""ingest-api commands for tenants, their sender domains, API keys and webhook secret.

- ``create-tenant NAME --sender-domain DOMAIN``;
- ``add-sender-domain`` / ``remove-sender-domain TENANT DOMAIN...``;
- ``create-key TENANT [--scope send] [--scope read]``: prints the new key once, as
  the last line; ``list-keys TENANT``: by display prefix, never the keys themselves;
  ``revoke-key KEY_PREFIX_OR_KEY``: one key, named by itself or its prefix;
- ``rotate-webhook-secret TENANT``: prints the new secret as the last line.
"""

from __future__ import annotations

import secrets
import sys
from collections.abc import Callable, Iterable
from datetime import datetime
from typing import Any

import click
from email_validator import EmailNotValidError, validate_email

from ingest_api.api_keys import (
    DISPLAY_PREFIX_LENGTH,
    KEY_PREFIX,
    SCOPES,
    display_prefix,
    key_digest,
    new_api_key,
)
from shared.cli_support import error_line, settings_or_exit
from shared.db import connect
from shared.store import Conflict, NotFound
from shared.store import tenants as store
from shared.store.tenants import AmbiguousTenant, KeyToRevoke

# ingest_api.auth.KEY_CACHE_SECONDS: API processes cache a tenant (its domains and
# keys too) per key this long. Importing that module here would load
# prometheus_client into the CLI (see ingest_api/metrics.py).
CACHE_NOTE = "Running API processes use the new domains within 10 s (their key cache time)."


def _database_url() -> str:
    return settings_or_exit("ingest-api", ["database_url"]).database_url


def _when(moment: datetime | None) -> str:
    return "-" if moment is None else moment.strftime("%Y-%m-%d %H:%M:%S %Z")


# ----- tenants and their sender domains -----


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


@click.command("create-tenant")
@click.argument("name")
@click.option(
    "--sender-domain", "sender_domains", multiple=True, required=True,
    help="a domain this tenant may send from (repeat for several); checked by the rules"
    " the API applies to a sender address, so not .test, .local or .invalid",
)  # fmt: skip
def create_tenant(name: str, sender_domains: tuple[str, ...]) -> None:
    """Create a tenant that may send from the given domains.

    Change them later with add-sender-domain and remove-sender-domain.
    """
    domains = checked_sender_domains(sender_domains)
    with connect(_database_url()) as conn:
        try:
            store.create_tenant(conn, name, domains)
        except Conflict:
            raise click.ClickException(f"a tenant named {name!r} already exists") from None
    click.echo(f"created tenant {name} (sender domains: {', '.join(domains)})")


def _change_domains(tenant: str, change: Callable[[list[str]], list[str]]) -> None:
    with connect(_database_url()) as conn, conn.transaction():
        try:
            changed = store.change_sender_domains(conn, tenant, change)
        except NotFound:
            raise click.ClickException(f"no tenant named {tenant!r} (or with that id)") from None
        except AmbiguousTenant:
            raise click.ClickException(f"{tenant!r} names one tenant and is another's id") from None
    click.echo(f"tenant {changed.name} sender domains: {', '.join(changed.sender_domains)}")


@click.command("add-sender-domain", epilog=CACHE_NOTE)
@click.argument("tenant")
@click.argument("domains", nargs=-1, required=True)
def add_sender_domain(tenant: str, domains: tuple[str, ...]) -> None:
    """Let TENANT (its name or id) send from DOMAINS as well.

    Domains it has already are left as they are.
    """
    added = checked_sender_domains(domains)
    _change_domains(tenant, lambda before: sorted({*before, *added}))


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

    _change_domains(tenant, without)


@click.command("rotate-webhook-secret")
@click.argument("tenant")
def rotate_webhook_secret(tenant: str) -> None:
    """Give TENANT a new webhook secret; signatures made with the old one stop working now.

    The secret signs CDP events (POST /v1/cdp/events); it is stored as is,
    since checking an HMAC needs it, and shown now.
    """
    database_url = _database_url()
    secret = secrets.token_hex(32)
    with connect(database_url) as conn:
        try:
            tenant_id = store.set_webhook_secret(conn, tenant, secret)
        except NotFound:
            raise click.ClickException(f"no tenant named {tenant!r}") from None
    click.echo(f"new webhook secret for tenant {tenant} (X-Mailroom-Tenant: {tenant_id}):")
    click.echo(secret)


# ----- API keys -----

KEY_HEADINGS = ("PREFIX", "SCOPES", "CREATED", "REVOKED")


@click.command("create-key")
@click.argument("tenant")
@click.option(
    "--scope", "scopes", multiple=True, type=click.Choice(SCOPES),
    help="what the key may do (repeat for several; default: all of them)",
)  # fmt: skip
def create_key(tenant: str, scopes: tuple[str, ...]) -> None:
    """Create an API key for TENANT; it is shown now and never again."""
    database_url = _database_url()
    granted = [scope for scope in SCOPES if scope in scopes] if scopes else list(SCOPES)
    key = new_api_key()
    with connect(database_url) as conn:
        try:
            store.create_api_key(
                conn, tenant, key_prefix=display_prefix(key), key_hash=key_digest(key),
                scopes=granted,
            )  # fmt: skip
        except NotFound:
            raise click.ClickException(f"no tenant named {tenant!r}") from None
    click.echo(
        f"created key {display_prefix(key)}… for tenant {tenant}"
        f" (scopes: {', '.join(granted)}); store it now:"
    )
    click.echo(key)


@click.command("list-keys")
@click.argument("tenant")
def list_keys(tenant: str) -> None:
    """List TENANT's API keys, oldest first: prefix, scopes, created, revoked."""
    with connect(_database_url()) as conn:
        try:
            keys = store.api_keys_of_tenant(conn, tenant)
        except NotFound:
            raise click.ClickException(f"no tenant named {tenant!r}") from None
    table = [KEY_HEADINGS] + [
        (f"{key.key_prefix}…", ",".join(key.scopes), _when(key.created_at), _when(key.revoked_at))
        for key in keys
    ]
    widths = [max(len(line[column]) for line in table) for column in range(len(KEY_HEADINGS))]
    for line in table:
        cells = (cell.ljust(width) for cell, width in zip(line, widths, strict=True))
        click.echo("  ".join(cells).rstrip())


def _describe(key: KeyToRevoke) -> str:
    return f"{key.key_prefix}… of tenant {key.tenant} (created {_when(key.created_at)})"


def _search_terms(given: str) -> dict[str, Any]:
    """The full key is found by its digest, a display prefix by equality; else an error."""
    text = given.strip().removesuffix("…").removesuffix("...")
    if not text.startswith(KEY_PREFIX) or len(text) < DISPLAY_PREFIX_LENGTH:
        raise click.ClickException(
            f"give the full key or its display prefix ({DISPLAY_PREFIX_LENGTH} characters,"
            f" as create-key and list-keys show it, such as {KEY_PREFIX}AbC123…)"
        )
    if len(text) == DISPLAY_PREFIX_LENGTH:
        return {"key_hash": None, "key_prefix": text}
    return {"key_hash": key_digest(text), "key_prefix": None}


@click.command("revoke-key")
@click.argument("key_prefix_or_key")
def revoke_key(key_prefix_or_key: str) -> None:
    """Revoke the key KEY_PREFIX_OR_KEY: the whole key, or its display prefix.

    A prefix that several unrevoked keys share is refused: give the whole key.
    Running API processes stop accepting the key within their key cache time.
    """
    terms = _search_terms(key_prefix_or_key)
    with connect(_database_url()) as conn:
        keys = store.api_keys_named(conn, **terms)
        active = [key for key in keys if key.revoked_at is None]
        if not keys:
            raise click.ClickException(f"no API key matches {key_prefix_or_key!r}")
        if len(active) > 1:
            listing = "\n".join(f"  {_describe(key)}" for key in active)
            raise click.ClickException(
                f"{len(active)} unrevoked keys start with {terms['key_prefix']}; nothing was"
                f" revoked. Give the whole key to choose one:\n{listing}"
            )
        if not active:
            key = keys[-1]
            click.echo(f"key {_describe(key)} was already revoked at {_when(key.revoked_at)}")
            return
        (key,) = active
        store.revoke_api_key(conn, key.id)
    # The number is ingest_api.auth.KEY_CACHE_SECONDS (see CACHE_NOTE).
    click.echo(f"revoked key {_describe(key)}; running API processes refuse it within 10 s")
