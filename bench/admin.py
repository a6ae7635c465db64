"""The relay admin CLI at scale: replay, purge, status, and what pauses cost the claim.

Run as ``.venv/bin/python bench/admin.py [--mails 20000] [--repeat 3]``. Each figure is the
median rows/s of the command's own code over ``--repeat`` fresh copies of a database filled by
INSERT ... SELECT generate_series, beside a same-run baseline doing the same work in plain SQL
(relay SQL: a pause on another tenant against none; status: against a bare count(*)).
"""

from __future__ import annotations

import functools
import statistics
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import harness
import psycopg
from psycopg.types.json import Jsonb

# --- app internals this scenario uses (update here when the apps move things) ------------------
from outbox_relay.admin.inspection import gather
from outbox_relay.admin.replay import BatchOptions, ReplayRequest, replay
from outbox_relay.admin.retention import plan_retention, purge_finished
from outbox_relay.dispatch import DispatchPolicy, dispatch_round
from shared.db import connect
from shared.states import REPLAY_BY_DEFAULT
from shared.store.outbox import MailSelection

# -----------------------------------------------------------------------------------------------

REQUEST = {
    "from": {"name": "Bench", "email": "bench@example.com"}, "cc": [], "bcc": [],
    "to": [{"name": "Reader", "email": "reader@example.org"}], "reply_to": None,
    "subject": "Benchmark", "text": "Hello", "html": "<p>Hello</p>", "headers": {},
    "attachments": [],
}  # fmt: skip
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
# The 'replayed' event comes from the state machine's trigger (migration 0010), as in replay.
REPLAY_BASELINE_SQL = """
WITH replayed AS (
    UPDATE mails SET status = 'accepted', attempts = 0, last_error = NULL, updated_at = now(),
                     status_detail = '{"actor": "bench"}'::jsonb
    WHERE status = 'dead' RETURNING id, stream
)
INSERT INTO outbox (mail_id, queue) SELECT id, stream FROM replayed
"""


def fill(dbs: harness.Databases, tenants: int, count: int, status: str, age: str) -> str:
    """A copy of the base with *count* mails in *status*, *age* old: the template's name."""
    name, url = dbs.clone()
    started = time.perf_counter()
    with psycopg.connect(url, autocommit=True) as conn:
        ids = [uuid.uuid4() for _ in range(tenants)]
        for index, tenant_id in enumerate(ids):
            conn.execute(
                "INSERT INTO tenants (id, name, sender_domains) VALUES (%s, %s, %s)",
                (tenant_id, f"bench-{index}", ["example.com"]),
            )
        params = {"tenants": ids, "request": Jsonb(REQUEST), "status": status, "age": age}
        conn.execute(FILL_SQL, {**params, "count": count})
        conn.execute(EVENTS_SQL)
        if status == "accepted":
            conn.execute(OUTBOX_SQL)
        conn.execute("VACUUM ANALYZE")
    print(f"filled {count} {status} mails in {time.perf_counter() - started:.1f} s")
    return name


def timed(
    run: Callable[[str], int], dbs: harness.Databases, template: str, repeat: int
) -> dict[str, Any]:
    """Median rows/s of *run* over *repeat* fresh copies of *template*."""
    rates, seconds = [], []
    for _ in range(repeat):
        with dbs.copy(template) as (_, url):
            started = time.perf_counter()
            rows = run(url)
            seconds.append(time.perf_counter() - started)
        rates.append(rows / seconds[-1])
    return {
        "rows": rows,
        "median_rows_per_s": round(statistics.median(rates)),
        "runs_rows_per_s": [round(rate) for rate in rates],
        "median_seconds": round(statistics.median(seconds), 3),
    }


def replay_with_command(url: str) -> int:
    """The code behind 'outbox-relay replay --since 1d --until now' (dead and failed)."""
    now = datetime.now(UTC)
    selection = MailSelection(REPLAY_BY_DEFAULT, since=now - timedelta(days=1), until=now)
    with connect(url) as conn:
        run = replay(conn, ReplayRequest(selection), BatchOptions(batch_size=500), actor="bench")
    assert run.error is None and not run.interrupted, run.error
    return len(run.changed)


def replay_baseline(url: str) -> int:
    with connect(url) as conn:
        return conn.execute(REPLAY_BASELINE_SQL).rowcount


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


def relay_sql(url: str, *, pause_other_tenant: bool) -> int:
    with connect(url) as conn:
        if pause_other_tenant:
            other = uuid.uuid4()
            conn.execute(
                "INSERT INTO tenants (id, name, sender_domains) VALUES (%s, 'paused', '{}')",
                (other,),
            )
            conn.execute(
                "INSERT INTO relay_pauses (tenant_id, actor) VALUES (%s, 'bench')", (other,)
            )
        publisher = harness.NullPublisher()
        policy = DispatchPolicy(batch_size=500, visibility_timeout=60.0)
        while dispatch_round(conn, publisher, policy).claimed:
            pass
    return publisher.taken


def status_latency(url: str, repeat: int) -> dict[str, float]:
    """Median milliseconds of status's queries and of a bare count(*), same connection."""
    report, count = [], []
    with connect(url) as conn:
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


COMPARISONS: tuple[tuple[str, str, str, str, Callable[[str], int], Callable[[str], int]], ...] = (
    # figure, label, status and age of the filled mails, the command's code, its baseline
    ("replay", "replay (batches of 500)", "dead", "2 hours", replay_with_command, replay_baseline),
    ("purge", "purge (batches of 1000)", "sent", "40 days", purge_with_command, purge_baseline),
    (
        "claim_paused", "relay SQL with a pause in place", "accepted", "1 second",
        functools.partial(relay_sql, pause_other_tenant=True),
        functools.partial(relay_sql, pause_other_tenant=False),
    ),
)  # fmt: skip


def main() -> dict[str, Any]:
    parser = harness.arguments(__doc__.splitlines()[0])
    parser.add_argument("--mails", type=int, default=20000)
    parser.add_argument("--tenants", type=int, default=10)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    figures: dict[str, Any] = {"mails": args.mails, "repeat": args.repeat}
    templates: dict[str, str] = {}
    with harness.bench(args) as bench:
        for key, label, status, age, command, baseline in COMPARISONS:
            templates[status] = fill(bench.dbs, args.tenants, args.mails, status, age)
            runs = [
                timed(run, bench.dbs, templates[status], args.repeat) for run in (command, baseline)
            ]
            figures[key], figures[f"{key}_baseline"] = runs
            rates = [run["median_rows_per_s"] for run in runs]
            print(
                f"{label}: {rates[0]:,} rows/s (runs {runs[0]['runs_rows_per_s']}) vs baseline "
                f"{rates[1]:,} rows/s: ratio {rates[0] / rates[1]:.2f}"
            )
        with bench.dbs.copy(templates["sent"]) as (_, url):
            figures["status"] = status_ms = status_latency(url, max(5, args.repeat))
        print(
            f"status queries on {args.mails} mails: {status_ms['status_ms']} ms"
            f" vs SELECT count(*) FROM mails {status_ms['count_ms']} ms"
        )
    return figures


if __name__ == "__main__":
    harness.run(main)
