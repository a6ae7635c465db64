"""The canary: a synthetic message per queue, through the same publisher and
broker queues as mail, that a worker acknowledges in the database.

It is what tells a relay that publishes into a queue nobody consumes (the
outage this project exists to prevent) from one that works, within a minute.
"""

from __future__ import annotations

import logging
import uuid

import psycopg

from outbox_relay.publish import Publisher, TaskMessage
from shared.pipeline_health import QueueHealth, is_healthy
from shared.queries import QUERIES
from shared.queues import QUEUE_PRIORITY

log = logging.getLogger(__name__)


def send_canaries(
    conn: psycopg.Connection, publisher: Publisher, relay_name: str
) -> list[uuid.UUID]:
    """Publish one canary per queue; raises PublishError if the broker refuses."""
    canaries = [(uuid.uuid4(), queue) for queue in QUEUE_PRIORITY]
    with conn.transaction():
        for canary_id, queue in canaries:
            conn.execute(
                QUERIES["insert_canary"], {"id": canary_id, "queue": queue, "relay": relay_name}
            )
    publisher.publish([TaskMessage.canary(canary_id, queue) for canary_id, queue in canaries])
    ids = [canary_id for canary_id, _ in canaries]
    conn.execute(QUERIES["mark_canaries_published"], {"ids": ids})
    return ids


class IncidentLog:
    """Logs a broken pipeline at ERROR once per incident, and its recovery once."""

    def __init__(self) -> None:
        self.broken = False

    def observe(self, health: list[QueueHealth]) -> bool:
        """Note the health; True when this observation ends an incident."""
        healthy = is_healthy(health) or all(item.state == "unknown" for item in health)
        recovered = healthy and self.broken
        if not healthy and not self.broken:
            reasons = "; ".join(item.reason for item in health if item.state != "healthy")
            log.error("pipeline broken: canaries are not coming back", extra={"reasons": reasons})
        elif recovered:
            log.warning("pipeline recovered: canaries are coming back")
        self.broken = not healthy
        return recovered
