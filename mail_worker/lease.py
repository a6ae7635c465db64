"""The worker process's lease: a row in ``worker_leases`` that says "this process is
alive", renewed every quarter of ``MAILROOM_WORKER_LEASE_SECONDS``.

A mail in 'sending' names the process that picked it up (``status_detail->>'worker'``,
:func:`mail_worker.tasks.worker_name`). When that process dies (SIGKILL, an evicted
pod, the task's hard time limit) its lease lapses and the relay puts the mail back
into the outbox within seconds (``shared.store.workers``) instead of after the
sending timeout, which stays the backstop for a process that is alive but stuck: its
heartbeat thread keeps renewing.

:func:`ensure_lease` is called at the start of every send task. The first call in a
process writes the lease before returning, so the lease exists before the process's
first pickup commits (a pickup by a process with no lease row is left to the sending
timeout); later calls only compare the pid. Prefork children are forked from the
Celery parent: a lease inherited across ``fork()`` belongs to the parent and is never
used (nor closed: its connection's socket is the parent's).
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Any

import psycopg
from celery.signals import worker_process_shutdown

from shared.db import DictPool
from shared.store import workers

log = logging.getLogger(__name__)

RENEWALS_PER_LEASE = 4  # a lease lapses only after this many renewals in a row failed
RELEASE_WAIT_SECONDS = 2.0


class WorkerLease:
    """One process's lease and the daemon thread that renews it."""

    def __init__(self, pool: DictPool, worker: str, ttl_seconds: float) -> None:
        self.pool = pool
        self.worker = worker
        self.ttl_seconds = ttl_seconds
        self.pid = os.getpid()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        # The heartbeat's own connection, not one of the pool's: a task that holds every
        # pooled connection (or waits for one) must never starve the renewal, or a live
        # worker would be declared lost and its mails sent twice.
        self._conn: psycopg.Connection[Any] | None = None
        # When the lease lapses at the latest, on this process's monotonic clock: the
        # moment the last successful renewal was sent, plus the ttl.
        self._valid_until = 0.0

    def held(self, margin: float = 0.0) -> bool:
        """Whether the lease is surely still valid *margin* seconds from now. A process
        whose lease may have lapsed sends nothing more: the relay may already have put
        its mails back into the outbox, and a second worker may be sending them."""
        return time.monotonic() + margin < self._valid_until

    @property
    def released(self) -> bool:
        return self._stopping.is_set()

    @property
    def interval(self) -> float:
        return self.ttl_seconds / RENEWALS_PER_LEASE

    def start(self) -> None:
        """Write the lease now (on the task's pool), then renew it in the background."""
        try:
            sent_at = time.monotonic()
            with self.pool.connection() as conn:
                workers.renew_lease(conn, self.worker, self.ttl_seconds)
            self._valid_until = sent_at + self.ttl_seconds
        except Exception as exc:  # the heartbeat retries; the task must go on
            log.warning(
                "could not take the worker lease; retrying in the background",
                extra={"worker": self.worker, "error": _first_line(exc)},
            )
        else:
            log.info("worker lease taken", extra={"worker": self.worker, "ttl": self.ttl_seconds})
        self._thread = threading.Thread(
            target=self._heartbeat, name="mailroom-worker-lease", daemon=True
        )
        self._thread.start()

    def _heartbeat(self) -> None:
        failures = 0
        while not self._stopping.wait(self.interval):
            try:
                self._renew()
            except Exception as exc:  # never die: a dead heartbeat declares a live worker lost
                failures += 1
                log.warning(
                    "worker lease renewal failed",
                    extra={
                        "worker": self.worker,
                        "consecutive_failures": failures,
                        "error": _first_line(exc),
                    },
                )
            else:
                if failures:
                    log.info("worker lease renewed again", extra={"worker": self.worker})
                failures = 0

    def _renew(self) -> None:
        sent_at = time.monotonic()
        self._on_own_connection(
            lambda conn: workers.renew_lease(conn, self.worker, self.ttl_seconds)
        )
        self._valid_until = sent_at + self.ttl_seconds

    def _on_own_connection(self, work: Callable[[psycopg.Connection[Any]], None]) -> None:
        """*work* on the lease's own connection; once more on a new one if that one was
        broken (after a database blip the old connection is dead, the database is not)."""
        for attempt in range(2):
            try:
                work(self._connection())
                return
            except psycopg.OperationalError:
                self._drop_connection()
                if attempt == 1:
                    raise

    def _connection(self) -> psycopg.Connection[Any]:
        if self._conn is None or self._conn.closed:
            self._conn = _connect_like(self.pool, self.interval)
        return self._conn

    def _drop_connection(self) -> None:
        if self._conn is not None:
            self._conn.close()
        self._conn = None

    def release(self) -> None:
        """Stop renewing and delete the row (a clean stop); safe to call twice."""
        if self.pid != os.getpid() or self._stopping.is_set():
            return
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(RELEASE_WAIT_SECONDS)
        try:
            self._on_own_connection(lambda conn: workers.release_lease(conn, self.worker))
        except Exception as exc:  # it lapses by itself, and the relay forgets it then
            log.warning(
                "could not release the worker lease",
                extra={"worker": self.worker, "error": _first_line(exc)},
            )
        finally:
            self._drop_connection()


def _first_line(exc: BaseException) -> str:
    lines = str(exc).splitlines()
    return lines[0][:200] if lines else repr(exc)


def _connect_like(pool: DictPool, interval: float) -> psycopg.Connection[Any]:
    """A connection of its own to the pool's database, with the pool's settings
    (autocommit, connect timeout), that notices a vanished peer within about two
    renewal intervals: a renewal blocked for ever on a dead TCP connection would stop
    the heartbeat of a live worker, also after the network came back."""
    conninfo = pool.conninfo if isinstance(pool.conninfo, str) else pool.conninfo()
    kwargs = dict((pool.kwargs() if callable(pool.kwargs) else pool.kwargs) or {})
    seconds = max(1, round(interval))
    kwargs |= {
        "keepalives": 1,
        "keepalives_idle": seconds,
        "keepalives_interval": seconds,
        "keepalives_count": 2,
        "tcp_user_timeout": 2 * seconds * 1000,  # milliseconds
    }
    return psycopg.connect(conninfo, **kwargs)


_lease: WorkerLease | None = None
_lock = threading.Lock()
# Leases a forked child inherited: kept referenced so that no finalizer ever closes
# their connections, whose sockets the parent still uses.
_inherited: list[WorkerLease] = []


def ensure_lease(pool: DictPool, worker: str, ttl_seconds: float) -> WorkerLease:
    """This process's lease, taken (synchronously) on the first call in the process."""
    lease = _lease
    if lease is not None and lease.pid == os.getpid() and not lease.released:
        return lease
    return _take_lease(pool, worker, ttl_seconds)


def _take_lease(pool: DictPool, worker: str, ttl_seconds: float) -> WorkerLease:
    global _lease  # noqa: PLW0603
    with _lock:
        if _lease is None or _lease.pid != os.getpid() or _lease.released:
            if _lease is not None and _lease.pid != os.getpid():
                _inherited.append(_lease)
            lease = WorkerLease(pool, worker, ttl_seconds)
            lease.start()
            _lease = lease
        return _lease


def _after_fork_in_child() -> None:
    """A child starts with no lease of its own and a free lock (a fork while another
    thread held the lock would otherwise leave it held for ever)."""
    global _lease, _lock
    if _lease is not None:
        _inherited.append(_lease)
    _lease, _lock = None, threading.Lock()


def release_lease() -> None:
    """Give this process's lease up, if it holds one."""
    lease = _lease
    if lease is not None:
        lease.release()


def _release_at_pool_child_exit(**_: Any) -> None:
    """Celery sends worker_process_shutdown in a prefork child just before it exits
    (through os._exit: atexit handlers do not run there)."""
    release_lease()


worker_process_shutdown.connect(_release_at_pool_child_exit, weak=False)
os.register_at_fork(after_in_child=_after_fork_in_child)
atexit.register(release_lease)  # the solo and thread pools, and any other clean exit
