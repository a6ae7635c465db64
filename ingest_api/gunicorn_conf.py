"""gunicorn settings for ``ingest-api serve`` (``-c python:ingest_api.gunicorn_conf``).

Threaded workers keep client connections alive and share one database pool per
process; bind and worker count come from the command line.
"""

import os
import shutil
from typing import Any

worker_class = "gthread"
threads = int(os.environ.get("MAILROOM_API_THREADS", "8"))
keepalive = 30
graceful_timeout = 20
timeout = 60
accesslog = None
errorlog = "-"
loglevel = "warning"
proc_name = "ingest-api"


def child_exit(server: object, worker: Any) -> None:
    """A worker ended: let prometheus_client drop its live-gauge files (see metrics.py)."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess  # noqa: PLC0415 - only in multiprocess mode

        multiprocess.mark_process_dead(worker.pid)  # type: ignore[no-untyped-call]


def on_exit(server: object) -> None:
    """gunicorn stops: remove the metrics folder ``ingest-api serve`` made for it."""
    folder = os.environ.get("INGEST_API_OWNED_METRICS_DIR")
    if folder and folder == os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        shutil.rmtree(folder, ignore_errors=True)
