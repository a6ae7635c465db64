"""Is the pipeline working? Canaries, the relay's incident log, preflight checks,
and RabbitMQ's unroutable messages.

- The canary: a synthetic message per queue, through the same publisher and broker
  queues as mail, that a worker acknowledges in the database. It is what tells a relay
  that publishes into a queue nobody consumes (the outage this project exists to
  prevent) from one that works, within a minute.
- Preflight: each check returns one line; ``outbox-relay check`` exits 0 only when all
  pass, so a deploy pipeline can gate on it, and a relay runs the same checks (but the
  canary) at start and logs each failure.
- Unroutable messages: what no queue was bound for lands in the alternate exchange's
  queue; the relay drains it, records an ``unroutable`` event on each mail (its outbox
  row is still leased and will be published again), and counts them, so a routing
  mistake is seen, not lost.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from dataclasses import dataclass

import psycopg
from celery import Celery

from outbox_relay.publish import Publisher, TaskMessage
from shared.config import Settings
from shared.db import connect
from shared.migrate import pending_migrations
from shared.pipeline_health import QueueHealth, is_healthy
from shared.queues import (
    QUEUE_PRIORITY,
    SEND_MAIL_TASK,
    SEND_MAILS_TASK,
    UNROUTABLE_QUEUE,
    broker_queue_name,
    broker_transport_options,
    is_amqp,
)
from shared.store import Conn
from shared.store import outbox as outbox_store

log = logging.getLogger(__name__)

MAX_DRAIN = 1000

# ----- canaries -----


def send_canaries(conn: Conn, publisher: Publisher, relay_name: str) -> list[uuid.UUID]:
    """Publish one canary per queue; raises PublishError if the broker refuses."""
    canaries = [(uuid.uuid4(), queue) for queue in QUEUE_PRIORITY]
    outbox_store.insert_canaries(conn, canaries, relay_name)
    publisher.publish([TaskMessage.canary(canary_id, queue) for canary_id, queue in canaries])
    ids = [canary_id for canary_id, _ in canaries]
    outbox_store.mark_canaries_published(conn, ids)
    return ids


class IncidentLog:
    """Logs a broken pipeline at ERROR once per incident, and its recovery once."""

    def __init__(self) -> None:
        self.broken = False

    def observe(self, health: list[QueueHealth]) -> bool:
        """Note the health; True when this observation ends an incident."""
        healthy = is_healthy(health) or all(item.state == "unknown" for item in health)
        recovered = healthy and self.broken
        if not healthy and not self.broken:
            reasons = "; ".join(item.reason for item in health if item.state != "healthy")
            log.error("pipeline broken: canaries are not coming back", extra={"reasons": reasons})
        elif recovered:
            log.warning("pipeline recovered: canaries are coming back")
        self.broken = not healthy
        return recovered


# ----- unroutable messages (RabbitMQ) -----


def drain_unroutable(conn: Conn, publisher: Publisher) -> int:
    channel = publisher.connection().default_channel
    drained = 0
    while drained < MAX_DRAIN:
        message = channel.basic_get(queue=UNROUTABLE_QUEUE.name, no_ack=False)
        if message is None:
            break
        drained += 1
        routing_key = message.delivery_info.get("routing_key", "")
        for mail_id in unroutable_mail_ids(message.headers.get("task"), message.body):
            outbox_store.record_unroutable(conn, mail_id, routing_key)
        channel.basic_ack(message.delivery_info["delivery_tag"])
    if drained:
        log.error(
            "the broker could not route messages: check queue names and bindings",
            extra={"count": drained},
        )
    return drained


def unroutable_mail_ids(task: str | None, body: bytes | str) -> list[uuid.UUID]:
    """The mails of a returned message: a batch (send_mails) or one (send_mail, older relays).

    Anything else on the exchange, or a body that is not what our relays write, names no
    mail: it is logged and acknowledged, never allowed to stop the relay (a message that
    raised here would be returned to the queue and stop every relay that drains it)."""
    try:
        if task == SEND_MAILS_TASK:
            return [uuid.UUID(str(mail_id)) for mail_id in json.loads(body)[0][0]]
        if task == SEND_MAIL_TASK:
            return [uuid.UUID(str(json.loads(body)[0][0]))]
    except (ValueError, TypeError, IndexError, KeyError) as exc:
        log.error(
            "a returned message names no mail we can read",
            extra={"task": str(task)[:200], "error": str(exc)[:200]},
        )
    return []


# ----- preflight -----


@dataclass(frozen=True)
class CheckResult:
    name: str
    ok: bool
    detail: str

    def line(self) -> str:
        return f"{'ok  ' if self.ok else 'FAIL'} {self.name}: {self.detail}"


def check_database(settings: Settings) -> CheckResult:
    try:
        with connect(settings.database_url, timeout=settings.db_connect_timeout) as conn:
            pending = pending_migrations(conn)
            pauses = 0 if pending else outbox_store.count_relay_pauses(conn)
    except psycopg.Error as exc:
        return CheckResult("database", False, f"unreachable: {exc}".strip())
    if pending:
        return CheckResult("database", False, f"not migrated: pending {', '.join(pending)}")
    # A pause is an operator's decision, not a fault; but a deploy should not miss it.
    held = f"; {pauses} pause(s) hold mail (outbox-relay status)" if pauses else ""
    return CheckResult("database", True, "reachable and migrated" + held)


def check_broker(publisher: Publisher) -> CheckResult:
    try:
        publisher.connection()
    except Exception as exc:  # whatever the transport raises means unreachable
        publisher.close()
        return CheckResult("broker", False, f"unreachable: {type(exc).__name__}: {exc}")
    return CheckResult("broker", True, "reachable")


def _amqp_consumers(publisher: Publisher, names: list[str]) -> dict[str, int | None]:
    consumers: dict[str, int | None] = {}
    for name in names:
        channel = publisher.connection().channel()
        try:
            _, _, count = channel.queue_declare(queue=name, passive=True)
            consumers[name] = count
        except Exception:  # NOT_FOUND closes the channel: the queue does not exist
            consumers[name] = None
        finally:
            channel.close()
    return consumers


def _redis_consumers(settings: Settings, names: list[str], timeout: float) -> dict[str, int | None]:
    """Redis has no consumer count: ask the workers (Celery remote control) what they read."""
    app = Celery("mailroom-preflight", broker=settings.broker_url)
    app.conf.broker_transport_options = broker_transport_options(
        settings.broker_url, settings.broker_key_prefix
    )
    replies = app.control.inspect(timeout=timeout).active_queues() or {}
    counts: dict[str, int | None] = dict.fromkeys(names)
    for queues in replies.values():
        for queue in queues:
            if queue["name"] in counts:
                counts[queue["name"]] = (counts[queue["name"]] or 0) + 1
    return counts


def check_consumers(settings: Settings, publisher: Publisher, timeout: float) -> list[CheckResult]:
    names = [broker_queue_name(queue, settings.queue_prefix) for queue in QUEUE_PRIORITY]
    try:
        if is_amqp(settings.broker_url):
            counts = _amqp_consumers(publisher, names)
        else:
            counts = _redis_consumers(settings, names, timeout)
    except Exception as exc:  # the broker failed mid-check
        return [CheckResult("queues", False, f"cannot inspect: {type(exc).__name__}: {exc}")]
    results = []
    for name, count in counts.items():
        if count is None:
            results.append(CheckResult(f"queue {name}", False, "no worker consumes it"))
        elif count == 0:
            results.append(CheckResult(f"queue {name}", False, "exists but has no consumer"))
        else:
            results.append(CheckResult(f"queue {name}", True, f"{count} consumer(s)"))
    return results


def check_canary(settings: Settings, publisher: Publisher, timeout: float) -> CheckResult:
    started = time.monotonic()
    try:
        with connect(settings.database_url, timeout=settings.db_connect_timeout) as conn:
            ids = send_canaries(conn, publisher, "preflight")
            pending = set(ids)
            while pending and time.monotonic() - started < timeout:
                pending = {i for i in pending if not outbox_store.canary_received(conn, i)}
                if pending:
                    time.sleep(0.1)
    except Exception as exc:  # database or broker failure: the round trip did not happen
        return CheckResult("canary", False, f"{type(exc).__name__}: {exc}")
    if pending:
        return CheckResult("canary", False, f"no round trip within {timeout:.0f} s")
    return CheckResult("canary", True, f"round trip in {time.monotonic() - started:.2f} s")


def run_checks(
    settings: Settings, *, canary: bool = True, timeout: float = 10.0
) -> list[CheckResult]:
    publisher = Publisher(settings)
    try:
        results = [check_database(settings), broker := check_broker(publisher)]
        if broker.ok:
            results += check_consumers(settings, publisher, timeout=min(timeout, 2.0))
        if canary and all(r.ok for r in results):
            results.append(check_canary(settings, publisher, timeout))
        return results
    finally:
        publisher.close()
