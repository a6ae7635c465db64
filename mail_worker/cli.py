"""The ``mail-worker`` command."""

from __future__ import annotations

import click

from shared.queues import WORKER_QUEUES, broker_queue_name


@click.group()
def cli() -> None:
    """The mailroom worker: renders and sends mail over SMTP."""


@cli.command("run")
@click.option("--concurrency", default=2, show_default=True, type=click.IntRange(min=1))
@click.option(
    "--queues", default=",".join(WORKER_QUEUES), show_default=True,
    help="comma-separated queues to consume: the mail streams and 'webhooks'"
    " (run one worker per queue to isolate them)",
)  # fmt: skip
def run(concurrency: int, queues: str) -> None:
    """Run a Celery worker consuming the mail queues and the webhook queue."""
    # Imported here: it loads the settings, and --help must work without them.
    from mail_worker.celery_app import app, settings  # noqa: PLC0415

    names = [broker_queue_name(q.strip(), settings.queue_prefix) for q in queues.split(",")]
    app.worker_main(
        [
            "worker",
            f"--concurrency={concurrency}",
            f"--queues={','.join(names)}",
            "--without-gossip",
            "--without-mingle",
            "--loglevel=INFO",
        ]
    )


def main() -> None:
    cli()
