"""The relay loop: dispatch rounds, woken by LISTEN/NOTIFY, with polling as a
fallback, plus the periodic work: canaries, the pipeline's health, metrics, and
(RabbitMQ) draining unroutable messages.

The listener is a convenience for latency only: if it cannot connect (behind a
transaction-mode PgBouncer, say) the relay still polls every
``MAILROOM_RELAY_POLL_INTERVAL`` seconds.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Callable
from types import FrameType

import psycopg
from prometheus_client import start_http_server

from outbox_relay import metrics
from outbox_relay.dispatch import (
    DispatchPolicy,
    RoundResult,
    WebhookDispatchPolicy,
    dispatch_round,
    webhook_round,
)
from outbox_relay.health import IncidentLog, drain_unroutable, send_canaries
from outbox_relay.publish import Publisher, PublishError
from shared.config import Settings
from shared.db import connect
from shared.pipeline_health import pipeline_health
from shared.queues import OUTBOX_CHANNEL, is_amqp
from shared.store import outbox as outbox_store
from shared.store import workers as workers_store

log = logging.getLogger(__name__)

MAX_BACKOFF_SECONDS = 10.0
STOP_CHECK_SECONDS = 0.5
STATS_INTERVAL = 5.0
UNROUTABLE_INTERVAL = 2.0
PRUNE_INTERVAL = 600.0
WEBHOOK_BATCHES_PER_RUN = 5  # status webhooks: at most this many full batches per run
LEASE_CHECKS_PER_LEASE = 4  # the lease rescue runs every quarter of a worker lease
# A round woken this soon after one that found mail lingers (_linger): mail is coming
# faster than about 50 a second.
LINGER_WHEN_WOKEN_WITHIN = 0.02


def under_load(claimed: int, *, woken_after: float) -> bool:
    """Whether a woken round lingers: the last round found mail and the relay was woken
    again soon after it. (A NOTIFY for mail the last round already claimed also wakes
    it at once; that costs one linger, in which new mail is collected.)"""
    return claimed > 0 and woken_after < LINGER_WHEN_WOKEN_WITHIN


class Periodic:
    """Runs a job at most every *interval* seconds, from the relay's own loop."""

    def __init__(self, interval: float, job: Callable[[], None]) -> None:
        self.interval = interval
        self.job = job
        self.next_run = 0.0

    def maybe_run(self) -> None:
        now = time.monotonic()
        if now >= self.next_run:
            self.next_run = now + self.interval
            self.job()


class Relay:
    def __init__(self, settings: Settings, publisher: Publisher | None = None) -> None:
        self.settings = settings
        self.publisher = publisher or Publisher(settings)
        self.policy = DispatchPolicy.from_settings(settings)
        self.webhook_policy = WebhookDispatchPolicy.from_settings(settings)
        self.name = f"{socket.gethostname()}:{os.getpid()}"
        self.stopping = threading.Event()
        self.incidents = IncidentLog()
        self._conn: psycopg.Connection | None = None
        self._listener: psycopg.Connection | None = None
        self._failures = 0
        self._pauses_seen = 0
        # The lease rescue's grace after a database outage (see _rescue_mails_of_lapsed_workers):
        # set when a connection error drops the connection, and then the rescue waits one
        # lease from the moment the relay reaches the database again. A relay just started
        # cannot know whether the database was just down, so it waits one lease too.
        self._database_lost = False
        self._lease_rescue_resumes_at = time.monotonic() + settings.worker_lease_seconds
        self._periodic = [
            Periodic(settings.canary_interval, self._canary),
            Periodic(STATS_INTERVAL, self._stats),
            Periodic(STATS_INTERVAL, self._recover_abandoned_sends),
            Periodic(
                settings.worker_lease_seconds / LEASE_CHECKS_PER_LEASE,
                self._rescue_mails_of_lapsed_workers,
            ),
            Periodic(PRUNE_INTERVAL, self._prune),
            # status webhooks: due deliveries, as often as the relay polls
            Periodic(settings.relay_poll_interval, self._webhooks),
        ]
        if is_amqp(settings.broker_url):
            self._periodic.append(Periodic(UNROUTABLE_INTERVAL, self._drain_unroutable))

    def install_signal_handlers(self) -> None:
        """SIGTERM and SIGINT finish the current round, then stop."""

        def stop(signum: int, _frame: FrameType | None) -> None:
            log.info("stopping after the current round", extra={"signal": signum})
            self.stopping.set()

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)

    def serve_metrics(self) -> None:
        if self.settings.relay_metrics_port:
            start_http_server(self.settings.relay_metrics_port, addr="127.0.0.1")
            log.info("metrics", extra={"port": self.settings.relay_metrics_port})

    def run(self) -> None:
        log.info("relay started", extra={"relay": self.name, "batch_size": self.policy.batch_size})
        self._listen()  # before the first round, so no NOTIFY falls between the two
        while not self.stopping.is_set():
            claimed = self._one_round()
            self._run_periodic()
            if claimed < self.policy.batch_size:
                round_ended = time.monotonic()
                self._wait_for_work()
                if under_load(claimed, woken_after=time.monotonic() - round_ended):
                    self._linger()
        self._close()
        log.info("relay stopped")

    # --- the dispatch round -------------------------------------------------------

    def _one_round(self) -> int:
        """Run a round; the rows it claimed (a full batch: more work is likely waiting)."""
        try:
            result = dispatch_round(self._connection(), self.publisher, self.policy)
        except psycopg.Error as exc:
            self._note_database_error(exc)
            self._note_failure("database error; retrying", exc)
            self._drop_connection()
            return 0
        self._count(result)
        if result.error is not None:
            self._note_failure("the broker refused a publish; the rows stay due", result.error)
            return 0
        self._failures = 0
        return result.claimed

    def _linger(self) -> None:
        """Under load (the last round found mail, and mail came again within
        LINGER_WHEN_WOKEN_WITHIN), let a woken round wait a moment so it claims several
        mails: a worker picks a message's mails up in one statement and pays Celery's
        and the pickup's cost once for all of them (at 200 mails/s a round otherwise
        finds one mail, and the worker spends about three times the CPU per mail). Mail
        that comes slower, and the first mail after a pause, go at once."""
        if self.settings.relay_linger:
            self.stopping.wait(self.settings.relay_linger)

    @staticmethod
    def _count(result: RoundResult) -> None:
        metrics.PUBLISHED.labels("first").inc(result.published - result.redispatched)
        metrics.PUBLISHED.labels("redispatch").inc(result.redispatched)
        metrics.EXPIRED.inc(result.expired)
        metrics.DEAD.inc(result.dead)
        if result.error is not None:
            metrics.PUBLISH_ERRORS.inc()
        elif result.published:
            metrics.PUBLISH_SECONDS.observe(result.publish_seconds)
            log.info(
                "published",
                extra={"count": result.published, "redispatched": result.redispatched},
            )

    def _note_failure(self, message: str, exc: BaseException) -> None:
        self._failures += 1
        log.error(message, extra={"error": str(exc), "consecutive_failures": self._failures})
        self.stopping.wait(min(MAX_BACKOFF_SECONDS, 0.2 * 2**self._failures))

    # --- periodic work ------------------------------------------------------------

    def _run_periodic(self) -> None:
        for job in self._periodic:
            try:
                job.maybe_run()
            except (psycopg.Error, PublishError, OSError) as exc:
                log.warning("periodic job failed", extra={"error": str(exc)})
                if isinstance(exc, psycopg.Error):
                    self._note_database_error(exc)
                self._drop_connection()

    def _canary(self) -> None:
        conn = self._connection()
        try:
            send_canaries(conn, self.publisher, self.name)
        except PublishError as exc:
            log.warning("could not publish canaries", extra={"error": str(exc)})
        health = pipeline_health(conn, self.settings.canary_threshold)
        for item in health:
            metrics.PIPELINE_HEALTHY.labels(item.queue).set(item.state == "healthy")
            if item.age_seconds is not None:
                metrics.CANARY_AGE.labels(item.queue).set(item.age_seconds)
        if self.incidents.observe(health):
            # What was published while the link was broken may be lost; publish it
            # again now rather than after its backoff (duplicates are no-ops).
            released = outbox_store.release_leases(conn)
            log.warning("released in-flight rows after recovery", extra={"count": released})

    def _recover_abandoned_sends(self) -> None:
        recovered = outbox_store.recover_abandoned_sends(
            self._connection(),
            sending_timeout=self.settings.sending_timeout,
            max_attempts=self.settings.send_max_attempts,
            retry_base=self.settings.send_retry_base,
        )
        if recovered:
            metrics.ABANDONED.inc(recovered)
            log.error(
                "mails whose worker was lost go back to the outbox", extra={"count": recovered}
            )

    def _rescue_mails_of_lapsed_workers(self) -> None:
        """Mails in 'sending' whose worker's lease lapsed go back to the outbox, due now
        (or 'dead' at the attempt limit): their worker died, and they are sent again
        within seconds instead of after the sending timeout.

        Not right after a database outage. While the database is unreachable no worker
        can renew its lease, so when it comes back every lease has lapsed although the
        workers are alive, some in the middle of a send, and each will renew within a
        quarter of a lease. Rescuing their mails then would send them twice. So a relay
        that lost its connection to the database waits one full lease from the moment it
        reaches the database again before it rescues anything: by then every live worker
        has renewed (four tries), and only the dead ones' leases are still lapsed. (One
        lease from the relay's last error would not do: a relay backing off for ten
        seconds can fail last long before the database returns.)
        """
        conn = self._connection()  # a reconnection after an outage starts the grace
        if time.monotonic() < self._lease_rescue_resumes_at:
            return
        rescue = workers_store.rescue_mails_of_lapsed_workers(
            conn, max_attempts=self.settings.send_max_attempts
        )
        if rescue.mails:
            metrics.LEASE_RESCUED.inc(len(rescue.mails))
            log.error(
                "mails of a worker whose lease lapsed go back to the outbox",
                extra={
                    "count": len(rescue.mails),
                    "dead": sum(m.status == "dead" for m in rescue.mails),
                    "workers": sorted({m.worker for m in rescue.mails}),
                },
            )
        if rescue.forgotten_leases:
            log.info("lapsed worker leases removed", extra={"workers": rescue.forgotten_leases})

    def _stats(self) -> None:
        stats = outbox_store.outbox_stats(self._connection())
        metrics.OUTBOX_BACKLOG.set(stats.due)
        metrics.OUTBOX_ROWS.set(stats.total)
        metrics.OUTBOX_IN_FLIGHT.set(stats.in_flight)
        metrics.OLDEST_UNDISPATCHED.set(stats.oldest_undispatched)
        metrics.OLDEST_IN_FLIGHT.set(stats.oldest_in_flight)
        self._notice_pauses()

    def _notice_pauses(self) -> None:
        """One log line when the set of pauses changes, so relay logs say why mail waits."""
        pauses = outbox_store.count_relay_pauses(self._connection())
        metrics.PAUSES.set(pauses)
        if pauses and pauses != self._pauses_seen:
            log.warning("operator pauses hold mail in the outbox", extra={"pauses": pauses})
        elif self._pauses_seen and not pauses:
            log.info("no pause holds mail any more")
        self._pauses_seen = pauses

    def _prune(self) -> None:
        outbox_store.prune_canaries(self._connection())

    def _webhooks(self) -> None:
        """Publish due status webhook deliveries (see outbox_relay.dispatch)."""
        for _ in range(WEBHOOK_BATCHES_PER_RUN):
            result = webhook_round(self._connection(), self.publisher, self.webhook_policy)
            metrics.WEBHOOKS_PUBLISHED.inc(result.published)
            metrics.WEBHOOKS_ABANDONED.inc(result.abandoned)
            if result.error is not None:
                metrics.PUBLISH_ERRORS.inc()
                log.warning(
                    "the broker refused webhook deliveries; they stay due",
                    extra={"error": str(result.error)},
                )
                return
            if result.published:
                log.info("published webhook deliveries", extra={"count": result.published})
            if result.claimed < self.webhook_policy.batch_size or self.stopping.is_set():
                return

    def _drain_unroutable(self) -> None:
        metrics.UNROUTABLE.inc(drain_unroutable(self._connection(), self.publisher))

    # --- connections --------------------------------------------------------------

    def _connection(self) -> psycopg.Connection:
        if self._conn is None or self._conn.closed:
            self._conn = connect(
                self.settings.database_url, timeout=self.settings.db_connect_timeout
            )
            if self._database_lost:  # back after an outage: live workers renew first
                self._database_lost = False
                self._lease_rescue_resumes_at = (
                    time.monotonic() + self.settings.worker_lease_seconds
                )
        return self._conn

    def _note_database_error(self, exc: psycopg.Error) -> None:
        """A connection error (not a failed statement) holds the lease rescue back."""
        if isinstance(exc, psycopg.OperationalError):
            self._database_lost = True

    def _drop_connection(self) -> None:
        if self._conn is not None:
            self._conn.close()
        self._conn = None

    def _wait_for_work(self) -> None:
        """Sleep until NOTIFY, the poll interval, or a stop request (checked twice a second)."""
        deadline = time.monotonic() + self.settings.relay_poll_interval
        while not self.stopping.is_set():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            listener = self._listen()
            if listener is None:
                self.stopping.wait(min(remaining, STOP_CHECK_SECONDS))
                continue
            try:
                notified = listener.notifies(
                    timeout=min(remaining, STOP_CHECK_SECONDS), stop_after=1
                )
                try:
                    if any(True for _ in notified):
                        return
                finally:
                    # Stopped at its first yield, the generator still holds the
                    # connection's lock; left to the garbage collector (a frame that
                    # outlived this call keeps it, e.g. after a log line in _listen) the
                    # next notifies() waits on that lock for ever: after a database
                    # blip the relay hung with mail due.
                    notified.close()
            except psycopg.Error as exc:
                log.warning("listener lost; polling", extra={"error": str(exc)})
                self._listener = None

    def _listen(self) -> psycopg.Connection | None:
        if self._listener is not None and not self._listener.closed:
            return self._listener
        try:
            listener = connect(self.settings.database_url, timeout=self.settings.db_connect_timeout)
            listener.execute(f"LISTEN {OUTBOX_CHANNEL}")
        except psycopg.Error as exc:
            log.warning("cannot LISTEN; polling only", extra={"error": str(exc)})
            return None
        self._listener = listener
        return listener

    def _close(self) -> None:
        self.publisher.close()
        self._drop_connection()
        if self._listener is not None:
            self._listener.close()
