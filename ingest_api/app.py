"""The application factory."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any

from flask import Flask, Response, g, request

from ingest_api import auth, metrics, openapi
from ingest_api.auth import KEY_CACHE_SECONDS, KeyCache
from ingest_api.endpoints import (
    CAMPAIGN_ENDPOINTS,
    SUPPRESSION_ENDPOINTS,
    UNSUBSCRIBE_BLUEPRINT,
    WEBHOOK_ENDPOINTS,
    cancel_mail,
    get_mail,
    health,
    list_mails,
    send_batch,
    send_mail,
)
from ingest_api.errors import register_error_handlers
from ingest_api.relay_wakeup import RelayWakeup
from shared.config import Settings, load_settings
from shared.db import create_pool
from shared.jsonlog import request_id_var

MAX_BODY_BYTES = 10 * 1024 * 1024


def _begin_request() -> None:
    incoming = request.headers.get("X-Request-Id", "")
    request_id = incoming if 0 < len(incoming) <= 128 and incoming.isprintable() else ""
    g.request_id = request_id or uuid.uuid4().hex
    g.request_id_token = request_id_var.set(g.request_id)


def _end_request(response: Response) -> Response:
    response.headers["X-Request-Id"] = g.get("request_id", "")
    return response


def _reset_request_context(_: BaseException | None) -> None:
    token = g.pop("request_id_token", None)
    if token is not None:
        request_id_var.reset(token)


def create_app(config: Mapping[str, Any] | None = None) -> Flask:
    """Build the API. ``config`` may carry ``MAILROOM_SETTINGS`` (a Settings)."""
    app = Flask(__name__)
    app.config.update(
        **openapi.SETTINGS,
        MAX_CONTENT_LENGTH=MAX_BODY_BYTES,
        JSON_SORT_KEYS=False,
    )
    app.config.update(config or {})
    settings: Settings = app.config.get("MAILROOM_SETTINGS") or load_settings(
        require=("database_url",)
    )
    app.config["MAILROOM_SETTINGS"] = settings
    pool = create_pool(settings, name="ingest-api")
    app.extensions["mailroom.pool"] = pool
    app.extensions["mailroom.wakeup"] = RelayWakeup(pool)
    app.extensions["mailroom.key_cache"] = KeyCache(KEY_CACHE_SECONDS)
    app.before_request(_begin_request)
    app.after_request(_end_request)
    app.teardown_request(_reset_request_context)
    metrics.init_app(app)  # first, so the latency includes authentication
    auth.init_app(app, settings)  # every /v1 request: API key, then rate limit

    api = openapi.create_api(app)
    for endpoint in (send_mail, send_batch, list_mails, get_mail, cancel_mail, *CAMPAIGN_ENDPOINTS):
        api.register_blueprint(endpoint.blp)
    for endpoint in WEBHOOK_ENDPOINTS:
        api.register_blueprint(endpoint.blp)
    for endpoint in SUPPRESSION_ENDPOINTS:
        api.register_blueprint(endpoint.blp)
    app.register_blueprint(health.blp)
    app.register_blueprint(UNSUBSCRIBE_BLUEPRINT)  # no API key, not in the OpenAPI document
    register_error_handlers(app)
    return app
