"""The send step: pick a batch of mails up, then build each, hand it to SMTP and record
its outcome before the next one goes out.

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
lets downstream systems recognise it. A batch does not widen it: each outcome is
committed before the next mail's DATA, so it covers at most one mail per SMTP
connection. A worker that dies in the middle of a batch leaves the rest of it in
``sending``, never sent, until its lease lapses and the relay takes them back.

A database error at the pickup or at an outcome's record is retried on a fresh
connection (:func:`shared.db.with_fresh_connection_retries`): after a blip, mail flows
again as soon as the database answers, not after the relay's redispatch.
"""

from __future__ import annotations

import contextvars
import logging
import os
import random
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from psycopg import Connection
from psycopg.rows import DictRow

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
from shared.db import DictPool, with_fresh_connection_retries
from shared.jsonlog import mail_context
from shared.states import MailStatus
from shared.store import mails, suppressions
from shared.store.mails import PickedMail
from shared.unsubscribe_tokens import UnsubscribeSecretMissing

log = logging.getLogger(__name__)

MAX_ERROR_LENGTH = 1000
T = TypeVar("T")


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 6
    base_seconds: float = 30.0


@dataclass(frozen=True)
class SendOptions:
    """What the send step needs besides the mails: one per worker process."""

    message_id_domain: str
    worker: str  # who holds the mails in 'sending' (the lease's name)
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    unsubscribe: UnsubscribeLinks | None = None  # required for campaign mail
    # How long a pickup or an outcome's record keeps trying through a database blip.
    database_retry_seconds: float = 30.0
    # False once this process's lease may have lapsed (mail_worker.lease): the relay may
    # have put its mails back, so it sends none of them.
    lease_held: Callable[[], bool] = lambda: True


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


def deliver_many(
    pool: DictPool, smtp: SmtpClient, mail_ids: Sequence[str], options: SendOptions
) -> list[str]:
    """Send each mail of the batch that this delivery wins at pickup; return, in the
    order of *mail_ids*, what happened to each (``duplicate`` for a mail it did not win)."""
    ids = [uuid.UUID(mail_id) for mail_id in mail_ids]

    def pick_up(conn: Connection[DictRow]) -> list[PickedMail]:
        # Pipeline mode: BEGIN, the locks, the compare-and-set and COMMIT in one round trip.
        with conn.pipeline(), conn.transaction():
            return mails.begin_sending(conn, ids, options.worker)

    picked = _retrying(pool, options, "pickup", pick_up)
    screened = _retrying(pool, options, "suppression screen", lambda conn: screen(conn, picked))
    outcomes: dict[uuid.UUID, str] = {}
    with _SentRecorder(pool, options) as recorder:
        for mail in picked:
            with mail_context(str(mail.id)):
                outcomes[mail.id] = _deliver_picked(
                    pool, smtp, mail, screened[mail.id], options, recorder=recorder
                )
    for mail_id in ids:
        if mail_id not in outcomes:
            with mail_context(str(mail_id)):
                log.info("duplicate delivery ignored: the mail was already picked up")
    # A mail listed twice was sent once: its second place is a duplicate delivery.
    return [outcomes.pop(mail_id, "duplicate") for mail_id in ids]


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
    """Send one mail if this delivery wins the pickup; return what happened."""
    options = SendOptions(message_id_domain, worker, retry or RetryPolicy(), unsubscribe)
    return deliver_many(pool, smtp, [mail_id], options)[0]


def _retrying(
    pool: DictPool, options: SendOptions, what: str, work: Callable[[Connection[DictRow]], T]
) -> T:
    return with_fresh_connection_retries(
        pool, work, within=options.database_retry_seconds, what=what
    )


_recording: tuple[int, ThreadPoolExecutor] | None = None


def _recording_thread() -> ThreadPoolExecutor:
    """One thread per process that records sends (not one per batch: a thread start per
    message showed in the profile); made anew in a forked child, which has no threads."""
    global _recording  # noqa: PLW0603
    if _recording is None or _recording[0] != os.getpid():
        _recording = (os.getpid(), ThreadPoolExecutor(1, thread_name_prefix="record-sent"))
    return _recording[1]


class _SentRecorder:
    """Records a mail's ``sent`` on a second connection while the next mail is composed
    and checked (CPU work that hides the commit's round trip), and holds that next mail
    back from SMTP until the record is committed: the duplicate window stays one mail."""

    def __init__(self, pool: DictPool, options: SendOptions) -> None:
        self._pool, self._options = pool, options
        self._thread = _recording_thread()
        self._pending: Future[None] | None = None

    def __enter__(self) -> _SentRecorder:
        return self

    def __exit__(self, *_: object) -> None:
        self.wait()

    def record(self, mail: PickedMail, detail: dict[str, Any], refused: dict[str, str]) -> None:
        self.wait()
        context = contextvars.copy_context()  # the log lines keep the mail's id
        self._pending = self._thread.submit(
            context.run,
            _finish,
            self._pool,
            mail,
            MailStatus.SENT,
            detail,
            None,
            options=self._options,
            refused=refused,
        )

    def wait(self) -> None:
        """Until the last ``sent`` is committed; raises what recording it raised."""
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.result()


def _deliver_picked(
    pool: DictPool,
    smtp: SmtpClient,
    mail: PickedMail,
    screened: Screened,
    options: SendOptions,
    *,
    recorder: _SentRecorder,
) -> str:
    """Screen, compose, check and send a picked-up mail; every way out is a recorded state."""
    if not screened.recipients:
        _finish(
            pool, mail, MailStatus.SUPPRESSED, {"suppressed": screened.suppressed},
            "every recipient is suppressed", options=options,
        )  # fmt: skip
        log.info("suppressed: every recipient is on the suppression list")
        return MailStatus.SUPPRESSED.value
    try:
        link = list_unsubscribe_url(options.unsubscribe, mail)
    except UnsubscribeSecretMissing as exc:
        log.error("campaign mail not sent", extra={"error": str(exc)})
        failure = SmtpFailure(str(exc), transient=True)  # sent once the secret is set
        return _after_failure(pool, mail, failure, options)
    try:
        raw = wire_bytes(mail, options.message_id_domain, link)
    except Exception as exc:  # deterministic: the same mail would fail the same way
        reason = "unsafe_on_the_wire" if isinstance(exc, WireCheckFailed) else "compose_failed"
        error = f"{reason}: {type(exc).__name__}: {exc}"[:MAX_ERROR_LENGTH]
        failed = {"reason": reason, "error": error}
        _finish(pool, mail, MailStatus.FAILED, failed, error, options=options)
        log.error("mail not sent", extra={"reason": reason, "error": error})
        return MailStatus.FAILED.value
    return _send_composed(pool, smtp, mail, raw, screened, options=options, recorder=recorder)


def _send_composed(
    pool: DictPool,
    smtp: SmtpClient,
    mail: PickedMail,
    raw: bytes,
    screened: Screened,
    *,
    options: SendOptions,
    recorder: _SentRecorder,
) -> str:
    """The SMTP transaction of a composed and checked mail, and its outcome."""
    recorder.wait()  # the previous mail's sent is committed before this one's SMTP
    if not options.lease_held():
        # Cut off from the database for most of a lease: the relay may have given this
        # mail to another worker. Not sending it closes most of that duplicate window;
        # the retry's record is refused (attempt guard) if the mail was taken back.
        log.error("not sent: this worker's lease may have lapsed")
        failure = SmtpFailure("not sent: the worker's lease may have lapsed", transient=True)
        return _after_failure(pool, mail, failure, options)
    try:
        reply = smtp.send(
            mail.request["from"]["email"],
            screened.recipients,
            raw,
            smtputf8=needs_smtputf8(mail.request),
        )
    except SmtpFailure as exc:
        log.warning("send failed", extra={"error": str(exc), "transient": exc.transient})
        return _after_failure(pool, mail, exc, options)
    except Exception as exc:  # not an SMTP answer: retried, and counted, like a timeout
        smtp.close()  # the connection's state is unknown
        log.exception("send step raised")
        failure = SmtpFailure(f"{type(exc).__name__}: {exc}"[:MAX_ERROR_LENGTH], transient=True)
        return _after_failure(pool, mail, failure, options)
    detail: dict[str, Any] = {
        "smtp_reply": f"{reply.code} {reply.text}",
        "refused": reply.refused,
    }
    if screened.suppressed:
        detail["suppressed"] = screened.suppressed
    # Committed before the next mail's SMTP: the duplicate window stays one mail wide.
    recorder.record(mail, detail, reply.refused)
    log.info("sent", extra={"smtp_reply": detail["smtp_reply"]})
    return MailStatus.SENT.value


def _finish(
    pool: DictPool,
    mail: PickedMail,
    status: MailStatus,
    detail: dict[str, Any],
    error: str | None,
    *,
    options: SendOptions,
    refused: dict[str, str] | None = None,
) -> None:
    """Record the outcome; recipients *refused* with a 5xx become hard bounces with it.

    One autocommit statement when nobody bounced (one round trip), else one transaction.
    """
    bounces = hard_bounces(refused or {})

    def record(conn: Connection[DictRow]) -> bool:
        if not bounces:
            return mails.finish_sending(conn, mail, status, detail, error)
        with conn.transaction():
            recorded = mails.finish_sending(conn, mail, status, detail, error)
            suppressions.add_hard_bounces(conn, mail.tenant_id, mail.id, bounces)
            return recorded

    if not _retrying(pool, options, f"record {status.value}", record):
        _not_recorded(status)


def _not_recorded(status: MailStatus) -> None:
    log.error(
        "outcome not recorded: the mail was taken back from this worker (its lease lapsed)",
        extra={"outcome": status.value},
    )


def _after_failure(
    pool: DictPool, mail: PickedMail, error: SmtpFailure, options: SendOptions
) -> str:
    """Permanent: failed. Transient: retrying through the outbox, or dead/expired."""
    if not error.transient:
        _finish(
            pool, mail, MailStatus.FAILED, {"error": str(error)}, str(error),
            options=options, refused=error.refused,
        )  # fmt: skip
        return MailStatus.FAILED.value
    policy = options.retry
    decision = decide(
        attempts=mail.attempts,
        max_attempts=policy.max_attempts,
        expires_at=mail.expires_at,
        base=policy.base_seconds,
    )
    if decision.status is not MailStatus.RETRYING:
        detail = {"error": str(error), "reason": decision.reason}
        message = f"{decision.reason}: {error}"
        _finish(
            pool, mail, decision.status, detail, message, options=options, refused=error.refused
        )
        return decision.status.value
    retry_detail: dict[str, Any] = {
        "error": str(error),
        "attempt": mail.attempts,
        "retry_in_seconds": round(decision.delay_seconds, 1),
    }
    bounces = hard_bounces(error.refused)  # the 5xx ones among 4xx refusals

    def record(conn: Connection[DictRow]) -> bool:
        with conn.transaction():
            suppressions.add_hard_bounces(conn, mail.tenant_id, mail.id, bounces)
            return mails.schedule_retry(
                conn, mail, str(error), decision.delay_seconds, retry_detail
            )

    if not _retrying(pool, options, "record retrying", record):
        _not_recorded(MailStatus.RETRYING)
    return MailStatus.RETRYING.value


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
