"""The ``mail-worker`` command."""

from __future__ import annotations

import click

from shared.queues import STREAM_QUEUES


@click.group()
def cli() -> None:
    """The mailroom worker: renders and sends mail over SMTP."""


@cli.command("run")
@click.option("--concurrency", default=2, show_default=True, type=click.IntRange(min=1))
@click.option(
    "--queues", default=",".join(STREAM_QUEUES.values()), show_default=True,
    help="comma-separated queues to consume",
)  # fmt: skip
def run(concurrency: int, queues: str) -> None:
    """Run a Celery worker consuming the mail queues."""
    from mail_worker.celery_app import app  # noqa: PLC0415 - loads settings; keep --help usable without them

    app.worker_main(
        [
            "worker",
            f"--concurrency={concurrency}",
            f"--queues={queues}",
            "--without-gossip",
            "--without-mingle",
            "--loglevel=INFO",
        ]
    )


def main() -> None:
    cli()
