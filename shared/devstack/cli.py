"""The ``mailroom`` command: ``mailroom up`` runs the whole pipeline locally."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from shared.devstack.stack import up as run_up


@click.group()
def cli() -> None:
    """mailroom on one machine, for development and demos."""


@cli.command("up")
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path(".mailroom"),
    show_default=True,
    help="where the embedded servers keep their data, the demo key, logs and received mail",
)
@click.option(
    "--port", type=click.IntRange(1, 65535), default=8000, show_default=True,
    help="port of the ingest API on 127.0.0.1",
)  # fmt: skip
def up(data_dir: Path, port: int) -> None:
    """Run the whole pipeline on this machine until Ctrl-C.

    Starts PostgreSQL, Redis and an SMTP sink that writes .eml files (each
    unless MAILROOM_DATABASE_URL, MAILROOM_BROKER_URL or MAILROOM_SMTP_URL
    names one), applies migrations, creates the demo tenant and its API key,
    then runs ingest-api, outbox-relay and mail-worker.
    """
    sys.exit(run_up(data_dir.resolve(), port))


def main() -> None:
    cli()
