"""The ingest promise, in one place: 202 is returned only after this COMMIT.

Every endpoint that creates mail (single, batch, campaign trigger, CDP event)
does it inside :func:`ingest_transaction`: the idempotency key (if any), the
mails, their outbox rows, their first events and whatever else the endpoint
stores (a CDP event, say) are written in one PostgreSQL transaction. If any
part fails, or the database cannot be reached, the exception propagates,
nothing is written, and the API answers 503: a client never holds an id for a
mail we do not have.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import psycopg
from psycopg.rows import DictRow
from psycopg.types.json import Jsonb

from shared.db import DictPool
from shared.queries import QUERIES
from shared.queues import STREAM_QUEUES
from shared.states import MailStatus


@dataclass(frozen=True)
class NewMail:
    """A validated mail, ready to store; ``request`` is what the worker will read."""

    request: dict[str, Any]
    stream: str = "transactional"
    source: str = "api"
    send_at: datetime | None = None
    expires_at: datetime | None = None
    tags: Sequence[str] = ()
    metadata: dict[str, Any] = field(default_factory=dict)
    campaign_key: str | None = None
    id: uuid.UUID = field(default_factory=uuid.uuid4)

    @property
    def status(self) -> MailStatus:
        return MailStatus.SCHEDULED if self.send_at is not None else MailStatus.ACCEPTED


@dataclass(frozen=True)
class Answer:
    """An HTTP status and JSON body: what the client gets, now and on a retry."""

    status_code: int
    body: dict[str, Any]


class IdempotencyConflict(Exception):
    """The Idempotency-Key was used before with a different request."""


def request_fingerprint(method: str, path: str, body: bytes) -> bytes:
    """What makes two requests 'the same' for an Idempotency-Key."""
    try:  # the same JSON, whatever its key order or spacing
        canonical = json.dumps(json.loads(body), sort_keys=True, separators=(",", ":")).encode()
    except ValueError:
        canonical = body
    return hashlib.sha256(method.encode() + b" " + path.encode() + b"\n" + canonical).digest()


@dataclass
class IngestTransaction:
    """Handle on the open transaction; see :func:`ingest_transaction`."""

    conn: psycopg.Connection[DictRow]
    tenant_id: uuid.UUID
    request_id: str
    idempotency_key: str | None
    replay: Answer | None = None
    answer: Answer | None = None
    mails_added: int = 0

    def add_mails(self, mails: Sequence[NewMail]) -> list[uuid.UUID]:
        """Insert mails with their outbox rows and first events (one statement)."""
        if not mails:
            return []
        self.conn.execute(
            QUERIES["accept_mails"],
            {
                "tenant_id": self.tenant_id,
                "ids": [m.id for m in mails],
                "streams": [m.stream for m in mails],
                "queues": [STREAM_QUEUES[m.stream] for m in mails],
                "sources": [m.source for m in mails],
                "statuses": [m.status.value for m in mails],
                "requests": [Jsonb(m.request) for m in mails],
                "send_ats": [m.send_at for m in mails],
                "expires_ats": [m.expires_at for m in mails],
                "tags": [Jsonb(list(m.tags)) for m in mails],
                "metadata": [Jsonb(m.metadata) for m in mails],
                "campaign_keys": [m.campaign_key for m in mails],
                "event_detail": Jsonb({"request_id": self.request_id}),
            },
        )
        self.mails_added += len(mails)
        return [m.id for m in mails]

    def respond(self, status_code: int, body: dict[str, Any]) -> Answer:
        """Set the answer; with an Idempotency-Key it is stored in this transaction."""
        self.answer = Answer(status_code, body)
        if self.idempotency_key is not None:
            self.conn.execute(
                QUERIES["store_idempotent_response"],
                {
                    "tenant_id": self.tenant_id,
                    "key": self.idempotency_key,
                    "status_code": status_code,
                    "response": Jsonb(body),
                },
            )
        return self.answer


class _Replay(Exception):
    """Leaves the transaction without writing: the key was already answered."""


def _claim_key(
    conn: psycopg.Connection[DictRow], tenant_id: uuid.UUID, key: str, fingerprint: bytes
) -> Answer | None:
    """Own the key, or return the answer stored for it (waits for a concurrent holder)."""
    params = {"tenant_id": tenant_id, "key": key, "request_hash": fingerprint}
    if conn.execute(QUERIES["claim_idempotency_key"], params).fetchone() is not None:
        return None
    stored = conn.execute(QUERIES["find_idempotency_key"], params).fetchone()
    if stored is None:  # the holder rolled back between our two statements: retry
        return _claim_key(conn, tenant_id, key, fingerprint)
    if bytes(stored["request_hash"]) != fingerprint:
        raise IdempotencyConflict(key)
    return Answer(stored["status_code"], stored["response"])


@contextmanager
def ingest_transaction(
    pool: DictPool,
    *,
    tenant_id: uuid.UUID,
    request_id: str,
    idempotency_key: str | None = None,
    fingerprint: bytes = b"",
) -> Iterator[IngestTransaction]:
    """One transaction for everything a request creates; COMMIT when the block ends.

    If ``tx.replay`` is set on entry, the key was answered before: the caller
    returns that answer and writes nothing. Otherwise the caller adds mails and
    calls ``tx.respond``; leaving the block commits, and only then may the
    answer be sent.
    """
    # Pipeline mode: BEGIN, the inserts and COMMIT travel together (one round trip
    # without an Idempotency-Key); leaving the block waits for COMMIT's result.
    with pool.connection() as conn, conn.pipeline():
        try:
            with conn.transaction():
                tx = IngestTransaction(conn, tenant_id, request_id, idempotency_key)
                if idempotency_key is not None:
                    tx.replay = _claim_key(conn, tenant_id, idempotency_key, fingerprint)
                yield tx
                if tx.replay is not None:
                    raise _Replay
                if tx.answer is None:
                    raise RuntimeError("an ingest transaction ended without an answer")
        except _Replay:
            pass
    # Leaving ``transaction()`` issued COMMIT and it succeeded (or rolled back a replay).
