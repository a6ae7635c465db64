"""What goes on the wire is exactly what was accepted: the composer, the wire check,
and a send step that ends every mail in a named state."""

from __future__ import annotations

import base64
import json
import re
import time
import uuid
from email import message_from_bytes, policy
from email.header import decode_header, make_header
from email.message import EmailMessage
from typing import Any

import psycopg
import pytest
from flask.testing import FlaskClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from marshmallow import ValidationError
from psycopg_pool import ConnectionPool

from ingest_api.app import MAX_BODY_BYTES
from ingest_api.new_mails import stored_request as stored_request_of
from ingest_api.schemas.fields import MAX_DISPLAY_NAME_LENGTH
from ingest_api.schemas.mail import MAX_ATTACHMENT_BYTES, MAX_RECIPIENTS, SendMailSchema
from mail_worker import deliver as deliver_module
from mail_worker.compose import (
    BOUNDARY,
    ComposeError,
    compose,
    message_id,
    unsafe_character,
)
from mail_worker.deliver import RetryPolicy, deliver
from mail_worker.smtp import SmtpClient
from mail_worker.suppression import UnsubscribeLinks
from mail_worker.wire_check import WireCheckFailed, check_wire
from shared.devstack.smtp_sink import SmtpSink
from tests.conftest import TenantKey, new_key
from tests.factories import event_kinds, insert_mail, stored_request
from tests.processes import Processes, http
from tests.services import free_port
from tests.strategies import adversarial_mail_requests
from tests.test_api_mails import post
from tests.test_campaigns import create
from tests.test_workflows_cdp import send_event, set_secret

DOMAIN = "mail.test"
INJECTED_BCC = "=?utf-8?q?hello=0D=0ABcc=3A_victim=40evil.example?="
INJECTED_BODY = (
    "=?utf-8?q?Your_invoice=0D=0AContent-Type=3A_text/html=0D=0A=0D=0A<h1>Pay_to_IBAN_XX00</h1>?="
)

# Derandomized, so CI runs the same examples every time.
PROPERTY = settings(
    max_examples=300,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=list(HealthCheck),
)
MAIL_OF_ISSUE = {"from": "a@example.com", "to": ["Bob <bob@example.org>"], "text": "hi"}
# Pieces an attacker strings together: encoded words (q and b) hiding line breaks,
# header syntax, quoting characters, long words, non-ASCII and IDN-looking text.
FRAGMENTS = [
    INJECTED_BCC,
    INJECTED_BODY,
    "=?utf-8?b?DQpCY2M6IHZpY3RpbUBldmlsLmV4YW1wbGU=?=",
    "=?iso-8859-1?q?=0A?=",
    "=?",
    "?=",
    "=0D=0A",
    "Bcc: x@evil.example",
    "From: boss@example.com",
    " ",
    "  ",
    '"',
    "\\",
    ",",
    ";",
    ":",
    "<",
    ">",
    "@",
    "(",
    ")",
    "ü",
    "€",
    "😀",
    "\u00a0",
    "\u200b",
    "\u202e",
    "xn--mnchen-3ya",
    "münchen.de",
    "x" * 120,
    "Grüße",
]
header_text = (
    st.lists(st.sampled_from(FRAGMENTS) | st.text(max_size=8), max_size=12)
    .map("".join)
    .filter(lambda text: unsafe_character(text) is None and len(text) <= 998)
)
# The API collapses runs of spaces in a display name: Python's modern parser reads
# any run as one space, so such a name could not read back the same in both parsers.
display_names = st.one_of(st.none(), header_text.map(lambda text: re.sub(" {2,}", " ", text)[:150]))
addresses = st.sampled_from(
    ["bob@example.org", "zoe@münchen.de", "a.b+c@sub.example.org", "jörg@bücher.example"]
)
mailboxes = st.fixed_dictionaries({"name": display_names, "email": addresses})


def attachment(filename: str, content: bytes, content_type: str, cid: str | None) -> dict[str, Any]:
    return {
        "filename": filename,
        "content": base64.b64encode(content).decode(),
        "content_type": content_type,
        "content_id": cid,
    }


requests = st.builds(
    stored_request,
    **{"from": st.fixed_dictionaries({"name": display_names, "email": st.just("a@example.com")})},
    to=st.lists(mailboxes, min_size=1, max_size=3),
    cc=st.lists(mailboxes, max_size=2),
    reply_to=st.one_of(st.none(), mailboxes),
    subject=header_text.filter(bool),
    text=st.one_of(st.none(), st.text(max_size=200).filter(bool)),
    html=st.text(max_size=200).filter(bool),
    headers=st.dictionaries(
        st.sampled_from(["X-Campaign", "X-Very-Long-Header-Name-For-Folding-Tests-1234567890"]),
        header_text,
        max_size=2,
    ),
    attachments=st.lists(
        st.builds(
            attachment,
            header_text.filter(lambda name: bool(name.strip()) and len(name) <= 255),
            st.binary(max_size=64),
            st.sampled_from(["application/pdf", "image/png", "text/plain"]),
            st.one_of(st.none(), st.just("logo@mail.test")),
        ),
        max_size=2,
        unique_by=lambda a: a["content_id"] or uuid.uuid4().hex,
    ),
)


def headers_of(raw: bytes) -> list[str]:
    block = raw.split(b"\r\n\r\n", 1)[0].decode("utf-8")
    return [line for line in block.split("\r\n") if line and not line[0].isspace()]


def test_an_encoded_word_hiding_a_bcc_line_reaches_the_reader_as_text() -> None:
    request = stored_request(subject=INJECTED_BCC)
    raw = compose(uuid.uuid4(), request, DOMAIN)
    assert not any(line.lower().startswith("bcc") for line in headers_of(raw))
    modern = message_from_bytes(raw, policy=policy.default)
    assert modern["Bcc"] is None
    assert str(modern["Subject"]) == INJECTED_BCC, "the very characters that were accepted"
    legacy = message_from_bytes(raw, policy=policy.compat32)
    assert legacy["Bcc"] is None
    raw_subject = str(legacy["Subject"]).replace("\r\n", "")
    assert str(make_header(decode_header(raw_subject))) == INJECTED_BCC


def test_an_encoded_word_cannot_replace_the_body_or_push_headers_below_it() -> None:
    mail_id = uuid.uuid4()
    request = stored_request(subject=INJECTED_BODY, text="the real text", html=None)
    raw = compose(mail_id, request, DOMAIN)
    parsed = message_from_bytes(raw, policy=policy.default)
    assert parsed["Message-ID"] == message_id(mail_id, DOMAIN)
    assert parsed.get_content_type() == "text/plain"
    assert parsed.get_content().rstrip() == "the real text"
    assert str(parsed["Subject"]) == INJECTED_BODY


def test_display_names_headers_references_and_filenames_are_written_as_text() -> None:
    """Every place of the issue: from/to/reply_to names, X- values, References, filenames."""
    evil = INJECTED_BCC
    request = stored_request(
        **{"from": {"name": f"{evil} From: boss@example.com", "email": "alice@example.com"}},
        to=[{"name": evil, "email": "bob@example.org"}],
        reply_to={"name": evil, "email": "help@example.com"},
        headers={"X-Note": evil, "References": "<a@b.example> <c@d.example>"},
        attachments=[attachment(f"{evil}.pdf", b"%PDF", "application/pdf", None)],
    )
    mail_id = uuid.uuid4()
    raw = compose(mail_id, request, DOMAIN)
    names = [line.split(":", 1)[0].lower() for line in headers_of(raw)]
    assert names.count("from") == 1 and "bcc" not in names
    check_wire(raw, request, message_id=message_id(mail_id, DOMAIN))


@PROPERTY
@given(request=requests)
def test_every_composable_request_parses_back_to_exactly_what_was_accepted(
    request: dict[str, Any],
) -> None:
    mail_id = uuid.uuid4()
    link = "https://api.example/u/abc?x=1"
    raw = compose(mail_id, request, DOMAIN, list_unsubscribe=link)
    check_wire(raw, request, message_id=message_id(mail_id, DOMAIN), list_unsubscribe=link)
    assert max(len(line) for line in raw.split(b"\r\n")) <= 998


@pytest.mark.parametrize(
    "character", ["\r", "\n", "\u2028", "\u2029", "\x85", "\x0b", "\x0c", "\x1c", "\x1e", "\t"]
)
@pytest.mark.parametrize("field", ["subject", "name", "header", "filename"])
def test_control_characters_in_header_text_are_refused_by_the_composer(
    character: str, field: str
) -> None:
    text = f"a{character}b"
    overrides: dict[str, Any] = {
        "subject": {"subject": text},
        "name": {"to": [{"name": text, "email": "bob@example.org"}]},
        "header": {"headers": {"X-A": text}},
        "filename": {"attachments": [attachment(text, b"x", "application/pdf", None)]},
    }[field]
    with pytest.raises(ComposeError, match="control character"):
        compose(uuid.uuid4(), stored_request(**overrides), DOMAIN)


def test_the_wire_check_refuses_what_the_standard_library_writes_for_an_injection() -> None:
    """The bytes Python 3.11.7's own folding produced for the issue's first example."""
    request = stored_request(subject=INJECTED_BCC, html=None, text="hi")
    message = EmailMessage(policy=policy.SMTP.clone(refold_source="none", cte_type="7bit"))
    message["From"] = "Alice <alice@example.com>"
    message["To"] = "Bob <bob@example.org>"
    message["Subject"] = INJECTED_BCC
    message["Date"] = "Mon, 30 Nov 2026 12:00:00 +0000"
    mail_id = uuid.uuid4()
    message["Message-ID"] = message_id(mail_id, DOMAIN)
    message.set_content("hi")
    raw = message.as_bytes()
    assert b"\r\nBcc: victim@evil.example\r\n" in raw, "the CVE-2024-6923 class, on this Python"
    with pytest.raises(WireCheckFailed, match="header fields differ"):
        check_wire(raw, request, message_id=message_id(mail_id, DOMAIN))


def test_the_wire_check_refuses_a_changed_body_part() -> None:
    request = stored_request(text="pay to IBAN DE00", html=None)
    mail_id = uuid.uuid4()
    raw = compose(mail_id, request, DOMAIN).replace(b"DE00", b"XX99")
    with pytest.raises(WireCheckFailed, match="body parts"):
        check_wire(raw, request, message_id=message_id(mail_id, DOMAIN))


def run(pool: ConnectionPool, smtp: SmtpClient, mail_id: uuid.UUID, **retry: Any) -> str:
    return deliver(
        pool, smtp, str(mail_id), message_id_domain=DOMAIN, worker="test",
        retry=RetryPolicy(**retry),
    )  # fmt: skip


def failure_of(db: psycopg.Connection, mail_id: uuid.UUID) -> tuple[str, str, int]:
    row = db.execute(
        "SELECT status, last_error, attempts FROM mails WHERE id = %s", (mail_id,)
    ).fetchone()
    assert row is not None
    return row[0], row[1], row[2]


@pytest.mark.parametrize("subject", ["a\u2028b", "a\x0bb", "a\x0cb", "a\x1cb", "a\x85b"])
def test_a_poison_mail_is_failed_at_once_with_the_reason_and_never_retried(
    db: psycopg.Connection,
    tenant: TenantKey,
    pool: ConnectionPool,
    smtp: SmtpClient,
    smtp_sink: SmtpSink,
    subject: str,
) -> None:
    """Stored as an API without the new rules stored it; the send step must be total."""
    mail_id = insert_mail(db, tenant.tenant_id, subject=subject)
    assert run(pool, smtp, mail_id) == "failed"
    status, error, attempts = failure_of(db, mail_id)
    assert (status, attempts) == ("failed", 1)
    assert error.startswith("compose_failed: ComposeError: Subject contains"), error
    assert event_kinds(db, mail_id) == ["accepted", "sending", "failed"]
    assert db.execute("SELECT count(*) FROM outbox").fetchone() == (0,)
    assert smtp_sink.wait_for(1, timeout=0.5) == []


def test_a_huge_header_is_refused_before_any_folding(
    db: psycopg.Connection, tenant: TenantKey, pool: ConnectionPool, smtp: SmtpClient
) -> None:
    """About 9 MB of short words once burned a worker until its time limit."""
    mail_id = insert_mail(db, tenant.tenant_id, headers={"X-Big": "ab " * 3_000_000})
    assert run(pool, smtp, mail_id) == "failed"
    assert "X-Big is longer than" in failure_of(db, mail_id)[1]


def test_a_mail_failing_the_wire_check_is_failed_and_not_sent(
    db: psycopg.Connection,
    tenant: TenantKey,
    pool: ConnectionPool,
    smtp: SmtpClient,
    smtp_sink: SmtpSink,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Were the composer ever to write an extra header, the check stops the mail."""
    real_compose = deliver_module.compose

    def injecting(*args: Any, **kwargs: Any) -> bytes:
        return b"Bcc: victim@evil.example\r\n" + real_compose(*args, **kwargs)

    monkeypatch.setattr(deliver_module, "compose", injecting)
    mail_id = insert_mail(db, tenant.tenant_id)
    assert run(pool, smtp, mail_id) == "failed"
    status, error, _ = failure_of(db, mail_id)
    assert status == "failed" and error.startswith("unsafe_on_the_wire: "), error
    assert smtp_sink.wait_for(1, timeout=0.5) == []


class ExplodingSmtp(SmtpClient):
    """Raises what no SMTP server answers with (a bug, say) instead of an SmtpFailure."""

    def send(self, *args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("not an SMTP answer")


def test_an_unexpected_error_while_sending_is_retried_and_counted_up_to_the_limit(
    db: psycopg.Connection, tenant: TenantKey, pool: ConnectionPool, smtp: SmtpClient
) -> None:
    exploding = ExplodingSmtp(smtp.target)
    mail_id = insert_mail(db, tenant.tenant_id)
    outcomes = []
    for _ in range(2):
        db.execute("UPDATE outbox SET available_at = now()")
        outcomes.append(run(pool, exploding, mail_id, max_attempts=2, base_seconds=1))
    assert outcomes == ["retrying", "dead"]
    status, error, attempts = failure_of(db, mail_id)
    assert (status, attempts) == ("dead", 2)
    assert "RuntimeError: not an SMTP answer" in error


@PROPERTY
@given(body=adversarial_mail_requests())
def test_every_mail_the_api_accepts_goes_on_the_wire_exactly_as_accepted(
    body: dict[str, Any],
) -> None:
    """The API's validation chained with the worker's composer and wire check."""
    try:
        data = SendMailSchema().load(body)
    except ValidationError:
        return  # refused with a 422 naming the field (tests/test_field_rules.py)
    request = stored_request_of(data)
    mail_id = uuid.uuid4()
    raw = compose(mail_id, request, DOMAIN)
    check_wire(raw, request, message_id=message_id(mail_id, DOMAIN))


def test_runs_of_spaces_in_a_display_name_are_stored_as_one() -> None:
    """Python's modern parser reads any run as one space: stored that way, the wire
    check can hold the name to exactly what was accepted."""
    data = SendMailSchema().load(
        {
            "from": {"email": "a@example.com", "name": "Ann   Lee"},
            "to": ['"Bob  Smith" <bob@example.org>'],
            "subject": "s",
            "text": "t",
        }
    )
    request = stored_request_of(data)
    assert (request["from"]["name"], request["to"][0]["name"]) == ("Ann Lee", "Bob Smith")
    mail_id = uuid.uuid4()
    check_wire(compose(mail_id, request, DOMAIN), request, message_id=message_id(mail_id, DOMAIN))


def worst_accepted_mail() -> dict[str, Any]:
    """The costliest mail the API accepts: every header-bound limit at its maximum,
    non-ASCII everywhere, and the rest of the 10 MB body in an attachment."""
    name = "😀" * MAX_DISPLAY_NAME_LENGTH
    mail: dict[str, Any] = {
        "from": {"email": "alice@example.com", "name": name},
        "to": [{"email": f"r{i}@example.org", "name": name} for i in range(MAX_RECIPIENTS)],
        "subject": ("ü " * 499)[:998],
        "headers": {f"X-H{i}": ("ab " * 333)[:998] for i in range(16)},
        "attachments": [
            {
                "filename": "ü" * 200 + ".pdf",
                "content": base64.b64encode(b"\x00" * MAX_ATTACHMENT_BYTES).decode(),
                "content_type": "application/pdf",
            }
        ],
    }
    room = MAX_BODY_BYTES - len(json.dumps({**mail, "text": "", "html": ""}).encode()) - 1000
    line = "word " * 15 + "\n"
    mail["text"] = line * (room // 2 // len(json.dumps(line)))
    mail["html"] = ("<p>" + line) * (room // 2 // len(json.dumps("<p>" + line)))
    return mail


def arrival_of(smtp_sink: SmtpSink, mail_id: str, timeout: float) -> float:
    """The monotonic time at which the mail with this Message-ID reached the sink."""
    wanted = f"<{mail_id}@{DOMAIN}>"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(m.parsed()["Message-ID"] == wanted for m in smtp_sink.received):
            return time.monotonic()
        time.sleep(0.01)
    raise AssertionError(f"mail {mail_id} did not arrive within {timeout} s")


@pytest.mark.e2e
def test_through_the_real_pipeline_injection_is_text_and_one_tenant_cannot_jam_another(
    procs: Processes, smtp_sink: SmtpSink
) -> None:
    port = free_port()
    procs.api(port)
    procs.relay()
    procs.worker(concurrency=1)  # the worst case: one process, every mail in one line
    url = f"http://127.0.0.1:{port}/v1/mails"
    hostile = {"Authorization": f"Bearer {new_key(procs, 'hostile')}"}
    procs.cli("ingest-api", "create-tenant", "bystander", "--sender-domain", "globex.com")
    bystander_key = procs.cli("ingest-api", "create-key", "bystander").strip().splitlines()[-1]
    bystander = {"Authorization": f"Bearer {bystander_key}"}
    plain = {"from": "b@globex.com", "to": ["x@example.org"], "subject": "reset", "text": "t"}

    # The issue's first example, end to end: 202, and the server gets no Bcc line.
    status, body = http("POST", url, {**MAIL_OF_ISSUE, "subject": INJECTED_BCC}, hostile)
    assert status == 202, body
    arrival_of(smtp_sink, body["id"], timeout=30)
    (received,) = smtp_sink.received
    assert received.envelope_to == ["bob@example.org"]
    assert b"\r\nBcc:" not in received.data and received.parsed()["Bcc"] is None
    assert str(received.parsed()["Subject"]) == INJECTED_BCC

    status, body = http("POST", url, plain, bystander)
    assert status == 202, body
    start = time.monotonic()
    alone = arrival_of(smtp_sink, body["id"], timeout=30) - start

    status, worst = http("POST", url, worst_accepted_mail(), hostile)
    assert status == 202, worst
    status, body = http("POST", url, plain, bystander)
    assert status == 202, body
    start = time.monotonic()
    behind_the_worst = arrival_of(smtp_sink, body["id"], timeout=60) - start
    arrival_of(smtp_sink, worst["id"], timeout=30)
    print(f"bystander's mail: {alone:.2f} s alone, {behind_the_worst:.2f} s behind the worst")
    # The issue's bound ("a second or two"; it measured 28 s), with room for a loaded CI.
    assert behind_the_worst - alone < 4.0


def test_end_user_text_in_cdp_traits_and_trigger_data_reaches_the_wire_as_text(
    client: FlaskClient,
    db: psycopg.Connection,
    tenant: TenantKey,
    pool: ConnectionPool,
    smtp: SmtpClient,
    smtp_sink: SmtpSink,
) -> None:
    """A signup form's name field, a trigger's data and a recipient's name, rendered into
    the subject, the body and the To display name, then sent by the real send step."""
    create(
        client, tenant, key="welcome", **{"from": "Shop <shop@example.com>"},
        subject="Welcome {{ first_name }}", text="Hi {{ first_name }}", html=None, headers={},
    )  # fmt: skip
    set_secret(db, tenant)
    response = post(client, tenant, {"event": "Signed Up", "campaign": "welcome"}, "/v1/workflows")
    assert response.status_code == 201, response.get_json()
    traits = {"email": "ann@example.org", "name": INJECTED_BODY, "first_name": INJECTED_BCC}
    event = {"type": "track", "event": "Signed Up", "messageId": "m-1", "userId": "u-1",
             "context": {"traits": traits}}  # fmt: skip
    cdp = send_event(client, tenant, event)
    assert cdp.status_code == 202 and cdp.get_json()["accepted"] == 1, cdp.get_json()
    triggered = post(
        client, tenant,
        {"recipients": [{"email": "bob@example.org", "name": INJECTED_BCC}],
         "data": {"first_name": INJECTED_BODY}},
        "/v1/campaigns/welcome/trigger",
    )  # fmt: skip
    assert triggered.status_code == 202, triggered.get_json()
    ids = [cdp.get_json()["mails"][0]["id"], triggered.get_json()["mails"][0]["id"]]
    links = UnsubscribeLinks("http://127.0.0.1:8000", "s" * 32)
    for mail_id in ids:
        outcome = deliver(
            pool, smtp, mail_id, message_id_domain=DOMAIN, worker="test", unsubscribe=links
        )
        assert outcome == "sent"
    received = {m.parsed()["Message-ID"]: m for m in smtp_sink.wait_for(2, timeout=5)}
    expected = {ids[0]: (INJECTED_BODY, INJECTED_BCC), ids[1]: (INJECTED_BCC, INJECTED_BODY)}
    for mail_id, (name, first_name) in expected.items():
        mail = received[message_id(mail_id, DOMAIN)]
        parsed = mail.parsed()
        assert b"\r\nBcc:" not in mail.data and b"\r\nContent-Type: text/html" not in mail.data
        assert parsed["To"].addresses[0].display_name == name
        assert str(parsed["Subject"]) == f"Welcome {first_name}"
        assert parsed.get_content().rstrip() == f"Hi {first_name}"


_body_lines = st.lists(
    st.one_of(
        st.text(st.characters(blacklist_categories=("Cs",)), max_size=120),
        st.sampled_from(["--=_mailroom_", ".", "..", "From me", "=", "=3D", " ", "\t", "x" * 1200]),
    ),
    max_size=12,
)
_bodies = st.one_of(
    st.none(),
    st.tuples(_body_lines, st.sampled_from(["\n", "\r\n", "\r"])).map(lambda t: t[1].join(t[0])),
)


@PROPERTY
@given(text=_bodies, html=_bodies)
def test_every_text_and_html_body_parses_back_to_exactly_what_was_accepted(
    text: str | None, html: str | None
) -> None:
    """The body writer of mail without attachments (mail_worker.compose._text_body): any
    text, line ends, long lines, boundary look-alikes; the wire check reads it back."""
    request = stored_request(text=text, html=html)
    mail_id = uuid.uuid4()
    raw = compose(mail_id, request, DOMAIN)
    check_wire(raw, request, message_id=message_id(mail_id, DOMAIN))
    assert max(len(line) for line in raw.split(b"\r\n")) <= 998


def test_a_boundary_found_in_a_part_is_never_used(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("mail_worker.compose.secrets.token_hex", lambda _: "1" * 24)
    request = stored_request(text=f"a\n--{BOUNDARY.decode()}\nb", html="<p>x</p>")
    mail_id = uuid.uuid4()
    raw = compose(mail_id, request, DOMAIN)
    assert f'boundary="=_mailroom_{"1" * 24}"'.encode() in raw
    check_wire(raw, request, message_id=message_id(mail_id, DOMAIN))
    plain = compose(mail_id, stored_request(text="a", html="<p>x</p>"), DOMAIN)
    assert b'boundary="' + BOUNDARY + b'"' in plain, "the usual one otherwise"
