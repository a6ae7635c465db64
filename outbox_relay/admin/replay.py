"""Batched changes an operator makes to mails: replay (and dlq retry) puts finished
mails back through the outbox; discard gives up on dead ones. Batches an operator may
interrupt and rerun.

Each batch is one statement in one transaction (SQL ``replay_batch``,
``discard_batch``): lock the next candidates in (created_at, id) order,
compare-and-set the unskipped ones. A replay gives them a fresh outbox row and a
``replayed`` event naming the run's replay key. The key is a digest of what was asked
for, so rerunning the same command skips every mail a run with that key already
replayed, even one that failed again since: a rerun after an interruption never sends
twice. A discarded mail keeps its history (``discarded`` is final but replayable with
``replay --status discarded``); it leaves the dead-letter queue. A dry run executes the
very same statements and rolls each batch back, so it shows exactly what a real run
would do.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import psycopg

from shared.cli_support import error_line
from shared.queues import OUTBOX_CHANNEL
from shared.store import Conn
from shared.store import outbox as outbox_store
from shared.store.outbox import BatchPage, MailSelection

SKIP_REASONS = ("expired", "older_than_max_age", "already_replayed")
# Explicitly named ids that no batch selected (dlq retry and discard).
NOT_DEAD = "not_dead"
DEFAULT_BATCH_SIZE = 500

Progress = Callable[[int], None]
# One batch's statement: the selection's next page, changed or (dry run) not.
BatchStatement = Callable[[Conn, BatchPage], list[dict[str, Any]]]


@dataclass(frozen=True)
class ReplayRequest:
    """What a replay is asked to do; everything here, and nothing else, names the run."""

    selection: MailSelection
    include_sent: bool = False
    max_age: timedelta | None = None

    @property
    def key(self) -> str:
        """Limit, batch size, dry run and actor are left out: they change how far a run
        gets or who runs it, not which mails it means."""
        canonical = {
            **self.selection.describe(),
            "include_sent": self.include_sent,
            "max_age": self.max_age.total_seconds() if self.max_age else None,
        }
        text = json.dumps(canonical, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class BatchOptions:
    batch_size: int = DEFAULT_BATCH_SIZE
    limit: int | None = None  # at most this many mails changed by this run
    dry_run: bool = False


@dataclass
class BatchRun:
    """What a batched run changed and skipped, so far."""

    reasons: Sequence[str]
    changed: list[dict[str, Any]] = field(default_factory=list)
    skipped: dict[str, list[uuid.UUID]] = field(default_factory=dict)
    seen: set[uuid.UUID] = field(default_factory=set)
    interrupted: bool = False
    error: str | None = None

    def __post_init__(self) -> None:
        # Every reason is always present, so the JSON output has a stable shape.
        for reason in self.reasons:
            self.skipped.setdefault(reason, [])

    def add(self, rows: Sequence[dict[str, Any]]) -> None:
        for row in rows:
            self.seen.add(row["id"])
            if row["changed"]:
                self.changed.append(row)
            elif row["skip_reason"]:
                self.skipped.setdefault(row["skip_reason"], []).append(row["id"])

    def skipped_counts(self) -> dict[str, int]:
        return {reason: len(ids) for reason, ids in self.skipped.items()}

    def note_unselected(self, mail_ids: Sequence[uuid.UUID] | None) -> None:
        """Named ids no batch selected are not dead (or not in --tenant/--stream/window).
        Only known once a run is complete."""
        if mail_ids is None or self.interrupted or self.error:
            return
        self.skipped[NOT_DEAD] = [mail_id for mail_id in mail_ids if mail_id not in self.seen]


def count_selected(conn: Conn, selection: MailSelection) -> int:
    return outbox_store.count_selected_mails(conn, selection)


def replay(
    conn: Conn,
    request: ReplayRequest,
    options: BatchOptions,
    *,
    actor: str,
    via: str = "replay",
    progress: Progress | None = None,
) -> BatchRun:
    selection = request.selection
    detail = {"actor": actor, "replay": request.key, "via": via}

    def statement(conn: Conn, page: BatchPage) -> list[dict[str, Any]]:
        return outbox_store.replay_batch(
            conn, selection, page, replay_key=request.key, max_age=request.max_age, detail=detail
        )

    reasons = SKIP_REASONS if selection.mail_ids is None else (*SKIP_REASONS, NOT_DEAD)
    run = BatchRun(reasons)
    run_batches(conn, statement, options, run, progress=progress)
    run.note_unselected(selection.mail_ids)
    return run


def discard(
    conn: Conn,
    selection: MailSelection,
    options: BatchOptions,
    *,
    actor: str,
    reason: str,
    progress: Progress | None = None,
) -> BatchRun:
    """*selection*'s statuses are the compare-and-set's ``from`` side (dead)."""
    detail = {"actor": actor, "reason": reason}

    def statement(conn: Conn, page: BatchPage) -> list[dict[str, Any]]:
        return outbox_store.discard_batch(conn, selection, page, detail=detail)

    run = BatchRun((NOT_DEAD,) if selection.mail_ids is not None else ())
    run_batches(conn, statement, options, run, progress=progress)
    run.note_unselected(selection.mail_ids)
    return run


def run_batches(
    conn: Conn,
    statement: BatchStatement,
    options: BatchOptions,
    run: BatchRun,
    *,
    progress: Progress | None = None,
) -> None:
    """Batch after batch until the selection is exhausted or the limit reached.

    Ctrl-C or a database error rolls back the current batch and stops; the
    batches before it are committed and *run* says what they did.
    """
    after: tuple[datetime | None, uuid.UUID | None] = (None, None)
    try:
        while options.limit is None or len(run.changed) < options.limit:
            page = BatchPage(_next_size(options, len(run.changed)), *after)
            with conn.transaction(force_rollback=options.dry_run):
                rows = execute_batch(conn, statement, page)
            run.add(rows)
            if progress is not None:
                progress(len(rows))
            if any(row["changed"] for row in rows) and not options.dry_run:
                _wake_relays(conn)
            # Rows that no longer match after waiting for their lock drop out before
            # LIMIT counts (the lock sits below the limit), so a short batch is the last.
            if len(rows) < page.size:
                return
            last = max(rows, key=lambda row: (row["created_at"], row["id"]))
            after = (last["created_at"], last["id"])
    except KeyboardInterrupt:
        run.interrupted = True
    except psycopg.Error as exc:
        run.error = error_line(exc)


def _next_size(options: BatchOptions, changed: int) -> int:
    """A batch never changes more mails than the limit leaves (skipped ones do not count)."""
    if options.limit is None:
        return options.batch_size
    return min(options.batch_size, options.limit - changed)


def execute_batch(conn: Conn, statement: BatchStatement, page: BatchPage) -> list[dict[str, Any]]:
    """One batch's statement, inside its transaction (the point tests interrupt)."""
    return statement(conn, page)


def _wake_relays(conn: Conn) -> None:
    """After the COMMIT, like the API: relays pick the new outbox rows up before their poll."""
    with contextlib.suppress(psycopg.Error):  # the relays poll anyway
        conn.execute(f"NOTIFY {OUTBOX_CHANNEL}")
