"""Ingest throughput: ``POST /v1/mails`` through the real API, against pgbench and Celery.

Run as ``.venv/bin/python bench/ingest.py [--seconds 10] [--clients 1,8,32]``.

In one throw-away database (``mailroom_bench_<hex>``, dropped at the end, also on
failure or Ctrl-C) this script:

1. applies the migrations and creates a tenant and an API key with the console
   scripts, exactly as an operator would;
2. runs the API's own ingest code once (``ingest_api.accept.ingest_transaction``
   with one mail built by ``SendMailSchema`` and ``new_mail``) on a connection
   that records every statement, and turns what it sent into a pgbench script:
   the same named blocks of ``shared/sql/queries.sql`` (``%(name)s`` becomes a
   pgbench ``:name``, cast to the type psycopg sent; a one-element array
   parameter becomes ``ARRAY[...]``; a per-mail uuid becomes
   ``gen_random_uuid()``), inside BEGIN/COMMIT (and a pipeline if the API used
   one), so pgbench keeps measuring the transaction the API runs;
3. starts ``ingest-api serve --workers 2`` alone (no relay: the outbox only grows;
   no rate limiter) and, with the same gunicorn settings, ``bench/celery_baseline.py``:
   JSON in, Celery ``apply_async`` into Redis, no database (the design that lost
   mail), under a unique Redis key prefix whose keys are deleted afterwards;
4. for each client count, drives keep-alive ``POST /v1/mails`` load for N seconds
   from separate processes (``http.client``, one connection per thread) at the
   API, then runs pgbench for N seconds, then drives the same load at the
   Celery baseline;
5. if the API has ``POST /v1/mails/batch``, drives it with batches of 500 mails
   at 1 and 4 clients and reports mails per second;
6. prints requests/s, p50/p99 latency and errors for each, the ratios
   API / pgbench and API / Celery per client count, batch mails/s, and the same
   figures as JSON on the last line of stdout (or in ``--json FILE``).

The load generator, the servers and PostgreSQL share the machine's cores, so the
CPU each of them used is reported too: the ratios are only meaningful next to it.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import multiprocessing as mp
import os
import re
import resource
import secrets
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from array import array
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from multiprocessing.queues import Queue as MpQueue
from multiprocessing.sharedctypes import Synchronized
from multiprocessing.synchronize import Event as MpEvent
from multiprocessing.synchronize import Semaphore as MpSemaphore
from pathlib import Path
from typing import Any, cast

import psycopg
import redis
from common import (  # bench/common.py
    _console_script,
    _database_url,
    _free_port,
    _int_list,
    _machine_ticks,
    _percentile,
    _proc_ticks,
    _process_tree,
    _raise_keyboard_interrupt,
    _run_cli,
)
from psycopg import pq, sql
from psycopg.adapt import PyFormat, Transformer
from psycopg.rows import DictRow, dict_row

from ingest_api.accept import ingest_transaction
from ingest_api.auth import Tenant
from ingest_api.new_mail import new_mail
from ingest_api.schemas.mail import SendMailSchema
from shared.db import DictPool
from shared.queries import QUERIES
from shared.queues import TRANSACTIONAL_QUEUE

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
TENANT = "bench"
SENDER_DOMAIN = "example.com"
WARMUP_REQUESTS = 3  # per connection, before the clock starts (1 for batches)
REQUEST_TIMEOUT = 30.0
BATCH_SIZE = 500
CLK_TCK = os.sysconf("SC_CLK_TCK")
PGBENCH_REQUEST_ID = "pgbench-" + "0" * 24  # as long as the API's uuid4().hex
PROBE_MAILS = 1  # committed by capture_ingest, with PGBENCH_REQUEST_ID
FRESH_UUID = "gen_random_uuid()"
# Environment the API must not inherit here: the bench measures ingest, not the limiter.
API_ENV_DROPPED = ("MAILROOM_RATE_LIMIT_URL",)


# --------------------------------------------------------------------------- payload


def _mail_body() -> dict[str, Any]:
    """A small, realistic transactional mail: ~0.5 KB of text, ~1 KB of HTML."""
    text = (
        "Hello Bob,\n\n"
        "Your order #A-20931 has shipped and should arrive within three working days. "
        "You can follow the parcel with the tracking link below; the carrier updates it "
        "a few times a day.\n\n"
        "Tracking: https://shop.example.com/orders/A-20931/tracking\n\n"
        "Items: 1 x Walnut desk organiser, 2 x Linen notebook (A5, dotted)\n"
        "Total charged: EUR 54.80 to the card ending 4242.\n\n"
        "If something is wrong with your order, reply to this mail and we will sort it out.\n\n"
        "-- \nThe Example Shop team\n"
    )
    html = (
        '<!doctype html><html><body style="font-family:sans-serif;color:#222">'
        "<p>Hello Bob,</p>"
        "<p>Your order <strong>#A-20931</strong> has shipped and should arrive within "
        "three working days. You can follow the parcel with the tracking link below; the "
        "carrier updates it a few times a day.</p>"
        '<p><a href="https://shop.example.com/orders/A-20931/tracking" '
        'style="color:#0a58ca">Track your parcel</a></p>'
        '<table cellpadding="4" style="border-collapse:collapse">'
        '<tr><td>1 &times; Walnut desk organiser</td><td align="right">EUR 32.90</td></tr>'
        '<tr><td>2 &times; Linen notebook (A5, dotted)</td><td align="right">EUR 21.90</td></tr>'
        '<tr><td><strong>Total</strong></td><td align="right"><strong>EUR 54.80</strong>'
        "</td></tr></table>"
        "<p>If something is wrong with your order, reply to this mail and we will sort it "
        'out.</p><p style="color:#888">The Example Shop team</p></body></html>'
    )
    return {
        "from": "Example Shop <a@example.com>",
        "to": ["Bob Example <bob@example.net>"],
        "subject": "Your order #A-20931 has shipped",
        "text": text,
        "html": html,
    }


# --------------------------------------------------------------------------- the ingest transaction


@dataclass(frozen=True)
class Statement:
    """One statement the API's ingest code sent: its named block and its parameters."""

    name: str
    query: str
    params: dict[str, Any]
    pipeline: bool


class _RecordingConnection:
    """A real connection that notes what ``execute`` is asked to run."""

    def __init__(self, conn: psycopg.Connection[DictRow]) -> None:
        self._conn = conn
        self.statements: list[Statement] = []

    def execute(self, query: Any, params: Any = None, **kwargs: Any) -> Any:
        names = [name for name, text in QUERIES.items() if text == query]
        if len(names) != 1 or not isinstance(params, dict):
            raise RuntimeError(
                "the ingest transaction ran a statement that is not a named block of "
                f"shared/sql/*.sql with named parameters; adapt bench/ingest.py: {query!r:.300}"
            )
        pipeline = self._conn.pgconn.pipeline_status != pq.PipelineStatus.OFF
        self.statements.append(Statement(names[0], query, dict(params), pipeline))
        return self._conn.execute(query, params, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conn, name)


class _OneConnectionPool:
    """Just enough of a psycopg_pool.ConnectionPool for the ingest code."""

    def __init__(self, conn: _RecordingConnection) -> None:
        self._conn = conn

    @contextlib.contextmanager
    def connection(self, timeout: float | None = None) -> Iterator[_RecordingConnection]:
        yield self._conn


def capture_ingest(db_url: str, tenant: Tenant, body: dict[str, Any]) -> list[Statement]:
    """Accept *body* once through the API's own code, as POST /v1/mails does; record it.

    The mail is committed with ``PGBENCH_REQUEST_ID`` and counted with pgbench's.
    """
    mail = new_mail(SendMailSchema().load(body), tenant)
    with psycopg.connect(db_url, autocommit=True, row_factory=dict_row) as conn:
        recorder = _RecordingConnection(conn)
        pool = cast("DictPool", _OneConnectionPool(recorder))
        with ingest_transaction(pool, tenant_id=tenant.id, request_id=PGBENCH_REQUEST_ID) as tx:
            tx.add_mails([mail])
            tx.respond(202, {"id": str(mail.id), "status": mail.status.value})
    if not recorder.statements:
        raise RuntimeError("the ingest transaction ran no statement through conn.execute")
    return recorder.statements


@dataclass
class PgbenchScript:
    text: str
    variables: dict[str, str]  # pgbench -D name=value
    blocks: list[str]
    pipeline: bool
    parameters: dict[str, str] = field(default_factory=dict)  # placeholder -> pgbench SQL


_PLACEHOLDER = re.compile(r"%%|%\((\w+)\)s|%[sbt]")


def pgbench_script(
    statements: Sequence[Statement], tenant_id: uuid.UUID, conn: psycopg.Connection[Any]
) -> PgbenchScript:
    """The recorded statements as a pgbench script, one mail per transaction.

    Each ``%(name)s`` becomes what psycopg sent for it: ``CAST(:name AS type)``
    for a typed value (uuid, jsonb, ...), a bare ``:name`` for a ``str`` (psycopg
    sends those untyped too), ``NULL`` for None, ``ARRAY[...]`` around the one
    element of a list, and ``gen_random_uuid()`` for a uuid other than the
    tenant's (a fresh mail id on every transaction).
    """
    adapt = Transformer(conn)
    script = PgbenchScript(
        "", {}, [s.name for s in statements], any(s.pipeline for s in statements)
    )
    fresh: set[uuid.UUID] = set()

    def value_sql(value: Any) -> tuple[str, str | None]:
        """The SQL for one value, with ``{var}`` where the variable goes, and its text."""
        if value is None:
            return "NULL", None
        if isinstance(value, uuid.UUID) and value != tenant_id:
            if value in fresh:  # two gen_random_uuid() calls would not be equal
                raise RuntimeError(f"the uuid {value} is passed twice; adapt bench/ingest.py")
            fresh.add(value)
            return FRESH_UUID, None
        dumper = adapt.get_dumper(value, PyFormat.TEXT)
        dumped = dumper.dump(value)
        if dumped is None:
            return "NULL", None
        if not dumper.oid:  # psycopg sends str untyped; the server infers the type
            return "{var}", bytes(dumped).decode()
        info = conn.adapters.types.get(dumper.oid)
        if info is None:
            raise RuntimeError(f"no type name for oid {dumper.oid}")
        return f"CAST({{var}} AS {info.name})", bytes(dumped).decode()

    commands = []
    for index, statement in enumerate(statements):

        def substitute(match: re.Match[str], index: int = index, st: Statement = statement) -> str:
            if match.group(0) == "%%":
                return "%"
            name = match.group(1)
            if name is None:
                raise RuntimeError(f"{st.name}: positional placeholder {match.group(0)}")
            value = st.params[name]
            if isinstance(value, list | tuple):
                if len(value) != 1:
                    raise RuntimeError(f"{st.name}: {name} has {len(value)} elements, not 1")
                template, text = value_sql(value[0])
                template = f"ARRAY[{template}]"
            else:
                template, text = value_sql(value)
            variable = name
            if text is not None:
                if script.variables.get(variable, text) != text:  # same name, other value
                    variable = f"s{index}_{name}"
                script.variables[variable] = text
            expression = template.replace("{var}", f":{variable}")
            script.parameters[f"{st.name}.{name}"] = expression
            return expression

        commands.append(_PLACEHOLDER.sub(substitute, statement.query) + ";")
    body = "BEGIN;\n" + "\n".join(commands) + "\nCOMMIT;\n"
    script.text = f"\\startpipeline\n{body}\\endpipeline\n" if script.pipeline else body
    return script


# --------------------------------------------------------------------------- CPU accounting


@dataclass
class CpuSample:
    wall: float
    machine_busy: int
    machine_total: int
    api: dict[int, int]
    children: float  # CPU seconds of our waited-for children (pgbench)

    @classmethod
    def take(cls, api_pid: int | None) -> CpuSample:
        busy, total = _machine_ticks()
        api = {pid: _proc_ticks(pid) for pid in _process_tree(api_pid)} if api_pid else {}
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        return cls(time.monotonic(), busy, total, api, usage.ru_utime + usage.ru_stime)


@dataclass
class CpuUse:
    """Cores used during a run (2.0 = both cores of a 2-core machine busy).

    ``api`` is the server under test: ingest-api, or the Celery baseline in its runs.
    """

    machine: float
    api: float
    loadgen: float
    pgbench: float

    @classmethod
    def between(cls, before: CpuSample, after: CpuSample, loadgen_seconds: float) -> CpuUse:
        wall = max(after.wall - before.wall, 1e-9)
        cores = os.cpu_count() or 1
        total = max(after.machine_total - before.machine_total, 1)
        machine = cores * (after.machine_busy - before.machine_busy) / total
        api_ticks = sum(t - before.api.get(pid, 0) for pid, t in after.api.items())
        return cls(
            machine=round(machine, 2),
            api=round(api_ticks / CLK_TCK / wall, 2),
            loadgen=round(loadgen_seconds / wall, 2),
            pgbench=round((after.children - before.children) / wall, 2),
        )

    def describe(self, server: str = "api") -> str:
        rest = max(self.machine - self.api - self.loadgen - self.pgbench, 0.0)
        return (
            f"cores busy {self.machine:.2f}/{os.cpu_count()}: {server} {self.api:.2f}, "
            f"load generator {self.loadgen:.2f}, pgbench {self.pgbench:.2f}, "
            f"rest (postgres + other tenants) {rest:.2f}"
        )


# --------------------------------------------------------------------------- load generator


@dataclass(frozen=True)
class Target:
    host: str
    port: int
    path: str
    body: bytes
    headers: dict[str, str]
    batch: bool = False  # the answer counts accepted and rejected mails
    warmup: int = WARMUP_REQUESTS


@dataclass
class ThreadResult:
    ok_latencies: array[float] = field(default_factory=lambda: array("d"))
    other_latencies: array[float] = field(default_factory=lambda: array("d"))
    outcomes: Counter[str] = field(default_factory=Counter)
    mails_accepted: int = 0
    mails_rejected: int = 0
    warmup_mails: int = 0
    warmup_failed: int = 0
    first_start: float = float("inf")
    last_end: float = 0.0


def _post(conn: http.client.HTTPConnection, target: Target) -> tuple[str, int, int]:
    """One request: its outcome (the status code, ``bad-body`` or the exception's
    name) and the mails it accepted and rejected."""
    try:
        conn.request("POST", target.path, body=target.body, headers=target.headers)
        response = conn.getresponse()
        body = response.read()
        if response.will_close:
            conn.close()
    except (OSError, http.client.HTTPException) as exc:
        conn.close()  # the next request reconnects
        return type(exc).__name__, 0, 0
    if response.status != 202:
        return str(response.status), 0, 0
    if not target.batch:
        return "202", 1, 0
    try:
        answer = json.loads(body)
        return "202", int(answer["accepted"]), int(answer["rejected"])
    except (ValueError, KeyError, TypeError):
        return "bad-body", 0, 0


def _client_thread(
    target: Target,
    ready: MpSemaphore,
    go: MpEvent,
    start_at: Synchronized[float],
    seconds: float,
    result: ThreadResult,
) -> None:
    conn = http.client.HTTPConnection(target.host, target.port, timeout=REQUEST_TIMEOUT)
    try:
        for _ in range(target.warmup):
            outcome, accepted, _rejected = _post(conn, target)
            result.warmup_mails += accepted
            result.warmup_failed += outcome != "202"
    finally:
        ready.release()
    go.wait()
    deadline = start_at.value + seconds
    now = time.monotonic()
    result.first_start = now
    while now < deadline:
        outcome, accepted, rejected = _post(conn, target)
        end = time.monotonic()
        (result.ok_latencies if outcome == "202" else result.other_latencies).append(end - now)
        result.outcomes[outcome] += 1
        result.mails_accepted += accepted
        result.mails_rejected += rejected
        now = end
    result.last_end = now
    conn.close()


def _load_process(
    target: Target,
    threads: int,
    ready: MpSemaphore,
    go: MpEvent,
    start_at: Synchronized[float],
    seconds: float,
    results: MpQueue[dict[str, Any]],
) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C and stops us
    per_thread = [ThreadResult() for _ in range(threads)]
    workers = [
        threading.Thread(
            target=_client_thread,
            args=(target, ready, go, start_at, seconds, r),
            daemon=True,
        )
        for r in per_thread
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    ok, other = array("d"), array("d")
    outcomes: Counter[str] = Counter()
    for r in per_thread:
        ok.extend(r.ok_latencies)
        other.extend(r.other_latencies)
        outcomes.update(r.outcomes)
    results.put(
        {
            "ok": ok.tobytes(),
            "other": other.tobytes(),
            "outcomes": dict(outcomes),
            "mails_accepted": sum(r.mails_accepted for r in per_thread),
            "mails_rejected": sum(r.mails_rejected for r in per_thread),
            "warmup_mails": sum(r.warmup_mails for r in per_thread),
            "warmup_failed": sum(r.warmup_failed for r in per_thread),
            "first_start": min(r.first_start for r in per_thread),
            "last_end": max(r.last_end for r in per_thread),
            "cpu_seconds": usage.ru_utime + usage.ru_stime,
        }
    )


@dataclass
class HttpResult:
    clients: int
    seconds: float
    requests: int
    accepted: int  # requests answered 202
    errors: int
    error_kinds: dict[str, int]
    rps: float  # 202s per second
    p50_ms: float
    p99_ms: float
    max_ms: float
    mails_accepted: int
    mails_rejected: int
    mails_per_s: float
    warmup_mails: int  # accepted during the warm-up, before the clock started
    warmup_failed: int
    cpu: CpuUse


def run_http(
    target: Target, clients: int, seconds: float, processes: int, server_pid: int
) -> HttpResult:
    ctx = mp.get_context("fork")  # cheap, and the parent has no threads here
    ready = ctx.Semaphore(0)
    go = ctx.Event()
    start_at: Synchronized[float] = ctx.Value("d", 0.0)
    results: MpQueue[dict[str, Any]] = ctx.Queue()
    n_procs = max(1, min(processes, clients))
    shares = [clients // n_procs + (1 if i < clients % n_procs else 0) for i in range(n_procs)]
    procs = [
        ctx.Process(
            target=_load_process,
            args=(target, share, ready, go, start_at, seconds, results),
            daemon=True,
        )
        for share in shares
    ]
    payloads: list[dict[str, Any]] = []
    try:
        for proc in procs:
            proc.start()
        for _ in range(clients):
            if not ready.acquire(timeout=120):
                raise RuntimeError("load generator threads did not become ready in 120 s")
        before = CpuSample.take(server_pid)
        start_at.value = time.monotonic()
        go.set()
        for _ in procs:
            payloads.append(results.get(timeout=seconds + REQUEST_TIMEOUT + 60))
        after = CpuSample.take(server_pid)
        for proc in procs:
            proc.join(timeout=10)
    finally:
        for proc in procs:
            if proc.is_alive():
                proc.terminate()
                proc.join(timeout=5)

    ok: array[float] = array("d")
    other: array[float] = array("d")
    outcomes: Counter[str] = Counter()
    for payload in payloads:
        ok.frombytes(payload["ok"])
        other.frombytes(payload["other"])
        outcomes.update(payload["outcomes"])
    elapsed = max(p["last_end"] for p in payloads) - min(p["first_start"] for p in payloads)
    latencies = sorted(ok)
    errors = {kind: n for kind, n in outcomes.items() if kind != "202"}
    mails = sum(p["mails_accepted"] for p in payloads)
    return HttpResult(
        clients=clients,
        seconds=round(elapsed, 3),
        requests=len(ok) + len(other),
        accepted=len(ok),
        errors=sum(errors.values()),
        error_kinds=errors,
        rps=round(len(ok) / elapsed, 1) if elapsed > 0 else 0.0,
        p50_ms=round(_percentile(latencies, 0.50) * 1000, 2),
        p99_ms=round(_percentile(latencies, 0.99) * 1000, 2),
        max_ms=round((latencies[-1] if latencies else float("nan")) * 1000, 2),
        mails_accepted=mails,
        mails_rejected=sum(p["mails_rejected"] for p in payloads),
        mails_per_s=round(mails / elapsed, 1) if elapsed > 0 else 0.0,
        warmup_mails=sum(p["warmup_mails"] for p in payloads),
        warmup_failed=sum(p["warmup_failed"] for p in payloads),
        cpu=CpuUse.between(before, after, sum(p["cpu_seconds"] for p in payloads)),
    )


# --------------------------------------------------------------------------- pgbench


@dataclass
class PgbenchResult:
    clients: int
    threads: int
    tps: float
    latency_avg_ms: float
    transactions: int
    failed: int
    cpu: CpuUse


def _parse_pgbench(output: str) -> tuple[float, float, int, int]:
    tps = re.search(r"^tps = ([\d.]+)", output, re.MULTILINE)
    latency = re.search(r"^latency average = ([\d.]+) ms", output, re.MULTILINE)
    done = re.search(r"^number of transactions actually processed: (\d+)", output, re.MULTILINE)
    failed = re.search(r"^number of failed transactions: (\d+)", output, re.MULTILINE)
    if not (tps and latency and done):
        raise RuntimeError("could not parse pgbench's output:\n" + output)
    return (
        float(tps.group(1)),
        float(latency.group(1)),
        int(done.group(1)),
        int(failed.group(1)) if failed else 0,
    )


def run_pgbench(
    pgbench: str,
    db_url: str,
    script: Path,
    variables: dict[str, str],
    clients: int,
    seconds: int,
    api_pid: int | None,
) -> tuple[PgbenchResult, str]:
    threads = min(2, clients)
    argv = [pgbench, "-n", "-M", "prepared", "-f", str(script)]
    argv += ["-c", str(clients), "-j", str(threads), "-T", str(seconds)]
    for name, value in variables.items():
        argv += ["-D", f"{name}={value}"]
    argv.append(db_url)  # libpq expands a connection URI given as the database name
    before = CpuSample.take(api_pid)
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    after = CpuSample.take(api_pid)
    output = done.stdout + done.stderr
    if done.returncode != 0:
        raise RuntimeError(f"pgbench exited with {done.returncode}:\n{output}")
    tps, latency, transactions, failed = _parse_pgbench(output)
    result = PgbenchResult(
        clients=clients,
        threads=threads,
        tps=round(tps, 1),
        latency_avg_ms=latency,
        transactions=transactions,
        failed=failed,
        cpu=CpuUse.between(before, after, 0.0),
    )
    return result, output


# --------------------------------------------------------------------------- setup and teardown


@contextlib.contextmanager
def temporary_database(admin_url: str) -> Iterator[str]:
    """A fresh database named mailroom_bench_<hex>; dropped on the way out, whatever happens."""
    name = f"mailroom_bench_{secrets.token_hex(6)}"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    print(f"created database {name}", flush=True)
    try:
        yield _database_url(admin_url, name)
    finally:
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )
        print(f"dropped database {name}", flush=True)


def _wait_ready(name: str, proc: subprocess.Popen[bytes], port: int, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited with {proc.returncode} before it was ready")
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
    raise RuntimeError(f"{name} was not ready on port {port} within {timeout:.0f} s")


@contextlib.contextmanager
def http_server(
    name: str, argv: list[str], env: dict[str, str], port: int, log: Path, cwd: Path | None = None
) -> Iterator[int]:
    """A gunicorn server in its own session; SIGTERM, then SIGKILL after 10 s."""
    with log.open("wb") as log_file:
        proc = subprocess.Popen(
            argv,
            env=env,
            cwd=cwd,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        try:
            _wait_ready(name, proc, port)
        except RuntimeError as exc:
            tail = "\n".join(log.read_text(errors="replace").splitlines()[-30:])
            raise RuntimeError(f"{exc}; last lines of its log ({log}):\n{tail}") from None
        yield proc.pid
    finally:
        if proc.poll() is None:
            workers_pids = _process_tree(proc.pid)[1:]
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                print(f"{name} did not stop in 10 s; sending SIGKILL", flush=True)
                for pid in [proc.pid, *workers_pids]:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                proc.wait()
        print(f"{name} stopped (exit status {proc.returncode})", flush=True)


def api_server(
    env: dict[str, str], port: int, workers: int, log: Path
) -> contextlib.AbstractContextManager[int]:
    """``ingest-api serve``, as an operator starts it."""
    argv = [_console_script("ingest-api"), "serve", "--bind", f"127.0.0.1:{port}"]
    argv += ["--workers", str(workers)]
    return http_server("ingest-api", argv, env, port, log)


def celery_server(
    env: dict[str, str], port: int, workers: int, log: Path
) -> contextlib.AbstractContextManager[int]:
    """bench/celery_baseline.py under the API's gunicorn settings, from the repository root."""
    argv = [sys.executable, "-m", "gunicorn", "-c", "python:ingest_api.gunicorn_conf"]
    argv += ["--bind", f"127.0.0.1:{port}", "--workers", str(workers)]
    argv.append("bench.celery_baseline:app")
    return http_server("celery baseline", argv, env, port, log, cwd=REPO_ROOT)


def _has_path(port: int, path: str) -> bool:
    """Whether the API's OpenAPI document lists *path*."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", "/openapi.json")
        response = conn.getresponse()
        document = json.loads(response.read()) if response.status == 200 else {}
    finally:
        conn.close()
    return path in document.get("paths", {})


class RedisKeys:
    """Keys under one fresh prefix of a shared Redis; only those are ever deleted."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.prefix = f"mailroom-bench-{secrets.token_hex(6)}:"
        self.client = redis.Redis.from_url(url)

    def queue_length(self, queue: str) -> int:
        return int(self.client.llen(self.prefix + queue))

    def delete(self, *, keep_bindings: bool = False) -> int:
        """Delete the keys under the prefix (all, or all but kombu's queue bindings)."""
        mine = self.prefix.encode()
        bindings = mine + b"_kombu.binding"
        deleted = 0
        batch: list[bytes] = []
        for key in self.client.scan_iter(match=self.prefix + "*", count=1000):
            if not key.startswith(mine) or (keep_bindings and key.startswith(bindings)):
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


# --------------------------------------------------------------------------- main


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--seconds", type=int, default=10, help="duration of each run")
    parser.add_argument("--clients", default="1,8,32", help="comma-separated client counts")
    parser.add_argument(
        "--batch-clients",
        default="1,4",
        help="client counts for POST /v1/mails/batch (empty: skip the batch runs)",
    )
    parser.add_argument(
        "--batch-size", type=int, default=BATCH_SIZE, help="mails per batch request"
    )
    parser.add_argument(
        "--admin-url",
        default=os.environ.get("MAILROOM_TEST_DATABASE_URL") or DEFAULT_ADMIN_URL,
        help="a database URL allowed to CREATE/DROP DATABASE (env MAILROOM_TEST_DATABASE_URL)",
    )
    parser.add_argument(
        "--redis-url",
        default=os.environ.get("MAILROOM_TEST_REDIS_URL") or DEFAULT_REDIS_URL,
        help="the Celery baseline's broker (env MAILROOM_TEST_REDIS_URL); it writes only "
        "under a fresh mailroom-bench-<hex>: key prefix and deletes those keys",
    )
    parser.add_argument(
        "--no-celery", action="store_true", help="skip the Celery baseline (no Redis needed)"
    )
    parser.add_argument("--workers", type=int, default=2, help="gunicorn workers of both servers")
    parser.add_argument(
        "--load-processes", type=int, default=2, help="processes of the load generator"
    )
    parser.add_argument("--pgbench", default="/usr/bin/pgbench", help="the pgbench binary")
    parser.add_argument("--json", type=Path, help="write the JSON figures here, not to stdout")
    parser.add_argument("--api-log", type=Path, help="keep the API's log in this file")
    args = parser.parse_args(argv)
    try:
        args.client_counts = _int_list(args.clients)
        args.batch_client_counts = _int_list(args.batch_clients)
    except ValueError:
        parser.error("--clients and --batch-clients must be comma-separated integers, e.g. 1,8,32")
    counts = args.client_counts + args.batch_client_counts
    if not args.client_counts or min(counts) < 1 or args.seconds < 1 or args.batch_size < 1:
        parser.error("--clients must be positive integers and --seconds at least 1")
    return args


def _ratio(numerator: float, denominator: float | None) -> float | None:
    return round(numerator / denominator, 3) if denominator else None


def _cell(value: float | None, width: int, digits: int = 1) -> str:
    return f"{'-':>{width}}" if value is None else f"{value:>{width}.{digits}f}"


def _print_tables(rows: list[dict[str, Any]], batch: dict[str, Any]) -> None:
    header = (
        f"{'clients':>7} | {'API req/s':>9} {'p50 ms':>7} {'p99 ms':>7} {'err':>4} | "
        f"{'pgbench tps':>11} {'lat ms':>6} | {'celery req/s':>12} {'p50 ms':>7} "
        f"{'p99 ms':>7} {'err':>4} | {'API/pgbench':>11} {'API/celery':>10}"
    )
    print(header)
    print("-" * len(header))
    for row in rows:
        print(
            f"{row['clients']:>7} | {row['api_rps']:>9.1f} {row['api_p50_ms']:>7.2f} "
            f"{row['api_p99_ms']:>7.2f} {row['api_errors']:>4} | "
            f"{row['pgbench_tps']:>11.1f} {row['pgbench_latency_avg_ms']:>6.2f} | "
            f"{_cell(row['celery_rps'], 12)} {_cell(row['celery_p50_ms'], 7, 2)} "
            f"{_cell(row['celery_p99_ms'], 7, 2)} {row['celery_errors'] or 0:>4} | "
            f"{_cell(row['ratio'], 11, 3)} {_cell(row['ratio_celery'], 10, 3)}"
        )
    print()
    if "skipped" in batch:
        print(f"POST /v1/mails/batch: skipped ({batch['skipped']})")
        return
    header = (
        f"{'batch clients':>13} | {'batches/s':>9} {'mails/s':>8} {'p50 ms':>8} {'p99 ms':>8} "
        f"{'rejected':>8} {'err':>4} | {'mails/s / best single API req/s':>31}"
    )
    print(f"POST /v1/mails/batch, {batch['size']} mails per request")
    print(header)
    print("-" * len(header))
    for row in batch["results"]:
        print(
            f"{row['clients']:>13} | {row['rps']:>9.1f} {row['mails_per_s']:>8.1f} "
            f"{row['p50_ms']:>8.1f} {row['p99_ms']:>8.1f} {row['mails_rejected']:>8} "
            f"{row['errors']:>4} | {_cell(row['vs_single_api'], 31, 2)}"
        )


def _describe(label: str, result: HttpResult, server: str, unit: str = "req/s") -> str:
    errors = f" {result.error_kinds}" if result.errors else ""
    rate = result.mails_per_s if unit == "mails/s" else result.rps
    extra = f" ({result.rps:.1f} req/s)" if unit == "mails/s" else ""
    return (
        f"[{label}] {rate:8.1f} {unit}{extra}  p50 {result.p50_ms:7.2f} ms  "
        f"p99 {result.p99_ms:7.2f} ms  max {result.max_ms:7.2f} ms  "
        f"{result.accepted} x 202, {result.errors} errors{errors}\n"
        f"{'':18}{result.cpu.describe(server)}"
    )


def _http_row(prefix: str, result: HttpResult | None) -> dict[str, Any]:
    if result is None:
        return {f"{prefix}_{k}": None for k in ("rps", "p50_ms", "p99_ms", "errors")}
    return {
        f"{prefix}_rps": result.rps,
        f"{prefix}_p50_ms": result.p50_ms,
        f"{prefix}_p99_ms": result.p99_ms,
        f"{prefix}_max_ms": result.max_ms,
        f"{prefix}_requests": result.requests,
        f"{prefix}_accepted": result.accepted,
        f"{prefix}_errors": result.errors,
        f"{prefix}_error_kinds": result.error_kinds,
        f"{prefix}_cpu": asdict(result.cpu),
    }


def _headers(key: str, body: bytes) -> dict[str, str]:
    return {
        "Authorization": f"Bearer {key}",
        "Content-Type": "application/json",
        "Content-Length": str(len(body)),
    }


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse_args(argv)
    signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    load_start = os.getloadavg()
    body = _mail_body()
    body_bytes = json.dumps(body).encode()
    batch_bytes = json.dumps({"mails": [body] * args.batch_size}).encode()
    results: list[dict[str, Any]] = []
    api_runs: list[HttpResult] = []
    pgbench_runs: list[PgbenchResult] = []
    celery_runs: list[HttpResult] = []
    batch_runs: list[HttpResult] = []
    celery_queued: list[int] = []
    batch: dict[str, Any] = {"skipped": "--batch-clients is empty"}

    with contextlib.ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="mailroom-bench-")))
        db_url = stack.enter_context(temporary_database(args.admin_url))
        env = dict(os.environ, MAILROOM_DATABASE_URL=db_url)
        for name in API_ENV_DROPPED:
            env.pop(name, None)
        print(_run_cli([_console_script("outbox-relay"), "migrate"], env).strip())
        print(
            _run_cli(
                [_console_script("ingest-api"), "create-tenant", TENANT,
                 "--sender-domain", SENDER_DOMAIN],
                env,
            ).strip()
        )  # fmt: skip
        key = _run_cli([_console_script("ingest-api"), "create-key", TENANT], env).splitlines()[-1]
        with psycopg.connect(db_url, autocommit=True) as conn:
            tenant_row = conn.execute(
                "SELECT id FROM tenants WHERE name = %s", (TENANT,)
            ).fetchone()
            assert tenant_row is not None
            tenant = Tenant(id=tenant_row[0], name=TENANT, sender_domains=(SENDER_DOMAIN,))
            server = conn.execute(
                "SELECT current_setting('server_version'), current_setting('synchronous_commit'),"
                " current_setting('fsync')"
            ).fetchone()
            assert server is not None
            statements = capture_ingest(db_url, tenant, body)
            pg_script = pgbench_script(statements, tenant.id, conn)

        script = workdir / "ingest.sql"
        script.write_text(pg_script.text)
        print(
            f"pgbench script from shared/sql/queries.sql block(s) {', '.join(pg_script.blocks)}, "
            f"as the API ran them (pipeline: {'yes' if pg_script.pipeline else 'no'}); "
            "parameters:\n"
            + "\n".join(f"  {name:<28} -> {sql_}" for name, sql_ in pg_script.parameters.items())
            + "\nthe script:\n"
            + "\n".join(f"  {line}" for line in pg_script.text.splitlines())
        )
        port = _free_port()
        log = args.api_log or workdir / "ingest-api.log"
        target = Target("127.0.0.1", port, "/v1/mails", body_bytes, _headers(key, body_bytes))
        # ingest-api serve keeps prometheus_client's multiprocess files here, not in a
        # fresh /tmp folder of its own that would outlive the run.
        (workdir / "metrics").mkdir()
        api_env = dict(env, PROMETHEUS_MULTIPROC_DIR=str(workdir / "metrics"))
        api_pid = stack.enter_context(api_server(api_env, port, args.workers, log))
        threads = os.environ.get("MAILROOM_API_THREADS", "8")
        print(
            f"ingest-api pid {api_pid} on 127.0.0.1:{port}: {args.workers} gunicorn workers x "
            f"{threads} threads, db pool {os.environ.get('MAILROOM_DB_POOL_SIZE', '8')}/worker, "
            f"log level {os.environ.get('MAILROOM_LOG_LEVEL', 'INFO')}, no rate limit"
        )
        celery_target: Target | None = None
        celery_pid = 0
        keys: RedisKeys | None = None
        celery_log = workdir / "celery-baseline.log"
        if not args.no_celery:
            keys = stack.enter_context(redis_keys(args.redis_url))
            celery_port = _free_port()
            celery_env = dict(
                os.environ,
                MAILROOM_BENCH_BROKER_URL=args.redis_url,
                MAILROOM_BENCH_KEY_PREFIX=keys.prefix,
            )
            celery_pid = stack.enter_context(
                celery_server(celery_env, celery_port, args.workers, celery_log)
            )
            celery_target = Target(
                "127.0.0.1", celery_port, "/v1/mails", body_bytes, _headers(key, body_bytes)
            )
            print(
                f"celery baseline pid {celery_pid} on 127.0.0.1:{celery_port}: same gunicorn "
                f"settings; broker {args.redis_url}, key prefix {keys.prefix}"
            )
        has_batch = _has_path(port, "/v1/mails/batch")
        if args.batch_client_counts and not has_batch:
            batch = {"skipped": "the API has no POST /v1/mails/batch"}
        print(
            f"PostgreSQL {server[0]} (synchronous_commit={server[1]}, fsync={server[2]}); "
            f"{os.cpu_count()} cores; load average "
            f"{' '.join(f'{v:.2f}' for v in load_start)} (1, 5, 15 min) at the start; "
            f"request body {len(body_bytes)} B, batch body {len(batch_bytes)} B"
        )
        print(f"{args.seconds} s per run; load generator: up to {args.load_processes} processes\n")

        try:
            for clients in args.client_counts:
                api = run_http(target, clients, args.seconds, args.load_processes, api_pid)
                api_runs.append(api)
                print(_describe(f"API     c={clients:>3}", api, "api"), flush=True)
                pg, _ = run_pgbench(
                    args.pgbench,
                    db_url,
                    script,
                    pg_script.variables,
                    clients,
                    args.seconds,
                    api_pid,
                )
                pgbench_runs.append(pg)
                print(
                    f"[pgbench c={clients:>3}] {pg.tps:8.1f} tps    latency avg "
                    f"{pg.latency_avg_ms:.3f} ms  {pg.transactions} transactions, "
                    f"{pg.failed} failed (-j {pg.threads})\n"
                    f"{'':18}{pg.cpu.describe()}",
                    flush=True,
                )
                celery: HttpResult | None = None
                if celery_target is not None and keys is not None:
                    celery = run_http(
                        celery_target, clients, args.seconds, args.load_processes, celery_pid
                    )
                    celery_runs.append(celery)
                    queued = keys.queue_length(TRANSACTIONAL_QUEUE)
                    celery_queued.append(queued)
                    keys.delete(keep_bindings=True)  # the next run starts with an empty queue
                    print(
                        _describe(f"celery  c={clients:>3}", celery, "celery")
                        + f"\n{'':18}{queued} messages were in Redis (queue emptied)",
                        flush=True,
                    )
                results.append(
                    {
                        "clients": clients,
                        **_http_row("api", api),
                        "pgbench_tps": pg.tps,
                        "pgbench_latency_avg_ms": pg.latency_avg_ms,
                        "pgbench_transactions": pg.transactions,
                        "pgbench_failed": pg.failed,
                        "pgbench_cpu": asdict(pg.cpu),
                        **_http_row("celery", celery),
                        "ratio": _ratio(api.rps, pg.tps),
                        "ratio_celery": _ratio(api.rps, celery.rps if celery else None),
                    }
                )
            if args.batch_client_counts and has_batch:
                batch_target = Target(
                    "127.0.0.1",
                    port,
                    "/v1/mails/batch",
                    batch_bytes,
                    _headers(key, batch_bytes),
                    batch=True,
                    warmup=1,
                )
                best_single = max((r.rps for r in api_runs), default=0.0)
                batch = {"size": args.batch_size, "results": []}
                for clients in args.batch_client_counts:
                    run = run_http(
                        batch_target, clients, args.seconds, args.load_processes, api_pid
                    )
                    batch_runs.append(run)
                    print(_describe(f"batch   c={clients:>3}", run, "api", "mails/s"), flush=True)
                    batch["results"].append(
                        {
                            "clients": clients,
                            "rps": run.rps,
                            "mails_per_s": run.mails_per_s,
                            "p50_ms": run.p50_ms,
                            "p99_ms": run.p99_ms,
                            "max_ms": run.max_ms,
                            "requests": run.requests,
                            "mails_accepted": run.mails_accepted,
                            "mails_rejected": run.mails_rejected,
                            "errors": run.errors,
                            "error_kinds": run.error_kinds,
                            "cpu": asdict(run.cpu),
                            "vs_single_api": _ratio(run.mails_per_s, best_single),
                        }
                    )
        except Exception:
            for name, path in (("API", log), ("celery baseline", celery_log)):
                with contextlib.suppress(OSError):
                    tail = "\n".join(path.read_text().splitlines()[-30:])
                    print(f"--- last lines of the {name} log ({path}) ---\n{tail}", file=sys.stderr)
            raise

        # Every 202 must be a row; every pgbench commit too (and the probe's mail).
        with psycopg.connect(db_url, autocommit=True) as conn:
            counts = conn.execute(
                "SELECT count(*) FILTER (WHERE detail->>'request_id' <> %s),"
                " count(*) FILTER (WHERE detail->>'request_id' = %s),"
                " (SELECT count(*) FROM outbox)"
                " FROM mail_events WHERE kind = 'accepted'",
                (PGBENCH_REQUEST_ID, PGBENCH_REQUEST_ID),
            ).fetchone()
            # pgbench, the probe and the API must have written the same rows but for
            # ids, times and request ids: one distinct shape per table.
            shapes = conn.execute(
                "SELECT (SELECT count(DISTINCT md5((to_jsonb(m) - 'id' - 'created_at'"
                "         - 'updated_at')::text)) FROM mails m),"
                " (SELECT count(DISTINCT md5((to_jsonb(o) - 'id' - 'mail_id' - 'available_at'"
                "         - 'created_at')::text)) FROM outbox o),"
                " (SELECT count(DISTINCT md5((to_jsonb(e) - 'id' - 'mail_id' - 'created_at'"
                "         || jsonb_build_object('detail', e.detail - 'request_id'))::text))"
                "  FROM mail_events e)"
            ).fetchone()
        assert counts is not None
        assert shapes is not None
        api_202 = sum(r.mails_accepted + r.warmup_mails for r in api_runs + batch_runs)
        pg_done = sum(r.transactions for r in pgbench_runs) + PROBE_MAILS
        celery_202 = sum(r.accepted + r.warmup_mails for r in celery_runs)
        integrity = {
            "api_mails_accepted": api_202,
            "api_rows": counts[0],
            "pgbench_transactions": pg_done,
            "pgbench_rows": counts[1],
            "outbox_rows": counts[2],
            "celery_202": celery_202,
            "celery_messages_in_redis": sum(celery_queued),
            "distinct_row_shapes": {"mails": shapes[0], "outbox": shapes[1], "events": shapes[2]},
            "ok": api_202 == counts[0]
            and tuple(shapes) == (1, 1, 1)
            and pg_done == counts[1]
            and counts[2] == counts[0] + counts[1]
            and celery_202 == sum(celery_queued),
        }

    load_end = os.getloadavg()
    print()
    _print_tables(results, batch)
    print(
        f"\nintegrity{'' if integrity['ok'] else ' MISMATCH'}: {api_202} mails accepted by "
        f"the API (incl. warm-up) -> {counts[0]} accepted mails; {pg_done} pgbench "
        f"transactions (incl. the probe) -> {counts[1]} mails; outbox rows {counts[2]}; "
        f"{celery_202} celery 202s -> {sum(celery_queued)} messages in Redis; distinct "
        f"mails/outbox/events rows apart from ids, times and request ids: "
        f"{shapes[0]}/{shapes[1]}/{shapes[2]} (1/1/1: pgbench wrote what the API writes)"
    )
    print(
        "load average (1, 5, 15 min): start "
        f"{' '.join(f'{v:.2f}' for v in load_start)}, end {' '.join(f'{v:.2f}' for v in load_end)}"
    )
    figures = {
        "seconds": args.seconds,
        "cores": os.cpu_count(),
        "load_average": {"start": load_start, "end": load_end},
        "api_workers": args.workers,
        "api_threads": int(threads),
        "request_body_bytes": len(body_bytes),
        "postgres": server[0],
        "synchronous_commit": server[1],
        "pgbench_script": {
            "blocks": pg_script.blocks,
            "pipeline": pg_script.pipeline,
            "parameters": pg_script.parameters,
        },
        "results": results,
        "batch": batch,
        "integrity": integrity,
    }
    if args.json:
        args.json.write_text(json.dumps(figures) + "\n")
        print(f"figures written to {args.json}")
    else:
        print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
