"""Ingest throughput: ``POST /v1/mails`` through the real API, against pgbench and Celery.

Run as ``.venv/bin/python bench/ingest.py [--seconds 10] [--clients 1,8,32] [--batch-clients 1,4]
[--cdp-clients 8]``. Baselines at each client count: pgbench running the very transaction the API
runs (recorded from the API's ingest code) and ``celery_baseline.py`` under the same gunicorn
settings; then ``POST /v1/mails/batch``; then signed ``POST /v1/cdp/events`` with one matching
workflow (a CDP replaying its backlog); then a check that every 202 is a stored mail. Each run
prints the server's CPU milliseconds per accepted mail.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import multiprocessing as mp
import os
import re
import resource
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import harness
import psycopg
from psycopg import pq
from psycopg.adapt import PyFormat, Transformer
from psycopg.rows import DictRow, dict_row

# --- app internals this scenario uses (update here when the apps move things) ------------------
from ingest_api.ingest import IngestTransaction
from shared import signatures
from shared.jsonlog import request_id_var
from shared.queries import QUERIES
from shared.queues import TRANSACTIONAL_QUEUE

# -----------------------------------------------------------------------------------------------

REPO_ROOT = Path(__file__).resolve().parent.parent
WARMUP_REQUESTS = 3  # per connection, before the clock starts (1 for batches)
REQUEST_TIMEOUT = 30.0
LOAD_PROCESSES = 2
PGBENCH_REQUEST_ID = "pgbench-" + "0" * 24  # as long as the API's uuid4().hex
API_ENV_DROPPED = ("MAILROOM_RATE_LIMIT_URL",)  # ingest is measured, not the limiter


@dataclass(frozen=True)
class Statement:
    name: str  # its named block in shared/sql/*.sql
    query: str
    params: dict[str, Any]
    pipeline: bool
    in_transaction: bool  # False: autocommit, the statement is its own transaction


class _RecordingConnection:
    """A real connection that notes what ``execute`` runs (named blocks of shared/sql)."""

    def __init__(self, conn: psycopg.Connection[DictRow]) -> None:
        self._conn = conn
        self.statements: list[Statement] = []

    def execute(self, query: Any, params: Any = None, **kwargs: Any) -> Any:
        name = next(name for name, text in QUERIES.items() if text == query)
        pipeline = self._conn.pgconn.pipeline_status != pq.PipelineStatus.OFF
        in_transaction = self._conn.info.transaction_status != pq.TransactionStatus.IDLE
        self.statements.append(Statement(name, query, dict(params), pipeline, in_transaction))
        return self._conn.execute(query, params, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conn, name)


def capture_ingest(db_url: str, bench: harness.Bench) -> list[Statement]:
    """Accept ORDER_MAIL once as POST /v1/mails does without an Idempotency-Key (the ingest
    statement alone, in autocommit: see ingest_api/ingest.py) and note what ran; the mail is
    committed under PGBENCH_REQUEST_ID and counted as pgbench's."""
    mail = harness.stored_mail(harness.ORDER_MAIL, bench.tenant)
    with psycopg.connect(db_url, autocommit=True, row_factory=dict_row) as conn:
        recorder = _RecordingConnection(conn)
        ingest = IngestTransaction(
            contextlib.ExitStack(), cast("Any", recorder), bench.tenant, None
        )
        ingest.add_mails([mail])
        request_id_var.set(PGBENCH_REQUEST_ID)
        ingest.commit()
    return recorder.statements


@dataclass
class PgbenchScript:
    text: str
    variables: dict[str, str]  # pgbench -D name=value
    blocks: list[str]
    pipeline: bool
    parameters: dict[str, str] = field(default_factory=dict)  # placeholder -> pgbench SQL


_PLACEHOLDER = re.compile(r"%%|%\((\w+)\)s")


def pgbench_script(
    statements: list[Statement], tenant_id: uuid.UUID, conn: psycopg.Connection[Any]
) -> PgbenchScript:
    """The recorded statements as a pgbench script, one mail per transaction. Each
    ``%(name)s`` becomes what psycopg sent: ``CAST(:name AS type)`` for a typed value, a bare
    ``:name`` for a str (sent untyped), ``NULL`` for None, ``ARRAY[...]`` around a list's one
    element, and ``gen_random_uuid()`` for a uuid other than the tenant's (the mail id)."""
    adapt = Transformer(conn)
    pipeline = any(s.pipeline for s in statements)
    script = PgbenchScript("", {}, [s.name for s in statements], pipeline)

    def value_sql(value: Any) -> tuple[str, str | None]:
        """The SQL for one value, with ``{var}`` where the variable goes, and its text."""
        if value is None:
            return "NULL", None
        if isinstance(value, uuid.UUID) and value != tenant_id:
            return "gen_random_uuid()", None
        dumper = adapt.get_dumper(value, PyFormat.TEXT)
        text = bytes(dumper.dump(value) or b"").decode()
        if not dumper.oid:  # psycopg sends str untyped; the server infers the type
            return "{var}", text
        return f"CAST({{var}} AS {conn.adapters.types[dumper.oid].name})", text

    commands = []
    for index, statement in enumerate(statements):

        def substitute(match: re.Match[str], index: int = index, st: Statement = statement) -> str:
            if (name := match.group(1)) is None:
                return "%"
            value = st.params[name]
            if isinstance(value, list | tuple):
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
    body = "\n".join(commands) + "\n"
    if any(s.in_transaction for s in statements):
        body = "BEGIN;\n" + body + "COMMIT;\n"
    script.text = f"\\startpipeline\n{body}\\endpipeline\n" if pipeline else body
    return script


CDP_CAMPAIGN: dict[str, Any] = {  # rendered for every event by its one workflow
    "key": "order-shipped",
    "from": "Example Shop <shop@example.com>",
    "subject": "Your order {{ order_id }} has shipped, {{ first_name }}",
    "text": harness.ORDER_MAIL["text"].replace("Bob", "{{ first_name }}"),
    "html": harness.ORDER_MAIL["html"].replace("Bob", "{{ first_name }}"),
    "tags": ["orders"],
}
CDP_WORKFLOW = {"event": "Order Shipped", "campaign": CDP_CAMPAIGN["key"]}
CDP_EVENT: dict[str, Any] = {  # a Segment track call; messageId is new for every request
    "type": "track",
    "event": "Order Shipped",
    "userId": "u-20931",
    "timestamp": "2026-11-30T12:00:00.000Z",
    "properties": {"order_id": "A-20931", "total": 54.8, "first_name": "Bob"},
    "context": {"traits": {"email": "bob@example.net", "name": "Bob Example", "plan": "pro"}},
}


@dataclass(frozen=True)
class CdpSigner:
    """Makes each CDP request: a new messageId (else it is a redelivery that creates
    nothing), signed with the tenant's secret as a CDP would."""

    tenant_id: str
    secret: str

    def request(self) -> tuple[bytes, dict[str, str]]:
        body = json.dumps({**CDP_EVENT, "messageId": uuid.uuid4().hex}).encode()
        return body, {
            "Content-Type": "application/json",
            "Content-Length": str(len(body)),
            "X-Mailroom-Tenant": self.tenant_id,
            signatures.HEADER: signatures.sign(self.secret, int(time.time()), body),
        }


@dataclass(frozen=True)
class Target:
    port: int
    path: str
    body: bytes
    headers: dict[str, str]
    counted: bool = False  # the answer says how many mails were accepted (batch, CDP)
    warmup: int = WARMUP_REQUESTS
    signer: CdpSigner | None = None  # a new body and headers for every request


def _post(conn: http.client.HTTPConnection, target: Target) -> tuple[str, int, int]:
    """One request: its outcome and the mails it accepted and rejected (or failed)."""
    body, headers = target.signer.request() if target.signer else (target.body, target.headers)
    outcome, answer = harness.post(conn, target.path, body, headers)
    if outcome != "202" or not target.counted:
        return outcome, int(outcome == "202"), 0
    counts = json.loads(answer)
    return (
        "202",
        int(counts["accepted"]),
        int(counts.get("rejected", len(counts.get("failed", [])))),
    )


def _load_process(target: Target, threads: int, seconds: float, go: Any, results: Any) -> None:
    """*threads* keep-alive connections: warm-up, then (all together) *seconds* of requests."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C and stops us
    records: list[tuple[float, float, str, int, int]] = []  # start, end, outcome, mails +/-
    warm: list[tuple[str, int, int]] = []

    def client() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", target.port, timeout=REQUEST_TIMEOUT)
        warm.extend(_post(conn, target) for _ in range(target.warmup))
        go.wait()
        now = time.monotonic()
        deadline = now + seconds
        while now < deadline:
            outcome, accepted, rejected = _post(conn, target)
            records.append((now, end := time.monotonic(), outcome, accepted, rejected))
            now = end
        conn.close()

    workers = [threading.Thread(target=client) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    warm_202 = [accepted for outcome, accepted, _ in warm if outcome == "202"]
    results.put((records, (len(warm_202), sum(warm_202)), usage.ru_utime + usage.ru_stime))


def run_http(target: Target, clients: int, seconds: float, server_pid: int) -> dict[str, Any]:
    """*clients* keep-alive connections in LOAD_PROCESSES processes of threads."""
    ctx = mp.get_context("fork")  # cheap, and the parent has no threads here
    go, results = ctx.Barrier(clients + 1, timeout=120), ctx.Queue()
    n = min(LOAD_PROCESSES, clients)
    shares = [clients // n + (i < clients % n) for i in range(n)]
    procs = [
        ctx.Process(target=_load_process, args=(target, k, seconds, go, results)) for k in shares
    ]
    for proc in procs:
        proc.start()
    try:
        go.wait()  # every connection warmed up: the clock starts for all
        meter = harness.CpuMeter({"api": harness.process_tree(server_pid)}).start()
        loads = [results.get(timeout=seconds + REQUEST_TIMEOUT + 60) for _ in procs]
        cpu = meter.stop(loadgen=sum(cpu for _, _, cpu in loads), pgbench=0.0)
    finally:  # a failed run leaves no load process behind
        for proc in procs:
            proc.join(timeout=10)
            if proc.is_alive():
                proc.terminate()
    records = [record for load, _, _ in loads for record in load]
    elapsed = max(max(r[1] for r in records) - min(r[0] for r in records), 1e-9)
    ok = [end - start for start, end, outcome, _, _ in records if outcome == "202"]
    errors = Counter(outcome for _, _, outcome, _, _ in records if outcome != "202")
    mails = sum(r[3] for r in records)
    return {
        "rps": round(len(ok) / elapsed, 1),  # 202s per second
        **{k: v for k, v in harness.ms_stats(ok, digits=2).items() if k != "n"},
        "requests": len(records),
        "accepted": len(ok),
        "errors": sum(errors.values()),
        "error_kinds": dict(errors),
        "mails_accepted": mails,
        "mails_rejected": sum(r[4] for r in records),
        "mails_per_s": round(mails / elapsed, 1),
        # CPU of the server's processes (the API, or the Celery baseline) per accepted mail
        "server_cpu_ms_per_mail": round(cpu["api"] * 1000 / max(mails / elapsed, 1e-9), 3),
        "warmup_202": sum(warm[0] for _, warm, _ in loads),
        "warmup_mails": sum(warm[1] for _, warm, _ in loads),
        "cpu": cpu,
    }


PGBENCH_FIGURES = {  # key: the line of pgbench's output that gives it
    "tps": r"^tps = ([\d.]+)",
    "latency_avg_ms": r"^latency average = ([\d.]+) ms",
    "transactions": r"^number of transactions actually processed: (\d+)",
    "failed": r"^number of failed transactions: (\d+)",
}


def run_pgbench(
    db_url: str, script: Path, pg: PgbenchScript, clients: int, seconds: int, api_pid: int
) -> dict[str, Any]:
    threads = min(2, clients)
    argv = ["pgbench", "-n", "-M", "prepared", "-f", str(script), "-c", str(clients)]
    argv += ["-j", str(threads), "-T", str(seconds)]
    argv += [f"-D{name}={value}" for name, value in pg.variables.items()]
    argv.append(db_url)  # libpq expands a connection URI given as the database name
    meter = harness.CpuMeter({"api": harness.process_tree(api_pid)}).start()
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    done = subprocess.run(argv, capture_output=True, text=True, check=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    pgbench_cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    cpu = meter.stop(loadgen=0.0, pgbench=pgbench_cpu)
    found = {k: re.search(p, done.stdout, re.MULTILINE) for k, p in PGBENCH_FIGURES.items()}
    value = {k: float(m.group(1)) if m else 0.0 for k, m in found.items()}
    return {
        "tps": round(value["tps"], 1),
        "latency_avg_ms": value["latency_avg_ms"],
        "transactions": int(value["transactions"]),
        "failed": int(value["failed"]),
        "threads": threads,
        "cpu": cpu,
    }


def describe_cpu(cpu: dict[str, float], server: str = "api") -> str:
    rest = max(cpu["machine"] - cpu["api"] - cpu["loadgen"] - cpu["pgbench"], 0.0)
    return (
        f"cores busy {cpu['machine']:.2f}/{os.cpu_count()}: {server} {cpu['api']:.2f}, "
        f"load generator {cpu['loadgen']:.2f}, pgbench {cpu['pgbench']:.2f}, "
        f"rest (postgres + other tenants) {rest:.2f}"
    )


def describe(label: str, run: dict[str, Any], server: str, unit: str = "req/s") -> str:
    errors = f" {run['error_kinds']}" if run["errors"] else ""
    rate = run["mails_per_s"] if unit == "mails/s" else run["rps"]  # events/s: 202s too
    extra = f" ({run['rps']:.1f} req/s)" if unit == "mails/s" else ""
    return (
        f"[{label}] {rate:8.1f} {unit}{extra}  p50 {run['p50_ms']:7.2f} ms  "
        f"p99 {run['p99_ms']:7.2f} ms  max {run['max_ms']:7.2f} ms  "
        f"{run['accepted']} x 202, {run['errors']} errors{errors}\n"
        f"{'':18}{describe_cpu(run['cpu'], server)}"
    )


def print_tables(
    rows: list[dict[str, Any]], batch: dict[str, Any], cdp_runs: list[dict[str, Any]]
) -> None:
    harness.print_table(
        [("clients", "d"), ("|", ""), ("API req/s", ".1f"), ("p50 ms", ".2f"), ("p99 ms", ".2f"),
         ("err", "d"), ("cpu ms/mail", ".2f"), ("|", ""), ("pgbench tps", ".1f"),
         ("lat ms", ".2f"), ("|", ""), ("celery req/s", ".1f"), ("p50 ms", ".2f"),
         ("p99 ms", ".2f"), ("err", "d"), ("cpu ms/req", ".2f"), ("|", ""),
         ("API/pgbench", ".3f"), ("API/celery", ".3f")],
        [
            [r["clients"], *(r["api"][k] for k in ("rps", "p50_ms", "p99_ms", "errors")),
             r["api"]["server_cpu_ms_per_mail"], r["pgbench"]["tps"],
             r["pgbench"]["latency_avg_ms"],
             *(r["celery"][k] for k in ("rps", "p50_ms", "p99_ms", "errors")),
             r["celery"]["server_cpu_ms_per_mail"], r["ratio"], r["ratio_celery"]]
            for r in rows
        ],
    )  # fmt: skip
    if batch["results"]:
        print(f"\nPOST /v1/mails/batch, {batch['size']} mails per request")
        harness.print_table(
            [("batch clients", "d"), ("|", ""), ("batches/s", ".1f"), ("mails/s", ".1f"),
             ("p50 ms", ".1f"), ("p99 ms", ".1f"), ("rejected", "d"), ("err", "d"),
             ("cpu ms/mail", ".3f"), ("|", ""), ("mails/s / best single API req/s", ".2f")],
            [
                [r["clients"], *(r[k] for k in ("rps", "mails_per_s", "p50_ms", "p99_ms")),
                 r["mails_rejected"], r["errors"], r["server_cpu_ms_per_mail"],
                 r["vs_single_api"]]
                for r in batch["results"]
            ],
        )  # fmt: skip
    if cdp_runs:
        print("\nPOST /v1/cdp/events, signed, one matching workflow (one mail per event)")
        harness.print_table(
            [("CDP clients", "d"), ("|", ""), ("events/s", ".1f"), ("mails/s", ".1f"),
             ("p50 ms", ".2f"), ("p99 ms", ".2f"), ("err", "d"), ("cpu ms/event", ".2f"),
             ("|", ""), ("events/s / single API req/s", ".2f")],
            [
                [r["clients"], *(r[k] for k in ("rps", "mails_per_s", "p50_ms", "p99_ms")),
                 r["errors"], r["server_cpu_ms_per_mail"], r["vs_single_api"]]
                for r in cdp_runs
            ],
        )  # fmt: skip


def cdp_setup(bench: harness.Bench, port: int, env: dict[str, str]) -> str:
    """The campaign, its workflow and the tenant's CDP secret, made as an operator would."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=REQUEST_TIMEOUT)
    for path, document in (("/v1/campaigns", CDP_CAMPAIGN), ("/v1/workflows", CDP_WORKFLOW)):
        body = json.dumps(document).encode()
        outcome, answer = harness.post(conn, path, body, harness.json_headers(bench.api_key, body))
        if outcome != "201":
            raise SystemExit(f"POST {path}: {outcome} {answer[:300]!r}")
    conn.close()
    rotate = [harness.console_script("ingest-api"), "rotate-webhook-secret", bench.tenant.name]
    return harness.run_cli(rotate, env).splitlines()[-1]


def check_integrity(
    db_url: str, api_202: int, pg_done: int, celery_202: int, in_redis: int, cdp: dict[str, int]
) -> dict[str, Any]:
    """Every 202 and every pgbench commit must be a row; pgbench and the API must have written
    the same rows but for ids, times and request ids; every CDP 202 an event and its mail."""
    with psycopg.connect(db_url, autocommit=True) as conn:
        counts = conn.execute(
            "SELECT count(*) FILTER (WHERE m.source = 'api' AND e.detail->>'request_id' <> %s),"
            " count(*) FILTER (WHERE m.source = 'api' AND e.detail->>'request_id' = %s),"
            " (SELECT count(*) FROM outbox),"
            " count(*) FILTER (WHERE m.source = 'cdp'),"
            " (SELECT count(*) FROM cdp_events)"
            " FROM mail_events e JOIN mails m ON m.id = e.mail_id WHERE e.kind = 'accepted'",
            (PGBENCH_REQUEST_ID, PGBENCH_REQUEST_ID),
        ).fetchone()
        shapes = conn.execute(  # of the single-mail and batch rows (pgbench's and the API's)
            "SELECT (SELECT count(DISTINCT md5((to_jsonb(m) - 'id' - 'created_at'"
            "         - 'updated_at')::text)) FROM mails m WHERE source = 'api'),"
            " (SELECT count(DISTINCT md5((to_jsonb(o) - 'id' - 'mail_id' - 'available_at'"
            "         - 'created_at')::text))"
            "  FROM outbox o JOIN mails m ON m.id = o.mail_id WHERE m.source = 'api'),"
            " (SELECT count(DISTINCT md5((to_jsonb(e) - 'id' - 'mail_id' - 'created_at'"
            "         || jsonb_build_object('detail', e.detail - 'request_id'))::text))"
            "  FROM mail_events e JOIN mails m ON m.id = e.mail_id WHERE m.source = 'api')"
        ).fetchone()
    assert counts is not None and shapes is not None
    api_rows, pg_rows, outbox_rows, cdp_rows, cdp_events = counts
    ok = (
        api_202 == api_rows and pg_done == pg_rows
        and outbox_rows == api_rows + pg_rows + cdp_rows and tuple(shapes) == (1, 1, 1)
        and celery_202 == in_redis and cdp["mails"] == cdp_rows and cdp["events"] == cdp_events
    )  # fmt: skip
    print(
        f"\nintegrity{'' if ok else ' MISMATCH'}: {api_202} mails accepted by the API (incl. "
        f"warm-up) -> {api_rows} accepted mails; {pg_done} pgbench transactions (incl. the "
        f"probe) -> {pg_rows} mails; {cdp['events']} CDP events accepted with {cdp['mails']} "
        f"mails -> {cdp_events} events, {cdp_rows} mails; outbox rows {outbox_rows}; "
        f"{celery_202} celery 202s -> {in_redis} messages in Redis; distinct mails/outbox/events "
        f"rows apart from ids, times and request ids: {shapes[0]}/{shapes[1]}/{shapes[2]} "
        "(1/1/1: pgbench wrote what the API writes)"
    )
    return {
        "api_mails_accepted": api_202, "api_rows": api_rows, "pgbench_transactions": pg_done,
        "pgbench_rows": pg_rows, "outbox_rows": outbox_rows, "celery_202": celery_202,
        "celery_messages_in_redis": in_redis, "cdp_events_accepted": cdp["events"],
        "cdp_event_rows": cdp_events, "cdp_mails_accepted": cdp["mails"], "cdp_mail_rows": cdp_rows,
        "distinct_row_shapes": dict(zip(("mails", "outbox", "events"), shapes, strict=True)),
        "ok": ok,
    }  # fmt: skip


def main() -> dict[str, Any]:
    parser = harness.arguments(__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=10, help="duration of each run")
    parser.add_argument("--clients", default="1,8,32", help="comma-separated client counts")
    parser.add_argument("--batch-clients", default="1,4", help="for /v1/mails/batch (empty: none)")
    parser.add_argument("--batch-size", type=int, default=500, help="mails per batch request")
    parser.add_argument("--cdp-clients", default="8", help="for /v1/cdp/events (empty: none)")
    parser.add_argument("--workers", type=int, default=2, help="gunicorn workers of both servers")
    args = parser.parse_args()
    body = json.dumps(harness.ORDER_MAIL).encode()
    batch_body = json.dumps({"mails": [harness.ORDER_MAIL] * args.batch_size}).encode()
    rows: list[dict[str, Any]] = []
    batch: dict[str, Any] = {"size": args.batch_size, "results": []}
    api_202 = celery_202 = in_redis = 0
    cdp = {"events": 0, "mails": 0}
    pg_done = 1  # capture_ingest's mail

    with harness.bench(args) as bench, contextlib.ExitStack() as servers:
        keys, db_url, workdir = bench.keys, bench.base_url, bench.workdir
        with psycopg.connect(db_url, autocommit=True) as conn:
            pg = pgbench_script(capture_ingest(db_url, bench), bench.tenant.id, conn)
        script = workdir / "ingest.sql"
        script.write_text(pg.text)
        print(
            f"pgbench script from shared/sql/queries.sql block(s) {', '.join(pg.blocks)}, as the "
            f"API ran them (pipeline: {'yes' if pg.pipeline else 'no'}); parameters:\n"
            + "\n".join(f"  {name:<28} -> {sql_}" for name, sql_ in pg.parameters.items())
            + "\nthe script:\n" + "\n".join(f"  {line}" for line in pg.text.splitlines())
        )  # fmt: skip
        # ingest-api serve keeps prometheus_client's files here, not in a /tmp folder of its own.
        (workdir / "metrics").mkdir()
        env = {k: v for k, v in os.environ.items() if k not in API_ENV_DROPPED} | {
            "MAILROOM_DATABASE_URL": db_url, "PROMETHEUS_MULTIPROC_DIR": str(workdir / "metrics")
        }  # fmt: skip
        port, celery_port = harness.free_port(), harness.free_port()
        celery_env = os.environ | {
            "MAILROOM_BENCH_BROKER_URL": args.redis_url, "MAILROOM_BENCH_KEY_PREFIX": keys.prefix
        }  # fmt: skip
        celery_argv = [sys.executable, "-m", "gunicorn", "-c", "python:ingest_api.gunicorn_conf"]
        celery_argv += ["--bind", f"127.0.0.1:{celery_port}", "--workers", str(args.workers)]
        celery_argv += ["bench.celery_baseline:app"]  # imported from the repository root

        def serve(name: str, argv: list[str], env: dict[str, str], at: int, cwd: Path) -> int:
            log = workdir / f"{name.replace(' ', '-')}.log"
            pid = servers.enter_context(harness.service(name, argv, env, log, cwd=cwd))
            harness.wait_http_ready(name, pid, at, log)
            return pid

        api_pid = serve("ingest-api", harness.api_argv(port, args.workers), env, port, Path.cwd())
        celery_pid = serve("celery baseline", celery_argv, celery_env, celery_port, REPO_ROOT)
        threads = int(os.environ.get("MAILROOM_API_THREADS", "8"))
        print(
            f"ingest-api on 127.0.0.1:{port}: {args.workers} gunicorn workers x {threads} threads, "
            f"db pool {os.environ.get('MAILROOM_DB_POOL_SIZE', '8')}/worker, log level "
            f"{os.environ.get('MAILROOM_LOG_LEVEL', 'INFO')}, no rate limit; celery baseline on "
            f"127.0.0.1:{celery_port}, same gunicorn settings; request body {len(body)} B, "
            f"batch body {len(batch_body)} B; {args.seconds} s per run\n"
        )
        headers = harness.json_headers(bench.api_key, body)
        api = Target(port, "/v1/mails", body, headers)
        celery = Target(celery_port, "/v1/mails", body, headers)
        for count in harness.int_list(args.clients):
            api_run = run_http(api, count, args.seconds, api_pid)
            api_202 += api_run["mails_accepted"] + api_run["warmup_mails"]
            print(describe(f"API     c={count:>3}", api_run, "api"), flush=True)
            pg_run = run_pgbench(db_url, script, pg, count, args.seconds, api_pid)
            pg_done += pg_run["transactions"]
            print(
                f"[pgbench c={count:>3}] {pg_run['tps']:8.1f} tps    latency avg "
                f"{pg_run['latency_avg_ms']:.3f} ms  {pg_run['transactions']} transactions, "
                f"{pg_run['failed']} failed (-j {pg_run['threads']})\n"
                f"{'':18}{describe_cpu(pg_run['cpu'])}",
                flush=True,
            )
            celery_run = run_http(celery, count, args.seconds, celery_pid)
            celery_202 += celery_run["accepted"] + celery_run["warmup_mails"]
            queued = keys.llen(TRANSACTIONAL_QUEUE)
            in_redis += queued
            keys.delete(keep_bindings=True)  # the next run starts with an empty queue
            print(
                describe(f"celery  c={count:>3}", celery_run, "celery")
                + f"\n{'':18}{queued} messages were in Redis (queue emptied)",
                flush=True,
            )
            rows.append(
                {
                    "clients": count, "api": api_run, "pgbench": pg_run, "celery": celery_run,
                    "ratio": harness.ratio(api_run["rps"], pg_run["tps"]),
                    "ratio_celery": harness.ratio(api_run["rps"], celery_run["rps"]),
                }
            )  # fmt: skip
        best_single = max(r["api"]["rps"] for r in rows)
        batch_headers = harness.json_headers(bench.api_key, batch_body)
        target = Target(port, "/v1/mails/batch", batch_body, batch_headers, counted=True, warmup=1)
        for count in harness.int_list(args.batch_clients):
            run = run_http(target, count, args.seconds, api_pid)
            api_202 += run["mails_accepted"] + run["warmup_mails"]
            print(describe(f"batch   c={count:>3}", run, "api", "mails/s"), flush=True)
            vs_single_api = harness.ratio(run["mails_per_s"], best_single)
            run |= {"clients": count, "vs_single_api": vs_single_api}
            batch["results"].append(run)
        signer = CdpSigner(str(bench.tenant.id), cdp_setup(bench, port, env))
        cdp_target = Target(port, "/v1/cdp/events", b"", {}, counted=True, signer=signer)
        cdp_runs: list[dict[str, Any]] = []
        for count in harness.int_list(args.cdp_clients):
            run = run_http(cdp_target, count, args.seconds, api_pid)
            cdp["events"] += run["accepted"] + run["warmup_202"]
            cdp["mails"] += run["mails_accepted"] + run["warmup_mails"]
            print(describe(f"CDP     c={count:>3}", run, "api", "events/s"), flush=True)
            single = next((r["api"] for r in rows if r["clients"] == count), None)
            run |= {
                "clients": count,
                "vs_single_api": harness.ratio(run["rps"], single and single["rps"]),
            }
            cdp_runs.append(run)
        servers.close()  # the servers stop before the rows are counted
        print()
        print_tables(rows, batch, cdp_runs)
        integrity = check_integrity(db_url, api_202, pg_done, celery_202, in_redis, cdp)
    return {
        "seconds": args.seconds,
        "api_workers": args.workers,
        "api_threads": threads,
        "request_body_bytes": len(body),
        "postgres": bench.postgres,
        "pgbench_script": {k: getattr(pg, k) for k in ("blocks", "pipeline", "parameters")},
        "results": rows,
        "batch": batch,
        "cdp": cdp_runs,
        "integrity": integrity,
    }


if __name__ == "__main__":
    harness.run(main)
