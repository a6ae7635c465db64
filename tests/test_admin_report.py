"""outbox-relay report: a reconciliation over a window, against a real database with a
mail in every state, another tenant, and mails outside the window."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from typing import Any

import psycopg
import pytest

from shared.config import Settings
from shared.states import FINAL_STATUSES
from shared.store.outbox import record_admin_action
from tests.conftest import TenantKey, run_relay_cli
from tests.factories import ALL_STATUSES, insert_mail, one_mail_in_every_state, put_in_state

FINAL = {status.value for status in FINAL_STATUSES}
NOT_FINAL = [status for status in ALL_STATUSES if status not in FINAL]
WINDOW = ("--since", "5h", "--until", "1h")
JSON_KEYS = {
    "window",
    "tenant",
    "stream",
    "accepted",
    "by_status",
    "final",
    "not_final",
    "not_final_mails",
    "tenants",
    "warnings",
}
MAIL_KEYS = {"id", "tenant", "stream", "status", "created_at", "updated_at", "last_error"}


@dataclass(frozen=True)
class Seeded:
    acme: dict[str, uuid.UUID]  # one mail in every state, 3 hours old
    globex_sent: uuid.UUID  # campaign stream, 2 hours old
    globex_queued: uuid.UUID  # 2 hours old


def mail_in(
    db: psycopg.Connection, tenant_id: uuid.UUID, status: str, age: str | None, **kwargs: Any
) -> uuid.UUID:
    mail_id = insert_mail(db, tenant_id, **kwargs)
    put_in_state(db, mail_id, status, age=age)
    return mail_id


def seed(db: psycopg.Connection, tenant: TenantKey, other_tenant: TenantKey) -> Seeded:
    acme = one_mail_in_every_state(db, tenant.tenant_id, age="3 hours")
    globex_sent = mail_in(db, other_tenant.tenant_id, "sent", "2 hours", stream="campaign")
    globex_queued = mail_in(db, other_tenant.tenant_id, "queued", "2 hours")
    # Outside the window: before --since, after --until.
    mail_in(db, tenant.tenant_id, "dead", "2 days")
    mail_in(db, other_tenant.tenant_id, "retrying", "10 hours")
    mail_in(db, tenant.tenant_id, "queued", None)
    mail_in(db, other_tenant.tenant_id, "sent", "30 minutes")
    return Seeded(acme, globex_sent, globex_queued)


def report_json(settings: Settings, *args: str) -> dict[str, Any]:
    result = run_relay_cli(settings, "report", *WINDOW, "--json", *args)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def statuses(**counts: int) -> dict[str, int]:
    return {status: counts.get(status, 0) for status in ALL_STATUSES}


def test_report_counts_every_mail_accepted_in_the_window(
    settings: Settings, db: psycopg.Connection, tenant: TenantKey, other_tenant: TenantKey
) -> None:
    seeded = seed(db, tenant, other_tenant)

    document = report_json(settings)

    assert set(document) == JSON_KEYS
    assert set(document["window"]) == {"since", "until"}
    assert (document["tenant"], document["stream"], document["warnings"]) == (None, None, [])
    assert document["by_status"] == {
        status: 2 if status in ("sent", "queued") else 1 for status in ALL_STATUSES
    }
    assert list(document["by_status"]) == list(ALL_STATUSES)  # every key, lifecycle order
    assert (document["accepted"], document["final"], document["not_final"]) == (14, 8, 6)
    not_final = document["not_final_mails"]
    expected = {str(seeded.acme[status]) for status in NOT_FINAL} | {str(seeded.globex_queued)}
    assert {mail["id"] for mail in not_final} == expected
    assert all(set(mail) == MAIL_KEYS for mail in not_final)
    assert [mail["created_at"] for mail in not_final] == sorted(
        mail["created_at"] for mail in not_final
    )
    assert not_final[-1]["id"] == str(seeded.globex_queued)  # the youngest
    assert document["tenants"] == {
        "acme": {
            "accepted": 12,
            "by_status": statuses(**dict.fromkeys(ALL_STATUSES, 1)),
            "final": 7,
            "not_final": 5,
        },
        "globex": {
            "accepted": 2,
            "by_status": statuses(sent=1, queued=1),
            "final": 1,
            "not_final": 1,
        },
    }


def test_report_for_one_tenant_or_stream(
    settings: Settings, db: psycopg.Connection, tenant: TenantKey, other_tenant: TenantKey
) -> None:
    seeded = seed(db, tenant, other_tenant)

    by_name = report_json(settings, "--tenant", "globex")
    by_id = report_json(settings, "--tenant", str(other_tenant.tenant_id))
    assert {**by_name, "window": None} == {**by_id, "window": None}
    assert by_name["tenant"] == "globex"  # the name, also when named by id
    assert by_name["by_status"] == statuses(sent=1, queued=1)
    assert [mail["id"] for mail in by_name["not_final_mails"]] == [str(seeded.globex_queued)]
    assert list(by_name["tenants"]) == ["globex"]

    campaign = report_json(settings, "--stream", "campaign")
    assert campaign["stream"] == "campaign"
    assert (campaign["accepted"], campaign["final"], campaign["not_final"]) == (1, 1, 0)
    assert campaign["not_final_mails"] == []

    nothing = report_json(settings, "--tenant", "acme", "--stream", "campaign")
    assert nothing["accepted"] == 0 and nothing["by_status"] == statuses()


def test_report_table_lists_the_mails_not_final(
    settings: Settings, db: psycopg.Connection, tenant: TenantKey, other_tenant: TenantKey
) -> None:
    seeded = seed(db, tenant, other_tenant)

    result = run_relay_cli(settings, "report", *WINDOW)

    assert result.exit_code == 0, result.output
    assert "accepted 14, final 8, not final 6" in result.stdout
    assert "warning" not in result.stdout
    lines = result.stdout.splitlines()
    for status in NOT_FINAL:
        assert any(str(seeded.acme[status]) in line and status in line for line in lines)
    assert str(seeded.acme["sent"]) not in result.stdout
    assert any(line.split()[:2] == ["globex", "2"] for line in lines)  # per-tenant breakdown


def test_a_purge_with_a_later_cutoff_warns_that_counts_may_be_incomplete(
    settings: Settings, db: psycopg.Connection, tenant: TenantKey, other_tenant: TenantKey
) -> None:
    seed(db, tenant, other_tenant)
    # A purge that took mails finished before the window began does not touch it.
    with db.transaction():
        record_admin_action(
            db, "purge", "ops", {"cutoff": "2000-01-01T00:00:00+00:00"}, {"mails_total": 5}
        )
    assert report_json(settings)["warnings"] == []

    purged = run_relay_cli(settings, "purge", "--older-than", "2h", "--yes")  # cutoff in window
    assert purged.exit_code == 0, purged.output

    document = report_json(settings)
    (warning,) = document["warnings"]
    assert "were purged" in warning and "incomplete" in warning
    assert document["final"] == 0 and document["not_final"] == 6  # the final ones are gone
    table = run_relay_cli(settings, "report", *WINDOW)
    assert any(line.startswith("warning: ") for line in table.stdout.splitlines())


@pytest.mark.parametrize(
    ("args", "names"),
    [
        (["--since", "5h"], "--until"),
        (["--until", "1h"], "--since"),
        (["--since", "yesterday-ish", "--until", "1h"], "neither an ISO 8601 time"),
        (["--since", "1h", "--until", "5h"], "must be before --until"),
        ([*WINDOW, "--tenant", "nobody"], "no tenant named 'nobody'"),
        ([*WINDOW, "--stream", "bulk"], "'bulk' is not one of"),
    ],
)
def test_bad_arguments_are_one_line_and_exit_2(
    settings: Settings, db: psycopg.Connection, args: list[str], names: str
) -> None:
    result = run_relay_cli(settings, "report", *args)
    assert result.exit_code == 2, result.output
    assert result.stdout == ""
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert names in result.stderr
