"""ingest-api serve: run the API under gunicorn."""

from __future__ import annotations

import os
import sys

import click

from shared.cli_support import settings_or_exit


@click.command("serve")
@click.option("--bind", default="127.0.0.1:8000", show_default=True, help="HOST:PORT to listen on")
@click.option("--workers", default=2, show_default=True, type=click.IntRange(min=1))
def serve(bind: str, workers: int) -> None:
    """Serve the ingest API with gunicorn (this process becomes gunicorn)."""
    settings_or_exit("ingest-api", ["database_url"])  # fail here, in one line, not per worker
    argv = [
        sys.executable, "-m", "gunicorn",
        "--config", "python:ingest_api.gunicorn_conf",
        "--bind", bind,
        "--workers", str(workers),
        "ingest_api.wsgi:app",
    ]  # fmt: skip
    os.execv(sys.executable, argv)  # noqa: S606 - become gunicorn, so signals reach it directly
