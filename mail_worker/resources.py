"""Per-process resources of a worker: one database pool and one SMTP connection.

Created lazily in the process that uses them, so prefork children never share a
socket inherited from the parent.
"""

from __future__ import annotations

import os
import socket

from mail_worker.smtp import SmtpClient
from shared.config import Settings
from shared.db import DictPool, create_pool

_pool: DictPool | None = None
_smtp: SmtpClient | None = None
_owner_pid: int | None = None


def _reset_after_fork() -> None:
    global _pool, _smtp, _owner_pid
    if _owner_pid != os.getpid():
        _pool, _smtp, _owner_pid = None, None, os.getpid()


def database_pool(settings: Settings) -> DictPool:
    global _pool  # noqa: PLW0603
    _reset_after_fork()
    if _pool is None:
        _pool = create_pool(settings, name="mail-worker", max_size=2)
    return _pool


def smtp_client(settings: Settings) -> SmtpClient:
    global _smtp  # noqa: PLW0603
    _reset_after_fork()
    if _smtp is None:
        assert settings.smtp is not None
        _smtp = SmtpClient(
            settings.smtp, timeout=settings.smtp_timeout, ca_file=settings.smtp_ca_file or None
        )
    return _smtp


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"
