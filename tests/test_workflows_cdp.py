"""CDP workflows and signed CDP events, against a real database."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import psycopg
import pytest
from flask import Flask
from flask.testing import FlaskClient

from ingest_api.ingest import IngestTransaction
from shared import signatures
from shared.queries import QUERIES
from tests.conftest import TenantKey
from tests.test_api import auth, counts
from tests.test_api_mails import post
from tests.test_campaigns import create

SECRET = "s3cret-" + "ab" * 16
OTHER_SECRET = "other-" + "cd" * 16

EVENT: dict[str, Any] = {
    "type": "track",
    "event": "Order Completed",
    "userId": "u-1",
    "messageId": "msg-1",
    "timestamp": "2024-05-01T12:00:00.000Z",
    "properties": {"plan": "pro", "total": 42, "first_name": "Ann"},
    "context": {"traits": {"email": "ann@example.org", "name": "Ann Lee", "plan": "free"}},
    "integrations": {"All": True},
    "_metadata": {"bundled": ["Segment.io"]},
}


def set_secret(db: psycopg.Connection, tenant: TenantKey, secret: str = SECRET) -> None:
    db.execute(QUERIES["set_webhook_secret"], {"name": tenant.name, "secret": secret})


def send_event(
    client: FlaskClient,
    tenant: TenantKey,
    event: Any = None,
    *,
    secret: str = SECRET,
    timestamp: int | None = None,
    tenant_id: str | None = None,
    headers: dict[str, str] | None = None,
):
    body = json.dumps(EVENT if event is None else event).encode()
    signed_at = int(time.time()) if timestamp is None else timestamp
    return client.post(
        "/v1/cdp/events",
        data=body,
        content_type="application/json",
        headers={
            "X-Mailroom-Tenant": tenant_id or str(tenant.tenant_id),
            "X-Mailroom-Signature": signatures.sign(secret, signed_at, body),
            **(headers or {}),
        },
    )


def workflow(client: FlaskClient, tenant: TenantKey, **fields: Any) -> Any:
    body = {"event": "Order Completed", "campaign": "welcome", **fields}
    response = post(client, tenant, body, "/v1/workflows")
    assert response.status_code == 201, response.get_json()
    return response.get_json()


def stored_events(db: psycopg.Connection) -> list[tuple[Any, ...]]:
    return db.execute(
        "SELECT tenant_id, message_id, event_name, payload, mail_ids, response FROM cdp_events"
        " ORDER BY received_at"
    ).fetchall()


# --- signatures -----------------------------------------------------------------


def test_sign_and_verify() -> None:
    body = b'{"a": 1}'
    header = signatures.sign("k", 1_700_000_000, body)
    assert header.startswith("t=1700000000,v1=")
    assert signatures.verify("k", header, body, now=1_700_000_100) == 1_700_000_000
    rotated = f"{header},v1={'0' * 64}"
    assert signatures.verify("k", rotated, body, now=1_700_000_000) == 1_700_000_000
    assert signatures.verify("k", f"t=1700000000,v1={'0' * 64},{header[13:]}", body, 1_700_000_000)
    for bad_header, now, reason in [
        (header, 1_700_000_301, "away from now"),
        (header, 1_699_999_699, "away from now"),
        (signatures.sign("other", 1_700_000_000, body), 1_700_000_000, "does not match"),
        ("v1=abc", 1_700_000_000, "must be"),
        ("t=soon,v1=abc", 1_700_000_000, "unix seconds"),
        ("t=1700000000,v1=é", 1_700_000_000, "does not match"),
        ("", 1_700_000_000, "must be"),
    ]:
        with pytest.raises(signatures.SignatureError, match=reason):
            signatures.verify("k", bad_header, body, now)
    with pytest.raises(signatures.SignatureError, match="does not match"):
        signatures.verify("k", header, body + b" ", 1_700_000_000)


# --- workflows ------------------------------------------------------------------


def test_create_list_and_delete_workflows(client: FlaskClient, tenant: TenantKey) -> None:
    create(client, tenant)
    first = workflow(client, tenant, property_filters={"plan": "pro", "vip": True, "n": 1})
    assert first["event"] == "Order Completed"
    assert first["campaign"] == "welcome"
    assert first["property_filters"] == {"plan": "pro", "vip": True, "n": 1}
    second = workflow(client, tenant, event="Signed Up")
    listed = client.get("/v1/workflows", headers=auth(tenant)).get_json()["workflows"]
    assert [w["id"] for w in listed] == [first["id"], second["id"]]
    assert client.delete(f"/v1/workflows/{first['id']}", headers=auth(tenant)).status_code == 204
    assert client.delete(f"/v1/workflows/{first['id']}", headers=auth(tenant)).status_code == 404
    assert client.delete("/v1/workflows/not-a-uuid", headers=auth(tenant)).status_code == 404
    listed = client.get("/v1/workflows", headers=auth(tenant)).get_json()["workflows"]
    assert [w["id"] for w in listed] == [second["id"]]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"event": "X", "campaign": "nope"}, "campaign"),
        ({"event": "", "campaign": "welcome"}, "event"),
        (
            {"event": "X", "campaign": "welcome", "property_filters": {"a": {"b": 1}}},
            "property_filters",
        ),
        ({"event": "X", "campaign": "welcome", "property_filters": {"a": [1]}}, "property_filters"),
        ({"event": "X", "campaign": "welcome", "extra": 1}, "extra"),
    ],
)
def test_invalid_workflows_are_422(
    client: FlaskClient, tenant: TenantKey, db: psycopg.Connection, body: Any, field: str
) -> None:
    create(client, tenant)
    response = post(client, tenant, body, "/v1/workflows")
    assert response.status_code == 422
    assert field in response.get_json()["errors"]
    assert db.execute("SELECT count(*) FROM workflows").fetchone() == (0,)


def test_a_tenant_never_sees_or_uses_another_tenants_workflows(
    client: FlaskClient, tenant: TenantKey, other_tenant: TenantKey, db: psycopg.Connection
) -> None:
    create(client, tenant)
    mine = workflow(client, tenant)
    # another tenant cannot point a workflow at my campaign, list mine or delete mine
    response = post(client, other_tenant, {"event": "X", "campaign": "welcome"}, "/v1/workflows")
    assert response.status_code == 422
    assert client.get("/v1/workflows", headers=auth(other_tenant)).get_json() == {"workflows": []}
    deleted = client.delete(f"/v1/workflows/{mine['id']}", headers=auth(other_tenant))
    assert deleted.status_code == 404
    assert db.execute("SELECT count(*) FROM workflows").fetchone() == (1,)

    # the other tenant's event of the same name does not trigger my workflow
    set_secret(db, other_tenant, OTHER_SECRET)
    response = send_event(client, other_tenant, secret=OTHER_SECRET)
    assert response.status_code == 202, response.get_json()
    assert response.get_json()["mails"] == []
    assert counts(db)[0] == 0
    # and the events each tenant lists are its own
    set_secret(db, tenant)
    assert send_event(client, tenant).status_code == 202
    mine_listed = client.get("/v1/cdp/events", headers=auth(tenant)).get_json()["events"]
    theirs_listed = client.get("/v1/cdp/events", headers=auth(other_tenant)).get_json()["events"]
    assert len(mine_listed) == len(theirs_listed) == 1
    assert mine_listed[0]["id"] != theirs_listed[0]["id"]
    assert len(mine_listed[0]["mail_ids"]) == 1
    assert theirs_listed[0]["mail_ids"] == []


# --- CDP events -----------------------------------------------------------------


def test_a_signed_event_creates_the_workflows_mails_and_is_stored_with_them(
    client: FlaskClient, tenant: TenantKey, db: psycopg.Connection
) -> None:
    set_secret(db, tenant)
    create(client, tenant)
    rule = workflow(client, tenant, property_filters={"plan": "pro"})
    response = send_event(client, tenant)
    assert response.status_code == 202, response.get_json()
    answer = response.get_json()
    assert answer["message_id"] == "msg-1"
    assert answer["accepted"] == 1
    assert answer["failed"] == []
    [mail] = answer["mails"]
    assert mail["email"] == "ann@example.org"
    assert mail["campaign"] == "welcome"
    assert mail["workflow_id"] == rule["id"]

    row = db.execute(
        "SELECT m.request, m.stream, m.source, m.campaign_key, m.metadata, o.queue"
        " FROM mails m JOIN outbox o ON o.mail_id = m.id WHERE m.id = %s",
        (mail["id"],),
    ).fetchone()
    assert row is not None
    request, stream, source, campaign_key, metadata, queue = row
    assert (stream, source, campaign_key, queue) == ("campaign", "cdp", "welcome", "campaign")
    assert request["to"] == [{"name": "Ann Lee", "email": "ann@example.org"}]
    assert request["subject"] == "Welcome, Ann!"
    # properties win over traits ("pro", not "free")
    assert request["text"] == "Hi Ann, you are on pro (ann@example.org)."
    assert metadata == {"cdp_message_id": "msg-1", "workflow_id": rule["id"], "campaign": "welcome"}

    [event] = stored_events(db)
    tenant_id, message_id, event_name, payload, mail_ids, stored_answer = event
    assert (tenant_id, message_id, event_name) == (tenant.tenant_id, "msg-1", "Order Completed")
    assert payload == EVENT  # unknown fields (integrations, _metadata) are kept
    assert [str(i) for i in mail_ids] == [mail["id"]]
    assert stored_answer == answer
    assert answer["event_id"] == str(db.execute("SELECT id FROM cdp_events").fetchone()[0])


def test_an_event_no_workflow_matches_is_stored_without_mail(
    client: FlaskClient, tenant: TenantKey, db: psycopg.Connection
) -> None:
    set_secret(db, tenant)
    create(client, tenant)
    workflow(client, tenant, event="Signed Up")
    response = send_event(client, tenant)
    assert response.status_code == 202
    assert response.get_json()["mails"] == []
    assert response.get_json()["ignored"] == "no workflow matches this event"
    assert len(stored_events(db)) == 1
    assert counts(db) == (0, 0, 0)


def test_property_filters_must_all_equal_top_level_properties(
    client: FlaskClient, tenant: TenantKey, db: psycopg.Connection
) -> None:
    set_secret(db, tenant)
    create(client, tenant)
    matching = workflow(client, tenant, property_filters={"plan": "pro", "total": 42})
    workflow(client, tenant, property_filters={"plan": "pro", "total": 43})
    workflow(client, tenant, property_filters={"plan": "free"})  # "free" is a trait, not a property
    workflow(client, tenant, property_filters={"total": "42"})  # a string is not the number
    workflow(client, tenant, property_filters={"missing": None})  # absent is not null
    response = send_event(client, tenant)
    assert response.status_code == 202
    assert [m["workflow_id"] for m in response.get_json()["mails"]] == [matching["id"]]
    assert counts(db)[0] == 1


def test_a_rule_that_cannot_render_is_reported_and_stored_and_others_still_send(
    client: FlaskClient, tenant: TenantKey, db: psycopg.Connection
) -> None:
    set_secret(db, tenant)
    create(client, tenant)
    create(client, tenant, key="needs-coupon", subject="Your coupon {{ coupon }}")
    good = workflow(client, tenant)
    bad = workflow(client, tenant, campaign="needs-coupon")
    response = send_event(client, tenant)
    assert response.status_code == 202
    answer = response.get_json()
    assert [m["workflow_id"] for m in answer["mails"]] == [good["id"]]
    assert answer["failed"] == [
        {
            "workflow_id": bad["id"],
            "campaign": "needs-coupon",
            "errors": {"subject": ["'coupon' is undefined"]},
        }
    ]
    [event] = stored_events(db)
    assert event[5]["failed"] == answer["failed"]
    assert counts(db)[0] == 1


def test_an_event_without_an_email_is_stored_with_the_failure(
    client: FlaskClient, tenant: TenantKey, db: psycopg.Connection
) -> None:
    set_secret(db, tenant)
    create(client, tenant)
    workflow(client, tenant)
    anonymous = {**EVENT, "context": {}, "messageId": "anon"}
    response = send_event(client, tenant, anonymous)
    assert response.status_code == 202
    assert response.get_json()["failed"][0]["errors"] == {
        "email": ["the event has no context.traits.email or properties.email"]
    }
    # properties.email is the fallback
    with_property = {**anonymous, "messageId": "anon-2"}
    with_property["properties"] = {**EVENT["properties"], "email": "bob@example.org"}
    response = send_event(client, tenant, with_property)
    assert response.get_json()["mails"][0]["email"] == "bob@example.org"
    assert len(stored_events(db)) == 2
    assert counts(db)[0] == 1


def test_the_same_message_id_twice_returns_the_same_answer_and_one_set_of_mails(
    client: FlaskClient, tenant: TenantKey, db: psycopg.Connection
) -> None:
    set_secret(db, tenant)
    create(client, tenant)
    workflow(client, tenant)
    first = send_event(client, tenant)
    again = send_event(client, tenant, {**EVENT, "timestamp": "2024-05-01T12:00:05.000Z"})
    assert first.status_code == again.status_code == 202
    assert first.get_json() == again.get_json()
    assert len(stored_events(db)) == 1
    assert counts(db)[0] == 1
    # another messageId is another event
    assert send_event(client, tenant, {**EVENT, "messageId": "msg-2"}).get_json()["accepted"] == 1
    assert counts(db)[0] == 2


def test_the_idempotency_key_is_honoured_too(
    client: FlaskClient, tenant: TenantKey, db: psycopg.Connection
) -> None:
    set_secret(db, tenant)
    create(client, tenant)
    workflow(client, tenant)
    first = send_event(client, tenant, headers={"Idempotency-Key": "k1"})
    again = send_event(client, tenant, headers={"Idempotency-Key": "k1"})
    assert first.get_json() == again.get_json()
    assert again.headers["Idempotent-Replayed"] == "true"
    assert counts(db)[0] == 1


@pytest.mark.parametrize(
    "case", ["wrong secret", "stale", "future", "wrong tenant", "unknown tenant", "no secret",
             "bad tenant id", "no signature", "tampered"],
)  # fmt: skip
def test_unsigned_or_badly_signed_events_are_401_and_store_nothing(
    client: FlaskClient,
    tenant: TenantKey,
    other_tenant: TenantKey,
    db: psycopg.Connection,
    case: str,
) -> None:
    set_secret(db, tenant)
    set_secret(db, other_tenant, OTHER_SECRET)
    create(client, tenant)
    workflow(client, tenant)
    now = int(time.time())
    if case == "wrong secret":
        response = send_event(client, tenant, secret=OTHER_SECRET)
    elif case == "stale":
        response = send_event(client, tenant, timestamp=now - 301)
    elif case == "future":
        response = send_event(client, tenant, timestamp=now + 301)
    elif case == "wrong tenant":  # signed by acme, presented as globex
        response = send_event(client, tenant, tenant_id=str(other_tenant.tenant_id))
    elif case == "unknown tenant":
        response = send_event(client, tenant, tenant_id=str(uuid.uuid4()))
    elif case == "no secret":
        db.execute("UPDATE tenants SET webhook_secret = NULL")
        response = send_event(client, tenant)
    elif case == "bad tenant id":
        response = send_event(client, tenant, tenant_id="acme")
    elif case == "no signature":
        response = client.post(
            "/v1/cdp/events", json=EVENT, headers={"X-Mailroom-Tenant": str(tenant.tenant_id)}
        )
    else:
        body = json.dumps(EVENT).encode()
        header = signatures.sign(SECRET, now, body)
        response = client.post(
            "/v1/cdp/events",
            data=body.replace(b"pro", b"max"),
            content_type="application/json",
            headers={"X-Mailroom-Tenant": str(tenant.tenant_id), "X-Mailroom-Signature": header},
        )
    assert response.status_code == 401, response.get_json()
    assert response.mimetype == "application/problem+json"
    assert stored_events(db) == []
    assert counts(db) == (0, 0, 0)


def test_an_api_key_is_not_a_signature(
    client: FlaskClient, tenant: TenantKey, db: psycopg.Connection
) -> None:
    set_secret(db, tenant)
    response = client.post("/v1/cdp/events", json=EVENT, headers=auth(tenant))
    assert response.status_code == 401
    assert stored_events(db) == []


def test_signed_but_invalid_events_are_refused_and_store_nothing(
    client: FlaskClient, tenant: TenantKey, db: psycopg.Connection
) -> None:
    set_secret(db, tenant)
    no_message_id = {k: v for k, v in EVENT.items() if k != "messageId"}
    assert send_event(client, tenant, no_message_id).status_code == 422
    assert send_event(client, tenant, {**EVENT, "event": None}).status_code == 422
    assert send_event(client, tenant, [EVENT]).status_code == 422
    assert send_event(client, tenant, {**EVENT, "userId": "\u0000"}).status_code == 422
    assert stored_events(db) == []


def test_other_event_types_are_stored_and_trigger_nothing(
    client: FlaskClient, tenant: TenantKey, db: psycopg.Connection
) -> None:
    set_secret(db, tenant)
    create(client, tenant)
    workflow(client, tenant)
    identify = {"type": "identify", "messageId": "id-1", "traits": {"email": "a@example.org"}}
    response = send_event(client, tenant, identify)
    assert response.status_code == 202
    assert response.get_json()["ignored"] == "only track events trigger workflows"
    assert stored_events(db)[0][3] == identify
    assert counts(db)[0] == 0


def test_listing_events_finds_one_by_message_id(
    client: FlaskClient, tenant: TenantKey, db: psycopg.Connection
) -> None:
    set_secret(db, tenant)
    for message_id in ("a", "b", "c"):
        assert send_event(client, tenant, {**EVENT, "messageId": message_id}).status_code == 202
    events = client.get("/v1/cdp/events?limit=2", headers=auth(tenant)).get_json()["events"]
    assert [e["message_id"] for e in events] == ["c", "b"]
    found = client.get("/v1/cdp/events?message_id=a", headers=auth(tenant)).get_json()["events"]
    assert [e["payload"]["messageId"] for e in found] == ["a"]
    assert found[0]["response"]["ignored"] == "no workflow matches this event"


# --- rotate-webhook-secret ------------------------------------------------------


def test_rotate_webhook_secret_prints_a_new_secret_that_signs_events(
    client: FlaskClient, tenant: TenantKey, database_url: str, db: psycopg.Connection
) -> None:
    command = Path(sys.executable).parent / "ingest-api"
    env = {**os.environ, "MAILROOM_DATABASE_URL": database_url}

    def rotate(name: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(command), "rotate-webhook-secret", name],
            env=env, capture_output=True, text=True, timeout=60,
        )  # fmt: skip

    first = rotate(tenant.name)
    assert first.returncode == 0, first.stderr
    secret = first.stdout.strip().splitlines()[-1]
    assert len(secret) == 64
    assert str(tenant.tenant_id) in first.stdout
    assert send_event(client, tenant, secret=secret).status_code == 202

    second = rotate(tenant.name)
    new_secret = second.stdout.strip().splitlines()[-1]
    assert new_secret != secret
    stale = send_event(client, tenant, {**EVENT, "messageId": "m2"}, secret=secret)
    assert stale.status_code == 401
    assert (
        send_event(client, tenant, {**EVENT, "messageId": "m2"}, secret=new_secret).status_code
        == 202
    )

    unknown = rotate("nobody")
    assert unknown.returncode != 0
    assert "no tenant named 'nobody'" in unknown.stderr


def test_concurrent_deliveries_of_one_message_id_create_one_event_and_one_mail(
    app: Flask, tenant: TenantKey, db: psycopg.Connection
) -> None:
    set_secret(db, tenant)
    with app.test_client() as setup_client:
        create(setup_client, tenant)
        workflow(setup_client, tenant)
    answers: list[tuple[int, Any]] = []
    barrier = threading.Barrier(6)

    def deliver() -> None:
        with app.test_client() as own_client:
            barrier.wait()
            response = send_event(own_client, tenant)
            answers.append((response.status_code, response.get_json()))

    threads = [threading.Thread(target=deliver) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert len(answers) == 6
    assert {status for status, _ in answers} == {202}
    assert len({json.dumps(body, sort_keys=True) for _, body in answers}) == 1
    assert len(stored_events(db)) == 1
    assert counts(db) == (1, 1, 1)


def test_the_event_and_its_mails_commit_together_or_not_at_all(
    client: FlaskClient, tenant: TenantKey, db: psycopg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    set_secret(db, tenant)
    create(client, tenant)
    workflow(client, tenant)

    def failing_add_mails(self: IngestTransaction, mails: Any) -> list[uuid.UUID]:
        raise psycopg.OperationalError("the database went away")

    monkeypatch.setattr(IngestTransaction, "add_mails", failing_add_mails)
    response = send_event(client, tenant)
    assert response.status_code == 503
    assert stored_events(db) == []  # the CDP retries; nothing half-done is left behind
    monkeypatch.undo()
    assert send_event(client, tenant).get_json()["accepted"] == 1
    assert counts(db)[0] == 1
