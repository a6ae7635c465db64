"""The outbox and the operator's view of it: the relay's claim, publish record and
leases, lost-worker recovery, canaries, pauses, and the admin commands' selections
(replay, discard, purge, reports, status).

The relay's rows (claims, statistics, canary times) are frozen dataclasses. What the
admin commands print is returned as dicts in the SQL's column order: the CLI prints
them as tables and JSON documents whose keys are those columns.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from psycopg import IsolationLevel
from psycopg.rows import class_row, dict_row, scalar_row
from psycopg.types.json import Jsonb

from shared.queries import QUERIES
from shared.states import FINAL_STATUSES, MailStatus
from shared.store import Conn, NotFound

# ----- the relay (owner: the outbox_relay helper) -----


@dataclass(frozen=True)
class Pauses:
    """What operators hold in the outbox (relay_pauses), as the claim's parameters."""

    everything: bool = False
    streams: tuple[str, ...] = ()
    tenants: tuple[uuid.UUID, ...] = ()
    pairs: tuple[str, ...] = ()  # "stream/tenant id"

    def params(self) -> dict[str, Any]:
        return {
            "pause_all": self.everything,
            "paused_streams": list(self.streams),
            "paused_tenants": list(self.tenants),
            "paused_pairs": list(self.pairs),
        }


@dataclass(frozen=True)
class _PausedScope:
    stream: str | None
    tenant_id: uuid.UUID | None


def load_pauses(conn: Conn) -> Pauses:
    """Read at the start of every round: a pause holds from the next poll on."""
    with conn.cursor(row_factory=class_row(_PausedScope)) as cursor:
        scopes = cursor.execute(QUERIES["paused_scopes"]).fetchall()
    return Pauses(
        everything=any(s.stream is None and s.tenant_id is None for s in scopes),
        streams=tuple(s.stream for s in scopes if s.tenant_id is None and s.stream),
        tenants=tuple(s.tenant_id for s in scopes if s.stream is None and s.tenant_id),
        pairs=tuple(f"{s.stream}/{s.tenant_id}" for s in scopes if s.stream and s.tenant_id),
    )


@dataclass(frozen=True)
class ClaimedOutboxRow:
    """A due outbox row, locked until the round's COMMIT; expired or dead ones are not
    published (dead_reason says why the relay gives up on it)."""

    id: int
    mail_id: uuid.UUID
    queue: str
    dispatch_count: int
    expired: bool
    dead_reason: str | None


def claim_due_outbox(
    conn: Conn,
    queue: str,
    *,
    batch_size: int,
    max_dispatches: int,
    max_age: float,
    pauses: Pauses,
) -> list[ClaimedOutboxRow]:
    """The claim: due rows of one queue, oldest first, ``FOR UPDATE SKIP LOCKED``."""
    params = {
        "queue": queue,
        "batch_size": batch_size,
        "max_dispatches": max_dispatches,
        "max_age": max_age,
        **pauses.params(),
    }
    with conn.cursor(row_factory=class_row(ClaimedOutboxRow)) as cursor:
        return cursor.execute(QUERIES["claim_due_outbox"], params).fetchall()


def bury_mails(conn: Conn, dead: Sequence[tuple[uuid.UUID, str]]) -> None:
    """Mails the relay gives up on become 'dead' with their reasons and leave the outbox."""
    conn.execute(
        QUERIES["bury_mails"],
        {"mail_ids": [mail_id for mail_id, _ in dead], "reasons": [reason for _, reason in dead]},
    )


def record_published(
    conn: Conn, outbox_ids: Sequence[int], *, visibility_timeout: float, max_lease: float
) -> None:
    """Lease published rows (due again unless a worker picks the mail up), move fresh
    mails to 'queued' and record each publish ('queued' or 'redispatched')."""
    conn.execute(
        QUERIES["record_published"],
        {
            "outbox_ids": list(outbox_ids),
            "visibility_timeout": visibility_timeout,
            "max_lease": max_lease,
        },
    )


def release_leases(conn: Conn) -> int:
    """Every in-flight row due now; how many (after a broken link is repaired)."""
    return conn.execute(QUERIES["release_leases"]).rowcount


def recover_abandoned_sends(
    conn: Conn, *, sending_timeout: float, max_attempts: int, retry_base: float
) -> int:
    """Mails whose worker was lost while sending: back to the outbox, or dead at the
    attempt limit; how many."""
    params = {
        "sending_timeout": sending_timeout,
        "max_attempts": max_attempts,
        "retry_base": retry_base,
    }
    return conn.execute(QUERIES["recover_abandoned_sends"], params).rowcount


@dataclass(frozen=True)
class OutboxStats:
    due: int
    total: int
    in_flight: int
    oldest_undispatched: float  # seconds
    oldest_in_flight: float  # seconds

    def __post_init__(self) -> None:
        # EXTRACT(EPOCH ...) is numeric: the ages arrive as Decimal.
        object.__setattr__(self, "oldest_undispatched", float(self.oldest_undispatched))
        object.__setattr__(self, "oldest_in_flight", float(self.oldest_in_flight))


def outbox_stats(conn: Conn) -> OutboxStats:
    with conn.cursor(row_factory=class_row(OutboxStats)) as cursor:
        stats = cursor.execute(QUERIES["outbox_stats"]).fetchone()
    assert stats is not None  # an aggregate without GROUP BY returns one row
    return stats


def count_relay_pauses(conn: Conn) -> int:
    with conn.cursor(row_factory=scalar_row) as cursor:
        count = cursor.execute(QUERIES["count_relay_pauses"]).fetchone()
    return int(count or 0)


def record_unroutable(conn: Conn, mail_id: uuid.UUID, routing_key: str) -> None:
    """An 'unroutable' event: RabbitMQ returned the mail's message (its row stays leased)."""
    conn.execute(QUERIES["record_unroutable"], {"mail_id": mail_id, "routing_key": routing_key})


# Canaries: one synthetic message per queue, acknowledged in the database by a worker.


def insert_canaries(conn: Conn, canaries: Sequence[tuple[uuid.UUID, str]], relay: str) -> None:
    """Canaries (id, queue) about to be published by *relay*."""
    with conn.transaction():
        for canary_id, queue in canaries:
            conn.execute(
                QUERIES["insert_canary"], {"id": canary_id, "queue": queue, "relay": relay}
            )


def mark_canaries_published(conn: Conn, canary_ids: Sequence[uuid.UUID]) -> None:
    conn.execute(QUERIES["mark_canaries_published"], {"ids": list(canary_ids)})


def canary_received(conn: Conn, canary_id: uuid.UUID) -> bool:
    """Whether a worker has recorded this canary's receipt."""
    with conn.cursor(row_factory=scalar_row) as cursor:
        received_at = cursor.execute(QUERIES["canary_received"], {"id": canary_id}).fetchone()
    return received_at is not None


@dataclass(frozen=True)
class CanaryTimes:
    """A queue's last completed round trip and oldest canary still travelling."""

    queue: str
    last_received: datetime | None
    oldest_pending: datetime | None
    now: datetime


def canary_times(conn: Conn, queues: Sequence[str]) -> list[CanaryTimes]:
    with conn.cursor(row_factory=class_row(CanaryTimes)) as cursor:
        return cursor.execute(QUERIES["canary_health"], {"queues": list(queues)}).fetchall()


def record_canary_received(conn: Conn, canary_id: uuid.UUID, worker: str) -> None:
    """The worker's half of a canary's round trip through the broker (no mail involved)."""
    conn.execute(QUERIES["record_canary_received"], {"id": canary_id, "worker": worker})


def prune_canaries(conn: Conn) -> None:
    """Canaries older than an hour go, but each queue's last completed one."""
    conn.execute(QUERIES["prune_canaries"])


# ----- the admin commands (owner: the outbox_relay helper) -----


@dataclass(frozen=True)
class TenantRef:
    id: uuid.UUID
    name: str


def find_tenant(conn: Conn, name_or_id: str) -> TenantRef:
    """A tenant named by its name or its id; NotFound if there is none."""
    with conn.cursor(row_factory=class_row(TenantRef)) as cursor:
        found = cursor.execute(
            QUERIES["find_tenant_by_name_or_id"], {"tenant": name_or_id}
        ).fetchone()
    if found is None:
        raise NotFound(f"no tenant named {name_or_id!r}")
    return found


def record_admin_action(
    conn: Conn, action: str, actor: str, arguments: dict[str, Any], result: dict[str, Any]
) -> None:
    """One admin_actions row: written in the transaction of the change it describes, or
    after a batched one."""
    conn.execute(
        QUERIES["record_admin_action"],
        {
            "action": action,
            "actor": actor,
            "arguments": Jsonb(arguments, dumps=_dumps),
            "result": Jsonb(result, dumps=_dumps),
        },
    )


def _dumps(value: Any) -> str:
    return json.dumps(value, default=str)


@dataclass(frozen=True)
class MailSelection:
    """Mails the way an operator names them, for every admin command that selects mails:
    list (newest first, up to a limit), report (a window), replay, dlq retry and discard
    (batches). None means any; the window is on created_at, [since, until)."""

    statuses: tuple[MailStatus, ...] | None = None
    tenant_id: uuid.UUID | None = None
    stream: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    tag: str | None = None
    mail_ids: tuple[uuid.UUID, ...] | None = None

    def params(self) -> dict[str, Any]:
        """The named parameters every selecting statement takes."""
        return {
            "statuses": sorted(status.value for status in self.statuses) if self.statuses else None,
            "tenant_id": self.tenant_id,
            "stream": self.stream,
            "since": self.since,
            "until": self.until,
            "tag": self.tag,
            "mail_ids": list(self.mail_ids) if self.mail_ids is not None else None,
        }

    def describe(self) -> dict[str, Any]:
        """JSON-ready and canonical (times in UTC, statuses and ids sorted): what a batched
        run records and derives its replay key from. The tag is there only when set, so
        the replay keys of runs without one never change."""
        described = {
            "since": _utc_iso(self.since),
            "until": _utc_iso(self.until),
            "statuses": sorted(status.value for status in self.statuses or ()),
            "tenant_id": str(self.tenant_id) if self.tenant_id else None,
            "stream": self.stream,
            "mail_ids": sorted(map(str, self.mail_ids)) if self.mail_ids is not None else None,
        }
        return described | ({"tag": self.tag} if self.tag is not None else {})


def _utc_iso(value: datetime | None) -> str | None:
    return value.astimezone(UTC).isoformat() if value is not None else None


def list_mails(conn: Conn, selection: MailSelection, limit: int) -> list[dict[str, Any]]:
    """Mails of every tenant, newest first."""
    with conn.cursor(row_factory=dict_row) as cursor:
        return cursor.execute(
            QUERIES["admin_list_mails"], {**selection.params(), "limit": limit}
        ).fetchall()


def mail_detail(conn: Conn, mail_id: uuid.UUID) -> dict[str, Any] | None:
    """The mail, its outbox row if it has one, and its whole event history, oldest first."""
    with conn.cursor(row_factory=dict_row) as cursor:
        mail = cursor.execute(QUERIES["admin_get_mail"], {"mail_id": mail_id}).fetchone()
        if mail is None:
            return None
        events = cursor.execute(QUERIES["list_mail_events"], {"mail_id": mail_id}).fetchall()
    queue = mail.pop("outbox_queue")
    available_at = mail.pop("outbox_available_at")
    dispatch_count = mail.pop("outbox_dispatch_count")
    outbox = (
        None
        if queue is None
        else {"queue": queue, "available_at": available_at, "dispatch_count": dispatch_count}
    )
    return {**mail, "outbox": outbox, "events": events}


def status_by_tenant_and_stream(conn: Conn) -> list[dict[str, Any]]:
    """Per tenant and stream: mails by status, failing mails, backlog and ages, paused."""
    with conn.cursor(row_factory=dict_row) as cursor:
        return cursor.execute(QUERIES["status_by_tenant_and_stream"]).fetchall()


# Pauses: a stream, a tenant or both (None = any) held in the outbox.


def insert_relay_pause(
    conn: Conn, stream: str | None, tenant_id: uuid.UUID | None, actor: str, reason: str | None
) -> bool:
    """True when this call paused the scope, False when it was paused already."""
    params = {"stream": stream, "tenant_id": tenant_id, "actor": actor, "reason": reason}
    return conn.execute(QUERIES["insert_relay_pause"], params).fetchone() is not None


def delete_relay_pause(
    conn: Conn, stream: str | None, tenant_id: uuid.UUID | None
) -> dict[str, Any] | None:
    """The lifted pause (actor, reason, created_at), or None when the scope was not paused."""
    with conn.cursor(row_factory=dict_row) as cursor:
        return cursor.execute(
            QUERIES["delete_relay_pause"], {"stream": stream, "tenant_id": tenant_id}
        ).fetchone()


def list_relay_pauses(conn: Conn) -> list[dict[str, Any]]:
    """Every pause with the outbox rows it holds, oldest first."""
    with conn.cursor(row_factory=dict_row) as cursor:
        return cursor.execute(QUERIES["list_relay_pauses"]).fetchall()


# Replay, dlq retry and discard: batches after a (created_at, id) cursor.


@dataclass(frozen=True)
class BatchPage:
    """Where the next batch starts (after the last mail of the previous one), and its size."""

    size: int
    after_created_at: datetime | None = None
    after_id: uuid.UUID | None = None

    def params(self) -> dict[str, Any]:
        return {
            "batch_size": self.size,
            "cursor_created_at": self.after_created_at,
            "cursor_id": self.after_id,
        }


def count_selected_mails(conn: Conn, selection: MailSelection) -> int:
    with conn.cursor(row_factory=scalar_row) as cursor:
        count = cursor.execute(QUERIES["count_selected_mails"], selection.params()).fetchone()
    return int(count or 0)


def replay_batch(
    conn: Conn,
    selection: MailSelection,
    page: BatchPage,
    *,
    replay_key: str,
    max_age: timedelta | None,
    detail: dict[str, Any],
) -> list[dict[str, Any]]:
    """One replay batch (run it in its transaction): each candidate with previous_status,
    skip_reason and whether it went back to 'accepted' and the outbox (changed)."""
    params = {
        **selection.params(),
        **page.params(),
        "replay_key": replay_key,
        "max_age": max_age.total_seconds() if max_age else None,
        "detail": Jsonb(detail),
    }
    with conn.cursor(row_factory=dict_row) as cursor:
        return cursor.execute(QUERIES["replay_batch"], params).fetchall()


def discard_batch(
    conn: Conn, selection: MailSelection, page: BatchPage, *, detail: dict[str, Any]
) -> list[dict[str, Any]]:
    """One discard batch (run it in its transaction): the candidates, changed when they
    became 'discarded'."""
    params = {**selection.params(), **page.params(), "detail": Jsonb(detail)}
    with conn.cursor(row_factory=dict_row) as cursor:
        return cursor.execute(QUERIES["discard_batch"], params).fetchall()


# Retention: final mails (with events and webhook deliveries), idempotency keys, CDP events.

# Sorted so that the printed and recorded order is stable.
FINAL_STATUS_NAMES: tuple[str, ...] = tuple(sorted(status.value for status in FINAL_STATUSES))


@dataclass(frozen=True)
class PurgeableRows:
    """Besides mails: what a purge would delete now."""

    events: int
    webhook_deliveries: int
    idempotency_keys: int
    cdp_events: int


@dataclass(frozen=True)
class PurgedBatch:
    """What one mail batch of a purge deleted."""

    mails: dict[str, int]  # by status
    events: int
    webhook_deliveries: int


def retention_cutoff(conn: Conn, older_than: timedelta) -> datetime:
    """now() - older_than by the database clock, in UTC."""
    with conn.cursor(row_factory=scalar_row) as cursor:
        cutoff = cursor.execute(QUERIES["retention_cutoff"], {"older_than": older_than}).fetchone()
    assert isinstance(cutoff, datetime)
    return cutoff.astimezone(UTC)


def _retention_params(cutoff: datetime, batch_size: int) -> dict[str, Any]:
    return {"final_statuses": list(FINAL_STATUS_NAMES), "cutoff": cutoff, "batch_size": batch_size}


def count_purgeable_mails(conn: Conn, cutoff: datetime) -> dict[str, int]:
    """Final mails a purge would delete now, by status."""
    params = _retention_params(cutoff, 0)
    with conn.cursor(row_factory=dict_row) as cursor:
        rows = cursor.execute(QUERIES["count_purgeable_mails_by_status"], params).fetchall()
    return {row["status"]: row["mails"] for row in rows}


def count_purgeable_rows(conn: Conn, cutoff: datetime) -> PurgeableRows:
    with conn.cursor(row_factory=class_row(PurgeableRows)) as cursor:
        rows = cursor.execute(
            QUERIES["count_purgeable_rows"], _retention_params(cutoff, 0)
        ).fetchone()
    assert rows is not None
    return rows


def purge_mail_batch(conn: Conn, cutoff: datetime, batch_size: int) -> PurgedBatch | None:
    """One transaction: lock a batch of purgeable mails, re-check it, delete their webhook
    deliveries, events and the mails; None when there was nothing left to lock."""
    with (
        conn.transaction(),
        conn.cursor(row_factory=scalar_row) as cursor,
        conn.cursor(row_factory=dict_row) as counting,
    ):
        # The one way past mail_events' append-only trigger, for this transaction only.
        cursor.execute(QUERIES["enable_purge_in_transaction"])
        params = _retention_params(cutoff, batch_size)
        locked = cursor.execute(QUERIES["lock_purgeable_mails"], params).fetchall()
        if not locked:
            return None
        # The lock query's snapshot predates its locks: an outbox row or pending delivery
        # committed in between would be missed. Locked now, a fresh look is final.
        ids = cursor.execute(QUERIES["confirm_purgeable_mails"], {"ids": locked}).fetchall()
        cursor.execute(QUERIES["purge_webhook_deliveries"], {"ids": ids})
        webhook_deliveries = cursor.rowcount
        cursor.execute(QUERIES["purge_mail_events"], {"ids": ids})
        events = cursor.rowcount
        gone = counting.execute(QUERIES["purge_mails"], {"ids": ids}).fetchall()
    mails = {row["status"]: row["mails"] for row in gone}
    return PurgedBatch(mails, events, webhook_deliveries)


def purge_idempotency_keys(conn: Conn, cutoff: datetime, batch_size: int) -> int:
    """One batch of old idempotency keys, in its own short transaction; how many went."""
    with conn.cursor() as cursor:
        return cursor.execute(
            QUERIES["purge_idempotency_keys"], _retention_params(cutoff, batch_size)
        ).rowcount


def purge_cdp_events(conn: Conn, cutoff: datetime, batch_size: int) -> int:
    """One batch of old CDP events, in its own short transaction; how many went."""
    with conn.cursor() as cursor:
        return cursor.execute(
            QUERIES["purge_cdp_events"], _retention_params(cutoff, batch_size)
        ).rowcount


# The reconciliation report: every mail accepted in a window, read in one snapshot.


@dataclass(frozen=True)
class WindowReport:
    counts: list[dict[str, Any]]  # tenant, status, mails
    not_final_mails: list[dict[str, Any]]
    latest_purge_cutoff: datetime | None  # of purges that may have removed mails of it
    purges: int


@contextmanager
def read_only_snapshot(conn: Conn) -> Iterator[None]:
    """One REPEATABLE READ, READ ONLY transaction; the connection's defaults restored after."""
    saved = conn.isolation_level, conn.read_only
    conn.isolation_level, conn.read_only = IsolationLevel.REPEATABLE_READ, True
    try:
        with conn.transaction():
            yield
    finally:
        conn.isolation_level, conn.read_only = saved


def window_report(conn: Conn, selection: MailSelection) -> WindowReport:
    """Mails accepted in selection's window (since and until required), by tenant and
    status, and those not final yet; all of it read in one snapshot, so they agree."""
    # Every status is counted: a report narrows by window, tenant and stream only.
    assert selection.statuses is None and selection.tag is None and selection.mail_ids is None
    params = {**selection.params(), "final_statuses": sorted(FINAL_STATUS_NAMES)}
    with read_only_snapshot(conn), conn.cursor(row_factory=dict_row) as cursor:
        counts = cursor.execute(QUERIES["report_counts_by_tenant_and_status"], params).fetchall()
        not_final = cursor.execute(QUERIES["report_not_final_mails"], params).fetchall()
        purges = cursor.execute(QUERIES["report_purges_after"], params).fetchone()
    assert purges is not None  # an aggregate without GROUP BY returns one row
    return WindowReport(counts, not_final, purges["latest_cutoff"], purges["purges"])
