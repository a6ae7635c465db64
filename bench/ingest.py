"""Ingest throughput: ``POST /v1/mails`` through the real API against pgbench.

Run as ``.venv/bin/python bench/ingest.py [--seconds 10] [--clients 1,8,32]``.

In one throw-away database (``mailroom_bench_<hex>``, dropped at the end, also on
failure or Ctrl-C) this script:

1. applies the migrations and creates a tenant and an API key with the console
   scripts, exactly as an operator would;
2. starts ``ingest-api serve --workers 2`` alone (no relay: the outbox only grows);
3. for each client count, drives keep-alive ``POST /v1/mails`` load for N seconds
   from separate processes (``http.client``, one connection per thread), then runs
   pgbench for N seconds with the same transaction as the ``accept_mail`` query
   (BEGIN; the mail, its outbox row and its event in one statement; COMMIT);
4. prints requests/s, p50/p99 latency and errors for the API, pgbench's tps, the
   ratio API / pgbench per client count, and the same figures as JSON on the last
   line of stdout (or in ``--json FILE``).

The load generator, the API and PostgreSQL share the machine's cores, so the CPU
each of them used is reported too: the ratio is only meaningful next to it.
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
import socket
import subprocess
import sys
import tempfile
import threading
import time
from array import array
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from multiprocessing.queues import Queue as MpQueue
from multiprocessing.sharedctypes import Synchronized
from multiprocessing.synchronize import Event as MpEvent
from multiprocessing.synchronize import Semaphore as MpSemaphore
from pathlib import Path
from types import FrameType
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
from psycopg import sql

DEFAULT_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
TENANT = "bench"
SENDER_DOMAIN = "example.com"
WARMUP_REQUESTS = 3  # per connection, before the clock starts
REQUEST_TIMEOUT = 30.0
CLK_TCK = os.sysconf("SC_CLK_TCK")
PGBENCH_REQUEST_ID = "pgbench-" + "0" * 24  # as long as the API's uuid4().hex

# The accept_mail block of shared/sql/queries.sql, inside BEGIN/COMMIT as
# ingest_api.accept runs it (psycopg's conn.transaction() on an autocommit
# connection sends BEGIN, the statement, COMMIT). The id comes from
# gen_random_uuid() instead of the client; the jsonb values are parameters, as
# they are for the API, so the server parses them on every execution.
PGBENCH_SCRIPT = """\
BEGIN;
WITH mail AS (
    INSERT INTO mails (id, tenant_id, stream, request, status)
    VALUES (gen_random_uuid(), CAST(:tenant_id AS uuid), 'transactional',
            CAST(:request AS jsonb), 'accepted')
    RETURNING id
), outbox_row AS (
    INSERT INTO outbox (mail_id, queue)
    SELECT id, 'transactional' FROM mail
)
INSERT INTO mail_events (mail_id, kind, detail)
SELECT id, 'accepted', CAST(:event_detail AS jsonb) FROM mail;
COMMIT;
"""


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


def _stored_request(body: dict[str, Any]) -> dict[str, Any]:
    """What the API stores in mails.request for *body* (see send_mail._stored_request)."""
    return {
        "from": {"name": "Example Shop", "email": "a@example.com"},
        "to": [{"name": "Bob Example", "email": "bob@example.net"}],
        "cc": [],
        "bcc": [],
        "reply_to": None,
        "subject": body["subject"],
        "text": body["text"],
        "html": body["html"],
        "headers": {},
    }


# --------------------------------------------------------------------------- CPU accounting


def _proc_ticks(pid: int) -> int:
    """utime + stime of one process, in clock ticks (0 if it is gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0
    fields = stat[stat.rindex(")") + 2 :].split()
    return int(fields[11]) + int(fields[12])


def _process_tree(pid: int) -> list[int]:
    pids = [pid]
    for task in Path(f"/proc/{pid}/task").glob("*/children"):
        with contextlib.suppress(OSError):
            for child in task.read_text().split():
                pids.extend(_process_tree(int(child)))
    return pids


def _machine_ticks() -> tuple[int, int]:
    """(busy, total) clock ticks of all cores, from /proc/stat."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:9]]
    idle = values[3] + values[4]  # idle + iowait
    return sum(values) - idle, sum(values)


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
    """Cores used during a run (2.0 = both cores of a 2-core machine busy)."""

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

    def describe(self) -> str:
        rest = max(self.machine - self.api - self.loadgen - self.pgbench, 0.0)
        return (
            f"cores busy {self.machine:.2f}/{os.cpu_count()}: api {self.api:.2f}, "
            f"load generator {self.loadgen:.2f}, pgbench {self.pgbench:.2f}, "
            f"rest (postgres + other tenants) {rest:.2f}"
        )


# --------------------------------------------------------------------------- load generator


@dataclass(frozen=True)
class Target:
    host: str
    port: int
    body: bytes
    headers: dict[str, str]


@dataclass
class ThreadResult:
    ok_latencies: array[float] = field(default_factory=lambda: array("d"))
    other_latencies: array[float] = field(default_factory=lambda: array("d"))
    outcomes: Counter[str] = field(default_factory=Counter)
    warmup_accepted: int = 0
    warmup_failed: int = 0
    first_start: float = float("inf")
    last_end: float = 0.0


def _post(conn: http.client.HTTPConnection, target: Target) -> str:
    """One request; the outcome is the status code or the exception's name."""
    try:
        conn.request("POST", "/v1/mails", body=target.body, headers=target.headers)
        response = conn.getresponse()
        response.read()
        if response.will_close:
            conn.close()
        return str(response.status)
    except (OSError, http.client.HTTPException) as exc:
        conn.close()  # the next request reconnects
        return type(exc).__name__


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
        for _ in range(WARMUP_REQUESTS):
            if _post(conn, target) == "202":
                result.warmup_accepted += 1
            else:
                result.warmup_failed += 1
    finally:
        ready.release()
    go.wait()
    deadline = start_at.value + seconds
    now = time.monotonic()
    result.first_start = now
    while now < deadline:
        outcome = _post(conn, target)
        end = time.monotonic()
        (result.ok_latencies if outcome == "202" else result.other_latencies).append(end - now)
        result.outcomes[outcome] += 1
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
            "warmup_accepted": sum(r.warmup_accepted for r in per_thread),
            "warmup_failed": sum(r.warmup_failed for r in per_thread),
            "first_start": min(r.first_start for r in per_thread),
            "last_end": max(r.last_end for r in per_thread),
            "cpu_seconds": usage.ru_utime + usage.ru_stime,
        }
    )


def _percentile(sorted_values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile of already sorted values (nan if there are none)."""
    if not sorted_values:
        return float("nan")
    rank = max(1, round(fraction * len(sorted_values) + 0.5))
    return sorted_values[min(rank, len(sorted_values)) - 1]


@dataclass
class ApiResult:
    clients: int
    seconds: float
    requests: int
    accepted: int
    errors: int
    error_kinds: dict[str, int]
    rps: float
    p50_ms: float
    p99_ms: float
    max_ms: float
    warmup_accepted: int
    cpu: CpuUse


def run_api(
    target: Target, clients: int, seconds: float, processes: int, api_pid: int
) -> ApiResult:
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
        before = CpuSample.take(api_pid)
        start_at.value = time.monotonic()
        go.set()
        for _ in procs:
            payloads.append(results.get(timeout=seconds + REQUEST_TIMEOUT + 60))
        after = CpuSample.take(api_pid)
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
    return ApiResult(
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
        warmup_accepted=sum(p["warmup_accepted"] for p in payloads),
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


def _database_url(admin_url: str, dbname: str) -> str:
    parts = urlsplit(admin_url)
    return urlunsplit((parts.scheme, parts.netloc, "/" + dbname, parts.query, parts.fragment))


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


def _console_script(name: str) -> str:
    path = Path(sys.executable).parent / name  # the venv's bin/, not resolved
    if not path.exists():
        raise RuntimeError(f"{path} not found: run this with the project's virtualenv python")
    return str(path)


def _run_cli(argv: list[str], env: dict[str, str]) -> str:
    done = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv[:3])} failed ({done.returncode}):\n{done.stderr}")
    return done.stdout


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _wait_ready(proc: subprocess.Popen[bytes], port: int, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"ingest-api exited with {proc.returncode} before it was ready")
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
    raise RuntimeError(f"ingest-api was not ready on port {port} within {timeout:.0f} s")


@contextlib.contextmanager
def api_server(env: dict[str, str], port: int, workers: int, log: Path) -> Iterator[int]:
    """``ingest-api serve`` in its own session; SIGTERM, then SIGKILL after 10 s."""
    argv = [_console_script("ingest-api"), "serve", "--bind", f"127.0.0.1:{port}"]
    argv += ["--workers", str(workers)]
    with log.open("wb") as log_file:
        proc = subprocess.Popen(
            argv, env=env, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        _wait_ready(proc, port)
        yield proc.pid
    finally:
        if proc.poll() is None:
            workers_pids = _process_tree(proc.pid)[1:]
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                print("ingest-api did not stop in 10 s; sending SIGKILL", flush=True)
                for pid in [proc.pid, *workers_pids]:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                proc.wait()
        print(f"ingest-api stopped (exit status {proc.returncode})", flush=True)


def _raise_keyboard_interrupt(_signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt


# --------------------------------------------------------------------------- main


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--seconds", type=int, default=10, help="duration of each run")
    parser.add_argument("--clients", default="1,8,32", help="comma-separated client counts")
    parser.add_argument(
        "--admin-url",
        default=os.environ.get("MAILROOM_TEST_DATABASE_URL") or DEFAULT_ADMIN_URL,
        help="a database URL allowed to CREATE/DROP DATABASE (env MAILROOM_TEST_DATABASE_URL)",
    )
    parser.add_argument("--workers", type=int, default=2, help="gunicorn workers of the API")
    parser.add_argument(
        "--load-processes", type=int, default=2, help="processes of the load generator"
    )
    parser.add_argument("--pgbench", default="/usr/bin/pgbench", help="the pgbench binary")
    parser.add_argument("--json", type=Path, help="write the JSON figures here, not to stdout")
    parser.add_argument("--api-log", type=Path, help="keep the API's log in this file")
    args = parser.parse_args(argv)
    try:
        args.client_counts = [int(c) for c in args.clients.split(",") if c.strip()]
    except ValueError:
        parser.error("--clients must be comma-separated integers, e.g. 1,8,32")
    if not args.client_counts or min(args.client_counts) < 1 or args.seconds < 1:
        parser.error("--clients must be positive integers and --seconds at least 1")
    return args


def _print_table(rows: list[dict[str, Any]]) -> None:
    header = (
        f"{'clients':>7} | {'API req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'errors':>6} | "
        f"{'pgbench tps':>11} {'lat ms':>7} | {'API/pgbench':>11}"
    )
    print(header)
    print("-" * len(header))
    for row in rows:
        print(
            f"{row['clients']:>7} | {row['api_rps']:>9.1f} {row['api_p50_ms']:>8.2f} "
            f"{row['api_p99_ms']:>8.2f} {row['api_errors']:>6} | "
            f"{row['pgbench_tps']:>11.1f} {row['pgbench_latency_avg_ms']:>7.2f} | "
            f"{row['ratio']:>11.3f}"
        )


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse_args(argv)
    signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    body = _mail_body()
    stored = _stored_request(body)
    body_bytes = json.dumps(body).encode()
    results: list[dict[str, Any]] = []
    api_runs: list[ApiResult] = []
    pgbench_runs: list[PgbenchResult] = []

    with contextlib.ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="mailroom-bench-")))
        db_url = stack.enter_context(temporary_database(args.admin_url))
        env = dict(os.environ, MAILROOM_DATABASE_URL=db_url)
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
            tenant_id = str(tenant_row[0])
            server = conn.execute(
                "SELECT current_setting('server_version'), current_setting('synchronous_commit'),"
                " current_setting('fsync')"
            ).fetchone()
            assert server is not None

        script = workdir / "accept_mail.sql"
        script.write_text(PGBENCH_SCRIPT)
        pgbench_vars = {
            "tenant_id": tenant_id,
            "request": json.dumps(stored),
            "event_detail": json.dumps({"request_id": PGBENCH_REQUEST_ID}),
        }
        port = _free_port()
        log = args.api_log or workdir / "ingest-api.log"
        target = Target(
            "127.0.0.1",
            port,
            body_bytes,
            {
                "Authorization": f"Bearer {key}",
                "Content-Type": "application/json",
                "Content-Length": str(len(body_bytes)),
            },
        )
        api_pid = stack.enter_context(api_server(env, port, args.workers, log))
        print(
            f"ingest-api pid {api_pid} on 127.0.0.1:{port}: {args.workers} gunicorn workers x "
            f"{os.environ.get('MAILROOM_API_THREADS', '8')} threads, db pool "
            f"{os.environ.get('MAILROOM_DB_POOL_SIZE', '8')}/worker, log level "
            f"{os.environ.get('MAILROOM_LOG_LEVEL', 'INFO')}"
        )
        print(
            f"PostgreSQL {server[0]} (synchronous_commit={server[1]}, fsync={server[2]}); "
            f"{os.cpu_count()} cores; load average {os.getloadavg()[0]:.2f}; "
            f"request body {len(body_bytes)} B, stored request {len(pgbench_vars['request'])} B"
        )
        print(f"{args.seconds} s per run; load generator: up to {args.load_processes} processes\n")

        try:
            for clients in args.client_counts:
                api = run_api(target, clients, args.seconds, args.load_processes, api_pid)
                api_runs.append(api)
                errors = f" {api.error_kinds}" if api.errors else ""
                print(
                    f"[API     c={clients:>3}] {api.rps:8.1f} req/s  p50 {api.p50_ms:7.2f} ms  "
                    f"p99 {api.p99_ms:7.2f} ms  max {api.max_ms:7.2f} ms  "
                    f"{api.accepted} accepted, {api.errors} errors{errors}\n"
                    f"                  {api.cpu.describe()}",
                    flush=True,
                )
                pg, _ = run_pgbench(
                    args.pgbench, db_url, script, pgbench_vars, clients, args.seconds, api_pid
                )
                pgbench_runs.append(pg)
                print(
                    f"[pgbench c={clients:>3}] {pg.tps:8.1f} tps    latency avg "
                    f"{pg.latency_avg_ms:.3f} ms  {pg.transactions} transactions, "
                    f"{pg.failed} failed (-j {pg.threads})\n"
                    f"                  {pg.cpu.describe()}",
                    flush=True,
                )
                results.append(
                    {
                        "clients": clients,
                        "api_rps": api.rps,
                        "api_p50_ms": api.p50_ms,
                        "api_p99_ms": api.p99_ms,
                        "api_max_ms": api.max_ms,
                        "api_requests": api.requests,
                        "api_accepted": api.accepted,
                        "api_errors": api.errors,
                        "api_error_kinds": api.error_kinds,
                        "api_cpu": asdict(api.cpu),
                        "pgbench_tps": pg.tps,
                        "pgbench_latency_avg_ms": pg.latency_avg_ms,
                        "pgbench_transactions": pg.transactions,
                        "pgbench_failed": pg.failed,
                        "pgbench_cpu": asdict(pg.cpu),
                        "ratio": round(api.rps / pg.tps, 3) if pg.tps else None,
                    }
                )
        except Exception:
            print(f"--- last lines of the API log ({log}) ---", file=sys.stderr)
            with contextlib.suppress(OSError):
                print("\n".join(log.read_text().splitlines()[-30:]), file=sys.stderr)
            raise

        # Every 202 must be a row; every pgbench commit too.
        with psycopg.connect(db_url, autocommit=True) as conn:
            counts = conn.execute(
                "SELECT count(*) FILTER (WHERE detail->>'request_id' <> %s),"
                " count(*) FILTER (WHERE detail->>'request_id' = %s),"
                " (SELECT count(*) FROM outbox)"
                " FROM mail_events WHERE kind = 'accepted'",
                (PGBENCH_REQUEST_ID, PGBENCH_REQUEST_ID),
            ).fetchone()
        assert counts is not None
        api_202 = sum(r.accepted + r.warmup_accepted for r in api_runs)
        pg_done = sum(r.transactions for r in pgbench_runs)
        integrity = {
            "api_202": api_202,
            "api_rows": counts[0],
            "pgbench_transactions": pg_done,
            "pgbench_rows": counts[1],
            "outbox_rows": counts[2],
        }

    print()
    _print_table(results)
    print(
        f"\nintegrity: {api_202} API 202s (incl. warm-up) -> {counts[0]} accepted mails; "
        f"{pg_done} pgbench transactions -> {counts[1]} mails; outbox rows {counts[2]}"
    )
    figures = {
        "seconds": args.seconds,
        "cores": os.cpu_count(),
        "api_workers": args.workers,
        "api_threads": int(os.environ.get("MAILROOM_API_THREADS", "8")),
        "request_body_bytes": len(body_bytes),
        "postgres": server[0],
        "synchronous_commit": server[1],
        "results": results,
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
