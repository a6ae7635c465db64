"""The whole pipeline with real processes: gunicorn API, relay and Celery worker,
PostgreSQL, Redis and an aiosmtpd server."""

from __future__ import annotations

import json
import sys
import uuid
from dataclasses import replace
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest
import redis

from shared.config import Settings
from shared.devstack.smtp_sink import SmtpSink
from tests.conftest import new_key
from tests.factories import event_kinds, status_of
from tests.processes import Processes, http, wait_until
from tests.services import free_port
from tests.tcp_proxy import TcpProxy

pytestmark = pytest.mark.e2e

MAIL = {
    "from": "Alice Ångström <alice@example.com>",
    "to": ["Bob <bob@example.org>"],
    "subject": "Your receipt — №42",
    "text": "Thank you.",
    "html": "<p>Thank you.</p>",
}


def mail_messages(broker: redis.Redis, queue_key: str) -> int:
    """send_mails messages waiting in a Redis queue (canaries travel there too)."""
    entries = broker.lrange(queue_key, 0, -1)
    return sum(json.loads(entry)["headers"]["task"] == "mailroom.send_mails" for entry in entries)


def test_mail_posted_to_the_api_arrives_at_the_smtp_server(
    procs: Processes, smtp_sink: SmtpSink, db: psycopg.Connection
) -> None:
    port = free_port()
    procs.api(port)
    relay = procs.relay()
    procs.worker()
    key = new_key(procs)
    auth = {"Authorization": f"Bearer {key}"}

    status, body = http("POST", f"http://127.0.0.1:{port}/v1/mails", MAIL, auth)
    assert status == 202, body
    mail_id = body["id"]

    (received,) = smtp_sink.wait_for(1, timeout=30)
    message = received.parsed()
    assert message["Message-ID"] == f"<{mail_id}@mail.test>"
    assert message["From"] == "Alice Ångström <alice@example.com>"
    assert message["To"] == "Bob <bob@example.org>"
    assert message["Subject"] == "Your receipt — №42"
    assert message.get_body(("plain",)).get_content().strip() == "Thank you."
    assert message.get_body(("html",)).get_content().strip() == "<p>Thank you.</p>"

    def sent() -> bool:
        return (
            http("GET", f"http://127.0.0.1:{port}/v1/mails/{mail_id}", None, auth)[1]["status"]
            == "sent"
        )

    wait_until(sent, 15)
    _, view = http("GET", f"http://127.0.0.1:{port}/v1/mails/{mail_id}", None, auth)
    assert [event["kind"] for event in view["events"]] == ["accepted", "queued", "sending", "sent"]
    assert relay.stop() == 0, "SIGTERM: the relay finishes its round and exits cleanly"
    assert "relay stopped" in relay.log.read_text()


def test_unreachable_database_means_503_and_nothing_half_written(
    procs: Processes, settings: Settings, db: psycopg.Connection
) -> None:
    target = urlsplit(settings.database_url)
    if not (target.hostname or "").startswith("127."):
        pytest.skip("needs the database on a loopback TCP address")
    proxy = TcpProxy("127.0.0.1", target.port or 5432).start()
    proxied = urlunsplit(
        target._replace(
            netloc=target.netloc.replace(
                f"{target.hostname}:{target.port}", f"127.0.0.1:{proxy.port}"
            )
        )
    )
    procs.env["MAILROOM_DATABASE_URL"] = proxied
    procs.env["MAILROOM_DB_CONNECT_TIMEOUT"] = "1"
    key = new_key(procs)
    auth = {"Authorization": f"Bearer {key}"}
    port = free_port()
    procs.api(port)
    url = f"http://127.0.0.1:{port}"
    try:
        assert http("POST", f"{url}/v1/mails", MAIL, auth)[0] == 202
        proxy.stop()
        for _ in range(5):
            status, body = http("POST", f"{url}/v1/mails", MAIL, auth)
            assert status == 503, body
            assert body["status"] == 503 and "Traceback" not in str(body)
        assert http("GET", f"{url}/readyz")[0] == 503
        assert http("GET", f"{url}/healthz")[0] == 200
        counts = db.execute(
            "SELECT (SELECT count(*) FROM mails), (SELECT count(*) FROM outbox),"
            " (SELECT count(*) FROM mail_events)"
        ).fetchone()
        assert counts == (1, 1, 1), "only the mail acknowledged before the outage exists"

        proxy = TcpProxy(proxy.target[0], proxy.target[1], listen_port=proxy.port).start()
        wait_until(lambda: http("GET", f"{url}/readyz")[0] == 200, 30)
        assert http("POST", f"{url}/v1/mails", MAIL, auth)[0] == 202
    finally:
        proxy.stop()


def test_relay_killed_between_publish_and_commit_loses_nothing_and_sends_once(
    procs: Processes,
    settings: Settings,
    smtp_sink: SmtpSink,
    db: psycopg.Connection,
    tmp_path: Path,
) -> None:
    port = free_port()
    procs.api(port)
    key = new_key(procs)
    status, body = http(
        "POST", f"http://127.0.0.1:{port}/v1/mails", MAIL, {"Authorization": f"Bearer {key}"}
    )
    assert status == 202
    mail_id = uuid.UUID(body["id"])

    marker = tmp_path / "published"
    faulty = procs.start(
        "fault-relay", sys.executable, "-m", "tests.fault_relay",
        extra_env={"FAULT_MARKER": str(marker)},
    )  # fmt: skip
    wait_until(marker.exists, 30, faulty)
    faulty.kill()  # SIGKILL after publish, before COMMIT

    assert status_of(db, mail_id) == "accepted", "the publish was never recorded"
    queue_key = f"{settings.broker_key_prefix}transactional"
    broker = redis.Redis.from_url(settings.broker_url)
    assert mail_messages(broker, queue_key) == 1

    procs.relay()
    wait_until(lambda: status_of(db, mail_id) == "queued", 30)
    assert mail_messages(broker, queue_key) == 2, "the row was published a second time"

    procs.worker()
    wait_until(lambda: status_of(db, mail_id) == "sent", 30)
    wait_until(lambda: mail_messages(broker, queue_key) == 0, 30)
    received = smtp_sink.wait_for(2, timeout=3)
    ids = [mail.parsed()["Message-ID"] for mail in received]
    assert ids == [f"<{mail_id}@mail.test>"], "exactly one SMTP send"
    assert event_kinds(db, mail_id) == ["accepted", "queued", "sending", "sent"]
    assert db.execute("SELECT count(*) FROM outbox").fetchone() == (0,)


__all__ = ["replace"]


def test_a_broker_that_loses_messages_loses_no_mail(
    procs: Processes,
    settings: Settings,
    smtp_sink: SmtpSink,
    db: psycopg.Connection,
) -> None:
    """Redis restarted without persistence, simulated on our own keys: the queue is
    emptied after the publish. The relay publishes again when the lease expires."""
    procs.env["MAILROOM_RELAY_VISIBILITY_TIMEOUT"] = "2"
    port = free_port()
    procs.api(port)
    procs.relay()
    key = new_key(procs)
    status, body = http(
        "POST", f"http://127.0.0.1:{port}/v1/mails", MAIL, {"Authorization": f"Bearer {key}"}
    )
    assert status == 202
    mail_id = uuid.UUID(body["id"])
    wait_until(lambda: status_of(db, mail_id) == "queued", 30)
    broker = redis.Redis.from_url(settings.broker_url)
    assert broker.delete(f"{settings.broker_key_prefix}transactional") == 1  # the loss

    procs.worker()
    wait_until(lambda: status_of(db, mail_id) == "sent", 60)
    assert [m.parsed()["Message-ID"] for m in smtp_sink.received] == [f"<{mail_id}@mail.test>"]
    kinds = event_kinds(db, mail_id)
    assert kinds[:2] == ["accepted", "queued"] and "redispatched" in kinds
    assert kinds[-2:] == ["sending", "sent"]
