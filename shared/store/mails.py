"""Mails and their events: the ingest statement, reads for the API, and the send step's
compare-and-sets. Every status change here runs through the database's state machine
(migration 0010: ``mailroom_may_become`` guards, the ``mails_transitions`` trigger
records the event); see :mod:`shared.states`.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import orjson
from psycopg.rows import class_row
from psycopg.types.json import Jsonb

from shared.queries import QUERIES
from shared.states import MailStatus
from shared.store import Conflict, Conn, NotFound, StoreError
from shared.streams import Stream

# ----- ingest and the API (owner: the ingest_api helper) -----


@dataclass(frozen=True)
class NewMail:
    """A validated mail, ready to store; ``request`` is what the worker will read."""

    request: dict[str, Any]
    stream: Stream = Stream.TRANSACTIONAL
    source: str = "api"
    send_at: datetime | None = None
    expires_at: datetime | None = None
    tags: Sequence[str] = ()
    metadata: dict[str, Any] = field(default_factory=dict)
    campaign_key: str | None = None
    id: uuid.UUID = field(default_factory=uuid.uuid4)

    def __post_init__(self) -> None:
        object.__setattr__(self, "stream", Stream(self.stream))  # callers may pass text

    @property
    def status(self) -> MailStatus:
        return MailStatus.SCHEDULED if self.send_at is not None else MailStatus.ACCEPTED


def accept_mails(
    conn: Conn, tenant_id: uuid.UUID, mails: Sequence[NewMail], *, request_id: str
) -> None:
    """Insert mails with their outbox rows and first events: the ingest statement (one).

    Run it in the ingest transaction, whose COMMIT is the promise: 202 only after it;
    on its own in autocommit, the statement is that transaction.
    """
    if not mails:
        return
    conn.execute(
        QUERIES["accept_mails"],
        {
            "tenant_id": tenant_id,
            "ids": [m.id for m in mails],
            "mails": _json_text([_ingest_row(m) for m in mails]),
            "event_detail": _json_text({"request_id": request_id}),
        },
    )


def _ingest_row(mail: NewMail) -> dict[str, Any]:
    """One element of the ingest statement's jsonb array (its column list names these)."""
    return {
        "stream": mail.stream.value,
        "queue": mail.stream.queue,
        "source": mail.source,
        "status": mail.status.value,
        "request": mail.request,
        "send_at": mail.send_at,
        "expires_at": mail.expires_at,
        "tags": mail.tags,
        "metadata": mail.metadata,
        "campaign_key": mail.campaign_key,
    }


def _json_text(value: Any) -> str:
    """JSON for a ``%(x)s::jsonb`` parameter (sent as text; the server parses it).

    orjson because psycopg's Jsonb (the standard library's encoder, then one adapter
    per array element) was most of the API's CPU per mail: 119 ms of client CPU for a
    500-mail batch against 10 ms this way. Datetimes become RFC 3339 with their offset.
    """
    return orjson.dumps(value).decode()


@dataclass(frozen=True)
class Answer:
    """An HTTP status and JSON body: what the client gets, now and on a retry."""

    status_code: int
    body: dict[str, Any]


class IdempotencyConflict(StoreError):
    """The Idempotency-Key was used before with a different request."""


def request_fingerprint(method: str, path: str, body: bytes) -> bytes:
    """What makes two requests 'the same' for an Idempotency-Key."""
    try:  # the same JSON, whatever its key order or spacing
        canonical = json.dumps(json.loads(body), sort_keys=True, separators=(",", ":")).encode()
    except ValueError:
        canonical = body
    return hashlib.sha256(method.encode() + b" " + path.encode() + b"\n" + canonical).digest()


@dataclass(frozen=True)
class _StoredKey:
    request_hash: bytes
    status_code: int
    response: dict[str, Any]


def claim_idempotency_key(
    conn: Conn, tenant_id: uuid.UUID, key: str, fingerprint: bytes
) -> Answer | None:
    """Own the key (None), or the answer stored for it; waits for a concurrent holder.

    The first statement of an ingest transaction that carries a key. Raises
    IdempotencyConflict when the key was used with another request.
    """
    params = {"tenant_id": tenant_id, "key": key, "request_hash": fingerprint}
    if conn.execute(QUERIES["claim_idempotency_key"], params).fetchone() is not None:
        return None
    with conn.cursor(row_factory=class_row(_StoredKey)) as cursor:
        stored = cursor.execute(QUERIES["find_idempotency_key"], params).fetchone()
    if stored is None:  # the holder rolled back between our two statements: retry
        return claim_idempotency_key(conn, tenant_id, key, fingerprint)
    if bytes(stored.request_hash) != fingerprint:
        raise IdempotencyConflict(key)
    return Answer(stored.status_code, stored.response)


def store_idempotent_answer(conn: Conn, tenant_id: uuid.UUID, key: str, answer: Answer) -> None:
    """The answer a retry with the same key gets; in the transaction that claimed the key."""
    conn.execute(
        QUERIES["store_idempotent_response"],
        {
            "tenant_id": tenant_id,
            "key": key,
            "status_code": answer.status_code,
            "response": Jsonb(answer.body),
        },
    )


@dataclass(frozen=True)
class MailRecord:
    """A mail as its tenant sees it (``GET /v1/mails``)."""

    id: uuid.UUID
    status: str
    stream: str
    source: str
    tags: list[str]
    metadata: dict[str, Any]
    send_at: datetime | None
    expires_at: datetime | None
    campaign_key: str | None
    attempts: int
    last_error: str | None
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True)
class MailEventRecord:
    kind: str
    detail: dict[str, Any]
    created_at: datetime


def get_mail(conn: Conn, tenant_id: uuid.UUID, mail_id: uuid.UUID) -> MailRecord:
    """The tenant's mail; NotFound for any other id (another tenant's too)."""
    with conn.cursor(row_factory=class_row(MailRecord)) as cursor:
        found = cursor.execute(
            QUERIES["get_mail_for_tenant"], {"mail_id": mail_id, "tenant_id": tenant_id}
        ).fetchone()
    if found is None:
        raise NotFound(f"mail {mail_id}")
    return found


def mail_events(conn: Conn, mail_id: uuid.UUID) -> list[MailEventRecord]:
    """A mail's history, oldest first."""
    with conn.cursor(row_factory=class_row(MailEventRecord)) as cursor:
        return cursor.execute(QUERIES["list_mail_events"], {"mail_id": mail_id}).fetchall()


def list_mails(
    conn: Conn,
    tenant_id: uuid.UUID,
    *,
    status: str | None,
    since: datetime | None,
    until: datetime | None,
    tag: str | None,
    after: tuple[datetime, uuid.UUID] | None,
    limit: int,
) -> list[MailRecord]:
    """Up to *limit* of the tenant's mails, newest first, after the (created_at, id) *after*."""
    cursor_created_at, cursor_id = after if after is not None else (None, None)
    with conn.cursor(row_factory=class_row(MailRecord)) as cursor:
        return cursor.execute(
            QUERIES["list_mails_for_tenant"],
            {
                "tenant_id": tenant_id,
                "status": status,
                "since": since,
                "until": until,
                "tag": tag,
                "cursor_created_at": cursor_created_at,
                "cursor_id": cursor_id,
                "limit": limit,
            },
        ).fetchall()


class SendingBegun(Conflict):
    """The mail's sending has begun (or ended): it can no longer be cancelled."""

    def __init__(self, status: str) -> None:
        super().__init__(status)
        self.status = status


def cancel_mail(
    conn: Conn, tenant_id: uuid.UUID, mail_id: uuid.UUID, *, request_id: str | None
) -> None:
    """Cancel the tenant's mail (its outbox row goes with it) if its sending has not begun.

    Run it in a transaction. Raises NotFound, or SendingBegun naming the mail's status.
    """
    params = {"mail_id": mail_id, "tenant_id": tenant_id}
    # The outbox row first, as the relay and the worker lock them: no deadlock.
    conn.execute(QUERIES["lock_mail_outbox_row"], params)
    cancelled = conn.execute(
        QUERIES["cancel_mail"], {**params, "detail": Jsonb({"request_id": request_id})}
    ).fetchone()
    if cancelled is None:
        raise SendingBegun(get_mail(conn, tenant_id, mail_id).status)


# ----- the send step (owner: the mail_worker helper) -----


@dataclass(frozen=True)
class PickedMail:
    """A mail a worker holds in 'sending': what the send step needs of it."""

    id: uuid.UUID
    tenant_id: uuid.UUID
    stream: Stream
    request: dict[str, Any]
    attempts: int  # counting this one: the pickup counted it
    expires_at: datetime | None

    def __post_init__(self) -> None:
        object.__setattr__(self, "stream", Stream(self.stream))  # the row holds text


def begin_sending(conn: Conn, mail_ids: Sequence[uuid.UUID], worker: str) -> list[PickedMail]:
    """The pickup of a batch: move each mail to 'sending' and delete its outbox row (the
    relay's end-to-end acknowledgement); the compare-and-set that lets exactly one
    delivery of a task send. Returns the mails won, in the order of *mail_ids*.

    A mail not returned was picked up by another delivery, is finished, or is past
    ``expires_at`` (it then becomes 'expired': never sent late). Run it in a transaction,
    in pipeline mode if the round trips matter: the locks, the compare-and-set and the
    commit then travel together.
    """
    ids = list(mail_ids)
    # Waits for a relay still committing these mails' publish (lock order: outbox, mails).
    conn.execute(QUERIES["lock_outbox_rows"], {"mail_ids": ids})
    with conn.cursor(row_factory=class_row(PickedMail)) as cursor:
        won = cursor.execute(
            QUERIES["begin_sending"], {"mail_ids": ids, "worker": worker}
        ).fetchall()
    by_id = {mail.id: mail for mail in won}
    if lost := [mail_id for mail_id in ids if mail_id not in by_id]:
        expire_mails(conn, lost, by="worker")
    return [by_id[mail_id] for mail_id in dict.fromkeys(ids) if mail_id in by_id]


def expire_mails(conn: Conn, mail_ids: Sequence[uuid.UUID], *, by: str) -> None:
    """Mails past expires_at become 'expired' and leave the outbox (not those being sent)."""
    conn.execute(QUERIES["expire_mails"], {"mail_ids": list(mail_ids), "by": by})


def finish_sending(
    conn: Conn, mail: PickedMail, status: MailStatus, detail: dict[str, Any], error: str | None
) -> bool:
    """Record the outcome of the attempt of a mail in 'sending' (*detail*: its event's).

    False if that attempt is no longer the mail's: it was taken back from a worker
    presumed lost (and may have been picked up again); nothing was changed.
    """
    params = {
        "mail_id": mail.id,
        "attempt": mail.attempts,
        "status": status.value,
        "last_error": error,
        "detail": Jsonb(detail),
    }
    return conn.execute(QUERIES["finish_sending"], params).rowcount == 1


def schedule_retry(
    conn: Conn, mail: PickedMail, error: str, delay_seconds: float, detail: dict[str, Any]
) -> bool:
    """A transient failure: 'retrying', back in the outbox and due after *delay_seconds*.

    False, changing nothing, if this attempt is no longer the mail's (see finish_sending).
    """
    params = {
        "mail_id": mail.id,
        "attempt": mail.attempts,
        "last_error": error,
        "delay": delay_seconds,
        "detail": Jsonb(detail),
    }
    return conn.execute(QUERIES["schedule_retry"], params).rowcount == 1
