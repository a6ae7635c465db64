"""outbox-relay replay against a real database (and, end to end, a real relay, worker and SMTP)."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest

from outbox_relay.admin import replay as replay_core
from outbox_relay.admin.replay import BatchOptions, BatchRun, ReplayRequest
from outbox_relay.dispatch import DispatchPolicy, dispatch_round
from outbox_relay.publish import Publisher
from shared.config import Settings
from shared.db import connect
from shared.devstack.smtp_sink import SmtpSink
from shared.states import MailStatus
from shared.store.outbox import MailSelection
from tests.conftest import TenantKey, run_relay_cli
from tests.factories import insert_mail, one_mail_in_every_state, put_in_state, status_of
from tests.processes import Processes, wait_until

REPLAY_KEYS = {
    "replay_key",
    "dry_run",
    "window",
    "statuses",
    "replayed",
    "replayed_count",
    "skipped",
    "skipped_counts",
    "interrupted",
}
REASONS = {"expired", "older_than_max_age", "already_replayed"}


def iso(delta: timedelta) -> str:
    """An absolute time *delta* from now: the same command string replays idempotently."""
    return (datetime.now(UTC) + delta).isoformat()


def window(since: timedelta = timedelta(hours=-1), until: timedelta = timedelta(minutes=1)):
    return ["--since", iso(since), "--until", iso(until)]


def cli_json(settings: Settings, *args: str) -> tuple[int, dict[str, Any]]:
    result = run_relay_cli(settings, *args, "--json")
    assert result.stdout, result.output
    return result.exit_code, json.loads(result.stdout)


def ids(rows: list[dict[str, Any]]) -> set[uuid.UUID]:
    return {uuid.UUID(row["id"]) for row in rows}


def snapshot(db: psycopg.Connection) -> tuple[Any, ...]:
    """Everything a replay could change."""
    return (
        db.execute("SELECT id, status, attempts, last_error, updated_at FROM mails ORDER BY id")
        .fetchall(),
        db.execute("SELECT count(*) FROM mail_events").fetchone(),
        db.execute("SELECT mail_id, available_at FROM outbox ORDER BY mail_id").fetchall(),
        db.execute("SELECT count(*) FROM admin_actions").fetchone(),
    )  # fmt: skip


def replayed_events(db: psycopg.Connection, mail_id: uuid.UUID) -> list[dict[str, Any]]:
    rows = db.execute(
        "SELECT detail FROM mail_events WHERE mail_id = %s AND kind = 'replayed' ORDER BY id",
        (mail_id,),
    ).fetchall()
    return [row[0] for row in rows]


def admin_actions(db: psycopg.Connection) -> list[tuple[str, str, dict, dict]]:
    return db.execute(
        "SELECT action, actor, arguments, result FROM admin_actions ORDER BY id"
    ).fetchall()


@contextmanager
def interrupted_at_batch(monkeypatch: pytest.MonkeyPatch, batch: int) -> Iterator[None]:
    """Ctrl-C after the statement of batch number *batch*, before its COMMIT."""
    original = replay_core.execute_batch
    calls = 0

    def interrupting(conn: psycopg.Connection, statement: str, params: dict) -> list[dict]:
        nonlocal calls
        calls += 1
        rows = original(conn, statement, params)
        if calls == batch:
            raise KeyboardInterrupt
        return rows

    with monkeypatch.context() as patch:
        patch.setattr(replay_core, "execute_batch", interrupting)
        yield


def test_replay_changes_only_dead_and_failed_mails_and_records_who(
    settings: Settings, db: psycopg.Connection, tenant: TenantKey
) -> None:
    mails = one_mail_in_every_state(db, tenant.tenant_id)
    code, document = cli_json(settings, "replay", *window(), "--actor", "alice")
    assert code == 0
    assert set(document) == REPLAY_KEYS
    assert set(document["skipped"]) == set(document["skipped_counts"]) == REASONS
    assert document["statuses"] == ["dead", "failed"] and not document["interrupted"]
    assert ids(document["replayed"]) == {mails["dead"], mails["failed"]}
    assert document["replayed_count"] == 2
    assert {row["previous_status"] for row in document["replayed"]} == {"dead", "failed"}
    assert set(document["replayed"][0]) == {
        "id",
        "tenant",
        "stream",
        "previous_status",
        "created_at",
    }

    for status, mail_id in mails.items():
        expected = "accepted" if status in ("dead", "failed") else status
        assert status_of(db, mail_id) == expected, status
    row = db.execute(
        "SELECT m.attempts, m.last_error, o.queue, o.dispatch_count FROM mails m"
        " JOIN outbox o ON o.mail_id = m.id WHERE m.id = %s",
        (mails["dead"],),
    ).fetchone()
    assert row == (0, None, "transactional", 0)
    (event,) = replayed_events(db, mails["dead"])
    assert event == {
        "actor": "alice",
        "replay": document["replay_key"],
        "via": "replay",
        "previous_status": "dead",
        "previous_attempts": 0,
        "previous_error": "test: dead",
    }
    ((action, actor, arguments, result),) = admin_actions(db)
    assert (action, actor) == ("replay", "alice")
    assert arguments["replay_key"] == document["replay_key"]
    assert arguments["statuses"] == ["dead", "failed"]
    assert result == {
        "replayed": 2,
        "skipped": dict.fromkeys(REASONS, 0),
        "interrupted": False,
        "error": None,
    }


def test_named_statuses_are_replayed_and_expired_ones_always_skipped(
    settings: Settings, db: psycopg.Connection, tenant: TenantKey
) -> None:
    mails = one_mail_in_every_state(db, tenant.tenant_id)
    dead_but_expired = insert_mail(db, tenant.tenant_id)
    put_in_state(db, dead_but_expired, "dead")
    db.execute("UPDATE mails SET expires_at = now() - interval '1 minute' WHERE id = %s",
               (dead_but_expired,))  # fmt: skip
    args = ("replay", *window(), "--status", "suppressed,discarded,expired,dead")
    code, document = cli_json(settings, *args)
    assert code == 0
    assert ids(document["replayed"]) == {mails["suppressed"], mails["discarded"], mails["dead"]}
    assert set(map(uuid.UUID, document["skipped"]["expired"])) == {
        mails["expired"],
        dead_but_expired,
    }
    assert status_of(db, dead_but_expired) == "dead", "skipped mails are not changed"
    assert status_of(db, mails["failed"]) == "failed", "not named"


def test_dry_run_changes_nothing_and_counts_each_skip_reason(
    settings: Settings, db: psycopg.Connection, tenant: TenantKey
) -> None:
    again = insert_mail(db, tenant.tenant_id)
    put_in_state(db, again, "dead")
    fresh = insert_mail(db, tenant.tenant_id)
    put_in_state(db, fresh, "dead")
    old = insert_mail(db, tenant.tenant_id)
    put_in_state(db, old, "failed", age="3 days")
    expired = insert_mail(db, tenant.tenant_id)
    put_in_state(db, expired, "dead")
    db.execute("UPDATE mails SET expires_at = now() WHERE id = %s", (expired,))
    args = ("replay", *window(since=timedelta(days=-4)), "--max-age", "2d")
    code, first = cli_json(settings, *args, "--limit", "1")  # the oldest unskipped
    assert (code, ids(first["replayed"])) == (0, {again})
    put_in_state(db, again, "failed")  # it failed again after its replay

    before = snapshot(db)
    code, document = cli_json(settings, *args, "--dry-run")
    assert code == 0 and document["dry_run"] is True
    assert document["replay_key"] == first["replay_key"], "limit and dry run do not name the run"
    assert ids(document["replayed"]) == {fresh}
    assert document["skipped"] == {
        "expired": [str(expired)],
        "older_than_max_age": [str(old)],
        "already_replayed": [str(again)],
    }
    assert document["skipped_counts"] == dict.fromkeys(REASONS, 1)
    table = run_relay_cli(settings, *args, "--dry-run")
    assert table.exit_code == 0, table.output
    assert str(fresh) in table.stdout and str(old) not in table.stdout
    assert f"replay key {first['replay_key']}" in table.stdout
    assert "would replay 1" in table.stdout
    assert "skipped: expired 1, older_than_max_age 1, already_replayed 1" in table.stdout
    assert snapshot(db) == before, "a dry run changes nothing and records no admin action"


def test_include_sent_is_confirmed_and_json_needs_yes(
    settings: Settings, db: psycopg.Connection, tenant: TenantKey
) -> None:
    mails = one_mail_in_every_state(db, tenant.tenant_id)
    args = ("replay", *window(), "--status", "failed", "--include-sent")
    refused = run_relay_cli(settings, *args, "--json")
    assert refused.exit_code == 2 and refused.stdout == ""
    assert "--yes" in refused.stderr and len(refused.stderr.splitlines()) == 1

    declined = run_relay_cli(settings, *args, input="n\n")
    assert declined.exit_code == 1
    assert "Resend 1 mails that were already sent?" in declined.stderr
    assert status_of(db, mails["sent"]) == "sent"

    confirmed = run_relay_cli(settings, *args, input="y\n")
    assert confirmed.exit_code == 0, confirmed.output
    assert "replayed 2" in confirmed.stdout
    assert status_of(db, mails["sent"]) == status_of(db, mails["failed"]) == "accepted"

    put_in_state(db, mails["sent"], "sent")
    code, document = cli_json(settings, "replay", *window(), "--include-sent", "--yes")
    assert code == 0
    assert ids(document["replayed"]) == {mails["sent"], mails["dead"]}
    assert document["statuses"] == ["dead", "failed", "sent"]


def test_an_interrupted_run_rolls_its_batch_back_and_a_rerun_finishes_it(
    settings: Settings, db: psycopg.Connection, tenant: TenantKey, monkeypatch: pytest.MonkeyPatch
) -> None:
    dead = []
    for _ in range(12):
        dead.append(insert_mail(db, tenant.tenant_id))
        put_in_state(db, dead[-1], "dead")
    args = ("replay", *window(), "--batch-size", "5", "--actor", "bob")
    with interrupted_at_batch(monkeypatch, 2):
        first = run_relay_cli(settings, *args)
    assert first.exit_code == 130, first.output
    assert "replayed 5" in first.stdout
    assert "interrupted: run the same command again to continue" in first.stderr
    statuses = Counter(status_of(db, mail_id) for mail_id in dead)
    assert statuses == {"accepted": 5, "dead": 7}, "the second batch was rolled back"
    ((_, _, _, result),) = admin_actions(db)
    assert (result["replayed"], result["interrupted"]) == (5, True)

    second = run_relay_cli(settings, *args)
    assert second.exit_code == 0, second.output
    assert "replayed 7" in second.stdout
    for mail_id in dead:
        assert status_of(db, mail_id) == "accepted"
        assert len(replayed_events(db, mail_id)) == 1


def test_limit_stops_after_that_many_replayed(
    settings: Settings, db: psycopg.Connection, tenant: TenantKey
) -> None:
    for _ in range(5):
        put_in_state(db, insert_mail(db, tenant.tenant_id), "failed")
    args = ("replay", *window(), "--limit", "3", "--batch-size", "2")
    assert cli_json(settings, *args)[1]["replayed_count"] == 3
    assert cli_json(settings, *args)[1]["replayed_count"] == 2


def test_a_database_error_mid_run_is_one_line_and_exit_1(
    settings: Settings, db: psycopg.Connection, tenant: TenantKey, monkeypatch: pytest.MonkeyPatch
) -> None:
    put_in_state(db, insert_mail(db, tenant.tenant_id), "dead")

    def failing(*_: Any) -> list[dict]:
        raise psycopg.OperationalError("server closed the connection unexpectedly\nmore")

    monkeypatch.setattr(replay_core, "execute_batch", failing)
    result = run_relay_cli(settings, "replay", *window())
    assert result.exit_code == 1
    assert result.stderr.strip().splitlines()[-1] == (
        "outbox-relay: database error: server closed the connection unexpectedly"
    )


def test_a_replayed_two_day_old_dead_mail_is_published_not_buried(
    settings: Settings, db: psycopg.Connection, tenant: TenantKey
) -> None:
    mail_id = insert_mail(db, tenant.tenant_id)
    put_in_state(db, mail_id, "dead", age="2 days")
    code, _ = cli_json(settings, "replay", *window(since=timedelta(days=-3)))
    assert code == 0
    publisher = Publisher(settings)
    try:
        result = dispatch_round(db, publisher, DispatchPolicy(10, 60.0, max_age=86400.0))
    finally:
        publisher.close()
    assert (result.published, result.dead) == (1, 0)
    assert status_of(db, mail_id) == "queued"


def test_a_mail_changed_while_the_replay_waits_for_its_lock_is_left_alone(
    database_url: str, db: psycopg.Connection, tenant: TenantKey
) -> None:
    taken, free = (insert_mail(db, tenant.tenant_id) for _ in range(2))
    for mail_id in (taken, free):
        put_in_state(db, mail_id, "dead")
    selection = MailSelection((MailStatus.DEAD,), since=datetime.now(UTC) - timedelta(hours=1))
    runs: list[BatchRun] = []

    def run_replay() -> None:
        with connect(database_url) as conn:
            request = ReplayRequest(selection)
            runs.append(replay_core.replay(conn, request, BatchOptions(1), actor="t"))

    with connect(database_url) as other, other.transaction():
        other.execute("UPDATE mails SET status = 'discarded' WHERE id = %s", (taken,))
        thread = threading.Thread(target=run_replay)
        thread.start()
        wait_until(lambda: lock_waiters(db) == 1, 10)
    thread.join(10)
    (run,) = runs
    assert [row["id"] for row in run.changed] == [free], "re-checked after the lock"
    assert status_of(db, taken) == "discarded"


def lock_waiters(db: psycopg.Connection) -> int:
    row = db.execute(
        "SELECT count(*) FROM pg_stat_activity"
        " WHERE datname = current_database() AND wait_event_type = 'Lock'"
    ).fetchone()
    return int(row[0]) if row else 0


@pytest.mark.parametrize(
    ("args", "names"),
    [
        (["--status", "lost"], "unknown status lost"),
        (["--status", "queued"], "queued mails are still the pipeline's to deliver"),
        (["--status", "cancelled"], "the client cancelled them"),
        (["--status", "sent"], "--include-sent"),
        (["--include-sent", "--json"], "--yes"),
        (["--max-age", "soon"], "not a duration"),
        (["--tenant", "nobody"], "no tenant named 'nobody'"),
        (["--batch-size", "0"], "--batch-size"),
    ],
)
def test_bad_arguments_are_one_line_and_exit_2(
    settings: Settings, db: psycopg.Connection, args: list[str], names: str
) -> None:
    result = run_relay_cli(settings, "replay", *window(), *args)
    assert_usage_error(result, names)


@pytest.mark.parametrize(
    ("args", "names"),
    [
        (["--until", "now"], "--since"),
        (["--since", "yesterday-ish", "--until", "now"], "neither an ISO 8601 time"),
        (["--since", "1h", "--until", "2h"], "--since must be before --until"),
    ],
)
def test_bad_windows_are_one_line_and_exit_2(
    settings: Settings, db: psycopg.Connection, args: list[str], names: str
) -> None:
    assert_usage_error(run_relay_cli(settings, "replay", *args), names)


def assert_usage_error(result: Any, names: str) -> None:
    assert result.exit_code == 2, result.output
    assert result.stdout == ""
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert names in result.stderr


# ----- end to end: a simulated outage, replayed through a real relay, worker and SMTP server


def outage(db: psycopg.Connection, tenant: TenantKey, other: TenantKey) -> dict[str, list]:
    """30 mails of *tenant* accepted 2 hours ago, and mails the replay must not touch."""
    plan = [
        ("dead", "dead", tenant, "2 hours", 10),
        ("failed", "failed", tenant, "2 hours", 6),
        ("dead_expired", "dead", tenant, "2 hours", 3),
        ("expired", "expired", tenant, "2 hours", 3),
        ("sent", "sent", tenant, "2 hours", 5),
        ("suppressed", "suppressed", tenant, "2 hours", 2),
        ("cancelled", "cancelled", tenant, "2 hours", 1),
        ("dead_before", "dead", tenant, "5 hours", 3),
        ("dead_after", "dead", tenant, "10 minutes", 2),
        ("other_dead", "dead", other, "2 hours", 3),
        ("other_sent", "sent", other, "2 hours", 2),
    ]
    groups: dict[str, list] = {}
    for group, status, owner, age, count in plan:
        for _ in range(count):
            mail_id = insert_mail(db, owner.tenant_id, subject=group)
            put_in_state(db, mail_id, status, age=age)
            groups.setdefault(group, []).append(mail_id)
    db.execute(
        "UPDATE mails SET expires_at = now() - interval '1 hour' WHERE id = ANY(%s)",
        (groups["dead_expired"] + groups["expired"],),
    )
    return groups


def received_ids(sink: SmtpSink) -> Counter[uuid.UUID]:
    return Counter(
        uuid.UUID(mail.parsed()["Message-ID"].strip("<>").split("@")[0]) for mail in sink.received
    )


@pytest.mark.e2e
def test_an_outage_window_is_sent_exactly_once_even_across_interruptions_and_reruns(
    procs: Processes,
    settings: Settings,
    smtp_sink: SmtpSink,
    db: psycopg.Connection,
    tenant: TenantKey,
    other_tenant: TenantKey,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    groups = outage(db, tenant, other_tenant)
    procs.relay()
    procs.worker()
    replayable = set(groups["dead"] + groups["failed"])
    args = ["replay", *window(timedelta(hours=-3), timedelta(hours=-1)), "--tenant", "acme"]
    args += ["--status", "dead,failed,expired", "--batch-size", "5", "--actor", "ops"]

    with interrupted_at_batch(monkeypatch, 2):
        code, first = cli_json(settings, *args)
    assert (code, first["interrupted"]) == (130, True)
    assert 0 < first["replayed_count"] <= 5
    code, second = cli_json(settings, *args)
    assert (code, second["interrupted"]) == (0, False)
    assert ids(first["replayed"]) | ids(second["replayed"]) == replayable
    assert first["replayed_count"] + second["replayed_count"] == len(replayable)
    expired = set(groups["dead_expired"] + groups["expired"])
    assert set(map(uuid.UUID, second["skipped"]["expired"])) == expired

    wait_until(lambda: len(smtp_sink.received) >= len(replayable), 60)
    wait_until(lambda: all(status_of(db, m) == "sent" for m in replayable), 30)
    # Two of them fail again after their replay: the same command leaves them alone.
    again = sorted(replayable)[:2]
    put_in_state(db, again[0], "failed")
    put_in_state(db, again[1], "dead")
    code, third = cli_json(settings, *args)
    assert (code, third["replayed_count"]) == (0, 0)
    assert set(map(uuid.UUID, third["skipped"]["already_replayed"])) == set(again)

    # Resending sent mail needs --yes under --json, and then goes through the pipeline.
    resend = ["replay", *args[1:5], "--tenant", "globex", "--status", "sent", "--include-sent"]
    assert run_relay_cli(settings, *resend, "--json").exit_code == 2
    code, resent = cli_json(settings, *resend, "--yes")
    assert (code, ids(resent["replayed"])) == (0, set(groups["other_sent"]))

    wait_until(lambda: len(smtp_sink.received) >= len(replayable) + 2, 30)
    time.sleep(1.5)  # several relay polls: anything sent twice would arrive now
    assert received_ids(smtp_sink) == Counter(replayable | set(groups["other_sent"]))
    untouched = [g for g in groups if g not in ("dead", "failed", "other_sent")]
    for group in untouched:
        for mail_id in groups[group]:
            assert replayed_events(db, mail_id) == [], group
    assert status_of(db, groups["cancelled"][0]) == "cancelled"
    actions = admin_actions(db)
    assert [(a[0], a[1], a[3]["interrupted"]) for a in actions] == [
        ("replay", "ops", True),
        ("replay", "ops", False),
        ("replay", "ops", False),
        ("replay", actions[3][1], False),
    ]


def test_a_selection_narrowed_by_tag_replays_and_discards_only_tagged_mails(
    db: psycopg.Connection, tenant: TenantKey
) -> None:
    tagged, untagged = (insert_mail(db, tenant.tenant_id, tags=tags) for tags in (("vip",), ()))
    for mail_id in (tagged, untagged):
        put_in_state(db, mail_id, "dead")
    since = datetime.now(UTC) - timedelta(hours=1)
    vip = MailSelection((MailStatus.DEAD,), since=since, tag="vip")
    assert replay_core.count_selected(db, vip) == 1
    run = replay_core.replay(db, ReplayRequest(vip), BatchOptions(), actor="t")
    assert [row["id"] for row in run.changed] == [tagged]
    assert (status_of(db, tagged), status_of(db, untagged)) == ("accepted", "dead")
    put_in_state(db, tagged, "dead")
    run = replay_core.discard(db, vip, BatchOptions(), actor="t", reason="vip only")
    assert [row["id"] for row in run.changed] == [tagged]
    assert status_of(db, untagged) == "dead"
