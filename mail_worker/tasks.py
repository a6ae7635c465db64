"""The Celery task: a thin wrapper that hands the mail id to the send step."""

from __future__ import annotations

from collections.abc import Callable

from mail_worker import resources
from mail_worker.deliver import deliver
from shared.config import Settings


def make_send_mail(settings: Settings) -> Callable[[str], str]:
    def send_mail(mail_id: str) -> str:
        return deliver(
            resources.database_pool(settings),
            resources.smtp_client(settings),
            mail_id,
            message_id_domain=settings.message_id_domain,
            worker=resources.worker_name(),
        )

    return send_mail
