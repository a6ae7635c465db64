"""The small connector: psycopg 3 connections and pools, configured one way."""

from __future__ import annotations

import logging
import select
import time
from collections.abc import Callable
from typing import TypeVar

import psycopg
from psycopg.rows import DictRow, dict_row
from psycopg_pool import ConnectionPool

from shared.config import Settings

# Pools hand out autocommit connections whose rows are dicts.
DictPool = ConnectionPool[psycopg.Connection[DictRow]]
T = TypeVar("T")

log = logging.getLogger(__name__)
RETRY_PAUSES = (0.05, 0.1, 0.2, 0.4, 0.8)  # then 1 s between tries


def connect(url: str, *, autocommit: bool = True, timeout: float = 3.0) -> psycopg.Connection:
    """One direct connection; autocommit, so every transaction is explicit."""
    return psycopg.connect(url, autocommit=autocommit, connect_timeout=max(1, round(timeout)))


def check_idle_connection(conn: psycopg.Connection[DictRow]) -> None:
    """The pool's check of a connection it is about to hand out: raises if it is dead.

    An idle connection has nothing to read; if its socket is readable, the server
    spoke while it was idle (the FATAL it sends when it shuts down or terminates
    the backend, or the end of the stream), and a round trip tells whether it still
    works. Without this, every idle connection of the pool fails one request after
    a database restart: a 503 from an API whose database is up again. The check
    is one poll() without a round trip, so a healthy connection costs nothing.
    """
    if conn.closed or conn.broken:
        raise psycopg.OperationalError("the connection is closed")
    poller = select.poll()
    poller.register(conn.fileno(), select.POLLIN)
    if poller.poll(0):
        ConnectionPool.check_connection(conn)


def create_pool(settings: Settings, *, name: str, max_size: int | None = None) -> DictPool:
    """A pool of autocommit connections with dict rows, checked as they are handed
    out (:func:`check_idle_connection`).

    Opened without waiting: a process that starts while the database is down
    still starts, answers its health check, and connects once the database is back.
    """
    pool: DictPool = ConnectionPool(
        settings.database_url,
        connection_class=psycopg.Connection[DictRow],
        name=name,
        min_size=1,
        max_size=max_size or settings.db_pool_size,
        kwargs={
            "autocommit": True,
            "row_factory": dict_row,
            "connect_timeout": max(1, round(settings.db_connect_timeout)),
        },
        timeout=settings.db_connect_timeout,
        reconnect_timeout=0,  # keep trying for ever: the database may come back
        check=check_idle_connection,
        open=False,
    )
    pool.open(wait=False)
    return pool


def with_fresh_connection_retries(
    pool: DictPool,
    work: Callable[[psycopg.Connection[DictRow]], T],
    *,
    within: float,
    what: str,
) -> T:
    """Run *work* on a pooled connection; if the connection fails (a database blip, or a
    pooled connection the blip broke), run it again on another one until *within* seconds
    have passed, then raise the last error.

    Why: after a blip every idle pooled connection is dead, and giving up at the first
    failure leaves the mail to a much slower path (the relay's redispatch or the lease).
    The pool discards a broken connection when it is returned, so each try gets a new one.
    *work* must be safe to run twice: its transaction either committed or it did not, and
    the guarded UPDATEs of the store do nothing the second time.
    """
    deadline = time.monotonic() + within
    tries = 0
    while True:
        try:
            with pool.connection() as conn:
                return work(conn)
        except psycopg.OperationalError as exc:
            pause = RETRY_PAUSES[tries] if tries < len(RETRY_PAUSES) else 1.0
            tries += 1
            if time.monotonic() + pause > deadline:
                raise
            log.warning(
                "database unreachable; retrying on a fresh connection",
                extra={"what": what, "try": tries, "error": str(exc).splitlines()[0][:200]},
            )
            time.sleep(pause)
