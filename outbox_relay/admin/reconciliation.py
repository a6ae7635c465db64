"""Reconciliation after an incident: what became of every mail accepted in a window.

Counted by current status (every status present, 0 when none), final and not
final, the not-final mails one by one, and per tenant. All of it is read in one
read-only snapshot, so the counts and the list agree with each other.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import psycopg
from psycopg import IsolationLevel
from psycopg.rows import dict_row

from shared.queries import QUERIES
from shared.states import FINAL_STATUSES, MailStatus

# Lifecycle order (the enum's), which reads better in a report than alphabetical.
ALL_STATUS_NAMES: tuple[str, ...] = tuple(status.value for status in MailStatus)
FINAL_STATUS_NAMES: frozenset[str] = frozenset(status.value for status in FINAL_STATUSES)


@dataclass(frozen=True)
class ReportScope:
    """Mails accepted (created_at) in [since, until), optionally of one tenant and stream."""

    since: datetime
    until: datetime
    tenant_id: uuid.UUID | None = None
    tenant_name: str | None = None
    stream: str | None = None

    def params(self) -> dict[str, Any]:
        return {
            "since": self.since,
            "until": self.until,
            "tenant_id": self.tenant_id,
            "stream": self.stream,
            "final_statuses": sorted(FINAL_STATUS_NAMES),
        }


def reconcile(conn: psycopg.Connection, scope: ReportScope) -> dict[str, Any]:
    """The report as one document; 'outbox-relay report' prints it as a table or JSON."""
    with _snapshot(conn), conn.cursor(row_factory=dict_row) as cursor:
        counts = cursor.execute(QUERIES["report_counts_by_tenant_and_status"], scope.params())
        tenants = _per_tenant(counts.fetchall())
        not_final = cursor.execute(QUERIES["report_not_final_mails"], scope.params()).fetchall()
        not_final = [_in_utc(mail) for mail in not_final]
        purges = cursor.execute(QUERIES["report_purges_after"], scope.params()).fetchone()
    totals = _tally(
        {status: sum(t["by_status"][status] for t in tenants.values()) for status in _zeros()}
    )
    return {
        "window": {"since": scope.since.astimezone(UTC), "until": scope.until.astimezone(UTC)},
        "tenant": scope.tenant_name,
        "stream": scope.stream,
        **totals,
        "not_final_mails": not_final,
        "tenants": tenants,
        "warnings": _purge_warnings(purges),
    }


@contextmanager
def _snapshot(conn: psycopg.Connection) -> Iterator[None]:
    """One REPEATABLE READ, READ ONLY transaction, the connection's defaults restored after."""
    saved = conn.isolation_level, conn.read_only
    conn.isolation_level, conn.read_only = IsolationLevel.REPEATABLE_READ, True
    try:
        with conn.transaction():
            yield
    finally:
        conn.isolation_level, conn.read_only = saved


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
    final = sum(count for status, count in by_status.items() if status in FINAL_STATUS_NAMES)
    accepted = sum(by_status.values())
    return {
        "accepted": accepted,
        "by_status": by_status,
        "final": final,
        "not_final": accepted - final,
    }


def _purge_warnings(purges: dict[str, Any] | None) -> list[str]:
    """A purge whose cutoff is after 'since' may have removed mails of this window."""
    if purges is None or purges["latest_cutoff"] is None:
        return []
    cutoff = purges["latest_cutoff"]
    return [
        f"mails that became final before {cutoff.isoformat()} were purged"
        f" ({purges['purges']} purge(s) with a cutoff after --since): counts may be incomplete"
    ]
