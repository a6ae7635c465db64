"""Worker throughput: mails per second from a pre-filled queue into a real local SMTP server.

Run as ``.venv/bin/python bench/worker.py [--mails 2000] [--concurrency 1,2] [--parts ...]``.
Sinks (a fresh process per run): Postfix's smtp-sink (fetched once with ``apt-get download``)
and aiosmtpd. Parts: ``ceiling`` (smtplib alone, the baseline), ``worker`` (``mail-worker run``
over mails the relay's Publisher queued), ``send-step`` (``deliver()`` in-process), ``profile``.
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import smtplib
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import harness
import psycopg

# --- app internals this scenario uses (update here when the apps move things) ------------------
from mail_worker.compose import compose
from mail_worker.deliver import SendOptions, deliver_many
from mail_worker.smtp import SmtpClient
from shared.config import Settings, parse_smtp_url
from shared.db import create_pool
from shared.queues import TRANSACTIONAL_QUEUE

# -----------------------------------------------------------------------------------------------

PUBLISH_CHUNK = 500
AIM = 1.5  # smtplib's rate / the worker's per-process rate
SMTP_SINK_CACHE = Path.home() / ".cache" / "mailroom-bench" / "postfix"
PROFILE_BUCKETS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("begin_sending: lock, UPDATE to sending (1 txn)", ("begin_sending (shared/store/mails",)),
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
_AIOSMTPD_CHILD = """
import signal, sys
from shared.devstack.smtp_sink import SmtpSink
sink = SmtpSink("127.0.0.1", int(sys.argv[1])).start()
signal.sigwait({signal.SIGTERM, signal.SIGINT})
sink.stop()
"""


def find_smtp_sink() -> tuple[str, dict[str, str]] | None:
    """smtp-sink and the environment it needs; unpacked once from the Debian package."""
    if found := shutil.which("smtp-sink"):
        return found, {}
    cached = SMTP_SINK_CACHE / "usr" / "sbin" / "smtp-sink"
    if not cached.exists():
        SMTP_SINK_CACHE.mkdir(parents=True, exist_ok=True)  # dpkg -x does not create parents
        with tempfile.TemporaryDirectory() as folder:
            subprocess.run(["apt-get", "download", "postfix"], cwd=folder, check=False)
            for deb in Path(folder).glob("postfix_*.deb"):
                subprocess.run(["dpkg", "-x", str(deb), str(SMTP_SINK_CACHE)], check=False)
    if cached.exists():
        return str(cached), {"LD_LIBRARY_PATH": str(SMTP_SINK_CACHE / "usr" / "lib" / "postfix")}
    return None


@dataclass(frozen=True)
class Sink:
    name: str
    pid: int
    port: int
    url: str


@contextlib.contextmanager
def run_sink(
    name: str, smtp_sink: tuple[str, dict[str, str]] | None, workdir: Path
) -> Iterator[Sink]:
    """A fresh sink process on a free loopback port (aiosmtpd keeps every mail in memory)."""
    port = harness.free_port()
    log = workdir / f"sink-{name}-{port}.log"
    if name == "smtp-sink":
        assert smtp_sink is not None
        argv = [smtp_sink[0], *(["-u", "nobody"] if os.geteuid() == 0 else [])]  # not as root
        argv += ["-c", f"127.0.0.1:{port}", "1000"]  # -c: a counter per mail, into the log
        env = os.environ | smtp_sink[1]
    else:
        argv, env = [sys.executable, "-c", _AIOSMTPD_CHILD, str(port)], dict(os.environ)

    def answers() -> bool:
        with contextlib.suppress(OSError), smtplib.SMTP("127.0.0.1", port, timeout=2) as probe:
            return probe.noop()[0] == 250
        return False

    with harness.service(name, argv, env, log) as pid:
        harness.wait_ready(name, pid, log, answers, timeout=15)
        yield Sink(name, pid, port, f"smtp://127.0.0.1:{port}")


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
    # RSS of each mail-worker process (parent, then pool children) just before it was stopped.
    memory: list[dict[str, Any]] = field(default_factory=list)
    cpu_ms_per_mail: dict[str, float] = field(init=False)

    def __post_init__(self) -> None:
        # Cores over the metered window / mails per second in it = CPU seconds per mail.
        self.cpu_ms_per_mail = {
            group: round(cores * 1000 / self.rate, 3) if self.rate else float("nan")
            for group, cores in self.cpu.items()
        }

    @property
    def per_process(self) -> float:
        return round(self.rate / self.processes, 1)

    @property
    def sender_ms(self) -> float | None:
        """CPU ms per mail of what sends: the mail-worker processes, or this process."""
        return self.cpu_ms_per_mail.get("worker", self.cpu_ms_per_mail.get("bench"))

    def memory_text(self) -> str:
        return "+".join(f"{p['rss_mb']:.0f}" for p in self.memory if p["rss_mb"] is not None)


def sink_meter(sink: Sink) -> harness.CpuMeter:
    return harness.CpuMeter({"sink": harness.process_tree(sink.pid), "bench": [os.getpid()]})


def connection_label(what: str, reuse: bool) -> str:
    return f"{what}, {'one reused connection' if reuse else 'new connection per mail'}"


def smtplib_raw(sink: Sink, *, data: bytes, mails: int, reuse: bool) -> Rate:
    """smtplib alone into *sink*: one connection for all, or one per mail."""
    sender, rcpt = "shop@example.com", ["bob@example.net"]
    meter = sink_meter(sink)
    with contextlib.ExitStack() as stack:
        if reuse:
            smtp = stack.enter_context(smtplib.SMTP("127.0.0.1", sink.port, timeout=30))
            smtp.ehlo()
            smtp.sendmail(sender, rcpt, data)  # warm-up, outside the clock
        meter.start()
        started = time.monotonic()
        for _ in range(mails):
            if reuse:
                smtp.sendmail(sender, rcpt, data)
                continue
            with smtplib.SMTP("127.0.0.1", sink.port, timeout=30) as fresh:
                fresh.ehlo()
                fresh.sendmail(sender, rcpt, data)
        elapsed = time.monotonic() - started
        cpu = meter.stop()
    label = connection_label("smtplib", reuse)
    return Rate(label, sink.name, mails, round(elapsed, 3), round(mails / elapsed, 1), cpu=cpu)


def mail_ids(db_url: str) -> list[uuid.UUID]:
    with psycopg.connect(db_url, autocommit=True) as conn:
        return [row[0] for row in conn.execute("SELECT id FROM mails ORDER BY created_at")]


def worker_run(
    bench: harness.Bench, filled: str, sink: Sink, *, concurrency: int, mails: int, py_spy: str = ""
) -> Rate:
    """``mail-worker run --concurrency C`` over a copy of the pre-filled database, every mail
    published to Redis by the relay's Publisher, timed until every mail is ``sent``."""
    keys = bench.keys
    with bench.dbs.copy(filled) as (name, db_url):
        keys.delete()
        publisher = harness.publisher(keys)
        ids = mail_ids(db_url)
        for offset in range(0, len(ids), PUBLISH_CHUNK):
            chunk = ids[offset : offset + PUBLISH_CHUNK]
            publisher.publish(harness.send_mails_messages(chunk, TRANSACTIONAL_QUEUE))
        publisher.close()
        queued = keys.llen(TRANSACTIONAL_QUEUE)
        env = harness.service_env(
            db_url, keys, SMTP_URL=sink.url, MESSAGE_ID_DOMAIN=harness.MESSAGE_ID_DOMAIN
        )
        tag = f"{name.rsplit('_', 1)[1]}-{sink.name}-c{concurrency}{'-profile' if py_spy else ''}"
        log = bench.workdir / f"worker-{tag}.log"
        argv = [harness.console_script("mail-worker"), "run", f"--concurrency={concurrency}"]
        argv += [f"--queues={TRANSACTIONAL_QUEUE}"]

        def unsent(conn: psycopg.Connection[Any]) -> int:
            rows = conn.execute("SELECT status, count(*) FROM mails GROUP BY status").fetchall()
            counts = {str(status): int(n) for status, n in rows}
            if set(counts) - {"accepted", "sending", "sent"}:
                raise RuntimeError(f"{tag}: mails ended up {counts}:\n{harness.tail(log)}")
            return mails - counts.get("sent", 0)

        profile = (py_spy, PROFILE_BUCKETS, bench.workdir / f"{tag}.pyspy") if py_spy else None
        with harness.service("mail-worker", argv, env, log) as pid:
            drained = harness.drain(
                db_url, unsent, mails, ({"mail-worker": pid}, {"mail-worker": log}),
                {"worker": [pid], "sink": [sink.pid]}, keys, timeout=max(120.0, mails / 10),
                profile=profile,
            )  # fmt: skip
            memory = harness.tree_rss_mb(pid)  # at the end of the run, before the stop
        keys.delete()
    return Rate(
        f"mail-worker run --concurrency {concurrency}", sink.name, mails, drained.seconds,
        drained.rate, concurrency, drained.startup_seconds, drained.rate_with_startup,
        drained.cpu, {"queued_in_redis": queued, "log": log.name, "profile": drained.profile},
        memory,
    )  # fmt: skip


def send_step(bench: harness.Bench, filled: str, sink: Sink, *, reuse: bool) -> Rate:
    """The send step in this process over a copy of the pre-filled mails (no Celery, no
    Redis): with reuse, ``deliver_many`` over batches of the relay's default size on one
    connection; without, ``deliver`` mail by mail with a QUIT after each."""
    with bench.dbs.copy(filled) as (_, db_url):
        ids = [str(i) for i in mail_ids(db_url)]
        pool = create_pool(Settings(database_url=db_url), name="bench-worker", max_size=2)
        pool.wait(timeout=10)
        client = SmtpClient(parse_smtp_url(sink.url), timeout=30)
        outcomes: Counter[str] = Counter()
        meter = sink_meter(sink)
        options = SendOptions(harness.MESSAGE_ID_DOMAIN, f"bench:{os.getpid()}")
        size = harness.SEND_BATCH if reuse else 1
        with pool, contextlib.closing(client):
            outcomes.update(deliver_many(pool, client, ids[:1], options))  # opens both
            meter.start()
            started = time.monotonic()
            for offset in range(1, len(ids), size):
                outcomes.update(deliver_many(pool, client, ids[offset : offset + size], options))
                if not reuse:
                    client.close()
            elapsed = time.monotonic() - started
            cpu = meter.stop()
    count = len(ids) - 1
    label = f"deliver_many(), batches of {size}" if reuse else "deliver()"
    return Rate(
        connection_label(label, reuse), sink.name, count, round(elapsed, 3),
        round(count / elapsed, 1), cpu=cpu, detail={"outcomes": dict(outcomes)},
    )  # fmt: skip


def print_rate(r: Rate) -> None:
    extra = ""
    if r.startup_seconds is not None:
        extra = f" ({r.rate_with_startup:.0f}/s with {r.startup_seconds:.2f} s start-up)"
    per_mail = ", ".join(f"{group} {ms:.2f}" for group, ms in r.cpu_ms_per_mail.items())
    rss = ", ".join(f"{p['role']} {harness.fmt(p['rss_mb'])}" for p in r.memory)
    print(
        f"[{r.sink:<9}] {r.label:<40} {r.rate:8.1f} mails/s, {r.per_process:8.1f} per process"
        f"{extra}\n{'':12}{r.mails} mails in {r.seconds:.2f} s; cores: {harness.cores_text(r.cpu)}"
        f"\n{'':12}CPU ms per mail: {per_mail}" + (f"; RSS MB: {rss}" if rss else ""),
        flush=True,
    )


def print_table(results: Sequence[Rate]) -> list[dict[str, Any]]:
    """Per-process rates, and raw smtplib (same sink, same connection use) / that rate."""
    raw = {(r.sink, "new" in r.label): r.rate for r in results if r.label.startswith("smtplib")}
    rows: list[dict[str, Any]] = []
    for r in results:
        ceiling = raw.get((r.sink, "new" in r.label))
        ratio = round(ceiling / r.per_process, 2) if ceiling and r.per_process else None
        rows.append(
            {
                "sink": r.sink, "what": r.label, "processes": r.processes, "rate": r.rate,
                "per_process": r.per_process, "raw_over_this": ratio,
                "within_aim": None if ratio is None else ratio <= AIM,
                "machine_cores": r.cpu.get("machine", 0.0),
                "sender_cpu_ms_per_mail": r.sender_ms,
                "machine_cpu_ms_per_mail": r.cpu_ms_per_mail.get("machine"),
                "worker_rss_mb": [p["rss_mb"] for p in r.memory],
            }
        )  # fmt: skip
    print(
        "\nmails/s from a pre-filled queue; raw/this = smtplib's rate (same sink, same "
        "connection use) / this per-process rate; CPU ms per mail of the sender (the "
        "mail-worker processes, or this process for smtplib and the send step) and of the "
        "machine; RSS of each mail-worker process at the end (parent+children)"
    )
    harness.print_table(
        [("sink", ""), ("what", ""), ("procs", "d"), ("|", ""), ("mails/s", ".1f"),
         ("per proc", ".1f"), ("|", ""), ("raw/this", ".2f"), (f"aim {AIM}", ""), ("|", ""),
         ("machine cores", ".2f"), ("|", ""), ("sender ms", ".2f"), ("box ms", ".2f"), ("|", ""),
         ("RSS MB", "")],
        [
            [*list(row.values())[:6], {None: "-", True: "yes", False: "NO"}[row["within_aim"]],
             row["machine_cores"], row["sender_cpu_ms_per_mail"], row["machine_cpu_ms_per_mail"],
             r.memory_text() or "-"]
            for row, r in zip(rows, results, strict=True)
        ],
    )  # fmt: skip
    return rows


def main() -> dict[str, Any]:
    parser = harness.arguments(__doc__.splitlines()[0])
    parser.add_argument("--mails", type=int, default=2000, help="mails per run (at least 2)")
    parser.add_argument("--concurrency", default="1,2", help="worker process counts to run")
    parser.add_argument("--parts", default="ceiling,worker,send-step,profile")
    parser.add_argument("--sinks", default="smtp-sink,aiosmtpd")
    args = parser.parse_args()
    parts, sinks = args.parts.split(","), args.sinks.split(",")
    smtp_sink = find_smtp_sink() if "smtp-sink" in sinks else None
    if "smtp-sink" in sinks and smtp_sink is None:
        print("smtp-sink not found, and `apt-get download postfix` did not bring it: skipped")
        sinks.remove("smtp-sink")
    figures: dict[str, Any] = {"mails": args.mails, "smtp_sink": smtp_sink and smtp_sink[0]}
    results: list[Rate] = []
    profile: Rate | None = None

    with harness.bench(args) as bench:
        figures["postgres"] = bench.postgres
        template = harness.stored_mail(harness.LONG_ORDER_MAIL, bench.tenant)
        data = compose(template.id, template.request, harness.MESSAGE_ID_DOMAIN)
        figures["message_bytes"] = len(data)
        text, html = harness.LONG_ORDER_MAIL["text"], harness.LONG_ORDER_MAIL["html"]
        print(
            f"the mail: {len(data)} bytes as composed by the worker (text {len(text)} + html "
            f"{len(html)} characters); smtp-sink: {figures['smtp_sink']}"
        )
        filled, filled_url = bench.dbs.clone()
        fill_seconds = harness.prefill(
            filled_url, bench.tenant, harness.LONG_ORDER_MAIL, args.mails
        )
        print(f"pre-filled {args.mails} mails in {fill_seconds:.2f} s; each run uses a copy\n")

        def measured(sink_name: str, measure: Callable[[Sink], Rate]) -> Rate:
            with run_sink(sink_name, smtp_sink, bench.workdir) as sink:
                result = measure(sink)
            print_rate(result)
            return result

        worker = functools.partial(worker_run, bench, filled, mails=args.mails)
        measures: dict[str, list[Callable[[Sink], Rate]]] = {
            "ceiling": [
                functools.partial(smtplib_raw, data=data, mails=args.mails, reuse=reuse)
                for reuse in (True, False)
            ],
            "worker": [
                functools.partial(worker, concurrency=c) for c in harness.int_list(args.concurrency)
            ],
            "send-step": [
                functools.partial(send_step, bench, filled, reuse=reuse) for reuse in (True, False)
            ],
        }
        for part, part_measures in measures.items():
            for sink_name in sinks if part in parts else ():
                results += [measured(sink_name, measure) for measure in part_measures]
        py_spy = harness.find_py_spy()
        if "profile" in parts and py_spy is None:
            print("profile: py-spy not found (pip install py-spy --target /tmp/pyspy)")
        elif "profile" in parts and py_spy:
            print("\nprofiled worker run (py-spy --subprocesses --idle, 200 Hz; not in the table)")
            profile = measured(sinks[0], functools.partial(worker, concurrency=1, py_spy=py_spy))
            harness.print_profile(profile.detail["profile"] or {})
    return figures | {
        "results": [asdict(r) | {"per_process": r.per_process} for r in results],
        "table": print_table(results),
        "profile": profile.detail["profile"] if profile else None,
    }


if __name__ == "__main__":
    harness.run(main)
