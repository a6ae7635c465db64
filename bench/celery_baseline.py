"""The design that lost mail, as ingest.py's baseline: JSON in, Celery ``apply_async`` out.

No database, validation, authentication or outbox; 202 once Redis has the message, and nobody
consumes the queue. ingest.py serves it as ``bench.celery_baseline:app`` with
MAILROOM_BENCH_KEY_PREFIX (every Redis key goes under it) and MAILROOM_BENCH_BROKER_URL.
"""

from __future__ import annotations

import os
from typing import Any

from celery import Celery
from flask import Flask, Response, jsonify, request

# --- app internals this baseline uses (update here when the apps move things) ------------------
from shared.queues import SEND_MAIL_TASK, TRANSACTIONAL_QUEUE

# -----------------------------------------------------------------------------------------------

MAX_BODY_BYTES = 10 * 1024 * 1024  # as the API


def _never_runs(mail: dict[str, Any]) -> None:
    """The task's body: only its name matters."""


def create_app() -> Flask:
    key_prefix = os.environ["MAILROOM_BENCH_KEY_PREFIX"]  # the caller deletes what is under it
    celery = Celery("mailroom-bench-baseline")
    celery.conf.update(
        broker_url=os.environ.get("MAILROOM_BENCH_BROKER_URL") or "redis://127.0.0.1:6379/0",
        broker_transport_options={"global_keyprefix": key_prefix},
        broker_connection_retry_on_startup=True, task_default_queue=TRANSACTIONAL_QUEUE,
        task_ignore_result=True, task_serializer="json", accept_content=["json"],
    )  # fmt: skip
    send_mail = celery.task(name=SEND_MAIL_TASK, ignore_result=True)(_never_runs)
    app = Flask(__name__)
    app.config.update(MAX_CONTENT_LENGTH=MAX_BODY_BYTES)

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
