"""Names shared by the relay (which publishes) and the worker (which consumes).

Kept in one place so that the two sides cannot disagree by a typo. The broker
queue of a stream is ``MAILROOM_QUEUE_PREFIX`` + the stream's queue name; a
relay and a worker configured with different prefixes is exactly the
misconfiguration the canary and ``outbox-relay check`` exist to catch.
"""

from __future__ import annotations

from kombu import Exchange, Queue

from shared.streams import PUBLISH_ORDER, Stream

# A batch of mail ids of one queue; the relay publishes these.
SEND_MAILS_TASK = "mailroom.send_mails"
# One mail id: what relays published before batches; workers still consume it.
SEND_MAIL_TASK = "mailroom.send_mail"
CANARY_TASK = "mailroom.canary"
DELIVER_WEBHOOK_TASK = "mailroom.deliver_webhook"  # status webhooks

# The PostgreSQL channel on which the API wakes the relays after committing mail.
OUTBOX_CHANNEL = "mailroom_outbox"

# A stream's queue is named after it (shared.streams).
TRANSACTIONAL_QUEUE = Stream.TRANSACTIONAL.queue
CAMPAIGN_QUEUE = Stream.CAMPAIGN.queue

STREAM_QUEUES = {stream.value: stream.queue for stream in Stream}
# The order in which a relay fills a batch: a campaign burst never delays a password reset.
QUEUE_PRIORITY = tuple(stream.queue for stream in PUBLISH_ORDER)
# ----- status webhooks -----
# Webhook deliveries have their own queue, so a slow receiver never delays mail.
# It is not a mail stream: no mail outbox rows and no canary (QUEUE_PRIORITY is
# unchanged), but a worker consumes it by default (WORKER_QUEUES, all_queues).
WEBHOOK_QUEUE = "webhooks"
WORKER_QUEUES = (*QUEUE_PRIORITY, WEBHOOK_QUEUE)

# RabbitMQ: what no queue is bound for goes to this fanout exchange and queue,
# which the relay drains back into the outbox, instead of being dropped.
UNROUTABLE_EXCHANGE = Exchange("mailroom.unroutable", type="fanout", durable=True)
UNROUTABLE_QUEUE = Queue("mailroom.unroutable", UNROUTABLE_EXCHANGE, routing_key="", durable=True)


def is_amqp(broker_url: str) -> bool:
    return broker_url.startswith(("amqp", "pyamqp"))


def mail_exchange(broker_url: str) -> Exchange:
    """RabbitMQ: a durable direct exchange with an alternate exchange.

    Redis: the default exchange, which kombu turns into one LPUSH onto the queue
    named by the routing key (a named exchange costs a lookup per message).
    """
    if is_amqp(broker_url):
        return Exchange(
            "mailroom",
            type="direct",
            durable=True,
            arguments={"alternate-exchange": UNROUTABLE_EXCHANGE.name},
        )
    return Exchange("", type="direct")


def broker_queue_name(queue: str, prefix: str) -> str:
    return prefix + queue


def kombu_queue(queue: str, broker_url: str, prefix: str = "") -> Queue:
    """The declaration of one stream's queue, as the worker makes it."""
    name = broker_queue_name(queue, prefix)
    exchange = mail_exchange(broker_url)
    if not exchange.name:
        return Queue(name, routing_key=name, durable=True)
    return Queue(name, exchange, routing_key=name, durable=True)


def all_queues(broker_url: str, prefix: str = "") -> tuple[Queue, ...]:
    return tuple(kombu_queue(queue, broker_url, prefix) for queue in WORKER_QUEUES)


def broker_transport_options(broker_url: str, key_prefix: str) -> dict[str, object]:
    """Transport options for kombu and Celery."""
    options: dict[str, object] = {}
    if is_amqp(broker_url):
        options["confirm_publish"] = True  # RabbitMQ confirms every publish
        return options
    if key_prefix:
        options["global_keyprefix"] = key_prefix  # several installations on one Redis
    # Redis restores unacked messages after this many seconds; it must exceed the
    # longest task, or a slow send would be delivered to a second worker.
    options["visibility_timeout"] = 3600
    # A worker consuming several queues asks them in the order it was given (WORKER_QUEUES:
    # transactional first) instead of kombu's round robin, so a campaign burst in the
    # queue delays a password reset by at most the batch a process is sending.
    options["queue_order_strategy"] = "priority"
    return options
