"""ingest-api serve: run the API under gunicorn."""

from __future__ import annotations

import os
import sys
import tempfile

import click

from shared.cli_support import settings_or_exit

# prometheus_client's multiprocess mode; see ingest_api/metrics.py. A folder that
# serve made is removed by gunicorn_conf.on_exit when gunicorn stops.
METRICS_DIR_VARIABLE = "PROMETHEUS_MULTIPROC_DIR"
OWNED_METRICS_DIR_VARIABLE = "INGEST_API_OWNED_METRICS_DIR"


@click.command("serve")
@click.option("--bind", default="127.0.0.1:8000", show_default=True, help="HOST:PORT to listen on")
@click.option("--workers", default=2, show_default=True, type=click.IntRange(min=1))
def serve(bind: str, workers: int) -> None:
    """Serve the ingest API with gunicorn (this process becomes gunicorn)."""
    settings_or_exit("ingest-api", ["database_url"])  # fail here, in one line, not per worker
    if os.environ.get(METRICS_DIR_VARIABLE):  # the operator's folder: used, never removed
        os.makedirs(os.environ[METRICS_DIR_VARIABLE], exist_ok=True)
        os.environ.pop(OWNED_METRICS_DIR_VARIABLE, None)
    else:  # a fresh folder per start, so counters begin at zero with the new master
        folder = tempfile.mkdtemp(prefix="mailroom-metrics-")
        os.environ[METRICS_DIR_VARIABLE] = os.environ[OWNED_METRICS_DIR_VARIABLE] = folder
    argv = [
        sys.executable, "-m", "gunicorn",
        "--config", "python:ingest_api.gunicorn_conf",
        "--bind", bind,
        "--workers", str(workers),
        "ingest_api.wsgi:app",
    ]  # fmt: skip
    os.execv(sys.executable, argv)  # noqa: S606 - become gunicorn, so signals reach it directly
