"""The relay loop: dispatch rounds, woken by LISTEN/NOTIFY, with polling as a fallback.

The listener is a convenience for latency only: if it cannot connect (behind a
transaction-mode PgBouncer, say) the relay still polls every
``MAILROOM_RELAY_POLL_INTERVAL`` seconds.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from types import FrameType

import psycopg

from outbox_relay.dispatch import dispatch_round
from outbox_relay.publish import Publisher
from shared.config import Settings
from shared.db import connect
from shared.queues import OUTBOX_CHANNEL

log = logging.getLogger(__name__)

MAX_BACKOFF_SECONDS = 10.0
STOP_CHECK_SECONDS = 0.5


class Relay:
    def __init__(self, settings: Settings, publisher: Publisher | None = None) -> None:
        self.settings = settings
        self.publisher = publisher or Publisher(settings)
        self.stopping = threading.Event()
        self._conn: psycopg.Connection | None = None
        self._listener: psycopg.Connection | None = None
        self._failures = 0

    def install_signal_handlers(self) -> None:
        """SIGTERM and SIGINT finish the current round, then stop."""

        def stop(signum: int, _frame: FrameType | None) -> None:
            log.info("stopping after the current round", extra={"signal": signum})
            self.stopping.set()

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)

    def run(self) -> None:
        log.info("relay started", extra={"batch_size": self.settings.relay_batch_size})
        while not self.stopping.is_set():
            published_full_batch = self._one_round()
            if not published_full_batch:
                self._wait_for_work()
        self._close()
        log.info("relay stopped")

    def _one_round(self) -> bool:
        """Run a round; True when the batch was full and more work is likely waiting."""
        try:
            conn = self._connection()
            result = dispatch_round(
                conn,
                self.publisher,
                batch_size=self.settings.relay_batch_size,
                visibility_timeout=self.settings.relay_visibility_timeout,
            )
        except psycopg.Error as exc:
            self._note_failure("database error; retrying", exc)
            self._drop_connection()
            return False
        if result.error is not None:
            self._note_failure("broker refused a publish; rows stay due", result.error)
            return False
        if result.published:
            log.info("published", extra={"count": result.published})
        self._failures = 0
        return result.claimed >= self.settings.relay_batch_size

    def _note_failure(self, message: str, exc: BaseException) -> None:
        self._failures += 1
        log.error(message, extra={"error": str(exc), "consecutive_failures": self._failures})
        self.stopping.wait(min(MAX_BACKOFF_SECONDS, 0.2 * 2**self._failures))

    def _connection(self) -> psycopg.Connection:
        if self._conn is None or self._conn.closed:
            self._conn = connect(
                self.settings.database_url, timeout=self.settings.db_connect_timeout
            )
        return self._conn

    def _drop_connection(self) -> None:
        if self._conn is not None:
            self._conn.close()
        self._conn = None

    def _wait_for_work(self) -> None:
        """Sleep until NOTIFY, the poll interval, or a stop request (checked twice a second)."""
        deadline = time.monotonic() + self.settings.relay_poll_interval
        while not self.stopping.is_set():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            listener = self._listen()
            if listener is None:
                self.stopping.wait(min(remaining, STOP_CHECK_SECONDS))
                continue
            try:
                if any(
                    True
                    for _ in listener.notifies(
                        timeout=min(remaining, STOP_CHECK_SECONDS), stop_after=1
                    )
                ):
                    return
            except psycopg.Error as exc:
                log.warning("listener lost; polling", extra={"error": str(exc)})
                self._listener = None

    def _listen(self) -> psycopg.Connection | None:
        if self._listener is not None and not self._listener.closed:
            return self._listener
        try:
            listener = connect(self.settings.database_url, timeout=self.settings.db_connect_timeout)
            listener.execute(f"LISTEN {OUTBOX_CHANNEL}")
        except psycopg.Error as exc:
            log.warning("cannot LISTEN; polling only", extra={"error": str(exc)})
            return None
        self._listener = listener
        return listener

    def _close(self) -> None:
        self.publisher.close()
        self._drop_connection()
        if self._listener is not None:
            self._listener.close()
