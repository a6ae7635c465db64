"""Recovery: how long mail waits after a worker dies mid-send, and after a database blip.

Run as ``.venv/bin/python bench/recovery.py [--kills 3] [--cuts 2] [--cut-seconds 6]``.
One pipeline (``ingest-api serve``, ``outbox-relay run``, ``mail-worker run``) on a fresh
copy of the base database, every process reaching PostgreSQL through a loopback TCP
forwarder this script can cut, delivering into an aiosmtpd server in this process.

1. SIGKILL of a worker's pool child in the middle of a send: the SMTP server holds the
   DATA of a chosen mail, the child that picked it up (named in the mail's
   ``status_detail``) is killed, the server is released; seconds from the kill to the
   mail's delivery (the lease rescue; the sending timeout is set to 600 s so that it
   cannot be what brings the mail back).
2. A database cut of ``--cut-seconds``: every connection through the forwarder dies and
   new ones are refused; then the forwarder listens again on the same port and 10 mails
   are posted at once (503 answers retried, as a client does); seconds from the restore
   to each delivery (the relay's visibility timeout is 600 s, so its redispatch cannot be
   what delivers them).
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import os
import signal
import socket
import statistics
import threading
import time
from collections import Counter
from collections.abc import Iterator
from email import message_from_bytes, policy
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import harness
import psycopg
from aiosmtpd.controller import Controller

# --- app internals this scenario uses (update here when the apps move things) ------------------
from shared.config import Settings

# -----------------------------------------------------------------------------------------------

HOLD_SUBJECT = "hold me"
DELIVERY_WAIT = 120.0  # seconds; far more than either recovery should take
MAILS_AFTER_CUT = 10
SETTINGS = {  # MAILROOM_<name> of every service
    "SENDING_TIMEOUT": "600",
    "RELAY_VISIBILITY_TIMEOUT": "600",
    "DB_CONNECT_TIMEOUT": "1",
    "RELAY_METRICS_PORT": "0",
    "CANARY_INTERVAL": "3600",
}


def mail(subject: str) -> dict[str, Any]:
    return {
        "from": "shop@example.com",
        "to": ["bob@example.net"],
        "subject": subject,
        "text": "Your password reset link: https://shop.example.com/reset/abc",
    }


class Forwarder:
    """A loopback TCP forwarder to PostgreSQL that can be cut (every connection closed, new
    ones refused) and restored on the same port: what a client sees when the database host
    goes away for a while. The idea of tests/tcp_proxy.py (bench does not import tests).

    A cut only shuts sockets down; each is closed by the last thread that uses it. Closing
    a socket another thread is about to read would free its descriptor for the next
    connection, and that thread would then read (and lose) the new connection's bytes: a
    client waiting for ever on a healthy database.
    """

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.port = harness.free_port()
        self._server: socket.socket | None = None
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()

    def start(self) -> Forwarder:
        server = socket.socket()
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        deadline = time.monotonic() + 5
        while True:
            try:
                server.bind(("127.0.0.1", self.port))
                break
            except OSError:  # the cut's listener may not be closed yet
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        server.listen(128)
        self._server = server
        threading.Thread(target=self._accept, args=(server,), daemon=True).start()
        return self

    def _accept(self, server: socket.socket) -> None:
        try:
            while True:
                try:
                    client, _ = server.accept()
                except OSError:
                    return  # cut
                try:
                    upstream = socket.create_connection(self.target, timeout=5)
                except OSError:
                    client.close()
                    continue
                upstream.settimeout(None)
                with self._lock:
                    if self._server is not server:  # cut while connecting
                        client.close()
                        upstream.close()
                        return
                    self._sockets += [client, upstream]
                users = [2]  # the two pipe threads; the last one closes both sockets
                for source, sink in ((client, upstream), (upstream, client)):
                    threading.Thread(
                        target=self._pipe, args=(source, sink, users), daemon=True
                    ).start()
        finally:
            server.close()

    def _pipe(self, source: socket.socket, sink: socket.socket, users: list[int]) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                sink.sendall(data)
        for sock in (source, sink):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        with self._lock:
            users[0] -= 1
            last = users[0] == 0
            if last:
                self._sockets = [s for s in self._sockets if s not in (source, sink)]
        if last:
            source.close()
            sink.close()

    def cut(self) -> None:
        """Refuse new connections and break the open ones (their threads close them)."""
        with self._lock:
            server, self._server = self._server, None
            sockets = list(self._sockets)
        if server is not None:
            with contextlib.suppress(OSError):
                server.shutdown(socket.SHUT_RDWR)  # wakes the accept(), which closes it
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def url(self, db_url: str) -> str:
        """*db_url* with its host and port replaced by the forwarder's."""
        parts = urlsplit(db_url)
        netloc = parts.netloc.rsplit("@", 1)
        host = f"127.0.0.1:{self.port}"
        return urlunsplit(parts._replace(netloc=f"{netloc[0]}@{host}" if len(netloc) > 1 else host))


class HoldingSink:
    """aiosmtpd in a thread of this process: stamps each mail's arrival (time.monotonic) by
    its Message-ID, and holds the DATA of a mail whose subject is HOLD_SUBJECT until
    released, then refuses it (its sender has been killed by then)."""

    def __init__(self) -> None:
        self.arrivals: dict[str, list[float]] = {}
        self.holding = threading.Event()
        self.release = threading.Event()
        self._lock = threading.Lock()
        self._armed = False
        self._controller = Controller(self, hostname="127.0.0.1", port=harness.free_port())
        self.url = f"smtp://127.0.0.1:{self._controller.port}"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        message = message_from_bytes(bytes(envelope.content), policy=policy.default)
        if message["Subject"] == HOLD_SUBJECT and self._armed:
            self._armed = False  # the next attempt of this mail is received
            self.holding.set()
            while not self.release.is_set():
                await asyncio.sleep(0.01)
            return "451 4.3.0 held; its sender was killed"
        mail_id = str(message["Message-ID"]).strip("<>").split("@")[0]
        with self._lock:
            self.arrivals.setdefault(mail_id, []).append(time.monotonic())
        return "250 OK"

    def hold_next(self) -> None:
        """Hold the next mail whose subject is HOLD_SUBJECT (once)."""
        self.holding.clear()
        self.release.clear()
        self._armed = True

    def first_arrival(self, mail_id: str) -> float | None:
        with self._lock:
            times = self.arrivals.get(mail_id)
            return times[0] if times else None

    def receipts(self, mail_id: str) -> int:
        with self._lock:
            return len(self.arrivals.get(mail_id, []))

    def __enter__(self) -> HoldingSink:
        self._controller.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.release.set()
        self._controller.stop()


class Api:
    def __init__(self, port: int, key: str) -> None:
        self.port, self.key = port, key
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)

    def post(self, body: dict[str, Any], retry_for: float = 30.0) -> tuple[str, int]:
        """POST /v1/mails; a 503 (database unreachable) is retried as a client would, for
        up to *retry_for* seconds: the mail id and how many 503s came first."""
        payload = json.dumps(body).encode()
        headers = harness.json_headers(self.key, payload)
        refused, deadline = 0, time.monotonic() + retry_for
        while True:
            outcome, answer = harness.post(self.conn, "/v1/mails", payload, headers)
            if outcome == "202":
                return str(json.loads(answer)["id"]), refused
            if time.monotonic() > deadline:
                raise RuntimeError(f"POST /v1/mails: {outcome} {answer[:300]!r}")
            refused += 1
            time.sleep(0.05)


def wait_for(condition: Any, timeout: float, what: str, check: Any) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        check()
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what}: not within {timeout:.0f} s")
        time.sleep(0.01)


@contextlib.contextmanager
def pipeline(
    bench: harness.Bench, forwarder: Forwarder, sink: HoldingSink, concurrency: int
) -> Iterator[tuple[Api, dict[str, int], dict[str, Path], str]]:
    """API, relay and worker on a fresh copy of the base database, through *forwarder*."""
    with bench.dbs.copy() as (_, db_url), contextlib.ExitStack() as stack:
        stack.callback(bench.keys.delete)
        port = harness.free_port()
        env = harness.service_env(
            forwarder.url(db_url), bench.keys, SMTP_URL=sink.url,
            MESSAGE_ID_DOMAIN=harness.MESSAGE_ID_DOMAIN, **SETTINGS,
        )  # fmt: skip
        argvs = {
            "api": harness.api_argv(port, 1),
            "relay": [harness.console_script("outbox-relay"), "run"],
            "worker": [
                harness.console_script("mail-worker"), "run", f"--concurrency={concurrency}"
            ],
        }  # fmt: skip
        logs = {name: bench.workdir / f"recovery-{name}.log" for name in argvs}
        pids = {
            n: stack.enter_context(harness.service(n, a, env, logs[n])) for n, a in argvs.items()
        }
        harness.wait_http_ready("api", pids["api"], port, logs["api"])
        try:
            yield Api(port, bench.api_key), pids, logs, db_url
        except Exception:
            for name, log in logs.items():
                print(f"--- the last lines of the {name} log:\n{harness.tail(log, 40)}")
            raise


def kill_mid_send(
    api: Api, sink: HoldingSink, db_url: str, worker_pid: int, check: Any
) -> dict[str, Any]:
    """Hold a mail in DATA, SIGKILL the pool child that picked it up, release the server;
    the seconds from the kill to the mail's delivery."""
    sink.hold_next()
    mail_id, _ = api.post(mail(HOLD_SUBJECT))
    wait_for(sink.holding.is_set, DELIVERY_WAIT, "the held mail reached DATA", check)
    with psycopg.connect(db_url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT status, status_detail->>'worker' FROM mails WHERE id = %s", (mail_id,)
        ).fetchone()
    assert row is not None and row[0] == "sending", row
    holder = str(row[1])
    pid = int(holder.rsplit(":", 1)[1])
    if pid == worker_pid:
        raise RuntimeError("the worker has no pool children (not prefork): nothing to kill")
    killed = time.monotonic()
    os.kill(pid, signal.SIGKILL)
    sink.release.set()
    wait_for(lambda: sink.first_arrival(mail_id) is not None, DELIVERY_WAIT, "redelivery", check)
    arrived = sink.first_arrival(mail_id)
    assert arrived is not None
    return {"mail_id": mail_id, "worker": holder, "seconds": round(arrived - killed, 2)}


def database_cut(
    api: Api, sink: HoldingSink, forwarder: Forwarder, seconds: float, check: Any
) -> dict[str, Any]:
    """Cut the database for *seconds*, restore it, post MAILS_AFTER_CUT mails at once; the
    seconds from the restore to each delivery."""
    forwarder.cut()
    time.sleep(seconds)
    forwarder.start()
    restored = time.monotonic()
    ids, refused = [], 0
    for i in range(MAILS_AFTER_CUT):
        mail_id, refusals = api.post(mail(f"after the cut {i}"))
        ids.append(mail_id)
        refused += refusals
    posted = time.monotonic() - restored
    wait_for(
        lambda: all(sink.first_arrival(i) is not None for i in ids),
        DELIVERY_WAIT, f"{MAILS_AFTER_CUT} mails after the cut", check,
    )  # fmt: skip
    delays = sorted(
        arrival - restored for i in ids if (arrival := sink.first_arrival(i)) is not None
    )
    return {
        "ids": ids,
        "posted_within_s": round(posted, 2),
        "answers_503": refused,
        "p50_s": round(harness.percentile(delays, 0.5), 2),
        "max_s": round(delays[-1], 2),
    }


def main() -> dict[str, Any]:
    parser = harness.arguments(__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=3, help="SIGKILL runs (measure 1)")
    parser.add_argument("--cuts", type=int, default=2, help="database cuts (measure 2)")
    parser.add_argument("--cut-seconds", type=float, default=6.0)
    parser.add_argument("--concurrency", type=int, default=2, help="mail-worker --concurrency")
    args = parser.parse_args()
    defaults = Settings()
    lease = float(os.environ.get("MAILROOM_WORKER_LEASE_SECONDS") or defaults.worker_lease_seconds)
    print(
        f"settings: worker lease {lease:g} s (renewed and checked every {lease / 4:g} s), "
        f"sending timeout {SETTINGS['SENDING_TIMEOUT']} s, relay visibility timeout "
        f"{SETTINGS['RELAY_VISIBILITY_TIMEOUT']} s, relay poll {defaults.relay_poll_interval:g} s, "
        f"mail-worker run --concurrency={args.concurrency}; {args.kills} kills, {args.cuts} "
        f"cuts of {args.cut_seconds:g} s",
        flush=True,
    )
    figures: dict[str, Any] = {
        "settings": {
            "worker_lease_seconds": lease,
            **SETTINGS,
            "concurrency": args.concurrency,
            "cut_seconds": args.cut_seconds,
        }
    }
    with harness.bench(args) as bench, HoldingSink() as sink:
        admin = urlsplit(bench.base_url)
        forwarder = Forwarder((admin.hostname or "127.0.0.1", admin.port or 5432)).start()
        try:
            with pipeline(bench, forwarder, sink, args.concurrency) as (api, pids, logs, db_url):

                def check() -> None:
                    harness.check_alive(pids, logs)

                warm, _ = api.post(mail("warm-up"))
                wait_for(
                    lambda: sink.first_arrival(warm) is not None, DELIVERY_WAIT, "warm-up", check
                )
                kills = []
                for run in range(args.kills):
                    result = kill_mid_send(api, sink, db_url, pids["worker"], check)
                    print(
                        f"(1) kill {run + 1}: SIGKILL of {result['worker']} in DATA -> delivered "
                        f"{result['seconds']:.2f} s later",
                        flush=True,
                    )
                    kills.append(result)
                cuts = []
                for run in range(args.cuts):
                    result = database_cut(api, sink, forwarder, args.cut_seconds, check)
                    print(
                        f"(2) cut {run + 1}: database cut {args.cut_seconds:g} s; "
                        f"{MAILS_AFTER_CUT} mails posted within {result['posted_within_s']:.2f} s "
                        f"of the restore ({result['answers_503']} answers 503 first) -> "
                        f"delivered p50 {result['p50_s']:.2f} s, max {result['max_s']:.2f} s "
                        "after the restore",
                        flush=True,
                    )
                    cuts.append(result)
                time.sleep(2)  # a late duplicate would show up here
                mail_ids = [k["mail_id"] for k in kills] + [i for c in cuts for i in c["ids"]]
                once = Counter(sink.receipts(i) for i in mail_ids)
        finally:
            forwarder.cut()
    kill_seconds = [k["seconds"] for k in kills]
    figures["kill_to_delivery_s"] = {
        "runs": kill_seconds,
        "median": statistics.median(kill_seconds) if kill_seconds else None,
    }
    figures["restore_to_delivery_s"] = {
        "p50": [c["p50_s"] for c in cuts],
        "max": [c["max_s"] for c in cuts],
        "answers_503": [c["answers_503"] for c in cuts],
    }
    figures["receipts_per_mail"] = dict(once)
    print(
        f"(1) SIGKILL mid-send -> delivery: median "
        f"{harness.fmt(figures['kill_to_delivery_s']['median'], '.2f')} s "
        f"(runs {kill_seconds})\n"
        f"(2) database cut {args.cut_seconds:g} s -> delivery of {MAILS_AFTER_CUT} mails posted "
        f"right after: p50 {[c['p50_s'] for c in cuts]} s, max {[c['max_s'] for c in cuts]} s\n"
        f"receipts per mail: {dict(once)} (1: exactly once)",
        flush=True,
    )
    return figures


if __name__ == "__main__":
    harness.run(main)
