"""The store: the only code that runs mailroom's SQL (``shared.queries``).

One module per aggregate; each function takes the connection (or the open
transaction's connection) it works in, so the caller's ``with conn.transaction():``
shows where a transaction begins and ends. Functions run one named SQL block (or a
few in a fixed order), return dataclasses or plain values (rows read by name via
psycopg's ``class_row``, never by position), and raise the domain errors below,
never HTTP ones: translating them into problem+json is the API's job.

- :mod:`shared.store.mails`: mails, their events and the ingest statement
  (with its Idempotency-Key);
- :mod:`shared.store.outbox`: the relay's claim and publish record, canaries, pauses
  and the operator's selection of mails (replay, discard, purge, reports);
- :mod:`shared.store.tenants`: tenants, sender domains and API keys;
- :mod:`shared.store.campaigns`: campaigns, CDP workflows and CDP events;
- :mod:`shared.store.suppressions`: the suppression list;
- :mod:`shared.store.webhooks`: status webhook registrations and deliveries;
- :mod:`shared.store.workers`: the worker processes' leases and the rescue of the
  mails of a worker whose lease lapsed.

Modelled on procrastinate's ``manager.py`` and pgqueuer's ``Queries``.
"""

from __future__ import annotations

from typing import Any, TypeAlias

import psycopg

# Store functions accept any psycopg connection: the pools hand out dict-row
# connections, the admin commands plain ones; the store sets its own row factory.
Conn: TypeAlias = psycopg.Connection[Any]


class StoreError(Exception):
    """A domain error: the request cannot be done as asked (never a database outage)."""


class NotFound(StoreError):
    """No such row (or not visible to this tenant)."""


class Conflict(StoreError):
    """The row exists but is in a state that does not allow the change."""
