"""What the webhook tests share: a real HTTP receiver on a loopback port, the policy
that allows loopback, and helpers that drive the relay and the worker."""

from __future__ import annotations

import json
import ssl
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

import psycopg
from flask.testing import FlaskClient
from kombu import Connection
from psycopg.types.json import Jsonb
from psycopg_pool import ConnectionPool

from mail_worker.webhooks import WebhookPostPolicy, deliver_webhook
from outbox_relay.dispatch import WebhookDispatchPolicy as RelayWebhookPolicy
from outbox_relay.dispatch import webhook_round
from outbox_relay.publish import Publisher
from shared.config import Settings, parse_networks
from shared.queries import QUERIES
from shared.queues import (
    DELIVER_WEBHOOK_TASK,
    WEBHOOK_QUEUE,
    broker_transport_options,
    kombu_queue,
)
from tests.factories import state_machine_off

if TYPE_CHECKING:  # conftest imports this module for its fixtures
    from tests.conftest import TenantKey

LOOPBACK = parse_networks("127.0.0.0/8,::1/128")
POLICY = WebhookPostPolicy(timeout=2.0, retry_hours=24.0, retry_base=30.0, allow_networks=LOOPBACK)


# --- a receiver on a loopback port ------------------------------------------------


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Receiver:
    """An HTTP server in a thread: records each request, answers from ``statuses``."""

    statuses: list[int] = field(default_factory=list)  # consumed in order; then 200
    delay: float = 0.0
    location: str = ""
    host: str = "127.0.0.1"
    port: int = 0  # 0: any free port
    tls: ssl.SSLContext | None = None  # set: HTTPS with this server context
    received: list[Received] = field(default_factory=list)
    server: ThreadingHTTPServer | None = None

    @property
    def port_number(self) -> int:
        assert self.server is not None
        return int(self.server.server_address[1])

    @property
    def url(self) -> str:
        scheme = "https" if self.tls else "http"
        return f"{scheme}://{self.host}:{self.port_number}/hooks/mailroom"

    def start(self) -> Receiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                receiver.received.append(Received(self.path, dict(self.headers), body))
                time.sleep(receiver.delay)
                status = receiver.statuses.pop(0) if receiver.statuses else 200
                self.send_response(status)
                if receiver.location:
                    self.send_header("Location", receiver.location)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *_args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer((self.host, self.port), Handler)
        if self.tls is not None:
            self.server.socket = self.tls.wrap_socket(self.server.socket, server_side=True)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()

    def wait_for(self, count: int, timeout: float) -> list[Received]:
        deadline = time.monotonic() + timeout
        while len(self.received) < count and time.monotonic() < deadline:
            time.sleep(0.05)
        return list(self.received)


# --- helpers -----------------------------------------------------------------------


def bearer(tenant: TenantKey) -> dict[str, str]:
    return {"Authorization": f"Bearer {tenant.key}"}


def create_webhook(
    client: FlaskClient, tenant: TenantKey, url: str, events: list[str] | None = None
) -> dict[str, Any]:
    response = client.post(
        "/v1/webhooks", json={"url": url, "events": events or ["sent"]}, headers=bearer(tenant)
    )
    assert response.status_code == 201, response.get_json()
    body: dict[str, Any] = response.get_json()
    return body


def record_outcome(
    db: psycopg.Connection, mail_id: uuid.UUID, status: str = "sent", detail: Any = None
) -> None:
    """Record a send's outcome with the worker's own query (the mail must be 'sending')."""
    with state_machine_off(db):
        row = db.execute(
            "UPDATE mails SET status = 'sending' WHERE id = %s RETURNING attempts", (mail_id,)
        ).fetchone()
    assert row is not None
    db.execute(
        QUERIES["finish_sending"],
        {
            "mail_id": mail_id,
            "attempt": row[0],
            "status": status,
            "last_error": None,
            "detail": Jsonb(detail or {"smtp_reply": "250 OK"}),
        },
    )


def deliveries(db: psycopg.Connection) -> list[dict[str, Any]]:
    cursor = db.execute(
        "SELECT id, webhook_id, tenant_id, mail_id, event, payload, status, attempts,"
        " dispatch_count, last_status_code, last_error, delivered_at,"
        " available_at > now() AS later, EXTRACT(EPOCH FROM available_at - now()) AS due_in"
        " FROM webhook_deliveries ORDER BY created_at, id"
    )
    names = [column.name for column in cursor.description or []]
    return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]


def relay_round(db: psycopg.Connection, publisher: Publisher, retry_hours: float = 24.0) -> Any:
    return webhook_round(db, publisher, RelayWebhookPolicy(100, 60.0, retry_hours))


def drain_queue(
    settings: Settings, name: str = "transactional"
) -> list[tuple[dict[str, Any], Any]]:
    """Every message waiting in a queue, as (headers, body)."""
    options = broker_transport_options(settings.broker_url, settings.broker_key_prefix)
    messages = []
    with Connection(settings.broker_url, transport_options=options) as conn:
        queue = conn.SimpleQueue(kombu_queue(name, settings.broker_url, settings.queue_prefix))
        while True:
            try:
                message = queue.get(timeout=0.5)
            except queue.Empty:
                break
            messages.append((message.headers, message.decode()))
            message.ack()
        queue.close()
    return messages


def take_messages(settings: Settings) -> list[tuple[dict[str, Any], Any]]:
    """Every message waiting in the webhook queue, as (headers, body)."""
    return drain_queue(settings, WEBHOOK_QUEUE)


def publish_and_run(
    db: psycopg.Connection,
    publisher: Publisher,
    settings: Settings,
    pool: ConnectionPool,
    policy: WebhookPostPolicy = POLICY,
) -> list[str]:
    """One relay round, then the worker's task for each message it published."""
    relay_round(db, publisher)
    return [
        deliver_webhook(pool, body[0][0], policy)
        for headers, body in take_messages(settings)
        if headers["task"] == DELIVER_WEBHOOK_TASK
    ]
