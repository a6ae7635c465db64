"""Status webhooks: POST one delivery to its webhook's URL, signed, and record the outcome.

The relay publishes ``mailroom.deliver_webhook(<delivery id>)`` for each due
delivery. This step takes the delivery with a compare-and-set that allows one
attempt per publish (so a duplicate message sends nothing), only while it is
pending and its webhook is not deleted, then POSTs the event as JSON with::

    Content-Type: application/json
    X-Mailroom-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>">
    X-Mailroom-Delivery: <delivery id>   (the same on every retry: deduplicate on it)

A 2xx answer makes the delivery ``delivered``. Anything else (another status, a
redirect, which is never followed, a timeout, a refused connection) is recorded
with the status code or error and the delivery becomes due again after an
exponential backoff with jitter, until an attempt fails after the retry window
(``MAILROOM_WEBHOOK_RETRY_HOURS`` since the event): then it is ``failed``.
Retries live in PostgreSQL, never in the broker.

No server-side request forgery: before each attempt the URL is normalised and its
host resolved again (``shared.webhook_urls``); an address that is loopback, private,
link-local, CGNAT, multicast, unspecified or reserved, and not in
``MAILROOM_WEBHOOK_ALLOW_NETWORKS``, ends the delivery as ``failed`` at once with the
reason, as does a URL that cannot be sent at all (it would never succeed, so it is
not retried for a day); a host that does not resolve is a failure like any other,
retried. The connection goes to an address that was checked, never to a second
lookup of the name (DNS rebinding); the Host header, TLS SNI and certificate
verification still use the URL's host.
"""

from __future__ import annotations

import functools
import http.client
import json
import logging
import socket
import ssl
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from shared import signatures
from shared.backoff import jittered_backoff
from shared.config import IPNetwork, Settings
from shared.db import DictPool
from shared.store.webhooks import (
    begin_webhook_attempt,
    record_webhook_delivered,
    record_webhook_failure,
)
from shared.webhook_urls import (
    AddressRefused,
    HostUnresolvable,
    IPAddress,
    WebhookTarget,
    parse,
    resolve_allowed,
)

log = logging.getLogger(__name__)

DELIVERY_HEADER = "X-Mailroom-Delivery"
USER_AGENT = "mailroom-webhooks/1"
MAX_ERROR_LENGTH = 500
MAX_RESPONSE_BYTES = 64 * 1024


@dataclass(frozen=True)
class WebhookPostPolicy:
    """How the worker posts deliveries: the timeout, the retry window and backoff, and
    the blocked networks it may reach all the same (the relay has its own claim policy)."""

    timeout: float = 10.0
    retry_hours: float = 24.0
    retry_base: float = 30.0
    # Blocked addresses (loopback, private...) webhooks may reach all the same.
    allow_networks: tuple[IPNetwork, ...] = ()

    @classmethod
    def from_settings(cls, settings: Settings) -> WebhookPostPolicy:
        return cls(
            timeout=settings.webhook_timeout,
            retry_hours=settings.webhook_retry_hours,
            retry_base=settings.webhook_retry_base,
            allow_networks=settings.webhook_allow_networks,
        )

    @property
    def attempt_lease(self) -> float:
        """Seconds an attempt holds the delivery against a second publish."""
        return 2 * self.timeout + 30


@dataclass(frozen=True)
class PostOutcome:
    """What one POST to a webhook got: a 2xx answer, another answer, or none."""

    status_code: int | None  # None: no HTTP answer (timeout, connection error)
    error: str | None  # None: a 2xx answer
    # The URL can never be sent (malformed, or a blocked address): no retry.
    final: bool = False

    @property
    def delivered(self) -> bool:
        return self.error is None


def _connect_to_checked(
    addresses: Sequence[IPAddress], port: int, timeout: float | None
) -> socket.socket:
    """A TCP connection to the first of *addresses* that answers; no name lookup."""
    error: OSError = OSError("no address to connect to")
    for address in addresses:
        family = socket.AF_INET6 if address.version == 6 else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.settimeout(timeout)
            sock.connect((str(address), port))
        except OSError as exc:
            sock.close()
            error = exc
        else:
            return sock
    raise error


class _PinnedHTTPConnection(http.client.HTTPConnection):
    """HTTP to an address that was checked; the Host header stays the URL's host."""

    def __init__(
        self, target: WebhookTarget, addresses: Sequence[IPAddress], timeout: float
    ) -> None:
        super().__init__(target.host, target.port, timeout=timeout)
        self.addresses = addresses

    def connect(self) -> None:
        self.sock = _connect_to_checked(self.addresses, self.port, self.timeout)


class _PinnedHTTPSConnection(http.client.HTTPSConnection):
    """HTTPS to an address that was checked; SNI and the certificate check use the
    URL's host, as they would without pinning."""

    def __init__(
        self,
        target: WebhookTarget,
        addresses: Sequence[IPAddress],
        timeout: float,
        tls: ssl.SSLContext,
    ) -> None:
        super().__init__(target.host, target.port, timeout=timeout, context=tls)
        self.addresses = addresses
        self.tls = tls

    def connect(self) -> None:
        sock = _connect_to_checked(self.addresses, self.port, self.timeout)
        try:
            self.sock = self.tls.wrap_socket(sock, server_hostname=self.host)
        except BaseException:
            sock.close()
            raise


@functools.cache
def _system_tls() -> ssl.SSLContext:
    return ssl.create_default_context()  # system CAs, hostname checked


def post(
    url: str,
    body: bytes,
    headers: dict[str, str],
    timeout: float,
    allow_networks: Sequence[IPNetwork] = (),
    *,
    tls: ssl.SSLContext | None = None,
) -> PostOutcome:
    """POST *body* to *url* if it may be reached; never raises for what the receiver does.

    A redirect is an answer like any other non-2xx: recorded, retried, never followed."""
    try:
        target = parse(url)
        addresses = resolve_allowed(target.host, target.port, allow_networks)
    except HostUnresolvable as exc:  # DNS may be back later
        return PostOutcome(None, str(exc)[:MAX_ERROR_LENGTH])
    except (AddressRefused, ValueError) as exc:
        prefix = "" if isinstance(exc, AddressRefused) else "the URL cannot be sent: "
        return PostOutcome(None, f"{prefix}{exc}"[:MAX_ERROR_LENGTH], final=True)
    connection: http.client.HTTPConnection
    if target.scheme == "https":
        connection = _PinnedHTTPSConnection(target, addresses, timeout, tls or _system_tls())
    else:
        connection = _PinnedHTTPConnection(target, addresses, timeout)
    try:
        connection.request("POST", target.path, body=body, headers=headers)
        response = connection.getresponse()
        response.read(MAX_RESPONSE_BYTES)
        code = int(response.status)
    except (http.client.HTTPException, OSError, ValueError) as exc:
        return PostOutcome(None, f"{type(exc).__name__}: {exc}"[:MAX_ERROR_LENGTH])
    finally:
        connection.close()
    if 200 <= code < 300:
        return PostOutcome(code, None)
    return PostOutcome(code, f"HTTP {code}")


def encode(payload: dict[str, Any]) -> bytes:
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode()


def deliver_webhook(
    pool: DictPool, delivery_id: str, policy: WebhookPostPolicy, now: float | None = None
) -> str:
    """Attempt one delivery if this message may; return what happened."""
    wanted = uuid.UUID(delivery_id)
    with pool.connection() as conn, conn.transaction():
        delivery = begin_webhook_attempt(conn, wanted, policy.attempt_lease)
    if delivery is None:
        log.info(
            "webhook delivery skipped: not pending, already attempted, or its webhook deleted",
            extra={"delivery_id": delivery_id},
        )
        return "skipped"
    body = encode(delivery.payload)
    timestamp = int(time.time() if now is None else now)
    headers = {
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
        signatures.HEADER: signatures.sign(delivery.secret, timestamp, body),
        DELIVERY_HEADER: str(wanted),
    }
    outcome = post(delivery.url, body, headers, policy.timeout, policy.allow_networks)
    attempt = delivery.attempts
    with pool.connection() as conn:
        if outcome.delivered:
            record_webhook_delivered(conn, wanted, attempt, outcome.status_code)
            log.info(
                "webhook delivered",
                extra={"delivery_id": delivery_id, "status_code": outcome.status_code},
            )
            return "delivered"
        status = record_webhook_failure(
            conn,
            wanted,
            attempt,
            status_code=outcome.status_code,
            error=outcome.error,
            delay_seconds=jittered_backoff(policy.retry_base, attempt - 1),
            # A URL that can never be sent is past its retry window at once: 'failed'.
            retry_seconds=0 if outcome.final else policy.retry_hours * 3600,
        )
    if status is None:  # the webhook was deleted, or a newer attempt took over
        return "stale"
    log.warning(
        "webhook delivery failed",
        extra={
            "delivery_id": delivery_id,
            "attempt": attempt,
            "error": outcome.error,
            "status": status,
        },
    )
    return "failed" if status == "failed" else "retrying"
