"""Wake the relays after mail is committed, without a NOTIFY in the ingest transaction.

A NOTIFY inside the ingest transaction makes PostgreSQL take a database-wide
lock at every COMMIT, serialising all concurrent ingest commits (measured with
bench/ingest.py: 2.5-10x fewer commits per second at 8-32 clients). Instead,
each API process sends at most one NOTIFY per ``COALESCE_SECONDS`` from a
background thread, after the commits it announces. A poke that arrives while
a NOTIFY is being sent causes another one, so no committed mail waits for the
relay's polling fallback.
"""

from __future__ import annotations

import logging
import os
import threading

from shared.db import DictPool
from shared.queues import OUTBOX_CHANNEL

log = logging.getLogger(__name__)

COALESCE_SECONDS = 0.02


class RelayWakeup:
    def __init__(self, pool: DictPool) -> None:
        self._pool = pool
        self._pending = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._owner_pid = 0

    def poke(self) -> None:
        """Note that outbox rows were committed; a NOTIFY follows shortly."""
        self._pending.set()
        if self._thread is None or self._owner_pid != os.getpid():
            self._start()

    def _start(self) -> None:
        with self._lock:
            if self._thread is not None and self._owner_pid == os.getpid():
                return
            self._owner_pid = os.getpid()  # threads do not survive a fork
            self._thread = threading.Thread(target=self._run, name="relay-wakeup", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while True:
            self._pending.wait()
            self._pending.clear()
            try:
                with self._pool.connection() as conn:
                    conn.execute(f"NOTIFY {OUTBOX_CHANNEL}")
            except Exception as exc:  # the relays still poll; never let this thread die
                log.warning("could not wake the relays", extra={"error": str(exc)})
            threading.Event().wait(COALESCE_SECONDS)
