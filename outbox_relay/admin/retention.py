"""Retention and reconciliation: what happens to mails once they are final.

Purge: delete finished mails (with their events and webhook deliveries), old
idempotency keys and old CDP events, in short batches that never block the pipeline.
A mail goes only when it is final, became final before the cutoff, has no outbox row
and no webhook delivery still pending. Each mail batch is one transaction that sets
``mailroom.purge`` locally, the one way past mail_events' append-only trigger.

Report (reconciliation after an incident): what became of every mail accepted in a
window, counted by current status (every status present, 0 when none), final and not
final, the not-final mails one by one, and per tenant. All of it is read in one
read-only snapshot, so the counts and the list agree with each other.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg

from shared.states import FINAL_STATUSES, MailStatus
from shared.store import Conn
from shared.store import outbox as outbox_store
from shared.store.outbox import FINAL_STATUS_NAMES, MailSelection

# ----- purge -----


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

    def describe(self) -> dict[str, Any]:
        """The arguments recorded with the admin action; 'report' reads the cutoff back."""
        return {
            "older_than_seconds": self.older_than.total_seconds(),
            "cutoff": self.cutoff.isoformat(),
            "batch_size": self.batch_size,
            "final_statuses": list(FINAL_STATUS_NAMES),
        }


BatchCallback = Callable[[str, int], None]


def plan_retention(conn: Conn, older_than: timedelta, batch_size: int) -> Retention:
    """Fixed once, so a confirmation and the purge after it cover the same mails."""
    return Retention(older_than, outbox_store.retention_cutoff(conn, older_than), batch_size)


def count_purgeable(conn: Conn, plan: Retention) -> PurgeCounts:
    """The dry run: what a purge would delete now (rows the pipeline holds included)."""
    counts = PurgeCounts()
    counts.mails |= outbox_store.count_purgeable_mails(conn, plan.cutoff)
    rows = outbox_store.count_purgeable_rows(conn, plan.cutoff)
    counts.events, counts.webhook_deliveries = rows.events, rows.webhook_deliveries
    counts.idempotency_keys, counts.cdp_events = rows.idempotency_keys, rows.cdp_events
    return counts


def purge_finished(
    conn: Conn, plan: Retention, actor: str, on_batch: BatchCallback | None = None
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


def _purge_all(conn: Conn, plan: Retention, counts: PurgeCounts, on_batch: BatchCallback) -> None:
    # Until a batch finds nothing to lock: a batch the re-check emptied still moved on,
    # since the next lock query's snapshot sees what made the re-check drop those mails.
    while (batch := outbox_store.purge_mail_batch(conn, plan.cutoff, plan.batch_size)) is not None:
        for status, mails in batch.mails.items():
            counts.mails[status] += mails
        counts.events += batch.events
        counts.webhook_deliveries += batch.webhook_deliveries
        counts.mail_batches += 1
        on_batch("mails", sum(batch.mails.values()))
    # One statement per batch, so one short transaction each (the connection autocommits).
    while (deleted := outbox_store.purge_idempotency_keys(conn, plan.cutoff, plan.batch_size)) > 0:
        counts.idempotency_keys += deleted
        on_batch("idempotency_keys", deleted)
    while (deleted := outbox_store.purge_cdp_events(conn, plan.cutoff, plan.batch_size)) > 0:
        counts.cdp_events += deleted
        on_batch("cdp_events", deleted)


def _record(
    conn: Conn, plan: Retention, actor: str, counts: PurgeCounts, error: str | None = None
) -> None:
    result: dict[str, Any] = {**counts.as_dict(), "mail_batches": counts.mail_batches}
    if error is not None:
        result["interrupted"] = error
    with conn.transaction():
        outbox_store.record_admin_action(conn, "purge", actor, plan.describe(), result)


def _ignore(_table: str, _deleted: int) -> None:
    return None


# ----- report -----

# Lifecycle order (the enum's), which reads better in a report than alphabetical.
ALL_STATUS_NAMES: tuple[str, ...] = tuple(status.value for status in MailStatus)
_FINAL: frozenset[str] = frozenset(status.value for status in FINAL_STATUSES)


def reconcile(conn: Conn, window: MailSelection, tenant_name: str | None) -> dict[str, Any]:
    """The report of the mails accepted in *window* (since and until set) as one document;
    'outbox-relay report' prints it as a table or JSON."""
    assert window.since is not None and window.until is not None
    found = outbox_store.window_report(conn, window)
    tenants = _per_tenant(found.counts)
    totals = _tally(
        {status: sum(t["by_status"][status] for t in tenants.values()) for status in _zeros()}
    )
    return {
        "window": {"since": window.since.astimezone(UTC), "until": window.until.astimezone(UTC)},
        "tenant": tenant_name,
        "stream": window.stream,
        **totals,
        "not_final_mails": [_in_utc(mail) for mail in found.not_final_mails],
        "tenants": tenants,
        "warnings": _purge_warnings(found),
    }


def _in_utc(row: dict[str, Any]) -> dict[str, Any]:
    """Times in UTC whatever the server's TimeZone, as the report says and customers compare."""
    return {
        key: value.astimezone(UTC) if isinstance(value, datetime) else value
        for key, value in row.items()
    }


def _zeros() -> dict[str, int]:
    return dict.fromkeys(ALL_STATUS_NAMES, 0)


def _per_tenant(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    by_tenant: dict[str, dict[str, int]] = {}
    for row in rows:
        by_tenant.setdefault(row["tenant"], _zeros())[row["status"]] = row["mails"]
    return {tenant: _tally(by_tenant[tenant]) for tenant in sorted(by_tenant)}


def _tally(by_status: dict[str, int]) -> dict[str, Any]:
    final = sum(count for status, count in by_status.items() if status in _FINAL)
    accepted = sum(by_status.values())
    return {
        "accepted": accepted,
        "by_status": by_status,
        "final": final,
        "not_final": accepted - final,
    }


def _purge_warnings(found: outbox_store.WindowReport) -> list[str]:
    """A purge whose cutoff is after 'since' may have removed mails of this window."""
    cutoff = found.latest_purge_cutoff
    if cutoff is None:
        return []
    return [
        f"mails that became final before {cutoff.isoformat()} were purged"
        f" ({found.purges} purge(s) with a cutoff after --since): counts may be incomplete"
    ]
