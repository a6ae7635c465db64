"""What the scenario scripts share: throw-away databases and Redis keys, services, a CPU meter,
percentiles, py-spy summaries and the report. Only ``mailroom_bench_<hex>*`` databases and keys
under ``mailroom-bench-<hex>:`` are ever created, dropped or deleted.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import http.client
import itertools
import json
import math
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psycopg
import redis
from psycopg import sql
from psycopg.rows import dict_row

# --- app internals the harness uses (update here when the apps move things) --------------------
from ingest_api.new_mails import new_mail
from ingest_api.schemas.mail import SendMailSchema
from outbox_relay.publish import Publisher, TaskMessage
from shared.config import Settings
from shared.store.mails import NewMail, accept_mails
from shared.store.tenants import Tenant

# -----------------------------------------------------------------------------------------------

DEFAULT_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
TENANT = "bench"
SENDER_DOMAIN = "example.com"
SEND_BATCH = Settings().send_batch_size  # mails per send_mails message, as the relay's default
MESSAGE_ID_DOMAIN = "bench.test"
FILL_CHUNK = 1000  # mails per pre-fill transaction
POLL_SECONDS = 0.05
STOP_TIMEOUT = 20.0
CLK_TCK = os.sysconf("SC_CLK_TCK")
PY_SPY_FALLBACK = "/tmp/pyspy/bin/py-spy"  # where `pip install py-spy --target` puts it

ORDER_MAIL: dict[str, Any] = {  # ingest.py, relay.py: ~0.5 KB of text, ~1 KB of HTML
    "from": "Example Shop <a@example.com>",
    "to": ["Bob Example <bob@example.net>"],
    "subject": "Your order #A-20931 has shipped",
    "text": (
        "Hello Bob,\n\nYour order #A-20931 has shipped and should arrive within three working "
        "days. You can follow the parcel with the tracking link below; the carrier updates it "
        "a few times a day.\n\nTracking: https://shop.example.com/orders/A-20931/tracking\n\n"
        "Items: 1 x Walnut desk organiser, 2 x Linen notebook (A5, dotted)\n"
        "Total charged: EUR 54.80 to the card ending 4242.\n\n"
        "If something is wrong with your order, reply to this mail and we will sort it out.\n\n"
        "-- \nThe Example Shop team\n"
    ),
    "html": (
        '<!doctype html><html><body style="font-family:sans-serif;color:#222"><p>Hello Bob,</p>'
        "<p>Your order <strong>#A-20931</strong> has shipped and should arrive within three "
        "working days. You can follow the parcel with the tracking link below; the carrier "
        'updates it a few times a day.</p><p><a href="https://shop.example.com/orders/A-20931/'
        'tracking" style="color:#0a58ca">Track your parcel</a></p>'
        '<table cellpadding="4" style="border-collapse:collapse">'
        '<tr><td>1 &times; Walnut desk organiser</td><td align="right">EUR 32.90</td></tr>'
        '<tr><td>2 &times; Linen notebook (A5, dotted)</td><td align="right">EUR 21.90</td></tr>'
        '<tr><td><strong>Total</strong></td><td align="right"><strong>EUR 54.80</strong>'
        "</td></tr></table><p>If something is wrong with your order, reply to this mail and we "
        'will sort it out.</p><p style="color:#888">The Example Shop team</p></body></html>'
    ),
}
_PARAGRAPH = (
    "Your order #A-20931 has shipped and should arrive within three working days. Track it at "
    "https://shop.example.com/orders/A-20931/tracking and keep this mail for your records; the "
    "invoice is attached to your account page. "
)
_ROW = (
    '<tr><td style="padding:4px 8px">1 &times; Walnut desk organiser</td>'
    '<td style="padding:4px 8px;text-align:right">EUR 32.90</td></tr>'
)
LONG_ORDER_MAIL: dict[str, Any] = {  # worker.py: 5.7 KB as the worker composes it
    "from": "Example Shop <shop@example.com>",
    "to": ["Bob Example <bob@example.net>"],
    "subject": "Your order #A-20931 has shipped",
    "text": "Hello Bob,\n\n" + (_PARAGRAPH + "\n\n") * 11 + "-- \nThe Example Shop team\n",
    "html": (
        '<!doctype html><html><body style="font-family:sans-serif"><p>Hello Bob,</p>'
        + f"<p>{_PARAGRAPH}</p>" * 5
        + f"<table>{_ROW * 8}</table><p>The Example Shop team</p></body></html>"
    ),
}


def console_script(name: str) -> str:
    return str(Path(sys.executable).parent / name)  # the venv's bin/, not resolved


def run_cli(argv: list[str], env: dict[str, str]) -> str:
    done = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv[:3])} failed ({done.returncode}):\n{done.stderr}")
    return done.stdout.strip()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def int_list(text: str) -> list[int]:
    return [int(c) for c in text.split(",") if c.strip()]


def percentile(sorted_values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile (1.0: the maximum) of sorted values; nan if there are none."""
    if not sorted_values:
        return float("nan")
    rank = max(1, round(fraction * len(sorted_values) + 0.5))
    return sorted_values[min(rank, len(sorted_values)) - 1]


def ms_stats(seconds: Sequence[float], digits: int = 1) -> dict[str, float | int]:
    ordered = sorted(seconds)
    quantiles = {"p50_ms": 0.50, "p95_ms": 0.95, "p99_ms": 0.99, "max_ms": 1.0}
    stats = {k: round(percentile(ordered, q) * 1000, digits) for k, q in quantiles.items()}
    return {"n": len(ordered), **stats}


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    return None if numerator is None or not denominator else round(numerator / denominator, 3)


def fmt(value: float | None, spec: str = ".1f") -> str:
    return "-" if value is None else format(value, spec)


def cores_text(cpu: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.2f}" for k, v in cpu.items())


def tail(path: Path, lines: int = 30) -> str:
    with contextlib.suppress(OSError):
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    return "(no log)"


def machine_ticks() -> tuple[int, int]:
    """(busy, total) clock ticks of all cores."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:9]]
    return sum(values) - values[3] - values[4], sum(values)  # minus idle and iowait


def proc_ticks(pid: int) -> int:
    """utime + stime of one process (0 if it is gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0
    fields = stat[stat.rindex(")") + 2 :].split()
    return int(fields[11]) + int(fields[12])


def process_tree(pid: int) -> list[int]:
    pids = [pid]
    for task in Path(f"/proc/{pid}/task").glob("*/children"):
        with contextlib.suppress(OSError):
            for child in task.read_text().split():
                pids.extend(process_tree(int(child)))
    return pids


class CpuMeter:
    """Cores used (2.0: two busy) between start() and stop() by process groups and the box."""

    def __init__(self, groups: dict[str, list[int]]) -> None:
        self.groups = groups

    def start(self) -> CpuMeter:
        self._before = {g: {p: proc_ticks(p) for p in pids} for g, pids in self.groups.items()}
        self._machine = machine_ticks()
        self._wall = time.monotonic()
        return self

    def stop(self, **cpu_seconds: float) -> dict[str, float]:
        """*cpu_seconds*: groups measured otherwise (rusage reported by exited processes)."""
        wall = max(time.monotonic() - self._wall, 1e-9)
        busy, total = machine_ticks()
        used = {
            group: round(sum(proc_ticks(p) - t for p, t in before.items()) / CLK_TCK / wall, 2)
            for group, before in self._before.items()
        }
        used |= {group: round(seconds / wall, 2) for group, seconds in cpu_seconds.items()}
        busy_share = (busy - self._machine[0]) / max(total - self._machine[1], 1)
        used["machine"] = round((os.cpu_count() or 1) * busy_share, 2)
        return used


def cpu_groups(
    conn: psycopg.Connection[Any], keys: RedisKeys, **roots: list[int]
) -> dict[str, list[int]]:
    """The trees of *roots*, the backends of *conn*'s database but its own, and redis-server."""
    groups = {name: [p for r in pids for p in process_tree(r)] for name, pids in roots.items()}
    rows = conn.execute(
        "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
        "AND pid <> pg_backend_pid()"
    ).fetchall()
    groups["pg_backends"] = [int(row[0]) for row in rows]
    redis_pid = int(keys.client.info("server").get("process_id", 0))
    with contextlib.suppress(OSError):
        if Path(f"/proc/{redis_pid}/comm").read_text().startswith("redis"):
            groups["redis"] = [redis_pid]
    return groups


@contextlib.contextmanager
def service(
    name: str, argv: list[str], env: dict[str, str], log: Path, cwd: Path | None = None
) -> Iterator[int]:
    """A process in its own session; on the way out SIGTERM, then SIGKILL to its tree."""
    with log.open("wb") as log_file:
        proc = subprocess.Popen(
            argv, env=env, cwd=cwd, stdout=log_file, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    try:
        yield proc.pid
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited early with {proc.returncode}:\n{tail(log)}")
    finally:
        if proc.poll() is None:
            tree = process_tree(proc.pid)
            proc.terminate()
            try:
                proc.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                print(f"{name} did not stop in {STOP_TIMEOUT:.0f} s; SIGKILL", flush=True)
                for pid in tree:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                proc.wait()


def check_alive(pids: dict[str, int], logs: dict[str, Path]) -> None:
    for name, pid in pids.items():
        try:
            state = Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0]
        except OSError:
            state = "Z"
        if state == "Z":
            raise RuntimeError(f"{name} died; last lines of its log:\n{tail(logs[name])}")


def wait_ready(
    name: str, pid: int, log: Path, ready: Callable[[], bool], timeout: float = 90.0
) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        check_alive({name: pid}, {name: log})
        if time.monotonic() > deadline:
            raise RuntimeError(f"{name} was not ready within {timeout:.0f} s:\n{tail(log)}")
        time.sleep(0.1)


def wait_http_ready(name: str, pid: int, port: int, log: Path) -> None:
    """Until ``GET /readyz`` on 127.0.0.1:*port* answers 200."""

    def ready() -> bool:
        conn, status = http.client.HTTPConnection("127.0.0.1", port, timeout=2), 0
        with contextlib.suppress(OSError, http.client.HTTPException):
            conn.request("GET", "/readyz")
            status = conn.getresponse().status
        conn.close()
        return status == 200

    wait_ready(name, pid, log, ready)


def json_headers(key: str, body: bytes) -> dict[str, str]:
    length = str(len(body))
    return {
        "Authorization": f"Bearer {key}",
        "Content-Type": "application/json",
        "Content-Length": length,
    }


def post(
    conn: http.client.HTTPConnection, path: str, body: bytes, headers: dict[str, str]
) -> tuple[str, bytes]:
    """One keep-alive POST: the status code (or the exception's name, then reconnect), answer."""
    try:
        conn.request("POST", path, body=body, headers=headers)
        response = conn.getresponse()
        answer = response.read()
        if response.will_close:
            conn.close()
    except (OSError, http.client.HTTPException) as exc:
        conn.close()
        return type(exc).__name__, b""
    return str(response.status), answer


def api_argv(port: int, workers: int) -> list[str]:
    """``ingest-api serve``, as an operator starts it."""
    bind = f"127.0.0.1:{port}"
    return [console_script("ingest-api"), "serve", "--bind", bind, "--workers", str(workers)]


def service_env(db_url: str, keys: RedisKeys | None = None, **extra: str) -> dict[str, str]:
    """Our environment without MAILROOM_*, plus database, broker and MAILROOM_<extra>."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAILROOM_")}
    env["MAILROOM_DATABASE_URL"] = db_url
    if keys is not None:
        env |= {"MAILROOM_BROKER_URL": keys.url, "MAILROOM_BROKER_KEY_PREFIX": keys.prefix}
    return env | {f"MAILROOM_{name}": value for name, value in extra.items()}


class Databases:
    """``mailroom_bench_<hex>`` and its copies (CREATE DATABASE ... TEMPLATE)."""

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
        return urlsplit(self.admin_url)._replace(path="/" + name).geturl()

    def clone(self, template: str | None = None) -> tuple[str, str]:
        """A copy of *template* (default: the base) under a fresh name: (name, url)."""
        name = f"{self.base}_{next(self._clones)}"
        return name, self._create(name, template or self.base)

    @contextlib.contextmanager
    def copy(self, template: str | None = None) -> Iterator[tuple[str, str]]:
        """A clone, dropped on the way out."""
        name, url = self.clone(template)
        try:
            yield name, url
        finally:
            self.drop(name)

    def drop(self, name: str) -> None:
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            drop = sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)")
            conn.execute(drop.format(sql.Identifier(name)))
        self.created.remove(name)

    def drop_all(self) -> None:
        names = self.created[::-1]
        for name in names:
            self.drop(name)
        if names:
            print(f"dropped databases {', '.join(names)}", flush=True)


class RedisKeys:
    """Keys under one fresh prefix of a shared Redis; only those are ever deleted."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.prefix = f"mailroom-bench-{secrets.token_hex(6)}:"
        self.client = redis.Redis.from_url(url)

    def llen(self, key: str) -> int:
        return int(self.client.llen(self.prefix + key))

    def delete(self, *, keep_bindings: bool = False) -> int:
        """Delete the keys under the prefix (all, or all but kombu's queue bindings)."""
        bindings = (self.prefix + "_kombu.binding").encode()
        doomed = [
            key
            for key in self.client.scan_iter(match=self.prefix + "*", count=1000)
            if not (keep_bindings and key.startswith(bindings))
        ]
        return sum(
            int(self.client.unlink(*doomed[i : i + 500])) for i in range(0, len(doomed), 500)
        )


@dataclasses.dataclass
class Bench:
    """What a scenario's ``with harness.bench(args)`` block works in."""

    dbs: Databases
    keys: RedisKeys
    workdir: Path
    base_url: str
    tenant: Tenant
    api_key: str
    postgres: dict[str, str]


@contextlib.contextmanager
def bench(args: argparse.Namespace) -> Iterator[Bench]:
    """A migrated base database with tenant and API key, a Redis prefix, a work folder."""
    dbs = Databases(args.admin_url)
    keys = RedisKeys(args.redis_url)
    keys.client.ping()
    with tempfile.TemporaryDirectory(prefix="mailroom-bench-") as workdir:
        try:
            base_url = dbs._create(dbs.base, None)
            print(f"created database {dbs.base}", flush=True)
            env = service_env(base_url)
            print(run_cli([console_script("outbox-relay"), "migrate"], env))
            ingest_api = console_script("ingest-api")
            create = [ingest_api, "create-tenant", TENANT, "--sender-domain", SENDER_DOMAIN]
            print(run_cli(create, env))
            api_key = run_cli([ingest_api, "create-key", TENANT], env).splitlines()[-1]
            with psycopg.connect(base_url, autocommit=True, row_factory=dict_row) as conn:
                row = conn.execute(
                    "SELECT (SELECT id FROM tenants WHERE name = %s) AS tenant_id,"
                    " current_setting('server_version') AS version,"
                    " current_setting('synchronous_commit') AS synchronous_commit,"
                    " current_setting('fsync') AS fsync,"
                    " current_setting('shared_buffers') AS shared_buffers",
                    (TENANT,),
                ).fetchone()
            assert row is not None
            postgres = {k: str(v) for k, v in row.items() if k != "tenant_id"}
            print(
                f"PostgreSQL {postgres['version']} (synchronous_commit="
                f"{postgres['synchronous_commit']}, fsync={postgres['fsync']}, shared_buffers="
                f"{postgres['shared_buffers']}); Redis key prefix {keys.prefix}",
                flush=True,
            )
            tenant = Tenant(id=row["tenant_id"], name=TENANT, sender_domains=(SENDER_DOMAIN,))
            yield Bench(dbs, keys, Path(workdir), base_url, tenant, api_key, postgres)
        finally:
            print(f"deleted {keys.delete()} Redis keys under {keys.prefix}", flush=True)
            keys.client.close()
            dbs.drop_all()


@dataclasses.dataclass
class Drained:
    """Services draining a pre-filled database, timed from the first poll that saw progress."""

    startup_seconds: float
    seconds: float
    rate: float  # work left at the first poll that saw progress / seconds
    rate_with_startup: float
    poll_ms: float  # mean duration of the progress query
    cpu: dict[str, float]
    profile: dict[str, Any] | None


Profile = tuple[str, Sequence[tuple[str, tuple[str, ...]]], Path]  # py-spy, buckets, output


def drain(
    db_url: str,
    remaining: Callable[[psycopg.Connection[Any]], int],
    total: int,
    services: tuple[dict[str, int], dict[str, Path]],
    groups: dict[str, list[int]],
    keys: RedisKeys,
    *,
    timeout: float,
    profile: Profile | None = None,
) -> Drained:
    """Poll ``remaining(conn)`` until 0 while *services* (pids, logs) run; from the first poll
    that saw progress, meter *groups* (name: root pids) with cpu_groups and py-spy the first
    service if *profile*."""
    pids, logs = services
    spawned = time.monotonic()
    first: tuple[float, int] | None = None
    polls: list[float] = []
    spy: subprocess.Popen[bytes] | None = None  # if drain fails, py-spy exits with its target
    with psycopg.connect(db_url, autocommit=True) as conn:
        while True:
            asked = time.monotonic()
            left = remaining(conn)
            now = time.monotonic()
            polls.append(now - asked)
            if first is None and left < total:
                first = (now, left)
                meter = CpuMeter(cpu_groups(conn, keys, **groups)).start()
                if profile is not None:
                    spy = start_py_spy(profile[0], next(iter(pids.values())), profile[2])
            if left <= 0:
                break
            if now - spawned > timeout:
                log = tail(next(iter(logs.values())))
                raise RuntimeError(f"{left} of {total} left after {timeout:.0f} s:\n{log}")
            check_alive(pids, logs)
            time.sleep(POLL_SECONDS)
    assert first is not None
    cpu = meter.stop()
    summary = stop_py_spy(spy, profile[2], profile[1]) if spy and profile else None
    seconds = now - first[0]
    rate = round(first[1] / seconds, 1) if seconds > 0 else 0.0
    with_startup = round(total / (now - spawned), 1)
    poll_ms = round(1000 * sum(polls) / len(polls), 2)
    return Drained(
        round(first[0] - spawned, 3), round(seconds, 3), rate, with_startup, poll_ms, cpu, summary
    )


def stored_mail(body: dict[str, Any], tenant: Tenant) -> NewMail:
    """A mail as POST /v1/mails stores it: the API's schema and ``new_mail``."""
    return new_mail(SendMailSchema().load(body), tenant)


def prefill(db_url: str, tenant: Tenant, body: dict[str, Any], count: int) -> float:
    """*count* copies of *body* by the API's statement, then ANALYZE: the inserts' seconds."""
    template = stored_mail(body, tenant)
    started = time.monotonic()
    with psycopg.connect(db_url, autocommit=True, row_factory=dict_row) as conn:
        for offset in range(0, count, FILL_CHUNK):
            chunk = range(min(FILL_CHUNK, count - offset))
            mails = [dataclasses.replace(template, id=uuid.uuid4()) for _ in chunk]
            with conn.transaction():
                accept_mails(conn, tenant.id, mails, request_id="bench-prefill")
        elapsed = time.monotonic() - started
        conn.execute("ANALYZE")
    return elapsed


def publisher(keys: RedisKeys) -> Publisher:
    """The relay's Publisher, writing under our key prefix."""
    return Publisher(Settings(broker_url=keys.url, broker_key_prefix=keys.prefix))


def send_mails_messages(
    mail_ids: Sequence[uuid.UUID], queue: str, batch: int = SEND_BATCH
) -> list[TaskMessage]:
    """The messages the relay publishes for these mails: batches of *batch* ids."""
    return [
        TaskMessage.send_mails(mail_ids[start : start + batch], queue)
        for start in range(0, len(mail_ids), batch)
    ]


class NullPublisher(Publisher):
    """Takes every message and sends none: the relay's SQL alone."""

    def __init__(self) -> None:
        super().__init__(Settings(broker_url=DEFAULT_REDIS_URL))
        self.taken = 0

    def publish(self, messages: Sequence[TaskMessage]) -> None:
        self.taken += sum(len(message.object_ids) for message in messages)  # mails


def find_py_spy() -> str | None:
    return shutil.which("py-spy") or (PY_SPY_FALLBACK if Path(PY_SPY_FALLBACK).exists() else None)


def start_py_spy(py_spy: str, pid: int, output: Path) -> subprocess.Popen[bytes]:
    """``py-spy record --subprocesses --idle`` at 200 Hz in raw format (stopped by SIGINT)."""
    argv = [py_spy, "record", "--pid", str(pid), "--subprocesses", "--idle", "--rate", "200"]
    argv += ["--format", "raw", "--output", str(output), "--nonblocking"]
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


_FRAME = re.compile(r"^(?P<name>.*) \((?P<path>[^()]*?)(?::(?P<line>\d+))?\)$")
_PATH_MARKERS = ("site-packages/", "/work/main/", "lib/python3")


def _frame(item: str) -> str:
    """``name (path:line)`` as ``name (path)``, the path from its package on."""
    if (match := _FRAME.match(item)) is None:
        return item
    path = match["path"]
    marker = next((m for m in _PATH_MARKERS if m in path), None)
    return f"{match['name']} ({path.split(marker, 1)[1] if marker else path})"


def stop_py_spy(
    spy: subprocess.Popen[bytes], output: Path, buckets: Sequence[tuple[str, tuple[str, ...]]]
) -> dict[str, Any]:
    """Stop py-spy; per process, the share of samples per bucket (the first one with a marker
    in one of the stack's frames) and the top innermost frames. Background threads (idle by
    design) are left out."""
    spy.send_signal(signal.SIGINT)  # it writes its output on SIGINT
    _, stderr = spy.communicate(timeout=30)
    if not output.exists():
        return {"error": f"py-spy wrote nothing: {stderr.decode(errors='replace')[-500:]}"}
    shares: dict[str, Counter[str]] = {}
    leaves: dict[str, Counter[str]] = {}
    for line in output.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not count_text.isdigit():
            continue
        raw = stack.split(";")
        depth, process = 0, "process"
        while raw and raw[0].startswith("process "):  # a child's stack nests its parents
            depth, process, raw = depth + 1, raw[0].split(":", 1)[0], raw[1:]
        if not raw or any("_bootstrap (threading.py" in item for item in raw):
            continue
        process += " (main process)" if depth <= 1 else " (child)"
        frames = [_frame(item) for item in raw]
        leaves.setdefault(process, Counter())[frames[-1]] += int(count_text)
        bucket = next(
            (name for name, markers in buckets if any(k in f for f in frames for k in markers)),
            "other",
        )
        shares.setdefault(process, Counter())[bucket] += int(count_text)
    summary: dict[str, Any] = {}
    for process, counts in shares.items():
        total = sum(counts.values())
        summary[process] = {
            "samples": total,
            "buckets": {name: round(n / total, 3) for name, n in counts.most_common()},
            "top_leaf_frames": [
                (f, round(n / total, 3)) for f, n in leaves[process].most_common(10)
            ],
        }
    return summary


def print_profile(profile: dict[str, Any]) -> None:
    for process, summary in profile.items():
        if process == "error":
            print(f"  profile: {summary}")
            continue
        print(f"  {process} ({summary['samples']} samples at 200 Hz, idle included):")
        for name, share in summary["buckets"].items():
            print(f"    {share * 100:5.1f} %  {name}")
        print("    innermost frames:")
        for name, share in summary["top_leaf_frames"][:8]:
            print(f"      {share * 100:5.1f} %  {name}")


def print_table(columns: Sequence[tuple[str, str]], rows: Sequence[Sequence[Any]]) -> None:
    """Columns are (title, format spec such as ``.1f``); a ``|`` column takes no value and
    separates groups. None prints as ``-``; text is left-aligned, numbers right-aligned."""
    specs = [(title, spec) for title, spec in columns if title != "|"]
    cells = [
        [v if isinstance(v, str) else fmt(v, spec) for v, (_, spec) in zip(row, specs, strict=True)]
        for row in rows
    ]
    widths = [max([len(title), *(len(c[i]) for c in cells)]) for i, (title, _) in enumerate(specs)]
    texts = [bool(rows) and all(isinstance(row[i], str) for row in rows) for i in range(len(specs))]

    def line(values: Sequence[str]) -> str:
        justified = iter(
            v.ljust(w) if text else v.rjust(w)
            for v, w, text in zip(values, widths, texts, strict=True)
        )
        return " ".join("|" if title == "|" else next(justified) for title, _ in columns)

    header = line([title for title, _ in specs])
    print(f"{header}\n{'-' * len(header)}")
    for values in cells:
        print(line(values))


def rss_mb(pid: int) -> float | None:
    """Resident memory of one process (VmRSS) in MB; None if it is gone."""
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)  # the kernel says kB
    return None


def tree_rss_mb(pid: int) -> list[dict[str, Any]]:
    """RSS of *pid* (``parent``) and each process below it (``child``), in MB."""
    return [
        {"pid": p, "role": "parent" if p == pid else "child", "rss_mb": rss_mb(p)}
        for p in process_tree(pid)
    ]


# --- end to end: an open-loop load through the API, a sink that stamps each arrival -------------


@dataclasses.dataclass
class Sent:
    """One request of an OpenLoop (monotonic clock)."""

    scheduled: float
    started: float
    answered: float
    outcome: str  # the status code, or the exception's name
    mail_id: str | None  # a 202's mail


class OpenLoop:
    """POST *body* to ``/v1/mails`` at *rate* per second, the i-th request at start + i/rate
    whatever the answers take: an open loop, so a slow API shows as send lag instead of slowing
    the load down with it. Keep-alive connections, one per thread of this process (enough that
    each is idle most of the time at the API's usual latency). Ends after *count* requests, or
    at stop()."""

    def __init__(
        self,
        port: int,
        key: str,
        body: dict[str, Any],
        rate: float,
        *,
        count: int | None = None,
        threads: int | None = None,
    ) -> None:
        self.port, self.rate, self.count = port, rate, count
        self.payload = json.dumps(body).encode()
        self.headers = json_headers(key, self.payload)
        self.sent: list[Sent] = []  # list.append is atomic: the threads share it without a lock
        self.start_at = 0.0
        self._slots = itertools.count()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        wanted = threads or max(16, math.ceil(rate / 10))
        self._threads = [
            threading.Thread(target=self._client, daemon=True)
            for _ in range(min(wanted, count or wanted))
        ]

    def start(self) -> OpenLoop:
        self.start_at = time.monotonic() + 0.2  # every thread is waiting for its slot by then
        for thread in self._threads:
            thread.start()
        return self

    def _client(self) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        try:
            while True:
                with self._lock:
                    index = next(self._slots)
                if self.count is not None and index >= self.count:
                    break
                scheduled = self.start_at + index / self.rate
                if self._stop.wait(max(0.0, scheduled - time.monotonic())):
                    break
                started = time.monotonic()
                outcome, answer = post(conn, "/v1/mails", self.payload, self.headers)
                mail_id = str(json.loads(answer)["id"]) if outcome == "202" else None
                self.sent.append(Sent(scheduled, started, time.monotonic(), outcome, mail_id))
        finally:
            conn.close()

    def wait(self) -> list[Sent]:
        """Until *count* requests were answered; the requests in the order they were sent."""
        for thread in self._threads:
            thread.join()
        return sorted(self.sent, key=lambda s: s.started)

    def stop(self) -> list[Sent]:
        """No request after this one; wait for the answers of those under way."""
        self._stop.set()
        return self.wait()


def post_stats(sent: Sequence[Sent]) -> dict[str, Any]:
    """What an OpenLoop did: requests, outcomes, achieved rate, API latency, send lag."""
    accepted = [s for s in sent if s.mail_id]
    window = max((s.answered for s in sent), default=0.0) - min(
        (s.scheduled for s in sent), default=0.0
    )
    return {
        "posted": len(sent),
        "accepted": len(accepted),
        "outcomes": dict(Counter(s.outcome for s in sent)),
        "post_window_s": round(window, 2),
        "achieved_rate": round(len(accepted) / window, 1) if window > 0 else None,
        "api": ms_stats([s.answered - s.started for s in accepted]),
        "send_lag": ms_stats([max(0.0, s.started - s.scheduled) for s in sent]),
    }


class _ArrivalSmtp(asyncio.Protocol):
    """Just enough ESMTP to take mail (PIPELINING included, as a real MTA offers it); each mail
    is stamped when its DATA ends, before the 250 is written. Runs in ArrivalSink's child."""

    EHLO = (
        b"250-bench-sink\r\n250-PIPELINING\r\n250-8BITMIME\r\n250-SMTPUTF8\r\n250 SIZE 52428800\r\n"
    )
    MAX_LINE = 4096

    def __init__(self, out: Any) -> None:
        self.out = out
        self.buffer = bytearray()
        self.in_data = False
        self.scanned = 0  # where the search for the end of DATA goes on
        self.recipients = 0
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.write(b"220 bench-sink ESMTP\r\n")

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        self.buffer += data
        replies: list[bytes] = []
        while True:
            if self.in_data:
                end = self.buffer.find(b"\r\n.\r\n", self.scanned)
                if end < 0:
                    self.scanned = max(0, len(self.buffer) - 4)
                    break
                self._arrived(bytes(self.buffer[2 : end + 2]))
                del self.buffer[: end + 5]
                self.in_data, self.scanned, self.recipients = False, 0, 0
                replies.append(b"250 2.0.0 OK\r\n")
                continue
            end = self.buffer.find(b"\r\n")
            if end < 0:
                if len(self.buffer) > self.MAX_LINE:
                    self.transport.close()
                break
            verb = bytes(self.buffer[:4]).upper()
            del self.buffer[: end + 2]
            if verb == b"QUIT":
                self.transport.write(b"".join([*replies, b"221 2.0.0 Bye\r\n"]))
                self.transport.close()
                return
            if verb == b"DATA" and self.recipients:
                replies.append(b"354 End data with <CR><LF>.<CR><LF>\r\n")
                self.buffer[0:0] = b"\r\n"  # so that an empty mail ends at "\r\n.\r\n" too
                self.in_data = True
                continue
            self.recipients = self.recipients + 1 if verb == b"RCPT" else self.recipients
            self.recipients = 0 if verb in (b"MAIL", b"RSET") else self.recipients
            replies.append(_SMTP_REPLIES.get(verb, b"502 5.5.2 Not implemented\r\n"))
        if replies:
            self.transport.write(b"".join(replies))

    def _arrived(self, content: bytes) -> None:
        now = time.monotonic()
        match = _MESSAGE_ID.search(content.split(b"\r\n\r\n", 1)[0])
        mail_id = match.group(1) if match else b"-"
        self.out.write(b"%s %r\n" % (mail_id, now))
        self.out.flush()


_MESSAGE_ID = re.compile(rb"^Message-ID:[ \t]*<([^@>\s]+)@", re.IGNORECASE | re.MULTILINE)
_SMTP_REPLIES = {
    b"EHLO": _ArrivalSmtp.EHLO,
    b"HELO": b"250 bench-sink\r\n",
    b"MAIL": b"250 2.1.0 OK\r\n",
    b"RCPT": b"250 2.1.5 OK\r\n",
    b"DATA": b"503 5.5.1 RCPT first\r\n",  # DATA with recipients is handled above
    b"RSET": b"250 2.0.0 OK\r\n",
    b"NOOP": b"250 2.0.0 OK\r\n",
}


def serve_arrivals(port: int) -> None:
    """ArrivalSink's child: an SMTP server on 127.0.0.1:*port* until SIGTERM; one stdout line
    ``<Message-ID local part> <time.monotonic()>`` per mail, after a first line ``ready``."""

    async def serve() -> None:
        out = sys.stdout.buffer
        loop = asyncio.get_running_loop()
        server = await loop.create_server(lambda: _ArrivalSmtp(out), "127.0.0.1", port)
        stop = asyncio.Event()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        out.write(b"ready\n")
        out.flush()
        await stop.wait()
        server.close()

    asyncio.run(serve())


class ArrivalSink:
    """An SMTP sink in a child process that counts receipts per Message-ID (the worker writes
    ``<mail id@domain>``) and stamps each mail's first arrival with ``time.monotonic()``: one
    clock for every process of the machine, so that arrivals compare with the times this
    process took its 202s. A child, not a thread: the load generator and the sink do not share
    a GIL; a minimal asyncio server, not aiosmtpd, so that it costs little of the CPU it
    shares with what it measures. Use as a context manager."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.url = f"smtp://127.0.0.1:{self.port}"
        self.log = workdir / f"arrival-sink-{self.port}.log"
        self._lock = threading.Lock()
        self._first: dict[str, float] = {}
        self._receipts: Counter[str] = Counter()
        self._proc: subprocess.Popen[bytes] | None = None
        self._reader: threading.Thread | None = None

    @property
    def pid(self) -> int:
        assert self._proc is not None
        return self._proc.pid

    def __enter__(self) -> ArrivalSink:
        code = "import sys, harness; harness.serve_arrivals(int(sys.argv[1]))"
        with self.log.open("wb") as log:
            self._proc = subprocess.Popen(
                [sys.executable, "-c", code, str(self.port)], cwd=Path(__file__).parent,
                stdout=subprocess.PIPE, stderr=log, start_new_session=True,
            )  # fmt: skip
        assert self._proc.stdout is not None
        if self._proc.stdout.readline() != b"ready\n":
            self._proc.kill()
            raise RuntimeError(f"the arrival sink did not start:\n{tail(self.log)}")
        self._reader = threading.Thread(target=self._read, args=(self._proc.stdout,), daemon=True)
        self._reader.start()
        return self

    def _read(self, stream: Any) -> None:
        for line in stream:
            mail_id, _, at = line.decode().partition(" ")
            with self._lock:
                self._receipts[mail_id] += 1
                self._first.setdefault(mail_id, float(at))

    def __exit__(self, *_: object) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            self._proc.wait(timeout=STOP_TIMEOUT)
        if self._reader is not None:
            self._reader.join(timeout=STOP_TIMEOUT)

    def arrived(self, ids: Iterator[str] | Sequence[str] | set[str]) -> dict[str, float]:
        """The first arrival of each of *ids* that arrived."""
        with self._lock:
            return {i: self._first[i] for i in ids if i in self._first}

    def wait_for(
        self, ids: set[str], timeout: float, check: Callable[[], None] = lambda: None
    ) -> dict[str, float]:
        """Until every one of *ids* arrived or *timeout* passed (*check*: between polls, to
        raise if a service died); the arrivals."""
        deadline = time.monotonic() + timeout
        while len(arrived := self.arrived(ids)) < len(ids) and time.monotonic() < deadline:
            check()
            time.sleep(POLL_SECONDS)
        return arrived

    def delivery(self, ids: set[str]) -> dict[str, int]:
        """Exactly once? Of *ids*: how many arrived once, not at all, more than once, and
        the receipts beyond the first."""
        with self._lock:
            counts = [self._receipts.get(i, 0) for i in ids]
        return {
            "mails": len(counts),
            "delivered_once": sum(1 for n in counts if n == 1),
            "missing": sum(1 for n in counts if n == 0),
            "duplicated": sum(1 for n in counts if n > 1),
            "extra_receipts": sum(n - 1 for n in counts if n > 1),
        }

    def receipts(self) -> int:
        with self._lock:
            return sum(self._receipts.values())

    def check_alive(self) -> None:
        if self._proc is not None and self._proc.poll() is not None:
            raise RuntimeError(f"the arrival sink died:\n{tail(self.log)}")


@dataclasses.dataclass
class Pipeline:
    """The API, a relay and workers as processes on a fresh copy of the base database,
    delivering into an ArrivalSink."""

    port: int
    pids: dict[str, int]
    logs: dict[str, Path]
    sink: ArrivalSink
    db_url: str

    def check_alive(self) -> None:
        check_alive(self.pids, self.logs)
        self.sink.check_alive()

    def cpu_groups(self, keys: RedisKeys) -> dict[str, list[int]]:
        """Each service's process tree, the database's backends, Redis, the sink and this
        process (the load): take them anew for each measure, pools open as they are needed."""
        with psycopg.connect(self.db_url, autocommit=True) as conn:
            groups = cpu_groups(conn, keys, **{name: [pid] for name, pid in self.pids.items()})
        return groups | {"sink": [self.sink.pid], "bench (load)": [os.getpid()]}


@contextlib.contextmanager
def pipeline(
    bench: Bench, tag: str, workers: dict[str, list[str]], api_workers: int = 2
) -> Iterator[Pipeline]:
    """``ingest-api serve``, ``outbox-relay run`` and one ``mail-worker run`` per entry of
    *workers* (name: its options) on a fresh copy of the base database, as an operator starts
    them, with an unsubscribe secret (campaign mail needs one); warmed up by 10 transactional
    mails (every process connected, the transactional worker's SMTP connection open)."""
    keys = bench.keys
    with (
        bench.dbs.copy() as (_, db_url),
        ArrivalSink(bench.workdir) as sink,
        contextlib.ExitStack() as stack,
    ):
        stack.callback(keys.delete)
        keys.delete()
        port = free_port()
        metrics = bench.workdir / f"metrics-{tag}"
        metrics.mkdir()
        env = service_env(
            db_url, keys, SMTP_URL=sink.url, MESSAGE_ID_DOMAIN=MESSAGE_ID_DOMAIN,
            RELAY_METRICS_PORT="0", CANARY_INTERVAL="3600",
            UNSUBSCRIBE_SECRET=secrets.token_hex(16),
        ) | {"PROMETHEUS_MULTIPROC_DIR": str(metrics)}  # fmt: skip
        argvs = {
            "api": api_argv(port, api_workers),
            "relay": [console_script("outbox-relay"), "run"],
        }
        argvs |= {name: [console_script("mail-worker"), "run", *o] for name, o in workers.items()}
        logs = {name: bench.workdir / f"{tag}-{name}.log" for name in argvs}
        pids = {n: stack.enter_context(service(n, a, env, logs[n])) for n, a in argvs.items()}
        running = Pipeline(port, pids, logs, sink, db_url)
        wait_http_ready("ingest-api", pids["api"], port, logs["api"])
        warm = OpenLoop(port, bench.api_key, ORDER_MAIL, 20.0, count=10).start().wait()
        warm_ids = {s.mail_id for s in warm if s.mail_id}
        if len(sink.wait_for(warm_ids, 120, running.check_alive)) < len(warm):
            worker_logs = "\n".join(tail(logs[name]) for name in workers)
            raise RuntimeError(f"{tag}: warm-up mail missing after 120 s:\n{worker_logs}")
        print(f"{tag}: pipeline warmed up ({len(warm_ids)} mails arrived)", flush=True)
        yield running


def arguments(description: str) -> argparse.ArgumentParser:
    """An argument parser with the options every scenario takes."""
    parser = argparse.ArgumentParser(description=description)
    env = os.environ.get  # the test suite's servers; the database URL may CREATE DATABASE
    parser.add_argument(
        "--admin-url", default=env("MAILROOM_TEST_DATABASE_URL") or DEFAULT_ADMIN_URL
    )
    parser.add_argument("--redis-url", default=env("MAILROOM_TEST_REDIS_URL") or DEFAULT_REDIS_URL)
    return parser


def run(main: Callable[[], dict[str, Any]]) -> None:
    """Run a scenario: the load, then *main*'s figures as JSON on the last line; exit 130 on
    SIGTERM/Ctrl-C after cleaning up."""

    def interrupt(_signum: int, _frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even if started with it ignored
    start = os.getloadavg()
    load = " ".join(f"{v:.2f}" for v in start)
    print(f"{os.cpu_count()} cores; load average {load} (1, 5, 15 min)", flush=True)
    try:
        figures = {"cores": os.cpu_count()} | main()
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    end = os.getloadavg()
    load += ", end " + " ".join(f"{v:.2f}" for v in end)
    print(f"load average (1, 5, 15 min): start {load}")
    figures["load_average"] = {"start": start, "end": end}
    print(json.dumps(figures, default=str))
