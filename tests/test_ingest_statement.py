"""The ingest statement stores exactly what it is given: every field of every mail,
whatever the text, numbers and times (the mails travel as one jsonb parameter)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import psycopg
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from shared.store.mails import NewMail, accept_mails
from shared.streams import Stream
from tests.conftest import TenantKey

MAX_INTEGER = 2**63 - 1
# What the API lets through to a jsonb column: no NUL, no lone surrogate.
_text = st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=40)
_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-MAX_INTEGER, max_value=MAX_INTEGER),
    st.floats(allow_nan=False, allow_infinity=False),
    _text,
)
_json = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_text, inner, max_size=4),
    max_leaves=12,
)
_moments = st.datetimes(
    min_value=datetime(2000, 1, 2), max_value=datetime(8999, 12, 30), timezones=st.just(UTC)
).flatmap(
    lambda moment: st.integers(min_value=-14 * 60, max_value=14 * 60).map(
        lambda minutes: moment.astimezone(timezone(timedelta(minutes=minutes)))
    )
)
_mails = st.builds(
    NewMail,
    request=st.dictionaries(_text, _json, max_size=6),
    stream=st.sampled_from(list(Stream)),
    source=st.sampled_from(["api", "campaign", "cdp"]),
    send_at=st.none() | _moments,
    expires_at=st.none() | _moments,
    tags=st.lists(_text, max_size=4).map(tuple),
    metadata=st.dictionaries(
        _text,
        st.one_of(
            _text,
            st.booleans(),
            st.integers(-MAX_INTEGER, MAX_INTEGER),
            st.floats(allow_nan=False, allow_infinity=False),
        ),
        max_size=4,
    ),
    campaign_key=st.none() | _text,
)


def _same(stored: Any, given: Any) -> bool:
    """Equal as JSON values: jsonb keeps a number's decimal text, so 1e+17 given as a
    float comes back as the integer it spells (the standard library's reading)."""
    if isinstance(given, float) and not isinstance(stored, bool):
        return isinstance(stored, int | float) and float(stored) == given
    if isinstance(given, dict):
        return (
            isinstance(stored, dict)
            and stored.keys() == given.keys()
            and all(_same(stored[key], value) for key, value in given.items())
        )
    if isinstance(given, list | tuple):
        return (
            isinstance(stored, list)
            and len(stored) == len(given)
            and all(_same(a, b) for a, b in zip(stored, given, strict=True))
        )
    return type(stored) is type(given) and stored == given


def _stored(db: psycopg.Connection, mail: NewMail) -> dict[str, Any]:
    row = db.execute(
        "SELECT m.request, m.stream, m.source, m.status, m.send_at, m.expires_at, m.tags,"
        " m.metadata, m.campaign_key, o.queue, o.available_at, e.kind, e.detail"
        " FROM mails m JOIN outbox o ON o.mail_id = m.id JOIN mail_events e ON e.mail_id = m.id"
        " WHERE m.id = %s",
        (mail.id,),
    ).fetchall()
    assert len(row) == 1, row
    names = ("request", "stream", "source", "status", "send_at", "expires_at", "tags",
             "metadata", "campaign_key", "queue", "available_at", "kind", "detail")  # fmt: skip
    return dict(zip(names, row[0], strict=True))


@hypothesis_settings(max_examples=150, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(mails=st.lists(_mails, min_size=1, max_size=4), request_id=_text)
def test_every_field_of_every_mail_is_stored_as_given(
    db: psycopg.Connection, tenant: TenantKey, mails: list[NewMail], request_id: str
) -> None:
    accept_mails(db, tenant.tenant_id, mails, request_id=request_id)
    for mail in mails:
        stored = _stored(db, mail)
        expected = {
            "request": mail.request,
            "stream": mail.stream.value,
            "source": mail.source,
            "status": mail.status.value,
            "send_at": mail.send_at,
            "expires_at": mail.expires_at,
            "tags": list(mail.tags),
            "metadata": mail.metadata,
            "campaign_key": mail.campaign_key,
            "queue": mail.stream.queue,
            "kind": mail.status.value,
            "detail": {"request_id": request_id},
        }
        assert stored.keys() - {"available_at"} == expected.keys()
        assert all(_same(stored[key], value) for key, value in expected.items()), (stored, mail)
        if mail.send_at is not None:
            assert stored["available_at"] == mail.send_at
