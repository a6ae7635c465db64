"""Names shared by the relay (which publishes) and the worker (which consumes).

Kept in one place so that a typo cannot route mail into a queue nobody reads.
"""

from __future__ import annotations

from kombu import Exchange, Queue

SEND_MAIL_TASK = "mailroom.send_mail"

# The PostgreSQL channel on which the API wakes the relays after committing mail.
OUTBOX_CHANNEL = "mailroom_outbox"

TRANSACTIONAL_QUEUE = "transactional"
CAMPAIGN_QUEUE = "campaign"

STREAM_QUEUES = {"transactional": TRANSACTIONAL_QUEUE, "campaign": CAMPAIGN_QUEUE}

MAIL_EXCHANGE = Exchange("mailroom", type="direct", durable=True)


def kombu_queue(name: str) -> Queue:
    """The declaration both sides use: a durable queue bound by its own name."""
    return Queue(name, MAIL_EXCHANGE, routing_key=name, durable=True)


ALL_QUEUES = tuple(kombu_queue(name) for name in STREAM_QUEUES.values())


def broker_transport_options(broker_url: str, key_prefix: str) -> dict[str, object]:
    """Transport options for kombu/Celery; a key prefix isolates tenants of one Redis."""
    options: dict[str, object] = {}
    if broker_url.startswith(("redis", "rediss")) and key_prefix:
        options["global_keyprefix"] = key_prefix
    if broker_url.startswith(("redis", "rediss")):
        # Redis restores unacked messages after this many seconds; it must exceed
        # the longest task, or a slow send would be delivered to a second worker.
        options["visibility_timeout"] = 3600
    return options
