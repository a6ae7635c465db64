"""The small connector: psycopg 3 connections and pools, configured one way."""

from __future__ import annotations

import psycopg
from psycopg.rows import DictRow, dict_row
from psycopg_pool import ConnectionPool

from shared.config import Settings

# Pools hand out autocommit connections whose rows are dicts.
DictPool = ConnectionPool[psycopg.Connection[DictRow]]


def connect(url: str, *, autocommit: bool = True, timeout: float = 3.0) -> psycopg.Connection:
    """One direct connection; autocommit, so every transaction is explicit."""
    return psycopg.connect(url, autocommit=autocommit, connect_timeout=max(1, round(timeout)))


def create_pool(settings: Settings, *, name: str, max_size: int | None = None) -> DictPool:
    """A pool of autocommit connections with dict rows.

    Opened without waiting: a process that starts while the database is down
    still starts, answers its health check, and connects once the database is back.
    """
    pool: DictPool = ConnectionPool(
        settings.database_url,
        connection_class=psycopg.Connection[DictRow],
        name=name,
        min_size=1,
        max_size=max_size or settings.db_pool_size,
        kwargs={
            "autocommit": True,
            "row_factory": dict_row,
            "connect_timeout": max(1, round(settings.db_connect_timeout)),
        },
        timeout=settings.db_connect_timeout,
        reconnect_timeout=0,  # keep trying for ever: the database may come back
        open=False,
    )
    pool.open(wait=False)
    return pool
