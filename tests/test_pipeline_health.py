"""Canaries, the pipeline's health, and the relay's periodic recovery work,
against a real database (and a real Redis where a publish happens)."""

from __future__ import annotations

import json
import logging
import urllib.request
import uuid
from dataclasses import replace

import psycopg
import pytest
from click.testing import CliRunner
from flask.testing import FlaskClient

from outbox_relay.commands.inspection import status
from outbox_relay.health import IncidentLog, send_canaries
from outbox_relay.publish import Publisher
from outbox_relay.relay import Relay
from shared.config import Settings
from shared.pipeline_health import is_healthy, pipeline_health
from tests.conftest import TenantKey, settings_env
from tests.factories import event_kinds, insert_mail, state_machine_off, status_of
from tests.services import free_port


def add_canary(
    db: psycopg.Connection, queue: str, published_ago: float, received_ago: float | None
):
    db.execute(
        "INSERT INTO canaries (id, queue, relay, created_at, published_at, received_at)"
        " VALUES (%s, %s, 'test', now() - make_interval(secs => %s),"
        " now() - make_interval(secs => %s), now() - make_interval(secs => %s))",
        (uuid.uuid4(), queue, published_ago, published_ago, received_ago),
    )


def states(db: psycopg.Connection, threshold: float = 60) -> dict[str, str]:
    return {item.queue: item.state for item in pipeline_health(db, threshold)}


def test_health_is_unknown_before_any_canary(db: psycopg.Connection) -> None:
    assert states(db) == {"transactional": "unknown", "campaign": "unknown"}


def test_recent_round_trips_are_healthy_and_old_ones_broken(db: psycopg.Connection) -> None:
    add_canary(db, "transactional", published_ago=5, received_ago=4.9)
    add_canary(db, "campaign", published_ago=120, received_ago=119)
    assert states(db) == {"transactional": "healthy", "campaign": "broken"}


def test_a_canary_that_never_comes_back_breaks_the_queue_after_the_threshold(
    db: psycopg.Connection,
) -> None:
    add_canary(db, "transactional", published_ago=10, received_ago=None)
    add_canary(db, "campaign", published_ago=70, received_ago=None)
    assert states(db) == {"transactional": "healthy", "campaign": "broken"}
    health = pipeline_health(db, 60)
    assert not is_healthy(health)
    assert "no canary has completed a round trip" in health[1].reason


def test_incidents_are_logged_once_and_their_end_is_reported(
    db: psycopg.Connection, caplog: pytest.LogCaptureFixture
) -> None:
    incidents = IncidentLog()
    add_canary(db, "transactional", published_ago=120, received_ago=119)
    add_canary(db, "campaign", published_ago=120, received_ago=119)
    with caplog.at_level(logging.WARNING):
        assert [incidents.observe(pipeline_health(db, 60)) for _ in range(3)] == [False] * 3
        add_canary(db, "transactional", published_ago=1, received_ago=0.5)
        add_canary(db, "campaign", published_ago=1, received_ago=0.5)
        assert incidents.observe(pipeline_health(db, 60)) is True
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and "pipeline broken" in errors[0].getMessage()
    assert sum("recovered" in r.getMessage() for r in caplog.records) == 1


def test_send_canaries_publishes_one_per_queue(db: psycopg.Connection, settings: Settings) -> None:
    publisher = Publisher(settings)
    try:
        ids = send_canaries(db, publisher, "test-relay")
    finally:
        publisher.close()
    rows = db.execute(
        "SELECT queue, published_at IS NOT NULL FROM canaries ORDER BY queue"
    ).fetchall()
    assert rows == [("campaign", True), ("transactional", True)]
    assert len(ids) == 2


def test_readyz_reports_the_pipeline_and_its_own_endpoint_fails(
    client: FlaskClient, db: psycopg.Connection
) -> None:
    add_canary(db, "transactional", published_ago=120, received_ago=119)
    add_canary(db, "campaign", published_ago=3, received_ago=2)
    ready = client.get("/readyz")
    assert ready.status_code == 200, "accepting mail stays safe while the queue is broken"
    body = ready.get_json()
    assert body["pipeline"] == "broken"
    assert body["queues"]["transactional"]["state"] == "broken"
    assert client.get("/readyz/pipeline").status_code == 503
    add_canary(db, "transactional", published_ago=1, received_ago=0.5)
    assert client.get("/readyz/pipeline").status_code == 200


def run_status(settings: Settings, *args: str):
    env = settings_env(settings)
    return CliRunner().invoke(status, list(args), env=env)


def test_status_exit_codes_follow_the_canaries(settings: Settings, db: psycopg.Connection) -> None:
    assert run_status(settings).exit_code == 1  # no canary yet: degraded
    add_canary(db, "transactional", published_ago=1, received_ago=0.5)
    add_canary(db, "campaign", published_ago=1, received_ago=0.5)
    healthy = run_status(settings, "--json")
    assert healthy.exit_code == 0, healthy.output
    report = json.loads(healthy.output)
    assert report["verdict"] == "healthy"
    assert set(report) == {"mails", "outbox", "by_tenant", "pauses", "canary", "verdict", "reasons"}
    db.execute("UPDATE canaries SET received_at = now() - interval '5 minutes'")
    broken = run_status(settings)
    assert broken.exit_code == 2
    assert "pipeline: broken" in broken.output


def test_a_mail_whose_worker_was_lost_goes_back_to_the_outbox_after_a_backoff(
    db: psycopg.Connection, tenant: TenantKey, settings: Settings
) -> None:
    mail_id = insert_mail(db, tenant.tenant_id)
    db.execute("DELETE FROM outbox")
    with state_machine_off(db):
        db.execute(
            "UPDATE mails SET status = 'sending', attempts = 1,"
            " updated_at = now() - interval '10 minutes'"
        )
    relay = Relay(replace(settings, sending_timeout=300, send_retry_base=30))
    relay._recover_abandoned_sends()
    relay._close()
    assert status_of(db, mail_id) == "retrying"
    assert event_kinds(db, mail_id) == ["accepted", "retrying"]
    delay = db.execute(
        "SELECT mail_id, extract(epoch FROM available_at - now()) FROM outbox"
    ).fetchall()
    assert [row[0] for row in delay] == [mail_id]
    assert 20 <= float(delay[0][1]) <= 31, "the first attempt's backoff, like a transient failure"


def test_a_mail_that_keeps_losing_its_worker_is_dead_at_the_attempt_limit(
    db: psycopg.Connection, tenant: TenantKey, settings: Settings
) -> None:
    """A mail that kills every worker taking it (a poison mail) cannot loop forever."""
    mail_id = insert_mail(db, tenant.tenant_id)
    db.execute("DELETE FROM outbox")
    with state_machine_off(db):
        db.execute(
            "UPDATE mails SET status = 'sending', attempts = 3,"
            " updated_at = now() - interval '10 minutes'"
        )
    relay = Relay(replace(settings, sending_timeout=300, send_max_attempts=3))
    relay._recover_abandoned_sends()
    relay._close()
    row = db.execute("SELECT status, last_error FROM mails WHERE id = %s", (mail_id,)).fetchone()
    assert row is not None and row[0] == "dead"
    assert row[1].startswith("gave up after 3 attempts"), row[1]
    assert event_kinds(db, mail_id) == ["accepted", "dead"]
    assert db.execute("SELECT count(*) FROM outbox").fetchone() == (0,)


def test_status_reports_mails_that_keep_failing(
    db: psycopg.Connection, tenant: TenantKey, settings: Settings
) -> None:
    add_canary(db, "transactional", published_ago=1, received_ago=0.5)
    add_canary(db, "campaign", published_ago=1, received_ago=0.5)
    mail_id = insert_mail(db, tenant.tenant_id)
    assert run_status(settings).exit_code == 0
    with state_machine_off(db):
        db.execute("UPDATE mails SET status = 'retrying', attempts = 2 WHERE id = %s", (mail_id,))
    result = run_status(settings, "--json")
    assert result.exit_code == 1, result.output
    report = json.loads(result.output)
    assert [scope["failing"] for scope in report["by_tenant"]] == [1]
    assert any("2 or more attempts" in reason for reason in report["reasons"]), report["reasons"]


def test_a_slow_send_within_the_timeout_is_left_alone(
    db: psycopg.Connection, tenant: TenantKey, settings: Settings
) -> None:
    mail_id = insert_mail(db, tenant.tenant_id)
    db.execute("DELETE FROM outbox")
    with state_machine_off(db):
        db.execute("UPDATE mails SET status = 'sending', updated_at = now() - interval '1 minute'")
    relay = Relay(replace(settings, sending_timeout=300))
    relay._recover_abandoned_sends()
    relay._close()
    assert status_of(db, mail_id) == "sending"


def test_recovery_releases_in_flight_leases(
    db: psycopg.Connection, tenant: TenantKey, settings: Settings
) -> None:
    insert_mail(db, tenant.tenant_id)
    db.execute("UPDATE outbox SET dispatch_count = 3, available_at = now() + interval '1 hour'")
    add_canary(db, "transactional", published_ago=300, received_ago=299)
    add_canary(db, "campaign", published_ago=300, received_ago=299)
    relay = Relay(settings)
    relay.incidents.broken = True  # the relay saw the incident begin
    add_canary(db, "transactional", published_ago=1, received_ago=0.5)
    add_canary(db, "campaign", published_ago=1, received_ago=0.5)
    relay._canary()
    relay._close()
    assert db.execute("SELECT available_at <= now() FROM outbox").fetchone() == (True,)


def test_relay_metrics_are_served(
    db: psycopg.Connection, tenant: TenantKey, settings: Settings
) -> None:
    insert_mail(db, tenant.tenant_id)
    port = free_port()
    relay = Relay(replace(settings, relay_metrics_port=port))
    relay.serve_metrics()
    relay._stats()
    relay._close()
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    for name in (
        "mailroom_outbox_backlog 1.0",
        "mailroom_outbox_oldest_undispatched_seconds",
        "mailroom_outbox_oldest_in_flight_seconds",
        "mailroom_relay_published_total",
        "mailroom_relay_dead_total",
        "mailroom_canary_round_trip_age_seconds",
        "mailroom_relay_publish_seconds_bucket",
    ):
        assert name in text, name
