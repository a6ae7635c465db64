"""After a database blip, mail flows again in seconds (issue 12).

API, relay and worker reach PostgreSQL through a TCP proxy the test owns. With every
pool warm, the proxy is cut for about 6 s (every open connection dies) and restored
on the same port; 10 mails posted right after must all arrive, each once, bounded by
the blip and not by the relay's redispatch (its visibility timeout is set to 600 s).
And the relay hang bench/recovery.py found after such a cut, reproduced in-process.
"""

from __future__ import annotations

import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import replace
from types import FrameType
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest

from outbox_relay.relay import Relay
from shared.config import Settings
from shared.devstack.smtp_sink import SmtpSink
from shared.queues import OUTBOX_CHANNEL
from tests.conftest import new_key
from tests.processes import Processes, http, wait_until
from tests.services import free_port
from tests.tcp_proxy import TcpProxy

CUT_SECONDS = 6.0
MAILS_AFTER = 10
DELIVERY_WAIT = 90.0


def mail(i: int) -> dict[str, object]:
    return {
        "from": "shop@example.com",
        "to": [f"customer{i}@example.org"],
        "subject": f"Order {i}",
        "text": f"Your order {i} has shipped.",
    }


def receipts(sink: SmtpSink) -> Counter[str]:
    """Mail ids received, by Message-ID."""
    return Counter(str(m.parsed()["Message-ID"]).strip("<>").split("@")[0] for m in sink.received)


def test_the_relays_listener_never_waits_on_its_own_lock(
    settings: Settings, db: psycopg.Connection
) -> None:
    """Found by bench/recovery.py: after a database cut the relay hung for good in
    ``notifies()``, with mail due. A notification ended the previous wait with the
    notifies() generator stopped at its first yield, holding the listener connection's
    lock, and a frame that outlived the call (materialised by a log line during the cut)
    kept that generator alive: the next wait blocked on the lock, and no garbage collection
    came to free it. Here the profiler keeps the frame alive the same way."""
    relay = Relay(replace(settings, relay_poll_interval=0.5))
    kept: list[FrameType] = []

    def keep_frames(frame: FrameType, event: str, _: Any) -> None:
        if event == "return" and frame.f_code is Relay._wait_for_work.__code__:
            kept.append(frame)

    try:
        assert relay._listen() is not None
        db.execute(f"NOTIFY {OUTBOX_CHANNEL}")
        sys.setprofile(keep_frames)
        try:
            relay._wait_for_work()  # ends at the notification
        finally:
            sys.setprofile(None)
        assert kept, "the wait's frame outlives the call"
        returned = threading.Event()
        waiter = threading.Thread(
            target=lambda: (relay._wait_for_work(), returned.set()), daemon=True
        )
        waiter.start()
        assert returned.wait(30), "the next wait blocked on the listener's lock"
    finally:
        kept.clear()
        relay._close()


@pytest.fixture
def proxy(settings: Settings) -> Iterator[TcpProxy]:
    target = urlsplit(settings.database_url)
    if not (target.hostname or "").startswith("127."):
        pytest.skip("needs the database on a loopback TCP address")
    proxy = TcpProxy("127.0.0.1", target.port or 5432).start()
    yield proxy
    proxy.stop()


@pytest.mark.e2e
def test_mail_posted_right_after_a_database_blip_arrives_in_seconds_and_once(
    procs: Processes, settings: Settings, smtp_sink: SmtpSink, proxy: TcpProxy
) -> None:
    target = urlsplit(settings.database_url)
    netloc = target.netloc.replace(f"{target.hostname}:{target.port}", f"127.0.0.1:{proxy.port}")
    procs.env["MAILROOM_DATABASE_URL"] = urlunsplit(target._replace(netloc=netloc))
    procs.env["MAILROOM_DB_CONNECT_TIMEOUT"] = "1"
    # The relay's redispatch cannot be what delivers a mail whose pickup failed.
    procs.env["MAILROOM_RELAY_VISIBILITY_TIMEOUT"] = "600"
    key = new_key(procs)
    auth = {"Authorization": f"Bearer {key}"}
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    procs.api(port)
    procs.relay()
    procs.worker(concurrency=2)

    status, body = http("POST", f"{url}/v1/mails", mail(0), auth)
    assert status == 202, body
    smtp_sink.wait_for(1, timeout=60)
    assert receipts(smtp_sink) == Counter({body["id"]: 1}), "every pool is warm"

    proxy.stop()
    time.sleep(CUT_SECONDS)
    restored = TcpProxy(proxy.target[0], proxy.target[1], listen_port=proxy.port).start()
    restored_at = time.monotonic()
    try:
        ids: list[str] = []
        answers: Counter[int] = Counter()
        for i in range(1, MAILS_AFTER + 1):
            # A client retries a 503 (the API says the database is unreachable); count them.
            deadline = time.monotonic() + 30
            while True:
                status, body = http("POST", f"{url}/v1/mails", mail(i), auth)
                answers[status] += 1
                if status == 202 or time.monotonic() > deadline:
                    break
                time.sleep(0.2)
            assert status == 202, body
            ids.append(body["id"])
        posted = time.monotonic() - restored_at

        arrival: dict[str, float] = {}

        def all_arrived() -> bool:
            for mail_id in receipts(smtp_sink):
                arrival.setdefault(mail_id, time.monotonic() - restored_at)
            return all(mail_id in arrival for mail_id in ids)

        try:
            wait_until(all_arrived, DELIVERY_WAIT)
        finally:
            missing = [mail_id for mail_id in ids if mail_id not in arrival]
            print(
                f"database cut {CUT_SECONDS:.0f} s; {MAILS_AFTER} mails posted within"
                f" {posted:.1f} s of the restore (answers {dict(answers)}); arrived"
                f" {sorted(round(arrival[i], 1) for i in ids if i in arrival)} s after the"
                f" restore; missing {len(missing)}"
            )
        time.sleep(2)  # a late duplicate would show up here
        delivered = receipts(smtp_sink)
        assert [delivered[mail_id] for mail_id in ids] == [1] * MAILS_AFTER, "each exactly once"
    finally:
        restored.stop()
