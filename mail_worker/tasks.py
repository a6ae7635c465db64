"""The Celery tasks: thin wrappers that hand ids to the send step, the canary record or
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

from mail_worker.deliver import RetryPolicy, SendOptions, deliver_many
from mail_worker.lease import WorkerLease, ensure_lease, release_lease
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


def close_resources() -> None:
    """Give the lease up, close the pool and the SMTP connection (tests; a worker keeps
    them until it exits)."""
    global _pool, _smtp
    release_lease()
    if _smtp is not None:
        _smtp.close()
    if _pool is not None:
        _pool.close()
    _pool, _smtp = None, None


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def send_options(settings: Settings, lease: WorkerLease) -> SendOptions:
    return SendOptions(
        message_id_domain=settings.message_id_domain,
        worker=worker_name(),
        retry=RetryPolicy(settings.send_max_attempts, settings.send_retry_base),
        unsubscribe=UnsubscribeLinks(settings.public_url, settings.unsubscribe_secret),
        database_retry_seconds=settings.worker_database_retry_seconds,
        # One renewal's margin: a mail whose send starts now ends before the lease lapses.
        lease_held=lambda: lease.held(margin=lease.interval),
    )


def make_send_mails(settings: Settings) -> Callable[[list[str]], list[str]]:
    def send_mails(mail_ids: list[str]) -> list[str]:
        """Send a batch of mails (the relay groups a round's mails of one queue)."""
        lease = ensure_lease(database_pool(settings), worker_name(), settings.worker_lease_seconds)
        options = send_options(settings, lease)
        return deliver_many(database_pool(settings), smtp_client(settings), mail_ids, options)

    return send_mails


def make_send_mail(settings: Settings) -> Callable[[str], str]:
    def send_mail(mail_id: str) -> str:
        """One mail: the message an older relay publishes, consumed during an upgrade."""
        lease = ensure_lease(database_pool(settings), worker_name(), settings.worker_lease_seconds)
        options = send_options(settings, lease)
        return deliver_many(database_pool(settings), smtp_client(settings), [mail_id], options)[0]

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
