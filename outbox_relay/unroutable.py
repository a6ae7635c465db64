"""RabbitMQ's safety net: messages no queue was bound for land in the
alternate exchange's queue; the relay drains it, records an ``unroutable``
event on each mail (its outbox row is still leased and will be published
again), and counts them, so a routing mistake is seen, not lost."""

from __future__ import annotations

import json
import logging
import uuid

import psycopg

from outbox_relay.publish import Publisher
from shared.queries import QUERIES
from shared.queues import SEND_MAIL_TASK, UNROUTABLE_QUEUE

log = logging.getLogger(__name__)

MAX_DRAIN = 1000


def drain_unroutable(conn: psycopg.Connection, publisher: Publisher) -> int:
    channel = publisher.connection().default_channel
    drained = 0
    while drained < MAX_DRAIN:
        message = channel.basic_get(queue=UNROUTABLE_QUEUE.name, no_ack=False)
        if message is None:
            break
        drained += 1
        routing_key = message.delivery_info.get("routing_key", "")
        if message.headers.get("task") == SEND_MAIL_TASK:
            mail_id = uuid.UUID(json.loads(message.body)[0][0])
            conn.execute(
                QUERIES["record_unroutable"], {"mail_id": mail_id, "routing_key": routing_key}
            )
        channel.basic_ack(message.delivery_info["delivery_tag"])
    if drained:
        log.error(
            "the broker could not route messages: check queue names and bindings",
            extra={"count": drained},
        )
    return drained
