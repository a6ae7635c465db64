"""The per-key rate limit over a real Redis, and that it fails open when Redis does not answer."""

from __future__ import annotations

import logging
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import closing
from dataclasses import replace
from urllib.parse import urlsplit

import psycopg
import pytest
import redis
from flask import Flask
from flask.testing import FlaskClient
from prometheus_client import REGISTRY

from ingest_api.rate_limit import REDIS_TIMEOUT_SECONDS, RateLimiter
from shared.config import ConfigError, Settings, load_settings
from tests import services
from tests.conftest import TenantKey, make_app
from tests.services import free_port
from tests.tcp_proxy import TcpProxy

MAIL = {
    "from": "Alice <alice@example.com>",
    "to": ["bob@example.org"],
    "subject": "Hello",
    "text": "Hi Bob",
}
HEADERS = ("RateLimit-Limit", "RateLimit-Remaining", "RateLimit-Reset")
NO_SUCH_MAIL = f"/v1/mails/{uuid.uuid4()}"


def bearer(tenant: TenantKey) -> dict[str, str]:
    return {"Authorization": f"Bearer {tenant.key}"}


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def failures() -> float:
    return sample("mailroom_rate_limit_failures_total")


def unchecked() -> float:
    return sample("mailroom_rate_limit_requests_total", result="unchecked")


def mail_count(db: psycopg.Connection) -> int:
    row = db.execute("SELECT count(*) FROM mails").fetchone()
    assert row is not None
    return int(row[0])


@pytest.fixture
def rate_limit_prefix() -> Iterator[str]:
    prefix = f"mailroom-test-ratelimit-{uuid.uuid4().hex[:12]}:"
    yield prefix
    services.delete_redis_keys(services.redis_url(), prefix)


@pytest.fixture
def redis_address() -> tuple[str, int]:
    parts = urlsplit(services.redis_url())
    if parts.scheme != "redis" or parts.hostname is None:
        pytest.skip("needs Redis over TCP")
    return parts.hostname, parts.port or 6379


@pytest.fixture
def limited(settings: Settings, rate_limit_prefix: str) -> Settings:
    """Three requests at once, then one every two seconds."""
    return replace(
        settings,
        rate_limit_url=services.redis_url(),
        rate_limit_rate=0.5,
        rate_limit_burst=3,
        rate_limit_prefix=rate_limit_prefix,
    )


AppFactory = Callable[[Settings], Flask]


@pytest.fixture
def make_limited_app() -> Iterator[AppFactory]:
    apps: list[Flask] = []

    def make(settings: Settings) -> Flask:
        app = make_app(settings)
        apps.append(app)
        return app

    yield make
    for app in apps:
        app.extensions["mailroom.pool"].close()


@pytest.fixture
def limited_client(limited: Settings, make_limited_app: AppFactory) -> FlaskClient:
    return make_limited_app(limited).test_client()


def test_settings_are_read_and_checked() -> None:
    settings = load_settings(
        environ={
            "MAILROOM_RATE_LIMIT_URL": "redis://cache:6379/2",
            "MAILROOM_RATE_LIMIT_RATE": "2.5",
            "MAILROOM_RATE_LIMIT_BURST": "7",
            "MAILROOM_RATE_LIMIT_PREFIX": "rl:",
        }
    )
    assert (settings.rate_limit_url, settings.rate_limit_rate) == ("redis://cache:6379/2", 2.5)
    assert (settings.rate_limit_burst, settings.rate_limit_prefix) == (7, "rl:")
    defaults = load_settings(environ={})
    assert defaults.rate_limit_url == ""
    assert (defaults.rate_limit_rate, defaults.rate_limit_burst) == (50.0, 100)
    assert defaults.rate_limit_prefix == "mailroom:ratelimit:"
    for variable, value in [
        ("MAILROOM_RATE_LIMIT_URL", "http://cache"),
        ("MAILROOM_RATE_LIMIT_RATE", "0"),
        ("MAILROOM_RATE_LIMIT_BURST", "1.5"),
    ]:
        with pytest.raises(ConfigError, match=f"^{variable} is malformed: "):
            load_settings(environ={variable: value})


def test_no_url_means_no_limit_and_no_headers(app: Flask, tenant: TenantKey) -> None:
    assert app.extensions["mailroom.rate_limiter"] is None
    response = app.test_client().post("/v1/mails", json=MAIL, headers=bearer(tenant))
    assert response.status_code == 202
    assert not any(header in response.headers for header in HEADERS)


def test_a_burst_then_429_with_retry_after(
    limited_client: FlaskClient, tenant: TenantKey, db: psycopg.Connection
) -> None:
    for remaining in (2, 1, 0):
        response = limited_client.post("/v1/mails", json=MAIL, headers=bearer(tenant))
        assert response.status_code == 202
        assert response.headers["RateLimit-Limit"] == "3"
        assert response.headers["RateLimit-Remaining"] == str(remaining)
        # Until the bucket is full again: (3 - remaining) tokens at 0.5 per second.
        assert int(response.headers["RateLimit-Reset"]) == (3 - remaining) * 2
        assert "Retry-After" not in response.headers

    limited_before = sample("mailroom_rate_limit_requests_total", result="limited")
    response = limited_client.post("/v1/mails", json=MAIL, headers=bearer(tenant))
    assert response.status_code == 429
    assert response.mimetype == "application/problem+json"
    body = response.get_json()
    assert (body["status"], body["title"]) == (429, "Too Many Requests")
    assert "retry in" in body["detail"]
    assert body["request_id"] == response.headers["X-Request-Id"]
    assert 1 <= int(response.headers["Retry-After"]) <= 2
    assert response.headers["RateLimit-Remaining"] == "0"
    assert response.headers["RateLimit-Limit"] == "3"
    assert sample("mailroom_rate_limit_requests_total", result="limited") == limited_before + 1
    assert mail_count(db) == 3


def test_reads_count_and_every_answer_carries_the_headers(
    limited_client: FlaskClient, tenant: TenantKey
) -> None:
    missing = limited_client.get(NO_SUCH_MAIL, headers=bearer(tenant))
    assert missing.status_code == 404
    assert missing.headers["RateLimit-Remaining"] == "2"
    invalid = limited_client.post("/v1/mails", json={**MAIL, "to": []}, headers=bearer(tenant))
    assert invalid.status_code == 422
    assert invalid.headers["RateLimit-Remaining"] == "1"
    assert limited_client.post("/v1/mails", json=MAIL, headers=bearer(tenant)).status_code == 202
    assert (
        limited_client.get(f"/v1/mails/{uuid.uuid4()}", headers=bearer(tenant)).status_code == 429
    )


def test_unauthenticated_requests_take_no_token(
    limited_client: FlaskClient, tenant: TenantKey
) -> None:
    for _ in range(5):
        response = limited_client.post(
            "/v1/mails", json=MAIL, headers={"Authorization": "Bearer mr_no"}
        )
        assert response.status_code == 401
        assert "RateLimit-Limit" not in response.headers
    assert limited_client.post("/v1/mails", json=MAIL, headers=bearer(tenant)).status_code == 202


def test_each_key_has_its_own_bucket(
    limited_client: FlaskClient, tenant: TenantKey, other_tenant: TenantKey, db: psycopg.Connection
) -> None:
    for _ in range(3):
        limited_client.get(f"/v1/mails/{uuid.uuid4()}", headers=bearer(tenant))
    assert (
        limited_client.get(f"/v1/mails/{uuid.uuid4()}", headers=bearer(tenant)).status_code == 429
    )
    response = limited_client.get(f"/v1/mails/{uuid.uuid4()}", headers=bearer(other_tenant))
    assert response.status_code == 404
    assert response.headers["RateLimit-Remaining"] == "2"


def test_the_bucket_refills_and_its_key_expires(
    settings: Settings, rate_limit_prefix: str, make_limited_app: AppFactory, tenant: TenantKey
) -> None:
    fast = replace(
        settings,
        rate_limit_url=services.redis_url(),
        rate_limit_rate=20.0,
        rate_limit_burst=1,
        rate_limit_prefix=rate_limit_prefix,
    )
    client = make_limited_app(fast).test_client()
    url = f"/v1/mails/{uuid.uuid4()}"
    assert client.get(url, headers=bearer(tenant)).status_code == 404
    assert client.get(url, headers=bearer(tenant)).status_code == 429
    time.sleep(0.1)  # two tokens' worth; the bucket holds one
    assert client.get(url, headers=bearer(tenant)).status_code == 404

    connection = redis.Redis.from_url(services.redis_url())
    try:
        (bucket,) = connection.keys(f"{rate_limit_prefix}*")
        assert 0 < connection.pttl(bucket) <= 1000 + 50  # full again within 50 ms, plus 1 s
    finally:
        connection.close()


def test_the_script_is_atomic_under_concurrency(rate_limit_prefix: str) -> None:
    limiter = RateLimiter(
        redis.Redis.from_url(services.redis_url()),
        rate=0.001,
        burst=10,
        prefix=rate_limit_prefix,
    )
    barrier = threading.Barrier(40)
    results: list[bool] = []

    def take() -> None:
        barrier.wait()
        decision = limiter.take("shared-bucket")
        assert decision is not None
        results.append(decision.allowed)

    threads = [threading.Thread(target=take) for _ in range(40)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert len(results) == 40
    assert results.count(True) == 10


def rate_limit_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        record.getMessage()
        for record in caplog.records
        if record.name == "ingest_api.rate_limit" and record.levelno >= logging.WARNING
    ]


def test_an_unreachable_redis_lets_mail_through(
    settings: Settings,
    make_limited_app: AppFactory,
    tenant: TenantKey,
    db: psycopg.Connection,
    caplog: pytest.LogCaptureFixture,
) -> None:
    closed = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    app = make_limited_app(replace(settings, rate_limit_url=closed))
    client = app.test_client()
    failures_before, unchecked_before = failures(), unchecked()
    caplog.set_level(logging.WARNING, logger="ingest_api.rate_limit")

    for _ in range(5):
        response = client.post("/v1/mails", json=MAIL, headers=bearer(tenant))
        assert response.status_code == 202
        assert not any(header in response.headers for header in HEADERS)

    assert mail_count(db) == 5
    # One failed call; the next requests skipped Redis during the backoff.
    assert failures() == failures_before + 1
    assert unchecked() == unchecked_before + 5
    (warning,) = rate_limit_warnings(caplog)
    assert "rate limiting is off" in warning


def test_a_redis_that_goes_away_and_comes_back(
    limited: Settings,
    make_limited_app: AppFactory,
    tenant: TenantKey,
    redis_address: tuple[str, int],
    caplog: pytest.LogCaptureFixture,
) -> None:
    proxy = TcpProxy(*redis_address).start()
    try:
        app = make_limited_app(replace(limited, rate_limit_url=f"redis://127.0.0.1:{proxy.port}/0"))
        app.extensions["mailroom.rate_limiter"].backoff = 0.3
        client = app.test_client()
        caplog.set_level(logging.INFO, logger="ingest_api.rate_limit")

        response = client.post("/v1/mails", json=MAIL, headers=bearer(tenant))
        assert response.status_code == 202
        assert response.headers["RateLimit-Remaining"] == "2"

        proxy.stop()  # cuts the pooled connection and refuses new ones
        failures_before = failures()
        for _ in range(3):
            response = client.post("/v1/mails", json=MAIL, headers=bearer(tenant))
            assert response.status_code == 202
            assert "RateLimit-Remaining" not in response.headers
        assert failures() == failures_before + 1

        time.sleep(0.35)  # past the backoff: the next request probes Redis again, and fails
        assert client.post("/v1/mails", json=MAIL, headers=bearer(tenant)).status_code == 202
        assert failures() == failures_before + 2

        proxy = TcpProxy(*redis_address, listen_port=proxy.port).start()
        time.sleep(0.35)
        response = client.post("/v1/mails", json=MAIL, headers=bearer(tenant))
        assert response.status_code == 202
        # The bucket kept its state: 1 token left after the first request, plus refill.
        assert response.headers["RateLimit-Remaining"] in ("1", "2")
        went_away, came_back = rate_limit_warnings(caplog)  # one line each, not per request
        assert went_away.startswith("rate limiting is off")
        assert came_back == "rate limiting is back: its Redis answers again"
    finally:
        proxy.stop()


def test_a_redis_that_stops_answering_costs_one_timeout_per_backoff(
    settings: Settings,
    make_limited_app: AppFactory,
    tenant: TenantKey,
    db: psycopg.Connection,
) -> None:
    # A listener that never accepts: connecting succeeds (the kernel completes the
    # handshake) but no reply ever comes, as with a hung Redis.
    with closing(socket.socket()) as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(64)
        url = f"redis://127.0.0.1:{silent.getsockname()[1]}/0"
        app = make_limited_app(replace(settings, rate_limit_url=url))
        client = app.test_client()
        client.get("/healthz")  # warm up the app before timing
        failures_before = failures()

        started = time.perf_counter()
        assert client.post("/v1/mails", json=MAIL, headers=bearer(tenant)).status_code == 202
        first = time.perf_counter() - started
        assert failures() == failures_before + 1
        assert first >= REDIS_TIMEOUT_SECONDS * 0.9  # it did wait for Redis, once ...
        assert first < 2.0

        for _ in range(10):
            response = client.post("/v1/mails", json=MAIL, headers=bearer(tenant))
            assert response.status_code == 202
        # ... and not again while backing off.
        assert failures() == failures_before + 1
        assert mail_count(db) == 11
