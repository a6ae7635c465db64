"""The send step against a real Postgres and a real SMTP server (aiosmtpd)."""

from __future__ import annotations

import uuid
from email import message_from_bytes, policy

import psycopg
from aiosmtpd.controller import Controller
from psycopg_pool import ConnectionPool

from mail_worker.compose import compose, envelope_recipients
from mail_worker.deliver import deliver
from mail_worker.smtp import SmtpClient
from shared.config import parse_smtp_url
from shared.devstack.smtp_sink import SmtpSink
from tests.conftest import TenantKey
from tests.factories import event_kinds, insert_mail, status_of, stored_request
from tests.services import free_port

DOMAIN = "mail.test"


def run(pool: ConnectionPool, smtp: SmtpClient, mail_id: uuid.UUID) -> str:
    return deliver(pool, smtp, str(mail_id), message_id_domain=DOMAIN, worker="test")


def test_compose_builds_alternatives_with_deterministic_message_id() -> None:
    mail_id = uuid.uuid4()
    request = stored_request(
        to=[{"name": "Zoë Ørsted", "email": "zoe@example.org"}],
        cc=[{"name": None, "email": "carol@example.org"}],
        bcc=[{"name": None, "email": "secret@example.org"}],
        reply_to={"name": None, "email": "support@example.com"},
        subject="Grüße, " + "lang " * 300,
        headers={"X-Campaign": "spring"},
    )
    raw = compose(mail_id, request, DOMAIN)
    parsed = message_from_bytes(raw, policy=policy.default)
    assert parsed["Message-ID"] == f"<{mail_id}@{DOMAIN}>"
    assert parsed["Date"]
    assert parsed["Bcc"] is None and b"secret@example.org" not in raw
    assert parsed["Cc"] == "carol@example.org"
    assert parsed["Reply-To"] == "support@example.com"
    assert parsed["X-Campaign"] == "spring"
    assert str(parsed["To"]) == "Zoë Ørsted <zoe@example.org>"
    assert parsed["Subject"].startswith("Grüße, lang")
    assert raw.isascii(), "non-ASCII names and subjects are RFC 2047 encoded"
    assert max(len(line) for line in raw.split(b"\r\n")) <= 78
    assert parsed.get_content_type() == "multipart/alternative"
    assert [part.get_content_type() for part in parsed.iter_parts()] == ["text/plain", "text/html"]
    assert envelope_recipients(request) == [
        "zoe@example.org",
        "carol@example.org",
        "secret@example.org",
    ]


def test_html_only_mail_is_a_single_html_part() -> None:
    raw = compose(uuid.uuid4(), stored_request(text=None), DOMAIN)
    assert message_from_bytes(raw, policy=policy.default).get_content_type() == "text/html"


def test_deliver_sends_once_and_records_every_step(
    db: psycopg.Connection,
    tenant: TenantKey,
    pool: ConnectionPool,
    smtp: SmtpClient,
    smtp_sink: SmtpSink,
) -> None:
    mail_id = insert_mail(db, tenant.tenant_id, bcc=[{"name": None, "email": "audit@example.org"}])
    assert run(pool, smtp, mail_id) == "sent"
    (received,) = smtp_sink.wait_for(1, timeout=5)
    assert received.envelope_from == "alice@example.com"
    assert received.envelope_to == ["bob@example.org", "audit@example.org"]
    assert received.parsed()["Message-ID"] == f"<{mail_id}@{DOMAIN}>"
    assert status_of(db, mail_id) == "sent"
    assert event_kinds(db, mail_id) == ["accepted", "sending", "sent"]
    reply = db.execute(
        "SELECT detail->>'smtp_reply' FROM mail_events WHERE kind = 'sent' AND mail_id = %s",
        (mail_id,),
    ).fetchone()
    assert reply is not None and reply[0].startswith("250 OK queued as ")
    assert db.execute("SELECT count(*) FROM outbox").fetchone() == (0,), "pickup acknowledges"
    attempts = db.execute("SELECT attempts FROM mails WHERE id = %s", (mail_id,)).fetchone()
    assert attempts == (1,)


def test_a_second_delivery_of_the_same_task_sends_nothing(
    db: psycopg.Connection,
    tenant: TenantKey,
    pool: ConnectionPool,
    smtp: SmtpClient,
    smtp_sink: SmtpSink,
) -> None:
    mail_id = insert_mail(db, tenant.tenant_id)
    assert run(pool, smtp, mail_id) == "sent"
    assert run(pool, smtp, mail_id) == "duplicate"
    assert len(smtp_sink.wait_for(2, timeout=1)) == 1
    assert event_kinds(db, mail_id) == ["accepted", "sending", "sent"]


def test_connection_is_reused_across_mails(
    db: psycopg.Connection, tenant: TenantKey, pool: ConnectionPool
) -> None:
    class CountingHandler:
        def __init__(self) -> None:
            self.sessions = 0
            self.messages = 0

        async def handle_EHLO(self, server, session, envelope, hostname, responses):
            self.sessions += 1
            session.host_name = hostname
            return responses

        async def handle_DATA(self, server, session, envelope):
            self.messages += 1
            return "250 OK"

    handler = CountingHandler()
    controller = Controller(handler, hostname="127.0.0.1", port=free_port())
    controller.start()
    client = SmtpClient(parse_smtp_url(f"smtp://127.0.0.1:{controller.port}"), timeout=5)
    try:
        for _ in range(3):
            assert run(pool, client, insert_mail(db, tenant.tenant_id)) == "sent"
    finally:
        client.close()
        controller.stop()
    assert (handler.sessions, handler.messages) == (1, 3)


def test_refused_recipients_make_the_mail_failed_with_the_reason(
    db: psycopg.Connection, tenant: TenantKey, pool: ConnectionPool
) -> None:
    class RefusingHandler:
        async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
            return "550 5.1.1 no such user"

    controller = Controller(RefusingHandler(), hostname="127.0.0.1", port=free_port())
    controller.start()
    client = SmtpClient(parse_smtp_url(f"smtp://127.0.0.1:{controller.port}"), timeout=5)
    try:
        mail_id = insert_mail(db, tenant.tenant_id)
        assert run(pool, client, mail_id) == "failed"
    finally:
        client.close()
        controller.stop()
    row = db.execute("SELECT status, last_error FROM mails WHERE id = %s", (mail_id,)).fetchone()
    assert row is not None
    assert row[0] == "failed"
    assert "no such user" in row[1]
    assert event_kinds(db, mail_id) == ["accepted", "sending", "failed"]


def test_unreachable_smtp_server_is_a_transient_failure_retried_later(
    db: psycopg.Connection, tenant: TenantKey, pool: ConnectionPool
) -> None:
    client = SmtpClient(parse_smtp_url(f"smtp://127.0.0.1:{free_port()}"), timeout=2)
    mail_id = insert_mail(db, tenant.tenant_id)
    assert run(pool, client, mail_id) == "retrying"
    row = db.execute("SELECT status, last_error FROM mails WHERE id = %s", (mail_id,)).fetchone()
    assert row is not None and row[0] == "retrying" and "Connection" in row[1]
    assert db.execute("SELECT count(*) FROM outbox WHERE mail_id = %s", (mail_id,)).fetchone() == (
        1,
    )


def test_attachments_and_inline_images_are_built_into_mixed_and_related_parts() -> None:
    import base64  # noqa: PLC0415

    logo = b"\x89PNG\r\n\x1a\n" + b"\x00" * 40
    request = stored_request(
        html='<p><img src="cid:logo@mail"></p>',
        attachments=[
            {"filename": "report.pdf", "content": base64.b64encode(b"%PDF-1.4").decode(),
             "content_type": "application/pdf", "content_id": None},
            {"filename": "logo.png", "content": base64.b64encode(logo).decode(),
             "content_type": "image/png", "content_id": "logo@mail"},
        ],
    )  # fmt: skip
    parsed = message_from_bytes(compose(uuid.uuid4(), request, DOMAIN), policy=policy.default)
    assert parsed.get_content_type() == "multipart/mixed"
    attachments = list(parsed.iter_attachments())
    assert [(a.get_filename(), a.get_content()) for a in attachments] == [
        ("report.pdf", b"%PDF-1.4")
    ]
    html = parsed.get_body(("html",))
    assert html is not None
    related = next(part for part in parsed.walk() if part.get_content_type() == "multipart/related")
    image = next(part for part in related.walk() if part.get_content_type() == "image/png")
    assert image["Content-ID"] == "<logo@mail>"
    assert image.get_content() == logo


class ReplyingHandler:
    """An SMTP server that answers RCPT with a fixed reply."""

    def __init__(self, reply: str) -> None:
        self.reply = reply

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        return self.reply


def run_against(reply: str, pool: ConnectionPool, mail_id: uuid.UUID, **policy: float) -> str:
    from mail_worker.deliver import RetryPolicy  # noqa: PLC0415

    controller = Controller(ReplyingHandler(reply), hostname="127.0.0.1", port=free_port())
    controller.start()
    client = SmtpClient(parse_smtp_url(f"smtp://127.0.0.1:{controller.port}"), timeout=5)
    try:
        return deliver(
            pool, client, str(mail_id), message_id_domain=DOMAIN, worker="test",
            retry=RetryPolicy(**policy),  # type: ignore[arg-type]
        )  # fmt: skip
    finally:
        client.close()
        controller.stop()


def test_a_transient_refusal_goes_back_to_the_outbox_with_a_backoff(
    db: psycopg.Connection, tenant: TenantKey, pool: ConnectionPool
) -> None:
    mail_id = insert_mail(db, tenant.tenant_id)
    assert run_against("451 4.7.1 try again later", pool, mail_id, base_seconds=60) == "retrying"
    row = db.execute("SELECT status, last_error FROM mails WHERE id = %s", (mail_id,)).fetchone()
    assert row is not None and row[0] == "retrying" and "try again later" in row[1]
    delay = db.execute(
        "SELECT extract(epoch FROM available_at - now()) FROM outbox WHERE mail_id = %s", (mail_id,)
    ).fetchone()
    assert delay is not None and 25 <= float(delay[0]) <= 61, "backoff with jitter, in Postgres"
    assert event_kinds(db, mail_id) == ["accepted", "sending", "retrying"]


def test_a_mail_that_keeps_failing_transiently_becomes_dead(
    db: psycopg.Connection, tenant: TenantKey, pool: ConnectionPool
) -> None:
    mail_id = insert_mail(db, tenant.tenant_id)
    outcomes = []
    for _ in range(3):
        db.execute("UPDATE outbox SET available_at = now()")
        outcomes.append(run_against("421 busy", pool, mail_id, max_attempts=3, base_seconds=1))
    assert outcomes == ["retrying", "retrying", "dead"]
    row = db.execute("SELECT status, last_error FROM mails WHERE id = %s", (mail_id,)).fetchone()
    assert row is not None and row[0] == "dead" and row[1].startswith("gave up after 3 attempts")
    assert db.execute("SELECT count(*) FROM outbox").fetchone() == (0,)


def test_a_retry_that_would_come_after_expiry_expires_instead(
    db: psycopg.Connection, tenant: TenantKey, pool: ConnectionPool
) -> None:
    from datetime import UTC, datetime, timedelta  # noqa: PLC0415

    soon = datetime.now(UTC) + timedelta(seconds=30)
    mail_id = insert_mail(db, tenant.tenant_id, expires_at=soon)
    assert run_against("450 mailbox busy", pool, mail_id, base_seconds=600) == "expired"
    assert status_of(db, mail_id) == "expired"


def test_a_permanent_refusal_is_failed_at_once(
    db: psycopg.Connection, tenant: TenantKey, pool: ConnectionPool
) -> None:
    mail_id = insert_mail(db, tenant.tenant_id)
    assert run_against("550 5.1.1 unknown user", pool, mail_id) == "failed"
    assert db.execute("SELECT count(*) FROM outbox").fetchone() == (0,)
