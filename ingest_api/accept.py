"""The ingest promise, in one place: 202 is returned only after this COMMIT.

The mail, its outbox row and its ``accepted`` event are written by one SQL
statement inside one explicit transaction. If any part fails, or the database
cannot be reached, the exception propagates, nothing is written, and the API
answers 503: a client never holds an id for a mail we do not have.
"""

from __future__ import annotations

import uuid
from typing import Any

from psycopg.types.json import Jsonb

from shared.db import DictPool
from shared.queries import QUERIES
from shared.queues import STREAM_QUEUES


def accept_mail(
    pool: DictPool, *, tenant_id: uuid.UUID, request: dict[str, Any], request_id: str
) -> uuid.UUID:
    """Commit one mail and its outbox row; return its id once durable."""
    mail_id = uuid.uuid4()
    stream = "transactional"
    # Pipeline mode sends BEGIN, the statement and COMMIT in one round trip;
    # leaving the block waits for the COMMIT's result and raises if it failed.
    with pool.connection() as conn, conn.pipeline(), conn.transaction():
        conn.execute(
            QUERIES["accept_mail"],
            {
                "mail_id": mail_id,
                "tenant_id": tenant_id,
                "stream": stream,
                "request": Jsonb(request),
                "queue": STREAM_QUEUES[stream],
                "event_detail": Jsonb({"request_id": request_id}),
            },
        )
    # Leaving the ``transaction()`` block issued COMMIT and it succeeded.
    return mail_id
