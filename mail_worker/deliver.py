"""The send step: pick the mail up, build it, hand it to SMTP, record the outcome.

A permanent refusal (5xx) makes the mail ``failed``; a transient one (4xx, a
timeout, a lost connection) puts it back into the outbox as ``retrying`` with a
backoff, until the attempt limit (``dead``) or its ``expires_at`` (``expired``).
Recipients on the tenant's suppression list are dropped before SMTP (a mail left
with none becomes ``suppressed``), and recipients refused with a 5xx join the
list with the outcome (:mod:`mail_worker.suppression`).

Retries live in PostgreSQL (an outbox row due after the backoff), never in the
broker (no Celery countdown or ETA), so a Redis restarted without persistence
loses none of them.

Between the SMTP server's acceptance and our COMMIT of ``sent`` lies the only
window in which a crash can cause a second send; the deterministic Message-ID
lets downstream systems recognise it.
"""

from __future__ import annotations

import logging
import random
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from mail_worker.compose import compose, message_id, needs_smtputf8
from mail_worker.smtp import SmtpClient, SmtpFailure
from mail_worker.suppression import (
    Screened,
    UnsubscribeLinks,
    hard_bounces,
    list_unsubscribe_url,
    screen,
)
from mail_worker.wire_check import WireCheckFailed, check_wire
from shared.backoff import jittered_backoff
from shared.db import DictPool
from shared.jsonlog import mail_context
from shared.states import MailStatus
from shared.store import mails, suppressions
from shared.store.mails import PickedMail
from shared.unsubscribe_tokens import UnsubscribeSecretMissing

log = logging.getLogger(__name__)

MAX_ERROR_LENGTH = 1000


def _finish(
    pool: DictPool,
    mail: PickedMail,
    status: MailStatus,
    detail: dict[str, Any],
    error: str | None,
    *,
    refused: dict[str, str] | None = None,
) -> None:
    """Record the outcome; recipients *refused* with a 5xx become hard bounces with it."""
    with pool.connection() as conn, conn.transaction():
        mails.finish_sending(conn, mail.id, status, detail, error)
        suppressions.add_hard_bounces(conn, mail.tenant_id, mail.id, hard_bounces(refused or {}))


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 6
    base_seconds: float = 30.0


@dataclass(frozen=True)
class RetryDecision:
    status: MailStatus  # RETRYING, DEAD or EXPIRED
    delay_seconds: float = 0.0
    reason: str = ""


def decide(
    *,
    attempts: int,
    max_attempts: int,
    expires_at: datetime | None,
    base: float,
    now: datetime | None = None,
    rng: random.Random | None = None,
) -> RetryDecision:
    """After a transient failure of attempt *attempts*: retry later through the outbox, or stop."""
    if attempts >= max_attempts:
        return RetryDecision(MailStatus.DEAD, reason=f"gave up after {attempts} attempts")
    delay = jittered_backoff(base, attempts - 1, rng=rng)  # the first retry waits about base
    moment = now or datetime.now(UTC)
    if expires_at is not None and moment + timedelta(seconds=delay) >= expires_at:
        return RetryDecision(MailStatus.EXPIRED, reason="the next attempt would come too late")
    return RetryDecision(MailStatus.RETRYING, delay_seconds=delay)


def _after_failure(
    pool: DictPool, mail: PickedMail, error: SmtpFailure, policy: RetryPolicy
) -> str:
    """Permanent: failed. Transient: retrying through the outbox, or dead/expired."""
    if not error.transient:
        _finish(
            pool, mail, MailStatus.FAILED, {"error": str(error)}, str(error), refused=error.refused
        )
        return MailStatus.FAILED.value
    decision = decide(
        attempts=mail.attempts,
        max_attempts=policy.max_attempts,
        expires_at=mail.expires_at,
        base=policy.base_seconds,
    )
    if decision.status is not MailStatus.RETRYING:
        detail = {"error": str(error), "reason": decision.reason}
        _finish(
            pool,
            mail,
            decision.status,
            detail,
            f"{decision.reason}: {error}",
            refused=error.refused,
        )
        return decision.status.value
    retry_detail: dict[str, Any] = {
        "error": str(error),
        "attempt": mail.attempts,
        "retry_in_seconds": round(decision.delay_seconds, 1),
    }
    with pool.connection() as conn, conn.transaction():
        bounces = hard_bounces(error.refused)  # the 5xx ones among 4xx refusals
        suppressions.add_hard_bounces(conn, mail.tenant_id, mail.id, bounces)
        mails.schedule_retry(conn, mail.id, str(error), decision.delay_seconds, retry_detail)
    return MailStatus.RETRYING.value


def deliver(
    pool: DictPool,
    smtp: SmtpClient,
    mail_id: str,
    *,
    message_id_domain: str,
    worker: str,
    retry: RetryPolicy | None = None,
    unsubscribe: UnsubscribeLinks | None = None,
) -> str:
    """Send one mail if this delivery wins the pickup; return what happened.

    *unsubscribe* makes the one-click links of campaign mails (required for them).
    """
    with mail_context(mail_id):
        # Pipeline mode: BEGIN, the lock and the compare-and-set travel in one round trip.
        with pool.connection() as conn, conn.pipeline(), conn.transaction():
            mail = mails.begin_sending(conn, uuid.UUID(mail_id), worker)
        if mail is None:
            log.info("duplicate delivery ignored: the mail was already picked up")
            return "duplicate"
        screened = screen(pool, mail)  # the suppression list
        if not screened.recipients:
            _finish(
                pool, mail, MailStatus.SUPPRESSED, {"suppressed": screened.suppressed},
                "every recipient is suppressed",
            )  # fmt: skip
            log.info("suppressed: every recipient is on the suppression list")
            return MailStatus.SUPPRESSED.value
        try:
            link = list_unsubscribe_url(unsubscribe, mail)
        except UnsubscribeSecretMissing as exc:
            log.error("campaign mail not sent", extra={"error": str(exc)})
            failure = SmtpFailure(str(exc), transient=True)  # sent once the secret is set
            return _after_failure(pool, mail, failure, retry or RetryPolicy())
        return _send(
            pool, smtp, mail,
            screened=screened, link=link, message_id_domain=message_id_domain, retry=retry,
        )  # fmt: skip


def _send(
    pool: DictPool,
    smtp: SmtpClient,
    mail: PickedMail,
    *,
    screened: Screened,
    link: str | None,
    message_id_domain: str,
    retry: RetryPolicy | None,
) -> str:
    """Compose, check and send a picked-up mail; every way out is a recorded state."""
    retry = retry or RetryPolicy()
    try:
        raw = wire_bytes(mail, message_id_domain, link)
    except Exception as exc:  # deterministic: the same mail would fail the same way
        reason = "unsafe_on_the_wire" if isinstance(exc, WireCheckFailed) else "compose_failed"
        error = f"{reason}: {type(exc).__name__}: {exc}"[:MAX_ERROR_LENGTH]
        _finish(pool, mail, MailStatus.FAILED, {"reason": reason, "error": error}, error)
        log.error("mail not sent", extra={"reason": reason, "error": error})
        return MailStatus.FAILED.value
    try:
        reply = smtp.send(
            mail.request["from"]["email"],
            screened.recipients,
            raw,
            smtputf8=needs_smtputf8(mail.request),
        )
    except SmtpFailure as exc:
        log.warning("send failed", extra={"error": str(exc), "transient": exc.transient})
        return _after_failure(pool, mail, exc, retry)
    except Exception as exc:  # not an SMTP answer: retried, and counted, like a timeout
        smtp.close()  # the connection's state is unknown
        log.exception("send step raised")
        failure = SmtpFailure(f"{type(exc).__name__}: {exc}"[:MAX_ERROR_LENGTH], transient=True)
        return _after_failure(pool, mail, failure, retry)
    detail: dict[str, Any] = {
        "smtp_reply": f"{reply.code} {reply.text}",
        "refused": reply.refused,
    }
    if screened.suppressed:
        detail["suppressed"] = screened.suppressed
    _finish(pool, mail, MailStatus.SENT, detail, None, refused=reply.refused)
    log.info("sent", extra={"smtp_reply": detail["smtp_reply"]})
    return MailStatus.SENT.value


def wire_bytes(mail: PickedMail, message_id_domain: str, list_unsubscribe: str | None) -> bytes:
    """The mail as SMTP will carry it, checked against what was accepted.

    Raises ComposeError or WireCheckFailed (or any error of the standard library's
    MIME code): all deterministic, so the caller fails the mail at once.
    """
    raw = compose(mail.id, mail.request, message_id_domain, list_unsubscribe=list_unsubscribe)
    check_wire(
        raw,
        mail.request,
        message_id=message_id(mail.id, message_id_domain),
        list_unsubscribe=list_unsubscribe,
    )
    return raw
