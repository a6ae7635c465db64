"""The outage this project exists to prevent, reproduced with real processes.

A relay publishes into a queue no worker consumes (Redis: a wrong queue name;
RabbitMQ: a wrong routing key). Every mail is still answered 202, the system
reports the broken link within 60 s, nothing is sent and nothing is lost; once
the relay runs with the right configuration, every mail arrives exactly once.
Then relay and worker are killed with SIGKILL at random moments during a run.
"""

from __future__ import annotations

import json
import random
import subprocess
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from http.client import HTTPConnection
from typing import Any

import psycopg
import pytest

from shared.devstack.smtp_sink import SmtpSink
from tests.conftest import new_key
from tests.processes import BIN, Child, Processes, http, wait_until
from tests.services import free_port

pytestmark = pytest.mark.e2e

FAST_CANARY = {
    "MAILROOM_CANARY_INTERVAL": "3",
    "MAILROOM_CANARY_THRESHOLD": "15",
    "MAILROOM_RELAY_POLL_INTERVAL": "0.5",
}


def mail(i: int) -> dict[str, Any]:
    return {
        "from": "shop@example.com",
        "to": [f"customer{i}@example.org"],
        "subject": f"Order {i}",
        "text": f"Your order {i} has shipped.",
    }


def post_many(port: int, key: str, count: int, clients: int = 8) -> list[str]:
    """POST /v1/mails count times over keep-alive connections; every answer must be 202."""

    def send(indices: range) -> list[str]:
        conn = HTTPConnection("127.0.0.1", port, timeout=30)
        ids = []
        for i in indices:
            body = json.dumps(mail(i))
            headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
            conn.request("POST", "/v1/mails", body, headers)
            response = conn.getresponse()
            payload = json.loads(response.read())
            assert response.status == 202, payload
            ids.append(payload["id"])
        conn.close()
        return ids

    chunks = [range(start, count, clients) for start in range(clients)]
    with ThreadPoolExecutor(clients) as pool:
        return [mail_id for ids in pool.map(send, chunks) for mail_id in ids]


def statuses(db: psycopg.Connection) -> Counter[str]:
    return Counter(dict(db.execute("SELECT status, count(*) FROM mails GROUP BY 1").fetchall()))


def check(procs: Processes, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "outbox-relay"), "check", "--timeout", "5"],
        env={**procs.environment(), **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def delivered_ids(sink: SmtpSink) -> Counter[str]:
    return Counter(str(m.parsed()["Message-ID"]).strip("<>").split("@")[0] for m in sink.received)


def reproduce_outage(
    procs: Processes, smtp_sink: SmtpSink, db: psycopg.Connection, wrong: dict[str, str]
) -> None:
    procs.env.update(FAST_CANARY)
    key = new_key(procs)
    port = free_port()
    procs.api(port)
    procs.worker(concurrency=2)
    misconfigured = procs.relay(extra_env=wrong)

    started = time.monotonic()
    ids = post_many(port, key, 1000)
    assert len(set(ids)) == 1000

    def reported_broken() -> bool:
        status, body = http("GET", f"http://127.0.0.1:{port}/readyz/pipeline")
        return status == 503 and body["pipeline"] == "broken"

    def relay_logged_it() -> bool:
        return "pipeline broken" in misconfigured.log.read_text()

    wait_until(reported_broken, 60)
    wait_until(relay_logged_it, 60)
    assert time.monotonic() - started < 60, "the broken link is reported within 60 s"
    print(f"broken link reported {time.monotonic() - started:.1f} s after the first mail")
    preflight = check(procs, **wrong)
    assert preflight.returncode == 1, preflight.stdout
    assert "FAIL" in preflight.stdout
    assert http("GET", f"http://127.0.0.1:{port}/readyz")[0] == 200, "still accepting mail"
    assert smtp_sink.received == []
    counts = statuses(db)
    assert counts["sent"] == 0
    assert sum(counts.values()) == 1000, "nothing lost"
    assert misconfigured.log.read_text().count("pipeline broken") == 1, "one ERROR per incident"

    misconfigured.stop()
    procs.relay()  # the right configuration
    wait_until(lambda: len(smtp_sink.received) >= 1000, 120)
    wait_until(lambda: statuses(db)["sent"] == 1000, 30)
    time.sleep(2)  # a late duplicate would show up here
    delivered = delivered_ids(smtp_sink)
    assert sorted(delivered) == sorted(ids)
    assert set(delivered.values()) == {1}, "each mail exactly once"
    histories = db.execute(
        "SELECT array_agg(kind ORDER BY id) FROM mail_events GROUP BY mail_id"
    ).fetchall()
    for (kinds,) in histories:
        assert kinds[0] == "accepted" and kinds[1] == "queued" and kinds[-2:] == ["sending", "sent"]
        assert "redispatched" in kinds
    assert check(procs).returncode == 0
    assert http("GET", f"http://127.0.0.1:{port}/readyz/pipeline")[0] == 200


def test_outage_with_redis_and_a_wrong_queue_name(
    procs: Processes, smtp_sink: SmtpSink, db: psycopg.Connection
) -> None:
    reproduce_outage(procs, smtp_sink, db, {"MAILROOM_QUEUE_PREFIX": "wrong-"})


def test_outage_with_rabbitmq_and_a_wrong_routing_key(
    procs: Processes, smtp_sink: SmtpSink, db: psycopg.Connection, rabbitmq_url: str
) -> None:
    procs.env["MAILROOM_BROKER_URL"] = rabbitmq_url
    procs.env.pop("MAILROOM_BROKER_KEY_PREFIX", None)
    reproduce_outage(procs, smtp_sink, db, {"MAILROOM_QUEUE_PREFIX": "wrong-"})
    unroutable = db.execute("SELECT count(*) FROM mail_events WHERE kind = 'unroutable'").fetchone()
    assert unroutable is not None and unroutable[0] >= 1, "the broker caught the misrouting"


def test_sigkill_of_relay_and_worker_at_random_moments_loses_nothing(
    procs: Processes, smtp_sink: SmtpSink, db: psycopg.Connection
) -> None:
    procs.env.update(
        FAST_CANARY | {"MAILROOM_RELAY_VISIBILITY_TIMEOUT": "3", "MAILROOM_SENDING_TIMEOUT": "8"}
    )
    key = new_key(procs)
    port = free_port()
    procs.api(port)
    relay: Child = procs.relay()
    worker: Child = procs.worker(concurrency=2)
    ids: list[str] = []
    for batch in range(4):
        body = {"mails": [mail(batch * 500 + i) for i in range(500)]}
        status, answer = http(
            "POST",
            f"http://127.0.0.1:{port}/v1/mails/batch",
            body,
            {"Authorization": f"Bearer {key}"},
        )
        assert status == 202 and answer["accepted"] == 500
        ids += [item["id"] for item in answer["results"]]

    chaos = random.Random(20261128)
    for _ in range(8):
        time.sleep(chaos.uniform(0.2, 1.5))
        if chaos.random() < 0.5:
            relay.kill_group()
            relay = procs.relay()
        else:
            worker.kill_group()
            worker = procs.worker(concurrency=2)

    wait_until(lambda: statuses(db)["sent"] == 2000, 180)
    time.sleep(2)
    delivered = delivered_ids(smtp_sink)
    assert sorted(set(delivered)) == sorted(ids), "every acknowledged mail is delivered"
    twice = [mail_id for mail_id, count in delivered.items() if count > 1]
    for mail_id in twice:
        # The one documented window: a worker killed after the SMTP server's 250 and
        # before our COMMIT of 'sent'. Its history shows the lost attempt.
        kinds = [k for (k,) in db.execute(
            "SELECT kind FROM mail_events WHERE mail_id = %s ORDER BY id", (mail_id,)
        ).fetchall()]  # fmt: skip
        assert kinds.count("sending") >= 2 and "retrying" in kinds, (mail_id, kinds)
    print(f"SIGKILL run: {len(delivered)} delivered, {len(twice)} twice (250-to-COMMIT window)")
