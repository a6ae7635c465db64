"""The ingest promise, in one place: 202 is returned only after this COMMIT.

Every endpoint that creates mail (single, batch, campaign trigger, CDP event)
does it inside :func:`ingest_transaction`: the idempotency key (if any), the
mails, their outbox rows, their first events and whatever else the endpoint
stores (a CDP event, say) are written in one PostgreSQL transaction. If any
part fails, or the database cannot be reached, the exception propagates,
nothing is written, and the API answers 503: a client never holds an id for a
mail we do not have.

A view reads::

    with ingest_transaction(tenant) as tx:      # claims the Idempotency-Key, if any
        if tx.replay is None:                   # else: answered before, write nothing
            tx.add_mails(mails)                 # shared.store.mails.accept_mails
            tx.respond(202, body)               # stored with the key, if any
    return answer_after_commit(tx)              # COMMIT succeeded: only now answer

Where the transaction begins: at the first statement other than the mails'
insert (the key's claim, a CDP event's row, a read). A request that only adds
mails, without an Idempotency-Key (the common ``POST /v1/mails``), runs the one
ingest statement on its own in autocommit: that statement is the transaction,
and its result arrives only after its COMMIT. It costs the API about a third of
the CPU of BEGIN, the statement and COMMIT in pipeline mode (bench/ingest.py).

After the COMMIT the relays are woken (:class:`RelayWakeup`), without a NOTIFY in
the transaction.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from typing import Any

from flask import Flask, Response, current_app, jsonify, request

from ingest_api import db
from ingest_api.errors import refuse
from ingest_api.metrics import record_mails_accepted
from shared.db import DictPool
from shared.jsonlog import request_id_var
from shared.queues import OUTBOX_CHANNEL
from shared.store import Conn
from shared.store import mails as store_mails
from shared.store.mails import Answer, NewMail, request_fingerprint
from shared.store.tenants import Tenant

log = logging.getLogger(__name__)

IDEMPOTENCY_HEADER = "Idempotency-Key"
MAX_KEY_LENGTH = 255


def _idempotency_key() -> tuple[str | None, bytes]:
    """The request's key (if any) and the fingerprint a retry must match."""
    key = request.headers.get(IDEMPOTENCY_HEADER)
    if key is None:
        return None, b""
    if not 1 <= len(key) <= MAX_KEY_LENGTH or not key.isprintable():
        refuse(
            400,
            f"{IDEMPOTENCY_HEADER} must be 1 to {MAX_KEY_LENGTH} printable characters",
            errors={IDEMPOTENCY_HEADER: ["invalid"]},
        )
    return key, request_fingerprint(request.method, request.path, request.get_data())


class IngestTransaction:
    """Handle on the ingest transaction; see :func:`ingest_transaction`.

    ``conn`` begins the transaction (BEGIN, pipeline mode) on first use; mails
    added before that wait, and are inserted first when it begins, or on their
    own in autocommit when the block ends without it.
    """

    def __init__(
        self, stack: ExitStack, connection: Conn, tenant: Tenant, idempotency_key: str | None
    ) -> None:
        self._stack = stack
        self._connection = connection
        self.tenant = tenant
        self.idempotency_key = idempotency_key
        self.replay: Answer | None = None
        self.answer: Answer | None = None
        self.mails_added = 0
        self._waiting: list[NewMail] = []
        self.begun = False

    @property
    def conn(self) -> Conn:
        """The connection, inside the transaction (begun here if it is not yet)."""
        if not self.begun:
            # Pipeline mode: BEGIN, the statements and COMMIT travel together where no
            # result is read in between; leaving the block waits for COMMIT's result.
            self._stack.enter_context(self._connection.pipeline())
            self._stack.enter_context(self._connection.transaction())
            self.begun = True
            self._insert_waiting()
        return self._connection

    def add_mails(self, mails: Sequence[NewMail]) -> None:
        """Insert mails with their outbox rows and first events (one statement)."""
        self._waiting.extend(mails)
        self.mails_added += len(mails)
        if self.begun:
            self._insert_waiting()

    def respond(self, status_code: int, body: dict[str, Any]) -> None:
        """Set the answer; with an Idempotency-Key it is stored in this transaction."""
        self.answer = Answer(status_code, body)
        if self.idempotency_key is not None:
            store_mails.store_idempotent_answer(
                self.conn, self.tenant.id, self.idempotency_key, self.answer
            )

    def commit(self) -> None:
        """The end of the block: the waiting mails alone (autocommit), or COMMIT."""
        if self.begun:
            self._stack.close()  # COMMIT; raises if it fails
        else:
            self._insert_waiting()  # one statement, its own transaction

    def _insert_waiting(self) -> None:
        if self._waiting:
            store_mails.accept_mails(
                self._connection, self.tenant.id, self._waiting,
                request_id=request_id_var.get() or "",
            )  # fmt: skip
            self._waiting = []


@contextmanager
def ingest_transaction(tenant: Tenant) -> Iterator[IngestTransaction]:
    """One transaction for everything a request creates; COMMIT when the block ends.

    If ``tx.replay`` is set on entry, the request's Idempotency-Key was answered
    before: the caller writes nothing and returns that answer. Otherwise the caller
    adds mails and calls ``tx.respond``; leaving the block commits, and only then
    may :func:`answer_after_commit` send the answer.
    """
    key, fingerprint = _idempotency_key()
    with db.pool().connection() as connection, ExitStack() as stack:
        tx = IngestTransaction(stack, connection, tenant, key)
        if key is not None:
            tx.replay = store_mails.claim_idempotency_key(tx.conn, tenant.id, key, fingerprint)
        yield tx  # an exception here leaves the ExitStack: ROLLBACK, nothing inserted
        if tx.replay is None and tx.answer is None:
            raise RuntimeError("an ingest transaction ended without an answer")
        tx.commit()
    # Here the COMMIT (or the single autocommit statement) succeeded.


def answer_after_commit(tx: IngestTransaction) -> Response:
    """The answer of a committed ingest transaction; counts the mails, wakes the relays."""
    if tx.replay is not None:
        log.info("idempotent replay", extra={"idempotency_key": tx.idempotency_key})
        return _response(tx.replay, replayed=True)
    assert tx.answer is not None  # ingest_transaction refuses to commit without one
    record_mails_accepted(tx.mails_added)
    if tx.mails_added:
        relay_wakeup().poke()
        log.info("mails accepted", extra={"tenant": tx.tenant.name, "count": tx.mails_added})
    return _response(tx.answer, replayed=False)


def _response(answer: Answer, *, replayed: bool) -> Response:
    response = jsonify(answer.body)
    response.status_code = answer.status_code
    if replayed:
        response.headers["Idempotent-Replayed"] = "true"
    return response


# ----- waking the relays after the COMMIT -----

COALESCE_SECONDS = 0.02
_WAKEUP = "mailroom.wakeup"


class RelayWakeup:
    """Wake the relays after mail is committed, without a NOTIFY in the ingest transaction.

    A NOTIFY inside the ingest transaction makes PostgreSQL take a database-wide
    lock at every COMMIT, serialising all concurrent ingest commits (measured with
    bench/ingest.py: 2.5-10x fewer commits per second at 8-32 clients). Instead,
    each API process sends at most one NOTIFY per ``COALESCE_SECONDS`` from a
    background thread, after the commits it announces. A poke that arrives while
    a NOTIFY is being sent causes another one, so no committed mail waits for the
    relay's polling fallback.
    """

    def __init__(self, pool: DictPool) -> None:
        self._pool = pool
        self._pending = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._owner_pid = 0

    def install(self, app: Flask) -> None:
        app.extensions[_WAKEUP] = self

    def poke(self) -> None:
        """Note that outbox rows were committed; a NOTIFY follows shortly."""
        self._pending.set()
        if self._thread is None or self._owner_pid != os.getpid():
            self._start()

    def _start(self) -> None:
        with self._lock:
            if self._thread is not None and self._owner_pid == os.getpid():
                return
            self._owner_pid = os.getpid()  # threads do not survive a fork
            self._thread = threading.Thread(target=self._run, name="relay-wakeup", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while True:
            self._pending.wait()
            self._pending.clear()
            try:
                with self._pool.connection() as conn:
                    conn.execute(f"NOTIFY {OUTBOX_CHANNEL}")
            except Exception as exc:  # the relays still poll; never let this thread die
                log.warning("could not wake the relays", extra={"error": str(exc)})
            threading.Event().wait(COALESCE_SECONDS)


def relay_wakeup() -> RelayWakeup:
    found: RelayWakeup = current_app.extensions[_WAKEUP]
    return found
