"""Campaigns: stored templates, rendered at trigger time in the API, against a real database."""

from __future__ import annotations

import uuid
from typing import Any

import psycopg
import pytest
from flask.testing import FlaskClient

from shared.queries import QUERIES
from tests.conftest import TenantKey
from tests.test_api import auth, counts
from tests.test_api_mails import post

CAMPAIGN: dict[str, Any] = {
    "key": "welcome",
    "from": "Acme <hello@example.com>",
    "subject": "Welcome, {{ first_name }}!",
    "text": "Hi {{ first_name }}, you are on {{ plan }} ({{ recipient.email }}).",
    "html": "<p>Hi {{ first_name }}</p>",
    "headers": {"X-Campaign": "welcome-{{ plan }}"},
    "tags": ["onboarding"],
}


def create(client: FlaskClient, tenant: TenantKey, **changes: Any) -> Any:
    response = post(client, tenant, {**CAMPAIGN, **changes}, "/v1/campaigns")
    assert response.status_code == 201, response.get_json()
    return response.get_json()


def trigger(
    client: FlaskClient, tenant: TenantKey, body: Any, key: str = "welcome", **headers: str
):
    return post(client, tenant, body, f"/v1/campaigns/{key}/trigger", **headers)


def mail_rows(db: psycopg.Connection) -> list[tuple[Any, ...]]:
    return db.execute(
        "SELECT m.request, m.stream, m.source, m.campaign_key, m.tags, o.queue"
        " FROM mails m JOIN outbox o ON o.mail_id = m.id ORDER BY m.request->'to'->0->>'email'"
    ).fetchall()


# --- CRUD -----------------------------------------------------------------------


def test_create_read_list_update_delete(client: FlaskClient, tenant: TenantKey) -> None:
    created = create(client, tenant)
    assert created["key"] == "welcome"
    assert created["from"] == CAMPAIGN["from"]
    assert created["tags"] == ["onboarding"]
    assert created["reply_to"] is None

    got = client.get("/v1/campaigns/welcome", headers=auth(tenant))
    assert got.status_code == 200
    assert got.get_json()["subject"] == CAMPAIGN["subject"]

    create(client, tenant, key="another")
    listed = client.get("/v1/campaigns", headers=auth(tenant)).get_json()
    assert [c["key"] for c in listed["campaigns"]] == ["another", "welcome"]

    changed = {k: v for k, v in CAMPAIGN.items() if k != "key"} | {"subject": "New"}
    updated = client.put("/v1/campaigns/welcome", json=changed, headers=auth(tenant))
    assert updated.status_code == 200, updated.get_json()
    assert updated.get_json()["subject"] == "New"

    assert client.delete("/v1/campaigns/welcome", headers=auth(tenant)).status_code == 204
    assert client.get("/v1/campaigns/welcome", headers=auth(tenant)).status_code == 404
    assert client.delete("/v1/campaigns/welcome", headers=auth(tenant)).status_code == 404


def test_an_existing_key_is_409(client: FlaskClient, tenant: TenantKey) -> None:
    create(client, tenant)
    response = post(client, tenant, CAMPAIGN, "/v1/campaigns")
    assert response.status_code == 409
    assert "PUT /v1/campaigns/welcome" in response.get_json()["detail"]


def test_put_of_a_missing_campaign_is_404(client: FlaskClient, tenant: TenantKey) -> None:
    body = {k: v for k, v in CAMPAIGN.items() if k != "key"}
    assert client.put("/v1/campaigns/nope", json=body, headers=auth(tenant)).status_code == 404


@pytest.mark.parametrize(
    ("changes", "field", "message"),
    [
        ({"subject": "Hi {{ name "}, "subject", "line 1"),
        ({"html": "{% if x %}<p>"}, "html", "endif"),
        ({"text": "{{ x | no_such_filter }}"}, "text", "unknown filter 'no_such_filter'"),
        ({"headers": {"X-A": "{{ }}"}}, "headers.X-A", "line 1"),
        ({"from": "{{ sender "}, "from", "line 1"),
        ({"headers": {"Subject": "x"}}, "headers", "X-*"),
        ({"text": None, "html": None}, "text", "give text, html or both"),
        ({"key": "no spaces"}, "key", "letters"),
        ({"subject": "a\r\nBcc: x@evil.example.net"}, "subject", "U+000D at index 1"),
        ({"from": "Mallory <m@evil.example.net>"}, "from", "not a sender domain"),
        ({"reply_to": "not an address"}, "reply_to", "email address"),
    ],
)
def test_invalid_campaigns_are_422_naming_the_field(
    client: FlaskClient,
    tenant: TenantKey,
    db: psycopg.Connection,
    changes: dict[str, Any],
    field: str,
    message: str,
) -> None:
    response = post(client, tenant, {**CAMPAIGN, **changes}, "/v1/campaigns")
    assert response.status_code == 422, response.get_json()
    errors = response.get_json()["errors"]
    assert field in errors, errors
    assert message in str(errors[field])
    assert db.execute("SELECT count(*) FROM campaigns").fetchone() == (0,)


# --- trigger --------------------------------------------------------------------


def test_trigger_creates_one_rendered_mail_per_recipient_on_the_campaign_queue(
    client: FlaskClient, tenant: TenantKey, db: psycopg.Connection
) -> None:
    create(client, tenant)
    body = {
        "recipients": [
            {"email": "ann@example.org", "name": "Ann Lee", "data": {"first_name": "Ann"}},
            {"email": "bob@example.org", "data": {"first_name": "Bob", "plan": "pro"}},
            {"email": "cy@example.org", "data": {"first_name": "Cy"}},
        ],
        "data": {"plan": "free"},
        "tags": ["spring"],
        "metadata": {"batch": 7},
    }
    response = trigger(client, tenant, body)
    assert response.status_code == 202, response.get_json()
    answer = response.get_json()
    assert answer["campaign"] == "welcome"
    assert answer["accepted"] == 3
    assert [m["email"] for m in answer["mails"]] == [r["email"] for r in body["recipients"]]
    assert {m["status"] for m in answer["mails"]} == {"accepted"}

    rows = mail_rows(db)
    assert len(rows) == 3
    ann, bob, _ = rows
    request, stream, source, campaign_key, tags, queue = ann
    assert (stream, source, campaign_key, queue) == ("campaign", "campaign", "welcome", "campaign")
    assert tags == ["onboarding", "spring"]
    assert request["from"] == {"name": "Acme", "email": "hello@example.com"}
    assert request["to"] == [{"name": "Ann Lee", "email": "ann@example.org"}]
    assert request["subject"] == "Welcome, Ann!"
    assert request["text"] == "Hi Ann, you are on free (ann@example.org)."
    assert request["html"] == "<p>Hi Ann</p>"
    assert request["headers"] == {"X-Campaign": "welcome-free"}
    # the recipient's data wins over the top-level data
    assert bob[0]["text"] == "Hi Bob, you are on pro (bob@example.org)."
    assert bob[0]["headers"] == {"X-Campaign": "welcome-pro"}
    metadata = db.execute("SELECT DISTINCT metadata FROM mails").fetchall()
    assert metadata == [({"batch": 7},)]
    assert counts(db) == (3, 3, 3)


def test_a_missing_variable_is_422_naming_it_and_the_recipient_and_stores_nothing(
    client: FlaskClient, tenant: TenantKey, db: psycopg.Connection
) -> None:
    create(client, tenant)
    body = {
        "recipients": [
            {"email": "ann@example.org", "data": {"first_name": "Ann"}},
            {"email": "bob@example.org"},
        ],
        "data": {"plan": "free"},
    }
    response = trigger(client, tenant, body)
    assert response.status_code == 422
    problem = response.get_json()
    assert problem["errors"] == {"recipients.1.subject": ["'first_name' is undefined"]}
    assert "1 of 2" in problem["detail"] or "recipients.1.subject" in problem["detail"]
    assert counts(db) == (0, 0, 0)


def test_python_internals_are_out_of_reach_and_a_422(
    client: FlaskClient, tenant: TenantKey, db: psycopg.Connection
) -> None:
    create(client, tenant, subject="{{ first_name.__class__.__mro__ }}")
    body = {"recipients": [{"email": "ann@example.org"}], "data": {"first_name": "A", "plan": "p"}}
    response = trigger(client, tenant, body)
    assert response.status_code == 422, response.get_json()
    assert response.get_json()["errors"] == {
        "recipients.0.subject": ["first_name.__class__ is undefined"]
    }
    preview = post(
        client, tenant, {"recipient": {"email": "a@example.org"}}, "/v1/campaigns/welcome/preview"
    )
    assert preview.status_code == 422
    assert counts(db) == (0, 0, 0)


def test_a_template_that_would_exhaust_the_server_is_a_422(
    client: FlaskClient, tenant: TenantKey, db: psycopg.Connection
) -> None:
    create(client, tenant, subject="{{ (1..1000000000) | join: 'x' }}")
    response = trigger(client, tenant, {"recipients": [{"email": "ann@example.org"}]})
    assert response.status_code == 422
    assert "values larger than" in response.get_json()["errors"]["recipients.0.subject"][0]
    assert counts(db) == (0, 0, 0)


def test_rendered_mails_are_validated_like_post_v1_mails(
    client: FlaskClient, tenant: TenantKey, db: psycopg.Connection
) -> None:
    create(client, tenant, **{"from": "{{ sender }}"})
    data = {"first_name": "Ann\r\nBcc: victim@example.net", "plan": "p", "sender": "a@example.com"}
    response = trigger(client, tenant, {"recipients": [{"email": "ann@example.org"}], "data": data})
    assert response.status_code == 422
    assert response.get_json()["errors"] == {
        "recipients.0.subject": [
            "must not contain control characters or line separators (U+000D at index 12)"
        ]
    }

    data = {"first_name": "Ann", "plan": "p", "sender": "Mallory <m@evil.example.net>"}
    response = trigger(client, tenant, {"recipients": [{"email": "ann@example.org"}], "data": data})
    assert response.status_code == 422
    assert "not a sender domain" in response.get_json()["errors"]["recipients.0.from"][0]

    data = {"first_name": "Ann", "plan": "p", "sender": "a@example.com"}
    bad_address = {"recipients": [{"email": "not-an-address"}], "data": data}
    response = trigger(client, tenant, bad_address)
    assert response.status_code == 422
    assert "recipients.0.email" in response.get_json()["errors"]
    assert counts(db) == (0, 0, 0)


def test_html_is_autoescaped_and_text_is_not(
    client: FlaskClient, tenant: TenantKey, db: psycopg.Connection
) -> None:
    create(client, tenant)
    data = {"first_name": "<b>Ann</b>", "plan": "x"}
    response = trigger(client, tenant, {"recipients": [{"email": "ann@example.org"}], "data": data})
    assert response.status_code == 202
    request = mail_rows(db)[0][0]
    assert request["html"] == "<p>Hi &lt;b&gt;Ann&lt;/b&gt;</p>"
    assert request["text"].startswith("Hi <b>Ann</b>,")


def test_editing_the_campaign_never_changes_mail_already_accepted(
    client: FlaskClient, tenant: TenantKey, db: psycopg.Connection
) -> None:
    create(client, tenant)
    data = {"first_name": "Ann", "plan": "free"}
    response = trigger(client, tenant, {"recipients": [{"email": "ann@example.org"}], "data": data})
    assert response.status_code == 202
    mail_id = response.get_json()["mails"][0]["id"]
    before = db.execute("SELECT request FROM mails WHERE id = %s", (mail_id,)).fetchone()

    changed = {k: v for k, v in CAMPAIGN.items() if k != "key"}
    changed |= {"subject": "Changed {{ first_name }}", "text": "Changed"}
    assert (
        client.put("/v1/campaigns/welcome", json=changed, headers=auth(tenant)).status_code == 200
    )

    after = db.execute("SELECT request FROM mails WHERE id = %s", (mail_id,)).fetchone()
    assert after == before
    assert after is not None
    assert after[0]["subject"] == "Welcome, Ann!"
    response = trigger(client, tenant, {"recipients": [{"email": "bob@example.org"}], "data": data})
    new_id = response.get_json()["mails"][0]["id"]
    new = db.execute("SELECT request->>'subject' FROM mails WHERE id = %s", (new_id,)).fetchone()
    assert new == ("Changed Ann",)


def test_trigger_options_apply_to_every_mail_and_are_checked_once(
    client: FlaskClient, tenant: TenantKey, db: psycopg.Connection
) -> None:
    create(client, tenant)
    data = {"first_name": "A", "plan": "p"}
    recipients = [{"email": "a@example.org"}, {"email": "b@example.org"}]
    response = trigger(
        client, tenant, {"recipients": recipients, "data": data, "send_at": "2999-01-01T00:00:00Z"}
    )
    assert response.status_code == 422
    assert list(response.get_json()["errors"]) == ["send_at"]

    later = {"recipients": recipients, "data": data, "ttl_seconds": 3600, "tags": ["x"] * 1}
    response = trigger(client, tenant, later)
    assert response.status_code == 202
    rows = db.execute("SELECT expires_at IS NOT NULL FROM mails").fetchall()
    assert rows == [(True,), (True,)]


def test_at_most_500_recipients(
    client: FlaskClient, tenant: TenantKey, db: psycopg.Connection
) -> None:
    create(client, tenant)
    recipients = [{"email": f"r{i}@example.org"} for i in range(501)]
    response = trigger(client, tenant, {"recipients": recipients})
    assert response.status_code == 422
    assert "recipients" in response.get_json()["errors"]
    assert counts(db) == (0, 0, 0)


def test_500_recipients_in_one_transaction(
    client: FlaskClient, tenant: TenantKey, db: psycopg.Connection
) -> None:
    create(client, tenant)
    recipients = [{"email": f"r{i}@example.org"} for i in range(500)]
    response = trigger(
        client, tenant, {"recipients": recipients, "data": {"first_name": "X", "plan": "p"}}
    )
    assert response.status_code == 202
    assert response.get_json()["accepted"] == 500
    assert counts(db) == (500, 500, 500)


def test_trigger_honours_the_idempotency_key(
    client: FlaskClient, tenant: TenantKey, db: psycopg.Connection
) -> None:
    create(client, tenant)
    body = {"recipients": [{"email": "a@example.org"}], "data": {"first_name": "A", "plan": "p"}}
    first = trigger(client, tenant, body, **{"Idempotency-Key": "launch-1"})
    again = trigger(client, tenant, body, **{"Idempotency-Key": "launch-1"})
    assert first.status_code == again.status_code == 202
    assert first.get_json() == again.get_json()
    assert again.headers["Idempotent-Replayed"] == "true"
    assert counts(db)[0] == 1


def test_data_that_postgresql_cannot_store_is_a_422(
    client: FlaskClient, tenant: TenantKey, db: psycopg.Connection
) -> None:
    create(client, tenant)
    body = {
        "recipients": [{"email": "a@example.org"}],
        "data": {"first_name": "A\u0000", "plan": "p"},
    }
    response = trigger(client, tenant, body)
    assert response.status_code == 422
    assert "NUL" in response.get_json()["errors"]["data.first_name"][0]
    assert counts(db) == (0, 0, 0)


def test_unknown_campaign_is_404(client: FlaskClient, tenant: TenantKey) -> None:
    response = trigger(client, tenant, {"recipients": [{"email": "a@example.org"}]}, key="nope")
    assert response.status_code == 404


# --- preview --------------------------------------------------------------------


def test_preview_renders_and_stores_nothing(
    client: FlaskClient, tenant: TenantKey, db: psycopg.Connection
) -> None:
    create(client, tenant)
    body = {
        "recipient": {"email": "ann@example.org", "name": "Ann", "data": {"first_name": "Ann"}},
        "data": {"plan": "free"},
    }
    response = post(client, tenant, body, "/v1/campaigns/welcome/preview")
    assert response.status_code == 200, response.get_json()
    assert response.get_json() == {
        "from": "Acme <hello@example.com>",
        "to": "Ann <ann@example.org>",
        "subject": "Welcome, Ann!",
        "text": "Hi Ann, you are on free (ann@example.org).",
        "html": "<p>Hi Ann</p>",
        "reply_to": None,
        "headers": {"X-Campaign": "welcome-free"},
    }
    missing = post(
        client, tenant, {"recipient": {"email": "a@example.org"}}, "/v1/campaigns/welcome/preview"
    )
    assert missing.status_code == 422
    assert missing.get_json()["errors"] == {"subject": ["'first_name' is undefined"]}
    assert counts(db) == (0, 0, 0)
    assert db.execute("SELECT count(*) FROM idempotency_keys").fetchone() == (0,)


# --- workflows keep their campaign ---------------------------------------------


def test_deleting_a_campaign_a_workflow_uses_is_409_naming_it(
    client: FlaskClient, tenant: TenantKey
) -> None:
    create(client, tenant)
    workflow = post(
        client, tenant, {"event": "Signed Up", "campaign": "welcome"}, "/v1/workflows"
    ).get_json()
    response = client.delete("/v1/campaigns/welcome", headers=auth(tenant))
    assert response.status_code == 409
    assert workflow["id"] in response.get_json()["detail"]
    assert "Signed Up" in response.get_json()["detail"]
    assert client.get("/v1/campaigns/welcome", headers=auth(tenant)).status_code == 200

    deleted = client.delete(f"/v1/workflows/{workflow['id']}", headers=auth(tenant))
    assert deleted.status_code == 204
    assert client.delete("/v1/campaigns/welcome", headers=auth(tenant)).status_code == 204


# --- tenants and scopes --------------------------------------------------------


def test_a_tenant_never_sees_another_tenants_campaigns(
    client: FlaskClient, tenant: TenantKey, other_tenant: TenantKey, db: psycopg.Connection
) -> None:
    create(client, tenant)
    other = auth(other_tenant)
    fields = {k: v for k, v in CAMPAIGN.items() if k != "key"}
    recipients = {
        "recipients": [{"email": "a@example.org"}],
        "data": {"first_name": "A", "plan": "p"},
    }
    assert client.get("/v1/campaigns/welcome", headers=other).status_code == 404
    assert client.put("/v1/campaigns/welcome", json=fields, headers=other).status_code == 404
    assert client.delete("/v1/campaigns/welcome", headers=other).status_code == 404
    assert trigger(client, other_tenant, recipients).status_code == 404
    preview = {"recipient": {"email": "a@example.org"}, "data": {"first_name": "A", "plan": "p"}}
    assert post(client, other_tenant, preview, "/v1/campaigns/welcome/preview").status_code == 404
    assert client.get("/v1/campaigns", headers=other).get_json() == {"campaigns": []}
    assert counts(db) == (0, 0, 0)

    # the same key is the other tenant's own campaign, from its own domain
    theirs = create(client, other_tenant, **{"from": "x@globex.com", "subject": "Globex"})
    assert theirs["subject"] == "Globex"
    mine = client.get("/v1/campaigns/welcome", headers=auth(tenant)).get_json()
    assert mine["subject"] == CAMPAIGN["subject"]
    assert db.execute(
        "SELECT subject_template FROM campaigns WHERE tenant_id = %s", (tenant.tenant_id,)
    ).fetchall() == [(CAMPAIGN["subject"],)]


def test_writing_needs_the_send_scope(
    client: FlaskClient, tenant: TenantKey, db: psycopg.Connection
) -> None:
    from ingest_api.api_keys import display_prefix, key_digest, new_api_key  # noqa: PLC0415

    create(client, tenant)
    key = new_api_key()
    db.execute(
        QUERIES["insert_api_key_with_scopes"],
        {
            "id": uuid.uuid4(),
            "tenant_id": tenant.tenant_id,
            "key_prefix": display_prefix(key),
            "key_hash": key_digest(key),
            "scopes": ["read"],
        },
    )
    read_only = {"Authorization": f"Bearer {key}"}
    body = {"recipients": [{"email": "a@example.org"}], "data": {"first_name": "A", "plan": "p"}}
    assert (
        client.post("/v1/campaigns/welcome/trigger", json=body, headers=read_only).status_code
        == 403
    )
    assert client.post("/v1/campaigns", json=CAMPAIGN, headers=read_only).status_code == 403
    assert client.get("/v1/campaigns/welcome", headers=read_only).status_code == 200
    preview = {"recipient": {"email": "a@example.org"}, "data": {"first_name": "A", "plan": "p"}}
    assert (
        client.post("/v1/campaigns/welcome/preview", json=preview, headers=read_only).status_code
        == 200
    )


def test_a_refused_update_changes_nothing(client: FlaskClient, tenant: TenantKey) -> None:
    create(client, tenant)
    fields = {k: v for k, v in CAMPAIGN.items() if k != "key"}
    bad = {**fields, "from": "Mallory <m@evil.example.net>", "subject": "Changed"}
    response = client.put("/v1/campaigns/welcome", json=bad, headers=auth(tenant))
    assert response.status_code == 422
    assert "from" in response.get_json()["errors"]
    got = client.get("/v1/campaigns/welcome", headers=auth(tenant)).get_json()
    assert (got["from"], got["subject"]) == (CAMPAIGN["from"], CAMPAIGN["subject"])
