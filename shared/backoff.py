"""The one backoff: exponential from a base, doubling per step, capped.

Python computes it for single rows (a send's or a webhook's retry); the set-based
SQL (relay leases, lost-worker recovery, webhook leases) calls the database function
``mailroom_backoff(base, step, cap)`` of migration 0010, which is the same formula;
``tests/test_state_machine.py`` holds the two equal.
"""

from __future__ import annotations

import random

MAX_DELAY_SECONDS = 3600.0
_JITTER = random.Random()  # noqa: S311 - spreading retries out, not security


def backoff_ceiling(base: float, step: int, cap: float = MAX_DELAY_SECONDS) -> float:
    """``base * 2**step`` seconds, at most *cap* (step 0 is the base itself)."""
    return float(min(base * 2.0 ** max(step, 0), cap))


def jittered_backoff(
    base: float, step: int, cap: float = MAX_DELAY_SECONDS, rng: random.Random | None = None
) -> float:
    """Between half and all of the ceiling, so a recovering server is not hit all at once."""
    return backoff_ceiling(base, step, cap) * (rng or _JITTER).uniform(0.5, 1.0)
