"""RabbitMQ by URL alone: confirms, persistent messages, durable queues, and the
alternate exchange that catches what no queue is bound for."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import replace

import psycopg
import pytest
from kombu import Connection

from outbox_relay.dispatch import DispatchPolicy, dispatch_round
from outbox_relay.health import check_consumers, drain_unroutable
from outbox_relay.publish import Publisher
from shared.config import Settings
from shared.queues import all_queues, broker_transport_options
from tests.conftest import TenantKey
from tests.factories import event_kinds, insert_mail, status_of


@pytest.fixture
def worker_queues(amqp_settings: Settings) -> Iterator[Connection]:
    """Declare the mail queues as a worker does."""
    with Connection(amqp_settings.broker_url) as conn:
        channel = conn.default_channel
        for queue in all_queues(amqp_settings.broker_url):
            queue.bind(channel).declare()
        yield conn


def test_mail_is_published_persistent_into_the_durable_queue(
    db: psycopg.Connection,
    tenant: TenantKey,
    amqp_settings: Settings,
    worker_queues: Connection,
) -> None:
    mail_id = insert_mail(db, tenant.tenant_id)
    publisher = Publisher(amqp_settings)
    try:
        result = dispatch_round(db, publisher, DispatchPolicy(10, 60))
    finally:
        publisher.close()
    assert (result.published, result.error) == (1, None)
    assert status_of(db, mail_id) == "queued"
    message = worker_queues.default_channel.basic_get(queue="transactional", no_ack=True)
    assert message is not None
    assert message.properties["delivery_mode"] == 2
    assert message.headers["task"] == "mailroom.send_mails"
    assert json.loads(message.body)[0] == [[str(mail_id)]]
    options = broker_transport_options(amqp_settings.broker_url, "")
    assert options == {"confirm_publish": True}


def test_a_wrong_routing_key_is_caught_and_recorded_not_dropped(
    db: psycopg.Connection,
    tenant: TenantKey,
    amqp_settings: Settings,
    worker_queues: Connection,
) -> None:
    mail_id = insert_mail(db, tenant.tenant_id)
    misconfigured = replace(amqp_settings, queue_prefix="wrong-")
    publisher = Publisher(misconfigured)
    try:
        assert dispatch_round(db, publisher, DispatchPolicy(10, 60)).published == 1
        drained = 0
        deadline = time.monotonic() + 5
        while not drained and time.monotonic() < deadline:
            drained = drain_unroutable(db, publisher)
            time.sleep(0.05)
    finally:
        publisher.close()
    assert drained == 1
    assert event_kinds(db, mail_id) == ["accepted", "queued", "unroutable"]
    detail = db.execute("SELECT detail FROM mail_events WHERE kind = 'unroutable'").fetchone()
    assert detail == ({"routing_key": "wrong-transactional"},)
    assert db.execute("SELECT count(*) FROM outbox").fetchone() == (1,), "still in the outbox"
    queued = worker_queues.default_channel.basic_get(queue="transactional", no_ack=True)
    assert queued is None


def test_preflight_sees_queues_without_consumers(
    amqp_settings: Settings, worker_queues: Connection
) -> None:
    publisher = Publisher(amqp_settings)
    try:
        results = check_consumers(amqp_settings, publisher, timeout=2)
        missing = check_consumers(replace(amqp_settings, queue_prefix="wrong-"), publisher, 2)
    finally:
        publisher.close()
    assert [r.line() for r in results] == [
        "FAIL queue transactional: exists but has no consumer",
        "FAIL queue campaign: exists but has no consumer",
    ]
    assert [r.line() for r in missing] == [
        "FAIL queue wrong-transactional: no worker consumes it",
        "FAIL queue wrong-campaign: no worker consumes it",
    ]
