"""The publish step: outbox rows become Celery messages, through kombu.

Messages are written in Celery's own wire format (task protocol 2, JSON) so a
stock Celery worker consumes them, without the relay importing the worker. A
message carries the mail id only; the worker reads the mail from the database.
"""

from __future__ import annotations

import contextlib
import os
import socket
import uuid
from dataclasses import dataclass
from typing import Any

from kombu import Connection, Producer

from shared.config import Settings
from shared.queues import ALL_QUEUES, MAIL_EXCHANGE, SEND_MAIL_TASK, broker_transport_options


class PublishError(RuntimeError):
    """The broker did not take the message; the outbox row stays due."""


@dataclass(frozen=True)
class SendMailMessage:
    mail_id: uuid.UUID
    queue: str


def celery_message(mail_id: uuid.UUID, origin: str) -> tuple[Any, dict[str, Any], str]:
    """Body, headers and task id of a ``send_mail(mail_id)`` task message."""
    task_id = str(uuid.uuid4())
    args = [str(mail_id)]
    headers = {
        "lang": "py",
        "task": SEND_MAIL_TASK,
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
        self._origin = f"outbox-relay@{socket.gethostname()}:{os.getpid()}"
        self._connection: Connection | None = None
        self._producer: Producer | None = None

    def _ensure_producer(self) -> Producer:
        if self._producer is None:
            options = broker_transport_options(
                self._settings.broker_url, self._settings.broker_key_prefix
            )
            timeout = self._settings.relay_publish_timeout
            options |= {"socket_timeout": timeout, "socket_connect_timeout": timeout}
            self._connection = Connection(
                self._settings.broker_url,
                transport_options=options,
                connect_timeout=timeout,
            )
            self._connection.ensure_connection(max_retries=1, timeout=timeout)
            channel = self._connection.default_channel
            for queue in ALL_QUEUES:
                queue.bind(channel).declare()
            self._producer = Producer(channel, exchange=MAIL_EXCHANGE, serializer="json")
        return self._producer

    def publish(self, message: SendMailMessage) -> str:
        """Publish one message, or raise PublishError; return the Celery task id."""
        body, headers, task_id = celery_message(message.mail_id, self._origin)
        try:
            self._ensure_producer().publish(
                body,
                routing_key=message.queue,
                headers=headers,
                correlation_id=task_id,
                delivery_mode=2,
                retry=False,
                timeout=self._settings.relay_publish_timeout,
            )
        except Exception as exc:  # any broker failure: drop the connection, keep the row
            self.close()
            raise PublishError(f"{type(exc).__name__}: {exc}") from exc
        return task_id

    def close(self) -> None:
        if self._connection is not None:
            # Closing a broken connection may fail; it is gone either way.
            with contextlib.suppress(Exception):
                self._connection.release()
        self._connection = None
        self._producer = None
