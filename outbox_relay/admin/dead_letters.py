"""Discard dead mails: an operator decides a dead letter will not be sent.

The mail and its history stay (``discarded`` is final but replayable with
``replay --status discarded``); it leaves the dead-letter queue. Batched like a
replay, with the same interruptible, rerunnable loop.
"""

from __future__ import annotations

from psycopg import Connection
from psycopg.types.json import Jsonb

from outbox_relay.admin.replay import (
    NOT_DEAD,
    BatchOptions,
    BatchRun,
    Progress,
    Selection,
    run_batches,
)
from shared.queries import QUERIES


def discard(
    conn: Connection,
    selection: Selection,
    options: BatchOptions,
    *,
    actor: str,
    reason: str,
    progress: Progress | None = None,
) -> BatchRun:
    """*selection*'s statuses are the compare-and-set's ``from`` side (dead)."""
    params = {**selection.params(), "detail": Jsonb({"actor": actor, "reason": reason})}
    run = BatchRun((NOT_DEAD,) if selection.mail_ids is not None else ())
    run_batches(conn, QUERIES["discard_batch"], params, options, run, progress=progress)
    run.note_unselected(selection.mail_ids)
    return run
