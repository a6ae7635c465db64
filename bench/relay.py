"""Relay throughput and end-to-end latency, beside Redis, Celery and SQL baselines.

Run as ``.venv/bin/python bench/relay.py [--mails 20000] [--seconds 15] [--rates 200,auto]``.
Parts: ``baselines`` (Publisher alone, the relay's SQL alone, pure-SQL claim+delete,
redis-benchmark LPUSH, Celery send_task), ``relay`` (``outbox-relay run`` processes draining a
pre-filled outbox, median of ``--repeat``), ``profile`` (py-spy) and ``e2e`` (API, relay and
worker as processes under an open-loop load, latency from the 202 to SMTP receipt).
"""

from __future__ import annotations

import contextlib
import http.client
import itertools
import json
import os
import re
import statistics
import subprocess
import threading
import time
import uuid
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any, LiteralString
from urllib.parse import urlsplit

import harness
import psycopg
from celery import Celery
from psycopg import sql

# --- app internals this scenario uses (update here when the apps move things) ------------------
from outbox_relay.dispatch import DispatchPolicy, dispatch_round
from shared.db import connect
from shared.devstack.smtp_sink import SmtpSink, _Handler
from shared.queues import (
    CAMPAIGN_QUEUE,
    SEND_MAIL_TASK,
    TRANSACTIONAL_QUEUE,
    broker_transport_options,
)

# -----------------------------------------------------------------------------------------------

REQUEST_TIMEOUT = 30.0
DRAIN_TIMEOUT = 90.0  # after the last request, at least this long the e2e waits for mail
WARMUP_MAILS = 10
E2E_WORKERS = 2  # gunicorn workers of the API, and the worker's concurrency
CELERY_SECONDS = 5.0
SQL_LIMIT = 100
CLAIM_DELETE_SQL: dict[str, LiteralString] = {
    # The statement as specified for this baseline: no predicate, ORDER BY available_at.
    "as given": "WITH c AS (SELECT id FROM outbox ORDER BY available_at LIMIT {limit} "
    "FOR UPDATE SKIP LOCKED) DELETE FROM outbox USING c WHERE outbox.id = c.id",
    # The relay's predicate, which the (queue, available_at) index serves in order.
    "indexed": "WITH c AS (SELECT id FROM outbox WHERE queue = 'transactional' "
    "AND available_at <= now() ORDER BY available_at LIMIT {limit} "
    "FOR UPDATE SKIP LOCKED) DELETE FROM outbox USING c WHERE outbox.id = c.id",
}
REDIS_BENCHMARKS = (  # label, clients, pipeline, requests, relay-sized payload
    ("LPUSH c=50 (as -t lpush)", 50, 1, 200000, False),
    ("LPUSH c=50 -P 16", 50, 16, 200000, False),
    ("LPUSH c=1", 1, 1, 50000, False),
    ("LPUSH c=1 -P 16, relay-sized", 1, 16, 20000, True),
)
PROFILE_BUCKETS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("periodic jobs (stats, canary, recovery)", ("_run_periodic (",)),
    ("waiting for work (LISTEN/poll)", ("_wait_for_work (",)),
    ("claim: SELECT ... FOR UPDATE SKIP LOCKED", ("_claim (outbox_relay/dispatch.py",)),
    ("publish: building messages (celery_message)", ("celery_message (",)),
    ("publish: redis pipeline round trip", ("execute (redis/client.py", "_execute_pipeline")),
    ("publish: kombu producer.publish (per message)", ("_publish_one (",)),
    ("publish: other", ("publish (outbox_relay/publish.py",)),
    ("COMMIT", ("__exit__ (psycopg/transaction.py",)),
    ("record_published (UPDATE outbox, mails; INSERT events)", ("Connection.execute (",)),
    ("dispatch_round: other", ("dispatch_round (outbox_relay/dispatch.py",)),
)


@dataclass
class RateResult:
    label: str
    count: int
    seconds: float
    rate: float
    detail: dict[str, Any] = field(default_factory=dict)


def timed_rate(label: str, count: int, started: float, **detail: Any) -> RateResult:
    elapsed = time.monotonic() - started
    return RateResult(label, count, round(elapsed, 3), round(count / elapsed, 1), detail)


def redis_benchmark(
    keys: harness.RedisKeys, clients: int, pipeline: int, requests: int, payload: str
) -> float:
    """``redis-benchmark`` LPUSH onto a key under our prefix (deleted afterwards): req/s."""
    parts = urlsplit(keys.url)
    key = keys.prefix + "redis-benchmark"
    argv = ["redis-benchmark", "-h", parts.hostname or "127.0.0.1", "-p", str(parts.port or 6379)]
    argv += ["--dbnum", parts.path.lstrip("/") or "0", "-q", "-n", str(requests)]
    argv += ["-c", str(clients), "-P", str(pipeline), "LPUSH", key, payload]
    done = subprocess.run(argv, capture_output=True, text=True, check=True, timeout=300)
    keys.client.unlink(key)
    return float(re.findall(r"([\d.]+) requests per second", done.stdout)[-1])


def celery_send_task(keys: harness.RedisKeys) -> RateResult:
    """Celery's own send_task from this process, for CELERY_SECONDS, into our prefix."""
    queue = "celery-send-task-baseline"
    app = Celery("mailroom-bench-relay", broker=keys.url)
    app.conf.update(
        broker_transport_options=broker_transport_options(keys.url, keys.prefix),
        broker_connection_retry_on_startup=True, task_ignore_result=True,
        task_serializer="json", accept_content=["json"],
    )  # fmt: skip
    for _ in range(20):  # connect and declare before the clock starts
        app.send_task(SEND_MAIL_TASK, args=[str(uuid.uuid4())], queue=queue)
    sent = 0
    started = time.monotonic()
    while time.monotonic() < started + CELERY_SECONDS:
        app.send_task(SEND_MAIL_TASK, args=[str(uuid.uuid4())], queue=queue)
        sent += 1
    result = timed_rate("Celery send_task", sent, started)
    result.detail = {"in_redis": keys.llen(queue), "expected_in_redis": sent + 20}
    app.close()
    return result


def publish_only(keys: harness.RedisKeys, count: int, batch_size: int) -> tuple[RateResult, int]:
    """The relay's Publisher alone, in batches; and the size of one message in Redis."""
    publisher = harness.publisher(keys)
    messages = [harness.send_mail_message(uuid.uuid4(), TRANSACTIONAL_QUEUE) for _ in range(count)]
    publisher.publish(messages[:1])  # connect before the clock starts
    started = time.monotonic()
    for offset in range(0, count, batch_size):
        publisher.publish(messages[offset : offset + batch_size])
    result = timed_rate(f"Publisher.publish, batches of {batch_size}", count, started)
    publisher.close()
    result.detail = {"in_redis": keys.llen(TRANSACTIONAL_QUEUE), "expected_in_redis": count + 1}
    first = keys.client.lindex(keys.prefix + TRANSACTIONAL_QUEUE, 0)
    keys.delete()
    return result, len(first)  # type: ignore[arg-type]


def sql_only_rounds(db_url: str, batch_size: int) -> RateResult:
    """dispatch_round (claim, lease, events) with a null publisher, until nothing is due."""
    policy = DispatchPolicy(batch_size=batch_size, visibility_timeout=60.0)
    publisher = harness.NullPublisher()
    with connect(db_url) as conn:
        started = time.monotonic()
        rounds = 1
        while dispatch_round(conn, publisher, policy).claimed:
            rounds += 1
        label = f"dispatch_round, null publisher, batch {batch_size}"
        return timed_rate(label, publisher.taken, started, rounds=rounds)


def sql_claim_delete(db_url: str, variant: str) -> RateResult:
    """The pure-SQL claim+delete, one autocommit statement at a time, until empty."""
    statement = sql.SQL(CLAIM_DELETE_SQL[variant]).format(limit=sql.Literal(SQL_LIMIT))
    deleted = statements = 0
    with psycopg.connect(db_url, autocommit=True) as conn:
        plan = "\n".join(str(r[0]) for r in conn.execute(sql.SQL("EXPLAIN ") + statement))
        started = time.monotonic()
        while rows := conn.execute(statement).rowcount:
            deleted, statements = deleted + rows, statements + 1
        label = f"SQL claim+delete LIMIT {SQL_LIMIT} ({variant})"
        return timed_rate(label, deleted, started, statements=statements + 1, plan=plan)


def baselines(
    bench: harness.Bench, filled: str, mails: int, repeat: int, batch: int
) -> tuple[dict[str, float], dict[str, list[RateResult]]]:
    """redis-benchmark req/s by label, and the other baselines' runs by label."""
    keys = bench.keys
    redis_runs: dict[str, float] = {}
    rate_runs: dict[str, list[RateResult]] = {}

    def baseline(result: RateResult, unit: str = "rows/s") -> RateResult:
        rate_runs.setdefault(result.label, []).append(result)
        extra = {k: v for k, v in result.detail.items() if k != "plan"}
        print(f"[baseline] {result.label}: {result.rate:.1f} {unit} {extra}", flush=True)
        return result

    for _ in range(repeat):
        published, message_bytes = publish_only(keys, mails, batch)
        baseline(published, "msg/s")
    print(f"           (a relay message in Redis is {message_bytes} bytes)")
    for label, clients, pipeline, requests, relay_sized in REDIS_BENCHMARKS:
        payload = "x" * max(message_bytes, 3) if relay_sized else "xxx"
        redis_runs[label] = redis_benchmark(keys, clients, pipeline, requests, payload)
        print(f"[baseline] redis-benchmark {label}: {redis_runs[label]:.1f} req/s", flush=True)
    baseline(celery_send_task(keys), "msg/s")
    keys.delete()
    for repetition in range(repeat):
        for variant in CLAIM_DELETE_SQL:
            with bench.dbs.copy(filled) as (_, url):
                result = baseline(sql_claim_delete(url, variant))
            if repetition == 0:
                print("           plan: " + result.detail["plan"].replace("\n", "\n" + " " * 17))
        with bench.dbs.copy(filled) as (_, url):
            baseline(sql_only_rounds(url, batch))
    print(flush=True)
    return redis_runs, rate_runs


@dataclass
class RelayRun(harness.Drained):
    relays: int
    batch_size: int
    mails: int
    rounds: int
    mean_round_size: float
    in_redis: int
    queued_events: int
    published_twice: int  # outbox rows with dispatch_count > 1 (none expected)


def _undispatched(conn: psycopg.Connection[Any]) -> int:
    row = conn.execute("SELECT count(*) FILTER (WHERE dispatch_count = 0) FROM outbox").fetchone()
    return int(row[0]) if row else 0


def relay_run(
    bench: harness.Bench, filled: str, relays: int, batch: int, mails: int, py_spy: str = ""
) -> RelayRun:
    """*relays* ``outbox-relay run`` processes over a copy of the pre-filled database, no
    worker, timed until every outbox row was dispatched."""
    keys = bench.keys
    with bench.dbs.copy(filled) as (name, db_url):
        keys.delete()
        env = harness.service_env(
            db_url, keys, RELAY_BATCH_SIZE=str(batch), RELAY_METRICS_PORT="0",
            CANARY_INTERVAL="3600",
        )  # fmt: skip
        tag = f"{name.rsplit('_', 1)[1]}-{relays}x{batch}{'-profile' if py_spy else ''}"
        logs = {f"relay {i}": bench.workdir / f"relay-{tag}-{i}.log" for i in range(relays)}
        argv = [harness.console_script("outbox-relay"), "run"]
        profile = (py_spy, PROFILE_BUCKETS, bench.workdir / f"{tag}.pyspy") if py_spy else None
        with contextlib.ExitStack() as stack:
            pids = {
                n: stack.enter_context(harness.service(n, argv, env, log))
                for n, log in logs.items()
            }
            drained = harness.drain(
                db_url, _undispatched, mails, (pids, logs), {"relays": list(pids.values())}, keys,
                timeout=max(120.0, mails / 20), profile=profile,
            )  # fmt: skip
        # Leaving the stack stopped the relays (SIGTERM finishes the round in progress).
        in_redis = keys.llen(TRANSACTIONAL_QUEUE) + keys.llen(CAMPAIGN_QUEUE)
        keys.delete()
        with psycopg.connect(db_url, autocommit=True) as conn:
            queued, twice = conn.execute(
                "SELECT (SELECT count(*) FROM mail_events WHERE kind = 'queued'),"
                " (SELECT count(*) FROM outbox WHERE dispatch_count > 1)"
            ).fetchone() or (0, 0)
    entries = [  # the relays' JSON log lines
        json.loads(line)
        for log in logs.values()
        for line in log.read_text(errors="replace").splitlines()
        if line.startswith("{")
    ]
    published = [int(e.get("count", 0)) for e in entries if e.get("message") == "published"]
    return RelayRun(
        **asdict(drained), relays=relays, batch_size=batch, mails=mails, rounds=len(published),
        mean_round_size=round(sum(published) / len(published), 1) if published else 0.0,
        in_redis=in_redis, queued_events=queued, published_twice=twice,
    )  # fmt: skip


def print_relay_run(run: RelayRun) -> None:
    print(
        f"[relay {run.relays} x batch {run.batch_size:>4}] {run.rate:8.1f} mails/s in "
        f"{run.seconds:.2f} s after the first dispatch ({run.rate_with_startup:.0f}/s with "
        f"{run.startup_seconds:.2f} s start-up); {run.rounds} rounds of "
        f"{run.mean_round_size:.0f}; {run.in_redis} in Redis, {run.queued_events} queued, "
        f"{run.published_twice} twice; poll {run.poll_ms} ms\n"
        f"{'':27}cores: {harness.cores_text(run.cpu)}",
        flush=True,
    )


_MESSAGE_ID = re.compile(rb"^Message-ID:[ \t]*<([^@>\s]+)@", re.IGNORECASE | re.MULTILINE)


class _TimedHandler(_Handler):
    """The sink's handler, stamping each arrival (monotonic clock) by its Message-ID."""

    def __init__(self) -> None:
        super().__init__(None)
        self.arrivals: dict[str, float] = {}
        self.duplicates = 0

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        now = time.monotonic()
        match = _MESSAGE_ID.search(bytes(envelope.content).split(b"\r\n\r\n", 1)[0])
        if match is not None:
            with self.lock:
                if match.group(1).decode() in self.arrivals:
                    self.duplicates += 1
                else:
                    self.arrivals[match.group(1).decode()] = now
        return await super().handle_DATA(server, session, envelope)

    def arrived(self, ids: set[str]) -> dict[str, float]:
        with self.lock:
            return {i: self.arrivals[i] for i in ids if i in self.arrivals}


class TimedSink(SmtpSink):
    def __init__(self) -> None:
        super().__init__("127.0.0.1")
        self.timed = _TimedHandler()
        self._controller.handler = self._handler = self.timed  # the server is built with it


@dataclass
class Sent:
    scheduled: float
    started: float
    answered: float
    outcome: str
    mail_id: str | None


def open_loop(
    port: int, key: str, rate: float, count: int, threads: int
) -> tuple[list[Sent], float]:
    """*count* POSTs, the i-th at start + i/rate, from *threads* keep-alive connections."""
    body = json.dumps(harness.ORDER_MAIL).encode()
    headers = harness.json_headers(key, body)
    counter = itertools.count()
    lock = threading.Lock()
    results: list[Sent] = []
    start = time.monotonic() + 0.2

    def client() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=REQUEST_TIMEOUT)
        while True:
            with lock:
                index = next(counter)
            if index >= count:
                break
            scheduled = start + index / rate
            time.sleep(max(0.0, scheduled - time.monotonic()))
            started = time.monotonic()
            outcome, answer = harness.post(conn, "/v1/mails", body, headers)
            mail_id = json.loads(answer)["id"] if outcome == "202" else None
            results.append(Sent(scheduled, started, time.monotonic(), outcome, mail_id))
        conn.close()

    workers = [threading.Thread(target=client, daemon=True) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=count / rate + REQUEST_TIMEOUT + 30)
    return results, start


def _stage_latencies(db_url: str, ids: list[str]) -> dict[str, dict[str, float | int]]:
    """Per-mail gaps between the mail_events timestamps (PostgreSQL's clock)."""
    with psycopg.connect(db_url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT mail_id::text, kind, EXTRACT(EPOCH FROM created_at)::float8 FROM mail_events"
            " WHERE mail_id = ANY(%s::uuid[])",
            (ids,),
        ).fetchall()
    events: dict[str, dict[str, float]] = {}
    for mail_id, kind, at in rows:
        events.setdefault(mail_id, {}).setdefault(kind, at)
    stages = (
        ("accepted -> queued (relay)", "accepted", "queued"),
        ("queued -> sending (Redis, worker pickup)", "queued", "sending"),
        ("sending -> sent (compose, SMTP)", "sending", "sent"),
    )
    return {
        label: harness.ms_stats([e[b] - e[a] for e in events.values() if a in e and b in e])
        for label, a, b in stages
    }


def print_e2e(result: dict[str, Any]) -> None:
    lat, api, lag = result["e2e"], result["api"], result["send_lag"]
    print(
        f"[e2e {result['rate']:g} mails/s for {result['seconds']:g} s] API 202 -> SMTP receipt: "
        f"p50 {lat['p50_ms']} ms, p99 {lat['p99_ms']} ms, max {lat['max_ms']} ms; "
        f"{result['arrived']} of {result['accepted']} accepted arrived ({result['sent']} sent, "
        f"{result['outcomes']}, {result['duplicates_at_sink']} duplicates at the sink)\n"
        f"{'':8}sent at {result['achieved_rate']}/s, delivered at "
        f"{harness.fmt(result['delivery_rate'])}/s; last arrival "
        f"{result['last_arrival_after_last_202_s']} s after the last 202"
        f"{' (SATURATED: the latency is queueing)' if result['saturated'] else ''}\n"
        f"{'':8}API latency p50 {api['p50_ms']} ms, p99 {api['p99_ms']} ms; send lag behind "
        f"schedule p99 {lag['p99_ms']} ms, max {lag['max_ms']} ms"
    )
    for label, stats in result["stages"].items():
        print(
            f"{'':8}{label:<42} p50 {stats['p50_ms']:>8} ms  p99 {stats['p99_ms']:>8} ms  "
            f"max {stats['max_ms']:>8} ms  (n={stats['n']})"
        )
    print(f"{'':8}cores: {harness.cores_text(result['cpu'])}", flush=True)


def e2e_run(bench: harness.Bench, rates: list[str], seconds: float) -> list[dict[str, Any]]:
    """The whole pipeline as processes; one open-loop pass per rate, each followed by a
    bounded wait until every accepted mail arrived. ``auto``: half of what the previous pass
    delivered, if that pass saturated the pipeline."""
    keys, sink = bench.keys, TimedSink()
    passes: list[dict[str, Any]] = []
    with bench.dbs.copy() as (_, db_url), contextlib.ExitStack() as stack:
        sink.start()
        stack.callback(sink.stop)
        stack.callback(keys.delete)
        keys.delete()
        port = harness.free_port()
        (bench.workdir / "metrics").mkdir(exist_ok=True)
        env = harness.service_env(
            db_url, keys, SMTP_URL=sink.url, MESSAGE_ID_DOMAIN=harness.MESSAGE_ID_DOMAIN,
            RELAY_METRICS_PORT="0", CANARY_INTERVAL="3600",
        )  # fmt: skip
        env["PROMETHEUS_MULTIPROC_DIR"] = str(bench.workdir / "metrics")
        worker = [harness.console_script("mail-worker"), "run", f"--concurrency={E2E_WORKERS}"]
        relay = [harness.console_script("outbox-relay"), "run"]
        argvs = {
            "ingest-api": harness.api_argv(port, E2E_WORKERS),
            "relay": relay,
            "worker": worker,
        }
        logs = {n: bench.workdir / f"e2e-{n}.log" for n in argvs}
        pids = {
            n: stack.enter_context(harness.service(n, a, env, logs[n])) for n, a in argvs.items()
        }

        def arrive(ids: set[str], wait: float) -> dict[str, float]:
            deadline = time.monotonic() + wait
            while len(sink.timed.arrived(ids)) < len(ids) and time.monotonic() < deadline:
                harness.check_alive(pids, logs)
                time.sleep(0.05)
            return sink.timed.arrived(ids)

        harness.wait_http_ready("ingest-api", pids["ingest-api"], port, logs["ingest-api"])
        # Warm-up: every process connected, the worker's SMTP connection open.
        warm, _ = open_loop(port, bench.api_key, 20.0, WARMUP_MAILS, 2)
        warm_ids = {s.mail_id for s in warm if s.mail_id}
        if len(arrive(warm_ids, 120)) < len(warm_ids):
            raise RuntimeError(
                f"warm-up: mail missing after 120 s:\n{harness.tail(logs['worker'])}"
            )
        print(f"e2e: warm-up done ({len(warm_ids)} mails arrived)", flush=True)
        with psycopg.connect(db_url, autocommit=True) as conn:
            groups = harness.cpu_groups(
                conn, keys, api=[pids["ingest-api"]], relay=[pids["relay"]], worker=[pids["worker"]]
            )
        groups["bench (load + sink)"] = [os.getpid()]
        for spec in rates:
            if spec == "auto" and not (passes and passes[-1]["saturated"]):
                print("e2e: no 'auto' pass: the previous pass did not saturate")
                continue
            auto = max(5, round(0.5 * (passes[-1]["delivery_rate"] or 10))) if passes else 0
            rate = float(auto if spec == "auto" else spec)
            count, threads = max(1, round(rate * seconds)), max(16, round(rate / 10))
            print(f"e2e: sending {count} mails at {rate:g}/s from {threads} keep-alive connections")
            meter = harness.CpuMeter(groups).start()
            sent, start = open_loop(port, bench.api_key, rate, count, threads)
            accepted = {s.mail_id: s for s in sent if s.mail_id}
            arrivals = arrive(set(accepted), max(DRAIN_TIMEOUT, count / 20))
            cpu = meter.stop()
            last_sent = max((s.answered for s in sent), default=start)
            last_arrival = max(arrivals.values(), default=last_sent)
            delivery_span = last_arrival - min(arrivals.values(), default=start)
            result: dict[str, Any] = {
                "rate": rate, "seconds": seconds, "scheduled": count, "sent": len(sent),
                "outcomes": dict(Counter(s.outcome for s in sent)), "accepted": len(accepted),
                "arrived": len(arrivals), "duplicates_at_sink": sink.timed.duplicates,
                "send_window_s": round(last_sent - start, 2),
                "achieved_rate": round(len(accepted) / max(last_sent - start, 1e-9), 1),
                "delivery_rate": harness.ratio(len(arrivals), delivery_span),
                "e2e": harness.ms_stats([arrivals[i] - accepted[i].answered for i in arrivals]),
                "api": harness.ms_stats([s.answered - s.started for s in accepted.values()]),
                "send_lag": harness.ms_stats([max(0.0, s.started - s.scheduled) for s in sent]),
                "stages": _stage_latencies(db_url, sorted(accepted)),
                "last_arrival_after_last_202_s": round(last_arrival - last_sent, 2),
                "cpu": cpu, "relay_batch_size": "200 (default)", "api_workers": E2E_WORKERS,
                "worker_concurrency": E2E_WORKERS,
            }  # fmt: skip
            # Saturated: the pipeline fell behind, mail still arriving well after the load.
            late = result["last_arrival_after_last_202_s"] > 2.0
            result["saturated"] = len(arrivals) < len(accepted) or late
            print_e2e(result)
            passes.append(result)
    return passes


def print_summary(
    redis_runs: dict[str, float],
    medians: dict[str, dict[str, Any]],
    configs: dict[tuple[int, int], list[RelayRun]],
    e2e: list[dict[str, Any]],
    main_batch: int,
) -> dict[str, Any]:
    def median_of(prefix: str) -> float | None:
        return next((m["median"] for label, m in medians.items() if label.startswith(prefix)), None)

    baselines = {
        "vs_lpush": redis_runs.get("LPUSH c=50 (as -t lpush)"),
        "vs_lpush_p16": redis_runs.get("LPUSH c=50 -P 16"),
        "vs_lpush_c1": redis_runs.get("LPUSH c=1"),
        "vs_celery_send_task": median_of("Celery send_task"),
        "vs_publish_only": median_of("Publisher.publish"),
        "vs_sql_only": median_of("dispatch_round"),
    }
    ratios: dict[str, Any] = {}
    rows = []
    for (relays, batch), runs in configs.items():
        if not runs:
            continue
        rate = round(statistics.median(r.rate for r in runs), 1)
        median_run = sorted(runs, key=lambda r: r.rate)[(len(runs) - 1) // 2]
        row = {name: harness.ratio(rate, base) for name, base in baselines.items()}
        ratios[f"{relays}x{batch}"] = row | {"median_rate": rate, "rates": [r.rate for r in runs]}
        spread = f"{min(r.rate for r in runs):.0f}-{max(r.rate for r in runs):.0f}"
        cores = [median_run.cpu.get(k, 0) for k in ("relays", "pg_backends", "machine")]
        rows.append(
            [relays, batch, rate, spread, statistics.median(r.rate_with_startup for r in runs),
             *row.values(), *cores]
        )  # fmt: skip
    if rows:
        print(
            f"outbox -> Redis throughput, no worker (median of {len(runs)} runs; "
            "cores of the median run), and its ratios to the baselines:"
        )
        harness.print_table(
            [("relays", "d"), ("batch", "d"), ("|", ""), ("mails/s", ".1f"), ("(min-max)", ""),
             ("w/ start", ".1f"), ("|", ""), ("/LPUSH", ".3f"), ("/LPUSH P16", ".3f"),
             ("/LPUSH c1", ".3f"), ("/Celery", ".2f"), ("/publish", ".3f"), ("/SQL only", ".3f"),
             ("|", ""), ("relay", ".2f"), ("pg", ".2f"), ("box", ".2f")],
            rows,
        )  # fmt: skip
        main = {
            relays: ratios[f"{relays}x{batch}"]["median_rate"]
            for (relays, batch), runs in configs.items()
            if batch == main_batch and runs
        }
        if 1 in main and max(main) > 1:
            ratios["scaling"] = harness.ratio(main[max(main)], main[1])
            print(
                f"{max(main)} relays / 1 relay at batch {main_batch}: "
                f"{harness.fmt(ratios['scaling'], '.2f')}x"
            )
    if redis_runs or medians:
        print("\nbaselines (median of the repeated ones; all values in brackets):")
    for label, rps in redis_runs.items():
        print(f"  redis-benchmark {label:<30} {rps:>10.1f} req/s")
    for label, m in medians.items():
        values = ", ".join(f"{v:.0f}" for v in m["rates"])
        print(f"  {label:<46} {m['median']:>10.1f} /s   [{values}]")
    for result in e2e:
        lat = result["e2e"]
        print(
            f"\nend to end at {result['rate']:g} mails/s: p50 {lat['p50_ms']} ms, p99 "
            f"{lat['p99_ms']} ms, max {lat['max_ms']} ms; {result['arrived']}/"
            f"{result['accepted']} arrived; delivered at {harness.fmt(result['delivery_rate'])}/s"
            f"{' (saturated)' if result['saturated'] else ''}"
        )
    return ratios


def main() -> dict[str, Any]:
    parser = harness.arguments(__doc__.splitlines()[0])
    parser.add_argument("--mails", type=int, default=20000, help="outbox rows per relay run")
    parser.add_argument("--seconds", type=float, default=15.0, help="end-to-end load duration")
    parser.add_argument("--rates", default="200,auto", help="end-to-end mails/s, or 'auto'")
    parser.add_argument("--batch-sizes", default="500,200,1000", help="relay batch sizes")
    parser.add_argument("--relays", default="1,2", help="relay process counts")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each relay and baseline")
    parser.add_argument("--parts", default="baselines,relay,profile,e2e")
    args = parser.parse_args()
    batch_sizes, parts = harness.int_list(args.batch_sizes), args.parts.split(",")
    main_batch = batch_sizes[0]
    redis_runs: dict[str, float] = {}
    rate_runs: dict[str, list[RateResult]] = {}
    configs: dict[tuple[int, int], list[RelayRun]] = {
        (r, b): [] for b in batch_sizes for r in harness.int_list(args.relays)
    }
    profile_run: RelayRun | None = None
    e2e: list[dict[str, Any]] = []
    figures: dict[str, Any] = {"mails": args.mails, "repeat": args.repeat}

    with harness.bench(args) as bench:
        figures["postgres"] = bench.postgres
        figures["redis"] = str(bench.keys.client.info("server").get("redis_version"))
        filled = ""
        if {"baselines", "relay", "profile"} & set(parts):
            filled, filled_url = bench.dbs.clone()
            fill_seconds = harness.prefill(filled_url, bench.tenant, harness.ORDER_MAIL, args.mails)
            figures["prefill"] = {"mails": args.mails, "seconds": round(fill_seconds, 2)}
            print(
                f"pre-filled {args.mails} mails with accept_mails, {harness.FILL_CHUNK} per "
                f"transaction: {args.mails / fill_seconds:.0f} mails/s; then ANALYZE; every run "
                "below works on a fresh copy\n",
                flush=True,
            )
        if "baselines" in parts:
            redis_runs, rate_runs = baselines(bench, filled, args.mails, args.repeat, main_batch)
        for _ in range(args.repeat if "relay" in parts else 0):  # round-robin: noise hits all
            for (relays, batch), runs in configs.items():
                runs.append(relay_run(bench, filled, relays, batch, args.mails))
                print_relay_run(runs[-1])
        py_spy = harness.find_py_spy()
        if "profile" in parts and py_spy is None:
            print("profile: py-spy not found (pip install py-spy --target /tmp/pyspy)")
        elif "profile" in parts and py_spy:
            profile_run = relay_run(bench, filled, 1, main_batch, args.mails, py_spy=py_spy)
            print("\nprofiled run (py-spy record --subprocesses --idle, 200 Hz; not in the table)")
            print_relay_run(profile_run)
            harness.print_profile(profile_run.profile or {})
        if filled:
            bench.dbs.drop(filled)
        if "e2e" in parts:
            print()
            e2e = e2e_run(bench, args.rates.split(","), args.seconds)
    print()
    medians = {
        label: {
            "median": round(statistics.median(r.rate for r in runs), 1),
            "rates": [r.rate for r in runs],
            "count": runs[0].count,
            "detail": {k: v for k, v in runs[0].detail.items() if k != "plan"},
        }
        for label, runs in rate_runs.items()
    }
    ratios = print_summary(redis_runs, medians, configs, e2e, main_batch)
    return figures | {
        "redis_benchmark": redis_runs,
        "baselines": medians,
        "relay_runs": [asdict(r) for runs in configs.values() for r in runs],
        "profile": asdict(profile_run) if profile_run else None,
        "e2e": e2e,
        "ratios": ratios,
    }


if __name__ == "__main__":
    harness.run(main)
