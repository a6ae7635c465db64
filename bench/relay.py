"""Relay throughput and end-to-end latency, beside Redis, Celery and SQL baselines.

Run as ``.venv/bin/python bench/relay.py [--mails 20000] [--seconds 15] [--rates 200,auto]``
(``--help`` lists the rest; ``--repeat 1 --batch-sizes 500`` for a quick run).

Everything happens in throw-away databases (``mailroom_bench_<hex>``, migrated and
given a tenant and key with the console scripts, then copied per run with CREATE
DATABASE ... TEMPLATE as ``mailroom_bench_<hex>_<n>``) and under a fresh Redis key
prefix (``mailroom-bench-<hex>:``); the databases are dropped and the keys under the
prefix deleted as soon as a run is done and again at the end, also on failure or
Ctrl-C. Nothing listens beyond 127.0.0.1 and every wait is bounded.

1. Pre-fill: N mails written with the API's own statement
   (``IngestTransaction.add_mails``, 1000 per transaction, built by the API's
   schema and ``new_mail``), then ANALYZE, into one database that every run below
   copies, so each starts from the same outbox.
2. Baselines: the relay's ``Publisher.publish`` alone (no database); the relay's
   ``dispatch_round`` with a publisher that publishes nothing (its SQL alone); the
   pure-SQL claim+delete ``WITH c AS (SELECT id FROM outbox ORDER BY available_at
   LIMIT 100 FOR UPDATE SKIP LOCKED) DELETE ...`` as given and with the relay's
   indexed predicate; ``redis-benchmark`` LPUSH (50 clients unpipelined and ``-P
   16`` as ``-t lpush`` does, but onto a key under our prefix instead of the shared
   ``mylist``; 1 client; 1 client ``-P 16`` with a payload the size of a relay
   message); and Celery's own ``send_task`` from this process for a few seconds.
3. Outbox-to-broker throughput: 1 or 2 ``outbox-relay run`` processes per batch
   size; the outbox is polled every 50 ms until every row has ``dispatch_count >
   0``. The rate is the rows left at the first poll that saw progress over the time
   from that poll to the last (start-up excluded; also shown included). No worker
   runs: the messages pile up in Redis, are counted, then deleted. Each
   configuration runs ``--repeat`` times, round-robin; the median is reported.
4. If py-spy is found, one more relay run under ``py-spy record --idle``,
   summarised by where the relay's wall time goes.
5. End-to-end latency: ``ingest-api serve``, ``outbox-relay run`` and ``mail-worker
   run`` as processes, an in-process SMTP sink (SmtpSink with a handler that stamps
   each arrival by its Message-ID) and an open-loop load of POST /v1/mails at a fixed
   rate from keep-alive connections; latency is SMTP receipt minus the client's
   receipt of the 202, with the stages in between from the mail_events timestamps.
   An ``auto`` rate is half of what the previous pass delivered, run only if that
   pass saturated the pipeline (so a latency without queueing is reported too).
6. A summary with ratios, the load average at the start, and the figures as JSON on
   the last line of stdout.

The machine's cores are shared: the CPU each process group used is reported, and
the ratios are only meaningful next to it.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import http.client
import itertools
import json
import os
import re
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, LiteralString
from urllib.parse import urlsplit

import psycopg
import redis
from common import (  # bench/common.py
    _console_script,
    _cores,
    _database_url,
    _fmt,
    _free_port,
    _int_list,
    _machine_ticks,
    _percentile,
    _proc_ticks,
    _process_tree,
    _raise_keyboard_interrupt,
    _run_cli,
)
from psycopg import sql
from psycopg.rows import dict_row

from ingest_api.accept import IngestTransaction, NewMail
from ingest_api.auth import Tenant
from ingest_api.new_mail import new_mail
from ingest_api.schemas.mail import SendMailSchema
from outbox_relay.dispatch import DispatchPolicy, dispatch_round
from outbox_relay.publish import Publisher, TaskMessage
from shared.config import Settings
from shared.db import connect
from shared.devstack.smtp_sink import SmtpSink, _Handler
from shared.queues import (
    CAMPAIGN_QUEUE,
    SEND_MAIL_TASK,
    TRANSACTIONAL_QUEUE,
    broker_transport_options,
)

DEFAULT_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
TENANT = "bench"
SENDER_DOMAIN = "example.com"
MESSAGE_ID_DOMAIN = "bench.test"
FILL_CHUNK = 1000
POLL_SECONDS = 0.05
CLK_TCK = os.sysconf("SC_CLK_TCK")
STOP_TIMEOUT = 20.0
REQUEST_TIMEOUT = 30.0
DRAIN_TIMEOUT = 90.0  # after the last request, at least this long the e2e waits for mail
WARMUP_MAILS = 10
PY_SPY_CANDIDATES = ("/tmp/pyspy/bin/py-spy",)  # where `pip install --target` puts it

CLAIM_DELETE_SQL: dict[str, LiteralString] = {
    # The statement as specified for this baseline: no predicate, ORDER BY available_at.
    "as given": "WITH c AS (SELECT id FROM outbox ORDER BY available_at LIMIT {limit} "
    "FOR UPDATE SKIP LOCKED) DELETE FROM outbox USING c WHERE outbox.id = c.id",
    # The relay's predicate, which the (queue, available_at) index serves in order.
    "indexed": "WITH c AS (SELECT id FROM outbox WHERE queue = 'transactional' "
    "AND available_at <= now() ORDER BY available_at LIMIT {limit} "
    "FOR UPDATE SKIP LOCKED) DELETE FROM outbox USING c WHERE outbox.id = c.id",
}

MAIL_BODY: dict[str, Any] = {
    "from": "Example Shop <shop@example.com>",
    "to": ["Bob Example <bob@example.net>"],
    "subject": "Your order #A-20931 has shipped",
    "text": (
        "Hello Bob,\n\nYour order #A-20931 has shipped and should arrive within three "
        "working days. Track it at https://shop.example.com/orders/A-20931/tracking\n\n"
        "Items: 1 x Walnut desk organiser, 2 x Linen notebook (A5, dotted)\n"
        "Total charged: EUR 54.80 to the card ending 4242.\n\n-- \nThe Example Shop team\n"
    ),
    "html": (
        '<!doctype html><html><body style="font-family:sans-serif"><p>Hello Bob,</p>'
        "<p>Your order <strong>#A-20931</strong> has shipped and should arrive within "
        'three working days. <a href="https://shop.example.com/orders/A-20931/tracking">'
        "Track your parcel</a></p><table><tr><td>1 &times; Walnut desk organiser</td>"
        "<td>EUR 32.90</td></tr><tr><td>2 &times; Linen notebook (A5, dotted)</td>"
        "<td>EUR 21.90</td></tr></table><p>The Example Shop team</p></body></html>"
    ),
}


# --------------------------------------------------------------------------- processes and CPU


class CpuMeter:
    """Cores used by named groups of processes between ``start()`` and ``stop()``."""

    def __init__(self, groups: dict[str, list[int]]) -> None:
        self.groups = groups
        self._before: dict[str, dict[int, int]] = {}
        self._machine: tuple[int, int] = (0, 0)
        self._wall = 0.0

    def start(self) -> None:
        self._before = {g: {p: _proc_ticks(p) for p in pids} for g, pids in self.groups.items()}
        self._machine = _machine_ticks()
        self._wall = time.monotonic()

    def stop(self) -> dict[str, float]:
        wall = max(time.monotonic() - self._wall, 1e-9)
        busy, total = _machine_ticks()
        cores = os.cpu_count() or 1
        used = {
            group: round(
                sum(_proc_ticks(p) - before for p, before in self._before[group].items())
                / CLK_TCK
                / wall,
                2,
            )
            for group in self.groups
        }
        used["machine"] = round(
            cores * (busy - self._machine[0]) / max(total - self._machine[1], 1), 2
        )
        return used


def _redis_server_pid(client: redis.Redis) -> int | None:
    """The redis-server's pid, if it runs on this machine in our pid namespace."""
    pid = int(client.info("server").get("process_id", 0))
    try:
        comm = Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return None
    return pid if comm.startswith("redis") else None


def _backend_pids(conn: psycopg.Connection[Any]) -> list[int]:
    """PostgreSQL backends of this database, but for the one asking."""
    rows = conn.execute(
        "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
        "AND pid <> pg_backend_pid()"
    ).fetchall()
    return [int(row[0]) for row in rows]


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


@contextlib.contextmanager
def service(name: str, argv: list[str], env: dict[str, str], log: Path) -> Iterator[int]:
    """A process in its own session, logging to *log*; SIGTERM, SIGKILL after a while."""
    with log.open("wb") as log_file:
        proc = subprocess.Popen(
            argv, env=env, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        yield proc.pid
        if proc.poll() is not None:
            raise RuntimeError(
                f"{name} exited early with {proc.returncode}; last lines of {log}:\n{_tail(log)}"
            )
    finally:
        if proc.poll() is None:
            children = _process_tree(proc.pid)[1:]
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                print(f"{name} did not stop in {STOP_TIMEOUT:.0f} s; SIGKILL", flush=True)
                for pid in [proc.pid, *children]:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                proc.wait()


def _check_alive(pids: dict[str, int], logs: dict[str, Path]) -> None:
    for name, pid in pids.items():
        try:
            os.kill(pid, 0)
            state = Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0]
        except (ProcessLookupError, OSError):
            state = "Z"
        if state == "Z":
            raise RuntimeError(f"{name} died; last lines of its log:\n{_tail(logs[name])}")


# --------------------------------------------------------------------------- databases and Redis


class Databases:
    """``mailroom_bench_<hex>`` (migrated once) and its clones; only these are dropped."""

    def __init__(self, admin_url: str) -> None:
        self.admin_url = admin_url
        self.base = f"mailroom_bench_{secrets.token_hex(6)}"
        self.created: list[str] = []
        self._clones = itertools.count(1)

    def _create(self, name: str, template: str | None) -> str:
        statement = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
        if template is not None:
            statement += sql.SQL(" TEMPLATE {}").format(sql.Identifier(template))
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            for attempt in range(40):  # autovacuum may be visiting the template
                try:
                    conn.execute(statement)
                    break
                except psycopg.errors.ObjectInUse:
                    if attempt == 39:
                        raise
                    time.sleep(0.25)
        self.created.append(name)
        return _database_url(self.admin_url, name)

    def create_base(self) -> str:
        url = self._create(self.base, None)
        print(f"created database {self.base}", flush=True)
        return url

    def clone(self, template: str | None = None) -> tuple[str, str]:
        """A copy of *template* (default: the migrated base), with a fresh name."""
        name = f"{self.base}_{next(self._clones)}"
        return name, self._create(name, template or self.base)

    def drop(self, name: str) -> None:
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )
        if name in self.created:
            self.created.remove(name)

    def drop_all(self) -> None:
        names = list(reversed(self.created))
        for name in names:
            self.drop(name)
        if names:
            print(f"dropped databases {', '.join(names)}", flush=True)


@contextlib.contextmanager
def databases(admin_url: str) -> Iterator[Databases]:
    dbs = Databases(admin_url)
    try:
        yield dbs
    finally:
        dbs.drop_all()


class RedisKeys:
    """Keys under one fresh prefix of a shared Redis; only those are ever deleted."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.prefix = f"mailroom-bench-{secrets.token_hex(6)}:"
        self.client = redis.Redis.from_url(url)

    def llen(self, key: str) -> int:
        return int(self.client.llen(self.prefix + key))

    def delete(self) -> int:
        mine = self.prefix.encode()
        deleted = 0
        batch: list[bytes] = []
        for key in self.client.scan_iter(match=self.prefix + "*", count=1000):
            if not key.startswith(mine):
                continue
            batch.append(key)
            if len(batch) == 500:
                deleted += int(self.client.unlink(*batch))
                batch = []
        if batch:
            deleted += int(self.client.unlink(*batch))
        return deleted


@contextlib.contextmanager
def redis_keys(url: str) -> Iterator[RedisKeys]:
    keys = RedisKeys(url)
    keys.client.ping()
    try:
        yield keys
    finally:
        print(f"deleted {keys.delete()} Redis keys under {keys.prefix}", flush=True)
        keys.client.close()


# --------------------------------------------------------------------------- pre-filling the outbox


def template_mail(tenant: Tenant) -> NewMail:
    """A mail built by the API's own schema and new_mail, from MAIL_BODY."""
    return new_mail(SendMailSchema().load(MAIL_BODY), tenant)


def prefill(db_url: str, tenant: Tenant, count: int) -> float:
    """*count* mails through the API's ingest statement, FILL_CHUNK per transaction."""
    template = template_mail(tenant)
    started = time.monotonic()
    with psycopg.connect(db_url, autocommit=True, row_factory=dict_row) as conn:
        for offset in range(0, count, FILL_CHUNK):
            mails = [
                dataclasses.replace(template, id=uuid.uuid4())
                for _ in range(min(FILL_CHUNK, count - offset))
            ]
            with conn.transaction():
                IngestTransaction(conn, tenant.id, "bench-relay-prefill", None).add_mails(mails)
        elapsed = time.monotonic() - started
        conn.execute("ANALYZE")
    return elapsed


# --------------------------------------------------------------------------- baselines


@dataclass
class RedisBench:
    label: str
    clients: int
    pipeline: int
    requests: int
    payload_bytes: int
    rps: float


def redis_benchmark(
    keys: RedisKeys, label: str, clients: int, pipeline: int, requests: int, payload: str
) -> RedisBench:
    """``redis-benchmark`` LPUSH onto a key under our prefix (deleted afterwards)."""
    parts = urlsplit(keys.url)
    key = keys.prefix + "redis-benchmark"
    argv = ["redis-benchmark", "-h", parts.hostname or "127.0.0.1", "-p", str(parts.port or 6379)]
    database = (parts.path or "/0").lstrip("/") or "0"
    argv += ["--dbnum", database, "-q", "-n", str(requests), "-c", str(clients)]
    argv += ["-P", str(pipeline), "LPUSH", key, payload]
    done = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=300)
    keys.client.unlink(key)
    found = re.findall(r"([\d.]+) requests per second", done.stdout)
    if done.returncode != 0 or not found:
        output = done.stdout + done.stderr
        raise RuntimeError(f"redis-benchmark failed ({done.returncode}):\n{output}")
    return RedisBench(label, clients, pipeline, requests, len(payload), float(found[-1]))


@dataclass
class RateResult:
    label: str
    count: int
    seconds: float
    rate: float
    detail: dict[str, Any] = field(default_factory=dict)


def celery_send_task(keys: RedisKeys, seconds: float) -> RateResult:
    """Celery's own send_task from this process, for *seconds*, into our prefix."""
    from celery import Celery  # noqa: PLC0415 - only this baseline needs it

    queue = "celery-send-task-baseline"
    app = Celery("mailroom-bench-relay", broker=keys.url)
    app.conf.update(
        broker_transport_options=broker_transport_options(keys.url, keys.prefix),
        broker_connection_retry_on_startup=True,
        task_ignore_result=True,
        task_serializer="json",
        accept_content=["json"],
    )
    for _ in range(20):  # connect and declare before the clock starts
        app.send_task(SEND_MAIL_TASK, args=[str(uuid.uuid4())], queue=queue)
    sent = 0
    started = time.monotonic()
    deadline = started + seconds
    while time.monotonic() < deadline:
        app.send_task(SEND_MAIL_TASK, args=[str(uuid.uuid4())], queue=queue)
        sent += 1
    elapsed = time.monotonic() - started
    queued = keys.llen(queue)
    app.close()
    return RateResult(
        "Celery send_task", sent, round(elapsed, 3), round(sent / elapsed, 1),
        {"in_redis": queued, "expected_in_redis": sent + 20},
    )  # fmt: skip


def publish_only(keys: RedisKeys, count: int, batch_size: int) -> tuple[RateResult, bytes]:
    """The relay's Publisher alone: *count* messages in batches, no database."""
    settings = Settings(broker_url=keys.url, broker_key_prefix=keys.prefix)
    publisher = Publisher(settings)
    messages = [TaskMessage.send_mail(uuid.uuid4(), TRANSACTIONAL_QUEUE) for _ in range(count)]
    publisher.publish(messages[:1])  # connect before the clock starts
    started = time.monotonic()
    for offset in range(0, count, batch_size):
        publisher.publish(messages[offset : offset + batch_size])
    elapsed = time.monotonic() - started
    publisher.close()
    queued = keys.llen(TRANSACTIONAL_QUEUE)
    first = keys.client.lindex(keys.prefix + TRANSACTIONAL_QUEUE, 0)
    sample = first if isinstance(first, bytes) else str(first or "").encode()
    keys.delete()
    result = RateResult(
        f"Publisher.publish, batches of {batch_size}", count, round(elapsed, 3),
        round(count / elapsed, 1), {"in_redis": queued, "expected_in_redis": count + 1},
    )  # fmt: skip
    return result, sample


class _NullPublisher(Publisher):
    """Takes every message and sends none: dispatch_round's SQL alone."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self.taken = 0

    def publish(self, messages: Sequence[TaskMessage]) -> None:
        self.taken += len(messages)


def sql_only_rounds(db_url: str, count: int, batch_size: int) -> RateResult:
    """dispatch_round (claim, lease, events) with a null publisher, until nothing is due."""
    policy = DispatchPolicy(batch_size=batch_size, visibility_timeout=60.0)
    publisher = _NullPublisher(Settings(broker_url=DEFAULT_REDIS_URL))
    rounds = 0
    with connect(db_url) as conn:
        started = time.monotonic()
        for _ in range(count // batch_size + 10):  # bounded
            rounds += 1
            if dispatch_round(conn, publisher, policy).claimed == 0:
                break
        elapsed = time.monotonic() - started
    return RateResult(
        f"dispatch_round, null publisher, batch {batch_size}", publisher.taken,
        round(elapsed, 3), round(publisher.taken / elapsed, 1), {"rounds": rounds},
    )  # fmt: skip


def sql_claim_delete(db_url: str, variant: str, limit: int, count: int) -> RateResult:
    """The pure-SQL claim+delete, one autocommit statement at a time, until empty."""
    statement = sql.SQL(CLAIM_DELETE_SQL[variant]).format(limit=sql.Literal(limit))
    deleted = statements = 0
    with psycopg.connect(db_url, autocommit=True) as conn:
        explain = conn.execute(sql.SQL("EXPLAIN ") + statement).fetchall()
        plan = "\n".join(str(row[0]) for row in explain)
        started = time.monotonic()
        for _ in range(count // limit + 10):  # bounded
            statements += 1
            rows = conn.execute(statement).rowcount
            deleted += rows
            if rows == 0:
                break
        elapsed = time.monotonic() - started
    return RateResult(
        f"SQL claim+delete LIMIT {limit} ({variant})", deleted, round(elapsed, 3),
        round(deleted / elapsed, 1), {"statements": statements, "plan": plan},
    )  # fmt: skip


# --------------------------------------------------------------------------- relay throughput


@dataclass
class RelayRun:
    relays: int
    batch_size: int
    mails: int
    startup_seconds: float  # spawn -> first dispatched row seen
    seconds: float  # first dispatched row seen -> all dispatched
    rate: float  # rows still undispatched at the first poll that saw progress / seconds
    rate_with_startup: float  # mails / (spawn -> all dispatched)
    poll_ms: float  # mean duration of the 50 ms poll's count(*) query
    rounds: int
    mean_round_size: float
    cpu: dict[str, float]
    in_redis: int
    queued_events: int
    published_twice: int  # outbox rows with dispatch_count > 1 (none expected)
    profile: dict[str, Any] | None = None


def _relay_env(base: dict[str, str], db_url: str, keys: RedisKeys, batch: int) -> dict[str, str]:
    return base | {
        "MAILROOM_DATABASE_URL": db_url,
        "MAILROOM_BROKER_URL": keys.url,
        "MAILROOM_BROKER_KEY_PREFIX": keys.prefix,
        "MAILROOM_RELAY_BATCH_SIZE": str(batch),
        "MAILROOM_RELAY_METRICS_PORT": "0",
        "MAILROOM_CANARY_INTERVAL": "3600",
    }


def _rounds_in_logs(logs: Sequence[Path]) -> tuple[int, int]:
    """(rounds, mails) from the relays' 'published' log lines."""
    rounds = mails = 0
    for log in logs:
        for line in log.read_text(errors="replace").splitlines():
            with contextlib.suppress(ValueError):
                entry = json.loads(line)
                if isinstance(entry, dict) and entry.get("message") == "published":
                    rounds += 1
                    mails += int(entry.get("count", 0))
    return rounds, mails


def relay_run(
    dbs: Databases,
    filled: str,
    keys: RedisKeys,
    base_env: dict[str, str],
    workdir: Path,
    *,
    relays: int,
    batch_size: int,
    mails: int,
    py_spy: str | None = None,
) -> RelayRun:
    """*relays* ``outbox-relay run`` processes over a copy of the pre-filled database."""
    name, db_url = dbs.clone(filled)
    try:
        keys.delete()
        env = _relay_env(base_env, db_url, keys, batch_size)
        tag = f"{name.rsplit('_', 1)[1]}-{relays}x{batch_size}{'-profile' if py_spy else ''}"
        logs = {f"relay {i}": workdir / f"relay-{tag}-{i}.log" for i in range(relays)}
        timeout = max(120.0, mails / 20)
        with contextlib.ExitStack() as stack, psycopg.connect(db_url, autocommit=True) as conn:
            spawned = time.monotonic()
            pids = {
                label: stack.enter_context(
                    service(label, [_console_script("outbox-relay"), "run"], env, log)
                )
                for label, log in logs.items()
            }
            redis_pid = _redis_server_pid(keys.client)
            first: tuple[float, int] | None = None
            meter: CpuMeter | None = None
            spy: subprocess.Popen[bytes] | None = None
            profile_path = workdir / f"relay-{tag}.pyspy.txt"
            polls: list[float] = []
            while True:
                asked = time.monotonic()
                polled = conn.execute(
                    "SELECT count(*) FILTER (WHERE dispatch_count = 0) FROM outbox"
                ).fetchone()
                now = time.monotonic()
                polls.append(now - asked)
                assert polled is not None
                remaining = int(polled[0])
                if first is None and remaining < mails:
                    first = (now, remaining)
                    groups = {"relays": list(pids.values()), "pg_backends": _backend_pids(conn)}
                    if redis_pid is not None:
                        groups["redis"] = [redis_pid]
                    meter = CpuMeter(groups)
                    meter.start()
                    if py_spy:
                        spy = _start_py_spy(py_spy, pids["relay 0"], profile_path)
                if remaining == 0:
                    done = now
                    break
                if now - spawned > timeout:
                    raise RuntimeError(
                        f"relay run {tag}: {remaining} of {mails} rows still undispatched after "
                        f"{timeout:.0f} s; last lines of a relay log:\n{_tail(logs['relay 0'])}"
                    )
                _check_alive(pids, logs)
                time.sleep(POLL_SECONDS)
            assert first is not None and meter is not None
            cpu = meter.stop()
            profile = _stop_py_spy(spy, profile_path) if spy is not None else None
        # Leaving the stack stopped the relays (SIGTERM finishes the round in progress).
        in_redis = keys.llen(TRANSACTIONAL_QUEUE) + keys.llen(CAMPAIGN_QUEUE)
        keys.delete()
        with psycopg.connect(db_url, autocommit=True) as conn:
            row = conn.execute(
                "SELECT (SELECT count(*) FROM mail_events WHERE kind = 'queued'),"
                " (SELECT count(*) FROM outbox WHERE dispatch_count > 1)"
            ).fetchone()
        assert row is not None
        rounds, published = _rounds_in_logs(list(logs.values()))
        seconds = done - first[0]
        return RelayRun(
            relays=relays,
            batch_size=batch_size,
            mails=mails,
            startup_seconds=round(first[0] - spawned, 3),
            seconds=round(seconds, 3),
            rate=round(first[1] / seconds, 1) if seconds > 0 else 0.0,
            rate_with_startup=round(mails / (done - spawned), 1),
            poll_ms=round(1000 * sum(polls) / len(polls), 2),
            rounds=rounds,
            mean_round_size=round(published / rounds, 1) if rounds else 0.0,
            cpu=cpu,
            in_redis=in_redis,
            queued_events=int(row[0]),
            published_twice=int(row[1]),
            profile=profile,
        )
    finally:
        dbs.drop(name)


@dataclass
class RelayConfig:
    """The repeated runs of one (relays, batch size) pair."""

    relays: int
    batch_size: int
    runs: list[RelayRun] = field(default_factory=list)

    @property
    def median_run(self) -> RelayRun:
        return sorted(self.runs, key=lambda r: r.rate)[(len(self.runs) - 1) // 2]

    @property
    def rate(self) -> float:
        return round(statistics.median(r.rate for r in self.runs), 1)

    @property
    def rate_with_startup(self) -> float:
        return round(statistics.median(r.rate_with_startup for r in self.runs), 1)

    def summary(self) -> dict[str, Any]:
        return {
            "relays": self.relays,
            "batch_size": self.batch_size,
            "median_rate": self.rate,
            "rates": [r.rate for r in self.runs],
            "median_rate_with_startup": self.rate_with_startup,
            "cpu_of_median_run": self.median_run.cpu,
        }


# --------------------------------------------------------------------------- py-spy


def _find_py_spy(option: str | None) -> str | None:
    if option == "none":
        return None
    if option:
        return option
    found = shutil.which("py-spy")
    if found:
        return found
    return next((c for c in PY_SPY_CANDIDATES if Path(c).exists()), None)


def _start_py_spy(py_spy: str, pid: int, output: Path) -> subprocess.Popen[bytes]:
    argv = [py_spy, "record", "--pid", str(pid), "--idle", "--rate", "200"]
    argv += ["--format", "raw", "--output", str(output), "--nonblocking"]
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


_FRAME = re.compile(r"^(?P<name>.*) \((?P<path>[^()]*?)(?::(?P<line>\d+))?\)$")

# Buckets of the relay's wall time: a stack counts for the first bucket one of whose
# markers appears in any of its frames.
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


def _short(path: str) -> str:
    for marker in ("site-packages/", "/work/main/"):
        if marker in path:
            return path.split(marker, 1)[1]
    return path


def _stop_py_spy(spy: subprocess.Popen[bytes], output: Path) -> dict[str, Any]:
    """Stop py-spy (SIGINT makes it write its output) and summarise the stacks."""
    spy.send_signal(signal.SIGINT)
    try:
        _, stderr = spy.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        spy.kill()
        _, stderr = spy.communicate()
    if not output.exists():
        return {"error": f"py-spy wrote nothing: {stderr.decode(errors='replace')[-500:]}"}
    return summarise_profile(output.read_text())


def summarise_profile(text: str) -> dict[str, Any]:
    buckets: Counter[str] = Counter()
    leaves: Counter[str] = Counter()
    total = 0
    for line in text.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        frames = []
        for raw in stack.split(";"):
            match = _FRAME.match(raw)
            frames.append(f"{match['name']} ({_short(match['path'])})" if match else raw)
        leaves[frames[-1]] += count
        for bucket, markers in PROFILE_BUCKETS:
            if any(marker in frame for frame in frames for marker in markers):
                buckets[bucket] += count
                break
        else:
            buckets["other"] += count
    share = {name: round(n / total, 3) for name, n in buckets.most_common()} if total else {}
    top = [(name, round(n / total, 3)) for name, n in leaves.most_common(12)] if total else []
    return {"samples": total, "buckets": share, "top_leaf_frames": top}


# --------------------------------------------------------------------------- end-to-end latency


_MESSAGE_ID = re.compile(rb"^Message-ID:[ \t]*<([^@>\s]+)@", re.IGNORECASE | re.MULTILINE)


class _TimedHandler(_Handler):
    """The sink's handler, stamping each arrival (monotonic clock) by its Message-ID."""

    def __init__(self) -> None:
        super().__init__(None)
        self.arrivals: dict[str, float] = {}
        self.duplicates = 0
        self.unknown = 0

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        now = time.monotonic()
        head = bytes(envelope.content).split(b"\r\n\r\n", 1)[0]
        match = _MESSAGE_ID.search(head)
        with self.lock:
            if match is None:
                self.unknown += 1
            elif match.group(1).decode() in self.arrivals:
                self.duplicates += 1
            else:
                self.arrivals[match.group(1).decode()] = now
        return await super().handle_DATA(server, session, envelope)

    def count(self, ids: set[str]) -> int:
        with self.lock:
            return sum(1 for mail_id in ids if mail_id in self.arrivals)


class TimedSink(SmtpSink):
    def __init__(self) -> None:
        super().__init__("127.0.0.1")
        self.timed = _TimedHandler()
        self._handler = self.timed
        self._controller.handler = self.timed  # the handler the server is built with


@dataclass
class Sent:
    scheduled: float
    started: float
    answered: float
    outcome: str
    mail_id: str | None


def _post_mail(
    conn: http.client.HTTPConnection, body: bytes, headers: dict[str, str]
) -> tuple[str, str | None]:
    try:
        conn.request("POST", "/v1/mails", body=body, headers=headers)
        response = conn.getresponse()
        data = response.read()
        if response.will_close:
            conn.close()
    except (OSError, http.client.HTTPException) as exc:
        conn.close()
        return type(exc).__name__, None
    if response.status != 202:
        return str(response.status), None
    try:
        return "202", str(json.loads(data)["id"])
    except (ValueError, KeyError, TypeError):
        return "bad-body", None


def open_loop(
    port: int, key: str, rate: float, count: int, threads: int
) -> tuple[list[Sent], float]:
    """*count* POSTs, the i-th at start + i/rate, from *threads* keep-alive connections."""
    body = json.dumps(MAIL_BODY).encode()
    headers = {
        "Authorization": f"Bearer {key}",
        "Content-Type": "application/json",
        "Content-Length": str(len(body)),
    }
    counter = itertools.count()
    lock = threading.Lock()
    results: list[Sent] = []
    start = time.monotonic() + 0.2

    def client() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=REQUEST_TIMEOUT)
        try:
            while True:
                with lock:
                    index = next(counter)
                if index >= count:
                    return
                scheduled = start + index / rate
                delay = scheduled - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                started = time.monotonic()
                outcome, mail_id = _post_mail(conn, body, headers)
                results.append(Sent(scheduled, started, time.monotonic(), outcome, mail_id))
        finally:
            conn.close()

    workers = [threading.Thread(target=client, daemon=True) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=count / rate + REQUEST_TIMEOUT + 30)
    return results, start


def _wait_ready(port: int, pid: int, log: Path, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        _check_alive({"ingest-api": pid}, {"ingest-api": log})
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
        try:
            conn.request("GET", "/readyz")
            response = conn.getresponse()
            response.read()
            if response.status == 200:
                return
        except (OSError, http.client.HTTPException):
            pass
        finally:
            conn.close()
        time.sleep(0.2)
    raise RuntimeError(f"ingest-api was not ready within {timeout:.0f} s:\n{_tail(log)}")


def _ms_stats(values: Sequence[float]) -> dict[str, float | int]:
    ordered = sorted(values)
    return {
        "n": len(ordered),
        "p50_ms": round(_percentile(ordered, 0.50) * 1000, 1),
        "p99_ms": round(_percentile(ordered, 0.99) * 1000, 1),
        "max_ms": round((ordered[-1] if ordered else float("nan")) * 1000, 1),
    }


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
        label: _ms_stats([e[b] - e[a] for e in events.values() if a in e and b in e])
        for label, a, b in stages
    }


def e2e_pass(
    sink: TimedSink,
    port: int,
    key: str,
    db_url: str,
    groups: dict[str, list[int]],
    pids: dict[str, int],
    logs: dict[str, Path],
    *,
    rate: float,
    seconds: float,
) -> dict[str, Any]:
    """One open-loop load at *rate*, then wait (bounded) until every accepted mail arrived."""
    count = max(1, round(rate * seconds))
    threads = max(16, round(rate / 10))
    print(
        f"e2e: sending {count} mails at {rate:g}/s from {threads} keep-alive connections",
        flush=True,
    )
    meter = CpuMeter(groups)
    meter.start()
    sent, start = open_loop(port, key, rate, count, threads)
    last_sent = max((s.answered for s in sent), default=start)
    accepted = {s.mail_id: s for s in sent if s.mail_id}
    ids = set(accepted)
    deadline = time.monotonic() + max(DRAIN_TIMEOUT, count / 20)
    while sink.timed.count(ids) < len(ids) and time.monotonic() < deadline:
        _check_alive(pids, logs)
        time.sleep(0.05)
    cpu = meter.stop()
    with sink.timed.lock:
        arrivals = {i: sink.timed.arrivals[i] for i in ids if i in sink.timed.arrivals}
    latencies = [arrivals[i] - accepted[i].answered for i in arrivals]
    last_arrival = max(arrivals.values(), default=last_sent)
    first_arrival = min(arrivals.values(), default=start)
    delivery_span = last_arrival - first_arrival
    return {
        "rate": rate,
        "seconds": seconds,
        "scheduled": count,
        "sent": len(sent),
        "outcomes": dict(Counter(s.outcome for s in sent)),
        "accepted": len(ids),
        "arrived": len(arrivals),
        "duplicates_at_sink": sink.timed.duplicates,
        "send_window_s": round(last_sent - start, 2),
        "achieved_rate": round(len(ids) / max(last_sent - start, 1e-9), 1),
        "delivery_rate": round(len(arrivals) / delivery_span, 1) if delivery_span > 0 else None,
        "e2e": _ms_stats(latencies),
        "api": _ms_stats([s.answered - s.started for s in sent if s.mail_id]),
        "send_lag": _ms_stats([max(0.0, s.started - s.scheduled) for s in sent]),
        "stages": _stage_latencies(db_url, sorted(ids)),
        "last_arrival_after_last_202_s": round(last_arrival - last_sent, 2),
        "cpu": cpu,
    }


def e2e_run(
    dbs: Databases,
    keys: RedisKeys,
    key: str,
    base_env: dict[str, str],
    workdir: Path,
    *,
    rates: list[str],
    seconds: float,
    api_workers: int,
    worker_concurrency: int,
) -> list[dict[str, Any]]:
    """The whole pipeline as processes; one load pass per rate ('auto': half of what the
    previous pass delivered, run only if that pass saturated the pipeline)."""
    name, db_url = dbs.clone()
    sink = TimedSink()
    sink.start()
    passes: list[dict[str, Any]] = []
    try:
        keys.delete()
        port = _free_port()
        (workdir / "metrics").mkdir(exist_ok=True)
        env = base_env | {
            "MAILROOM_DATABASE_URL": db_url,
            "MAILROOM_BROKER_URL": keys.url,
            "MAILROOM_BROKER_KEY_PREFIX": keys.prefix,
            "MAILROOM_SMTP_URL": sink.url,
            "MAILROOM_MESSAGE_ID_DOMAIN": MESSAGE_ID_DOMAIN,
            "MAILROOM_RELAY_METRICS_PORT": "0",
            "MAILROOM_CANARY_INTERVAL": "3600",
            "PROMETHEUS_MULTIPROC_DIR": str(workdir / "metrics"),
        }
        logs = {n: workdir / f"e2e-{n}.log" for n in ("ingest-api", "relay", "worker")}
        with contextlib.ExitStack() as stack:
            pids = {
                "ingest-api": stack.enter_context(
                    service(
                        "ingest-api",
                        [_console_script("ingest-api"), "serve", "--bind", f"127.0.0.1:{port}",
                         "--workers", str(api_workers)],
                        env, logs["ingest-api"],
                    )
                ),
                "relay": stack.enter_context(
                    service("relay", [_console_script("outbox-relay"), "run"], env, logs["relay"])
                ),
                "worker": stack.enter_context(
                    service(
                        "worker",
                        [_console_script("mail-worker"), "run",
                         f"--concurrency={worker_concurrency}"],
                        env, logs["worker"],
                    )
                ),
            }  # fmt: skip
            _wait_ready(port, pids["ingest-api"], logs["ingest-api"])
            # Warm-up: every process connected, the worker's SMTP connection open.
            warm, _ = open_loop(port, key, 20.0, WARMUP_MAILS, 2)
            warm_ids = {s.mail_id for s in warm if s.mail_id}
            deadline = time.monotonic() + 120
            while sink.timed.count(warm_ids) < len(warm_ids):
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"warm-up: {sink.timed.count(warm_ids)} of {len(warm_ids)} mails "
                        f"arrived in 120 s; worker log:\n{_tail(logs['worker'])}"
                    )
                _check_alive(pids, logs)
                time.sleep(0.1)
            print(f"e2e: warm-up done ({len(warm_ids)} mails arrived)", flush=True)
            with psycopg.connect(db_url, autocommit=True) as conn:
                backends = _backend_pids(conn)
            groups = {
                "api": _process_tree(pids["ingest-api"]),
                "relay": [pids["relay"]],
                "worker": _process_tree(pids["worker"]),
                "pg_backends": backends,
            }
            redis_pid = _redis_server_pid(keys.client)
            if redis_pid is not None:
                groups["redis"] = [redis_pid]
            groups["bench (load + sink)"] = [os.getpid()]
            for spec in rates:
                if spec == "auto":
                    previous = passes[-1] if passes else None
                    if previous is None or not _saturated(previous):
                        print("e2e: no 'auto' pass: the previous pass did not saturate")
                        continue
                    rate = float(max(5, round(0.5 * (previous["delivery_rate"] or 10))))
                else:
                    rate = float(spec)
                result = e2e_pass(
                    sink, port, key, db_url, groups, pids, logs, rate=rate, seconds=seconds
                )
                result |= {
                    "relay_batch_size": "200 (default)",
                    "api_workers": api_workers,
                    "worker_concurrency": worker_concurrency,
                    "saturated": _saturated(result),
                }
                passes.append(result)
                _print_e2e(result)
        return passes
    finally:
        sink.stop()
        keys.delete()
        dbs.drop(name)


def _saturated(result: dict[str, Any]) -> bool:
    """The pipeline fell behind: mail still arriving well after the load stopped."""
    return bool(
        result["arrived"] < result["accepted"] or result["last_arrival_after_last_202_s"] > 2.0
    )


# --------------------------------------------------------------------------- main


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--mails", type=int, default=20000, help="outbox rows per relay run")
    parser.add_argument("--seconds", type=float, default=15.0, help="end-to-end load duration")
    parser.add_argument(
        "--rates",
        default="200,auto",
        help="end-to-end mails per second, one pass each; 'auto' is half of what the "
        "previous pass delivered, run only if it saturated the pipeline",
    )
    parser.add_argument(
        "--batch-sizes", default="500,200,1000", help="MAILROOM_RELAY_BATCH_SIZE values to run"
    )
    parser.add_argument("--relays", default="1,2", help="relay process counts to run")
    parser.add_argument(
        "--repeat", type=int, default=3, help="runs of each relay configuration and baseline"
    )
    parser.add_argument("--celery-seconds", type=float, default=5.0)
    parser.add_argument(
        "--sql-limit", type=int, default=100, help="LIMIT of the pure-SQL claim+delete"
    )
    parser.add_argument("--parts", default="baselines,relay,profile,e2e", help="which parts to run")
    parser.add_argument(
        "--py-spy", help="py-spy binary for the profile run ('none' to skip; default: search)"
    )
    parser.add_argument("--api-workers", type=int, default=2)
    parser.add_argument("--worker-concurrency", type=int, default=2)
    parser.add_argument(
        "--admin-url",
        default=os.environ.get("MAILROOM_TEST_DATABASE_URL") or DEFAULT_ADMIN_URL,
        help="a database URL allowed to CREATE/DROP DATABASE (env MAILROOM_TEST_DATABASE_URL)",
    )
    parser.add_argument(
        "--redis-url",
        default=os.environ.get("MAILROOM_TEST_REDIS_URL") or DEFAULT_REDIS_URL,
        help="Redis (env MAILROOM_TEST_REDIS_URL); written only under a fresh key prefix",
    )
    parser.add_argument("--keep-logs", type=Path, help="copy the process logs to this folder")
    args = parser.parse_args(argv)
    args.batch_list = _int_list(args.batch_sizes)
    args.relay_list = _int_list(args.relays)
    args.part_set = {p.strip() for p in args.parts.split(",") if p.strip()}
    args.rate_list = [r.strip() for r in args.rates.split(",") if r.strip()]
    try:
        fixed = [float(r) for r in args.rate_list if r != "auto"]
    except ValueError:
        parser.error("--rates: numbers or 'auto'")
    if not args.batch_list or not args.relay_list or args.mails < 1 or args.repeat < 1:
        parser.error("--batch-sizes, --relays, --mails and --repeat must be positive")
    if min(args.batch_list + args.relay_list) < 1 or any(r <= 0 for r in fixed):
        parser.error("batch sizes, relay counts and rates must be positive")
    return args


def _ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or not denominator:
        return None
    return round(numerator / denominator, 3)


def _print_relay_run(run: RelayRun) -> None:
    print(
        f"[relay {run.relays} x batch {run.batch_size:>4}] {run.rate:8.1f} mails/s in "
        f"{run.seconds:.2f} s after the first dispatch ({run.rate_with_startup:.0f}/s with "
        f"{run.startup_seconds:.2f} s start-up); {run.rounds} rounds of "
        f"{run.mean_round_size:.0f}; {run.in_redis} in Redis, {run.queued_events} queued, "
        f"{run.published_twice} twice; poll {run.poll_ms} ms\n"
        f"{'':27}cores: {_cores(run.cpu)}",
        flush=True,
    )


def _print_profile(profile: dict[str, Any] | None) -> None:
    if not profile:
        return
    if "error" in profile:
        print(f"  profile: {profile['error']}")
        return
    print(f"  where the relay's wall time goes ({profile['samples']} samples, idle included):")
    for name, share in profile["buckets"].items():
        print(f"    {share * 100:5.1f} %  {name}")
    print("  innermost frames:")
    for name, share in profile["top_leaf_frames"]:
        print(f"    {share * 100:5.1f} %  {name}")


def _print_e2e(e2e: dict[str, Any]) -> None:
    lat, api, lag = e2e["e2e"], e2e["api"], e2e["send_lag"]
    print(
        f"[e2e {e2e['rate']:g} mails/s for {e2e['seconds']:g} s] API 202 -> SMTP receipt: "
        f"p50 {lat['p50_ms']} ms, p99 {lat['p99_ms']} ms, max {lat['max_ms']} ms; "
        f"{e2e['arrived']} of {e2e['accepted']} accepted arrived ({e2e['sent']} sent, "
        f"{e2e['outcomes']}, {e2e['duplicates_at_sink']} duplicates at the sink)\n"
        f"{'':8}sent at {e2e['achieved_rate']}/s, delivered at {_fmt(e2e['delivery_rate'])}/s;"
        f" last arrival {e2e['last_arrival_after_last_202_s']} s after the last 202"
        f"{' (SATURATED: the latency is queueing)' if _saturated(e2e) else ''}\n"
        f"{'':8}API latency p50 {api['p50_ms']} ms, p99 {api['p99_ms']} ms; send lag behind "
        f"schedule p99 {lag['p99_ms']} ms, max {lag['max_ms']} ms"
    )
    for label, stats in e2e["stages"].items():
        print(
            f"{'':8}{label:<42} p50 {stats['p50_ms']:>8} ms  p99 {stats['p99_ms']:>8} ms  "
            f"max {stats['max_ms']:>8} ms  (n={stats['n']})"
        )
    print(f"{'':8}cores: {_cores(e2e['cpu'])}", flush=True)


def _median_rates(rates: list[RateResult]) -> dict[str, dict[str, Any]]:
    grouped: dict[str, list[RateResult]] = {}
    for r in rates:
        grouped.setdefault(r.label, []).append(r)
    return {
        label: {
            "median": round(statistics.median(r.rate for r in runs), 1),
            "rates": [r.rate for r in runs],
            "count": runs[0].count,
            "detail": {k: v for k, v in runs[0].detail.items() if k != "plan"},
        }
        for label, runs in grouped.items()
    }


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse_args(argv)
    signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even if started with it ignored
    load_start = os.getloadavg()
    print(
        f"{os.cpu_count()} cores; load average {' '.join(f'{v:.2f}' for v in load_start)} "
        "(1, 5, 15 min) at the start",
        flush=True,
    )
    base_env = {k: v for k, v in os.environ.items() if not k.startswith("MAILROOM_")}
    dropped = sorted(k for k in os.environ if k.startswith("MAILROOM_"))
    if dropped:
        print(f"not passed to the services: {', '.join(dropped)}")
    main_batch = args.batch_list[0]
    figures: dict[str, Any] = {
        "cores": os.cpu_count(),
        "load_average_start": load_start,
        "mails": args.mails,
        "repeat": args.repeat,
    }
    redis_runs: list[RedisBench] = []
    rates: list[RateResult] = []
    configs = {
        (relays, batch): RelayConfig(relays, batch)
        for batch in args.batch_list
        for relays in args.relay_list
    }
    profile_run: RelayRun | None = None
    e2e: list[dict[str, Any]] = []

    with contextlib.ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="mailroom-bench-")))
        if args.keep_logs:
            args.keep_logs.mkdir(parents=True, exist_ok=True)
            stack.callback(lambda: [shutil.copy(p, args.keep_logs) for p in workdir.glob("*.log")])
        dbs = stack.enter_context(databases(args.admin_url))
        keys = stack.enter_context(redis_keys(args.redis_url))
        base_url = dbs.create_base()
        env = base_env | {"MAILROOM_DATABASE_URL": base_url}
        print(_run_cli([_console_script("outbox-relay"), "migrate"], env).strip())
        print(
            _run_cli(
                [_console_script("ingest-api"), "create-tenant", TENANT,
                 "--sender-domain", SENDER_DOMAIN],
                env,
            ).strip()
        )  # fmt: skip
        key = _run_cli([_console_script("ingest-api"), "create-key", TENANT], env).splitlines()[-1]
        with psycopg.connect(base_url, autocommit=True) as conn:
            tenant_row = conn.execute(
                "SELECT id FROM tenants WHERE name = %s", (TENANT,)
            ).fetchone()
            assert tenant_row is not None
            server = conn.execute(
                "SELECT current_setting('server_version'), current_setting('synchronous_commit'),"
                " current_setting('fsync'), current_setting('shared_buffers')"
            ).fetchone()
            assert server is not None
        tenant = Tenant(id=tenant_row[0], name=TENANT, sender_domains=(SENDER_DOMAIN,))
        redis_version = str(keys.client.info("server").get("redis_version"))
        print(
            f"PostgreSQL {server[0]} (synchronous_commit={server[1]}, fsync={server[2]}, "
            f"shared_buffers={server[3]}); Redis {redis_version}; key prefix {keys.prefix}",
            flush=True,
        )
        figures["postgres"] = {"version": server[0], "synchronous_commit": server[1]}
        figures["redis"] = redis_version

        filled = ""
        if args.part_set & {"baselines", "relay", "profile"}:
            filled, filled_url = dbs.clone()
            fill_seconds = prefill(filled_url, tenant, args.mails)
            figures["prefill"] = {
                "mails": args.mails,
                "seconds": round(fill_seconds, 2),
                "rate": round(args.mails / fill_seconds, 1),
            }
            print(
                f"pre-filled {args.mails} mails with IngestTransaction.add_mails, "
                f"{FILL_CHUNK} per transaction: {args.mails / fill_seconds:.0f} mails/s; then "
                f"ANALYZE; every run below works on a fresh copy (CREATE DATABASE ... TEMPLATE)\n",
                flush=True,
            )

        # ---------------------------------------------------------------- baselines
        if "baselines" in args.part_set:
            sample = b""
            for _ in range(args.repeat):
                published, sample = publish_only(keys, args.mails, main_batch)
                rates.append(published)
                print(f"[baseline] {published.label}: {published.rate:.1f} msg/s", flush=True)
            print(f"           (a relay message in Redis is {len(sample)} bytes)")
            for label, clients, pipeline, requests, payload in (
                ("LPUSH c=50 (as -t lpush)", 50, 1, 200000, "xxx"),
                ("LPUSH c=50 -P 16", 50, 16, 200000, "xxx"),
                ("LPUSH c=1", 1, 1, 50000, "xxx"),
                ("LPUSH c=1 -P 16, relay-sized", 1, 16, 20000, "x" * max(len(sample), 3)),
            ):
                bench = redis_benchmark(keys, label, clients, pipeline, requests, payload)
                redis_runs.append(bench)
                print(f"[baseline] redis-benchmark {label}: {bench.rps:.1f} req/s", flush=True)
            celery = celery_send_task(keys, args.celery_seconds)
            keys.delete()
            rates.append(celery)
            print(f"[baseline] {celery.label}: {celery.rate:.1f} msg/s {celery.detail}", flush=True)
            for repetition in range(args.repeat):
                for variant in CLAIM_DELETE_SQL:
                    name, url = dbs.clone(filled)
                    try:
                        result = sql_claim_delete(url, variant, args.sql_limit, args.mails)
                    finally:
                        dbs.drop(name)
                    rates.append(result)
                    print(
                        f"[baseline] {result.label}: {result.rate:.1f} rows/s "
                        f"({result.count} rows, {result.detail['statements']} statements)",
                        flush=True,
                    )
                    if repetition == 0:
                        plan = result.detail["plan"].replace("\n", "\n             ")
                        print(f"           plan: {plan}")
                name, url = dbs.clone(filled)
                try:
                    result = sql_only_rounds(url, args.mails, main_batch)
                finally:
                    dbs.drop(name)
                rates.append(result)
                print(f"[baseline] {result.label}: {result.rate:.1f} rows/s {result.detail}")
            print(flush=True)

        # ---------------------------------------------------------------- relay
        if "relay" in args.part_set:
            for _ in range(args.repeat):  # round-robin: a noisy minute hits every config
                for (relays, batch), config in configs.items():
                    run = relay_run(
                        dbs, filled, keys, base_env, workdir,
                        relays=relays, batch_size=batch, mails=args.mails,
                    )  # fmt: skip
                    config.runs.append(run)
                    _print_relay_run(run)
        py_spy = _find_py_spy(args.py_spy)
        if "profile" in args.part_set:
            if py_spy is None:
                print("profile: py-spy not found (pip install py-spy --target /tmp/pyspy)")
            else:
                profile_run = relay_run(
                    dbs, filled, keys, base_env, workdir,
                    relays=1, batch_size=main_batch, mails=args.mails, py_spy=py_spy,
                )  # fmt: skip
                print(
                    "\nprofiled run (py-spy record --idle --nonblocking, 200 Hz; not in the table)"
                )
                _print_relay_run(profile_run)
                _print_profile(profile_run.profile)
        if filled:
            dbs.drop(filled)

        # ---------------------------------------------------------------- end to end
        if "e2e" in args.part_set:
            print()
            e2e = e2e_run(
                dbs, keys, key, base_env, workdir,
                rates=args.rate_list, seconds=args.seconds,
                api_workers=args.api_workers, worker_concurrency=args.worker_concurrency,
            )  # fmt: skip

    load_end = os.getloadavg()
    print()
    medians = _median_rates(rates)
    ratios = _print_summary(redis_runs, medians, list(configs.values()), e2e, main_batch)
    print(
        "load average (1, 5, 15 min): start "
        f"{' '.join(f'{v:.2f}' for v in load_start)}, end {' '.join(f'{v:.2f}' for v in load_end)}"
    )
    figures |= {
        "load_average_end": load_end,
        "redis_benchmark": [asdict(r) for r in redis_runs],
        "baselines": medians,
        "relay": [c.summary() for c in configs.values() if c.runs],
        "relay_runs": [asdict(r) for c in configs.values() for r in c.runs],
        "profile": asdict(profile_run) if profile_run else None,
        "e2e": e2e,
        "ratios": ratios,
    }
    print(json.dumps(figures))
    return 0


def _print_summary(
    redis_runs: list[RedisBench],
    medians: dict[str, dict[str, Any]],
    configs: list[RelayConfig],
    e2e: list[dict[str, Any]],
    main_batch: int,
) -> dict[str, Any]:
    by_label = {r.label: r.rps for r in redis_runs}
    lpush = by_label.get("LPUSH c=50 (as -t lpush)")
    lpush_p16 = by_label.get("LPUSH c=50 -P 16")
    lpush_c1 = by_label.get("LPUSH c=1")

    def median_of(prefix: str) -> float | None:
        return next((m["median"] for label, m in medians.items() if label.startswith(prefix)), None)

    celery = median_of("Celery send_task")
    publish = median_of("Publisher.publish")
    sql_only = median_of("dispatch_round")
    ratios: dict[str, Any] = {}
    configs = [c for c in configs if c.runs]
    if configs:
        header = (
            f"{'relays':>6} {'batch':>5} | {'mails/s':>8} {'(min-max)':>13} {'w/ start':>8} | "
            f"{'/LPUSH':>6} {'/LPUSH P16':>10} {'/LPUSH c1':>9} {'/Celery':>7} {'/publish':>8} "
            f"{'/SQL only':>9} | {'relay':>5} {'pg':>5} {'box':>5}"
        )
        print(
            f"outbox -> Redis throughput, no worker (median of {len(configs[0].runs)} runs; "
            "cores of the median run), and its ratios to the baselines:"
        )
        print(header)
        print("-" * len(header))
        for config in configs:
            row = {
                "vs_lpush": _ratio(config.rate, lpush),
                "vs_lpush_p16": _ratio(config.rate, lpush_p16),
                "vs_lpush_c1": _ratio(config.rate, lpush_c1),
                "vs_celery_send_task": _ratio(config.rate, celery),
                "vs_publish_only": _ratio(config.rate, publish),
                "vs_sql_only": _ratio(config.rate, sql_only),
            }
            ratios[f"{config.relays}x{config.batch_size}"] = row
            spread = (
                f"{min(r.rate for r in config.runs):.0f}-{max(r.rate for r in config.runs):.0f}"
            )
            cpu = config.median_run.cpu
            print(
                f"{config.relays:>6} {config.batch_size:>5} | {config.rate:>8.1f} {spread:>13} "
                f"{config.rate_with_startup:>8.1f} | {_fmt(row['vs_lpush'], '.3f'):>6} "
                f"{_fmt(row['vs_lpush_p16'], '.3f'):>10} {_fmt(row['vs_lpush_c1'], '.3f'):>9} "
                f"{_fmt(row['vs_celery_send_task'], '.2f'):>7} "
                f"{_fmt(row['vs_publish_only'], '.3f'):>8} {_fmt(row['vs_sql_only'], '.3f'):>9} | "
                f"{cpu.get('relays', 0):>5.2f} {cpu.get('pg_backends', 0):>5.2f} "
                f"{cpu.get('machine', 0):>5.2f}"
            )
        main = [c for c in configs if c.batch_size == main_batch]
        one = next((c for c in main if c.relays == 1), None)
        most = max(main, key=lambda c: c.relays, default=None)
        if one is not None and most is not None and most is not one:
            ratios["scaling"] = _ratio(most.rate, one.rate)
            print(
                f"{most.relays} relays / 1 relay at batch {main_batch}: "
                f"{_fmt(ratios['scaling'], '.2f')}x"
            )
    if redis_runs or medians:
        print("\nbaselines (median of the repeated ones; all values in brackets):")
    for r in redis_runs:
        print(
            f"  redis-benchmark {r.label:<30} {r.rps:>10.1f} req/s  "
            f"(-n {r.requests}, {r.payload_bytes} B payload)"
        )
    for label, m in medians.items():
        values = ", ".join(f"{v:.0f}" for v in m["rates"])
        print(f"  {label:<46} {m['median']:>10.1f} /s   [{values}]")
    for result in e2e:
        lat = result["e2e"]
        print(
            f"\nend to end at {result['rate']:g} mails/s: p50 {lat['p50_ms']} ms, p99 "
            f"{lat['p99_ms']} ms, max {lat['max_ms']} ms; {result['arrived']}/"
            f"{result['accepted']} arrived; delivered at {_fmt(result['delivery_rate'])}/s"
            f"{' (saturated)' if result['saturated'] else ''}"
        )
    return ratios


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
