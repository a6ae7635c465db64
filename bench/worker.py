"""Worker throughput: mails per second from a pre-filled queue into a real local SMTP server.

Run as ``.venv/bin/python bench/worker.py [--mails 2000]`` (``--help`` lists the rest).

Everything happens in throw-away databases (``mailroom_bench_<hex>``, migrated and given
a tenant with the console scripts, then copied per run with CREATE DATABASE ... TEMPLATE)
and under a fresh Redis key prefix (``mailroom-bench-<hex>:``); databases and keys are
removed after each run and again at the end, also on failure, Ctrl-C or SIGTERM. The
helpers for that are bench/relay.py's. Nothing listens beyond 127.0.0.1, nothing on port
25, and every process started here is stopped by its pid.

Sinks: Postfix's ``smtp-sink`` (PATH, else ``~/.cache/mailroom-bench/postfix``, see
``SMTP_SINK_HINT``) and aiosmtpd (the project's SmtpSink, in its own process so it does not
share a GIL with the client). One 5 KB text+html mail (the worker's own ``compose``
output for ``MAIL_BODY``) is used everywhere.

1. Ceiling: smtplib's raw rate into each sink, from this process: one reused connection
   (``sendmail`` per mail) and a new connection per mail (connect, EHLO, sendmail, QUIT).
2. Worker: N mails pre-filled with the API's own statement, all published into Redis with
   the relay's Publisher (the mails stay ``accepted``; the worker's pickup accepts that),
   then ``mail-worker run --concurrency C --queues transactional`` as a process with
   MAILROOM_SMTP_URL at the sink; the database is polled every 50 ms until all N are
   ``sent``. The rate is the mails left at the first poll that saw a ``sent`` mail over the
   time from that poll to the last (start-up excluded; also shown included). The worker
   has no switch to turn connection reuse off, so these runs measure reuse only.
3. Send step in-process ("without connection reuse"): ``mail_worker.deliver.deliver`` over
   the same pre-filled mails, in this process, with one SmtpClient whose connection is
   reused, and with the same SmtpClient closed after every mail (QUIT; the next send
   connects and says EHLO again). No Celery, no Redis. Constructing an SmtpClient is timed
   on its own (it is done once per worker process).
4. If py-spy is found, one more worker run (concurrency 1, smtp-sink) under
   ``py-spy record --subprocesses --idle``, summarised by where each process's time goes.
5. A table with per-process rates and their ratio to smtplib's raw rate into the same
   sink (the aim: ratio <= 1.5), the load average, and the figures as JSON on the last line.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import re
import shutil
import signal
import smtplib
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from common import (  # bench/common.py
    _console_script,
    _cores,
    _fmt,
    _free_port,
    _process_tree,
    _raise_keyboard_interrupt,
    _run_cli,
)
from psycopg.rows import dict_row
from relay import (  # bench/relay.py: throw-away databases, Redis prefix, processes
    CpuMeter,
    Databases,
    RedisKeys,
    _backend_pids,
    _check_alive,
    _find_py_spy,
    _redis_server_pid,
    _tail,
    databases,
    redis_keys,
    service,
)

from ingest_api.accept import IngestTransaction, NewMail
from ingest_api.auth import Tenant
from ingest_api.new_mail import new_mail
from ingest_api.schemas.mail import SendMailSchema
from mail_worker.compose import compose
from mail_worker.deliver import deliver
from mail_worker.smtp import SmtpClient
from outbox_relay.publish import Publisher, TaskMessage
from shared.config import Settings, parse_smtp_url
from shared.db import create_pool
from shared.queues import TRANSACTIONAL_QUEUE

DEFAULT_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
TENANT = "bench"
SENDER_DOMAIN = "example.com"
MESSAGE_ID_DOMAIN = "bench.test"
FILL_CHUNK = 1000
PUBLISH_CHUNK = 500
POLL_SECONDS = 0.05
AIM = 1.5
SMTP_SINK_CACHE = Path.home() / ".cache" / "mailroom-bench" / "postfix"
SMTP_SINK_HINT = (
    "smtp-sink not found: `apt-get download postfix && dpkg -x postfix_*.deb "
    f"{SMTP_SINK_CACHE}` (no install, no mail server started) makes it available here"
)

_PARAGRAPH = (
    "Your order #A-20931 has shipped and should arrive within three working days. "
    "Track it at https://shop.example.com/orders/A-20931/tracking and keep this mail "
    "for your records; the invoice is attached to your account page. "
)
_ROW = (
    '<tr><td style="padding:4px 8px">1 &times; Walnut desk organiser</td>'
    '<td style="padding:4px 8px;text-align:right">EUR 32.90</td></tr>'
)
MAIL_BODY: dict[str, Any] = {
    "from": "Example Shop <shop@example.com>",
    "to": ["Bob Example <bob@example.net>"],
    "subject": "Your order #A-20931 has shipped",
    "text": "Hello Bob,\n\n" + (_PARAGRAPH + "\n\n") * 11 + "-- \nThe Example Shop team\n",
    "html": (
        '<!doctype html><html><body style="font-family:sans-serif"><p>Hello Bob,</p>'
        + f"<p>{_PARAGRAPH}</p>" * 5
        + "<table>"
        + _ROW * 8
        + "</table><p>The Example Shop team</p></body></html>"
    ),
}


# --------------------------------------------------------------------------- sinks


def find_smtp_sink() -> tuple[str, dict[str, str]] | None:
    """The smtp-sink binary and the environment it needs (its private libraries)."""
    found = shutil.which("smtp-sink")
    if found:
        return found, {}
    cached = SMTP_SINK_CACHE / "usr" / "sbin" / "smtp-sink"
    if cached.exists():
        return str(cached), {"LD_LIBRARY_PATH": str(SMTP_SINK_CACHE / "usr" / "lib" / "postfix")}
    return None


def _wait_listening(port: int, pid: int, log: Path, name: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        _check_alive({name: pid}, {name: log})
        with contextlib.suppress(OSError), smtplib.SMTP("127.0.0.1", port, timeout=2) as probe:
            probe.noop()
            return
        time.sleep(0.1)
    raise RuntimeError(f"{name} did not answer on 127.0.0.1:{port} in {timeout:.0f} s")


_AIOSMTPD_CHILD = """
import signal, sys
from shared.devstack.smtp_sink import SmtpSink
sink = SmtpSink("127.0.0.1", int(sys.argv[1])).start()
signal.sigwait({signal.SIGTERM, signal.SIGINT})
sink.stop()
"""


@dataclass(frozen=True)
class Sink:
    name: str
    pid: int
    port: int

    @property
    def url(self) -> str:
        return f"smtp://127.0.0.1:{self.port}"


@contextlib.contextmanager
def run_sink(
    name: str, smtp_sink: tuple[str, dict[str, str]] | None, workdir: Path
) -> Iterator[Sink]:
    """A fresh sink process on a free loopback port (a fresh one per run: aiosmtpd's
    SmtpSink keeps every mail in memory)."""
    port = _free_port()
    log = workdir / f"sink-{name}-{port}.log"
    if name == "smtp-sink":
        assert smtp_sink is not None
        binary, extra = smtp_sink
        argv = [binary]
        if os.geteuid() == 0:
            argv += ["-u", "nobody"]  # it refuses to run as root otherwise
        argv += ["-c", f"127.0.0.1:{port}", "1000"]
        env = os.environ | extra
    else:
        argv = [sys.executable, "-c", _AIOSMTPD_CHILD, str(port)]
        env = dict(os.environ)
    # -c makes smtp-sink print a counter per mail: its output goes to the log, not here.
    with service(name, argv, env, log) as pid:
        _wait_listening(port, pid, log, name)
        yield Sink(name, pid, port)


# --------------------------------------------------------------------------- ceiling


@dataclass
class Rate:
    label: str
    sink: str
    mails: int
    seconds: float
    rate: float
    processes: int = 1
    startup_seconds: float | None = None
    rate_with_startup: float | None = None
    cpu: dict[str, float] = field(default_factory=dict)
    detail: dict[str, Any] = field(default_factory=dict)

    @property
    def per_process(self) -> float:
        return round(self.rate / self.processes, 1)


def smtplib_raw(sink: Sink, data: bytes, mails: int, *, reuse: bool) -> Rate:
    """smtplib alone into *sink*: one connection for all, or one per mail."""
    sender, rcpt = "shop@example.com", ["bob@example.net"]
    groups = {"sink": _process_tree(sink.pid), "bench": [os.getpid()]}
    meter = CpuMeter(groups)
    if reuse:
        with smtplib.SMTP("127.0.0.1", sink.port, timeout=30) as smtp:
            smtp.ehlo()
            smtp.sendmail(sender, rcpt, data)  # warm-up, outside the clock
            meter.start()
            started = time.monotonic()
            for _ in range(mails):
                smtp.sendmail(sender, rcpt, data)
            elapsed = time.monotonic() - started
            cpu = meter.stop()
    else:
        meter.start()
        started = time.monotonic()
        for _ in range(mails):
            with smtplib.SMTP("127.0.0.1", sink.port, timeout=30) as smtp:
                smtp.ehlo()
                smtp.sendmail(sender, rcpt, data)
        elapsed = time.monotonic() - started
        cpu = meter.stop()
    label = "smtplib, one reused connection" if reuse else "smtplib, new connection per mail"
    return Rate(label, sink.name, mails, round(elapsed, 3), round(mails / elapsed, 1), cpu=cpu)


# --------------------------------------------------------------------------- pre-fill and publish


def template_mail(tenant: Tenant) -> NewMail:
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
                IngestTransaction(conn, tenant.id, "bench-worker-prefill", None).add_mails(mails)
        elapsed = time.monotonic() - started
        conn.execute("ANALYZE")
    return elapsed


def mail_ids(db_url: str) -> list[uuid.UUID]:
    with psycopg.connect(db_url, autocommit=True) as conn:
        return [row[0] for row in conn.execute("SELECT id FROM mails ORDER BY created_at")]


def publish_all(keys: RedisKeys, ids: Sequence[uuid.UUID]) -> int:
    """Every mail as a send_mail task in our Redis prefix; returns the queue length."""
    publisher = Publisher(Settings(broker_url=keys.url, broker_key_prefix=keys.prefix))
    try:
        for offset in range(0, len(ids), PUBLISH_CHUNK):
            publisher.publish(
                [
                    TaskMessage.send_mail(mail_id, TRANSACTIONAL_QUEUE)
                    for mail_id in ids[offset : offset + PUBLISH_CHUNK]
                ]
            )
    finally:
        publisher.close()
    return keys.llen(TRANSACTIONAL_QUEUE)


def _status_counts(conn: psycopg.Connection[Any]) -> Counter[str]:
    rows = conn.execute("SELECT status, count(*) FROM mails GROUP BY status").fetchall()
    return Counter({str(status): int(n) for status, n in rows})


# --------------------------------------------------------------------------- worker runs


def worker_run(
    dbs: Databases,
    filled: str,
    keys: RedisKeys,
    base_env: dict[str, str],
    workdir: Path,
    sink: Sink,
    *,
    concurrency: int,
    mails: int,
    py_spy: str | None = None,
) -> Rate:
    """``mail-worker run --concurrency C`` over a copy of the pre-filled, published queue."""
    name, db_url = dbs.clone(filled)
    spy: subprocess.Popen[bytes] | None = None
    try:
        keys.delete()
        queued = publish_all(keys, mail_ids(db_url))
        env = base_env | {
            "MAILROOM_DATABASE_URL": db_url,
            "MAILROOM_BROKER_URL": keys.url,
            "MAILROOM_BROKER_KEY_PREFIX": keys.prefix,
            "MAILROOM_SMTP_URL": sink.url,
            "MAILROOM_MESSAGE_ID_DOMAIN": MESSAGE_ID_DOMAIN,
        }
        tag = f"{name.rsplit('_', 1)[1]}-{sink.name}-c{concurrency}{'-profile' if py_spy else ''}"
        log = workdir / f"worker-{tag}.log"
        argv = [_console_script("mail-worker"), "run", f"--concurrency={concurrency}"]
        argv += [f"--queues={TRANSACTIONAL_QUEUE}"]
        timeout = max(120.0, mails / 10)
        profile_path = workdir / f"worker-{tag}.pyspy.txt"
        with (
            psycopg.connect(db_url, autocommit=True) as conn,
            service("mail-worker", argv, env, log) as pid,
        ):
            spawned = time.monotonic()
            first: tuple[float, int] | None = None
            meter: CpuMeter | None = None
            while True:
                counts = _status_counts(conn)
                now = time.monotonic()
                sent = counts.get("sent", 0)
                if first is None and sent > 0:
                    first = (now, mails - sent)
                    groups = {
                        "worker": _process_tree(pid),
                        "pg_backends": _backend_pids(conn),
                        "sink": _process_tree(sink.pid),
                    }
                    redis_pid = _redis_server_pid(keys.client)
                    if redis_pid is not None:
                        groups["redis"] = [redis_pid]
                    meter = CpuMeter(groups)
                    meter.start()
                    if py_spy:
                        spy = _start_py_spy(py_spy, pid, profile_path)
                if sent >= mails:
                    done = now
                    break
                unexpected = {
                    s: n for s, n in counts.items() if s not in {"accepted", "sending", "sent"}
                }
                if unexpected:
                    raise RuntimeError(
                        f"worker run {tag}: mails ended up {unexpected}:\n{_tail(log)}"
                    )
                if now - spawned > timeout:
                    raise RuntimeError(
                        f"worker run {tag}: {sent} of {mails} sent after {timeout:.0f} s; "
                        f"statuses {dict(counts)}; last lines of its log:\n{_tail(log)}"
                    )
                _check_alive({"mail-worker": pid}, {"mail-worker": log})
                time.sleep(POLL_SECONDS)
            assert first is not None and meter is not None
            cpu = meter.stop()
            profile = _stop_py_spy(spy, profile_path) if spy is not None else None
        seconds = done - first[0]
        rate = round(first[1] / seconds, 1) if seconds > 0 else 0.0
        detail: dict[str, Any] = {"queued_in_redis": queued, "log": log.name}
        if profile is not None:
            detail["profile"] = profile
        return Rate(
            f"mail-worker run --concurrency {concurrency}", sink.name, mails, round(seconds, 3),
            rate, processes=concurrency, startup_seconds=round(first[0] - spawned, 3),
            rate_with_startup=round(mails / (done - spawned), 1), cpu=cpu, detail=detail,
        )  # fmt: skip
    finally:
        if spy is not None and spy.poll() is None:  # a failed run: py-spy is ours to stop
            spy.kill()
            spy.wait()
        keys.delete()
        dbs.drop(name)


def smtp_client_construction(sink: Sink, count: int = 20) -> float:
    """Milliseconds per ``SmtpClient(...)`` (no connection is opened)."""
    target = parse_smtp_url(sink.url)
    started = time.monotonic()
    for _ in range(count):
        SmtpClient(target, timeout=30)
    return round(1000 * (time.monotonic() - started) / count, 2)


def send_step(dbs: Databases, filled: str, sink: Sink, mails: int, *, reuse: bool) -> Rate:
    """``deliver`` in this process over a copy of the pre-filled mails; no Celery, no Redis."""
    name, db_url = dbs.clone(filled)
    try:
        settings = Settings(database_url=db_url, smtp=parse_smtp_url(sink.url))
        ids = [str(i) for i in mail_ids(db_url)]
        pool = create_pool(settings, name="bench-worker", max_size=2)
        pool.wait(timeout=10)
        worker = f"bench:{os.getpid()}"
        shared = SmtpClient(parse_smtp_url(sink.url), timeout=30)
        outcomes: Counter[str] = Counter()
        meter = CpuMeter({"sink": _process_tree(sink.pid), "bench": [os.getpid()]})
        try:
            # The first mail opens the pool's connection and (with reuse) the SMTP one.
            outcomes[
                deliver(pool, shared, ids[0], message_id_domain=MESSAGE_ID_DOMAIN, worker=worker)
            ] += 1
            meter.start()
            started = time.monotonic()
            for mail_id in ids[1:]:
                outcome = deliver(
                    pool, shared, mail_id, message_id_domain=MESSAGE_ID_DOMAIN, worker=worker
                )
                outcomes[outcome] += 1
                if not reuse:
                    shared.close()  # QUIT: the next send connects and says EHLO again
            elapsed = time.monotonic() - started
            cpu = meter.stop()
        finally:
            shared.close()
            pool.close()
        count = len(ids) - 1
        label = (
            "deliver(), one reused connection" if reuse else "deliver(), new connection per mail"
        )
        return Rate(
            label, sink.name, count, round(elapsed, 3), round(count / elapsed, 1), cpu=cpu,
            detail={"outcomes": dict(outcomes)},
        )  # fmt: skip
    finally:
        dbs.drop(name)


# --------------------------------------------------------------------------- py-spy


def _start_py_spy(py_spy: str, pid: int, output: Path) -> subprocess.Popen[bytes]:
    argv = [py_spy, "record", "--pid", str(pid), "--subprocesses", "--idle", "--rate", "200"]
    argv += ["--format", "raw", "--output", str(output), "--nonblocking"]
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _stop_py_spy(spy: subprocess.Popen[bytes], output: Path) -> dict[str, Any]:
    spy.send_signal(signal.SIGINT)
    try:
        _, stderr = spy.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        spy.kill()
        _, stderr = spy.communicate()
    if not output.exists():
        return {"error": f"py-spy wrote nothing: {stderr.decode(errors='replace')[-500:]}"}
    return summarise_profile(output.read_text())


_FRAME = re.compile(r"^(?P<name>.*) \((?P<path>[^()]*?)(?::(?P<line>\d+))?\)$")

# A stack counts for the first bucket one of whose markers appears in any of its frames.
PROFILE_BUCKETS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("pick_up: lock outbox row, UPDATE to sending (1 txn)", ("pick_up (mail_worker/pickup.py",)),
    ("screen: suppression list query", ("screen (mail_worker/suppression.py",)),
    ("compose: build and serialise the MIME message", ("compose (mail_worker/compose.py",)),
    ("wire check: parse the bytes back twice", ("check_wire (mail_worker/wire_check.py",)),
    ("SMTP: RSET before each mail", ("rset (",)),
    ("SMTP: connect + EHLO", ("_open (mail_worker/smtp.py",)),
    ("SMTP: MAIL/RCPT/DATA", ("_transaction (mail_worker/smtp.py",)),
    ("finish: UPDATE to sent + event (1 txn)", ("_finish (mail_worker/deliver.py",)),
    ("logging (JSON lines)", ("logging/__init__.py", "jsonlog")),
    ("deliver: other", ("deliver (mail_worker/deliver.py",)),
    ("Celery task tracing around the task", ("trace_task (", "fast_trace_task (")),
    ("pool child waiting for a task", ("workloop (", "receive (billiard")),
    ("Celery parent: event loop / Redis consume", ("asynloop (", "start (kombu", "_brpop")),
)


def _short(path: str) -> str:
    for marker in ("site-packages/", "/work/main/", "lib/python3"):
        if marker in path:
            return path.split(marker, 1)[1]
    return path


def summarise_profile(text: str) -> dict[str, Any]:
    """Per process (pid), the share of samples per bucket and the top innermost frames."""
    per_process: dict[str, Counter[str]] = {}
    leaves: dict[str, Counter[str]] = {}
    for line in text.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        raw = stack.split(";")
        depth = 0
        process = "?"
        while raw and raw[0].startswith("process "):  # a child's stack nests its parents
            depth += 1
            process = raw[0].split(":", 1)[0]
            raw = raw[1:]
        if any("_bootstrap (threading.py" in item for item in raw):
            continue  # background threads (pool, timers): idle by design, not the work
        process = f"{process} ({'Celery main process' if depth == 1 else 'pool child'})"
        frames = []
        for item in raw:
            match = _FRAME.match(item)
            frames.append(f"{match['name']} ({_short(match['path'])})" if match else item)
        if not frames:
            continue
        leaves.setdefault(process, Counter())[frames[-1]] += count
        buckets = per_process.setdefault(process, Counter())
        for bucket, markers in PROFILE_BUCKETS:
            if any(marker in frame for frame in frames for marker in markers):
                buckets[bucket] += count
                break
        else:
            buckets["other"] += count
    summary: dict[str, Any] = {}
    for process, buckets in per_process.items():
        total = sum(buckets.values())
        summary[process] = {
            "samples": total,
            "buckets": {name: round(n / total, 3) for name, n in buckets.most_common()},
            "top_leaf_frames": [
                (name, round(n / total, 3)) for name, n in leaves[process].most_common(10)
            ],
        }
    return summary


# --------------------------------------------------------------------------- main


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--mails", type=int, default=2000, help="mails per run")
    parser.add_argument("--concurrency", default="1,2", help="worker process counts to run")
    parser.add_argument(
        "--parts", default="ceiling,worker,send-step,profile", help="which parts to run"
    )
    parser.add_argument("--sinks", default="smtp-sink,aiosmtpd", help="which sinks to use")
    parser.add_argument(
        "--py-spy", help="py-spy binary for the profile run ('none' to skip; default: search)"
    )
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
    args.concurrency_list = [int(c) for c in args.concurrency.split(",") if c.strip()]
    args.part_set = {p.strip() for p in args.parts.split(",") if p.strip()}
    args.sink_list = [s.strip() for s in args.sinks.split(",") if s.strip()]
    if args.mails < 2 or not args.concurrency_list or min(args.concurrency_list) < 1:
        parser.error("--mails must be at least 2 and concurrencies positive")
    if set(args.sink_list) - {"smtp-sink", "aiosmtpd"}:
        parser.error("--sinks: smtp-sink and/or aiosmtpd")
    return args


def _print_rate(r: Rate) -> None:
    extra = ""
    if r.startup_seconds is not None:
        extra = f" ({r.rate_with_startup:.0f}/s with {r.startup_seconds:.2f} s start-up)"
    print(
        f"[{r.sink:<9}] {r.label:<40} {r.rate:8.1f} mails/s, {r.per_process:8.1f} per process"
        f"{extra}\n{'':12}{r.mails} mails in {r.seconds:.2f} s; cores: {_cores(r.cpu)}",
        flush=True,
    )


def _print_profile(profile: dict[str, Any]) -> None:
    if "error" in profile:
        print(f"  profile: {profile['error']}")
        return
    for process, summary in profile.items():
        print(f"  {process} ({summary['samples']} samples at 200 Hz, idle included):")
        for name, share in summary["buckets"].items():
            print(f"    {share * 100:5.1f} %  {name}")
        print("    innermost frames:")
        for name, share in summary["top_leaf_frames"][:6]:
            print(f"      {share * 100:5.1f} %  {name}")


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse_args(argv)
    signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    load_start = os.getloadavg()
    print(
        f"{os.cpu_count()} cores; load average {' '.join(f'{v:.2f}' for v in load_start)} "
        "(1, 5, 15 min) at the start",
        flush=True,
    )
    base_env = {k: v for k, v in os.environ.items() if not k.startswith("MAILROOM_")}
    smtp_sink = find_smtp_sink()
    sinks = list(args.sink_list)
    if "smtp-sink" in sinks and smtp_sink is None:
        print(SMTP_SINK_HINT, flush=True)
        sinks.remove("smtp-sink")
    elif smtp_sink is not None:
        print(f"smtp-sink: {smtp_sink[0]}", flush=True)
    figures: dict[str, Any] = {
        "cores": os.cpu_count(),
        "load_average_start": load_start,
        "mails": args.mails,
        "smtp_sink": smtp_sink[0] if smtp_sink else None,
    }
    results: list[Rate] = []
    profile: Rate | None = None

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
        with psycopg.connect(base_url, autocommit=True) as conn:
            row = conn.execute("SELECT id FROM tenants WHERE name = %s", (TENANT,)).fetchone()
            assert row is not None
            server = conn.execute(
                "SELECT current_setting('server_version'), current_setting('synchronous_commit'),"
                " current_setting('fsync')"
            ).fetchone()
            assert server is not None
        print(f"PostgreSQL {server[0]} (synchronous_commit={server[1]}, fsync={server[2]})")
        figures["postgres"] = {"version": server[0], "synchronous_commit": server[1]}
        tenant = Tenant(id=row[0], name=TENANT, sender_domains=(SENDER_DOMAIN,))
        template = template_mail(tenant)
        data = compose(template.id, template.request, MESSAGE_ID_DOMAIN)
        figures["message_bytes"] = len(data)
        print(
            f"the mail: {len(data)} bytes as composed by the worker (text {len(MAIL_BODY['text'])}"
            f" + html {len(MAIL_BODY['html'])} characters); Redis key prefix {keys.prefix}",
            flush=True,
        )
        filled, filled_url = dbs.clone()
        fill_seconds = prefill(filled_url, tenant, args.mails)
        print(f"pre-filled {args.mails} mails in {fill_seconds:.2f} s; each run uses a copy\n")

        if "ceiling" in args.part_set:
            for sink_name in sinks:
                for reuse in (True, False):
                    with run_sink(sink_name, smtp_sink, workdir) as sink:
                        result = smtplib_raw(sink, data, args.mails, reuse=reuse)
                    results.append(result)
                    _print_rate(result)
        if "worker" in args.part_set:
            for sink_name in sinks:
                for concurrency in args.concurrency_list:
                    with run_sink(sink_name, smtp_sink, workdir) as sink:
                        result = worker_run(
                            dbs, filled, keys, base_env, workdir, sink,
                            concurrency=concurrency, mails=args.mails,
                        )  # fmt: skip
                    results.append(result)
                    _print_rate(result)
        if "send-step" in args.part_set:
            with run_sink(sinks[0], smtp_sink, workdir) as sink:
                construct_ms = smtp_client_construction(sink)
            figures["smtp_client_construction_ms"] = construct_ms
            print(f"SmtpClient(...) construction alone: {construct_ms} ms", flush=True)
            for sink_name in sinks:
                for reuse in (True, False):
                    with run_sink(sink_name, smtp_sink, workdir) as sink:
                        result = send_step(dbs, filled, sink, args.mails, reuse=reuse)
                    results.append(result)
                    _print_rate(result)
        py_spy = _find_py_spy(args.py_spy)
        if "profile" in args.part_set:
            if py_spy is None:
                print("profile: py-spy not found (pip install py-spy --target /tmp/pyspy)")
            else:
                profile_sink = sinks[0]
                with run_sink(profile_sink, smtp_sink, workdir) as sink:
                    profile = worker_run(
                        dbs, filled, keys, base_env, workdir, sink,
                        concurrency=1, mails=args.mails, py_spy=py_spy,
                    )  # fmt: skip
                print(
                    "\nprofiled worker run (py-spy record --subprocesses --idle, 200 Hz; "
                    "not in the table)"
                )
                _print_rate(profile)
                _print_profile(profile.detail.get("profile", {}))
        dbs.drop(filled)

    load_end = os.getloadavg()
    table = _print_table(results)
    print(
        "load average (1, 5, 15 min): start "
        f"{' '.join(f'{v:.2f}' for v in load_start)}, end {' '.join(f'{v:.2f}' for v in load_end)}"
    )
    figures |= {
        "load_average_end": load_end,
        "results": [asdict(r) | {"per_process": r.per_process} for r in results],
        "table": table,
        "profile": profile.detail.get("profile") if profile else None,
    }
    print(json.dumps(figures))
    return 0


def _print_table(results: list[Rate]) -> list[dict[str, Any]]:
    """Per-process rates, and raw smtplib (reused connection, same sink) / that rate."""
    raw = {r.sink: r.rate for r in results if r.label == "smtplib, one reused connection"}
    raw_new = {r.sink: r.rate for r in results if r.label == "smtplib, new connection per mail"}
    rows: list[dict[str, Any]] = []
    header = (
        f"{'sink':<9} {'what':<40} {'procs':>5} | {'mails/s':>8} {'per proc':>8} | "
        f"{'raw/this':>8} {'aim 1.5':>7} | {'machine cores':>13}"
    )
    print(
        "\nmails/s from a pre-filled queue; raw/this = smtplib's rate with one reused "
        "connection into the same sink / this per-process rate (for the new-connection "
        "rows: smtplib's new-connection rate / this)"
    )
    print(header)
    print("-" * len(header))
    for r in results:
        ceiling = raw_new.get(r.sink) if "new" in r.label else raw.get(r.sink)
        ratio = round(ceiling / r.per_process, 2) if ceiling and r.per_process else None
        within = None if ratio is None else ratio <= AIM
        row = {
            "sink": r.sink, "what": r.label, "processes": r.processes, "rate": r.rate,
            "per_process": r.per_process, "raw_over_this": ratio, "within_aim": within,
        }  # fmt: skip
        rows.append(row)
        mark = "-" if within is None else ("yes" if within else "NO")
        print(
            f"{r.sink:<9} {r.label:<40} {r.processes:>5} | {r.rate:>8.1f} {r.per_process:>8.1f} | "
            f"{_fmt(ratio, '.2f'):>8} {mark:>7} | {r.cpu.get('machine', 0):>13.2f}"
        )
    return rows


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
