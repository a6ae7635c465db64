"""Field rules at the API: nothing accepted can break a header on the wire or make the
worker's work unbounded; every source of mail (single, batch, campaign trigger and
preview, CDP event) applies them, and the tenant CLI checks sender domains."""

from __future__ import annotations

import json
import unicodedata
import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from email.utils import getaddresses
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner
from flask.testing import FlaskClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from marshmallow import ValidationError

from ingest_api.cli import cli
from ingest_api.new_mails import field_errors, new_mail
from ingest_api.resources.mails import validate_batch_items
from ingest_api.schemas.fields import MAX_DISPLAY_NAME_LENGTH
from ingest_api.schemas.mail import (
    MAX_CUSTOM_HEADER_BYTES,
    MAX_CUSTOM_HEADERS,
    MAX_FILENAME_LENGTH,
    MAX_HEADER_VALUE_LENGTH,
    MAX_SUBJECT_LENGTH,
    SendMailSchema,
)
from shared.store.tenants import Tenant
from tests.conftest import TenantKey
from tests.strategies import HEADER_BOUND_FIELDS, adversarial_mail_requests
from tests.test_api import MAIL, auth, counts
from tests.test_api_mails import attachment, post
from tests.test_campaigns import create, trigger
from tests.test_workflows_cdp import EVENT, send_event, set_secret, stored_events, workflow

# Each breaks header lines somewhere (Python's email package, str.splitlines, folding).
HEADER_BREAKERS = [
    "\u2028", "\u2029", "\u0085", "\x0b", "\x0c", "\x1c", "\x1d", "\x1e",
    "\x01", "\x1f", "\x7f", "\x80", "\x9f", "\t", "\r", "\n",
]  # fmt: skip
DATA = {"first_name": "Ann", "plan": "pro"}


def problem(response: Any) -> dict[str, Any]:
    assert response.status_code == 422, (response.status_code, response.get_json())
    errors: dict[str, Any] = response.get_json()["errors"]
    return errors


def mentions(errors: Any, text: str) -> bool:
    return text in json.dumps(errors, ensure_ascii=False)


def codepoint(char: str) -> str:
    return f"U+{ord(char):04X}"


# --- 1. header-bound text ---------------------------------------------------------


@pytest.mark.parametrize("char", HEADER_BREAKERS, ids=codepoint)
def test_header_bound_text_with_a_control_or_line_separator_is_422_naming_the_field(
    client: FlaskClient, tenant: TenantKey, db: psycopg.Connection, char: str
) -> None:
    places: list[tuple[dict[str, Any], str]] = [
        ({"subject": f"a{char}b"}, "subject"),
        ({"from": f"Ali{char}ce <alice@example.com>"}, "from"),
        ({"to": [{"email": "bob@example.org", "name": f"B{char}b"}]}, "to"),
        ({"cc": [f"C{char} <c@example.org>"]}, "cc"),
        ({"reply_to": f"R{char} <r@example.org>"}, "reply_to"),
        ({"headers": {"X-Note": f"a{char}b"}}, "headers"),
        ({"headers": {"References": f"<a@b>{char}<c@d>"}}, "headers"),
        ({"attachments": [attachment(f"a{char}b.txt")]}, "attachments"),
        ({"attachments": [attachment("a.png", content_id=f"a{char}b")]}, "attachments"),
    ]
    for change, field in places:
        errors = problem(post(client, tenant, {**MAIL, **change}))
        assert list(errors) == [field], (change, errors)
    # The message names the character, so a client can find it.
    assert mentions(
        problem(post(client, tenant, {**MAIL, "subject": f"a{char}b"})), codepoint(char)
    )
    assert counts(db) == (0, 0, 0)


def test_encoded_word_syntax_is_ordinary_text_and_stored_as_given(
    client: FlaskClient, tenant: TenantKey, db: psycopg.Connection
) -> None:
    tricky = "=?utf-8?q?hello=0D=0ABcc=3A_x?="
    body = {
        **MAIL,
        "subject": tricky,
        "from": {"email": "alice@example.com", "name": tricky},
        "headers": {"X-Note": tricky},
    }
    response = post(client, tenant, body)
    assert response.status_code == 202, response.get_json()
    row = db.execute("SELECT request FROM mails").fetchone()
    assert row is not None
    assert row[0]["subject"] == row[0]["from"]["name"] == row[0]["headers"]["X-Note"] == tricky


def test_batch_items_follow_the_header_rules(client: FlaskClient, tenant: TenantKey) -> None:
    mails = [MAIL, {**MAIL, "subject": "a\u2028b"}, {**MAIL, "headers": {"X-A": "a\x85"}}]
    response = post(client, tenant, {"mails": mails}, "/v1/mails/batch")
    answer = response.get_json()
    assert (answer["accepted"], answer["rejected"]) == (1, 2), answer
    assert list(answer["results"][1]["errors"]) == ["subject"]
    assert list(answer["results"][2]["errors"]) == ["headers"]


def test_trigger_and_preview_refuse_rendered_header_text_naming_the_recipients_field(
    client: FlaskClient, tenant: TenantKey, db: psycopg.Connection
) -> None:
    create(client, tenant)
    ok = {"email": "ok@example.org", "data": DATA}
    bad_subject = {"email": "a@example.org", "data": {**DATA, "first_name": "A\u2028Bcc: x"}}
    bad_header = {"email": "b@example.org", "data": {**DATA, "plan": "p\x0bq"}}
    bad_name = {"email": "c@example.org", "name": "C\x1e", "data": DATA}
    errors = problem(
        trigger(client, tenant, {"recipients": [ok, bad_subject, bad_header, bad_name]})
    )
    assert sorted(errors) == ["recipients.1.subject", "recipients.2.headers", "recipients.3.name"]
    assert counts(db) == (0, 0, 0)

    for recipient, field in [(bad_subject, "subject"), (bad_header, "headers"), (bad_name, "name")]:
        preview = post(client, tenant, {"recipient": recipient}, "/v1/campaigns/welcome/preview")
        assert list(problem(preview)) == [field]


def test_a_cdp_workflow_whose_rendered_mail_is_unsafe_is_listed_as_failed(
    client: FlaskClient, tenant: TenantKey, db: psycopg.Connection
) -> None:
    set_secret(db, tenant)
    create(client, tenant)
    rule = workflow(client, tenant)
    event = {**EVENT, "properties": {**EVENT["properties"], "first_name": "Ann\u2029Bcc: x"}}
    response = send_event(client, tenant, event)
    assert response.status_code == 202, response.get_json()
    answer = response.get_json()
    assert answer["mails"] == []
    [failed] = answer["failed"]
    assert failed["workflow_id"] == rule["id"]
    assert list(failed["errors"]) == ["subject"]
    assert len(stored_events(db)) == 1
    assert counts(db)[0] == 0


def test_campaign_templates_refuse_control_characters(
    client: FlaskClient, tenant: TenantKey
) -> None:
    for change, field in [
        ({"subject": "Hi\u2028{{ first_name }}"}, "subject"),
        ({"headers": {"X-A": "{{ plan }}\x0c"}}, "headers"),
    ]:
        response = post(client, tenant, {**_campaign(), **change}, "/v1/campaigns")
        assert field in problem(response), change


def _campaign() -> dict[str, Any]:
    from tests.test_campaigns import CAMPAIGN  # noqa: PLC0415

    return dict(CAMPAIGN)


# --- 2. sizes ---------------------------------------------------------------------


def test_header_sizes_are_bounded(client: FlaskClient, tenant: TenantKey) -> None:
    long_value = "word " * 200  # 1000 characters of short words
    many = {f"X-H{i}": "v" for i in range(MAX_CUSTOM_HEADERS + 1)}
    heavy = {f"X-H{i}": "é" * 900 for i in range(10)}  # each fine, 18,000 bytes together
    assert sum(len(v.encode()) for v in heavy.values()) > MAX_CUSTOM_HEADER_BYTES
    for change, field in [
        ({"headers": {"X-Long": long_value[: MAX_HEADER_VALUE_LENGTH + 1]}}, "headers"),
        ({"headers": many}, "headers"),
        ({"headers": heavy}, "headers"),
        ({"from": f"{'n' * (MAX_DISPLAY_NAME_LENGTH + 1)} <alice@example.com>"}, "from"),
        ({"to": [{"email": "b@example.org", "name": "n" * (MAX_DISPLAY_NAME_LENGTH + 1)}]}, "to"),
        ({"to": [f"N{' ' * 990}<b@example.org>"]}, "to"),  # name "N", 1005 characters
        ({"subject": "s" * (MAX_SUBJECT_LENGTH + 1)}, "subject"),
        ({"attachments": [attachment("a" * MAX_FILENAME_LENGTH + ".txt")]}, "attachments"),
    ]:
        assert list(problem(post(client, tenant, {**MAIL, **change}))) == [field], change
    at_limits = {
        **MAIL,
        "from": {"email": "alice@example.com", "name": "n" * MAX_DISPLAY_NAME_LENGTH},
        "headers": {f"X-H{i}": "v" * 800 for i in range(MAX_CUSTOM_HEADERS)},  # 16,000 bytes
    }
    assert post(client, tenant, at_limits).status_code == 202


# --- 3. header names ----------------------------------------------------------------


def test_header_names_are_rfc_5322_field_names_given_once(
    client: FlaskClient, tenant: TenantKey
) -> None:
    for headers in [
        {"X-A\x01": "v"},
        {"X-A\x7f": "v"},
        {"X-A\u0085": "v"},
        {"X-A b": "v"},
        {"X-A:b": "v"},
        {"X-" + "a" * 75: "v"},
        {"X-Trace": "a", "x-trace": "b"},
        {"Subject": "v"},
    ]:
        assert list(problem(post(client, tenant, {**MAIL, "headers": headers}))) == ["headers"]
        campaign = post(client, tenant, {**_campaign(), "headers": headers}, "/v1/campaigns")
        assert "headers" in problem(campaign), headers
    assert post(client, tenant, {**MAIL, "headers": {"X-" + "a" * 74: "v"}}).status_code == 202


# --- 4. structured header values -----------------------------------------------------


def test_thread_and_unsubscribe_headers_follow_their_syntax(
    client: FlaskClient, tenant: TenantKey
) -> None:
    for name, value in [
        ("References", "a@example.org"),
        ("References", "<a@example.org> junk"),
        ("In-Reply-To", "<a b@example.org>"),
        ("In-Reply-To", "<a<b@example.org>"),
        ("In-Reply-To", "<é@example.org>"),
        ("List-Unsubscribe", "https://example.com/u"),
        ("List-Unsubscribe", "<javascript:alert(1)>"),
        ("List-Unsubscribe", "<http://example.com/u>"),
        ("List-Unsubscribe-Post", "List-Unsubscribe=One-Click, Bcc: x"),
    ]:
        errors = problem(post(client, tenant, {**MAIL, "headers": {name: value}}))
        assert mentions(errors, name), (name, value, errors)
    good = {
        "References": "<a@example.org> <b.c@example.org>",
        "In-Reply-To": "<b.c@example.org>",
        "List-Unsubscribe": "<mailto:u@example.com?subject=stop>, <https://example.com/u?t=1>",
        "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
    }
    assert post(client, tenant, {**MAIL, "headers": good}).status_code == 202


# --- 5. dates ------------------------------------------------------------------------


def test_dates_out_of_range_are_422_and_never_reach_the_database(
    client: FlaskClient, tenant: TenantKey, db: psycopg.Connection
) -> None:
    far = datetime.now(UTC) + timedelta(days=61)
    for change in [
        {"expires_at": "9999-12-31T23:59:59-14:00"},
        {"send_at": "9999-12-31T23:59:59-14:00"},
        {"expires_at": far.isoformat()},
        {"send_at": "0001-01-01T00:00:00+14:00"},
    ]:
        assert list(problem(post(client, tenant, {**MAIL, **change}))) == list(change)
    assert counts(db) == (0, 0, 0)
    within = (datetime.now(UTC) + timedelta(days=59)).isoformat()
    mail = post(client, tenant, {**MAIL, "expires_at": within})
    assert mail.status_code == 202
    assert client.get(f"/v1/mails/{mail.get_json()['id']}", headers=auth(tenant)).status_code == 200

    for query in [
        "since=9999-12-31T23:59:59-14:00",
        "until=9999-12-31T23:59:59-14:00",
        "since=0001-01-01T00:00:00%2B14:00",
        "until=1999-12-31T23:59:59Z",
    ]:
        listed = client.get(f"/v1/mails?{query}", headers=auth(tenant))
        assert list(problem(listed)) == [query.split("=")[0]], query
    assert (
        client.get("/v1/mails?since=2020-01-01T00:00:00Z", headers=auth(tenant)).status_code == 200
    )


def test_trigger_dates_follow_the_same_rules(
    client: FlaskClient, tenant: TenantKey, db: psycopg.Connection
) -> None:
    create(client, tenant)
    recipients = [{"email": "a@example.org", "data": DATA}]
    body = {"recipients": recipients, "expires_at": "9999-12-31T23:59:59-14:00"}
    assert "expires_at" in problem(trigger(client, tenant, body))
    assert "ttl_seconds" in problem(
        trigger(client, tenant, {"recipients": recipients, "ttl_seconds": 10**30})
    )
    assert counts(db) == (0, 0, 0)


# --- 6. display names and non-ASCII addresses --------------------------------------------

ROUND_TRIP_NAMES = [
    'Ann "The Boss" Lee',
    "back\\slash",
    "Lee, Ann",
    "<ann@evil.example.net>",
    "ann@example.org",
    "=?utf-8?q?hello=0D=0ABcc=3A_x?=",
    "Zoë Ämter 漢字",
    "(comment) ;:",
]


def test_a_non_ascii_local_part_with_a_name_works_for_preview_trigger_and_cdp(
    client: FlaskClient, tenant: TenantKey, db: psycopg.Connection
) -> None:
    create(client, tenant)
    recipient = {"email": "üser@example.org", "name": "Ünal", "data": DATA}
    preview = post(client, tenant, {"recipient": recipient}, "/v1/campaigns/welcome/preview")
    assert preview.status_code == 200, preview.get_json()
    assert getaddresses([preview.get_json()["to"]]) == [("Ünal", "üser@example.org")]

    triggered = trigger(client, tenant, {"recipients": [recipient]})
    assert triggered.status_code == 202, triggered.get_json()

    set_secret(db, tenant)
    workflow(client, tenant)
    traits = {"email": "üser@example.org", "name": "Ünal"}
    response = send_event(client, tenant, {**EVENT, "context": {"traits": traits}})
    assert response.status_code == 202, response.get_json()
    assert response.get_json()["accepted"] == 1, response.get_json()
    assert len(stored_events(db)) == 1
    stored = db.execute("SELECT request->'to' FROM mails ORDER BY source").fetchall()
    assert [row[0] for row in stored] == [[{"email": "üser@example.org", "name": "Ünal"}]] * 2


def test_display_names_round_trip_exactly(
    client: FlaskClient, tenant: TenantKey, db: psycopg.Connection
) -> None:
    create(client, tenant)
    recipients = [
        {"email": f"r{i}@example.org", "name": name, "data": DATA}
        for i, name in enumerate(ROUND_TRIP_NAMES)
    ]
    response = trigger(client, tenant, {"recipients": recipients})
    assert response.status_code == 202, response.get_json()
    stored = {
        row[0]["email"]: row[0]["name"]
        for row in db.execute("SELECT request->'to'->0 FROM mails").fetchall()
    }
    assert stored == {r["email"]: r["name"] for r in recipients}

    for recipient in recipients:
        preview = post(client, tenant, {"recipient": recipient}, "/v1/campaigns/welcome/preview")
        assert preview.status_code == 200, preview.get_json()
        # The preview's "Name <address>" parses back to the same name and address.
        assert getaddresses([preview.get_json()["to"]]) == [(recipient["name"], recipient["email"])]

    for name in ROUND_TRIP_NAMES:
        body = {**MAIL, "from": {"email": "alice@example.com", "name": name}}
        mail_id = post(client, tenant, body).get_json()["id"]
        row = db.execute("SELECT request->'from' FROM mails WHERE id = %s", (mail_id,)).fetchone()
        assert row == ({"email": "alice@example.com", "name": name},)


def test_the_object_form_of_a_mailbox_is_validated_like_the_string_form(
    client: FlaskClient, tenant: TenantKey
) -> None:
    for mailbox in [
        {"email": "Bob <b@example.org>"},
        {"email": "not an address"},
        {"email": "b@example.org", "nick": "x"},
        {"name": "no address"},
        {"email": "b@example.org", "name": 7},
    ]:
        assert list(problem(post(client, tenant, {**MAIL, "to": [mailbox]}))) == ["to"], mailbox
    assert "from" in problem(
        post(client, tenant, {**MAIL, "from": {"email": "a@evil.example.net"}})
    )
    named = {**MAIL, "from": {"email": "alice@example.com", "name": "Alice"}, "to": [
        {"email": "bob@example.org"}, {"email": "carol@example.org", "name": None},
    ]}  # fmt: skip
    assert post(client, tenant, named).status_code == 202


# --- 7. attachments ---------------------------------------------------------------------


NEWLY_BLOCKED_EXTENSIONS = [
    "iso", "img", "vhd", "vhdx", "msix", "msixbundle", "appx", "appxbundle", "one",
    "hta", "html", "htm", "svg", "docm", "xlsm", "pptm", "dotm", "cab",
]  # fmt: skip


@pytest.mark.parametrize(
    "filename",
    [
        "a.exe.", "a.exe ", "a.exe. . ", "a.exe::$DATA", "\uff41.\uff45\uff58\uff45",
        "a.e\u200bxe", "a.ex\u200de", "a.exe\ufeff", "a.\u2060exe", "C:evil.txt",
        *(f"a.{ext}" for ext in NEWLY_BLOCKED_EXTENSIONS),
    ],
)  # fmt: skip
def test_blocked_attachment_names_cannot_be_disguised(
    client: FlaskClient, tenant: TenantKey, filename: str
) -> None:
    errors = problem(post(client, tenant, {**MAIL, "attachments": [attachment(filename)]}))
    assert errors == {"attachments": {"0": {"filename": errors["attachments"]["0"]["filename"]}}}


@pytest.mark.parametrize(
    "content_type",
    ["application/x-msdownload", "application/x-msdos-program", "application/x-dosexec",
     "application/x-ms-installer", "application/x-sh", "application/hta", "text/html",
     "image/svg+xml", "application/javascript", "text/javascript"],
)  # fmt: skip
def test_executable_html_and_svg_content_types_are_refused(
    client: FlaskClient, tenant: TenantKey, content_type: str
) -> None:
    body = {**MAIL, "attachments": [attachment("notes.txt", content_type=content_type)]}
    assert list(problem(post(client, tenant, body))["attachments"]["0"]) == ["content_type"]


def test_attachments_of_exactly_7_mib_are_accepted_and_one_byte_more_is_not(
    client: FlaskClient, tenant: TenantKey
) -> None:
    limit = 7 * 1024 * 1024
    exact = post(client, tenant, {**MAIL, "attachments": [attachment("a.bin", b"x" * limit)]})
    assert exact.status_code == 202, exact.get_json()
    over = post(client, tenant, {**MAIL, "attachments": [attachment("a.bin", b"x" * (limit + 1))]})
    assert list(problem(over)) == ["attachments"]


def test_ordinary_attachments_still_pass(client: FlaskClient, tenant: TenantKey) -> None:
    files = [attachment("report.pdf"), attachment("Übersicht 2024.xlsx"), attachment("a.txt")]
    assert post(client, tenant, {**MAIL, "attachments": files}).status_code == 202


# --- 8. tenant sender domains on the command line ---------------------------------------


def ingest_api(database_url: str, *args: str) -> Any:
    return CliRunner().invoke(cli, list(args), env={"MAILROOM_DATABASE_URL": database_url})


@pytest.mark.parametrize("domain", ["", "not a domain", "*", "shop.test", "a.local", "x.invalid"])
def test_create_tenant_refuses_a_domain_the_api_would_refuse(
    database_url: str, db: psycopg.Connection, domain: str
) -> None:
    result = ingest_api(database_url, "create-tenant", "shop", "--sender-domain", domain)
    assert result.exit_code == 2, result.output
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert repr(domain) in result.stderr
    assert db.execute("SELECT count(*) FROM tenants").fetchone() == (0,)


def test_sender_domains_can_be_added_and_removed_and_the_api_follows(
    client: FlaskClient, database_url: str, db: psycopg.Connection
) -> None:
    created = ingest_api(
        database_url, "create-tenant", "shop", "--sender-domain", "Example.COM",
        "--sender-domain", "bücher.example.org",
    )  # fmt: skip
    assert created.exit_code == 0, created.output
    row = db.execute("SELECT id, sender_domains FROM tenants WHERE name = 'shop'").fetchone()
    assert row is not None
    assert row[1] == ["example.com", "xn--bcher-kva.example.org"]

    added = ingest_api(database_url, "add-sender-domain", str(row[0]), "example.org", "a.test")
    assert added.exit_code == 2 and "'a.test'" in added.stderr
    added = ingest_api(database_url, "add-sender-domain", "shop", "example.org", "example.com")
    assert added.exit_code == 0, added.output
    assert db.execute("SELECT sender_domains FROM tenants WHERE name = 'shop'").fetchone() == (
        ["example.com", "example.org", "xn--bcher-kva.example.org"],
    )
    assert "10 s" in ingest_api(database_url, "add-sender-domain", "--help").output

    removed = ingest_api(
        database_url, "remove-sender-domain", str(row[0]), "example.com", "bücher.example.org"
    )
    assert removed.exit_code == 0, removed.output
    last = ingest_api(database_url, "remove-sender-domain", "shop", "example.org")
    assert last.exit_code != 0 and "at least one" in last.output
    assert ingest_api(database_url, "remove-sender-domain", "nobody", "x.org").exit_code != 0
    assert db.execute("SELECT sender_domains FROM tenants WHERE name = 'shop'").fetchone() == (
        ["example.org"],
    )

    # The API uses the stored domains (a key used for the first time: nothing cached).
    key = ingest_api(database_url, "create-key", "shop").output.strip().splitlines()[-1]
    shop = TenantKey(row[0], "shop", key)
    assert post(client, shop, {**MAIL, "from": "a@example.org"}).status_code == 202
    assert "from" in problem(post(client, shop, {**MAIL, "from": "a@example.com"}))


# --- the property: whatever the text, refused naming the field or accepted safe -----------


def _header_bound_values(loaded: dict[str, Any]) -> list[tuple[str, str, int]]:
    """(field, value, limit) of every header-bound text of a loaded mail."""
    values = [("subject", loaded["subject"], MAX_SUBJECT_LENGTH)]
    for field, mailbox in [("from", loaded["sender"]), *(("to", m) for m in loaded["to"])]:
        if mailbox["name"] is not None:
            values.append((field, mailbox["name"], MAX_DISPLAY_NAME_LENGTH))
    values += [("headers", v, MAX_HEADER_VALUE_LENGTH) for v in loaded["headers"].values()]
    values += [("attachments", a["filename"], MAX_FILENAME_LENGTH) for a in loaded["attachments"]]
    return values


@given(mail=adversarial_mail_requests())
@settings(max_examples=300, deadline=None, database=None, suppress_health_check=list(HealthCheck))
def test_adversarial_text_is_refused_naming_its_field_or_accepted_header_safe(
    mail: dict[str, Any],
) -> None:
    try:
        loaded = SendMailSchema().load(mail)
    except ValidationError as exc:
        assert isinstance(exc.messages, dict)
        assert set(exc.messages) <= HEADER_BOUND_FIELDS, exc.messages
        return
    for field, value, limit in _header_bound_values(loaded):
        assert len(value) <= limit, field
        unsafe = [c for c in value if unicodedata.category(c) in ("Cc", "Zl", "Zp")]
        assert not unsafe, (field, value)
    header_bytes = sum(len(v.encode()) for v in loaded["headers"].values())
    assert header_bytes <= MAX_CUSTOM_HEADER_BYTES


_BATCH_TENANT = Tenant(id=uuid.uuid4(), name="acme", sender_domains=("example.com",))
_batch_items = st.lists(
    st.one_of(
        adversarial_mail_requests(),
        st.builds(lambda mail: {**mail, "from": "a@elsewhere.test"}, adversarial_mail_requests()),
        st.sampled_from([{**MAIL, "to": []}, {**MAIL, "unknown": 1}, {"from": 42}, [], "x"]),
    ),
    min_size=1,
    max_size=6,
)


def _one_by_one(items: list[Any]) -> list[tuple[int, Any]]:
    """Each item through the schema and new_mail on its own: the reference."""
    outcomes: list[tuple[int, Any]] = []
    for index, item in enumerate(items):
        try:
            mail = new_mail(SendMailSchema().load(item), _BATCH_TENANT)
        except ValidationError as exc:
            outcomes.append((index, field_errors(exc)))
        else:
            outcomes.append((index, replace(mail, id=uuid.UUID(int=0))))
    return outcomes


@given(items=_batch_items)
@settings(max_examples=200, deadline=None, database=None, suppress_health_check=list(HealthCheck))
def test_a_batch_validates_each_item_as_it_would_alone(items: list[Any]) -> None:
    """validate_batch_items loads an all-valid batch in one many=True call and a batch
    with any invalid item one by one: either way, the outcome of every item is its own."""
    valid, invalid = validate_batch_items(items, _BATCH_TENANT)
    outcomes = sorted(
        [(index, replace(mail, id=uuid.UUID(int=0))) for index, mail in valid]
        + [(item["index"], item["errors"]) for item in invalid],
        key=lambda outcome: outcome[0],
    )
    assert outcomes == _one_by_one(items)
