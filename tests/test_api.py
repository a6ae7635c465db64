"""The ingest API against a real database, through Flask's test client."""

from __future__ import annotations

import time
import uuid
from dataclasses import replace
from typing import Any

import psycopg
import pytest
from flask import Flask
from flask.testing import FlaskClient

from ingest_api.app import create_app
from shared.config import Settings
from tests.conftest import TenantKey
from tests.services import free_port

MAIL = {
    "from": "Alice <alice@example.com>",
    "to": ["bob@example.org"],
    "subject": "Hello",
    "text": "Hi Bob",
    "html": "<p>Hi Bob</p>",
}


def auth(tenant: TenantKey) -> dict[str, str]:
    return {"Authorization": f"Bearer {tenant.key}"}


def counts(db: psycopg.Connection) -> tuple[int, int, int]:
    row = db.execute(
        "SELECT (SELECT count(*) FROM mails), (SELECT count(*) FROM outbox),"
        " (SELECT count(*) FROM mail_events)"
    ).fetchone()
    assert row is not None
    return row


def test_accepted_mail_is_committed_with_outbox_row_and_event(
    client: FlaskClient, tenant: TenantKey, db: psycopg.Connection
) -> None:
    response = client.post("/v1/mails", json=MAIL, headers=auth(tenant))
    assert response.status_code == 202
    body = response.get_json()
    assert body["status"] == "accepted"
    mail_id = uuid.UUID(body["id"])
    mail = db.execute(
        "SELECT status, request, tenant_id FROM mails WHERE id = %s", (mail_id,)
    ).fetchone()
    assert mail is not None
    assert mail[0] == "accepted"
    assert mail[1]["from"] == {"name": "Alice", "email": "alice@example.com"}
    assert mail[1]["to"] == [{"name": None, "email": "bob@example.org"}]
    assert mail[2] == tenant.tenant_id
    assert db.execute("SELECT queue FROM outbox WHERE mail_id = %s", (mail_id,)).fetchall() == [
        ("transactional",)
    ]
    events = db.execute(
        "SELECT kind, detail FROM mail_events WHERE mail_id = %s", (mail_id,)
    ).fetchall()
    assert [kind for kind, _ in events] == ["accepted"]
    assert events[0][1]["request_id"] == response.headers["X-Request-Id"]


def test_get_shows_status_and_events(client: FlaskClient, tenant: TenantKey) -> None:
    mail_id = client.post("/v1/mails", json=MAIL, headers=auth(tenant)).get_json()["id"]
    response = client.get(f"/v1/mails/{mail_id}", headers=auth(tenant))
    assert response.status_code == 200
    body = response.get_json()
    assert body["id"] == mail_id
    assert body["status"] == "accepted"
    assert [event["kind"] for event in body["events"]] == ["accepted"]


def test_another_tenants_mail_is_not_found(
    client: FlaskClient, tenant: TenantKey, other_tenant: TenantKey
) -> None:
    mail_id = client.post("/v1/mails", json=MAIL, headers=auth(tenant)).get_json()["id"]
    response = client.get(f"/v1/mails/{mail_id}", headers=auth(other_tenant))
    assert response.status_code == 404
    assert response.get_json()["title"] == "Not Found"
    assert client.get("/v1/mails/not-a-uuid", headers=auth(tenant)).status_code == 404


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"from": "not an address"}, "from"),
        ({"to": []}, "to"),
        ({"to": ["bob@@example.org"]}, "to"),
        ({"subject": "Hello\r\nBcc: victim@example.net"}, "subject"),
        ({"subject": None}, "subject"),
        ({"text": None, "html": None}, "text"),
        ({"headers": {"Bcc": "victim@example.net"}}, "headers"),
        ({"headers": {"X-Tag": "a\nBcc: victim@example.net"}}, "headers"),
        ({"to": [f"user{i}@example.org" for i in range(51)]}, "to"),
        ({"attachmentz": []}, "attachmentz"),
        ({"reply_to": "a@b.example, c@d.example"}, "reply_to"),
    ],
)
def test_client_errors_are_422_naming_the_field(
    client: FlaskClient,
    tenant: TenantKey,
    db: psycopg.Connection,
    change: dict[str, Any],
    field: str,
) -> None:
    mail = {key: value for key, value in {**MAIL, **change}.items() if value is not None}
    response = client.post("/v1/mails", json=mail, headers=auth(tenant))
    assert response.status_code == 422
    assert response.mimetype == "application/problem+json"
    body = response.get_json()
    assert body["status"] == 422
    assert field in body["errors"], body
    assert "Traceback" not in response.get_data(as_text=True)
    assert counts(db) == (0, 0, 0)


def test_sender_outside_the_tenants_domains_is_refused(
    client: FlaskClient, tenant: TenantKey, db: psycopg.Connection
) -> None:
    response = client.post(
        "/v1/mails", json={**MAIL, "from": "ceo@bank.example"}, headers=auth(tenant)
    )
    assert response.status_code == 422
    assert "bank.example" in response.get_json()["errors"]["from"][0]
    assert counts(db) == (0, 0, 0)


def test_non_ascii_display_names_and_subjects_are_accepted(
    client: FlaskClient, tenant: TenantKey
) -> None:
    mail = {**MAIL, "from": "Zoë Ørsted <zoe@example.com>", "subject": "Grüße 👋"}
    assert client.post("/v1/mails", json=mail, headers=auth(tenant)).status_code == 202


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer mr_wrong"}, {"Authorization": "Basic abc"}],
)
def test_requests_without_a_valid_key_are_401(
    client: FlaskClient, headers: dict[str, str], db: psycopg.Connection
) -> None:
    response = client.post("/v1/mails", json=MAIL, headers=headers)
    assert response.status_code == 401
    assert response.get_json()["status"] == 401
    assert counts(db) == (0, 0, 0)


def test_malformed_json_is_a_client_error(client: FlaskClient, tenant: TenantKey) -> None:
    response = client.post(
        "/v1/mails", data="{not json", headers={**auth(tenant), "Content-Type": "application/json"}
    )
    assert response.status_code in (400, 422)
    assert response.get_json()["status"] == response.status_code


def test_health_and_readiness(client: FlaskClient) -> None:
    assert client.get("/healthz").get_json() == {"status": "ok"}
    response = client.get("/readyz")
    assert response.status_code == 200
    assert response.get_json()["database"] == "ok"


def test_openapi_document_is_generated(client: FlaskClient) -> None:
    document = client.get("/openapi.json").get_json()
    assert "/v1/mails" in document["paths"]
    assert "202" in document["paths"]["/v1/mails"]["post"]["responses"]


def test_unreachable_database_is_503_never_2xx(settings: Settings) -> None:
    closed = f"postgresql://postgres@127.0.0.1:{free_port()}/nothing"
    app = create_app(
        {"MAILROOM_SETTINGS": replace(settings, database_url=closed, db_connect_timeout=1)}
    )
    try:
        client = app.test_client()
        response = client.post(
            "/v1/mails", json=MAIL, headers={"Authorization": "Bearer mr_anything"}
        )
        assert response.status_code == 503
        assert response.headers["Retry-After"]
        assert "Traceback" not in response.get_data(as_text=True)
        assert client.get("/readyz").status_code == 503
        assert client.get("/healthz").status_code == 200
    finally:
        app.extensions["mailroom.pool"].close()


def test_mail_is_accepted_right_after_the_database_dropped_every_connection(
    client: FlaskClient, tenant: TenantKey, db: psycopg.Connection
) -> None:
    # What a database restart does to the API's pool: every idle connection is closed
    # by the server. The next request must get a live connection (202), not the dead
    # one (a 503 from an API whose database is up).
    for _ in range(3):
        assert client.post("/v1/mails", json=MAIL, headers=auth(tenant)).status_code == 202
    others = (
        "SELECT pid FROM pg_stat_activity"
        " WHERE datname = current_database() AND pid <> pg_backend_pid()"
    )
    terminated = db.execute(f"SELECT count(pg_terminate_backend(pid)) FROM ({others}) o").fetchone()
    assert terminated is not None and terminated[0] >= 1
    deadline = time.monotonic() + 10
    while db.execute(others).fetchall() and time.monotonic() < deadline:
        time.sleep(0.05)
    for _ in range(3):
        response = client.post("/v1/mails", json=MAIL, headers=auth(tenant))
        assert response.status_code == 202, response.get_json()
    assert counts(db) == (6, 6, 6)


@pytest.mark.parametrize("idempotency_key", [None, "order-20931"])
def test_failed_commit_is_500_and_writes_nothing(
    client: FlaskClient, tenant: TenantKey, db: psycopg.Connection, idempotency_key: str | None
) -> None:
    # A deferred constraint trigger fails at COMMIT, after every INSERT succeeded:
    # the exact moment a naive API would already have decided to answer 202. Without a
    # key the ingest statement runs alone in autocommit, with one in a transaction.
    db.execute(
        """
        CREATE FUNCTION refuse_at_commit() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN RAISE EXCEPTION 'commit refused for the test'; END; $$;
        CREATE CONSTRAINT TRIGGER refuse_at_commit AFTER INSERT ON mail_events
        DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION refuse_at_commit();
        """
    )
    key = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
    response = client.post("/v1/mails", json=MAIL, headers={**auth(tenant), **key})
    assert response.status_code == 500  # our bug, not an outage: 503 is for an unreachable database
    assert counts(db) == (0, 0, 0)
    assert db.execute("SELECT count(*) FROM idempotency_keys").fetchone() == (0,)


def test_accepting_mail_wakes_the_relays(
    client: FlaskClient, tenant: TenantKey, database_url: str
) -> None:
    with psycopg.connect(database_url, autocommit=True) as listener:
        listener.execute("LISTEN mailroom_outbox")
        assert client.post("/v1/mails", json=MAIL, headers=auth(tenant)).status_code == 202
        woken = list(listener.notifies(timeout=5, stop_after=1))
    assert [n.channel for n in woken] == ["mailroom_outbox"]


def test_a_revoked_key_stops_working_once_the_cache_expires(
    app: Flask, client: FlaskClient, tenant: TenantKey, db: psycopg.Connection
) -> None:
    assert client.post("/v1/mails", json=MAIL, headers=auth(tenant)).status_code == 202
    db.execute("UPDATE api_keys SET revoked_at = now() WHERE tenant_id = %s", (tenant.tenant_id,))
    app.extensions["mailroom.key_cache"].ttl = 0
    app.extensions["mailroom.key_cache"]._entries.clear()
    assert client.post("/v1/mails", json=MAIL, headers=auth(tenant)).status_code == 401
