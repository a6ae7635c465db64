"""A worker killed in the middle of a batch, with real processes: the mail it had sent
stays sent once, the one in DATA and the ones it never reached come back and are each
delivered exactly once (the relay publishes a round's mails in one send_mails message,
and the worker picks the whole message up in one statement)."""

from __future__ import annotations

import os
import signal
import time
import uuid

import psycopg
import pytest

from tests.conftest import new_key
from tests.factories import status_of
from tests.processes import Processes, http, wait_until
from tests.services import free_port
from tests.test_worker_leases import HOLD_ME, HoldingSmtpServer, lease_row


@pytest.mark.e2e
def test_a_pool_child_killed_in_the_middle_of_a_batch_loses_nothing_and_sends_each_once(
    procs: Processes, db: psycopg.Connection
) -> None:
    procs.env["MAILROOM_SENDING_TIMEOUT"] = "600"  # the timeout cannot be what saves them
    with HoldingSmtpServer() as smtp:
        procs.env["MAILROOM_SMTP_URL"] = smtp.url
        auth = {"Authorization": f"Bearer {new_key(procs)}"}
        port = free_port()
        procs.api(port)
        worker = procs.worker(concurrency=1)
        # Accepted in one transaction before the relay starts: its first round claims all
        # five, in one message. The second is held in DATA.
        mails = [HOLD_ME if i == 1 else {**HOLD_ME, "subject": f"mail {i}"} for i in range(5)]
        status, body = http(
            "POST", f"http://127.0.0.1:{port}/v1/mails/batch", {"mails": mails}, auth
        )
        assert status == 202, body
        ids = [uuid.UUID(item["id"]) for item in body["results"]]
        procs.relay()
        assert smtp.holding.wait(60), "the worker reached the second mail's DATA"

        statuses = [status_of(db, mail_id) for mail_id in ids]
        assert statuses == ["sent", "sending", "sending", "sending", "sending"], (
            "one pickup took the whole batch, and the first mail's sent was committed"
        )
        row = db.execute(
            "SELECT status_detail->>'worker' FROM mails WHERE id = %s", (ids[1],)
        ).fetchone()
        assert row is not None and lease_row(db, row[0]) is not None
        holder = row[0]
        pid = int(holder.rsplit(":", 1)[1])
        os.kill(pid, signal.SIGKILL)
        if pid == worker.process.pid:  # a pool without children: the whole worker died
            worker.process.wait(10)
            procs.worker(concurrency=1)
        smtp.release.set()

        wait_until(lambda: all(status_of(db, m) == "sent" for m in ids), 120)
        time.sleep(2)  # a late duplicate would show up here
        delivered = smtp.message_ids()
        for mail_id in ids:
            assert delivered.count(f"<{mail_id}@mail.test>") == 1, "each exactly once"

    for mail_id in ids[1:]:
        events = db.execute(
            "SELECT kind, detail->>'reason' FROM mail_events WHERE mail_id = %s ORDER BY id",
            (mail_id,),
        ).fetchall()
        kinds = [kind for kind, _ in events]
        assert kinds.count("sending") == 2 and kinds[-1] == "sent", kinds
        assert ("retrying", "worker lease lapsed") in events
    first = db.execute(
        "SELECT kind FROM mail_events WHERE mail_id = %s ORDER BY id", (ids[0],)
    ).fetchall()
    assert [kind for (kind,) in first][-2:] == ["sending", "sent"]
