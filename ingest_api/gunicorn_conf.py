"""gunicorn settings for ``ingest-api serve`` (``-c python:ingest_api.gunicorn_conf``).

Threaded workers keep client connections alive and share one database pool per
process; bind and worker count come from the command line, the rest from the
configuration loader like every other process.
"""

import json
import os
import shutil
import sys
from typing import Any

from gunicorn.util import write_nonblock
from gunicorn.workers.gthread import ThreadWorker

from shared.config import ConfigError, load_settings

# ``ingest-api serve`` has checked the configuration already; this is for gunicorn
# started by hand (bench/celery_baseline.py): one line, not gunicorn's traceback.
try:
    _settings = load_settings()
except ConfigError as exc:
    sys.exit(f"ingest-api: configuration error: {exc}")

# The field a problem+json body names for the requests gunicorn itself refuses.
_REFUSED_PART = {414: "url", 431: "headers"}


class _CapturedSocket:
    """Stands in for the client socket while gunicorn writes its error response,
    so that the response can be read and answered in our format instead."""

    def __init__(self) -> None:
        self.written = b""

    def gettimeout(self) -> float:
        return 0.0

    def sendall(self, data: bytes) -> None:
        self.written += data


def problem_response(status: int, reason: str, detail: str) -> bytes:
    """An HTTP/1.1 response with an application/problem+json body (as errors.problem)."""
    body: dict[str, Any] = {"type": "about:blank", "title": reason, "status": status}
    body["detail"] = detail
    if status < 500:
        body["errors"] = {_REFUSED_PART.get(status, "request"): [detail]}
    payload = json.dumps(body).encode()
    head = (
        f"HTTP/1.1 {status} {reason}\r\n"
        "Connection: close\r\n"
        "Content-Type: application/problem+json\r\n"
        f"Content-Length: {len(payload)}\r\n\r\n"
    )
    return head.encode("latin-1") + payload


class ProblemJsonThreadWorker(ThreadWorker):  # type: ignore[misc]  # gunicorn is untyped
    """gunicorn's gthread worker, whose own error responses (a request line over
    ``limit_request_line``: 414, malformed headers: 400, ...) are problem+json
    like the application's, not HTML.

    gunicorn decides the status, logs and writes its HTML page in one method;
    that method runs unchanged against a stand-in socket, and only the status
    line it wrote is kept.
    """

    def handle_error(self, req: Any, client: Any, addr: Any, exc: BaseException) -> None:
        captured = _CapturedSocket()
        super().handle_error(req, captured, addr, exc)
        status_line = captured.written.split(b"\r\n", 1)[0].decode("latin-1")
        try:
            _, code, reason = status_line.split(" ", 2)
            status = int(code)
        except ValueError:  # nothing written: gunicorn chose not to answer
            return
        # gunicorn's message for a client error is str(exc); a server error says nothing.
        detail = str(exc) if status < 500 else "an internal error occurred"
        try:
            write_nonblock(client, problem_response(status, reason, detail))
        except Exception:  # the client is gone; gunicorn ignores this too
            self.log.debug("Failed to send error message.")


worker_class = ProblemJsonThreadWorker  # gthread, with problem+json errors
threads = _settings.api_threads
keepalive = 30
graceful_timeout = 20
timeout = 60
accesslog = None
errorlog = "-"
loglevel = "warning"
proc_name = "ingest-api"


def child_exit(server: object, worker: Any) -> None:
    """A worker ended: let prometheus_client drop its live-gauge files (see metrics.py)."""
    if _settings.prometheus_multiproc_dir:
        from prometheus_client import multiprocess  # noqa: PLC0415 - only in multiprocess mode

        multiprocess.mark_process_dead(worker.pid)  # type: ignore[no-untyped-call]


def on_exit(server: object) -> None:
    """gunicorn stops: remove the metrics folder ``ingest-api serve`` made for it."""
    # Not configuration: serve's note to this hook that it made the folder itself.
    folder = os.environ.get("INGEST_API_OWNED_METRICS_DIR")
    if folder and folder == _settings.prometheus_multiproc_dir:
        shutil.rmtree(folder, ignore_errors=True)
