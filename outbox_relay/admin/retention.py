"""Retention: delete finished mails (with their events and webhook deliveries), old
idempotency keys and old CDP events, in short batches that never block the pipeline.

A mail goes only when it is final, became final before the cutoff, has no outbox
row and no webhook delivery still pending. Each mail batch is one transaction that
sets ``mailroom.purge`` locally, the one way past mail_events' append-only trigger.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg

from outbox_relay.admin.audit import record_admin_action
from shared.queries import QUERIES
from shared.states import FINAL_STATUSES

# Sorted so that the printed and recorded order is stable.
FINAL_STATUS_NAMES: tuple[str, ...] = tuple(sorted(status.value for status in FINAL_STATUSES))


@dataclass
class PurgeCounts:
    """What a purge deleted, or (dry run) would delete. Mutable: batches add to it."""

    mails: dict[str, int] = field(default_factory=lambda: dict.fromkeys(FINAL_STATUS_NAMES, 0))
    events: int = 0
    webhook_deliveries: int = 0
    idempotency_keys: int = 0
    cdp_events: int = 0
    mail_batches: int = 0

    @property
    def mails_total(self) -> int:
        return sum(self.mails.values())

    def as_dict(self) -> dict[str, Any]:
        return {
            "mails": dict(self.mails),
            "mails_total": self.mails_total,
            "events": self.events,
            "webhook_deliveries": self.webhook_deliveries,
            "idempotency_keys": self.idempotency_keys,
            "cdp_events": self.cdp_events,
        }


@dataclass(frozen=True)
class Retention:
    """Everything older than *cutoff* (by the database clock) that may go."""

    older_than: timedelta
    cutoff: datetime
    batch_size: int

    def params(self) -> dict[str, Any]:
        return {
            "final_statuses": list(FINAL_STATUS_NAMES),
            "cutoff": self.cutoff,
            "batch_size": self.batch_size,
        }

    def describe(self) -> dict[str, Any]:
        """The arguments recorded with the admin action; 'report' reads the cutoff back."""
        return {
            "older_than_seconds": self.older_than.total_seconds(),
            "cutoff": self.cutoff.isoformat(),
            "batch_size": self.batch_size,
            "final_statuses": list(FINAL_STATUS_NAMES),
        }


BatchCallback = Callable[[str, int], None]


def plan_retention(conn: psycopg.Connection, older_than: timedelta, batch_size: int) -> Retention:
    """Fixed once, so a confirmation and the purge after it cover the same mails."""
    row = conn.execute(QUERIES["retention_cutoff"], {"older_than": older_than}).fetchone()
    assert row is not None
    return Retention(older_than, row[0].astimezone(UTC), batch_size)


def count_purgeable(conn: psycopg.Connection, plan: Retention) -> PurgeCounts:
    """The dry run: what a purge would delete now (rows the pipeline holds included)."""
    counts = PurgeCounts()
    for status, mails in conn.execute(QUERIES["count_purgeable_mails_by_status"], plan.params()):
        counts.mails[status] = mails
    row = conn.execute(QUERIES["count_purgeable_rows"], plan.params()).fetchone()
    assert row is not None
    counts.events, counts.webhook_deliveries, counts.idempotency_keys, counts.cdp_events = row
    return counts


def purge_finished(
    conn: psycopg.Connection,
    plan: Retention,
    actor: str,
    on_batch: BatchCallback | None = None,
) -> PurgeCounts:
    """Delete in batches, then record the action; an interrupted purge records what it did."""
    counts = PurgeCounts()
    try:
        _purge_all(conn, plan, counts, on_batch or _ignore)
    except BaseException as exc:
        # Batches already committed are gone: the audit trail must say so even now.
        # Best effort, since the connection may be what failed.
        with contextlib.suppress(psycopg.Error):
            _record(conn, plan, actor, counts, error=f"{type(exc).__name__}: {exc}")
        raise
    _record(conn, plan, actor, counts)
    return counts


def _purge_all(
    conn: psycopg.Connection, plan: Retention, counts: PurgeCounts, on_batch: BatchCallback
) -> None:
    # Until a batch finds nothing to lock: a batch the re-check emptied still moved on,
    # since the next lock query's snapshot sees what made the re-check drop those mails.
    while (batch := _purge_mail_batch(conn, plan, counts)) is not None:
        counts.mail_batches += 1
        on_batch("mails", batch)
    for table, query in (
        ("idempotency_keys", QUERIES["purge_idempotency_keys"]),
        ("cdp_events", QUERIES["purge_cdp_events"]),
    ):
        while (deleted := _delete_batch(conn, query, plan)) > 0:
            setattr(counts, table, getattr(counts, table) + deleted)
            on_batch(table, deleted)


def _purge_mail_batch(conn: psycopg.Connection, plan: Retention, counts: PurgeCounts) -> int | None:
    """One transaction: lock a batch, re-check it, delete deliveries, events, mails.

    Returns how many mails went, or None when there was nothing left to lock."""
    with conn.transaction(), conn.cursor() as cursor:
        cursor.execute(QUERIES["enable_purge_in_transaction"])
        locked = [row[0] for row in cursor.execute(QUERIES["lock_purgeable_mails"], plan.params())]
        if not locked:
            return None
        ids = _confirmed(cursor, locked)
        cursor.execute(QUERIES["purge_webhook_deliveries"], {"ids": ids})
        counts.webhook_deliveries += cursor.rowcount
        cursor.execute(QUERIES["purge_mail_events"], {"ids": ids})
        counts.events += cursor.rowcount
        deleted = 0
        for status, mails in cursor.execute(QUERIES["purge_mails"], {"ids": ids}):
            counts.mails[status] += mails
            deleted += mails
        return deleted


def _confirmed(cursor: psycopg.Cursor[Any], locked: list[uuid.UUID]) -> list[uuid.UUID]:
    """The lock query's snapshot predates its locks: an outbox row or pending delivery
    committed in between would be missed. Locked now, a fresh look is final."""
    return [row[0] for row in cursor.execute(QUERIES["confirm_purgeable_mails"], {"ids": locked})]


def _delete_batch(conn: psycopg.Connection, query: str, plan: Retention) -> int:
    """One statement, so one short transaction of its own (the connection autocommits)."""
    with conn.cursor() as cursor:
        cursor.execute(query, plan.params())
        return cursor.rowcount


def _record(
    conn: psycopg.Connection,
    plan: Retention,
    actor: str,
    counts: PurgeCounts,
    error: str | None = None,
) -> None:
    result: dict[str, Any] = {**counts.as_dict(), "mail_batches": counts.mail_batches}
    if error is not None:
        result["interrupted"] = error
    with conn.transaction():
        record_admin_action(conn, "purge", actor, plan.describe(), result)


def _ignore(_table: str, _deleted: int) -> None:
    return None
