"""POST /v1/mails options, batch, idempotency, scheduling, cancel and listing,
through Flask's test client against a real database."""

from __future__ import annotations

import base64
import threading
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from flask import Flask
from flask.testing import FlaskClient

from outbox_relay.dispatch import DispatchPolicy, dispatch_round
from outbox_relay.publish import Publisher
from shared.config import Settings
from tests.conftest import TenantKey
from tests.factories import event_kinds, state_machine_off, status_of
from tests.test_api import MAIL, auth, counts


def post(
    client: FlaskClient, tenant: TenantKey, body: Any, path: str = "/v1/mails", **headers: str
):
    return client.post(path, json=body, headers={**auth(tenant), **headers})


def iso(moment: datetime) -> str:
    return moment.isoformat()


# --- idempotency -----------------------------------------------------------------


def test_a_retry_with_the_same_key_returns_the_first_answer(
    client: FlaskClient, tenant: TenantKey, db: psycopg.Connection
) -> None:
    first = post(client, tenant, MAIL, **{"Idempotency-Key": "order-42"})
    again = post(client, tenant, MAIL, **{"Idempotency-Key": "order-42"})
    assert first.status_code == again.status_code == 202
    assert first.get_json() == again.get_json()
    assert again.headers["Idempotent-Replayed"] == "true"
    assert counts(db)[0] == 1


def test_the_same_key_with_another_body_is_422(
    client: FlaskClient, tenant: TenantKey, db: psycopg.Connection
) -> None:
    assert post(client, tenant, MAIL, **{"Idempotency-Key": "k"}).status_code == 202
    response = post(client, tenant, {**MAIL, "subject": "Other"}, **{"Idempotency-Key": "k"})
    assert response.status_code == 422
    assert "Idempotency-Key" in response.get_json()["errors"]
    assert counts(db)[0] == 1


def test_keys_are_per_tenant(
    client: FlaskClient, tenant: TenantKey, other_tenant: TenantKey, db: psycopg.Connection
) -> None:
    other_mail = {**MAIL, "from": "x@globex.com"}
    assert post(client, tenant, MAIL, **{"Idempotency-Key": "same"}).status_code == 202
    second = post(client, other_tenant, other_mail, **{"Idempotency-Key": "same"})
    assert second.status_code == 202, second.get_json()
    assert counts(db)[0] == 2


def test_concurrent_requests_with_one_key_create_one_result(
    app: Flask, tenant: TenantKey, db: psycopg.Connection
) -> None:
    answers: list[tuple[int, Any]] = []
    barrier = threading.Barrier(6)

    def send() -> None:
        with app.test_client() as own_client:
            barrier.wait()
            response = post(own_client, tenant, MAIL, **{"Idempotency-Key": "race"})
            answers.append((response.status_code, response.get_json()))

    threads = [threading.Thread(target=send) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert [status for status, _ in answers] == [202] * 6
    assert len({body["id"] for _, body in answers}) == 1
    assert counts(db)[0] == 1


def test_a_client_error_is_not_remembered(client: FlaskClient, tenant: TenantKey) -> None:
    assert post(client, tenant, {**MAIL, "to": []}, **{"Idempotency-Key": "fix"}).status_code == 422
    assert post(client, tenant, MAIL, **{"Idempotency-Key": "fix"}).status_code == 202


# --- batch -----------------------------------------------------------------------


def test_batch_accepts_valid_items_and_reports_invalid_ones(
    client: FlaskClient, tenant: TenantKey, db: psycopg.Connection
) -> None:
    mails = [MAIL, {**MAIL, "to": ["not an address"]}, {**MAIL, "from": "a@elsewhere.test"}, MAIL]
    response = post(client, tenant, {"mails": mails}, "/v1/mails/batch")
    assert response.status_code == 202
    body = response.get_json()
    assert (body["accepted"], body["rejected"]) == (2, 2)
    assert [item["index"] for item in body["results"]] == [0, 1, 2, 3]
    assert "to" in body["results"][1]["errors"]
    assert "from" in body["results"][2]["errors"]
    ids = [uuid.UUID(body["results"][i]["id"]) for i in (0, 3)]
    assert counts(db) == (2, 2, 2)
    assert {status_of(db, mail_id) for mail_id in ids} == {"accepted"}


def test_batch_limits(client: FlaskClient, tenant: TenantKey, db: psycopg.Connection) -> None:
    assert post(client, tenant, {"mails": [MAIL] * 501}, "/v1/mails/batch").status_code == 422
    assert post(client, tenant, {"mails": []}, "/v1/mails/batch").status_code == 422
    all_bad = post(client, tenant, {"mails": [{**MAIL, "to": []}]}, "/v1/mails/batch")
    assert all_bad.status_code == 422
    assert "mails.0" in all_bad.get_json()["errors"]
    assert counts(db) == (0, 0, 0)


def test_batch_of_500_is_one_transaction(
    client: FlaskClient, tenant: TenantKey, db: psycopg.Connection
) -> None:
    response = post(client, tenant, {"mails": [MAIL] * 500}, "/v1/mails/batch")
    assert response.status_code == 202
    assert response.get_json()["accepted"] == 500
    assert counts(db) == (500, 500, 500)
    created = db.execute("SELECT count(DISTINCT xmin::text::bigint) FROM mails").fetchone()
    assert created == (1,), "every row written by the same transaction"


# --- scheduling, expiry, cancellation ---------------------------------------------


def test_send_at_schedules_the_mail_and_the_relay_waits(
    client: FlaskClient, tenant: TenantKey, db: psycopg.Connection, settings: Settings
) -> None:
    send_at = datetime.now(UTC) + timedelta(hours=2)
    response = post(client, tenant, {**MAIL, "send_at": iso(send_at)})
    assert response.get_json()["status"] == "scheduled"
    mail_id = uuid.UUID(response.get_json()["id"])
    available = db.execute(
        "SELECT available_at FROM outbox WHERE mail_id = %s", (mail_id,)
    ).fetchone()
    assert available is not None and abs((available[0] - send_at).total_seconds()) < 0.001
    publisher = Publisher(settings)
    try:
        assert dispatch_round(db, publisher, DispatchPolicy(10, 60)).claimed == 0
        db.execute("UPDATE outbox SET available_at = now()")  # the clock reaches send_at
        assert dispatch_round(db, publisher, DispatchPolicy(10, 60)).published == 1
    finally:
        publisher.close()
    assert status_of(db, mail_id) == "queued"
    assert event_kinds(db, mail_id) == ["scheduled", "queued"]


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"send_at": iso(datetime.now(UTC) + timedelta(days=31))}, "send_at"),
        ({"send_at": "tomorrow"}, "send_at"),
        ({"expires_at": iso(datetime.now(UTC) - timedelta(minutes=1))}, "expires_at"),
        (
            {"expires_at": iso(datetime.now(UTC) + timedelta(hours=1)), "ttl_seconds": 60},
            "ttl_seconds",
        ),
        ({"ttl_seconds": 0}, "ttl_seconds"),
        ({"stream": "bulk"}, "stream"),
        ({"tags": ["x"] * 11}, "tags"),
        ({"metadata": {"k": {"nested": True}}}, "metadata"),
    ],
)
def test_timing_and_labels_are_validated(
    client: FlaskClient, tenant: TenantKey, change: dict[str, Any], field: str
) -> None:
    response = post(client, tenant, {**MAIL, **change})
    assert response.status_code == 422
    assert field in response.get_json()["errors"]


def test_ttl_sets_expiry_and_the_relay_expires_instead_of_publishing(
    client: FlaskClient, tenant: TenantKey, db: psycopg.Connection, settings: Settings
) -> None:
    mail_id = uuid.UUID(post(client, tenant, {**MAIL, "ttl_seconds": 60}).get_json()["id"])
    expires = db.execute(
        "SELECT expires_at - created_at FROM mails WHERE id = %s", (mail_id,)
    ).fetchone()
    assert expires is not None and abs(expires[0].total_seconds() - 60) < 1
    db.execute("UPDATE mails SET expires_at = now() - interval '1 second'")
    publisher = Publisher(settings)
    try:
        result = dispatch_round(db, publisher, DispatchPolicy(10, 60))
    finally:
        publisher.close()
    assert (result.published, result.expired) == (0, 1)
    assert status_of(db, mail_id) == "expired"
    assert event_kinds(db, mail_id) == ["accepted", "expired"]
    assert db.execute("SELECT count(*) FROM outbox").fetchone() == (0,)


def test_cancel_before_sending_and_409_after(
    client: FlaskClient, tenant: TenantKey, other_tenant: TenantKey, db: psycopg.Connection
) -> None:
    later = iso(datetime.now(UTC) + timedelta(hours=1))
    mail_id = post(client, tenant, {**MAIL, "send_at": later}).get_json()["id"]
    assert client.post(f"/v1/mails/{mail_id}/cancel", headers=auth(other_tenant)).status_code == 404
    response = client.post(f"/v1/mails/{mail_id}/cancel", headers=auth(tenant))
    assert response.status_code == 200
    assert response.get_json() == {"id": mail_id, "status": "cancelled"}
    assert db.execute("SELECT count(*) FROM outbox").fetchone() == (0,)
    assert event_kinds(db, uuid.UUID(mail_id)) == ["scheduled", "cancelled"]

    sending_id = post(client, tenant, MAIL).get_json()["id"]
    with state_machine_off(db):
        db.execute("UPDATE mails SET status = 'sending' WHERE id = %s", (sending_id,))
    conflict = client.post(f"/v1/mails/{sending_id}/cancel", headers=auth(tenant))
    assert conflict.status_code == 409
    assert "sending" in conflict.get_json()["detail"]
    assert client.post(f"/v1/mails/{uuid.uuid4()}/cancel", headers=auth(tenant)).status_code == 404


# --- listing ------------------------------------------------------------------------


def test_list_filters_and_paginates_within_the_tenant(
    client: FlaskClient, tenant: TenantKey, other_tenant: TenantKey
) -> None:
    ids = [post(client, tenant, {**MAIL, "tags": ["receipt"]}).get_json()["id"] for _ in range(5)]
    post(client, tenant, {**MAIL, "tags": ["welcome"], "metadata": {"user": 7}})
    post(client, other_tenant, {**MAIL, "from": "x@globex.com", "tags": ["receipt"]})

    seen: list[str] = []
    cursor = None
    while True:
        query = {"tag": "receipt", "limit": 2, **({"cursor": cursor} if cursor else {})}
        page = client.get("/v1/mails", query_string=query, headers=auth(tenant)).get_json()
        seen += [mail["id"] for mail in page["mails"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert sorted(seen) == sorted(ids)
    assert len(seen) == len(set(seen))

    welcome = client.get("/v1/mails?tag=welcome", headers=auth(tenant)).get_json()["mails"]
    assert [mail["metadata"] for mail in welcome] == [{"user": 7}]
    assert client.get("/v1/mails?status=sent", headers=auth(tenant)).get_json()["mails"] == []
    future = iso(datetime.now(UTC) + timedelta(minutes=5))
    assert (
        client.get("/v1/mails", query_string={"since": future}, headers=auth(tenant)).get_json()[
            "mails"
        ]
        == []
    )
    assert client.get("/v1/mails?status=bogus", headers=auth(tenant)).status_code == 422
    assert client.get("/v1/mails?cursor=%%%", headers=auth(tenant)).status_code == 400


# --- attachments and streams -------------------------------------------------------------


def attachment(filename: str, data: bytes = b"hello", **extra: str) -> dict[str, str]:
    return {"filename": filename, "content": base64.b64encode(data).decode(), **extra}


def test_attachments_are_validated(client: FlaskClient, tenant: TenantKey) -> None:
    for bad, field in [
        (attachment("run.exe"), "filename"),
        (attachment("../etc/passwd"), "filename"),
        ({"filename": "a.txt", "content": "not base64!"}, "content"),
        (attachment("a.txt", content_type="text plain"), "content_type"),
    ]:
        response = post(client, tenant, {**MAIL, "attachments": [bad]})
        assert response.status_code == 422, bad
        assert field in response.get_json()["errors"]["attachments"]["0"], response.get_json()
    big = attachment("big.bin", b"x" * (7 * 1024 * 1024 + 10))
    assert (
        "attachments" in post(client, tenant, {**MAIL, "attachments": [big]}).get_json()["errors"]
    )


def test_attachments_and_stream_are_stored(
    client: FlaskClient, tenant: TenantKey, db: psycopg.Connection
) -> None:
    body = {**MAIL, "stream": "campaign", "attachments": [attachment("report.pdf")]}
    mail_id = post(client, tenant, body).get_json()["id"]
    request = db.execute("SELECT request FROM mails WHERE id = %s", (mail_id,)).fetchone()
    assert request is not None
    assert request[0]["attachments"][0]["content_type"] == "application/pdf"
    assert db.execute("SELECT queue FROM outbox").fetchone() == ("campaign",)


def test_oversized_body_is_413(client: FlaskClient, tenant: TenantKey) -> None:
    response = client.post(
        "/v1/mails",
        data=b"{" + b" " * (10 * 1024 * 1024) + b"}",
        headers={**auth(tenant), "Content-Type": "application/json"},
    )
    assert response.status_code == 413
    assert response.get_json()["status"] == 413


def test_text_that_postgres_cannot_store_is_a_422_not_a_503(
    client: FlaskClient, tenant: TenantKey, db: psycopg.Connection
) -> None:
    for bad in ("a\x00b", "\ud800"):
        response = post(client, tenant, {**MAIL, "text": bad})
        assert response.status_code == 422
        assert "text" in response.get_json()["errors"]
    assert counts(db) == (0, 0, 0)
