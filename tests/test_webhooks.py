"""Status webhooks against real services: the API, the trigger that enqueues
deliveries in the event's transaction, the relay's webhook round into Redis, and
the worker's signed POST to a real HTTP receiver on a loopback port.

Webhook hosts here are ``localhost`` or loopback addresses, which the test settings
allow (``MAILROOM_WEBHOOK_ALLOW_NETWORKS``): the API refuses a name that does not
resolve, and tests must not depend on outside DNS."""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import replace
from typing import Any

import psycopg
import pytest
from flask.testing import FlaskClient
from psycopg_pool import ConnectionPool

from ingest_api.schemas.webhook import WEBHOOK_EVENTS
from mail_worker.webhooks import DELIVERY_HEADER, WebhookPostPolicy, deliver_webhook
from outbox_relay.publish import Publisher
from outbox_relay.relay import Relay
from shared import signatures
from shared.config import Settings, load_settings
from shared.devstack.smtp_sink import SmtpSink
from shared.queues import (
    DELIVER_WEBHOOK_TASK,
)
from tests.conftest import TenantKey, new_key
from tests.factories import insert_mail
from tests.processes import Processes, http, wait_until
from tests.services import free_port
from tests.webhook_support import (
    POLICY,
    Receiver,
    bearer,
    create_webhook,
    deliveries,
    publish_and_run,
    record_outcome,
    relay_round,
    take_messages,
)

# --- the API -------------------------------------------------------------------------


def test_webhooks_are_created_listed_and_deleted_per_tenant(
    client: FlaskClient, tenant: TenantKey, other_tenant: TenantKey
) -> None:
    created = create_webhook(client, tenant, "https://localhost/mail", ["failed", "sent", "sent"])
    assert set(created) == {"id", "url", "events", "secret", "created_at"}
    assert created["events"] == ["failed", "sent"]
    assert len(created["secret"]) == 64 and int(created["secret"], 16) >= 0

    listed = client.get("/v1/webhooks", headers=bearer(tenant))
    assert listed.status_code == 200
    (webhook,) = listed.get_json()["webhooks"]
    assert webhook == {key: created[key] for key in ("id", "url", "events", "created_at")}
    assert "secret" not in json.dumps(listed.get_json())

    # Another tenant neither sees nor deletes it.
    assert client.get("/v1/webhooks", headers=bearer(other_tenant)).get_json() == {"webhooks": []}
    other = client.delete(f"/v1/webhooks/{created['id']}", headers=bearer(other_tenant))
    assert other.status_code == 404

    assert client.delete(f"/v1/webhooks/{created['id']}", headers=bearer(tenant)).status_code == 204
    assert client.get("/v1/webhooks", headers=bearer(tenant)).get_json() == {"webhooks": []}
    assert client.delete(f"/v1/webhooks/{created['id']}", headers=bearer(tenant)).status_code == 404
    assert client.delete("/v1/webhooks/not-a-uuid", headers=bearer(tenant)).status_code == 404


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"url": "ftp://example.org/x", "events": ["sent"]}, "url"),
        ({"url": "javascript:alert(1)", "events": ["sent"]}, "url"),
        ({"url": "https://", "events": ["sent"]}, "url"),
        ({"url": "https://example.org/a b", "events": ["sent"]}, "url"),
        ({"url": "https://example.org:99999/", "events": ["sent"]}, "url"),
        ({"url": "https://example.org/", "events": []}, "events"),
        ({"url": "https://example.org/", "events": ["opened"]}, "events"),
        ({"url": "https://example.org/"}, "events"),
        ({"url": "https://example.org/", "events": ["sent"], "secret": "mine"}, "secret"),
    ],
)
def test_invalid_webhooks_are_refused(
    client: FlaskClient, tenant: TenantKey, body: dict[str, Any], field: str
) -> None:
    response = client.post("/v1/webhooks", json=body, headers=bearer(tenant))
    assert response.status_code == 422, response.get_json()
    assert field in response.get_json()["errors"]


def test_scopes_send_to_change_and_read_to_list(
    client: FlaskClient, db: psycopg.Connection, tenant: TenantKey
) -> None:
    from tests.test_auth_scopes import add_key  # noqa: PLC0415

    read_only = {"Authorization": f"Bearer {add_key(db, tenant, ['read'])}"}
    send_only = {"Authorization": f"Bearer {add_key(db, tenant, ['send'])}"}
    body = {"url": "https://localhost/", "events": ["sent"]}
    assert client.post("/v1/webhooks", json=body, headers=read_only).status_code == 403
    created = client.post("/v1/webhooks", json=body, headers=send_only)
    assert created.status_code == 201
    assert client.get("/v1/webhooks", headers=send_only).status_code == 403
    assert client.get("/v1/webhooks", headers=read_only).status_code == 200
    path = f"/v1/webhooks/{created.get_json()['id']}"
    assert client.delete(path, headers=read_only).status_code == 403
    assert client.delete(path, headers=send_only).status_code == 204


def test_a_tenant_has_at_most_twenty_webhooks(client: FlaskClient, tenant: TenantKey) -> None:
    for number in range(20):
        create_webhook(client, tenant, f"https://localhost/{number}")
    body = {"url": "https://localhost/21", "events": ["sent"]}
    assert client.post("/v1/webhooks", json=body, headers=bearer(tenant)).status_code == 409


# --- the trigger: deliveries in the event's own transaction ---------------------------


def test_an_outcome_enqueues_one_delivery_per_matching_webhook_in_its_transaction(
    client: FlaskClient, db: psycopg.Connection, tenant: TenantKey, other_tenant: TenantKey
) -> None:
    sent_hook = create_webhook(client, tenant, "https://localhost/a", ["sent", "failed"])
    create_webhook(client, tenant, "https://localhost/b", ["dead"])
    create_webhook(client, other_tenant, "https://localhost/c", ["sent"])
    deleted = create_webhook(client, tenant, "https://localhost/d", ["sent"])
    client.delete(f"/v1/webhooks/{deleted['id']}", headers=bearer(tenant))
    mail_id = insert_mail(db, tenant.tenant_id)
    db.execute(
        "UPDATE mails SET tags = '{welcome}', metadata = '{\"user\": 7}' WHERE id = %s",
        (mail_id,),
    )
    assert deliveries(db) == [], "'accepted' is not a webhook event"

    class Rollback(Exception):
        pass

    with pytest.raises(Rollback), db.transaction():
        record_outcome(db, mail_id)
        assert len(deliveries(db)) == 1, "enqueued by the statement that records the event"
        raise Rollback
    assert deliveries(db) == [], "rolled back with the event"

    record_outcome(db, mail_id, detail={"smtp_reply": "250 queued"})
    (delivery,) = deliveries(db)
    assert delivery["webhook_id"] == uuid.UUID(sent_hook["id"])
    assert (delivery["tenant_id"], delivery["mail_id"]) == (tenant.tenant_id, mail_id)
    assert (delivery["event"], delivery["status"], delivery["attempts"]) == ("sent", "pending", 0)
    assert not delivery["later"], "due at once"
    payload = delivery["payload"]
    event_time = db.execute(
        "SELECT to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')"
        " FROM mail_events WHERE mail_id = %s AND kind = 'sent'",
        (mail_id,),
    ).fetchone()
    assert event_time is not None
    assert payload == {
        "type": "sent",
        "mail_id": str(mail_id),
        "created_at": event_time[0],
        "detail": {"smtp_reply": "250 queued"},
        "tags": ["welcome"],
        "metadata": {"user": 7},
    }


def test_every_event_kind_reaches_the_webhooks_that_want_it(
    client: FlaskClient, db: psycopg.Connection, tenant: TenantKey
) -> None:
    kinds = list(WEBHOOK_EVENTS)  # what the API accepts is what the trigger fires on
    create_webhook(client, tenant, "https://localhost/all", kinds)
    mail_id = insert_mail(db, tenant.tenant_id)
    for kind in [*kinds, "queued", "sending", "retrying", "cancelled", "redispatched"]:
        db.execute("INSERT INTO mail_events (mail_id, kind) VALUES (%s, %s)", (mail_id, kind))
    assert [d["event"] for d in deliveries(db)] == kinds


# --- relay and worker ------------------------------------------------------------------


def test_the_relay_publishes_and_the_worker_posts_a_signed_delivery(
    client: FlaskClient,
    db: psycopg.Connection,
    tenant: TenantKey,
    settings: Settings,
    publisher: Publisher,
    pool: ConnectionPool,
    receiver: Receiver,
) -> None:
    webhook = create_webhook(client, tenant, receiver.url)
    mail_id = insert_mail(db, tenant.tenant_id)
    record_outcome(db, mail_id)
    (delivery,) = deliveries(db)

    result = relay_round(db, publisher)
    assert (result.claimed, result.published, result.error) == (1, 1, None)
    (published,) = deliveries(db)
    assert (published["dispatch_count"], published["later"]) == (1, True), "leased"
    assert relay_round(db, publisher).claimed == 0, "a leased delivery is not due"

    ((headers, body),) = take_messages(settings)
    assert headers["task"] == DELIVER_WEBHOOK_TASK
    assert body[0] == [str(delivery["id"])]
    assert deliver_webhook(pool, body[0][0], POLICY) == "delivered"

    (request,) = receiver.received
    assert request.path == "/hooks/mailroom"
    assert request.headers["Content-Type"] == "application/json"
    assert request.headers[DELIVERY_HEADER] == str(delivery["id"])
    signed_at = signatures.verify(
        webhook["secret"], request.headers[signatures.HEADER], request.body, time.time()
    )
    assert abs(signed_at - time.time()) < 60
    with pytest.raises(signatures.SignatureError):
        signatures.verify("another secret", request.headers[signatures.HEADER], request.body, 0)
    assert request.json() == delivery["payload"]
    assert request.json()["type"] == "sent" and request.json()["mail_id"] == str(mail_id)

    (done,) = deliveries(db)
    assert (done["status"], done["attempts"], done["last_status_code"]) == ("delivered", 1, 200)
    assert done["delivered_at"] is not None and done["last_error"] is None

    # A duplicate message (the broker redelivering it) sends nothing.
    assert deliver_webhook(pool, str(delivery["id"]), POLICY) == "skipped"
    assert len(receiver.received) == 1


def test_a_failing_receiver_is_retried_later_with_backoff_and_each_attempt_recorded(
    client: FlaskClient,
    db: psycopg.Connection,
    tenant: TenantKey,
    settings: Settings,
    publisher: Publisher,
    pool: ConnectionPool,
    receiver: Receiver,
) -> None:
    create_webhook(client, tenant, receiver.url)
    record_outcome(db, insert_mail(db, tenant.tenant_id))
    receiver.statuses = [500, 503]

    assert publish_and_run(db, publisher, settings, pool) == ["retrying"]
    (first,) = deliveries(db)
    assert (first["status"], first["attempts"], first["last_status_code"]) == ("pending", 1, 500)
    assert first["last_error"] == "HTTP 500"
    assert 15 <= first["due_in"] <= 30, "base 30 s with jitter"
    assert deliver_webhook(pool, str(first["id"]), POLICY) == "skipped", "one attempt per publish"
    assert relay_round(db, publisher).claimed == 0, "not due before the backoff"

    db.execute("UPDATE webhook_deliveries SET available_at = now()")  # the backoff has passed
    assert publish_and_run(db, publisher, settings, pool) == ["retrying"]
    (second,) = deliveries(db)
    assert (second["attempts"], second["last_status_code"]) == (2, 503)
    assert 30 <= second["due_in"] <= 60, "doubling"

    db.execute("UPDATE webhook_deliveries SET available_at = now()")
    assert publish_and_run(db, publisher, settings, pool) == ["delivered"]
    (third,) = deliveries(db)
    assert (third["status"], third["attempts"], third["last_status_code"]) == (
        "delivered",
        3,
        200,
    )
    ids = {request.headers[DELIVERY_HEADER] for request in receiver.received}
    assert ids == {str(first["id"])}, "every attempt carries the same delivery id"
    assert len({request.headers[signatures.HEADER] for request in receiver.received}) >= 1


def test_after_the_retry_window_a_failed_attempt_is_final(
    client: FlaskClient,
    db: psycopg.Connection,
    tenant: TenantKey,
    settings: Settings,
    publisher: Publisher,
    pool: ConnectionPool,
    receiver: Receiver,
) -> None:
    create_webhook(client, tenant, receiver.url)
    record_outcome(db, insert_mail(db, tenant.tenant_id))
    receiver.statuses = [500, 500]
    created_at = time.time()
    tiny = replace(POLICY, retry_hours=3 / 3600)  # three seconds

    assert publish_and_run(db, publisher, settings, pool, tiny) == ["retrying"]
    time.sleep(3.1 - (time.time() - created_at))
    db.execute("UPDATE webhook_deliveries SET available_at = now()")
    assert publish_and_run(db, publisher, settings, pool, tiny) == ["failed"]
    (delivery,) = deliveries(db)
    assert (delivery["status"], delivery["attempts"], delivery["last_status_code"]) == (
        "failed",
        2,
        500,
    )
    assert relay_round(db, publisher).claimed == 0, "a failed delivery is never sent again"


def test_the_retry_window_defaults_to_a_day_and_is_configurable() -> None:
    assert WebhookPostPolicy.from_settings(Settings()).retry_hours == 24
    env = {"MAILROOM_WEBHOOK_RETRY_HOURS": "0.01", "MAILROOM_WEBHOOK_TIMEOUT": "3"}
    settings = load_settings(environ=env)
    assert (settings.webhook_retry_hours, settings.webhook_timeout) == (0.01, 3.0)


def test_timeouts_refused_connections_and_redirects_are_failures(
    client: FlaskClient,
    db: psycopg.Connection,
    tenant: TenantKey,
    settings: Settings,
    publisher: Publisher,
    pool: ConnectionPool,
    receiver: Receiver,
) -> None:
    elsewhere = Receiver().start()
    try:
        receiver.statuses, receiver.location = [302], elsewhere.url
        slow = Receiver(delay=1.5).start()
        try:
            create_webhook(client, tenant, receiver.url)
            create_webhook(client, tenant, slow.url)
            create_webhook(client, tenant, f"http://127.0.0.1:{free_port()}/nobody")
            record_outcome(db, insert_mail(db, tenant.tenant_id))
            quick = replace(POLICY, timeout=0.5)
            assert publish_and_run(db, publisher, settings, pool, quick) == ["retrying"] * 3
        finally:
            slow.stop()
    finally:
        elsewhere.stop()
    assert elsewhere.received == [], "a redirect is never followed"
    rows = deliveries(db)
    assert [d["last_error"] for d in rows if d["last_status_code"] == 302] == ["HTTP 302"]
    rows = [d for d in rows if d["last_status_code"] is None]
    assert len(rows) == 2, rows
    messages = " ".join(d["last_error"] for d in rows)
    assert "timed out" in messages
    assert "refused" in messages.lower()
    assert all(d["status"] == "pending" and d["later"] for d in deliveries(db))


def test_a_deleted_webhook_gets_nothing(
    client: FlaskClient,
    db: psycopg.Connection,
    tenant: TenantKey,
    settings: Settings,
    publisher: Publisher,
    pool: ConnectionPool,
    receiver: Receiver,
) -> None:
    before = create_webhook(client, tenant, receiver.url)
    after = create_webhook(client, tenant, receiver.url + "/2")
    record_outcome(db, insert_mail(db, tenant.tenant_id))
    # One is deleted while its delivery waits, the other after its publish.
    client.delete(f"/v1/webhooks/{before['id']}", headers=bearer(tenant))
    assert relay_round(db, publisher).published == 1
    client.delete(f"/v1/webhooks/{after['id']}", headers=bearer(tenant))
    ((_, body),) = take_messages(settings)
    assert deliver_webhook(pool, body[0][0], POLICY) == "skipped"
    assert receiver.received == []
    assert [(d["status"], d["last_error"]) for d in deliveries(db)] == [
        ("failed", "the webhook was deleted")
    ] * 2
    record_outcome(db, insert_mail(db, tenant.tenant_id))
    assert len(deliveries(db)) == 2, "no new deliveries for a deleted webhook"


def test_a_webhook_deleted_while_its_event_commits_gets_nothing(
    client: FlaskClient,
    db: psycopg.Connection,
    tenant: TenantKey,
    settings: Settings,
    publisher: Publisher,
) -> None:
    create_webhook(client, tenant, "https://localhost/")
    record_outcome(db, insert_mail(db, tenant.tenant_id))
    # What a deletion that commits after the event's trigger read the webhook leaves.
    db.execute("UPDATE webhooks SET deleted_at = now()")
    result = relay_round(db, publisher)
    assert (result.claimed, result.published, result.abandoned) == (1, 0, 1)
    assert [(d["status"], d["last_error"]) for d in deliveries(db)] == [
        ("failed", "the webhook was deleted")
    ]
    assert take_messages(settings) == []


def test_a_refused_publish_leaves_the_deliveries_due(
    client: FlaskClient, db: psycopg.Connection, tenant: TenantKey, settings: Settings
) -> None:
    create_webhook(client, tenant, "https://localhost/")
    record_outcome(db, insert_mail(db, tenant.tenant_id))
    broken = Publisher(replace(settings, broker_url=f"redis://127.0.0.1:{free_port()}/0"))
    try:
        result = relay_round(db, broken)
    finally:
        broken.close()
    assert (result.claimed, result.published) == (1, 0) and result.error is not None
    assert [(d["dispatch_count"], d["later"]) for d in deliveries(db)] == [(0, False)]


def test_the_relay_gives_up_when_no_worker_attempts_within_the_window(
    client: FlaskClient, db: psycopg.Connection, tenant: TenantKey, publisher: Publisher
) -> None:
    create_webhook(client, tenant, "https://localhost/")
    record_outcome(db, insert_mail(db, tenant.tenant_id))
    record_outcome(db, insert_mail(db, tenant.tenant_id))
    # Both are a day old; one was published and never attempted (no consumer), the
    # other failed its last attempt and is due for one more.
    db.execute(
        "UPDATE webhook_deliveries SET created_at = now() - interval '25 hours',"
        " available_at = now(), dispatch_count = 3, attempts = 2"
    )
    first = deliveries(db)[0]["id"]
    db.execute("UPDATE webhook_deliveries SET attempts = 3 WHERE id <> %s", (first,))
    result = relay_round(db, publisher)
    assert (result.claimed, result.published, result.abandoned) == (2, 1, 1)
    rows = {d["id"]: d for d in deliveries(db)}
    assert rows[first]["status"] == "failed"
    assert rows[first]["last_error"] == "no worker attempted it within 24 hours"


def test_the_relay_runs_the_webhook_round_as_periodic_work(
    client: FlaskClient,
    db: psycopg.Connection,
    tenant: TenantKey,
    settings: Settings,
) -> None:
    create_webhook(client, tenant, "https://localhost/")
    record_outcome(db, insert_mail(db, tenant.tenant_id))
    relay = Relay(settings)
    try:
        relay._run_periodic()
    finally:
        relay._close()
    assert [d["dispatch_count"] for d in deliveries(db)] == [1]
    assert [h["task"] for h, _ in take_messages(settings)] == [DELIVER_WEBHOOK_TASK]


# --- end to end ---------------------------------------------------------------------


@pytest.mark.e2e
def test_a_mail_sent_through_the_pipeline_is_reported_to_the_webhook(
    procs: Processes, smtp_sink: SmtpSink, db: psycopg.Connection, receiver: Receiver
) -> None:
    port = free_port()
    procs.api(port)
    procs.relay()
    procs.worker()
    auth = {"Authorization": f"Bearer {new_key(procs)}"}
    api = f"http://127.0.0.1:{port}/v1"
    status, webhook = http(
        "POST", f"{api}/webhooks", {"url": receiver.url, "events": ["sent"]}, auth
    )
    assert status == 201, webhook
    receiver.statuses = [500]  # the first attempt fails; the retry is made due at once below
    mail = {"from": "a@example.com", "to": ["b@example.org"], "subject": "Hi", "text": "Hi"}
    status, accepted = http("POST", f"{api}/mails", {**mail, "tags": ["e2e"]}, auth)
    assert status == 202, accepted

    smtp_sink.wait_for(1, timeout=30)
    receiver.wait_for(1, timeout=30)
    wait_until(lambda: db.execute("SELECT attempts FROM webhook_deliveries").fetchone() == (1,), 10)
    wait_until(
        lambda: (
            db.execute(
                "UPDATE webhook_deliveries SET available_at = now()"
                " WHERE status = 'pending' AND last_status_code = 500 RETURNING id"
            ).fetchone()
            is not None
        ),
        10,
    )
    (first, second) = receiver.wait_for(2, timeout=30)
    assert first.body == second.body
    assert second.json()["type"] == "sent" and second.json()["mail_id"] == accepted["id"]
    assert second.json()["tags"] == ["e2e"]
    signatures.verify(
        webhook["secret"], second.headers[signatures.HEADER], second.body, time.time()
    )
    wait_until(
        lambda: db.execute("SELECT status FROM webhook_deliveries").fetchone() == ("delivered",),
        10,
    )
