"""ingest-api revoke-key KEY_PREFIX_OR_KEY: revoke one key, named by itself or its prefix."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import click
from psycopg.rows import dict_row

from ingest_api.api_keys import DISPLAY_PREFIX_LENGTH, KEY_PREFIX, key_digest
from shared.cli_support import settings_or_exit
from shared.db import connect
from shared.queries import QUERIES


def _when(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%S %Z")


def _describe(row: dict[str, Any]) -> str:
    return f"{row['key_prefix']}… of tenant {row['tenant']} (created {_when(row['created_at'])})"


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
    settings = settings_or_exit("ingest-api", ["database_url"])
    with connect(settings.database_url) as conn:
        cursor = conn.cursor(row_factory=dict_row)
        rows = cursor.execute(QUERIES["find_api_keys_to_revoke"], terms).fetchall()
        active = [row for row in rows if row["revoked_at"] is None]
        if not rows:
            raise click.ClickException(f"no API key matches {key_prefix_or_key!r}")
        if len(active) > 1:
            listing = "\n".join(f"  {_describe(row)}" for row in active)
            raise click.ClickException(
                f"{len(active)} unrevoked keys start with {terms['key_prefix']}; nothing was"
                f" revoked. Give the whole key to choose one:\n{listing}"
            )
        if not active:
            row = rows[-1]
            click.echo(f"key {_describe(row)} was already revoked at {_when(row['revoked_at'])}")
            return
        (row,) = active
        conn.execute(QUERIES["revoke_api_key"], {"id": row["id"]})
    # The number is ingest_api.auth.KEY_CACHE_SECONDS; importing that module here would
    # load prometheus_client into the CLI (see ingest_api/metrics.py).
    click.echo(f"revoked key {_describe(row)}; running API processes refuse it within 10 s")
