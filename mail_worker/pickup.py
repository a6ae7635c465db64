"""The pickup: the compare-and-set that lets exactly one delivery of a task send."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from shared.db import DictPool
from shared.queries import QUERIES
from shared.states import MailStatus, statuses_that_may_become


@dataclass(frozen=True)
class PickedMail:
    id: uuid.UUID
    tenant_id: uuid.UUID
    stream: str
    request: dict[str, Any]
    attempts: int
    expires_at: datetime | None


def pick_up(pool: DictPool, mail_id: uuid.UUID, worker: str) -> PickedMail | None:
    """Move the mail to ``sending`` and delete its outbox row.

    None if another delivery won, or if the mail is past ``expires_at`` (it then
    becomes ``expired``: never sent late).
    """
    # Pipeline mode: BEGIN, the lock and the compare-and-set travel in one round trip.
    with pool.connection() as conn, conn.pipeline(), conn.transaction():
        conn.execute(QUERIES["lock_outbox_row"], {"mail_id": mail_id})
        row = conn.execute(
            QUERIES["begin_sending"],
            {
                "mail_id": mail_id,
                "from_statuses": statuses_that_may_become(MailStatus.SENDING),
                "worker": worker,
            },
        ).fetchone()
        if row is None:
            conn.execute(
                QUERIES["expire_mails"],
                {
                    "mail_ids": [mail_id],
                    "from_statuses": statuses_that_may_become(MailStatus.EXPIRED),
                    "by": "worker",
                },
            )
    return None if row is None else PickedMail(**row)
