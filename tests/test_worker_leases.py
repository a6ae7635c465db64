"""Worker leases (issue 12): a worker process renews a lease in PostgreSQL; the relay
puts the mails a worker whose lease lapsed left in 'sending' back into the outbox at
once, instead of after the sending timeout.

First the SQL and the store on a real database, then the worker's heartbeat and the
relay's grace after a database outage, then the whole thing with real processes: a
pool child SIGKILLed in the middle of an SMTP transaction.
"""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import replace
from email import message_from_bytes, policy
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest
from aiosmtpd.controller import Controller

from mail_worker import lease as worker_lease
from outbox_relay.relay import Relay
from shared.config import Settings
from shared.db import DictPool, create_pool
from shared.queries import QUERIES
from shared.states import MailStatus
from shared.store import workers
from tests.conftest import TenantKey, new_key
from tests.factories import insert_mail, put_in_state, status_of
from tests.processes import Processes, http, wait_until
from tests.services import free_port
from tests.tcp_proxy import TcpProxy

LOST = "lost-host:4242"
ALIVE = "alive-host:4343"
MAX_ATTEMPTS = 6


def mail_in_hand_of(
    db: psycopg.Connection, tenant: TenantKey, worker: str, attempts: int = 1
) -> uuid.UUID:
    """A mail in 'sending' as *worker*'s pickup leaves it (status_detail names the worker)."""
    mail_id = insert_mail(db, tenant.tenant_id)
    put_in_state(db, mail_id, "sending")
    db.execute(
        "UPDATE mails SET attempts = %s,"
        " status_detail = jsonb_build_object('attempt', %s::int, 'worker', %s::text)"
        " WHERE id = %s",
        (attempts, attempts, worker, mail_id),
    )
    return mail_id


def lease_row(db: psycopg.Connection, worker: str) -> tuple[Any, ...] | None:
    return db.execute(
        "SELECT renewed_at, expires_at FROM worker_leases WHERE worker = %s", (worker,)
    ).fetchone()


def outbox_row(db: psycopg.Connection, mail_id: uuid.UUID) -> tuple[Any, ...] | None:
    return db.execute(
        "SELECT queue, available_at <= now(), dispatch_count FROM outbox WHERE mail_id = %s",
        (mail_id,),
    ).fetchone()


def last_event(db: psycopg.Connection, mail_id: uuid.UUID) -> tuple[str, dict[str, Any]]:
    row = db.execute(
        "SELECT kind, detail FROM mail_events WHERE mail_id = %s ORDER BY id DESC LIMIT 1",
        (mail_id,),
    ).fetchone()
    assert row is not None
    return row[0], row[1]


def rescue(db: psycopg.Connection) -> workers.Rescue:
    return workers.rescue_mails_of_lapsed_workers(db, max_attempts=MAX_ATTEMPTS)


# ----- the rescue, on the database -----


def test_a_mail_whose_workers_lease_lapsed_is_due_again_at_once_with_the_reason(
    db: psycopg.Connection, tenant: TenantKey
) -> None:
    mail_id = mail_in_hand_of(db, tenant, LOST, attempts=2)
    workers.renew_lease(db, LOST, -1.0)  # lapsed a second ago

    found = rescue(db)

    assert [(m.mail_id, m.status, m.worker) for m in found.mails] == [
        (mail_id, MailStatus.RETRYING, LOST)
    ]
    assert status_of(db, mail_id) == "retrying"
    assert outbox_row(db, mail_id) == ("transactional", True, 0), "due now, not after a backoff"
    row = db.execute(
        "SELECT last_error, status_detail, attempts FROM mails WHERE id = %s", (mail_id,)
    ).fetchone()
    assert row is not None
    assert row[0] == f"worker lease lapsed: {LOST} was lost while sending"
    detail = {"reason": "worker lease lapsed", "worker": LOST, "attempt": 2}
    assert row[1] == detail and row[2] == 2, "the lost pickup still counts as an attempt"
    assert last_event(db, mail_id) == ("retrying", detail)
    assert found.forgotten_leases == [LOST], "the lapsed lease holds no mail any more"
    assert lease_row(db, LOST) is None
    assert rescue(db) == workers.Rescue([], []), "nothing twice"


def test_a_mail_whose_worker_holds_a_live_lease_is_left_alone(
    db: psycopg.Connection, tenant: TenantKey
) -> None:
    mail_id = mail_in_hand_of(db, tenant, ALIVE)
    workers.renew_lease(db, ALIVE, 60.0)

    assert rescue(db) == workers.Rescue([], [])
    assert status_of(db, mail_id) == "sending"
    assert outbox_row(db, mail_id) is None
    assert lease_row(db, ALIVE) is not None


def test_a_mail_whose_worker_has_no_lease_row_is_left_to_the_sending_timeout(
    db: psycopg.Connection, tenant: TenantKey
) -> None:
    """A worker of an older version (no leases) during a rolling deploy is not lost."""
    mail_id = mail_in_hand_of(db, tenant, "old-version-host:99")
    workers.renew_lease(db, LOST, -1.0)  # some other worker's lease lapsed

    assert rescue(db).mails == []
    assert status_of(db, mail_id) == "sending"
    assert outbox_row(db, mail_id) is None


def test_at_the_attempt_limit_a_rescued_mail_is_dead(
    db: psycopg.Connection, tenant: TenantKey
) -> None:
    mail_id = mail_in_hand_of(db, tenant, LOST, attempts=MAX_ATTEMPTS)
    workers.renew_lease(db, LOST, -1.0)

    assert [(m.mail_id, m.status) for m in rescue(db).mails] == [(mail_id, MailStatus.DEAD)]
    assert status_of(db, mail_id) == "dead"
    assert outbox_row(db, mail_id) is None
    row = db.execute("SELECT last_error FROM mails WHERE id = %s", (mail_id,)).fetchone()
    assert row == (f"gave up after {MAX_ATTEMPTS} attempts: worker lease lapsed ({LOST} was lost"
                   " while sending)",)  # fmt: skip
    kind, detail = last_event(db, mail_id)
    assert (kind, detail["reason"]) == ("dead", "worker lease lapsed")


def test_only_the_lapsed_workers_mails_move_and_idle_lapsed_leases_are_removed(
    db: psycopg.Connection, tenant: TenantKey
) -> None:
    lost = [mail_in_hand_of(db, tenant, LOST) for _ in range(3)]
    kept = mail_in_hand_of(db, tenant, ALIVE)
    workers.renew_lease(db, LOST, -1.0)
    workers.renew_lease(db, ALIVE, 60.0)
    workers.renew_lease(db, "idle-host:1", -5.0)  # died holding nothing

    found = rescue(db)

    assert sorted(m.mail_id for m in found.mails) == sorted(lost)
    assert {status_of(db, m) for m in lost} == {"retrying"}
    assert status_of(db, kept) == "sending"
    assert sorted(found.forgotten_leases) == sorted([LOST, "idle-host:1"])
    assert lease_row(db, ALIVE) is not None


def test_renewing_moves_the_expiry_and_release_deletes_the_row(db: psycopg.Connection) -> None:
    workers.renew_lease(db, ALIVE, -1.0)
    workers.renew_lease(db, ALIVE, 30.0)
    row = db.execute(
        "SELECT expires_at > now() + interval '20 seconds' FROM worker_leases WHERE worker = %s",
        (ALIVE,),
    ).fetchone()
    assert row == (True,)
    workers.release_lease(db, ALIVE)
    assert lease_row(db, ALIVE) is None


def test_the_rescue_uses_the_partial_index_on_mails_in_sending(
    db: psycopg.Connection, tenant: TenantKey
) -> None:
    """Many stored mails, few in 'sending': the rescue must not read every mail."""
    db.execute(
        "INSERT INTO mails (id, tenant_id, request, status)"
        " SELECT gen_random_uuid(), %s, '{}', 'sent' FROM generate_series(1, 20000)",
        (tenant.tenant_id,),
    )
    mail_in_hand_of(db, tenant, LOST)
    workers.renew_lease(db, LOST, -1.0)
    db.execute("ANALYZE mails")
    db.execute("ANALYZE worker_leases")
    sql = "EXPLAIN " + QUERIES["rescue_mails_of_lapsed_workers"]
    plan = "\n".join(row[0] for row in db.execute(sql, {"max_attempts": 6}).fetchall())
    assert "mails_sending_worker_idx" in plan, plan
    assert "Seq Scan on mails" not in plan, plan


# ----- the worker's heartbeat -----


@pytest.fixture
def fresh_lease_state(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """This test process's lease starts and ends empty (the module keeps one per process)."""
    monkeypatch.setattr(worker_lease, "_lease", None)
    yield
    worker_lease.release_lease()


def test_the_first_call_takes_the_lease_before_returning_then_it_is_renewed_and_released(
    db: psycopg.Connection, pool: DictPool, fresh_lease_state: None
) -> None:
    taken = worker_lease.ensure_lease(pool, ALIVE, 0.4)  # renewed every 0.1 s
    first = lease_row(db, ALIVE)
    assert first is not None, "written synchronously: before the process's first pickup"
    assert worker_lease.ensure_lease(pool, ALIVE, 0.4) is taken, "one lease per process"

    wait_until(lambda: (row := lease_row(db, ALIVE)) is not None and row[0] > first[0], 30)

    worker_lease.release_lease()
    assert lease_row(db, ALIVE) is None
    time.sleep(0.5)
    assert lease_row(db, ALIVE) is None, "the heartbeat stopped with the release"


def test_the_heartbeat_survives_a_database_outage_and_renews_after_it(
    db: psycopg.Connection, settings: Settings, fresh_lease_state: None
) -> None:
    target = urlsplit(settings.database_url)
    if not (target.hostname or "").startswith("127."):
        pytest.skip("needs the database on a loopback TCP address")
    proxy = TcpProxy("127.0.0.1", target.port or 5432).start()
    netloc = target.netloc.replace(f"{target.hostname}:{target.port}", f"127.0.0.1:{proxy.port}")
    proxied = replace(settings, database_url=urlunsplit(target._replace(netloc=netloc)))
    pool = create_pool(proxied, name="lease-test", max_size=1)
    try:
        pool.wait(timeout=10)
        lease = worker_lease.ensure_lease(pool, ALIVE, 1.0)
        assert lease_row(db, ALIVE) is not None
        assert lease.held()
        proxy.stop()
        time.sleep(2.0)  # several renewals fail: the lease lapses
        lapsed = db.execute(
            "SELECT expires_at < now() FROM worker_leases WHERE worker = %s", (ALIVE,)
        ).fetchone()
        assert lapsed == (True,)
        assert not lease.held(), "the process knows it may have lost its mails: it sends none"
        proxy = TcpProxy(proxy.target[0], proxy.target[1], listen_port=proxy.port).start()
        wait_until(
            lambda: (
                db.execute(
                    "SELECT expires_at > now() FROM worker_leases WHERE worker = %s", (ALIVE,)
                ).fetchone()
                == (True,)
            ),
            30,
        )
        wait_until(lease.held, 10)
    finally:
        worker_lease.release_lease()
        proxy.stop()
        pool.close()


def test_a_forked_child_takes_a_lease_of_its_own(
    db: psycopg.Connection, settings: Settings, pool: DictPool, fresh_lease_state: None
) -> None:
    """Prefork children are forked from the Celery parent: an inherited lease is not theirs."""
    parent = worker_lease.ensure_lease(pool, "host:parent", 60.0)
    child_pid = os.fork()
    if child_pid == 0:  # the child: never returns into pytest
        code = 1
        try:
            child_pool = create_pool(settings, name="lease-child", max_size=1)
            child_pool.wait(timeout=10)
            mine = worker_lease.ensure_lease(child_pool, "host:child", 60.0)
            code = 0 if mine is not parent and mine.pid == os.getpid() else 2
            mine.release()
            child_pool.close()
        finally:
            os._exit(code)
    _, status = os.waitpid(child_pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert lease_row(db, "host:parent") is not None, "the parent's lease is untouched"
    assert worker_lease.ensure_lease(pool, "host:parent", 60.0) is parent


# ----- the relay -----


@pytest.fixture
def relay(settings: Settings) -> Iterator[Relay]:
    relay = Relay(replace(settings, worker_lease_seconds=1.0))
    yield relay
    relay._close()


def test_the_relay_waits_one_lease_after_it_lost_the_database_before_rescuing(
    db: psycopg.Connection, tenant: TenantKey, relay: Relay
) -> None:
    """After an outage every lease has lapsed although live workers are about to renew."""
    first = mail_in_hand_of(db, tenant, LOST)
    workers.renew_lease(db, LOST, -1.0)
    relay._rescue_mails_of_lapsed_workers()
    assert status_of(db, first) == "sending", "a relay just started waits one lease"
    time.sleep(1.2)
    relay._rescue_mails_of_lapsed_workers()
    assert status_of(db, first) == "retrying"

    # The relay's connection breaks (the database restarted, say): its round fails.
    second = mail_in_hand_of(db, tenant, LOST)
    workers.renew_lease(db, LOST, -1.0)
    backend = relay._connection().info.backend_pid
    db.execute("SELECT pg_terminate_backend(%s)", (backend,))
    assert relay._one_round() == 0
    relay._run_periodic()  # reconnects: the grace starts now
    relay._rescue_mails_of_lapsed_workers()
    assert status_of(db, second) == "sending", "within one lease of the outage: no rescue"
    time.sleep(1.2)
    relay._rescue_mails_of_lapsed_workers()
    assert status_of(db, second) == "retrying"


# ----- with real processes: SIGKILL in the middle of a send -----


class HoldingSmtpServer:
    """An SMTP server that holds the DATA of the first mail with the subject "hold me"
    until released, then refuses it (its sender is dead by then); every other mail is
    received. ``received`` holds the bytes of each mail it accepted with a 250."""

    def __init__(self) -> None:
        self.received: list[bytes] = []
        self.holding = threading.Event()
        self.release = threading.Event()
        self._held = False
        self._lock = threading.Lock()
        self._controller = Controller(self, hostname="127.0.0.1", port=free_port())

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        data = bytes(envelope.content)
        subject = message_from_bytes(data, policy=policy.default)["Subject"]
        if subject == "hold me" and not self._held:
            self._held = True
            self.holding.set()
            while not self.release.is_set():
                await asyncio.sleep(0.05)
            return "451 4.3.0 held by the test; its sender was killed"
        with self._lock:
            self.received.append(data)
        return "250 OK"

    def message_ids(self) -> list[str]:
        with self._lock:
            return [
                str(message_from_bytes(data, policy=policy.default)["Message-ID"])
                for data in self.received
            ]

    @property
    def url(self) -> str:
        return f"smtp://127.0.0.1:{self._controller.port}"

    def __enter__(self) -> HoldingSmtpServer:
        self._controller.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.release.set()
        self._controller.stop()


HOLD_ME = {
    "from": "shop@example.com",
    "to": ["customer@example.org"],
    "subject": "hold me",
    "text": "Your password reset link.",
}


@pytest.mark.e2e
def test_a_pool_child_killed_in_the_middle_of_a_send_does_not_hold_its_mail_for_minutes(
    procs: Processes, db: psycopg.Connection
) -> None:
    procs.env["MAILROOM_SENDING_TIMEOUT"] = "600"  # the timeout cannot be what saves it
    with HoldingSmtpServer() as smtp:
        procs.env["MAILROOM_SMTP_URL"] = smtp.url
        key = new_key(procs)
        auth = {"Authorization": f"Bearer {key}"}
        port = free_port()
        procs.api(port)
        procs.relay()
        worker = procs.worker(concurrency=2)

        status, body = http("POST", f"http://127.0.0.1:{port}/v1/mails", HOLD_ME, auth)
        assert status == 202, body
        mail_id = uuid.UUID(body["id"])
        message_id = f"<{mail_id}@mail.test>"
        assert smtp.holding.wait(60), "the worker reached DATA"

        row = db.execute(
            "SELECT status, status_detail->>'worker' FROM mails WHERE id = %s", (mail_id,)
        ).fetchone()
        assert row is not None and row[0] == "sending"
        holder = row[1]
        assert lease_row(db, holder) is not None, "the pool child took its lease before the pickup"
        pid = int(holder.rsplit(":", 1)[1])
        killed_at = time.monotonic()
        os.kill(pid, signal.SIGKILL)
        if pid == worker.process.pid:  # a pool without children: the whole worker died
            worker.process.wait(10)
            procs.worker(concurrency=2)
        smtp.release.set()

        wait_until(lambda: status_of(db, mail_id) == "sent", 120)
        recovered = time.monotonic() - killed_at
        time.sleep(2)  # a late duplicate would show up here
        assert smtp.message_ids().count(message_id) == 1, "delivered exactly once"

        events = db.execute(
            "SELECT kind, detail FROM mail_events WHERE mail_id = %s ORDER BY id", (mail_id,)
        ).fetchall()
        kinds = [kind for kind, _ in events]
        assert kinds.count("sending") == 2 and kinds[-1] == "sent", kinds
        rescues = [d for kind, d in events if kind == "retrying"]
        assert rescues == [{"reason": "worker lease lapsed", "worker": holder, "attempt": 1}]
        print(f"SIGKILL of {holder} in DATA: sent {recovered:.1f} s after the kill")
