"""The design that lost mail, as a baseline for bench/ingest.py: JSON in, Celery out.

``POST /v1/mails`` parses the request body and hands it straight to Celery's
``apply_async`` on a Redis broker; no database, no validation, no
authentication, no outbox. It answers 202 as soon as Redis has the message, so
a broker that loses it (restart without persistence, eviction, failover) loses
the mail although the client holds an id. Nobody consumes the queue.

Serve it with the API's gunicorn settings, from the repository root::

    MAILROOM_BENCH_KEY_PREFIX=mailroom-bench-<hex>: \\
    python -m gunicorn -c python:ingest_api.gunicorn_conf --bind 127.0.0.1:8001 \\
        --workers 2 bench.celery_baseline:app

Environment:

``MAILROOM_BENCH_KEY_PREFIX``
    required; every Redis key is written under it (kombu's ``global_keyprefix``),
    so the caller can delete exactly what this app wrote.
``MAILROOM_BENCH_BROKER_URL``
    default ``redis://127.0.0.1:6379/0``.
"""

from __future__ import annotations

import os
from typing import Any

from celery import Celery
from flask import Flask, Response, jsonify, request

from shared.queues import SEND_MAIL_TASK, TRANSACTIONAL_QUEUE

DEFAULT_BROKER_URL = "redis://127.0.0.1:6379/0"
MAX_BODY_BYTES = 10 * 1024 * 1024  # as the API


def _never_runs(mail: dict[str, Any]) -> None:
    """The task's body; only its name matters here, as nothing consumes the queue."""
    raise RuntimeError("the celery baseline's queue is not meant to be consumed")


def create_celery(broker_url: str, key_prefix: str) -> Celery:
    celery = Celery("mailroom-bench-baseline")
    celery.conf.update(
        broker_url=broker_url,
        broker_transport_options={"global_keyprefix": key_prefix},
        broker_connection_retry_on_startup=True,
        task_default_queue=TRANSACTIONAL_QUEUE,
        task_ignore_result=True,
        task_serializer="json",
        accept_content=["json"],
    )
    return celery


def create_app(broker_url: str | None = None, key_prefix: str | None = None) -> Flask:
    broker_url = broker_url or os.environ.get("MAILROOM_BENCH_BROKER_URL") or DEFAULT_BROKER_URL
    key_prefix = key_prefix or os.environ.get("MAILROOM_BENCH_KEY_PREFIX", "")
    if not key_prefix:
        raise RuntimeError(
            "set MAILROOM_BENCH_KEY_PREFIX (e.g. mailroom-bench-<hex>:) so the keys this "
            "app writes to Redis can be found and deleted"
        )
    celery = create_celery(broker_url, key_prefix)
    send_mail = celery.task(name=SEND_MAIL_TASK, ignore_result=True)(_never_runs)

    app = Flask(__name__)
    app.config.update(MAX_CONTENT_LENGTH=MAX_BODY_BYTES)
    app.extensions["bench.celery"] = celery

    @app.post("/v1/mails")
    def post_mail() -> tuple[Response, int]:
        body = request.get_json(silent=True)
        if not isinstance(body, dict):
            return jsonify(title="the body must be a JSON object"), 400
        result = send_mail.apply_async(args=(body,), queue=TRANSACTIONAL_QUEUE)
        return jsonify(id=str(result.id), status="accepted"), 202

    @app.get("/readyz")
    def readyz() -> tuple[Response, int]:
        with celery.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1)
        return jsonify(status="ready", broker="ok"), 200

    return app


app = create_app()
