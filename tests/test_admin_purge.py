"""outbox-relay purge against a real database: a mail in every state, all 40 days old,
recent final mails, mails held by the outbox or a pending webhook delivery."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import psycopg
import pytest
from psycopg.types.json import Jsonb

from outbox_relay.admin.retention import plan_retention, purge_finished
from shared.config import Settings
from shared.states import FINAL_STATUSES
from tests.conftest import TenantKey, run_relay_cli
from tests.factories import ALL_STATUSES, insert_mail, one_mail_in_every_state, put_in_state

FINAL = sorted(status.value for status in FINAL_STATUSES)
NOT_FINAL = [status for status in ALL_STATUSES if status not in FINAL]
JSON_KEYS = {
    "dry_run",
    "cutoff",
    "older_than_seconds",
    "mails",
    "mails_total",
    "events",
    "webhook_deliveries",
    "idempotency_keys",
    "cdp_events",
}


@dataclass(frozen=True)
class Seeded:
    old: dict[str, uuid.UUID]  # one mail in every state, 40 days old
    doomed: set[uuid.UUID]  # what a 30-day purge must delete
    kept: set[uuid.UUID]  # every other mail


def mail_in(db: psycopg.Connection, tenant_id: uuid.UUID, status: str, age: str) -> uuid.UUID:
    mail_id = insert_mail(db, tenant_id, subject=f"{status}, {age} old")
    put_in_state(db, mail_id, status, age=age)
    return mail_id


def seed(db: psycopg.Connection, tenant: TenantKey, other_tenant: TenantKey) -> Seeded:
    # Outcome events of this tenant's mails enqueue webhook deliveries (the trigger).
    db.execute(
        "INSERT INTO webhooks (id, tenant_id, url, events, secret)"
        " VALUES (%s, %s, 'https://hooks.example.com/', %s, 'secret')",
        (uuid.uuid4(), tenant.tenant_id, ["sent", "failed", "dead", "expired", "suppressed"]),
    )
    old = one_mail_in_every_state(db, tenant.tenant_id, age="40 days")
    recent = {mail_in(db, tenant.tenant_id, status, "2 days") for status in FINAL}
    db.execute(
        "UPDATE webhook_deliveries SET status = CASE event WHEN 'failed' THEN 'failed'"
        " ELSE 'delivered' END"
    )
    pending_delivery = mail_in(db, tenant.tenant_id, "sent", "40 days")  # its delivery is pending
    in_outbox = mail_in(db, tenant.tenant_id, "dead", "40 days")
    db.execute("INSERT INTO outbox (mail_id, queue) VALUES (%s, 'transactional')", (in_outbox,))
    other = mail_in(db, other_tenant.tenant_id, "sent", "40 days")
    doomed = {old[status] for status in FINAL} | {other}
    kept = {old[status] for status in NOT_FINAL} | recent | {pending_delivery, in_outbox}
    return Seeded(old, doomed, kept)


def mail_ids(db: psycopg.Connection) -> set[uuid.UUID]:
    return {row[0] for row in db.execute("SELECT id FROM mails")}


def count(db: psycopg.Connection, table: str, mails: set[uuid.UUID]) -> int:
    query = f"SELECT count(*) FROM {table} WHERE mail_id = ANY(%s)"
    row = db.execute(query, (list(mails),)).fetchone()
    assert row is not None
    return int(row[0])


def purge_json(settings: Settings, *args: str) -> dict[str, Any]:
    result = run_relay_cli(settings, "purge", "--older-than", "30d", "--json", *args)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def purge_actions(db: psycopg.Connection) -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
    return db.execute(
        "SELECT actor, arguments, result FROM admin_actions WHERE action = 'purge' ORDER BY id"
    ).fetchall()


@pytest.mark.parametrize(("batch_size", "batches"), [("1000", 1), ("2", 4)])
def test_purge_deletes_only_old_final_mails_with_their_events_and_deliveries(
    settings: Settings,
    db: psycopg.Connection,
    tenant: TenantKey,
    other_tenant: TenantKey,
    batch_size: str,
    batches: int,
) -> None:
    seeded = seed(db, tenant, other_tenant)
    events = count(db, "mail_events", seeded.doomed)
    deliveries = count(db, "webhook_deliveries", seeded.doomed)
    kept_events = count(db, "mail_events", seeded.kept)
    kept_deliveries = count(db, "webhook_deliveries", seeded.kept)
    assert events == 2 * len(seeded.doomed) and deliveries == 5  # the set-up is what we think

    document = purge_json(settings, "--yes", "--batch-size", batch_size, "--actor", "ops")

    assert set(document) == JSON_KEYS
    assert document["dry_run"] is False
    assert document["older_than_seconds"] == 30 * 86400
    assert document["mails"] == {status: 2 if status == "sent" else 1 for status in FINAL}
    assert document["mails_total"] == len(seeded.doomed) == 8
    assert (document["events"], document["webhook_deliveries"]) == (events, deliveries)
    assert mail_ids(db) == seeded.kept
    assert count(db, "mail_events", seeded.doomed) == 0
    assert count(db, "webhook_deliveries", seeded.doomed) == 0
    assert count(db, "mail_events", seeded.kept) == kept_events
    assert count(db, "webhook_deliveries", seeded.kept) == kept_deliveries
    for status in NOT_FINAL:
        row = db.execute("SELECT status FROM mails WHERE id = %s", (seeded.old[status],))
        assert row.fetchone() == (status,)
    ((actor, arguments, result),) = purge_actions(db)
    assert actor == "ops"
    assert arguments["cutoff"] == document["cutoff"]
    assert arguments["final_statuses"] == FINAL
    assert result["mails"] == document["mails"]
    assert result["mail_batches"] == batches


def test_dry_run_counts_what_purge_deletes_and_a_rerun_deletes_nothing(
    settings: Settings, db: psycopg.Connection, tenant: TenantKey, other_tenant: TenantKey
) -> None:
    seeded = seed(db, tenant, other_tenant)
    before = mail_ids(db)

    dry = purge_json(settings, "--dry-run")
    assert set(dry) == JSON_KEYS and dry["dry_run"] is True
    assert mail_ids(db) == before
    assert purge_actions(db) == []  # a dry run changes nothing, so it is not an admin action

    done = purge_json(settings, "--yes")
    assert {**dry, "dry_run": False, "cutoff": None} == {**done, "cutoff": None}
    assert done["mails_total"] == len(seeded.doomed)

    again = purge_json(settings, "--yes")
    assert again["mails_total"] == again["events"] == again["webhook_deliveries"] == 0
    assert set(again["mails"].values()) == {0}
    assert mail_ids(db) == seeded.kept
    assert len(purge_actions(db)) == 2


def test_without_yes_it_asks_and_an_abort_deletes_nothing(
    settings: Settings, db: psycopg.Connection, tenant: TenantKey, other_tenant: TenantKey
) -> None:
    seeded = seed(db, tenant, other_tenant)
    before = mail_ids(db)

    refused = run_relay_cli(settings, "purge", "--older-than", "30d", input="n\n")
    assert refused.exit_code == 1, refused.output
    assert "would be deleted" in refused.stdout and "mails total" in refused.stdout
    assert "Delete these rows for good?" in refused.stdout
    assert mail_ids(db) == before
    assert purge_actions(db) == []

    accepted = run_relay_cli(settings, "purge", "--older-than", "30d", input="y\n")
    assert accepted.exit_code == 0, accepted.output
    assert "(older than 30d); deleted:" in accepted.stdout
    assert mail_ids(db) == seeded.kept


def test_idempotency_keys_and_cdp_events_older_than_the_cutoff_go_in_batches(
    settings: Settings, db: psycopg.Connection, tenant: TenantKey
) -> None:
    ages = {"old-1": "40 days", "old-2": "31 days", "old-3": "35 days", "new": "29 days"}
    for key, age in ages.items():
        db.execute(
            "INSERT INTO idempotency_keys (tenant_id, key, request_hash, status_code, response,"
            " created_at) VALUES (%s, %s, '\\x00', 202, '{}', now() - %s::interval)",
            (tenant.tenant_id, key, age),
        )
        db.execute(
            "INSERT INTO cdp_events (id, tenant_id, message_id, payload, response, received_at)"
            " VALUES (%s, %s, %s, %s, '{}', now() - %s::interval)",
            (uuid.uuid4(), tenant.tenant_id, key, Jsonb({}), age),
        )

    document = purge_json(settings, "--yes", "--batch-size", "2")

    assert (document["idempotency_keys"], document["cdp_events"]) == (3, 3)
    assert [row[0] for row in db.execute("SELECT key FROM idempotency_keys")] == ["new"]
    assert [row[0] for row in db.execute("SELECT message_id FROM cdp_events")] == ["new"]


def test_mails_the_pipeline_holds_are_skipped_not_waited_for(
    settings: Settings, db: psycopg.Connection, tenant: TenantKey
) -> None:
    held = mail_in(db, tenant.tenant_id, "sent", "40 days")
    free = mail_in(db, tenant.tenant_id, "sent", "40 days")
    with psycopg.connect(settings.database_url) as pipeline:  # a transaction, like a worker's
        pipeline.execute("SELECT 1 FROM mails WHERE id = %s FOR NO KEY UPDATE", (held,))
        document = purge_json(settings, "--yes")
    assert document["mails_total"] == 1
    assert free not in mail_ids(db)
    assert held in mail_ids(db)


def test_an_interrupted_purge_records_what_it_had_deleted(
    db: psycopg.Connection, tenant: TenantKey
) -> None:
    for _ in range(3):
        mail_in(db, tenant.tenant_id, "sent", "40 days")
    plan = plan_retention(db, timedelta(days=30), batch_size=2)

    def operator_hits_ctrl_c(_table: str, _deleted: int) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        purge_finished(db, plan, "ops", on_batch=operator_hits_ctrl_c)
    ((_, _, result),) = purge_actions(db)
    assert result["mails_total"] == 2  # the first batch was committed before the interrupt
    assert result["interrupted"].startswith("KeyboardInterrupt")
    assert len(mail_ids(db)) == 1


def test_mail_events_stay_append_only_outside_a_purge(
    db: psycopg.Connection, tenant: TenantKey
) -> None:
    mail_in(db, tenant.tenant_id, "sent", "40 days")
    keep = mail_in(db, tenant.tenant_id, "sent", "1 day")
    # A purge on this very connection: its SET LOCAL must not outlive its transactions.
    plan = plan_retention(db, timedelta(days=30), batch_size=10)
    assert purge_finished(db, plan, "test").mails_total == 1

    with pytest.raises(psycopg.errors.RaiseException, match="append-only"):
        db.execute("DELETE FROM mail_events WHERE mail_id = %s", (keep,))
    with pytest.raises(psycopg.errors.RaiseException, match="append-only"):
        db.execute("UPDATE mail_events SET kind = 'sent' WHERE mail_id = %s", (keep,))
    with pytest.raises(psycopg.errors.RaiseException, match="append-only"), db.transaction():
        db.execute("SET LOCAL mailroom.purge = 'on'")  # purge allows DELETE, never UPDATE
        db.execute("UPDATE mail_events SET kind = 'sent' WHERE mail_id = %s", (keep,))
    assert count(db, "mail_events", {keep}) == 2


@pytest.mark.parametrize(
    ("args", "names"),
    [
        (["--older-than", "30x"], "is not a duration"),
        (["--older-than", "0"], "must be longer than zero"),
        (["--older-than", "0d"], "must be longer than zero"),
        ([], "--older-than"),
        (["--older-than", "30d", "--batch-size", "0"], "--batch-size"),
        (["--older-than", "30d", "--json"], "--yes or --dry-run"),
    ],
)
def test_bad_arguments_are_one_line_and_exit_2(
    settings: Settings, db: psycopg.Connection, tenant: TenantKey, args: list[str], names: str
) -> None:
    mail_in(db, tenant.tenant_id, "sent", "40 days")
    result = run_relay_cli(settings, "purge", *args)
    assert result.exit_code == 2, result.output
    assert result.stdout == ""
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert names in result.stderr
    assert len(mail_ids(db)) == 1
