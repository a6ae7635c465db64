"""deliver() against real aiosmtpd servers: internationalised addresses (IDNA,
SMTPUTF8), TLS (STARTTLS, implicit) and AUTH, and the structure of what arrived.

Every check parses what the server received, not what we meant to send.
"""

from __future__ import annotations

import base64
import ssl
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from email import message_from_string, policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import psycopg
import pytest
import trustme
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword
from psycopg_pool import ConnectionPool

from mail_worker.deliver import deliver
from mail_worker.smtp import SmtpClient
from shared.config import ConfigError, Settings, load_settings, parse_smtp_url
from shared.devstack.smtp_sink import SmtpSink
from tests.conftest import TenantKey
from tests.factories import event_kinds, insert_mail, status_of
from tests.services import free_port

DOMAIN = "mail.test"
USER, PASSWORD = "mailroom", "s3cret pass"


class Recorder:
    """An aiosmtpd handler that keeps each message with its envelope and session."""

    def __init__(self) -> None:
        self.received: list[dict[str, Any]] = []

    async def handle_DATA(self, server, session, envelope):
        self.received.append(
            {
                "mail_from": envelope.mail_from,
                "rcpt_tos": list(envelope.rcpt_tos),
                "mail_options": list(envelope.mail_options),
                "data": bytes(envelope.original_content or envelope.content),
                "tls": server.transport.get_extra_info("ssl_object") is not None,
                "login": session.login_data,
            }
        )
        return "250 OK"

    def parsed(self, index: int = 0) -> EmailMessage:
        # From text: the bytes parser does not decode UTF-8 headers (RFC 6532).
        data = self.received[index]["data"].decode("utf-8")
        return message_from_string(data, policy=policy.default)  # type: ignore[return-value]


@contextmanager
def smtp_server(**parameters: Any) -> Iterator[tuple[Controller, Recorder]]:
    recorder = Recorder()
    controller = Controller(recorder, hostname="127.0.0.1", port=free_port(), **parameters)
    controller.start()
    try:
        yield controller, recorder
    finally:
        controller.stop()


def send(pool: ConnectionPool, url: str, mail_id: uuid.UUID, ca_file: str | None = None) -> str:
    client = SmtpClient(parse_smtp_url(url), timeout=5, ca_file=ca_file)
    try:
        return deliver(pool, client, str(mail_id), message_id_domain=DOMAIN, worker="test")
    finally:
        client.close()


def last_error(db: psycopg.Connection, mail_id: uuid.UUID) -> str:
    row = db.execute("SELECT last_error FROM mails WHERE id = %s", (mail_id,)).fetchone()
    assert row is not None
    return str(row[0])


# ----- internationalised addresses: IDNA domains, SMTPUTF8 local parts -----


def test_a_unicode_domain_is_sent_in_idna_form_to_a_server_without_smtputf8(
    db: psycopg.Connection, tenant: TenantKey, pool: ConnectionPool
) -> None:
    mail_id = insert_mail(
        db,
        tenant.tenant_id,
        to=[{"name": "Jörg", "email": "joerg@bücher.example"}],
        cc=[{"name": None, "email": "info@straße.example"}],  # IDNA2008 keeps the ß
        reply_to={"name": None, "email": "hilfe@bücher.example"},
    )
    with smtp_server(enable_SMTPUTF8=False) as (controller, recorder):
        assert send(pool, f"smtp://127.0.0.1:{controller.port}", mail_id) == "sent"
    (received,) = recorder.received
    assert received["rcpt_tos"] == ["joerg@xn--bcher-kva.example", "info@xn--strae-oqa.example"]
    assert received["mail_options"] == [], "an ASCII envelope asks for no SMTPUTF8"
    assert received["data"].isascii()
    parsed = recorder.parsed()
    (to,) = parsed["To"].addresses
    assert (to.display_name, to.addr_spec) == ("Jörg", "joerg@xn--bcher-kva.example")
    assert parsed["Cc"].addresses[0].addr_spec == "info@xn--strae-oqa.example"
    assert parsed["Reply-To"].addresses[0].addr_spec == "hilfe@xn--bcher-kva.example"


def test_a_non_ascii_local_part_is_sent_with_smtputf8_and_utf8_headers(
    db: psycopg.Connection, tenant: TenantKey, pool: ConnectionPool
) -> None:
    mail_id = insert_mail(
        db,
        tenant.tenant_id,
        to=[{"name": "Jörg Müller", "email": "jörg@bücher.example"}],
        cc=[{"name": None, "email": "joerg@bücher.example"}],
        subject="Grüße aus Köln",
    )
    with smtp_server(enable_SMTPUTF8=True) as (controller, recorder):
        assert send(pool, f"smtp://127.0.0.1:{controller.port}", mail_id) == "sent"
    (received,) = recorder.received
    assert received["rcpt_tos"] == ["jörg@bücher.example", "joerg@xn--bcher-kva.example"]
    assert {"SMTPUTF8", "BODY=8BITMIME"} <= set(received["mail_options"])
    raw = received["data"]
    assert "To: Jörg Müller <jörg@bücher.example>".encode() in raw, "RFC 6532: UTF-8 as is"
    assert "Subject: Grüße aus Köln".encode() in raw and b"=?utf-8?" not in raw
    parsed = recorder.parsed()
    assert parsed["To"].addresses[0].username == "jörg"
    assert parsed["Subject"] == "Grüße aus Köln"
    assert parsed["Message-ID"] == f"<{mail_id}@{DOMAIN}>"


def test_a_non_ascii_local_part_fails_permanently_without_smtputf8(
    db: psycopg.Connection, tenant: TenantKey, pool: ConnectionPool
) -> None:
    mail_id = insert_mail(db, tenant.tenant_id, to=[{"name": None, "email": "jörg@bücher.example"}])
    with smtp_server(enable_SMTPUTF8=False) as (controller, recorder):
        assert send(pool, f"smtp://127.0.0.1:{controller.port}", mail_id) == "failed"
    assert recorder.received == []
    assert "does not support SMTPUTF8" in last_error(db, mail_id)
    assert event_kinds(db, mail_id) == ["accepted", "sending", "failed"]
    assert db.execute("SELECT count(*) FROM outbox").fetchone() == (0,), "no retry"


# ----- TLS and AUTH, configured by MAILROOM_SMTP_URL and MAILROOM_SMTP_CA_FILE -----


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def server_tls(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(context)
    return context


@pytest.fixture(scope="module")
def ca_file(ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("ca") / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return str(path)


def test_the_ca_file_setting_names_an_existing_file(ca_file: str, tmp_path: Path) -> None:
    assert load_settings(environ={"MAILROOM_SMTP_CA_FILE": ca_file}).smtp_ca_file == ca_file
    with pytest.raises(ConfigError, match="MAILROOM_SMTP_CA_FILE is malformed"):
        load_settings(environ={"MAILROOM_SMTP_CA_FILE": str(tmp_path / "missing.pem")})


def test_starttls_required_by_the_server(
    db: psycopg.Connection,
    tenant: TenantKey,
    pool: ConnectionPool,
    server_tls: ssl.SSLContext,
    ca_file: str,
) -> None:
    mail_id = insert_mail(db, tenant.tenant_id)
    with smtp_server(require_starttls=True, tls_context=server_tls) as (controller, recorder):
        url = f"smtp://127.0.0.1:{controller.port}?starttls=1"
        assert send(pool, url, mail_id, ca_file=ca_file) == "sent"
    (received,) = recorder.received
    assert received["tls"] and received["rcpt_tos"] == ["bob@example.org"]
    assert recorder.parsed()["Message-ID"] == f"<{mail_id}@{DOMAIN}>"


def test_implicit_tls(
    db: psycopg.Connection,
    tenant: TenantKey,
    pool: ConnectionPool,
    server_tls: ssl.SSLContext,
    ca_file: str,
) -> None:
    mail_id = insert_mail(db, tenant.tenant_id)
    with smtp_server(ssl_context=server_tls) as (controller, recorder):
        assert send(pool, f"smtps://127.0.0.1:{controller.port}", mail_id, ca_file) == "sent"
    (received,) = recorder.received
    assert received["tls"] and received["rcpt_tos"] == ["bob@example.org"]


def test_an_untrusted_certificate_is_not_accepted(
    db: psycopg.Connection, tenant: TenantKey, pool: ConnectionPool, server_tls: ssl.SSLContext
) -> None:
    mail_id = insert_mail(db, tenant.tenant_id)
    with smtp_server(ssl_context=server_tls) as (controller, recorder):
        assert send(pool, f"smtps://127.0.0.1:{controller.port}", mail_id) == "retrying"
    assert recorder.received == []
    assert "CERTIFICATE_VERIFY_FAILED" in last_error(db, mail_id)


def test_a_plain_text_client_fails_clearly_against_a_server_requiring_starttls(
    db: psycopg.Connection, tenant: TenantKey, pool: ConnectionPool, server_tls: ssl.SSLContext
) -> None:
    mail_id = insert_mail(db, tenant.tenant_id)
    with smtp_server(require_starttls=True, tls_context=server_tls) as (controller, recorder):
        assert send(pool, f"smtp://127.0.0.1:{controller.port}", mail_id) == "failed"
    assert recorder.received == []
    error = last_error(db, mail_id)
    assert error.startswith("530") and "STARTTLS" in error


class Authenticator:
    def __init__(self) -> None:
        self.mechanisms: list[str] = []

    def __call__(self, server, session, envelope, mechanism, auth_data):
        self.mechanisms.append(mechanism)
        ok = isinstance(auth_data, LoginPassword) and (auth_data.login, auth_data.password) == (
            USER.encode(),
            PASSWORD.encode(),
        )
        return AuthResult(success=ok, handled=False, auth_data=auth_data)


@contextmanager
def auth_server(
    server_tls: ssl.SSLContext, mechanism: str
) -> Iterator[tuple[Controller, Recorder, Authenticator]]:
    authenticator = Authenticator()
    other = {"LOGIN": "PLAIN", "PLAIN": "LOGIN"}[mechanism]
    with smtp_server(
        require_starttls=True, tls_context=server_tls, authenticator=authenticator,
        auth_require_tls=True, auth_required=True, auth_exclude_mechanism=[other],
    ) as (controller, recorder):  # fmt: skip
        yield controller, recorder, authenticator


@pytest.mark.parametrize("mechanism", ["LOGIN", "PLAIN"])
def test_auth_over_starttls(
    db: psycopg.Connection,
    tenant: TenantKey,
    pool: ConnectionPool,
    server_tls: ssl.SSLContext,
    ca_file: str,
    mechanism: str,
) -> None:
    mail_id = insert_mail(db, tenant.tenant_id)
    with auth_server(server_tls, mechanism) as (controller, recorder, authenticator):
        url = f"smtp://{USER}:s3cret%20pass@127.0.0.1:{controller.port}?starttls=1"
        assert send(pool, url, mail_id, ca_file=ca_file) == "sent"
    assert authenticator.mechanisms == [mechanism]
    (received,) = recorder.received
    assert received["tls"] and received["rcpt_tos"] == ["bob@example.org"]


def test_a_wrong_password_is_a_permanent_failure(
    db: psycopg.Connection,
    tenant: TenantKey,
    pool: ConnectionPool,
    server_tls: ssl.SSLContext,
    ca_file: str,
) -> None:
    mail_id = insert_mail(db, tenant.tenant_id)
    with auth_server(server_tls, "PLAIN") as (controller, recorder, _):
        url = f"smtp://{USER}:wrong@127.0.0.1:{controller.port}?starttls=1"
        assert send(pool, url, mail_id, ca_file=ca_file) == "failed"
    assert recorder.received == []
    assert last_error(db, mail_id).startswith("535")
    assert status_of(db, mail_id) == "failed"


# ----- the structure of a full mail, as the server received it -----

PDF = b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj << >> endobj\ntrailer << >>\n%%EOF\n"
PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4


def test_a_full_mail_arrives_with_the_right_structure_and_headers(
    db: psycopg.Connection,
    tenant: TenantKey,
    pool: ConnectionPool,
    settings: Settings,
    smtp_sink: SmtpSink,
) -> None:
    subject = "Grüße — Ihre Rechnung Nr. 4711 für März, " + "sehr lange Betreffzeile " * 8
    mail_id = insert_mail(
        db,
        tenant.tenant_id,
        **{"from": {"name": "Zoë Ørsted", "email": "zoe@example.com"}},
        to=[{"name": "Jörg Müller", "email": "joerg@example.org"}],
        cc=[{"name": "Çelik, Ayşe", "email": "ayse@example.org"}],
        bcc=[{"name": "Geheim", "email": "audit@example.org"}],
        reply_to={"name": "Kundendienst Ü", "email": "support@example.com"},
        subject=subject,
        text="Grüße!\nIhre Rechnung liegt bei.\n",
        html='<p>Grüße!</p><img src="cid:logo@mail.test">',
        headers={"X-Mailroom-Test": "ja"},
        attachments=[
            {"filename": "Rechnung-März.pdf", "content": base64.b64encode(PDF).decode(),
             "content_type": "application/pdf", "content_id": None},
            {"filename": "logo.png", "content": base64.b64encode(PNG).decode(),
             "content_type": "image/png", "content_id": "logo@mail.test"},
        ],
    )  # fmt: skip
    assert settings.smtp is not None
    client = SmtpClient(settings.smtp, timeout=5)
    try:
        assert deliver(pool, client, str(mail_id), message_id_domain=DOMAIN, worker="t") == "sent"
    finally:
        client.close()
    (received,) = smtp_sink.wait_for(1, timeout=5)

    # The envelope: bcc is there, and only there.
    assert received.envelope_from == "zoe@example.com"
    assert received.envelope_to == ["joerg@example.org", "ayse@example.org", "audit@example.org"]
    raw = received.data
    assert b"audit@example.org" not in raw and b"Geheim" not in raw
    assert raw.isascii(), "ASCII addresses: RFC 2047 words, no SMTPUTF8 needed"

    # The lines: none over SMTP's 998, and the library folds and encodes to 78.
    lines = raw.split(b"\r\n")
    assert max(len(line) for line in lines) <= 998, "RFC 5322's hard limit"
    assert max(len(line) for line in lines) <= 78, "folded headers, base64 and QP bodies"
    assert all(not line.endswith(b"\r") and b"\n" not in line for line in lines)

    # The headers.
    parsed = received.parsed()
    assert parsed["Bcc"] is None
    assert parsed["Message-ID"] == f"<{mail_id}@{DOMAIN}>"
    assert parsed["Date"].datetime is not None
    assert parsed["Subject"] == subject
    assert str(parsed["From"]) == "Zoë Ørsted <zoe@example.com>"
    assert str(parsed["To"]) == "Jörg Müller <joerg@example.org>"
    (cc,) = parsed["Cc"].addresses
    assert (cc.display_name, cc.addr_spec) == ("Çelik, Ayşe", "ayse@example.org")
    assert str(parsed["Reply-To"]) == "Kundendienst Ü <support@example.com>"
    assert parsed["X-Mailroom-Test"] == "ja"
    assert parsed["MIME-Version"] == "1.0"

    # The structure: mixed > alternative (text, related (html, image)), attachment.
    def tree(part: EmailMessage) -> Any:
        if part.is_multipart():
            return (part.get_content_type(), [tree(p) for p in part.iter_parts()])
        return part.get_content_type()

    assert tree(parsed) == (
        "multipart/mixed",
        [
            (
                "multipart/alternative",
                ["text/plain", ("multipart/related", ["text/html", "image/png"])],
            ),
            "application/pdf",
        ],
    )
    text = parsed.get_body(("plain",))
    html = parsed.get_body(("html",))
    assert text is not None
    assert text.get_content().replace("\r\n", "\n") == "Grüße!\nIhre Rechnung liegt bei.\n"
    assert html is not None and 'src="cid:logo@mail.test"' in html.get_content()
    image = next(part for part in parsed.walk() if part.get_content_type() == "image/png")
    assert image["Content-ID"] == "<logo@mail.test>"
    assert image.get_content() == PNG
    (attachment,) = parsed.iter_attachments()
    assert attachment.get_content_disposition() == "attachment"
    assert attachment.get_filename() == "Rechnung-März.pdf"
    assert attachment.get_content() == PDF
    assert status_of(db, mail_id) == "sent"
