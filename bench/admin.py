"""The relay admin CLI at scale: replay, purge, status, and what pauses cost the claim.

Run as ``.venv/bin/python bench/admin.py [--mails 20000] [--repeat 3]``.

Each measurement runs on a fresh copy (CREATE DATABASE ... TEMPLATE) of a throw-away
database (``mailroom_bench_<hex>``, migrated, one tenant per ``--tenants``, mails
written with plain INSERT ... SELECT generate_series); everything is dropped at the
end, also on failure or Ctrl-C. Each figure is the median of ``--repeat`` runs and is
printed beside a baseline measured in the same run:

1. replay of N dead mails (the command's own code, batches of 500, one transaction
   each) beside one SQL statement doing the same UPDATE + outbox INSERT + event INSERT
   for all N at once;
2. purge of N sent mails 40 days old with 2 events each (batches of 1000) beside one
   transaction deleting the same events and mails with two plain DELETEs;
3. the relay's SQL (dispatch_round with a publisher that publishes nothing) on N
   accepted mails with no pause, and with a pause on another tenant (nothing held,
   so the only difference is the claim's NOT EXISTS on relay_pauses);
4. ``outbox-relay status``'s queries on N mails beside a bare ``count(*)``.

The last line of stdout is the figures as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
from psycopg.types.json import Jsonb
from relay import DEFAULT_REDIS_URL, Databases, _NullPublisher, databases  # bench/relay.py

from outbox_relay.admin.replay import BatchOptions, ReplayRequest, Selection, replay
from outbox_relay.admin.retention import plan_retention, purge_finished
from outbox_relay.commands.status import gather
from outbox_relay.dispatch import DispatchPolicy, dispatch_round
from shared.config import Settings
from shared.db import connect
from shared.migrate import migrate
from shared.states import REPLAY_BY_DEFAULT

DEFAULT_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
REQUEST = {
    "from": {"name": "Bench", "email": "bench@example.com"},
    "to": [{"name": "Reader", "email": "reader@example.org"}],
    "cc": [],
    "bcc": [],
    "reply_to": None,
    "subject": "Benchmark",
    "text": "Hello",
    "html": "<p>Hello</p>",
    "headers": {},
    "attachments": [],
}
FILL_SQL = """
INSERT INTO mails (id, tenant_id, stream, request, status, created_at, updated_at, last_error)
SELECT gen_random_uuid(), (%(tenants)s::uuid[])[1 + n %% cardinality(%(tenants)s::uuid[])],
       'transactional', %(request)s, %(status)s,
       now() - %(age)s::interval, now() - %(age)s::interval,
       CASE WHEN %(status)s = 'dead' THEN 'bench: no worker' END
FROM generate_series(1, %(count)s) AS n
"""
EVENTS_SQL = """
INSERT INTO mail_events (mail_id, kind, created_at)
SELECT id, kind, created_at FROM mails, unnest(ARRAY['accepted', status]) AS kind
"""
OUTBOX_SQL = "INSERT INTO outbox (mail_id, queue) SELECT id, stream FROM mails"
REPLAY_BASELINE_SQL = """
WITH replayed AS (
    UPDATE mails SET status = 'accepted', attempts = 0, last_error = NULL, updated_at = now()
    WHERE status = 'dead' RETURNING id, stream
), queued AS (
    INSERT INTO outbox (mail_id, queue) SELECT id, stream FROM replayed
)
INSERT INTO mail_events (mail_id, kind, detail)
SELECT id, 'replayed', '{"actor": "bench"}'::jsonb FROM replayed
"""


def fill(url: str, tenants: int, count: int, status: str, age: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        ids = [uuid.uuid4() for _ in range(tenants)]
        for index, tenant_id in enumerate(ids):
            conn.execute(
                "INSERT INTO tenants (id, name, sender_domains) VALUES (%s, %s, %s)",
                (tenant_id, f"bench-{index}", ["example.com"]),
            )
        params = {"tenants": ids, "request": Jsonb(REQUEST), "status": status, "age": age}
        conn.execute(FILL_SQL, {**params, "count": count})  # type: ignore[arg-type]
        conn.execute(EVENTS_SQL)  # type: ignore[arg-type]
        if status == "accepted":
            conn.execute(OUTBOX_SQL)
        conn.execute("VACUUM ANALYZE")


def timed(run: Callable[[str], int], dbs: Databases, template: str, repeat: int) -> dict[str, Any]:
    """Median rows/s of *run* over *repeat* fresh copies of *template*."""
    rates, seconds = [], []
    for _ in range(repeat):
        name, url = dbs.clone(template)
        started = time.perf_counter()
        rows = run(url)
        elapsed = time.perf_counter() - started
        dbs.drop(name)
        rates.append(rows / elapsed)
        seconds.append(elapsed)
    return {
        "rows": rows,
        "median_rows_per_s": round(statistics.median(rates)),
        "runs_rows_per_s": [round(rate) for rate in rates],
        "median_seconds": round(statistics.median(seconds), 3),
    }


def replay_with_command(url: str) -> int:
    """The code behind 'outbox-relay replay --since 1d --until now' (dead and failed)."""
    now = datetime.now(UTC)
    selection = Selection(REPLAY_BY_DEFAULT, since=now - timedelta(days=1), until=now)
    with connect(url) as conn:
        run = replay(conn, ReplayRequest(selection), BatchOptions(batch_size=500), actor="bench")
    assert run.error is None and not run.interrupted, run.error
    return len(run.changed)


def purge_with_command(url: str) -> int:
    with connect(url) as conn:
        plan = plan_retention(conn, timedelta(days=30), 1000)
        return purge_finished(conn, plan, "bench").mails_total


def purge_baseline(url: str) -> int:
    with connect(url) as conn, conn.transaction():
        conn.execute("SET LOCAL mailroom.purge = 'on'")
        conn.execute(
            "DELETE FROM mail_events WHERE mail_id IN (SELECT id FROM mails WHERE status = 'sent')"
        )
        return conn.execute("DELETE FROM mails WHERE status = 'sent'").rowcount


def replay_baseline(url: str) -> int:
    with connect(url) as conn:
        return conn.execute(REPLAY_BASELINE_SQL).rowcount  # type: ignore[arg-type]


def relay_sql(url: str, *, pause_other_tenant: bool) -> int:
    if pause_other_tenant:
        with connect(url) as conn:
            other = uuid.uuid4()
            conn.execute(
                "INSERT INTO tenants (id, name, sender_domains) VALUES (%s, 'paused', '{}')",
                (other,),
            )
            conn.execute(
                "INSERT INTO relay_pauses (tenant_id, actor) VALUES (%s, 'bench')", (other,)
            )
    publisher = _NullPublisher(Settings(broker_url=DEFAULT_REDIS_URL))
    with connect(url) as conn:
        policy = DispatchPolicy(batch_size=500, visibility_timeout=60.0)
        while dispatch_round(conn, publisher, policy).claimed:
            pass
    return publisher.taken


def status_latency(url: str, repeat: int) -> dict[str, float]:
    """Median milliseconds of status's queries and of a bare count(*), same connection."""
    with connect(url) as conn:
        report, count = [], []
        for _ in range(repeat):
            started = time.perf_counter()
            gather(conn, 60.0)
            report.append((time.perf_counter() - started) * 1000)
            started = time.perf_counter()
            conn.execute("SELECT count(*) FROM mails").fetchone()
            count.append((time.perf_counter() - started) * 1000)
    return {
        "status_ms": round(statistics.median(report), 1),
        "count_ms": round(statistics.median(count), 1),
    }


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mails", type=int, default=20000)
    parser.add_argument("--tenants", type=int, default=10)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument(
        "--admin-url",
        default=os.environ.get("MAILROOM_TEST_DATABASE_URL") or DEFAULT_ADMIN_URL,
        help="a database URL allowed to CREATE/DROP DATABASE (env MAILROOM_TEST_DATABASE_URL)",
    )
    return parser.parse_args(argv)


def _template(dbs: Databases, base: str, status: str, args: argparse.Namespace, age: str) -> str:
    name, url = dbs.clone(base)
    started = time.perf_counter()
    fill(url, args.tenants, args.mails, status, age)
    print(f"filled {args.mails} {status} mails in {time.perf_counter() - started:.1f} s")
    return name


def _line(label: str, measured: dict[str, Any], baseline: dict[str, Any]) -> str:
    ratio = measured["median_rows_per_s"] / baseline["median_rows_per_s"]
    return (
        f"{label}: {measured['median_rows_per_s']:,} rows/s (runs {measured['runs_rows_per_s']})"
        f" vs baseline {baseline['median_rows_per_s']:,} rows/s: ratio {ratio:.2f}"
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse_args(argv)
    load = os.getloadavg()
    print(f"{os.cpu_count()} cores; load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    figures: dict[str, Any] = {"mails": args.mails, "repeat": args.repeat, "load": load}
    with databases(args.admin_url) as dbs:
        base_url = dbs.create_base()
        with connect(base_url) as conn:
            migrate(conn)
        base = dbs.base

        dead = _template(dbs, base, "dead", args, "2 hours")
        figures["replay"] = timed(replay_with_command, dbs, dead, args.repeat)
        figures["replay_baseline"] = timed(replay_baseline, dbs, dead, args.repeat)
        print(_line("replay (batches of 500)", figures["replay"], figures["replay_baseline"]))

        sent = _template(dbs, base, "sent", args, "40 days")
        figures["purge"] = timed(purge_with_command, dbs, sent, args.repeat)
        figures["purge_baseline"] = timed(purge_baseline, dbs, sent, args.repeat)
        print(_line("purge (batches of 1000)", figures["purge"], figures["purge_baseline"]))

        accepted = _template(dbs, base, "accepted", args, "1 second")
        figures["claim_paused"] = timed(
            lambda url: relay_sql(url, pause_other_tenant=True), dbs, accepted, args.repeat
        )
        figures["claim"] = timed(
            lambda url: relay_sql(url, pause_other_tenant=False), dbs, accepted, args.repeat
        )
        print(_line("relay SQL with a pause in place", figures["claim_paused"], figures["claim"]))

        name, url = dbs.clone(sent)
        figures["status"] = status_latency(url, max(5, args.repeat))
        dbs.drop(name)
        print(
            f"status queries on {args.mails} mails: {figures['status']['status_ms']} ms"
            f" vs SELECT count(*) FROM mails {figures['status']['count_ms']} ms"
        )
    print(json.dumps(figures, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
