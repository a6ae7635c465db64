"""API key scopes, and create-key / revoke-key / list-keys through the real console script."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from flask import Blueprint, Flask
from flask.testing import FlaskClient

from ingest_api.api_keys import display_prefix, key_digest, new_api_key
from ingest_api.auth import KEY_CACHE_SECONDS, authenticated_otherwise
from shared.config import Settings
from shared.queries import QUERIES
from tests.conftest import TenantKey, make_app

BIN = Path(sys.executable).parent

MAIL = {
    "from": "Alice <alice@example.com>",
    "to": ["bob@example.org"],
    "subject": "Hello",
    "text": "Hi Bob",
}


def add_key(db: psycopg.Connection, tenant: TenantKey, scopes: list[str]) -> str:
    key = new_api_key()
    db.execute(
        QUERIES["insert_api_key_with_scopes"],
        {
            "id": uuid.uuid4(),
            "tenant_id": tenant.tenant_id,
            "key_prefix": display_prefix(key),
            "key_hash": key_digest(key),
            "scopes": scopes,
        },
    )
    return key


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def ingest_api(database_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "MAILROOM_DATABASE_URL": database_url}
    return subprocess.run(
        [str(BIN / "ingest-api"), *args], env=env, capture_output=True, text=True, timeout=60
    )


@pytest.fixture
def fresh_client(settings: Settings) -> Iterator[FlaskClient]:
    """A second app: its own key cache, as another API process would have."""
    app = make_app(settings)
    yield app.test_client()
    app.extensions["mailroom.pool"].close()


def mail_count(db: psycopg.Connection) -> int:
    row = db.execute("SELECT count(*) FROM mails").fetchone()
    assert row is not None
    return int(row[0])


def test_a_key_without_send_cannot_send(
    client: FlaskClient, tenant: TenantKey, db: psycopg.Connection
) -> None:
    read_only = add_key(db, tenant, ["read"])
    response = client.post("/v1/mails", json=MAIL, headers=bearer(read_only))
    assert response.status_code == 403
    assert response.mimetype == "application/problem+json"
    body = response.get_json()
    assert body["status"] == 403
    assert body["title"] == "Forbidden"
    assert "'send'" in body["detail"]
    assert body["request_id"] == response.headers["X-Request-Id"]
    assert mail_count(db) == 0


def test_a_key_without_read_cannot_read(
    client: FlaskClient, tenant: TenantKey, db: psycopg.Connection
) -> None:
    send_only = add_key(db, tenant, ["send"])
    response = client.post("/v1/mails", json=MAIL, headers=bearer(send_only))
    assert response.status_code == 202
    mail_id = response.get_json()["id"]
    response = client.get(f"/v1/mails/{mail_id}", headers=bearer(send_only))
    assert response.status_code == 403
    assert "'read'" in response.get_json()["detail"]
    # The tenant's key with both scopes reads the same mail.
    assert client.get(f"/v1/mails/{mail_id}", headers=bearer(tenant.key)).status_code == 200


def test_a_key_without_scopes_is_still_authenticated_but_refused(
    client: FlaskClient, tenant: TenantKey, db: psycopg.Connection
) -> None:
    no_scopes = add_key(db, tenant, [])
    assert client.post("/v1/mails", json=MAIL, headers=bearer(no_scopes)).status_code == 403
    assert client.get(f"/v1/mails/{uuid.uuid4()}", headers=bearer(no_scopes)).status_code == 403


def test_existing_keys_keep_both_scopes(db: psycopg.Connection, tenant: TenantKey) -> None:
    row = db.execute(
        "SELECT scopes FROM api_keys WHERE tenant_id = %s", (tenant.tenant_id,)
    ).fetchone()
    assert row == (["send", "read"],)


def test_every_v1_route_authenticates_before_validating_the_body(client: FlaskClient) -> None:
    response = client.post("/v1/mails", json={"not": "a mail"})
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == "Bearer"


def test_create_key_with_a_scope_then_list_and_revoke(
    database_url: str, tenant: TenantKey, client: FlaskClient, fresh_client: FlaskClient
) -> None:
    created = ingest_api(database_url, "create-key", tenant.name, "--scope", "read")
    assert created.returncode == 0, created.stderr
    assert "scopes: read" in created.stdout
    key = created.stdout.strip().splitlines()[-1]
    assert key.startswith("mr_")

    assert client.post("/v1/mails", json=MAIL, headers=bearer(key)).status_code == 403
    assert client.get(f"/v1/mails/{uuid.uuid4()}", headers=bearer(key)).status_code == 404

    listed = ingest_api(database_url, "list-keys", tenant.name)
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.strip().splitlines()
    assert lines[0].split() == ["PREFIX", "SCOPES", "CREATED", "REVOKED"]
    assert [line.split()[:2] for line in lines[1:]] == [
        [f"{display_prefix(tenant.key)}…", "send,read"],
        [f"{display_prefix(key)}…", "read"],
    ]
    assert all(line.endswith("-") for line in lines[1:])
    assert key not in listed.stdout

    # Revoke by the display prefix exactly as create-key printed it (with the ellipsis).
    revoked = ingest_api(database_url, "revoke-key", f"{display_prefix(key)}…")
    assert revoked.returncode == 0, revoked.stderr
    assert f"revoked key {display_prefix(key)}" in revoked.stdout
    assert f"refuse it within {KEY_CACHE_SECONDS:g} s" in revoked.stdout

    # A new process (its own key cache) refuses the key at once ...
    assert fresh_client.get(f"/v1/mails/{uuid.uuid4()}", headers=bearer(key)).status_code == 401
    # ... and this one once its cache entry is gone.
    client.application.extensions["mailroom.key_cache"].clear()
    assert client.get(f"/v1/mails/{uuid.uuid4()}", headers=bearer(key)).status_code == 401
    # The tenant's other key still works.
    assert fresh_client.post("/v1/mails", json=MAIL, headers=bearer(tenant.key)).status_code == 202

    listed = ingest_api(database_url, "list-keys", tenant.name).stdout.strip().splitlines()
    assert listed[1].endswith("-")
    assert not listed[2].endswith("-")


def test_revoke_key_by_the_whole_key(
    database_url: str, tenant: TenantKey, app: Flask, db: psycopg.Connection
) -> None:
    client = app.test_client()
    assert client.post("/v1/mails", json=MAIL, headers=bearer(tenant.key)).status_code == 202
    result = ingest_api(database_url, "revoke-key", tenant.key)
    assert result.returncode == 0, result.stderr
    app.extensions["mailroom.key_cache"].clear()
    assert client.post("/v1/mails", json=MAIL, headers=bearer(tenant.key)).status_code == 401
    assert mail_count(db) == 1

    again = ingest_api(database_url, "revoke-key", tenant.key)
    assert again.returncode == 0, again.stderr
    assert "already revoked" in again.stdout


def test_revoke_key_refuses_a_prefix_that_several_keys_share(
    database_url: str, tenant: TenantKey, db: psycopg.Connection
) -> None:
    shared_prefix = display_prefix(tenant.key)
    twin = shared_prefix + "-a-different-key-with-the-same-prefix"
    db.execute(
        QUERIES["insert_api_key_with_scopes"],
        {
            "id": uuid.uuid4(),
            "tenant_id": tenant.tenant_id,
            "key_prefix": shared_prefix,
            "key_hash": key_digest(twin),
            "scopes": ["send"],
        },
    )
    result = ingest_api(database_url, "revoke-key", shared_prefix)
    assert result.returncode == 1
    assert "2 unrevoked keys" in result.stderr
    assert "Give the whole key" in result.stderr
    assert db.execute("SELECT count(*) FROM api_keys WHERE revoked_at IS NULL").fetchone() == (2,)

    # The whole key picks one of them.
    assert ingest_api(database_url, "revoke-key", twin).returncode == 0
    assert db.execute("SELECT key_hash FROM api_keys WHERE revoked_at IS NULL").fetchall() == [
        (key_digest(tenant.key),)
    ]


@pytest.mark.parametrize("argument", ["mr_nothin", "mr_nothing-like-any-key-at-all"])
def test_revoke_key_says_when_nothing_matches(
    database_url: str, tenant: TenantKey, argument: str
) -> None:
    result = ingest_api(database_url, "revoke-key", argument)
    assert result.returncode == 1
    assert "no API key matches" in result.stderr


@pytest.mark.parametrize("argument", ["mr_", "abc", "x" * 40])
def test_revoke_key_refuses_what_is_neither_a_key_nor_a_prefix(
    database_url: str, argument: str
) -> None:
    result = ingest_api(database_url, "revoke-key", argument)
    assert result.returncode == 1
    assert "full key or its display prefix" in result.stderr


def test_create_key_and_list_keys_name_an_unknown_tenant(database_url: str) -> None:
    for command in (["create-key", "nobody"], ["list-keys", "nobody"]):
        result = ingest_api(database_url, *command)
        assert result.returncode == 1
        assert "no tenant named 'nobody'" in result.stderr


def test_create_key_refuses_an_unknown_scope(database_url: str, tenant: TenantKey) -> None:
    result = ingest_api(database_url, "create-key", tenant.name, "--scope", "admin")
    assert result.returncode == 2
    assert "admin" in result.stderr


def test_v1_routes_need_a_key_unless_they_authenticate_otherwise(
    settings: Settings, tenant: TenantKey
) -> None:
    forgetful = Blueprint("test_forgetful", __name__, url_prefix="/v1")
    forgetful.add_url_rule("/forgetful", "view", lambda: {"tenant": "nobody checked"})
    signed = authenticated_otherwise(Blueprint("test_signed", __name__, url_prefix="/v1"))
    signed.add_url_rule("/signed", "view", lambda: {"checked": "by its own signature"})
    app = make_app(settings)
    try:
        app.register_blueprint(forgetful)
        app.register_blueprint(signed)
        client = app.test_client()
        assert client.get("/v1/forgetful").status_code == 401
        assert client.get("/v1/forgetful", headers=bearer(tenant.key)).status_code == 200
        assert client.get("/v1/signed").status_code == 200
    finally:
        app.extensions["mailroom.pool"].close()
