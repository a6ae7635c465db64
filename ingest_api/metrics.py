"""Prometheus metrics of the ingest API, and ``GET /metrics``.

gunicorn runs several worker processes, each with its own counters. When
``PROMETHEUS_MULTIPROC_DIR`` is set (``ingest-api serve`` sets it to a fresh
folder), prometheus_client writes every value to a file there and ``/metrics``
adds up the files of all workers, dead ones included, so a counter never goes
back when gunicorn replaces a worker. Without the variable (Flask's test
client, a single process) the default registry serves its own values.

The variable must be set before ``prometheus_client`` is first imported, which
is why ``serve`` sets it in the environment that gunicorn and its workers inherit.
"""

from __future__ import annotations

import os
import time

from flask import Flask, Response, g, request
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from prometheus_client.multiprocess import MultiProcessCollector

MULTIPROC_DIR_VARIABLE = "PROMETHEUS_MULTIPROC_DIR"

HTTP_REQUESTS = Counter(
    "mailroom_http_requests",
    "HTTP requests answered by the ingest API",
    ["method", "endpoint", "status"],
)
HTTP_LATENCY = Histogram(
    "mailroom_http_request_duration_seconds",
    "Time from the start of a request to its response, by endpoint and status",
    ["method", "endpoint", "status"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
MAILS_ACCEPTED = Counter(
    "mailroom_mails_accepted",
    "Mails committed by the ingest transaction (counted after its COMMIT)",
)
RATE_LIMIT_REQUESTS = Counter(
    "mailroom_rate_limit_requests",
    "Requests seen by the rate limiter: allowed, limited (429), or unchecked"
    " (let through without a decision because Redis failed or is being skipped)",
    ["result"],
)
RATE_LIMIT_FAILURES = Counter(
    "mailroom_rate_limit_failures",
    "Calls to the rate limit Redis that failed or timed out (the request went ahead)",
)

# Shown at 0 from the start, so alerts and rate() see the series before the first event.
for _result in ("allowed", "limited", "unchecked"):
    RATE_LIMIT_REQUESTS.labels(result=_result)

# Label values stay a fixed set whatever clients send, so nobody can grow the
# exposition (one series per label combination) without limit: a request that
# matched no route (404, 405) is "unmatched", a method outside HTTP's is "other".
UNMATCHED = "unmatched"
OTHER_METHOD = "other"
KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def record_mails_accepted(count: int) -> None:
    """Call once the ingest transaction has committed *count* new mails."""
    if count > 0:
        MAILS_ACCEPTED.inc(count)


def _start_timer() -> None:
    g.metrics_started = time.perf_counter()


def _observe(response: Response) -> Response:
    started = g.pop("metrics_started", None)
    rule = request.url_rule
    labels = {
        "method": request.method if request.method in KNOWN_METHODS else OTHER_METHOD,
        "endpoint": rule.rule if rule is not None else UNMATCHED,
        "status": str(response.status_code),
    }
    HTTP_REQUESTS.labels(**labels).inc()
    if started is not None:
        HTTP_LATENCY.labels(**labels).observe(time.perf_counter() - started)
    return response


def render() -> bytes:
    """The exposition text: all workers' values in multiprocess mode, else this process's."""
    if os.environ.get(MULTIPROC_DIR_VARIABLE):
        registry = CollectorRegistry()
        MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return generate_latest(registry)
    return generate_latest(REGISTRY)


def metrics_view() -> Response:
    return Response(render(), content_type=CONTENT_TYPE_LATEST)


def init_app(app: Flask) -> None:
    """Time and count every request, and serve ``GET /metrics``.

    Call right after the request-id hook, before authentication, so the time
    spent authenticating (and rate limiting) is part of the measured latency.
    """
    app.before_request(_start_timer)
    app.after_request(_observe)
    app.add_url_rule("/metrics", "metrics", metrics_view, methods=["GET"])
