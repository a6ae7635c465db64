"""The Celery tasks: thin wrappers that hand an id to the send step, the canary record or
the webhook post, and the per-process resources they use (one database pool, one SMTP
connection).

The resources are created lazily in the process that uses them, so prefork children
never share a socket inherited from the parent.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Callable

from mail_worker.deliver import RetryPolicy, deliver
from mail_worker.smtp import SmtpClient
from mail_worker.suppression import UnsubscribeLinks
from mail_worker.webhooks import WebhookPostPolicy, deliver_webhook
from shared.config import Settings
from shared.db import DictPool, create_pool
from shared.store.outbox import record_canary_received

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


def make_send_mail(settings: Settings) -> Callable[[str], str]:
    def send_mail(mail_id: str) -> str:
        return deliver(
            database_pool(settings),
            smtp_client(settings),
            mail_id,
            message_id_domain=settings.message_id_domain,
            worker=worker_name(),
            retry=RetryPolicy(settings.send_max_attempts, settings.send_retry_base),
            unsubscribe=UnsubscribeLinks(settings.public_url, settings.unsubscribe_secret),
        )

    return send_mail


def make_canary(settings: Settings) -> Callable[[str], str]:
    def canary(canary_id: str) -> str:
        """Record that a canary came through the broker; sends no mail."""
        with database_pool(settings).connection() as conn:
            record_canary_received(conn, uuid.UUID(canary_id), worker_name())
        return "received"

    return canary


def make_deliver_webhook(settings: Settings) -> Callable[[str], str]:
    policy = WebhookPostPolicy.from_settings(settings)

    def deliver_webhook_task(delivery_id: str) -> str:
        """POST one status webhook delivery and record the outcome."""
        return deliver_webhook(database_pool(settings), delivery_id, policy)

    return deliver_webhook_task
