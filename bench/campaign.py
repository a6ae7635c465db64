"""A campaign burst beside transactional mail, for each worker layout.

The time to the campaign's last delivery, and transactional latency during the burst beside a
baseline. Run as ``.venv/bin/python bench/campaign.py [--recipients 10000] [--transactional-rate 20]
[--worker-layout shared,per-stream]``. For each layout, on a fresh pipeline (``ingest-api serve``,
``outbox-relay run``, the layout's ``mail-worker run`` processes and an SMTP sink in a child
process that stamps each arrival): transactional mail alone through ``POST /v1/mails`` at
``--transactional-rate`` for ``--baseline-seconds`` (the baseline); then the campaign, triggered
through ``POST /v1/campaigns/<key>/trigger`` in requests of at most 500 recipients (the API's
limit per trigger), one after the other on one keep-alive connection, while transactional mail
goes on at the same rate until the campaign's last delivery. Latency is from each 202 to the
mail's arrival at the sink; mails are counted there by Message-ID (exactly once).
"""

from __future__ import annotations

import http.client
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import harness

# --- app internals this scenario uses (update here when the apps move things) ------------------
from ingest_api.schemas.campaign import MAX_TRIGGER_RECIPIENTS
from shared.queues import CAMPAIGN_QUEUE, TRANSACTIONAL_QUEUE, WEBHOOK_QUEUE

# -----------------------------------------------------------------------------------------------

CAMPAIGN_KEY = "spring-news"
CAMPAIGN: dict[str, Any] = {  # ~1.5 KB rendered, about the size of harness.ORDER_MAIL
    "key": CAMPAIGN_KEY,
    "from": "Example Shop <news@example.com>",
    "subject": "{{ first_name }}, the spring collection is here",
    "text": (
        "Hello {{ first_name }},\n\nThe spring collection is in the shop from today: walnut "
        "desk organisers, linen notebooks in three new colours and a lamp we have wanted to "
        "make for two years. As a subscriber you see it a day before everyone else.\n\n"
        "https://shop.example.com/spring?ref={{ ref }}\n\nShipping is free on orders over EUR "
        "40 until the end of the month.\n\n-- \nThe Example Shop team\n"
    ),
    "html": (
        '<!doctype html><html><body style="font-family:sans-serif;color:#222">'
        "<p>Hello {{ first_name }},</p><p>The spring collection is in the shop from today: "
        "walnut desk organisers, linen notebooks in three new colours and a lamp we have wanted "
        "to make for two years. As a subscriber you see it a day before everyone else.</p>"
        '<p><a href="https://shop.example.com/spring?ref={{ ref }}" style="color:#0a58ca">'
        "See the collection</a></p><p>Shipping is free on orders over EUR 40 until the end of "
        'the month.</p><p style="color:#888">The Example Shop team</p></body></html>'
    ),
    "tags": ["newsletter"],
}
WARMUP_RECIPIENTS = 2  # a first trigger: the campaign worker's SMTP connection opened
DRAIN_TIMEOUT = 60.0  # how long transactional mail may still take after the load stops
REQUEST_TIMEOUT = 120.0


def recipients(count: int, prefix: str) -> list[dict[str, Any]]:
    return [
        {"email": f"{prefix}{i}@example.net", "data": {"first_name": f"Reader {i}", "ref": i}}
        for i in range(count)
    ]


def api_call(port: int, key: str, path: str, body: dict[str, Any]) -> tuple[str, Any]:
    """One POST on a fresh connection: the status and the parsed answer."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=REQUEST_TIMEOUT)
    payload = json.dumps(body).encode()
    try:
        status, answer = harness.post(conn, path, payload, harness.json_headers(key, payload))
    finally:
        conn.close()
    return status, json.loads(answer) if answer else None


@dataclass
class Trigger:
    """One ``POST /v1/campaigns/<key>/trigger`` (monotonic clock)."""

    started: float
    answered: float
    ids: list[str]


def trigger_campaign(
    port: int, key: str, everyone: list[dict[str, Any]], per_request: int
) -> list[Trigger]:
    """Every recipient, *per_request* at a time, one request after the other on one
    keep-alive connection (a client's loop over its list)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=REQUEST_TIMEOUT)
    path = f"/v1/campaigns/{CAMPAIGN_KEY}/trigger"
    triggers = []
    try:
        for offset in range(0, len(everyone), per_request):
            payload = json.dumps({"recipients": everyone[offset : offset + per_request]}).encode()
            started = time.monotonic()
            status, answer = harness.post(conn, path, payload, harness.json_headers(key, payload))
            answered = time.monotonic()
            if status != "202":
                raise RuntimeError(f"trigger at recipient {offset}: {status} {answer[:500]!r}")
            ids = [str(mail["id"]) for mail in json.loads(answer)["mails"]]
            triggers.append(Trigger(started, answered, ids))
    finally:
        conn.close()
    return triggers


def latency(
    sent: dict[str, float],
    arrivals: dict[str, float],
    window: tuple[float, float] = (float("-inf"), float("inf")),
) -> dict[str, float | int]:
    """202 -> arrival of the mails (id: its 202) that arrived, of those whose 202 was in
    *window*."""
    start, end = window
    return harness.ms_stats(
        [arrivals[i] - at for i, at in sent.items() if i in arrivals and start <= at <= end]
    )


def transactional_phase(
    running: harness.Pipeline, loop: harness.OpenLoop, sent: Sequence[harness.Sent]
) -> tuple[dict[str, float], dict[str, float], dict[str, Any]]:
    """Wait for the loop's accepted mails: (id: 202, id: arrival, what the loop did)."""
    accepted = {s.mail_id: s.answered for s in sent if s.mail_id}
    arrivals = running.sink.wait_for(set(accepted), DRAIN_TIMEOUT, running.check_alive)
    return accepted, arrivals, harness.post_stats(sent) | {"rate": loop.rate}


def layout_run(
    bench: harness.Bench, layout: str, workers: dict[str, list[str]], args: Any
) -> dict[str, Any]:
    """Baseline, then the burst, on one fresh pipeline."""
    rate, key = args.transactional_rate, bench.api_key
    with harness.pipeline(bench, layout, workers, args.api_workers) as running:
        status, answer = api_call(running.port, key, "/v1/campaigns", CAMPAIGN)
        if status != "201":
            raise RuntimeError(f"creating the campaign: {status} {answer}")
        warm = trigger_campaign(running.port, key, recipients(WARMUP_RECIPIENTS, "warm"), 500)
        warm_ids = set(warm[0].ids)
        if len(running.sink.wait_for(warm_ids, 120, running.check_alive)) < len(warm_ids):
            raise RuntimeError(f"{layout}: campaign warm-up mail missing after 120 s")

        print(f"{layout}: baseline, transactional mail alone at {rate:g}/s", flush=True)
        count = max(1, round(rate * args.baseline_seconds))
        loop = harness.OpenLoop(running.port, key, harness.ORDER_MAIL, rate, count=count)
        base_sent, base_arrived, base_posted = transactional_phase(
            running, loop, loop.start().wait()
        )

        print(
            f"{layout}: triggering {args.recipients} recipients, transactional mail at "
            f"{rate:g}/s until the campaign's last delivery",
            flush=True,
        )
        meter = harness.CpuMeter(running.cpu_groups(bench.keys)).start()
        metered_from = time.monotonic()
        loop = harness.OpenLoop(running.port, key, harness.ORDER_MAIL, rate).start()
        triggers = trigger_campaign(
            running.port, key, recipients(args.recipients, "reader"), args.per_trigger
        )
        campaign_202 = {i: t.answered for t in triggers for i in t.ids}
        wait = max(120.0, args.recipients / 20)
        campaign_arrived = running.sink.wait_for(set(campaign_202), wait, running.check_alive)
        cpu = meter.stop()
        cpu_seconds = time.monotonic() - metered_from
        burst_sent, burst_arrived, burst_posted = transactional_phase(running, loop, loop.stop())

        first_202, last_202 = triggers[0].answered, triggers[-1].answered
        last = max(campaign_arrived.values(), default=first_202)
        drained = last - first_202
        campaign = {
            "recipients": args.recipients, "trigger_requests": len(triggers),
            "per_trigger": args.per_trigger, "accepted": len(campaign_202),
            "trigger_window_s": round(last_202 - triggers[0].started, 2),
            "trigger_request_ms": harness.ms_stats([t.answered - t.started for t in triggers]),
            "first_202_to_last_delivery_s": round(drained, 2),
            "last_202_to_last_delivery_s": round(last - last_202, 2),
            "mails_per_s": round(len(campaign_arrived) / drained, 1) if drained > 0 else None,
            "latency": latency(campaign_202, campaign_arrived),
        }  # fmt: skip
        ids = {"campaign": set(campaign_202), "baseline": set(base_sent), "burst": set(burst_sent)}
        return {
            "layout": layout, "workers": workers, "campaign": campaign,
            "baseline": base_posted | {"latency": latency(base_sent, base_arrived)},
            "burst": burst_posted | {
                "latency_during": latency(burst_sent, burst_arrived, (first_202, last)),
                "latency_all": latency(burst_sent, burst_arrived),
            },
            # Counted at the end: a duplicate may come late.
            "delivery": {name: running.sink.delivery(group) for name, group in ids.items()},
            "cpu": cpu, "cpu_seconds_window": round(cpu_seconds, 2),
        }  # fmt: skip


def ms(stats: dict[str, Any]) -> str:
    return f"p50 {stats['p50_ms']} ms, p99 {stats['p99_ms']} ms, max {stats['max_ms']} ms"


def once(delivery: dict[str, int]) -> str:
    return (
        f"exactly once {delivery['delivered_once']} of {delivery['mails']}, missing "
        f"{delivery['missing']}, duplicated {delivery['duplicated']}"
    )


def print_layout(result: dict[str, Any], description: str) -> None:
    campaign, base, burst = result["campaign"], result["baseline"], result["burst"]
    delivery = result["delivery"]
    print(
        f"\n[{result['layout']}: {description}]\n"
        f"  campaign: {campaign['accepted']} mails in {campaign['trigger_requests']} trigger "
        f"requests over {campaign['trigger_window_s']} s (each "
        f"{ms(campaign['trigger_request_ms'])})\n    last delivery "
        f"{campaign['first_202_to_last_delivery_s']} s after the first "
        f"trigger's 202 ({campaign['last_202_to_last_delivery_s']} s after the last): "
        f"{harness.fmt(campaign['mails_per_s'])} mails/s; {once(delivery['campaign'])}\n"
        f"    202 -> receipt {ms(campaign['latency'])}\n"
        f"  transactional at {base['rate']:g}/s, no campaign: {ms(base['latency'])} "
        f"(n={base['latency']['n']}); {once(delivery['baseline'])}\n"
        f"  transactional at {burst['rate']:g}/s during the burst: {ms(burst['latency_during'])} "
        f"(n={burst['latency_during']['n']}); {once(delivery['burst'])}\n"
        f"    p99 during the burst / p99 without: "
        f"{harness.fmt(ratio_p99(result), '.2f')}; API p99 {burst['api']['p99_ms']} ms, send lag "
        f"p99 {burst['send_lag']['p99_ms']} ms\n"
        f"  cores during the burst: {harness.cores_text(result['cpu'])}",
        flush=True,
    )


def ratio_p99(result: dict[str, Any]) -> float | None:
    return harness.ratio(
        result["burst"]["latency_during"]["p99_ms"], result["baseline"]["latency"]["p99_ms"]
    )


def print_table(results: list[dict[str, Any]]) -> None:
    print(
        "\ncampaign burst beside transactional mail (latency: 202 -> SMTP receipt, ms; "
        "missing/dup: of campaign + transactional mail)"
    )
    harness.print_table(
        [("layout", ""), ("|", ""), ("campaign s", ".1f"), ("mails/s", ".1f"), ("|", ""),
         ("alone p50", ".1f"), ("alone p99", ".1f"), ("|", ""), ("burst p50", ".1f"),
         ("burst p99", ".1f"), ("burst max", ".1f"), ("p99 x", ".2f"), ("|", ""),
         ("missing", "d"), ("dup", "d"), ("|", ""), ("box cores", ".2f")],
        [
            [r["layout"], r["campaign"]["first_202_to_last_delivery_s"],
             r["campaign"]["mails_per_s"], r["baseline"]["latency"]["p50_ms"],
             r["baseline"]["latency"]["p99_ms"], r["burst"]["latency_during"]["p50_ms"],
             r["burst"]["latency_during"]["p99_ms"], r["burst"]["latency_during"]["max_ms"],
             ratio_p99(r), sum(d["missing"] for d in r["delivery"].values()),
             sum(d["duplicated"] for d in r["delivery"].values()), r["cpu"].get("machine")]
            for r in results
        ],
    )  # fmt: skip


def main() -> dict[str, Any]:
    parser = harness.arguments(__doc__.splitlines()[0])
    parser.add_argument("--recipients", type=int, default=10000, help="of the campaign")
    parser.add_argument("--transactional-rate", type=float, default=20.0, help="mails/s")
    parser.add_argument(
        "--worker-layout", default="shared,per-stream",
        help="shared: one mail-worker for every queue; per-stream: one per stream (--queues)",
    )  # fmt: skip
    parser.add_argument("--baseline-seconds", type=float, default=20.0, help="transactional alone")
    parser.add_argument("--shared-concurrency", type=int, default=2, help="shared: --concurrency")
    parser.add_argument(
        "--stream-concurrency", type=int, default=1, help="per-stream: each worker's --concurrency"
    )
    parser.add_argument("--per-trigger", type=int, default=MAX_TRIGGER_RECIPIENTS)
    parser.add_argument("--api-workers", type=int, default=2, help="gunicorn's")
    args = parser.parse_args()
    stream = f"--concurrency={args.stream_concurrency}"
    layouts: dict[str, tuple[str, dict[str, list[str]]]] = {
        "shared": (
            f"one mail-worker run --concurrency {args.shared_concurrency}, every queue",
            {"worker": [f"--concurrency={args.shared_concurrency}"]},
        ),
        "per-stream": (
            f"a mail-worker run --concurrency {args.stream_concurrency} per stream",
            {
                "worker transactional": [stream, f"--queues={TRANSACTIONAL_QUEUE}"],
                "worker campaign": [stream, f"--queues={CAMPAIGN_QUEUE},{WEBHOOK_QUEUE}"],
            },
        ),
    }
    chosen = args.worker_layout.split(",")
    if unknown := set(chosen) - set(layouts):
        parser.error(f"unknown --worker-layout {', '.join(sorted(unknown))}")
    results = []
    with harness.bench(args) as bench:
        for layout in chosen:
            description, workers = layouts[layout]
            results.append(layout_run(bench, layout, workers, args))
            print_layout(results[-1], description)
    print_table(results)
    return {
        "recipients": args.recipients,
        "transactional_rate": args.transactional_rate,
        "layouts": {r["layout"]: r for r in results},
    }


if __name__ == "__main__":
    harness.run(main)
