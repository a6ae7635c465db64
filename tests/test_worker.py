"""The send step against a real Postgres and a real SMTP server (aiosmtpd)."""

from __future__ import annotations

import json
import time
import uuid
from email import message_from_bytes, policy
from typing import Any

import psycopg
import pytest
from aiosmtpd.controller import Controller
from psycopg_pool import ConnectionPool

from mail_worker import tasks
from mail_worker.compose import compose, envelope_recipients
from mail_worker.deliver import SendOptions, deliver, deliver_many
from mail_worker.smtp import SmtpClient
from outbox_relay.health import unroutable_mail_ids
from shared.config import Settings, parse_smtp_url
from shared.devstack.smtp_sink import SmtpSink
from shared.states import MailStatus
from shared.store import mails
from tests.conftest import TenantKey
from tests.factories import (
    event_kinds,
    insert_mail,
    state_machine_off,
    status_of,
    stored_request,
)
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


class SessionCounter:
    """An aiosmtpd handler counting sessions (EHLO), transactions and RSETs."""

    def __init__(self) -> None:
        self.sessions = 0
        self.messages: list[bytes] = []
        self.rsets = 0

    async def handle_EHLO(self, server, session, envelope, hostname, responses):
        self.sessions += 1
        session.host_name = hostname
        return responses

    async def handle_RSET(self, server, session, envelope):
        self.rsets += 1
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        self.messages.append(bytes(envelope.original_content or envelope.content))
        return "250 OK"


def test_connection_is_reused_across_mails(
    db: psycopg.Connection, tenant: TenantKey, pool: ConnectionPool
) -> None:
    handler = SessionCounter()
    controller = Controller(handler, hostname="127.0.0.1", port=free_port())
    controller.start()
    client = SmtpClient(parse_smtp_url(f"smtp://127.0.0.1:{controller.port}"), timeout=5)
    try:
        for _ in range(3):
            assert run(pool, client, insert_mail(db, tenant.tenant_id)) == "sent"
    finally:
        client.close()
        controller.stop()
    assert (handler.sessions, len(handler.messages)) == (1, 3)


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


def test_a_batch_is_picked_up_at_once_and_sent_mail_by_mail_on_one_connection(
    db: psycopg.Connection, tenant: TenantKey, pool: ConnectionPool
) -> None:
    handler = SessionCounter()
    controller = Controller(handler, hostname="127.0.0.1", port=free_port())
    controller.start()
    client = SmtpClient(parse_smtp_url(f"smtp://127.0.0.1:{controller.port}"), timeout=5)
    mail_ids = [insert_mail(db, tenant.tenant_id) for _ in range(4)]
    done = insert_mail(db, tenant.tenant_id)
    assert run(pool, client, done) == "sent"
    batch = [str(done), *map(str, mail_ids), str(mail_ids[0])]  # a repeat and a finished one
    try:
        outcomes = deliver_many(pool, client, batch, SendOptions(DOMAIN, "test"))
    finally:
        client.close()
        controller.stop()
    assert outcomes == ["duplicate", "sent", "sent", "sent", "sent", "duplicate"]
    assert (handler.sessions, len(handler.messages)) == (1, 5)
    assert handler.rsets == 0, "no RSET between mails that went through"
    order = [message_from_bytes(m)["Message-ID"] for m in handler.messages[1:]]
    assert order == [f"<{mail_id}@{DOMAIN}>" for mail_id in mail_ids], "in the batch's order"
    for mail_id in mail_ids:
        assert event_kinds(db, mail_id) == ["accepted", "sending", "sent"]


def test_a_connection_the_server_closed_while_idle_is_replaced_without_a_retry(
    db: psycopg.Connection, tenant: TenantKey, pool: ConnectionPool
) -> None:
    handler = SessionCounter()
    port = free_port()
    controller = Controller(handler, hostname="127.0.0.1", port=port)
    controller.start()
    client = SmtpClient(parse_smtp_url(f"smtp://127.0.0.1:{port}"), timeout=5)
    try:
        assert run(pool, client, insert_mail(db, tenant.tenant_id)) == "sent"
        controller.stop()  # closes the idle connection the client holds
        controller = Controller(handler, hostname="127.0.0.1", port=port)
        controller.start()
        mail_id = insert_mail(db, tenant.tenant_id)
        assert run(pool, client, mail_id) == "sent"
    finally:
        client.close()
        controller.stop()
    assert (handler.sessions, len(handler.messages)) == (2, 2)
    assert event_kinds(db, mail_id) == ["accepted", "sending", "sent"]


def test_an_outcome_recorded_after_the_mail_was_taken_back_changes_nothing(
    db: psycopg.Connection, tenant: TenantKey
) -> None:
    """A worker presumed lost (its lease lapsed) whose mail was picked up again must not
    overwrite the new attempt with its late outcome."""
    mail_id = insert_mail(db, tenant.tenant_id)
    with db.transaction():
        (first,) = mails.begin_sending(db, [mail_id], "worker-a")
    with state_machine_off(db):  # what the relay's rescue does, then a second pickup
        db.execute("UPDATE mails SET status = 'retrying' WHERE id = %s", (mail_id,))
    with db.transaction():
        (second,) = mails.begin_sending(db, [mail_id], "worker-b")
    assert (first.attempts, second.attempts) == (1, 2)
    with db.transaction():
        assert not mails.finish_sending(db, first, MailStatus.SENT, {"late": True}, None)
        assert not mails.schedule_retry(db, first, "451", 30.0, {"late": True})
    assert status_of(db, mail_id) == "sending"
    with db.transaction():
        assert mails.finish_sending(db, second, MailStatus.SENT, {}, None)
    assert status_of(db, mail_id) == "sent"


def test_the_next_mail_goes_out_only_after_the_previous_sent_is_committed(
    db: psycopg.Connection,
    tenant: TenantKey,
    pool: ConnectionPool,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The record of ``sent`` overlaps the next mail's composing, never its SMTP: at each
    DATA the server sees, every earlier mail of the batch is already ``sent``."""
    mail_ids = [insert_mail(db, tenant.tenant_id) for _ in range(3)]
    real_finish = mails.finish_sending

    def slow_finish(*args: Any, **kwargs: Any) -> bool:
        time.sleep(0.3)  # a slow commit: the next mail is composed meanwhile
        return real_finish(*args, **kwargs)

    monkeypatch.setattr(mails, "finish_sending", slow_finish)
    seen: list[list[str]] = []
    watcher = psycopg.connect(db.info.dsn, autocommit=True)

    class StatusAtData:
        async def handle_DATA(self, server, session, envelope):
            rows = watcher.execute(
                "SELECT status FROM mails WHERE id = ANY(%s) ORDER BY array_position(%s, id)",
                (mail_ids, mail_ids),
            ).fetchall()
            seen.append([status for (status,) in rows])
            return "250 OK"

    controller = Controller(StatusAtData(), hostname="127.0.0.1", port=free_port())
    controller.start()
    client = SmtpClient(parse_smtp_url(f"smtp://127.0.0.1:{controller.port}"), timeout=5)
    try:
        outcomes = deliver_many(pool, client, [str(m) for m in mail_ids], SendOptions(DOMAIN, "t"))
    finally:
        client.close()
        controller.stop()
        watcher.close()
    assert outcomes == ["sent"] * 3
    assert seen == [
        ["sending", "sending", "sending"],
        ["sent", "sending", "sending"],
        ["sent", "sent", "sending"],
    ]
    assert [status_of(db, mail_id) for mail_id in mail_ids] == ["sent"] * 3


def test_the_send_mail_message_of_an_older_relay_is_still_sent(
    db: psycopg.Connection, tenant: TenantKey, settings: Settings, smtp_sink: SmtpSink
) -> None:
    """During a rolling upgrade the queue still holds ``send_mail(id)`` messages."""
    first, second, third = (insert_mail(db, tenant.tenant_id) for _ in range(3))
    try:
        assert tasks.make_send_mail(settings)(str(first)) == "sent"
        batch = tasks.make_send_mails(settings)([str(second), str(third)])
        assert batch == ["sent", "sent"]
    finally:
        tasks.close_resources()
    assert len(smtp_sink.wait_for(3, timeout=5)) == 3
    assert {status_of(db, m) for m in (first, second, third)} == {"sent"}


@pytest.mark.parametrize(
    ("task", "args", "expected"),
    [
        ("mailroom.send_mails", [["00000000-0000-0000-0000-000000000001", "0" * 31 + "2"]], 2),
        ("mailroom.send_mail", ["00000000-0000-0000-0000-000000000003"], 1),
        ("mailroom.canary", ["00000000-0000-0000-0000-000000000004"], 0),
        ("mailroom.send_mails", [["not a uuid"]], 0),
        ("mailroom.send_mails", [{"a": 1}], 0),
        ("mailroom.send_mail", [], 0),
        ("mailroom.send_mails", [[["nested"]]], 0),
    ],
)
def test_a_returned_message_names_its_mails_in_either_format(
    task: str, args: list[Any], expected: int
) -> None:
    body = json.dumps([args, {}, {}])
    assert len(unroutable_mail_ids(task, body)) == expected
    assert unroutable_mail_ids(task, b"\x00 not json \xe2\x80\xa8") == []


def test_a_worker_whose_lease_may_have_lapsed_sends_nothing_more(
    db: psycopg.Connection, tenant: TenantKey, pool: ConnectionPool, smtp_sink: SmtpSink
) -> None:
    """Cut off from the database for most of a lease, the process may have lost its mails
    to the relay's rescue: it puts them back as retrying instead of sending them."""
    mail_ids = [insert_mail(db, tenant.tenant_id) for _ in range(2)]
    client = SmtpClient(parse_smtp_url(smtp_sink.url), timeout=5)
    options = SendOptions(DOMAIN, "test", lease_held=lambda: False)
    try:
        outcomes = deliver_many(pool, client, [str(m) for m in mail_ids], options)
    finally:
        client.close()
    assert outcomes == ["retrying", "retrying"]
    assert smtp_sink.wait_for(1, timeout=1) == []
    for mail_id in mail_ids:
        assert status_of(db, mail_id) == "retrying"
        row = db.execute("SELECT last_error FROM mails WHERE id = %s", (mail_id,)).fetchone()
        assert row is not None and "lease may have lapsed" in row[0]
