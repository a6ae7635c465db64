"""What happens after a transient failure: retry later through the outbox, or stop.

Retries live in PostgreSQL (an outbox row due after the backoff), never in the
broker (no Celery countdown or ETA), so a Redis restarted without persistence
loses none of them.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from shared.states import MailStatus

MAX_DELAY_SECONDS = 3600.0
_JITTER = random.Random()  # noqa: S311 - spreading retries out, not security


@dataclass(frozen=True)
class RetryDecision:
    status: MailStatus  # RETRYING, DEAD or EXPIRED
    delay_seconds: float = 0.0
    reason: str = ""


def backoff(attempt: int, base: float, rng: random.Random | None = None) -> float:
    """Exponential, capped, with jitter so a recovering server is not hit all at once."""
    ceiling = min(base * 2.0 ** max(attempt - 1, 0), MAX_DELAY_SECONDS)
    return ceiling * (rng or _JITTER).uniform(0.5, 1.0)


def decide(
    *,
    attempts: int,
    max_attempts: int,
    expires_at: datetime | None,
    base: float,
    now: datetime | None = None,
    rng: random.Random | None = None,
) -> RetryDecision:
    if attempts >= max_attempts:
        return RetryDecision(MailStatus.DEAD, reason=f"gave up after {attempts} attempts")
    delay = backoff(attempts, base, rng)
    moment = now or datetime.now(UTC)
    if expires_at is not None and moment + timedelta(seconds=delay) >= expires_at:
        return RetryDecision(MailStatus.EXPIRED, reason="the next attempt would come too late")
    return RetryDecision(MailStatus.RETRYING, delay_seconds=delay)
