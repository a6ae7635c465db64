"""The publish step: outbox rows become Celery messages, through kombu.

Messages are written in Celery's own wire format (task protocol 2, JSON) so a
stock Celery worker consumes them, without the relay importing the worker. A
message carries an id only; the worker reads the mail from the database.

Redis: a round's messages go out in one pipeline (kombu's ``Producer.batch``),
on the default exchange, so a publish is one LPUSH in a shared round trip.
RabbitMQ: publisher confirms, persistent messages, ``mandatory``, and a named
exchange whose alternate exchange catches what no queue is bound for.
Every publish has a timeout; any failure raises PublishError and the caller
leaves the rows due.
"""

from __future__ import annotations

import contextlib
import os
import socket
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from kombu import Connection, Producer

from shared.config import Settings
from shared.queues import (
    CANARY_TASK,
    DELIVER_WEBHOOK_TASK,
    SEND_MAILS_TASK,
    UNROUTABLE_QUEUE,
    WEBHOOK_QUEUE,
    broker_queue_name,
    broker_transport_options,
    is_amqp,
    mail_exchange,
)


class PublishError(RuntimeError):
    """The broker did not take the messages; the outbox rows stay due."""


@dataclass(frozen=True)
class TaskMessage:
    task: str
    object_ids: tuple[uuid.UUID, ...]  # mail ids, or one canary or webhook delivery id
    queue: str  # the stream's queue; the broker queue adds MAILROOM_QUEUE_PREFIX

    @classmethod
    def send_mails(cls, mail_ids: Sequence[uuid.UUID], queue: str) -> TaskMessage:
        return cls(SEND_MAILS_TASK, tuple(mail_ids), queue)

    @classmethod
    def canary(cls, canary_id: uuid.UUID, queue: str) -> TaskMessage:
        return cls(CANARY_TASK, (canary_id,), queue)

    @classmethod
    def deliver_webhook(cls, delivery_id: uuid.UUID) -> TaskMessage:
        return cls(DELIVER_WEBHOOK_TASK, (delivery_id,), WEBHOOK_QUEUE)

    def args(self) -> list[Any]:
        """The task's arguments: ``send_mails([ids])``, ``canary(id)``, ``deliver_webhook(id)``."""
        ids = [str(object_id) for object_id in self.object_ids]
        return [ids] if self.task == SEND_MAILS_TASK else ids


# Hand-built, not Celery's app.amqp.as_task_v2: that costs ~9 % of Publisher.publish throughput.
def celery_message(message: TaskMessage, origin: str) -> tuple[Any, dict[str, Any], str]:
    """Body, headers and task id of ``<task>(<args>)`` in Celery's protocol 2."""
    task_id = str(uuid.uuid4())
    args = message.args()
    headers = {
        "lang": "py",
        "task": message.task,
        "id": task_id,
        "root_id": task_id,
        "parent_id": None,
        "group": None,
        "eta": None,
        "expires": None,
        "retries": 0,
        "timelimit": [None, None],
        "argsrepr": repr(tuple(args)),
        "kwargsrepr": "{}",
        "origin": origin,
        "ignore_result": True,
    }
    body = [args, {}, {"callbacks": None, "errbacks": None, "chain": None, "chord": None}]
    return body, headers, task_id


class Publisher:
    """One broker connection, reused for every message this relay publishes."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._amqp = is_amqp(settings.broker_url)
        self._origin = f"outbox-relay@{socket.gethostname()}:{os.getpid()}"
        self._connection: Connection | None = None
        self._producer: Producer | None = None

    def connection(self) -> Connection:
        if self._connection is None:
            timeout = self._settings.relay_publish_timeout
            options = broker_transport_options(
                self._settings.broker_url, self._settings.broker_key_prefix
            ) | {"socket_timeout": timeout, "socket_connect_timeout": timeout}
            self._connection = Connection(
                self._settings.broker_url, transport_options=options, connect_timeout=timeout
            )
            self._connection.ensure_connection(max_retries=1, timeout=timeout)
        return self._connection

    def _ensure_producer(self) -> Producer:
        if self._producer is None:
            channel = self.connection().default_channel
            exchange = mail_exchange(self._settings.broker_url)
            if self._amqp:
                # The relay declares the exchanges, never the mail queues: only a
                # worker's declaration makes a queue exist, so a wrong queue name
                # lands in the unroutable queue instead of a queue nobody reads.
                UNROUTABLE_QUEUE.bind(channel).declare()
                exchange.bind(channel).declare()
            self._producer = Producer(channel, exchange=exchange, serializer="json")
        return self._producer

    def publish(self, messages: Sequence[TaskMessage]) -> None:
        """Publish all, or raise PublishError (some may then be published twice later)."""
        if not messages:
            return
        try:
            producer = self._ensure_producer()
            with producer.batch(max_size=max(1, 2 * len(messages))):
                for message in messages:
                    self._publish_one(producer, message)
        except Exception as exc:  # any broker failure: drop the connection, keep the rows
            self.close()
            raise PublishError(f"{type(exc).__name__}: {exc}") from exc

    def _publish_one(self, producer: Producer, message: TaskMessage) -> None:
        body, headers, task_id = celery_message(message, self._origin)
        producer.publish(
            body,
            routing_key=broker_queue_name(message.queue, self._settings.queue_prefix),
            headers=headers,
            correlation_id=task_id,
            delivery_mode=2,
            mandatory=self._amqp,
            retry=False,
            timeout=self._settings.relay_publish_timeout,
        )

    def close(self) -> None:
        if self._connection is not None:
            # Closing a broken connection may fail; it is gone either way.
            with contextlib.suppress(Exception):
                self._connection.release()
        self._connection = None
        self._producer = None
