"""The Celery tasks: thin wrappers that hand an id to the send step or the canary record."""

from __future__ import annotations

from collections.abc import Callable

from mail_worker import resources
from mail_worker.deliver import RetryPolicy, deliver, record_canary
from mail_worker.suppression import UnsubscribeLinks
from mail_worker.webhooks import WebhookPolicy, deliver_webhook
from shared.config import Settings


def make_send_mail(settings: Settings) -> Callable[[str], str]:
    def send_mail(mail_id: str) -> str:
        return deliver(
            resources.database_pool(settings),
            resources.smtp_client(settings),
            mail_id,
            message_id_domain=settings.message_id_domain,
            worker=resources.worker_name(),
            retry=RetryPolicy(settings.send_max_attempts, settings.send_retry_base),
            unsubscribe=UnsubscribeLinks(settings.public_url, settings.unsubscribe_secret),
        )

    return send_mail


def make_canary(settings: Settings) -> Callable[[str], str]:
    def canary(canary_id: str) -> str:
        """Record that a canary came through the broker; sends no mail."""
        record_canary(resources.database_pool(settings), canary_id, resources.worker_name())
        return "received"

    return canary


def make_deliver_webhook(settings: Settings) -> Callable[[str], str]:
    policy = WebhookPolicy.from_settings(settings)

    def deliver_webhook_task(delivery_id: str) -> str:
        """POST one status webhook delivery and record the outcome."""
        return deliver_webhook(resources.database_pool(settings), delivery_id, policy)

    return deliver_webhook_task
