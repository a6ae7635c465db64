"""Micro-measures: the per-mail and per-message steps in-process, with pytest-benchmark.

Run as ``.venv/bin/python -m pytest bench/test_micro.py`` (not in the default test run); each
test also checks its result, so a broken step fails instead of getting fast.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import harness
import pytest

# --- app internals measured here (update here when the apps move things) -----------------------
from ingest_api.new_mails import new_mail
from ingest_api.resources.mails import validate_batch_items
from ingest_api.schemas.mail import SendMailSchema
from mail_worker.compose import compose, message_id
from mail_worker.smtp import SmtpClient
from mail_worker.wire_check import check_wire
from outbox_relay.publish import celery_message
from shared.config import parse_smtp_url
from shared.queues import TRANSACTIONAL_QUEUE
from shared.store.mails import NewMail, request_fingerprint
from shared.store.tenants import Tenant

# -----------------------------------------------------------------------------------------------

TENANT = Tenant(id=uuid.uuid4(), name="bench", sender_domains=(harness.SENDER_DOMAIN,))


@pytest.fixture(scope="module")
def long_mail() -> NewMail:
    """worker.py's 5.7 KB mail as the API stores it."""
    return harness.stored_mail(harness.LONG_ORDER_MAIL, TENANT)


def test_compose(benchmark: Any, long_mail: NewMail) -> None:
    """The worker's compose alone: headers written by us, MIME body serialised."""
    raw = benchmark(compose, long_mail.id, long_mail.request, harness.MESSAGE_ID_DOMAIN)
    assert raw.startswith(b"From: ") and len(raw) > 5000


def test_compose_and_wire_check(benchmark: Any, long_mail: NewMail) -> None:
    """What the worker does to every mail before SMTP: compose, then parse the bytes back."""
    domain = harness.MESSAGE_ID_DOMAIN

    def wire_bytes() -> bytes:
        raw = compose(long_mail.id, long_mail.request, domain)
        check_wire(raw, long_mail.request, message_id=message_id(long_mail.id, domain))
        return raw

    assert b"\r\n\r\n" in benchmark(wire_bytes)


def test_schema_load_and_new_mail(benchmark: Any) -> None:
    """POST /v1/mails's validation of ingest.py's body: the schema, then new_mail."""
    mail = benchmark(harness.stored_mail, harness.ORDER_MAIL, TENANT)
    assert mail.request["subject"] == harness.ORDER_MAIL["subject"]


@pytest.mark.parametrize("one_call", [True, False], ids=["many-true", "item-by-item"])
def test_batch_validation(benchmark: Any, one_call: bool) -> None:
    """POST /v1/mails/batch's validation of 500 valid items: the one many=True call the
    API makes for an all-valid batch, beside loading each item on its own (its fallback)."""
    items = [dict(harness.ORDER_MAIL) for _ in range(500)]
    schema = SendMailSchema()

    def validate() -> int:
        if one_call:
            return len(validate_batch_items(items, TENANT)[0])
        return len([new_mail(schema.load(item), TENANT) for item in items])

    assert benchmark(validate) == 500


def test_request_fingerprint(benchmark: Any) -> None:
    """What an Idempotency-Key request costs on top: the canonical-JSON hash of the body."""
    body = json.dumps(harness.ORDER_MAIL).encode()
    fingerprint = benchmark(request_fingerprint, "POST", "/v1/mails", body)
    spaced = json.dumps(harness.ORDER_MAIL, indent=2).encode()
    assert fingerprint == request_fingerprint("POST", "/v1/mails", spaced)


def test_celery_message(benchmark: Any) -> None:
    """The relay's per-message work before kombu: a send_mails task (a batch of the default
    size) in Celery's protocol 2."""
    ids = [uuid.uuid4() for _ in range(harness.SEND_BATCH)]
    (message,) = harness.send_mails_messages(ids, TRANSACTIONAL_QUEUE)
    built = benchmark(celery_message, message, "bench@host")
    assert str(ids[-1]) in repr(built) and message.task in repr(built)


def test_smtp_client_construction(benchmark: Any) -> None:
    """Once per worker process (it loads the system's CA bundle); no connection is opened."""
    target = parse_smtp_url("smtp://127.0.0.1:2525")
    client = benchmark(SmtpClient, target, timeout=30)
    assert client.target == target
