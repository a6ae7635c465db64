"""The request side of ingest, shared by every endpoint that creates mail:
Idempotency-Key handling, the one transaction, waking the relays, logging."""

from __future__ import annotations

import logging
from collections.abc import Callable

from flask import Response, current_app

from ingest_api.accept import IngestTransaction, ingest_transaction
from ingest_api.auth import Tenant
from ingest_api.idempotency import answer_response, idempotency_key
from ingest_api.metrics import record_mails_accepted
from shared.jsonlog import request_id_var

log = logging.getLogger(__name__)


def handle_ingest(tenant: Tenant, create: Callable[[IngestTransaction], None]) -> Response:
    """Run *create* in the ingest transaction and answer only after its COMMIT.

    *create* adds mails (and anything else) and calls ``tx.respond``; it is not
    called at all when the Idempotency-Key was answered before.
    """
    key, fingerprint = idempotency_key()
    with ingest_transaction(
        current_app.extensions["mailroom.pool"],
        tenant_id=tenant.id,
        request_id=request_id_var.get() or "",
        idempotency_key=key,
        fingerprint=fingerprint,
    ) as tx:
        if tx.replay is None:
            create(tx)
    if tx.replay is not None:
        log.info("idempotent replay", extra={"idempotency_key": key})
        return answer_response(tx.replay, replayed=True)
    assert tx.answer is not None  # ingest_transaction refuses to commit without one
    record_mails_accepted(tx.mails_added)
    if tx.mails_added:
        current_app.extensions["mailroom.wakeup"].poke()
        log.info("mails accepted", extra={"tenant": tenant.name, "count": tx.mails_added})
    return answer_response(tx.answer, replayed=False)
