"""outbox-relay dlq list|show|retry|discard against a real database with a mail in every state."""

from __future__ import annotations

import json
import uuid
from datetime import timedelta

import psycopg
import pytest

from shared.config import Settings
from tests.conftest import TenantKey, run_relay_cli
from tests.factories import insert_mail, one_mail_in_every_state, put_in_state, status_of
from tests.test_admin_replay import (
    REPLAY_KEYS,
    admin_actions,
    assert_usage_error,
    cli_json,
    ids,
    replayed_events,
    snapshot,
    window,
)

DISCARD_KEYS = {
    "dry_run",
    "reason",
    "window",
    "discarded",
    "discarded_count",
    "skipped",
    "skipped_counts",
    "interrupted",
}


def discarded_events(db: psycopg.Connection, mail_id: uuid.UUID) -> list[dict]:
    rows = db.execute(
        "SELECT detail FROM mail_events WHERE mail_id = %s AND kind = 'discarded'", (mail_id,)
    ).fetchall()
    return [row[0] for row in rows]


def test_dlq_list_shows_dead_mails_only(
    settings: Settings, db: psycopg.Connection, tenant: TenantKey, other_tenant: TenantKey
) -> None:
    mails = one_mail_in_every_state(db, tenant.tenant_id)
    other = insert_mail(db, other_tenant.tenant_id)
    put_in_state(db, other, "dead")
    code, document = cli_json(settings, "dlq", "list")
    assert code == 0
    assert ids(document["mails"]) == {mails["dead"], other}
    code, document = cli_json(settings, "dlq", "list", "--tenant", "globex")
    assert ids(document["mails"]) == {other}
    table = run_relay_cli(settings, "dlq", "list", "--since", "1h")
    assert table.exit_code == 0 and str(mails["dead"]) in table.stdout
    assert str(mails["failed"]) not in table.stdout


def test_dlq_show_prints_any_mail_but_exits_1_unless_it_is_dead(
    settings: Settings, db: psycopg.Connection, tenant: TenantKey
) -> None:
    mails = one_mail_in_every_state(db, tenant.tenant_id)
    code, detail = cli_json(settings, "dlq", "show", str(mails["dead"]))
    assert (code, detail["status"], detail["last_error"]) == (0, "dead", "test: dead")

    alive = run_relay_cli(settings, "dlq", "show", str(mails["sent"]))
    assert alive.exit_code == 1
    assert str(mails["sent"]) in alive.stdout
    assert alive.stderr.strip() == (
        f"outbox-relay: mail {mails['sent']} is not in the dead-letter queue (status sent)"
    )
    unknown = run_relay_cli(settings, "dlq", "show", str(uuid.uuid4()))
    assert unknown.exit_code == 1 and unknown.stdout == ""
    assert len(unknown.stderr.strip().splitlines()) == 1


def test_dlq_retry_by_id_replays_the_dead_one_and_reports_the_rest(
    settings: Settings, db: psycopg.Connection, tenant: TenantKey
) -> None:
    mails = one_mail_in_every_state(db, tenant.tenant_id)
    stranger = uuid.uuid4()
    named = [str(mails["dead"]), str(mails["sent"]), str(mails["failed"]), str(stranger)]
    code, document = cli_json(settings, "dlq", "retry", *named, "--actor", "carol")
    assert code == 0
    assert set(document) == REPLAY_KEYS
    assert document["statuses"] == ["dead"]
    assert document["window"] == {"since": None, "until": None}
    assert ids(document["replayed"]) == {mails["dead"]}
    assert set(map(uuid.UUID, document["skipped"]["not_dead"])) == {
        mails["sent"],
        mails["failed"],
        stranger,
    }
    assert document["skipped_counts"]["not_dead"] == 3
    for status, mail_id in mails.items():
        assert status_of(db, mail_id) == ("accepted" if status == "dead" else status), status
    (event,) = replayed_events(db, mails["dead"])
    assert (event["actor"], event["via"], event["previous_status"]) == (
        "carol",
        "dlq retry",
        "dead",
    )
    ((action, actor, arguments, result),) = admin_actions(db)
    assert (action, actor, result["replayed"]) == ("dlq retry", "carol", 1)
    assert arguments["mail_ids"] == sorted(named)


def test_dlq_retry_by_window_takes_only_dead_mails_of_the_scope(
    settings: Settings, db: psycopg.Connection, tenant: TenantKey, other_tenant: TenantKey
) -> None:
    mails = one_mail_in_every_state(db, tenant.tenant_id)
    old = insert_mail(db, tenant.tenant_id)
    put_in_state(db, old, "dead", age="3 hours")
    campaign = insert_mail(db, tenant.tenant_id, stream="campaign")
    put_in_state(db, campaign, "dead")
    other = insert_mail(db, other_tenant.tenant_id)
    put_in_state(db, other, "dead")
    args = ("dlq", "retry", "--since", "1h", "--tenant", "acme", "--stream", "transactional")

    code, preview = cli_json(settings, *args, "--dry-run")
    assert (code, ids(preview["replayed"])) == (0, {mails["dead"]})
    assert "not_dead" not in preview["skipped"], "no ids named"
    assert status_of(db, mails["dead"]) == "dead"

    code, document = cli_json(settings, *args)
    assert (code, ids(document["replayed"])) == (0, {mails["dead"]})
    assert document["window"]["until"] is not None, "--until defaults to now"
    assert [status_of(db, m) for m in (old, campaign, other)] == ["dead"] * 3


def test_dlq_discard_keeps_the_mail_out_of_the_queue_and_replay_brings_it_back(
    settings: Settings, db: psycopg.Connection, tenant: TenantKey
) -> None:
    mails = one_mail_in_every_state(db, tenant.tenant_id)
    args = ("dlq", "discard", "--since", "1h", "--reason", "customer asked", "--actor", "dave")

    before = snapshot(db)
    code, preview = cli_json(settings, *args, "--dry-run")
    assert (code, ids(preview["discarded"]), preview["dry_run"]) == (0, {mails["dead"]}, True)
    assert snapshot(db) == before

    code, document = cli_json(settings, *args)
    assert code == 0
    assert set(document) == DISCARD_KEYS
    assert ids(document["discarded"]) == {mails["dead"]}
    assert document["skipped"] == {} and document["reason"] == "customer asked"
    for status, mail_id in mails.items():
        assert status_of(db, mail_id) == ("discarded" if status == "dead" else status), status
    row = db.execute("SELECT last_error FROM mails WHERE id = %s", (mails["dead"],)).fetchone()
    assert row == ("test: dead",), "the reason it died stays"
    assert discarded_events(db, mails["dead"]) == [{"actor": "dave", "reason": "customer asked"}]
    ((action, actor, arguments, result),) = admin_actions(db)
    assert (action, actor, arguments["reason"], result["discarded"]) == (
        "dlq discard",
        "dave",
        "customer asked",
        1,
    )
    assert cli_json(settings, "dlq", "list")[1]["mails"] == []

    code, replayed = cli_json(settings, "replay", *window(), "--status", "discarded")
    assert ids(replayed["replayed"]) == {mails["dead"], mails["discarded"]}
    assert status_of(db, mails["dead"]) == "accepted"


def test_dlq_discard_by_id_reports_mails_that_are_not_dead(
    settings: Settings, db: psycopg.Connection, tenant: TenantKey
) -> None:
    mails = one_mail_in_every_state(db, tenant.tenant_id)
    named = (str(mails["dead"]), str(mails["failed"]))
    result = run_relay_cli(settings, "dlq", "discard", *named, "--reason", "spam")
    assert result.exit_code == 0, result.output
    assert "discarded 1" in result.stdout and "skipped: not_dead 1" in result.stdout
    assert status_of(db, mails["failed"]) == "failed"
    again = cli_json(settings, "dlq", "discard", *named, "--reason", "spam")[1]
    assert again["discarded_count"] == 0 and again["skipped_counts"] == {"not_dead": 2}


@pytest.mark.parametrize(
    ("args", "names"),
    [
        (["retry"], "name mail ids or --since"),
        (["retry", "--until", "now"], "name mail ids or --since"),
        (["retry", "not-a-uuid"], "is not a mail id"),
        (["retry", "--since", "1h", "--until", "2h"], "--since must be before --until"),
        (["retry", "--since", "1h", "--tenant", "nobody"], "no tenant named 'nobody'"),
        (["retry", "--since", "1h", "--max-age", "old"], "not a duration"),
        (["discard", "--since", "1h"], "Missing option '--reason'"),
        (["discard", "--since", "1h", "--reason", " "], "--reason"),
        (["discard", "--reason", "spam"], "name mail ids or --since"),
        (["list", "--limit", "0"], "--limit"),
        (["show", "nope"], "is not a mail id"),
    ],
)
def test_bad_arguments_are_one_line_and_exit_2(
    settings: Settings, db: psycopg.Connection, args: list[str], names: str
) -> None:
    assert_usage_error(run_relay_cli(settings, "dlq", *args), names)


def test_retry_and_replay_of_the_same_selection_share_a_replay_key(
    settings: Settings, db: psycopg.Connection, tenant: TenantKey
) -> None:
    """The key names which mails were meant, not which command asked."""
    since_until = window(since=timedelta(hours=-2))
    put_in_state(db, insert_mail(db, tenant.tenant_id), "dead")
    retried = cli_json(settings, "dlq", "retry", *since_until, "--dry-run")[1]
    replayed = cli_json(settings, "replay", *since_until, "--status", "dead", "--dry-run")[1]
    assert retried["replay_key"] == replayed["replay_key"]
    assert json.dumps(retried["replayed"]) == json.dumps(replayed["replayed"])
