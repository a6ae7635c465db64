"""outbox-relay status, list and show against a real database with a mail in every state."""

from __future__ import annotations

import json
import uuid
from dataclasses import replace

import psycopg
import pytest

from shared.config import Settings
from tests.conftest import TenantKey, run_relay_cli
from tests.factories import ALL_STATUSES, insert_mail, one_mail_in_every_state, put_in_state
from tests.services import free_port

SCOPE_KEYS = {"tenant", "stream", "mails", "retrying", "failing", "dead", "paused", "outbox"}


def healthy_canaries(db: psycopg.Connection) -> None:
    for queue in ("transactional", "campaign"):
        db.execute(
            "INSERT INTO canaries (id, queue, relay, published_at, received_at)"
            " VALUES (%s, %s, 'test', now(), now())",
            (uuid.uuid4(), queue),
        )


def status_json(settings: Settings) -> tuple[int, dict]:
    result = run_relay_cli(settings, "status", "--json")
    return result.exit_code, json.loads(result.stdout)


def test_status_counts_per_tenant_and_stream(
    settings: Settings, db: psycopg.Connection, tenant: TenantKey, other_tenant: TenantKey
) -> None:
    healthy_canaries(db)
    one_mail_in_every_state(db, tenant.tenant_id)
    insert_mail(db, other_tenant.tenant_id, stream="campaign")
    code, report = status_json(settings)
    assert code == 1, "a dead mail degrades the pipeline"
    assert set(report) == {"mails", "outbox", "by_tenant", "pauses", "canary", "verdict", "reasons"}
    assert report["verdict"] == "degraded"
    assert report["reasons"] == ["1 dead mail(s): outbox-relay dlq list"]
    scopes = {(scope["tenant"], scope["stream"]): scope for scope in report["by_tenant"]}
    assert set(scopes) == {(tenant.name, "transactional"), (other_tenant.name, "campaign")}
    mine = scopes[tenant.name, "transactional"]
    assert set(mine) == SCOPE_KEYS
    assert mine["mails"] == dict.fromkeys(ALL_STATUSES, 1)
    assert (mine["retrying"], mine["dead"], mine["paused"]) == (1, 1, False)
    # scheduled, accepted, queued and retrying keep outbox rows; queued and retrying are leased
    assert mine["outbox"]["rows"] == 4
    assert mine["outbox"]["in_flight"] == 2
    assert scopes[other_tenant.name, "campaign"]["outbox"]["due"] == 1
    assert report["mails"]["transactional"]["sent"] == 1
    assert report["outbox"]["rows"] == 5


def test_status_is_healthy_when_nothing_needs_an_operator(
    settings: Settings, db: psycopg.Connection, tenant: TenantKey
) -> None:
    healthy_canaries(db)
    put_in_state(db, insert_mail(db, tenant.tenant_id), "sent")
    result = run_relay_cli(settings, "status")
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[0] == "pipeline: healthy"
    assert tenant.name in result.stdout and "sent=1" in result.stdout


def test_status_reports_a_stuck_outbox_row_with_its_age(
    settings: Settings, db: psycopg.Connection, tenant: TenantKey
) -> None:
    healthy_canaries(db)
    insert_mail(db, tenant.tenant_id)
    db.execute("UPDATE outbox SET available_at = now() - interval '10 minutes'")
    code, report = status_json(settings)
    assert code == 1
    (scope,) = report["by_tenant"]
    assert scope["outbox"]["oldest_undispatched_seconds"] >= 600
    assert report["reasons"][0].startswith("outbox rows undispatched for")


def test_list_filters_by_status_tenant_stream_window_and_tag(
    settings: Settings, db: psycopg.Connection, tenant: TenantKey, other_tenant: TenantKey
) -> None:
    mails = one_mail_in_every_state(db, tenant.tenant_id)
    old = insert_mail(db, tenant.tenant_id, tags=("old",))
    put_in_state(db, old, "dead", age="3 days")
    theirs = insert_mail(db, other_tenant.tenant_id, stream="campaign")
    put_in_state(db, theirs, "dead")

    def ids(*args: str) -> list[str]:
        result = run_relay_cli(settings, "list", "--json", *args)
        assert result.exit_code == 0, result.output
        document = json.loads(result.stdout)
        assert set(document) == {"mails", "count"}
        return [mail["id"] for mail in document["mails"]]

    assert ids("--status", "dead") == [str(theirs), str(mails["dead"]), str(old)]
    assert ids("--status", "dead", "--tenant", tenant.name, "--since", "1d") == [str(mails["dead"])]
    assert ids("--status", "dead,failed", "--stream", "campaign") == [str(theirs)]
    assert ids("--tenant", str(other_tenant.tenant_id)) == [str(theirs)]
    assert ids("--until", "2d") == [str(old)]
    assert ids("--tag", "old") == [str(old)]
    assert len(ids("--limit", "3")) == 3
    assert len(ids()) == len(ALL_STATUSES) + 2


def test_list_prints_a_table(settings: Settings, db: psycopg.Connection, tenant: TenantKey) -> None:
    put_in_state(db, insert_mail(db, tenant.tenant_id, subject="Quarterly"), "failed")
    result = run_relay_cli(settings, "list", "--status", "failed")
    assert result.exit_code == 0, result.output
    header, row, footer = result.stdout.splitlines()
    assert header.split()[:4] == ["ID", "TENANT", "STREAM", "STATUS"]
    assert "Quarterly" in row and "test: failed" in row
    assert footer == "1 mail(s)"


def test_show_prints_the_mail_its_outbox_row_and_every_event(
    settings: Settings, db: psycopg.Connection, tenant: TenantKey
) -> None:
    mail_id = insert_mail(db, tenant.tenant_id, subject="Receipt")
    put_in_state(db, mail_id, "retrying")
    result = run_relay_cli(settings, "show", str(mail_id), "--json")
    assert result.exit_code == 0, result.output
    shown = json.loads(result.stdout)
    assert shown["id"] == str(mail_id)
    assert (shown["status"], shown["tenant"], shown["subject"]) == (
        "retrying",
        tenant.name,
        "Receipt",
    )
    assert shown["outbox"]["queue"] == "transactional"
    assert shown["outbox"]["dispatch_count"] == 1
    assert [event["kind"] for event in shown["events"]] == ["accepted", "retrying"]
    table = run_relay_cli(settings, "show", str(mail_id))
    assert "status:       retrying" in table.stdout
    assert "dispatched 1 time(s)" in table.stdout
    assert table.stdout.rstrip().splitlines()[-1].split()[2] == "retrying"


def test_show_of_an_unknown_mail_exits_1(settings: Settings, db: psycopg.Connection) -> None:
    result = run_relay_cli(settings, "show", str(uuid.uuid4()))
    assert result.exit_code == 1
    assert result.stderr.startswith("outbox-relay: no mail ")


def test_status_is_broken_when_the_database_cannot_be_reached(settings: Settings) -> None:
    unreachable = replace(settings, database_url=f"postgresql://nobody@127.0.0.1:{free_port()}/x")
    result = run_relay_cli(unreachable, "status")
    assert result.exit_code == 2
    assert result.stderr.startswith("outbox-relay: cannot reach the database:")
    assert len(result.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize(
    ("args", "names"),
    [
        (["list", "--status", "lost"], "unknown status lost"),
        (["list", "--since", "yesterday-ish"], "neither an ISO 8601 time"),
        (["list", "--tenant", "nobody"], "no tenant named 'nobody'"),
        (["list", "--stream", "bulk"], "'bulk' is not one of"),
        (["list", "--limit", "0"], "--limit"),
        (["show", "not-a-uuid"], "is not a mail id"),
        (["pause"], "--all"),
        (["pause", "--all", "--stream", "campaign"], "--all"),
        (["nonsense"], "No such command"),
    ],
)
def test_bad_arguments_are_one_line_and_exit_2(
    settings: Settings, db: psycopg.Connection, args: list[str], names: str
) -> None:
    result = run_relay_cli(settings, *args)
    assert result.exit_code == 2, result.output
    assert result.stdout == ""
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert names in result.stderr
