"""Mails selected the way an operator names them: statuses, tenant, stream, window, tag."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg

from shared.queries import QUERIES
from shared.states import MailStatus


class UnknownTenant(LookupError):
    pass


@dataclass(frozen=True)
class MailFilter:
    statuses: tuple[MailStatus, ...] | None = None
    tenant_id: uuid.UUID | None = None
    stream: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    tag: str | None = None

    def params(self) -> dict[str, Any]:
        """The named parameters every filtered admin query takes."""
        return {
            "statuses": [status.value for status in self.statuses] if self.statuses else None,
            "tenant_id": self.tenant_id,
            "stream": self.stream,
            "since": self.since,
            "until": self.until,
            "tag": self.tag,
        }

    def describe(self) -> dict[str, Any]:
        """The filter as printed and recorded with an admin action."""
        return {key: value for key, value in self.params().items() if value is not None}


def find_tenant(conn: psycopg.Connection, name_or_id: str) -> tuple[uuid.UUID, str]:
    """A tenant named by its name or its id."""
    row = conn.execute(QUERIES["find_tenant_by_name_or_id"], {"tenant": name_or_id}).fetchone()
    if row is None:
        raise UnknownTenant(f"no tenant named {name_or_id!r}")
    return row[0], row[1]
