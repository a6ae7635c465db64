"""The relay's round against a real Postgres and a real Redis."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import replace

import psycopg
import pytest

from outbox_relay.dispatch import DispatchPolicy, dispatch_round
from outbox_relay.publish import Publisher
from shared.config import Settings
from shared.db import connect
from shared.queries import QUERIES
from shared.queues import SEND_MAILS_TASK
from shared.store.outbox import Pauses
from tests.conftest import TenantKey
from tests.factories import event_kinds, insert_mail, status_of
from tests.processes import wait_until
from tests.services import free_port
from tests.webhook_support import drain_queue


@pytest.fixture
def publisher(settings: Settings) -> Iterator[Publisher]:
    publisher = Publisher(settings)
    yield publisher
    publisher.close()


def round_(
    db: psycopg.Connection, publisher: Publisher, visibility: float = 60.0, batch: int = 100
):
    return dispatch_round(db, publisher, DispatchPolicy(batch, visibility))


def test_round_publishes_celery_messages_and_records_them(
    db: psycopg.Connection, tenant: TenantKey, publisher: Publisher, settings: Settings
) -> None:
    mail_ids = [insert_mail(db, tenant.tenant_id) for _ in range(3)]
    result = round_(db, publisher)
    assert (result.claimed, result.published, result.error) == (3, 3, None)

    messages = drain_queue(settings)
    assert len(messages) == 1, "one round's mails of one queue travel in one batch"
    headers, body = messages[0]
    assert sorted(body[0][0]) == sorted(map(str, mail_ids))
    assert headers["task"] == SEND_MAILS_TASK
    assert headers["id"] == headers["root_id"]
    assert body[1] == {} and set(body[2]) == {"callbacks", "errbacks", "chain", "chord"}

    for mail_id in mail_ids:
        assert status_of(db, mail_id) == "queued"
        assert event_kinds(db, mail_id) == ["accepted", "queued"]
    leased = db.execute(
        "SELECT count(*) FROM outbox WHERE available_at > now() + interval '50 seconds'"
        " AND dispatch_count = 1"
    ).fetchone()
    assert leased == (3,)
    assert round_(db, publisher).claimed == 0, "leased rows are not due"


def test_rows_no_worker_picked_up_are_published_again_after_the_lease(
    db: psycopg.Connection, tenant: TenantKey, publisher: Publisher, settings: Settings
) -> None:
    mail_id = insert_mail(db, tenant.tenant_id)
    round_(db, publisher, visibility=0)
    second = round_(db, publisher, visibility=0)
    assert (second.published, second.redispatched) == (1, 1)
    assert len(drain_queue(settings)) == 2
    assert status_of(db, mail_id) == "queued"
    assert event_kinds(db, mail_id) == ["accepted", "queued", "redispatched"]
    details = db.execute(
        "SELECT detail->>'dispatch' FROM mail_events WHERE kind IN ('queued', 'redispatched')"
        " ORDER BY id"
    ).fetchall()
    assert details == [("1",), ("2",)]


def test_leases_double_with_each_dispatch(
    db: psycopg.Connection, tenant: TenantKey, publisher: Publisher
) -> None:
    insert_mail(db, tenant.tenant_id)
    leases = []
    for _ in range(3):
        round_(db, publisher, visibility=10)
        lease = db.execute("SELECT available_at - now() FROM outbox").fetchone()
        assert lease is not None
        leases.append(round(lease[0].total_seconds()))
        db.execute("UPDATE outbox SET available_at = now()")
    assert leases == [10, 20, 40]


def test_a_mail_no_worker_ever_picks_up_becomes_dead_with_the_reason(
    db: psycopg.Connection, tenant: TenantKey, publisher: Publisher
) -> None:
    mail_id = insert_mail(db, tenant.tenant_id)
    policy = DispatchPolicy(batch_size=10, visibility_timeout=0, max_dispatches=2)
    results = [dispatch_round(db, publisher, policy) for _ in range(3)]
    assert [(r.published, r.dead) for r in results] == [(1, 0), (1, 0), (0, 1)]
    row = db.execute("SELECT status, last_error FROM mails WHERE id = %s", (mail_id,)).fetchone()
    assert row == ("dead", "no worker picked it up after 2 dispatches")
    assert event_kinds(db, mail_id) == ["accepted", "queued", "redispatched", "dead"]
    assert db.execute("SELECT count(*) FROM outbox").fetchone() == (0,)


def test_a_mail_older_than_the_maximum_age_becomes_dead(
    db: psycopg.Connection, tenant: TenantKey, publisher: Publisher
) -> None:
    mail_id = insert_mail(db, tenant.tenant_id)
    db.execute("UPDATE mails SET created_at = now() - interval '2 days'")
    db.execute("UPDATE outbox SET created_at = now() - interval '2 days'")
    result = dispatch_round(db, publisher, DispatchPolicy(10, 60, max_age=86400))
    assert (result.published, result.dead) == (0, 1)
    assert status_of(db, mail_id) == "dead"


def test_broker_down_leaves_rows_due_and_unmarked(
    db: psycopg.Connection, tenant: TenantKey, settings: Settings
) -> None:
    mail_id = insert_mail(db, tenant.tenant_id)
    dead_broker = replace(
        settings, broker_url=f"redis://127.0.0.1:{free_port()}/0", relay_publish_timeout=1
    )
    publisher = Publisher(dead_broker)
    result = round_(db, publisher)
    assert result.published == 0
    assert result.error is not None
    assert status_of(db, mail_id) == "accepted"
    assert event_kinds(db, mail_id) == ["accepted"]
    due = db.execute("SELECT count(*) FROM outbox WHERE available_at <= now()").fetchone()
    assert due == (1,)


def test_concurrent_claims_never_share_a_row(
    database_url: str, db: psycopg.Connection, tenant: TenantKey
) -> None:
    for _ in range(10):
        insert_mail(db, tenant.tenant_id)
    claim = QUERIES["claim_due_outbox"]
    with (
        connect(database_url) as first,
        connect(database_url) as second,
        first.transaction(),
        second.transaction(),
    ):
        params = {"batch_size": 6, "queue": "transactional", "max_dispatches": 8, "max_age": 86400}
        params |= Pauses().params()
        claimed_first = first.execute(claim, params).fetchall()
        claimed_second = second.execute(claim, params).fetchall()
    ids_first = {row[0] for row in claimed_first}
    ids_second = {row[0] for row in claimed_second}
    assert len(ids_first) == 6
    assert len(ids_second) == 4
    assert ids_first.isdisjoint(ids_second)


def test_relay_loop_publishes_on_notify_and_stops_on_request(
    db: psycopg.Connection, tenant: TenantKey, settings: Settings
) -> None:
    import threading  # noqa: PLC0415

    from outbox_relay.relay import Relay  # noqa: PLC0415

    relay = Relay(replace(settings, relay_poll_interval=30.0))
    thread = threading.Thread(target=relay.run)
    thread.start()
    try:
        mail_id = insert_mail(db, tenant.tenant_id)
        db.execute("NOTIFY mailroom_outbox")  # what the API's RelayWakeup sends
        for _ in range(100):
            if status_of(db, mail_id) == "queued":
                break
            threading.Event().wait(0.05)
        # With a 30 s poll interval, only NOTIFY can have woken it this fast.
        assert status_of(db, mail_id) == "queued"
    finally:
        relay.stopping.set()
        thread.join(40)
    assert not thread.is_alive()
    assert drain_queue(settings)[0][1][0][0] == [str(mail_id)]


def test_a_woken_round_under_load_lingers_to_claim_several_mails(
    db: psycopg.Connection,
    tenant: TenantKey,
    settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A round woken soon after one that found mail waits MAILROOM_RELAY_LINGER and
    publishes what came meanwhile in one batch."""
    import threading  # noqa: PLC0415

    from outbox_relay import relay as relay_module  # noqa: PLC0415

    # "Soon" is 20 ms in production; this test's own steps take longer than that.
    monkeypatch.setattr(relay_module, "LINGER_WHEN_WOKEN_WITHIN", 5.0)
    relay = relay_module.Relay(replace(settings, relay_poll_interval=30.0, relay_linger=0.6))
    thread = threading.Thread(target=relay.run)
    thread.start()
    mail_ids: list[uuid.UUID] = []

    def send_now() -> None:
        mail_ids.append(insert_mail(db, tenant.tenant_id))
        db.execute("NOTIFY mailroom_outbox")

    try:
        send_now()
        wait_until(lambda: status_of(db, mail_ids[0]) == "queued", 10)
        send_now()
        threading.Event().wait(0.2)  # inside the linger
        send_now()
        wait_until(lambda: status_of(db, mail_ids[2]) == "queued", 10)
    finally:
        relay.stopping.set()
        thread.join(40)
    messages = drain_queue(settings)  # canaries travel there too
    batches = [body[0][0] for headers, body in messages if headers["task"] == SEND_MAILS_TASK]
    assert batches == [[str(mail_ids[0])], [str(mail_ids[1]), str(mail_ids[2])]]


def test_only_a_round_that_found_mail_and_was_woken_soon_after_lingers() -> None:
    from outbox_relay.relay import LINGER_WHEN_WOKEN_WITHIN, under_load  # noqa: PLC0415

    soon, late = LINGER_WHEN_WOKEN_WITHIN / 4, LINGER_WHEN_WOKEN_WITHIN * 4
    assert under_load(3, woken_after=soon)
    assert not under_load(0, woken_after=soon), "the first mail after a pause goes at once"
    assert not under_load(3, woken_after=late), "mail slower than ~50/s goes at once"


def test_a_campaign_burst_does_not_delay_transactional_mail(
    db: psycopg.Connection, tenant: TenantKey, publisher: Publisher, settings: Settings
) -> None:
    campaign = [insert_mail(db, tenant.tenant_id, stream="campaign") for _ in range(30)]
    urgent = insert_mail(db, tenant.tenant_id)  # the newest row of all
    result = round_(db, publisher, batch=10)
    assert result.published == 10
    assert status_of(db, urgent) == "queued"
    assert sum(status_of(db, mail_id) == "queued" for mail_id in campaign) == 9
    assert [body[0][0] for _, body in drain_queue(settings)] == [[str(urgent)]]
    assert sum(len(body[0][0]) for _, body in drain_queue(settings, "campaign")) == 9


def test_a_round_sends_each_queue_in_batches_of_the_send_batch_size(
    db: psycopg.Connection, tenant: TenantKey, publisher: Publisher, settings: Settings
) -> None:
    urgent = [insert_mail(db, tenant.tenant_id) for _ in range(3)]
    campaign = [insert_mail(db, tenant.tenant_id, stream="campaign") for _ in range(25)]
    policy = DispatchPolicy(100, 60.0, send_batch_size=10)
    assert dispatch_round(db, publisher, policy).published == 28
    transactional = [body[0][0] for _, body in drain_queue(settings)]
    assert transactional == [[str(mail_id) for mail_id in urgent]]
    batches = [body[0][0] for _, body in drain_queue(settings, "campaign")]
    assert [len(batch) for batch in batches] == [10, 10, 5]
    assert sorted(mail_id for batch in batches for mail_id in batch) == sorted(map(str, campaign))
