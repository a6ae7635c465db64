"""The Celery application: ``celery -A mail_worker.celery_app worker`` or ``mail-worker run``.

Settings fit at-least-once delivery from the broker: a message is acknowledged
only after the task has finished (``acks_late``), returned to the queue if the
worker process dies (``reject_on_worker_lost``), and each process reserves one
message at a time so a dead worker strands nothing.
"""

from __future__ import annotations

from typing import Any

from celery import Celery
from celery.signals import setup_logging

from mail_worker.tasks import make_canary, make_deliver_webhook, make_send_mail, make_send_mails
from shared.cli_support import settings_or_exit
from shared.config import Settings
from shared.jsonlog import configure_logging
from shared.queues import (
    CANARY_TASK,
    DELIVER_WEBHOOK_TASK,
    SEND_MAIL_TASK,
    SEND_MAILS_TASK,
    all_queues,
    broker_queue_name,
    broker_transport_options,
)
from shared.streams import Stream

WORKER_REQUIRES = ("database_url", "broker_url", "smtp", "message_id_domain")


def create_celery_app(settings: Settings) -> Celery:
    celery = Celery("mailroom")
    celery.conf.update(
        broker_url=settings.broker_url,
        broker_transport_options=broker_transport_options(
            settings.broker_url, settings.broker_key_prefix
        ),
        broker_connection_retry_on_startup=True,
        task_queues=all_queues(settings.broker_url, settings.queue_prefix),
        task_default_queue=broker_queue_name(Stream.TRANSACTIONAL.queue, settings.queue_prefix),
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        task_acks_on_failure_or_timeout=True,
        worker_prefetch_multiplier=1,
        task_ignore_result=True,
        task_serializer="json",
        accept_content=["json"],
        # The hard limit ends a stuck send well before the relay's sending timeout
        # declares the worker lost and puts the mail back: never two live sends.
        task_soft_time_limit=settings.sending_timeout * 0.5,
        task_time_limit=settings.sending_timeout * 0.6,
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
    )
    celery.task(name=SEND_MAILS_TASK, bind=False, acks_late=True, reject_on_worker_lost=True)(
        make_send_mails(settings)
    )
    celery.task(name=SEND_MAIL_TASK, bind=False, acks_late=True, reject_on_worker_lost=True)(
        make_send_mail(settings)
    )
    celery.task(name=CANARY_TASK, bind=False, acks_late=True)(make_canary(settings))
    # status webhooks: retries are rows in PostgreSQL, so the message is acked either way
    celery.task(name=DELIVER_WEBHOOK_TASK, bind=False, acks_late=True)(
        make_deliver_webhook(settings)
    )
    return celery


settings = settings_or_exit("mail-worker", WORKER_REQUIRES)
app = create_celery_app(settings)


@setup_logging.connect
def _json_logging(**_: Any) -> None:
    """Connecting this signal stops Celery from installing its own log format."""
    configure_logging("mail-worker", settings.log_level)
