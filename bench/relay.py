"""Relay throughput and end-to-end latency, beside Redis, Celery and SQL baselines.

Run as ``.venv/bin/python bench/relay.py [--mails 20000] [--rates 500] [--seconds 30]``.
Parts: ``baselines`` (Publisher alone, the relay's SQL alone, pure-SQL claim+delete,
redis-benchmark LPUSH, Celery send_task), ``relay`` (``outbox-relay run`` processes draining a
pre-filled outbox, median of ``--repeat``), ``profile`` (py-spy), ``e2e`` (API, relay and worker
as processes under an open-loop load of ``POST /v1/mails``, each of ``--rates`` for ``--seconds``:
latency from the 202 to SMTP receipt, exactly-once counts, CPU) and ``search`` (the same pipeline,
fresh, in steps of ``--search-rates`` for ``--search-seconds`` each: the highest rate whose p99
stays under one second).
"""

from __future__ import annotations

import contextlib
import json
import re
import statistics
import subprocess
import time
import uuid
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
from shared.queues import (
    CAMPAIGN_QUEUE,
    SEND_MAIL_TASK,
    TRANSACTIONAL_QUEUE,
    broker_transport_options,
)

# -----------------------------------------------------------------------------------------------

DRAIN_TIMEOUT = 60.0  # after the last request, at least this long the e2e waits for mail
RATE_KEPT = 0.95  # a pass whose API took, or that delivered, less of the asked rate fell behind
TARGET_P50_MS, TARGET_P99_MS = 50.0, 250.0  # issue 12, at 500 mails/s for 30 s
SEARCH_P99_LIMIT_MS = 1000.0
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
    """The relay's Publisher alone, a round of *batch_size* mails at a time in send_mails
    messages of the default size (mails/s); and the size of one message in Redis."""
    publisher = harness.publisher(keys)
    ids = [uuid.uuid4() for _ in range(count)]
    publisher.publish(harness.send_mails_messages(ids[:1], TRANSACTIONAL_QUEUE))  # connect first
    rounds = [
        harness.send_mails_messages(ids[offset : offset + batch_size], TRANSACTIONAL_QUEUE)
        for offset in range(0, count, batch_size)
    ]
    started = time.monotonic()
    for messages in rounds:
        publisher.publish(messages)
    result = timed_rate(f"Publisher.publish, rounds of {batch_size} mails", count, started)
    publisher.close()
    expected = 1 + sum(len(messages) for messages in rounds)
    result.detail = {"in_redis": keys.llen(TRANSACTIONAL_QUEUE), "expected_in_redis": expected}
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


def e2e_pass(
    bench: harness.Bench, running: harness.Pipeline, rate: float, seconds: float, label: str
) -> tuple[dict[str, Any], set[str]]:
    """*rate* x *seconds* POST /v1/mails in an open loop, then a bounded wait for every
    accepted mail at the sink; the figures and the accepted mail ids. CPU is metered from the
    first request to the last arrival."""
    count = max(1, round(rate * seconds))
    loop = harness.OpenLoop(running.port, bench.api_key, harness.ORDER_MAIL, rate, count=count)
    print(f"{label}: posting {count} mails at {rate:g}/s", flush=True)
    meter = harness.CpuMeter(running.cpu_groups(bench.keys)).start()
    metered_from = time.monotonic()
    sent = loop.start().wait()
    accepted = {s.mail_id: s for s in sent if s.mail_id}
    wait = max(DRAIN_TIMEOUT, count / 20)
    arrivals = running.sink.wait_for(set(accepted), wait, running.check_alive)
    cpu = meter.stop()
    cpu_seconds = time.monotonic() - metered_from
    last_202 = max((s.answered for s in accepted.values()), default=loop.start_at)
    last_arrival = max(arrivals.values(), default=last_202)
    first_arrival = min(arrivals.values(), default=last_202)
    delivery = running.sink.delivery(set(accepted))
    result: dict[str, Any] = {
        "label": label, "rate": rate, "seconds": seconds, "scheduled": count,
        **harness.post_stats(sent), "arrived": len(arrivals), "delivery": delivery,
        "e2e": harness.ms_stats([arrivals[i] - accepted[i].answered for i in arrivals]),
        "delivery_rate": harness.ratio(len(arrivals), last_arrival - first_arrival),
        "last_arrival_after_last_202_s": round(last_arrival - last_202, 2),
        "waited_for_arrivals_s": wait, "stages": _stage_latencies(running.db_url, sorted(accepted)),
        "cpu": cpu, "cpu_ms_per_mail": {
            group: round(cores * cpu_seconds * 1000 / max(len(accepted), 1), 2)
            for group, cores in cpu.items()
        },
    }  # fmt: skip
    problems = []
    if result["achieved_rate"] is None or result["achieved_rate"] < RATE_KEPT * rate:
        problems.append(f"the API took {result['achieved_rate']}/s of {rate:g}/s")
    if result["delivery_rate"] is not None and result["delivery_rate"] < RATE_KEPT * rate:
        problems.append(f"delivery fell behind: {result['delivery_rate']:.1f}/s of {rate:g}/s")
    if delivery["missing"]:
        problems.append(f"{delivery['missing']} mails missing after {wait:.0f} s")
    if delivery["duplicated"]:
        problems.append(f"{delivery['duplicated']} mails delivered more than once")
    result["problems"] = problems
    return result, set(accepted)


def print_e2e(result: dict[str, Any]) -> None:
    lat, api, lag, once = result["e2e"], result["api"], result["send_lag"], result["delivery"]
    print(
        f"[{result['label']} {result['rate']:g} mails/s for {result['seconds']:g} s] "
        f"API 202 -> SMTP receipt: p50 {lat['p50_ms']} ms, p95 {lat['p95_ms']} ms, "
        f"p99 {lat['p99_ms']} ms, max {lat['max_ms']} ms\n"
        f"{'':8}posted {result['posted']} ({result['outcomes']}) at "
        f"{harness.fmt(result['achieved_rate'])}/s; delivered exactly once "
        f"{once['delivered_once']} of {once['mails']}, missing {once['missing']}, duplicated "
        f"{once['duplicated']}; delivered at {harness.fmt(result['delivery_rate'])}/s, the last "
        f"{result['last_arrival_after_last_202_s']} s after the last 202\n"
        f"{'':8}API latency p50 {api['p50_ms']} ms, p99 {api['p99_ms']} ms; send lag behind "
        f"schedule p99 {lag['p99_ms']} ms, max {lag['max_ms']} ms"
    )
    for label, stats in result["stages"].items():
        print(
            f"{'':8}{label:<42} p50 {stats['p50_ms']:>8} ms  p99 {stats['p99_ms']:>8} ms  "
            f"max {stats['max_ms']:>8} ms  (n={stats['n']})"
        )
    print(f"{'':8}cores: {harness.cores_text(result['cpu'])}")
    per_mail = ", ".join(f"{k} {v:.2f}" for k, v in result["cpu_ms_per_mail"].items())
    print(f"{'':8}CPU ms per mail: {per_mail}")
    if result["problems"]:
        print(f"{'':8}PROBLEMS: {'; '.join(result['problems'])}")
    if "target" in result:
        print(f"{'':8}issue 12's target (exactly once, p50 < {TARGET_P50_MS:g} ms, p99 < "
              f"{TARGET_P99_MS:g} ms): {result['target']}")  # fmt: skip
    print(flush=True)


def target_verdict(result: dict[str, Any]) -> str:
    """Issue 12's end-to-end target for a sustained pass."""
    lat = result["e2e"]
    misses = list(result["problems"])
    if not lat["p50_ms"] < TARGET_P50_MS:
        misses.append(f"p50 {lat['p50_ms']} ms >= {TARGET_P50_MS:g}")
    if not lat["p99_ms"] < TARGET_P99_MS:
        misses.append(f"p99 {lat['p99_ms']} ms >= {TARGET_P99_MS:g}")
    return "met" if not misses else "NOT met: " + "; ".join(misses)


def e2e_sustained(
    bench: harness.Bench, rates: list[float], seconds: float, api_workers: int, concurrency: int
) -> list[dict[str, Any]]:
    """Each rate for *seconds* on one pipeline, one pass after the other."""
    passes: list[tuple[dict[str, Any], set[str]]] = []
    workers = {"worker": [f"--concurrency={concurrency}"]}
    with harness.pipeline(bench, "e2e", workers, api_workers) as running:
        for rate in rates:
            result, ids = e2e_pass(bench, running, rate, seconds, "e2e")
            result["target"] = target_verdict(result)
            print_e2e(result)
            passes.append((result, ids))
        for result, ids in passes:  # a duplicate may come after its pass: count again at the end
            result["delivery_at_end"] = running.sink.delivery(ids)
    return [result for result, _ in passes]


def e2e_search(
    bench: harness.Bench, rates: list[float], seconds: float, api_workers: int, concurrency: int
) -> dict[str, Any]:
    """Steps of rising rate, *seconds* each, each drained before the next; stops after the
    first step whose p99 is a second or more, or that the pipeline did not keep up with (the
    API or the delivery fell behind the rate, or mail still missing after the wait)."""
    steps: list[dict[str, Any]] = []
    best: float | None = None
    workers = {"worker": [f"--concurrency={concurrency}"]}
    with harness.pipeline(bench, "search", workers, api_workers) as running:
        for rate in rates:
            result, _ = e2e_pass(bench, running, rate, seconds, "search")
            if result["e2e"]["p99_ms"] >= SEARCH_P99_LIMIT_MS or not result["e2e"]["n"]:
                result["problems"].append(f"p99 {result['e2e']['p99_ms']} ms >= 1 s")
            print_e2e(result)
            steps.append(result)
            if result["problems"]:
                break
            best = rate
    failed = steps[-1] if steps and steps[-1]["problems"] else None
    line = (
        f"highest rate with p99 under 1 s (steps of {seconds:g} s): "
        + (f"{best:g} mails/s" if best is not None else f"below {rates[0]:g} mails/s")
        + (f"; at {failed['rate']:g}/s: {'; '.join(failed['problems'])}" if failed else
           "; no step failed (try higher --search-rates)")
    )  # fmt: skip
    print(line, flush=True)
    return {"highest_rate_p99_under_1s": best, "line": line, "steps": steps}


def print_summary(
    redis_runs: dict[str, float],
    medians: dict[str, dict[str, Any]],
    configs: dict[tuple[int, int], list[RelayRun]],
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
    return ratios


E2E_CPU_COLUMNS = (  # cpu group: column title
    ("api", "api"), ("relay", "relay"), ("worker", "worker"), ("pg_backends", "pg"),
    ("redis", "redis"), ("sink", "sink"), ("bench (load)", "load"), ("machine", "box"),
)  # fmt: skip


def print_e2e_summary(e2e: list[dict[str, Any]], search: dict[str, Any] | None) -> None:
    """One row per end-to-end pass: load, exactly-once counts, latency, cores per process."""
    rows = [
        [r["label"], r["rate"], r["achieved_rate"], r["delivery"]["delivered_once"],
         r["delivery"]["missing"], r.get("delivery_at_end", r["delivery"])["duplicated"],
         r["e2e"]["p50_ms"], r["e2e"]["p95_ms"], r["e2e"]["p99_ms"], r["e2e"]["max_ms"],
         r["delivery_rate"], *(r["cpu"].get(group) for group, _ in E2E_CPU_COLUMNS),
         "ok" if not r["problems"] else "NO"]
        for r in [*e2e, *(search["steps"] if search else [])]
    ]  # fmt: skip
    if not rows:
        return
    print(
        "\nend to end, API 202 -> SMTP receipt (ms); mails counted at the sink by Message-ID; "
        "cores from the first request to the last arrival"
    )
    harness.print_table(
        [("part", ""), ("mails/s", "g"), ("posted/s", ".1f"), ("|", ""), ("once", "d"),
         ("missing", "d"), ("dup", "d"), ("|", ""), ("p50", ".1f"), ("p95", ".1f"),
         ("p99", ".1f"), ("max", ".1f"), ("delivered/s", ".1f"), ("|", ""),
         *((title, ".2f") for _, title in E2E_CPU_COLUMNS), ("|", ""), ("kept up", "")],
        rows,
    )  # fmt: skip
    for result in e2e:
        print(f"e2e at {result['rate']:g}/s, issue 12's target: {result['target']}")
    if search:
        print(search["line"])


def main() -> dict[str, Any]:
    parser = harness.arguments(__doc__.splitlines()[0])
    parser.add_argument("--mails", type=int, default=20000, help="outbox rows per relay run")
    parser.add_argument("--rates", default="500", help="e2e: mails/s, each for --seconds")
    parser.add_argument("--seconds", type=float, default=30.0, help="e2e: seconds per rate")
    parser.add_argument(
        "--search-rates", default="200,400,600,800,1000,1200,1400,1600",
        help="search: rising mails/s, until p99 reaches one second",
    )  # fmt: skip
    parser.add_argument("--search-seconds", type=float, default=10.0, help="search: per step")
    parser.add_argument("--api-workers", type=int, default=2, help="e2e, search: gunicorn's")
    parser.add_argument(
        "--worker-concurrency", type=int, default=2, help="e2e, search: mail-worker's"
    )
    parser.add_argument("--batch-sizes", default="500,200,1000", help="relay batch sizes")
    parser.add_argument("--relays", default="1,2", help="relay process counts")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each relay and baseline")
    parser.add_argument("--parts", default="baselines,relay,profile,e2e,search")
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
    search: dict[str, Any] | None = None
    figures: dict[str, Any] = {"mails": args.mails, "repeat": args.repeat}
    processes = {"api_workers": args.api_workers, "worker_concurrency": args.worker_concurrency}

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
            rates = [float(r) for r in args.rates.split(",")]
            e2e = e2e_sustained(bench, rates, args.seconds, *processes.values())
        if "search" in parts:
            print()
            rates = [float(r) for r in args.search_rates.split(",")]
            search = e2e_search(bench, rates, args.search_seconds, *processes.values())
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
    ratios = print_summary(redis_runs, medians, configs, main_batch)
    print_e2e_summary(e2e, search)
    return figures | {
        "redis_benchmark": redis_runs,
        "baselines": medians,
        "relay_runs": [asdict(r) for runs in configs.values() for r in runs],
        "profile": asdict(profile_run) if profile_run else None,
        "e2e": e2e,
        "e2e_processes": processes,
        "search": search,
        "ratios": ratios,
    }


if __name__ == "__main__":
    harness.run(main)
