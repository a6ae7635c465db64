"""The API's way to its database: the pool the app factory made, for this request.

Views open what they need here and hand the connection to the store
(:mod:`shared.store`), so where a transaction begins and ends stays in the view.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from flask import Flask, current_app

from shared.db import DictPool
from shared.store import Conn

_POOL = "mailroom.pool"


def install(app: Flask, pool: DictPool) -> None:
    app.extensions[_POOL] = pool


def pool() -> DictPool:
    """The app's pool of autocommit connections."""
    found: DictPool = current_app.extensions[_POOL]
    return found


@contextmanager
def connection() -> Iterator[Conn]:
    """A pool connection in autocommit: each statement is its own transaction."""
    with pool().connection() as conn:
        yield conn


@contextmanager
def transaction() -> Iterator[Conn]:
    """BEGIN on a pool connection; COMMIT when the block ends, ROLLBACK if it raises
    (a refusal inside the block too)."""
    with pool().connection() as conn, conn.transaction():
        yield conn
