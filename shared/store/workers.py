"""Worker leases: each worker process renews a row in ``worker_leases`` every few
seconds; the relay rescues the mails a worker whose lease lapsed left in 'sending'.

The worker side (``mail_worker.lease``) calls :func:`renew_lease` and
:func:`release_lease`; the relay calls :func:`rescue_mails_of_lapsed_workers`. The
sending timeout (``shared.store.outbox.recover_abandoned_sends``) stays the backstop
for a worker that is alive but stuck, and for mails whose worker never held a lease.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from psycopg.rows import class_row, scalar_row

from shared.queries import QUERIES
from shared.states import MailStatus
from shared.store import Conn


def renew_lease(conn: Conn, worker: str, ttl_seconds: float) -> None:
    """Take or extend *worker*'s lease until ``now() + ttl_seconds`` (database time)."""
    conn.execute(QUERIES["renew_worker_lease"], {"worker": worker, "ttl": ttl_seconds})


def release_lease(conn: Conn, worker: str) -> None:
    """Give *worker*'s lease up (a clean stop)."""
    conn.execute(QUERIES["release_worker_lease"], {"worker": worker})


@dataclass(frozen=True)
class RescuedMail:
    """A mail a lapsed worker held: now 'retrying' and due in the outbox, or 'dead'."""

    mail_id: uuid.UUID
    status: MailStatus
    worker: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "status", MailStatus(self.status))  # the row holds text


@dataclass(frozen=True)
class Rescue:
    mails: list[RescuedMail]
    forgotten_leases: list[str]  # lapsed leases of workers that held no mail


def rescue_mails_of_lapsed_workers(conn: Conn, *, max_attempts: int) -> Rescue:
    """Mails in 'sending' whose worker's lease has lapsed go back to the outbox, due now
    ('retrying'), or become 'dead' at *max_attempts*; then lapsed leases that no longer
    hold a mail are deleted. Mails whose worker has no lease row are left alone.

    Two statements: the second must see the first's changes (a lapsed lease still named
    by a mail the first did not move, e.g. picked up meanwhile, is kept for next time).
    """
    with conn.cursor(row_factory=class_row(RescuedMail)) as cursor:
        rescued = cursor.execute(
            QUERIES["rescue_mails_of_lapsed_workers"], {"max_attempts": max_attempts}
        ).fetchall()
    with conn.cursor(row_factory=scalar_row) as cursor:
        forgotten = cursor.execute(QUERIES["forget_lapsed_worker_leases"]).fetchall()
    return Rescue(rescued, [str(worker) for worker in forgotten])
