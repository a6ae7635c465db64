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

Any URL the tenant registered is called, loopback and private addresses
included: there is no protection against server-side request forgery yet.
"""

from __future__ import annotations

import http.client
import json
import logging
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass
from typing import Any

from mail_worker.retry import backoff
from shared import signatures
from shared.config import Settings
from shared.db import DictPool
from shared.queries import QUERIES

log = logging.getLogger(__name__)

DELIVERY_HEADER = "X-Mailroom-Delivery"
USER_AGENT = "mailroom-webhooks/1"
MAX_ERROR_LENGTH = 500


@dataclass(frozen=True)
class WebhookPolicy:
    timeout: float = 10.0
    retry_hours: float = 24.0
    retry_base: float = 30.0

    @classmethod
    def from_settings(cls, settings: Settings) -> WebhookPolicy:
        return cls(
            timeout=settings.webhook_timeout,
            retry_hours=settings.webhook_retry_hours,
            retry_base=settings.webhook_retry_base,
        )

    @property
    def attempt_lease(self) -> float:
        """Seconds an attempt holds the delivery against a second publish."""
        return 2 * self.timeout + 30


@dataclass(frozen=True)
class Outcome:
    status_code: int | None  # None: no HTTP answer (timeout, connection error)
    error: str | None  # None: a 2xx answer

    @property
    def delivered(self) -> bool:
        return self.error is None


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """A redirect is an answer like any other non-2xx: recorded, retried, never followed."""

    def redirect_request(self, *_args: Any, **_kwargs: Any) -> None:
        return None


_OPENER = urllib.request.build_opener(_NoRedirects)


def post(url: str, body: bytes, headers: dict[str, str], timeout: float) -> Outcome:
    """POST *body*; never raises for what the receiver does."""
    if not url.startswith(("http://", "https://")):  # the API allows no other scheme
        return Outcome(None, "not an http:// or https:// URL")
    request = urllib.request.Request(url, data=body, method="POST", headers=headers)  # noqa: S310
    try:
        with _OPENER.open(request, timeout=timeout) as response:
            response.read(64 * 1024)
            code = int(response.status)
    except urllib.error.HTTPError as exc:  # any status urllib does not count as success
        exc.close()
        return Outcome(exc.code, f"HTTP {exc.code}")
    except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        return Outcome(None, f"{type(exc).__name__}: {reason}"[:MAX_ERROR_LENGTH])
    if 200 <= code < 300:
        return Outcome(code, None)
    return Outcome(code, f"HTTP {code}")


def encode(payload: dict[str, Any]) -> bytes:
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode()


def deliver_webhook(
    pool: DictPool, delivery_id: str, policy: WebhookPolicy, now: float | None = None
) -> str:
    """Attempt one delivery if this message may; return what happened."""
    wanted = uuid.UUID(delivery_id)
    with pool.connection() as conn, conn.transaction():
        conn.execute(QUERIES["lock_webhook_delivery"], {"id": wanted})
        delivery = conn.execute(
            QUERIES["begin_webhook_attempt"], {"id": wanted, "lease": policy.attempt_lease}
        ).fetchone()
    if delivery is None:
        log.info(
            "webhook delivery skipped: not pending, already attempted, or its webhook deleted",
            extra={"delivery_id": delivery_id},
        )
        return "skipped"
    body = encode(delivery["payload"])
    timestamp = int(time.time() if now is None else now)
    headers = {
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
        signatures.HEADER: signatures.sign(delivery["secret"], timestamp, body),
        DELIVERY_HEADER: str(wanted),
    }
    outcome = post(delivery["url"], body, headers, policy.timeout)
    attempt = delivery["attempts"]
    with pool.connection() as conn:
        if outcome.delivered:
            conn.execute(
                QUERIES["record_webhook_delivered"],
                {"id": wanted, "attempt": attempt, "status_code": outcome.status_code},
            )
            log.info(
                "webhook delivered",
                extra={"delivery_id": delivery_id, "status_code": outcome.status_code},
            )
            return "delivered"
        row = conn.execute(
            QUERIES["record_webhook_failure"],
            {
                "id": wanted,
                "attempt": attempt,
                "status_code": outcome.status_code,
                "error": outcome.error,
                "delay": backoff(attempt, policy.retry_base),
                "retry_seconds": policy.retry_hours * 3600,
            },
        ).fetchone()
    if row is None:  # the webhook was deleted, or a newer attempt took over
        return "stale"
    status = str(row["status"])
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
