"""outbox-relay pause and resume: stored in the database, honoured by every relay's claim."""

from __future__ import annotations

import json
from collections.abc import Iterator

import psycopg
import pytest

from outbox_relay.dispatch import DispatchPolicy, dispatch_round
from outbox_relay.health import check_database
from outbox_relay.publish import Publisher
from shared.config import Settings
from shared.devstack.smtp_sink import SmtpSink
from tests.conftest import TenantKey, run_relay_cli
from tests.factories import insert_mail, status_of
from tests.processes import Processes, wait_until


@pytest.fixture
def publisher(settings: Settings) -> Iterator[Publisher]:
    publisher = Publisher(settings)
    yield publisher
    publisher.close()


def publish_round(db: psycopg.Connection, publisher: Publisher) -> int:
    return dispatch_round(db, publisher, DispatchPolicy(100, 60)).published


def outbox_rows(db: psycopg.Connection) -> int:
    row = db.execute("SELECT count(*) FROM outbox").fetchone()
    assert row is not None
    return int(row[0])


def test_a_paused_stream_stays_in_the_outbox_until_resumed(
    settings: Settings, db: psycopg.Connection, tenant: TenantKey, publisher: Publisher
) -> None:
    paused = run_relay_cli(
        settings, "pause", "--stream", "campaign", "--reason", "ISP throttling", "--actor", "ann"
    )
    assert paused.exit_code == 0, paused.output
    assert paused.stdout.startswith("paused: stream campaign, every tenant")
    campaign = insert_mail(db, tenant.tenant_id, stream="campaign")
    transactional = insert_mail(db, tenant.tenant_id)

    assert publish_round(db, publisher) == 1
    assert status_of(db, transactional) == "queued"
    assert status_of(db, campaign) == "accepted"
    assert outbox_rows(db) == 2, "the paused mail keeps its outbox row"

    report = json.loads(run_relay_cli(settings, "status", "--json").stdout)
    (pause,) = report["pauses"]
    assert (pause["stream"], pause["tenant"], pause["held"]) == ("campaign", None, 1)
    assert (pause["actor"], pause["reason"]) == ("ann", "ISP throttling")
    scopes = {scope["stream"]: scope["paused"] for scope in report["by_tenant"]}
    assert scopes == {"campaign": True, "transactional": False}
    assert any("pause" in reason for reason in report["reasons"])

    resumed = run_relay_cli(settings, "resume", "--stream", "campaign", "--actor", "bob")
    assert resumed.exit_code == 0, resumed.output
    assert publish_round(db, publisher) == 1
    assert status_of(db, campaign) == "queued"
    actions = db.execute("SELECT action, actor FROM admin_actions ORDER BY id").fetchall()
    assert actions == [("pause", "ann"), ("resume", "bob")]


def test_a_tenant_pause_holds_only_that_tenant(
    settings: Settings,
    db: psycopg.Connection,
    tenant: TenantKey,
    other_tenant: TenantKey,
    publisher: Publisher,
) -> None:
    assert run_relay_cli(settings, "pause", "--tenant", tenant.name).exit_code == 0
    mine = insert_mail(db, tenant.tenant_id)
    theirs = insert_mail(db, other_tenant.tenant_id)
    assert publish_round(db, publisher) == 1
    assert (status_of(db, mine), status_of(db, theirs)) == ("accepted", "queued")


def test_a_tenant_and_stream_pause_holds_only_their_intersection(
    settings: Settings, db: psycopg.Connection, tenant: TenantKey, publisher: Publisher
) -> None:
    args = ("--tenant", str(tenant.tenant_id), "--stream", "campaign")
    assert run_relay_cli(settings, "pause", *args).exit_code == 0
    campaign = insert_mail(db, tenant.tenant_id, stream="campaign")
    transactional = insert_mail(db, tenant.tenant_id)
    assert publish_round(db, publisher) == 1
    assert (status_of(db, campaign), status_of(db, transactional)) == ("accepted", "queued")
    assert (
        run_relay_cli(settings, "resume", "--tenant", tenant.name, "--stream", "campaign").exit_code
        == 0
    )
    assert publish_round(db, publisher) == 1


def test_pausing_twice_is_harmless_and_resuming_what_is_not_paused_exits_1(
    settings: Settings, db: psycopg.Connection
) -> None:
    assert run_relay_cli(settings, "pause", "--all").exit_code == 0
    again = run_relay_cli(settings, "pause", "--all", "--json")
    assert again.exit_code == 0
    document = json.loads(again.stdout)
    assert set(document) == {"paused", "already_paused", "pauses"}
    assert document["already_paused"] is True
    assert len(document["pauses"]) == 1
    wrong = run_relay_cli(settings, "resume", "--stream", "campaign")
    assert wrong.exit_code == 1
    assert "was not paused" in wrong.stderr
    assert run_relay_cli(settings, "resume", "--all").exit_code == 0
    assert run_relay_cli(settings, "status", "--json").stdout.count('"pauses": []') == 1


def test_a_running_relay_honours_pause_and_resume_on_its_next_poll(
    procs: Processes,
    settings: Settings,
    db: psycopg.Connection,
    tenant: TenantKey,
    smtp_sink: SmtpSink,
) -> None:
    relay = procs.relay()
    procs.worker()
    assert run_relay_cli(settings, "pause", "--all", "--reason", "maintenance").exit_code == 0
    held = insert_mail(db, tenant.tenant_id)
    # A canary's round trip means the relay has polled many times (0.2 s in tests)
    # and a worker is consuming: the mail is held by the pause, not by a slow start.
    wait_until(lambda: canaries_received(db) > 0, 30)
    assert status_of(db, held) == "accepted"
    assert outbox_rows(db) == 1
    assert smtp_sink.received == []
    wait_until(lambda: "operator pauses hold mail in the outbox" in relay.log.read_text(), 15)
    assert run_relay_cli(settings, "resume", "--all").exit_code == 0
    (received,) = smtp_sink.wait_for(1, timeout=30)
    assert received.parsed()["Message-ID"] == f"<{held}@mail.test>"
    wait_until(lambda: status_of(db, held) == "sent", 15)


def canaries_received(db: psycopg.Connection) -> int:
    row = db.execute("SELECT count(*) FROM canaries WHERE received_at IS NOT NULL").fetchone()
    assert row is not None
    return int(row[0])


def test_preflight_names_pauses_without_failing(settings: Settings, db: psycopg.Connection) -> None:
    assert check_database(settings).detail == "reachable and migrated"
    assert run_relay_cli(settings, "pause", "--stream", "campaign").exit_code == 0
    result = check_database(settings)
    assert result.ok
    assert result.detail == "reachable and migrated; 1 pause(s) hold mail (outbox-relay status)"
