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

from shared.queues import QUEUE_PRIORITY
from shared.store import Conn
from shared.store.outbox import canary_times


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


def pipeline_health(conn: Conn, threshold: float) -> list[QueueHealth]:
    health = []
    for times in canary_times(conn, QUEUE_PRIORITY):
        reference = times.last_received or times.oldest_pending
        if reference is None:
            health.append(QueueHealth(times.queue, "unknown", None, None))
            continue
        age = (times.now - reference).total_seconds()
        state = "healthy" if age <= threshold else "broken"
        health.append(QueueHealth(times.queue, state, age, times.last_received))
    return health


def is_healthy(health: list[QueueHealth]) -> bool:
    return all(item.state == "healthy" for item in health)
