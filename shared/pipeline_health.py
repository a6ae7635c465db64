"""Is the link from relay through broker to worker working? Read from the canaries.

Every relay publishes a canary per queue every ``MAILROOM_CANARY_INTERVAL``
seconds; a worker records its receipt. A queue is healthy while its last
completed round trip is younger than ``MAILROOM_CANARY_THRESHOLD``; before any
round trip completed, the age counts from the oldest canary still travelling.
The API's /readyz, ``outbox-relay status``, ``check`` and the relay's own
incident log all read this one function.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import psycopg
from psycopg.rows import tuple_row

from shared.queries import QUERIES
from shared.queues import QUEUE_PRIORITY


@dataclass(frozen=True)
class QueueHealth:
    queue: str
    state: str  # "healthy", "broken" or "unknown" (no canary ever sent)
    age_seconds: float | None  # since the last round trip (or the oldest pending canary)
    last_round_trip: datetime | None

    @property
    def reason(self) -> str:
        if self.state == "unknown":
            return f"{self.queue}: no canary has been sent (is a relay running?)"
        if self.last_round_trip is None:
            return f"{self.queue}: no canary has completed a round trip in {self.age_seconds:.0f} s"
        return f"{self.queue}: last canary round trip {self.age_seconds:.0f} s ago"


def pipeline_health(conn: psycopg.Connection, threshold: float) -> list[QueueHealth]:
    # Tuples whatever the connection's row factory (the API's pool returns dicts).
    cursor = conn.cursor(row_factory=tuple_row)
    rows = cursor.execute(QUERIES["canary_health"], {"queues": list(QUEUE_PRIORITY)}).fetchall()
    health = []
    for queue, last_received, oldest_pending, now in rows:
        reference = last_received or oldest_pending
        if reference is None:
            health.append(QueueHealth(queue, "unknown", None, None))
            continue
        age = (now - reference).total_seconds()
        state = "healthy" if age <= threshold else "broken"
        health.append(QueueHealth(queue, state, age, last_received))
    return health


def is_healthy(health: list[QueueHealth]) -> bool:
    return all(item.state == "healthy" for item in health)
