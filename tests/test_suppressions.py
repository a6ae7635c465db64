"""Suppression list and one-click unsubscribe, against a real Postgres, the real
Flask app and a real SMTP server (aiosmtpd)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import replace
from email import message_from_bytes, policy
from typing import Any
from urllib.parse import urlsplit

import psycopg
import pytest
from aiosmtpd.controller import Controller
from flask.testing import FlaskClient
from psycopg_pool import ConnectionPool

from mail_worker.deliver import RetryPolicy, deliver
from mail_worker.smtp import SmtpClient
from mail_worker.suppression import UnsubscribeLinks
from shared import unsubscribe_tokens
from shared.config import ConfigError, Settings, load_settings, parse_smtp_url
from shared.devstack.smtp_sink import SmtpSink
from tests.conftest import TenantKey
from tests.factories import event_kinds, insert_mail, status_of
from tests.services import free_port
from tests.test_auth_scopes import add_key

SECRET = "test-unsubscribe-secret-0123456789"
PUBLIC_URL = "https://mailroom.test/base"
DOMAIN = "mail.test"


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """conftest's settings with unsubscribe links configured (the app uses these)."""
    return replace(settings, public_url=PUBLIC_URL, unsubscribe_secret=SECRET)


LINKS = UnsubscribeLinks(PUBLIC_URL, SECRET)


def run(
    pool: ConnectionPool,
    smtp: SmtpClient,
    mail_id: uuid.UUID,
    links: UnsubscribeLinks | None = LINKS,
) -> str:
    return deliver(
        pool, smtp, str(mail_id), message_id_domain=DOMAIN, worker="test", unsubscribe=links,
        retry=RetryPolicy(base_seconds=1),
    )  # fmt: skip


def auth(tenant: TenantKey) -> dict[str, str]:
    return {"Authorization": f"Bearer {tenant.key}"}


def suppress(db: psycopg.Connection, tenant: TenantKey, email: str, reason: str) -> None:
    db.execute(
        "INSERT INTO suppressions (tenant_id, email, reason) VALUES (%s, %s, %s)",
        (tenant.tenant_id, email, reason),
    )


def suppression(db: psycopg.Connection, tenant: TenantKey, email: str) -> tuple[Any, ...] | None:
    return db.execute(
        "SELECT reason, detail, mail_id FROM suppressions WHERE tenant_id = %s AND email = %s",
        (tenant.tenant_id, email),
    ).fetchone()


def last_detail(db: psycopg.Connection, mail_id: uuid.UUID) -> dict[str, Any]:
    row = db.execute(
        "SELECT detail FROM mail_events WHERE mail_id = %s ORDER BY id DESC LIMIT 1", (mail_id,)
    ).fetchone()
    assert row is not None
    detail: dict[str, Any] = row[0]
    return detail


def mailbox(email: str) -> dict[str, Any]:
    return {"name": None, "email": email}


# ----- the API: CRUD, scopes, tenant isolation -----


def test_suppressions_crud(client: FlaskClient, tenant: TenantKey) -> None:
    created = client.post(
        "/v1/suppressions", json={"email": "Ann <Ann@Example.org>", "note": "asked by phone"},
        headers=auth(tenant),
    )  # fmt: skip
    assert created.status_code == 201, created.json
    assert created.json["email"] == "ann@example.org"
    assert created.json["reason"] == "manual"
    assert created.json["detail"] == {"note": "asked by phone"}
    again = client.post("/v1/suppressions", json={"email": "ann@example.org"}, headers=auth(tenant))
    assert again.status_code == 200 and again.json["detail"] == {"note": "asked by phone"}

    got = client.get("/v1/suppressions/ANN@example.org", headers=auth(tenant))
    assert got.status_code == 200 and got.json["email"] == "ann@example.org"
    assert got.json["mail_id"] is None

    listed = client.get("/v1/suppressions", headers=auth(tenant))
    assert listed.status_code == 200
    assert [s["email"] for s in listed.json["suppressions"]] == ["ann@example.org"]
    assert listed.json["next_cursor"] is None
    by_reason = client.get("/v1/suppressions?reason=hard_bounce", headers=auth(tenant))
    assert by_reason.json["suppressions"] == []
    assert client.get("/v1/suppressions?reason=nope", headers=auth(tenant)).status_code == 422

    assert (
        client.delete("/v1/suppressions/Ann@example.org", headers=auth(tenant)).status_code == 204
    )
    assert client.get("/v1/suppressions/ann@example.org", headers=auth(tenant)).status_code == 404
    assert (
        client.delete("/v1/suppressions/ann@example.org", headers=auth(tenant)).status_code == 404
    )
    nul = client.get("/v1/suppressions/%00", headers=auth(tenant))
    assert nul.status_code == 400, "NUL is refused naming the path parameter, never a 5xx"
    assert list(nul.get_json()["errors"]) == ["email"]
    bad = client.post("/v1/suppressions", json={"email": "not an address"}, headers=auth(tenant))
    assert bad.status_code == 422


def test_suppressions_list_pages_with_a_cursor(
    client: FlaskClient, db: psycopg.Connection, tenant: TenantKey
) -> None:
    for name in ("e", "b", "d", "a", "c"):
        suppress(db, tenant, f"{name}@example.org", "unsubscribe" if name < "c" else "hard_bounce")
    seen: list[str] = []
    cursor = None
    while True:
        query = "/v1/suppressions?limit=2" + (f"&cursor={cursor}" if cursor else "")
        page = client.get(query, headers=auth(tenant)).json
        seen += [s["email"] for s in page["suppressions"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == [f"{n}@example.org" for n in "abcde"]
    unsubscribed = client.get("/v1/suppressions?reason=unsubscribe", headers=auth(tenant)).json
    assert [s["email"] for s in unsubscribed["suppressions"]] == ["a@example.org", "b@example.org"]
    bad = client.get("/v1/suppressions?cursor=!!!", headers=auth(tenant))
    assert bad.status_code == 400


def test_suppressions_are_per_tenant(
    client: FlaskClient, db: psycopg.Connection, tenant: TenantKey, other_tenant: TenantKey
) -> None:
    suppress(db, tenant, "ann@example.org", "hard_bounce")
    assert (
        client.get("/v1/suppressions/ann@example.org", headers=auth(other_tenant)).status_code
        == 404
    )
    assert client.get("/v1/suppressions", headers=auth(other_tenant)).json["suppressions"] == []
    deleted = client.delete("/v1/suppressions/ann@example.org", headers=auth(other_tenant))
    assert deleted.status_code == 404
    created = client.post(
        "/v1/suppressions", json={"email": "ann@example.org"}, headers=auth(other_tenant)
    )
    assert created.status_code == 201, "the other tenant's entry is its own"
    assert suppression(db, tenant, "ann@example.org") == ("hard_bounce", {}, None)
    assert client.get("/v1/suppressions/ann@example.org", headers=auth(tenant)).json["reason"] == (
        "hard_bounce"
    )


def test_reading_needs_read_and_changing_needs_send(
    client: FlaskClient, db: psycopg.Connection, tenant: TenantKey
) -> None:
    suppress(db, tenant, "ann@example.org", "manual")
    reader = {"Authorization": f"Bearer {add_key(db, tenant, ['read'])}"}
    sender = {"Authorization": f"Bearer {add_key(db, tenant, ['send'])}"}
    assert client.get("/v1/suppressions", headers=reader).status_code == 200
    assert client.get("/v1/suppressions/ann@example.org", headers=reader).status_code == 200
    assert client.get("/v1/suppressions", headers=sender).status_code == 403
    assert client.get("/v1/suppressions/ann@example.org", headers=sender).status_code == 403
    body = {"email": "bob@example.org"}
    assert client.post("/v1/suppressions", json=body, headers=reader).status_code == 403
    assert client.delete("/v1/suppressions/ann@example.org", headers=reader).status_code == 403
    assert client.post("/v1/suppressions", json=body, headers=sender).status_code == 201
    assert client.delete("/v1/suppressions/ann@example.org", headers=sender).status_code == 204
    assert client.get("/v1/suppressions").status_code == 401


def test_bypass_unsubscribes_is_stored_with_the_mail(
    client: FlaskClient, db: psycopg.Connection, tenant: TenantKey
) -> None:
    mail = {"from": "alice@example.com", "to": ["bob@example.org"], "subject": "Hi", "text": "x"}
    plain = client.post("/v1/mails", json=mail, headers=auth(tenant)).json["id"]
    bypass = client.post(
        "/v1/mails", json={**mail, "bypass_unsubscribes": True}, headers=auth(tenant)
    ).json["id"]
    stored = dict(
        db.execute("SELECT id::text, request->'bypass_unsubscribes' FROM mails").fetchall()
    )
    assert stored == {plain: False, bypass: True}
    refused = client.post(
        "/v1/mails", json={**mail, "bypass_unsubscribes": "maybe"}, headers=auth(tenant)
    )
    assert refused.status_code == 422


# ----- configuration (the token tests are in test_unsubscribe_tokens.py) -----


def test_config_public_url_and_secret() -> None:
    settings = load_settings(environ={})
    assert settings.public_url == "http://127.0.0.1:8000" and settings.unsubscribe_secret == ""
    settings = load_settings(
        environ={
            "MAILROOM_PUBLIC_URL": "https://mail.example.com/api/",
            "MAILROOM_UNSUBSCRIBE_SECRET": SECRET,
        }
    )
    assert settings.public_url == "https://mail.example.com/api"
    assert SECRET not in repr(settings)
    with pytest.raises(ConfigError, match="MAILROOM_PUBLIC_URL"):
        load_settings(environ={"MAILROOM_PUBLIC_URL": "ftp://example.com"})
    with pytest.raises(ConfigError, match="MAILROOM_UNSUBSCRIBE_SECRET is malformed: at least"):
        load_settings(environ={"MAILROOM_UNSUBSCRIBE_SECRET": "short"})


# ----- the worker: suppressed recipients, hard bounces, bypass -----


def test_a_suppressed_recipient_is_skipped_and_recorded_in_the_sent_event(
    db: psycopg.Connection, tenant: TenantKey, pool: ConnectionPool, smtp: SmtpClient,
    smtp_sink: SmtpSink,
) -> None:  # fmt: skip
    suppress(db, tenant, "carol@example.org", "unsubscribe")
    mail_id = insert_mail(db, tenant.tenant_id, cc=[mailbox("Carol@Example.org")])
    assert run(pool, smtp, mail_id) == "sent"
    (received,) = smtp_sink.wait_for(1, timeout=5)
    assert received.envelope_to == ["bob@example.org"]
    assert event_kinds(db, mail_id) == ["accepted", "sending", "sent"]
    assert last_detail(db, mail_id)["suppressed"] == [
        {"email": "Carol@Example.org", "reason": "unsubscribe"}
    ]


def test_a_mail_whose_every_recipient_is_suppressed_is_not_sent(
    db: psycopg.Connection, tenant: TenantKey, other_tenant: TenantKey, pool: ConnectionPool,
    smtp: SmtpClient, smtp_sink: SmtpSink,
) -> None:  # fmt: skip
    suppress(db, tenant, "bob@example.org", "hard_bounce")
    suppress(db, tenant, "carol@example.org", "manual")
    mail_id = insert_mail(db, tenant.tenant_id, bcc=[mailbox("carol@example.org")])
    assert run(pool, smtp, mail_id) == "suppressed"
    assert status_of(db, mail_id) == "suppressed"
    assert event_kinds(db, mail_id) == ["accepted", "sending", "suppressed"]
    assert last_detail(db, mail_id) == {
        "suppressed": [
            {"email": "bob@example.org", "reason": "hard_bounce"},
            {"email": "carol@example.org", "reason": "manual"},
        ]
    }
    assert smtp_sink.wait_for(1, timeout=1) == []
    # Another tenant's list does not apply.
    other = make_other_mail(db, other_tenant)
    suppress(db, tenant, "zed@globex.com", "manual")
    assert run(pool, smtp, other) == "sent"


def make_other_mail(db: psycopg.Connection, tenant: TenantKey) -> uuid.UUID:
    return insert_mail(
        db, tenant.tenant_id, to=[mailbox("zed@globex.com")], **{"from": mailbox("a@globex.com")}
    )


class BouncingHandler:
    """Refuses RCPT for addresses starting with "bad" (550) or "busy" (450)."""

    def __init__(self) -> None:
        self.delivered: list[list[str]] = []

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):  # type: ignore[no-untyped-def]
        if address.lower().startswith("bad"):
            return "550 5.1.1 no such user"
        if address.startswith("busy"):
            return "450 4.2.1 mailbox busy"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):  # type: ignore[no-untyped-def]
        self.delivered.append(list(envelope.rcpt_tos))
        return "250 OK"


@pytest.fixture
def bouncing() -> Iterator[tuple[BouncingHandler, SmtpClient]]:
    handler = BouncingHandler()
    controller = Controller(handler, hostname="127.0.0.1", port=free_port())
    controller.start()
    client = SmtpClient(parse_smtp_url(f"smtp://127.0.0.1:{controller.port}"), timeout=5)
    yield handler, client
    client.close()
    controller.stop()


def test_a_550_recipient_becomes_a_hard_bounce_and_is_suppressed_next_time(
    db: psycopg.Connection, tenant: TenantKey, pool: ConnectionPool,
    bouncing: tuple[BouncingHandler, SmtpClient],
) -> None:  # fmt: skip
    handler, client = bouncing
    first = insert_mail(db, tenant.tenant_id, cc=[mailbox("Bad@example.org")])
    assert run(pool, client, first) == "sent"
    assert handler.delivered == [["bob@example.org"]]
    assert suppression(db, tenant, "bad@example.org") == (
        "hard_bounce", {"smtp_reply": "550 5.1.1 no such user"}, first,
    )  # fmt: skip

    second = insert_mail(db, tenant.tenant_id, to=[mailbox("bad@example.org")])
    assert run(pool, client, second) == "suppressed"
    assert len(handler.delivered) == 1


def test_when_every_recipient_is_refused_the_5xx_ones_become_hard_bounces(
    db: psycopg.Connection, tenant: TenantKey, pool: ConnectionPool,
    bouncing: tuple[BouncingHandler, SmtpClient],
) -> None:  # fmt: skip
    _, client = bouncing
    failed = insert_mail(db, tenant.tenant_id, to=[mailbox("bad1@example.org")])
    assert run(pool, client, failed) == "failed"
    assert suppression(db, tenant, "bad1@example.org") is not None

    # A 4xx among them makes it transient: retried, but the 550 one is suppressed now.
    mixed = insert_mail(
        db, tenant.tenant_id, to=[mailbox("bad2@example.org"), mailbox("busy@example.org")]
    )
    assert run(pool, client, mixed) == "retrying"
    assert suppression(db, tenant, "bad2@example.org") is not None
    assert suppression(db, tenant, "busy@example.org") is None


def test_bypass_unsubscribes_for_transactional_mail_only_and_never_for_hard_bounces(
    db: psycopg.Connection, tenant: TenantKey, pool: ConnectionPool, smtp: SmtpClient,
    smtp_sink: SmtpSink,
) -> None:  # fmt: skip
    suppress(db, tenant, "bob@example.org", "unsubscribe")
    suppress(db, tenant, "carol@example.org", "hard_bounce")
    bob = [mailbox("bob@example.org")]
    carol = [mailbox("carol@example.org")]

    without = insert_mail(db, tenant.tenant_id, to=bob)
    assert run(pool, smtp, without) == "suppressed"
    transactional = insert_mail(db, tenant.tenant_id, to=bob, bypass_unsubscribes=True)
    assert run(pool, smtp, transactional) == "sent"
    campaign = insert_mail(
        db, tenant.tenant_id, to=bob, bypass_unsubscribes=True, stream="campaign"
    )
    assert run(pool, smtp, campaign) == "suppressed"
    bounced = insert_mail(db, tenant.tenant_id, to=carol, bypass_unsubscribes=True)
    assert run(pool, smtp, bounced) == "suppressed"
    assert [m.envelope_to for m in smtp_sink.wait_for(2, timeout=1)] == [["bob@example.org"]]


# ----- one-click unsubscribe -----


def test_campaign_mail_carries_a_working_one_click_unsubscribe_link(
    db: psycopg.Connection, tenant: TenantKey, pool: ConnectionPool, smtp: SmtpClient,
    smtp_sink: SmtpSink, client: FlaskClient,
) -> None:  # fmt: skip
    mail_id = insert_mail(
        db, tenant.tenant_id, stream="campaign", to=[mailbox("Bob@example.org")],
        headers={"List-Unsubscribe": "<mailto:ours@example.com>"},
    )  # fmt: skip
    assert run(pool, smtp, mail_id) == "sent"
    (received,) = smtp_sink.wait_for(1, timeout=5)
    parsed = message_from_bytes(received.data, policy=policy.default)
    assert parsed.get_all("List-Unsubscribe-Post") == ["List-Unsubscribe=One-Click"]
    (header,) = parsed.get_all("List-Unsubscribe")
    assert header.startswith(f"<{PUBLIC_URL}/v1/unsubscribe/") and header.endswith(">")
    path = urlsplit(header[1:-1]).path.removeprefix(urlsplit(PUBLIC_URL).path)

    # GET shows a form and unsubscribes nobody (link scanners follow links).
    page = client.get(path)
    assert page.status_code == 200 and page.mimetype == "text/html"
    assert b'<form method="post">' in page.data
    assert suppression(db, tenant, "bob@example.org") is None
    assert "unsubscribed" not in event_kinds(db, mail_id)

    # RFC 8058: a POST with List-Unsubscribe=One-Click, no API key.
    body = "List-Unsubscribe=One-Click"
    form = "application/x-www-form-urlencoded"
    clicked = client.post(path, data=body, content_type=form)
    assert clicked.status_code == 200, clicked.data
    assert suppression(db, tenant, "bob@example.org") == (
        "unsubscribe", {"via": "list-unsubscribe"}, mail_id,
    )  # fmt: skip
    assert event_kinds(db, mail_id)[-1] == "unsubscribed"
    assert last_detail(db, mail_id)["email"] == "Bob@example.org"

    # Idempotent: a second click is a 200 and records nothing more.
    assert client.post(path, data="anything").status_code == 200
    assert event_kinds(db, mail_id).count("unsubscribed") == 1

    # The next campaign mail to the address is suppressed.
    again = insert_mail(db, tenant.tenant_id, stream="campaign", to=[mailbox("bob@example.org")])
    assert run(pool, smtp, again) == "suppressed"


def test_an_unsubscribe_keeps_a_stronger_entry(
    db: psycopg.Connection, tenant: TenantKey, client: FlaskClient
) -> None:
    suppress(db, tenant, "bob@example.org", "hard_bounce")
    mail_id = insert_mail(db, tenant.tenant_id, stream="campaign")
    token = unsubscribe_tokens.sign(SECRET, tenant.tenant_id, mail_id, "bob@example.org")
    assert client.post(f"/v1/unsubscribe/{token}").status_code == 200
    assert suppression(db, tenant, "bob@example.org") == ("hard_bounce", {}, None)
    assert event_kinds(db, mail_id)[-1] == "unsubscribed"


def test_a_bad_token_is_a_404(
    db: psycopg.Connection, tenant: TenantKey, client: FlaskClient
) -> None:
    mail_id = insert_mail(db, tenant.tenant_id, stream="campaign")
    forged = unsubscribe_tokens.sign(
        "another-secret-0123456789", tenant.tenant_id, mail_id, "b@x.org"
    )
    for token in (forged, "garbage", "a.b"):
        for method in (client.get, client.post):
            response = method(f"/v1/unsubscribe/{token}")
            assert response.status_code == 404
            assert response.json == {
                **response.json,
                "detail": "no such unsubscribe link",
            }
    assert db.execute("SELECT count(*) FROM suppressions").fetchone() == (0,)


def test_transactional_mail_gets_no_unsubscribe_header(
    db: psycopg.Connection, tenant: TenantKey, pool: ConnectionPool, smtp: SmtpClient,
    smtp_sink: SmtpSink,
) -> None:  # fmt: skip
    assert run(pool, smtp, insert_mail(db, tenant.tenant_id)) == "sent"
    (received,) = smtp_sink.wait_for(1, timeout=5)
    assert received.parsed()["List-Unsubscribe"] is None


def test_a_campaign_mail_waits_for_the_secret_instead_of_going_out_without_the_link(
    db: psycopg.Connection, tenant: TenantKey, pool: ConnectionPool, smtp: SmtpClient,
    smtp_sink: SmtpSink,
) -> None:  # fmt: skip
    mail_id = insert_mail(db, tenant.tenant_id, stream="campaign")
    assert run(pool, smtp, mail_id, links=UnsubscribeLinks(PUBLIC_URL, "")) == "retrying"
    row = db.execute("SELECT last_error FROM mails WHERE id = %s", (mail_id,)).fetchone()
    assert row is not None and "MAILROOM_UNSUBSCRIBE_SECRET is not set" in row[0]
    assert smtp_sink.wait_for(1, timeout=1) == []
    db.execute("UPDATE outbox SET available_at = now()")
    assert run(pool, smtp, mail_id) == "sent"
