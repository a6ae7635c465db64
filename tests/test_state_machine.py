"""The mail state machine held together: ``shared.states.TRANSITIONS``, the database's
``mail_transitions`` table and trigger (migration 0010), the SQL that changes a mail's
status, and the store functions that run it. Also the two halves of the one backoff
(Python and SQL) and the stream = queue rule the SQL relies on."""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import psycopg
import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from psycopg.types.json import Jsonb

from shared.backoff import backoff_ceiling
from shared.queries import QUERIES
from shared.states import TRANSITIONS, MailStatus
from shared.store import mails, outbox
from shared.streams import Stream
from tests.conftest import TenantKey
from tests.factories import insert_mail, put_in_state, status_of

ROWS = frozenset((source, target) for source, targets in TRANSITIONS.items() for target in targets)
NOT_ROWS = frozenset(
    (source, target)
    for source in MailStatus
    for target in MailStatus
    if source is not target and (source, target) not in ROWS
)


def event_of(target: MailStatus) -> str:
    """The kind of the event a move into *target* records."""
    return "replayed" if target is MailStatus.ACCEPTED else target.value


def new_mail_in(conn: psycopg.Connection, tenant: TenantKey, status: MailStatus) -> uuid.UUID:
    send_at = datetime.now(UTC) + timedelta(days=1) if status is MailStatus.SCHEDULED else None
    mail_id = insert_mail(conn, tenant.tenant_id, send_at=send_at)
    put_in_state(conn, mail_id, status.value)
    return mail_id


def events_of(conn: psycopg.Connection, mail_id: uuid.UUID) -> list[tuple[str, object]]:
    rows = conn.execute(
        "SELECT kind, detail FROM mail_events WHERE mail_id = %s ORDER BY id", (mail_id,)
    ).fetchall()
    return [(kind, detail) for kind, detail in rows]


# ----- the table and the trigger -----


def test_the_database_table_of_transitions_is_shared_states_transitions(
    db: psycopg.Connection,
) -> None:
    rows = db.execute("SELECT from_status, to_status FROM mail_transitions").fetchall()
    assert {(MailStatus(source), MailStatus(target)) for source, target in rows} == ROWS


def test_the_database_refuses_every_move_that_is_not_a_transition(
    db: psycopg.Connection, tenant: TenantKey
) -> None:
    """An UPDATE that makes an illegal move fails as a whole and records nothing."""
    accepted_wrongly = []
    for source, target in sorted(NOT_ROWS):
        mail_id = new_mail_in(db, tenant, source)
        events_before = events_of(db, mail_id)
        try:
            with db.transaction():
                db.execute(
                    "UPDATE mails SET status = %s, status_detail = '{}' WHERE id = %s",
                    (target.value, mail_id),
                )
        except psycopg.errors.CheckViolation as refusal:
            assert f"may not move from {source} to {target}" in str(refusal)
        else:
            accepted_wrongly.append((source.value, target.value))
        assert status_of(db, mail_id) == source.value
        assert events_of(db, mail_id) == events_before
    assert accepted_wrongly == []


def test_the_database_allows_every_transition_and_records_its_one_event(
    db: psycopg.Connection, tenant: TenantKey
) -> None:
    for source, target in sorted(ROWS):
        mail_id = new_mail_in(db, tenant, source)
        events_before = events_of(db, mail_id)
        detail = {"test": f"{source} to {target}"}
        with db.transaction():
            db.execute(
                "UPDATE mails SET status = %s, status_detail = %s WHERE id = %s",
                (target.value, Jsonb(detail), mail_id),
            )
        assert status_of(db, mail_id) == target.value
        assert events_of(db, mail_id) == [*events_before, (event_of(target), detail)]


def test_an_update_that_keeps_the_status_records_no_event(
    db: psycopg.Connection, tenant: TenantKey
) -> None:
    mail_id = new_mail_in(db, tenant, MailStatus.QUEUED)
    events_before = events_of(db, mail_id)
    db.execute(
        "UPDATE mails SET updated_at = now(), status_detail = '{}' WHERE id = %s", (mail_id,)
    )
    assert events_of(db, mail_id) == events_before


# ----- every transition is reachable through the code -----

Move = Callable[[psycopg.Connection, TenantKey, uuid.UUID], None]
WORKER = "test-worker"


def begin_sending(conn: psycopg.Connection, _: TenantKey, mail_id: uuid.UUID) -> None:
    with conn.transaction():
        assert [m.id for m in mails.begin_sending(conn, [mail_id], WORKER)] == [mail_id]


def begin_sending_too_late(conn: psycopg.Connection, _: TenantKey, mail_id: uuid.UUID) -> None:
    """A worker's pickup of a mail past expires_at expires it instead of sending it."""
    conn.execute(
        "UPDATE mails SET expires_at = now() - interval '1 second' WHERE id = %s", (mail_id,)
    )
    with conn.transaction():
        assert mails.begin_sending(conn, [mail_id], WORKER) == []


def held(conn: psycopg.Connection, mail_id: uuid.UUID) -> mails.PickedMail:
    """The mail as the worker that picked it up holds it (its attempt included)."""
    row = conn.execute(
        "SELECT id, tenant_id, stream, request, attempts, expires_at FROM mails WHERE id = %s",
        (mail_id,),
    ).fetchone()
    assert row is not None
    return mails.PickedMail(*row)


def finish_sending(status: MailStatus) -> Move:
    def finish(conn: psycopg.Connection, _: TenantKey, mail_id: uuid.UUID) -> None:
        with conn.transaction():
            assert mails.finish_sending(conn, held(conn, mail_id), status, {"by": "test"}, None)

    return finish


def schedule_retry(conn: psycopg.Connection, _: TenantKey, mail_id: uuid.UUID) -> None:
    with conn.transaction():
        mail = held(conn, mail_id)
        assert mails.schedule_retry(conn, mail, "451 try later", 30.0, {"error": "451"})


def publish(conn: psycopg.Connection, _: TenantKey, mail_id: uuid.UUID) -> None:
    row = conn.execute("SELECT id FROM outbox WHERE mail_id = %s", (mail_id,)).fetchone()
    assert row is not None
    with conn.transaction():
        outbox.record_published(conn, [row[0]], visibility_timeout=60.0, max_lease=3600.0)


def expire(conn: psycopg.Connection, _: TenantKey, mail_id: uuid.UUID) -> None:
    conn.execute(
        "UPDATE mails SET expires_at = now() - interval '1 second' WHERE id = %s", (mail_id,)
    )
    with conn.transaction():
        mails.expire_mails(conn, [mail_id], by="relay")


def bury(conn: psycopg.Connection, _: TenantKey, mail_id: uuid.UUID) -> None:
    with conn.transaction():
        outbox.bury_mails(conn, [(mail_id, "not picked up within 86400 seconds")])


def cancel(conn: psycopg.Connection, tenant: TenantKey, mail_id: uuid.UUID) -> None:
    with conn.transaction():
        mails.cancel_mail(conn, tenant.tenant_id, mail_id, request_id="test")


def replay(conn: psycopg.Connection, _: TenantKey, mail_id: uuid.UUID) -> None:
    selection = outbox.MailSelection(
        statuses=(MailStatus(status_of(conn, mail_id)),), mail_ids=(mail_id,)
    )
    with conn.transaction():
        changed = outbox.replay_batch(
            conn, selection, outbox.BatchPage(size=10), replay_key="test", max_age=None,
            detail={"replay": "test"},
        )  # fmt: skip
    assert [row["changed"] for row in changed] == [True]


def discard(conn: psycopg.Connection, _: TenantKey, mail_id: uuid.UUID) -> None:
    selection = outbox.MailSelection(statuses=(MailStatus.DEAD,), mail_ids=(mail_id,))
    with conn.transaction():
        changed = outbox.discard_batch(
            conn, selection, outbox.BatchPage(size=10), detail={"reason": "test"}
        )
    assert [row["changed"] for row in changed] == [True]


S = MailStatus
# Each row of TRANSITIONS, made by the store function that makes it in production.
MOVES: dict[tuple[MailStatus, MailStatus], Move] = {
    # the relay
    (S.SCHEDULED, S.QUEUED): publish,
    (S.ACCEPTED, S.QUEUED): publish,
    (S.SCHEDULED, S.EXPIRED): expire,
    (S.SCHEDULED, S.DEAD): bury,
    (S.ACCEPTED, S.DEAD): bury,
    (S.QUEUED, S.DEAD): bury,
    (S.RETRYING, S.DEAD): bury,
    # the client
    (S.SCHEDULED, S.CANCELLED): cancel,
    (S.ACCEPTED, S.CANCELLED): cancel,
    (S.QUEUED, S.CANCELLED): cancel,
    (S.RETRYING, S.CANCELLED): cancel,
    # the worker
    (S.ACCEPTED, S.SENDING): begin_sending,
    (S.QUEUED, S.SENDING): begin_sending,
    (S.RETRYING, S.SENDING): begin_sending,
    (S.ACCEPTED, S.EXPIRED): begin_sending_too_late,
    (S.QUEUED, S.EXPIRED): begin_sending_too_late,
    (S.RETRYING, S.EXPIRED): begin_sending_too_late,
    (S.SENDING, S.SENT): finish_sending(S.SENT),
    (S.SENDING, S.FAILED): finish_sending(S.FAILED),
    (S.SENDING, S.SUPPRESSED): finish_sending(S.SUPPRESSED),
    (S.SENDING, S.DEAD): finish_sending(S.DEAD),
    (S.SENDING, S.EXPIRED): finish_sending(S.EXPIRED),
    (S.SENDING, S.RETRYING): schedule_retry,
    # an operator
    (S.SENT, S.ACCEPTED): replay,
    (S.FAILED, S.ACCEPTED): replay,
    (S.DEAD, S.ACCEPTED): replay,
    (S.SUPPRESSED, S.ACCEPTED): replay,
    (S.DISCARDED, S.ACCEPTED): replay,
    (S.DEAD, S.DISCARDED): discard,
}


def test_every_transition_has_a_move_through_the_code_and_no_move_is_illegal() -> None:
    assert set(MOVES) == ROWS


@pytest.mark.parametrize(
    ("source", "target"), sorted(MOVES), ids=[f"{s}->{t}" for s, t in sorted(MOVES)]
)
def test_every_transition_is_reachable_through_the_code(
    db: psycopg.Connection, tenant: TenantKey, source: MailStatus, target: MailStatus
) -> None:
    mail_id = new_mail_in(db, tenant, source)
    events_before = events_of(db, mail_id)
    MOVES[source, target](db, tenant, mail_id)
    assert status_of(db, mail_id) == target.value
    row = db.execute("SELECT status_detail FROM mails WHERE id = %s", (mail_id,)).fetchone()
    assert row is not None
    new_events = events_of(db, mail_id)[len(events_before) :]
    assert (event_of(target), row[0]) in new_events


# ----- the SQL that changes a mail's status -----

# From "UPDATE mails [alias] SET" to the end of the statement or of its CTE.
_STATUS_UPDATE = re.compile(
    r"UPDATE\s+mails\b(?:\s+(?!SET\b)\w+)?\s+SET\b(?P<body>.*?)(?:\bRETURNING\b|\n\)|\Z)",
    re.IGNORECASE | re.DOTALL,
)
_SETS_STATUS = re.compile(r"(?<![\w.])status\s*=(?!=)", re.IGNORECASE)


def status_updates() -> dict[str, str]:
    """Each named block that changes mails.status: {name: the UPDATE's SET and WHERE}."""
    found: dict[str, str] = {}
    for name, sql in QUERIES.items():
        for match in _STATUS_UPDATE.finditer(sql):
            body = match.group("body")
            set_list = re.split(r"\bWHERE\b", body, maxsplit=1, flags=re.IGNORECASE)[0]
            if _SETS_STATUS.search(set_list):
                found[name] = body
    return found


def test_every_statement_that_changes_a_status_sets_its_detail_and_guards_with_the_table() -> None:
    updates = status_updates()
    assert {"begin_sending", "finish_sending", "schedule_retry", "cancel_mail"} <= set(updates)
    unguarded = sorted(name for name, body in updates.items() if "mailroom_may_become(" not in body)
    without_detail = sorted(
        name for name, body in updates.items() if not re.search(r"\bstatus_detail\s*=", body)
    )
    assert (unguarded, without_detail) == ([], [])


# ----- one backoff, one stream name -----


@hypothesis_settings(max_examples=200, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    base=st.floats(min_value=0.001, max_value=10_000, allow_nan=False),
    step=st.integers(min_value=-3, max_value=60),
    cap=st.floats(min_value=0, max_value=86_400, allow_nan=False),
)
def test_the_python_backoff_is_the_sql_backoff(
    db: psycopg.Connection, base: float, step: int, cap: float
) -> None:
    row = db.execute(
        "SELECT extract(epoch FROM mailroom_backoff(%s, %s, %s))::float8", (base, step, cap)
    ).fetchone()
    assert row is not None
    # make_interval keeps microseconds
    assert row[0] == pytest.approx(backoff_ceiling(base, step, cap), abs=1e-6)


@pytest.mark.parametrize("stream", list(Stream))
def test_a_streams_queue_is_named_after_it_as_the_sql_assumes(stream: Stream) -> None:
    """Retry, lost-worker recovery and replay write ``queue = stream`` into the outbox."""
    assert stream.queue == stream.value
