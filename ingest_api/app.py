"""The application factory."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any

from flask import Flask, Response, g, request

from ingest_api import auth, db, metrics, openapi, strict_json
from ingest_api.auth import KEY_CACHE_SECONDS, KeyCache
from ingest_api.errors import refuse, register_error_handlers
from ingest_api.ingest import RelayWakeup
from ingest_api.resources import API_RESOURCES, PLAIN_RESOURCES
from shared.config import Settings, load_settings
from shared.db import create_pool
from shared.jsonlog import request_id_var

MAX_BODY_BYTES = 10 * 1024 * 1024


def _begin_request() -> None:
    incoming = request.headers.get("X-Request-Id", "")
    request_id = incoming if 0 < len(incoming) <= 128 and incoming.isprintable() else ""
    g.request_id = request_id or uuid.uuid4().hex
    g.request_id_token = request_id_var.set(g.request_id)


def _refuse_unstorable_text() -> None:
    """A NUL (or unpaired surrogate) in a path parameter, a query parameter or a
    header is a client's mistake: refused here, before any of it reaches a query
    (where PostgreSQL would refuse it as a failed statement, a 5xx)."""
    refused: dict[str, list[str]] = {}
    for name, value in (request.view_args or {}).items():
        problem = strict_json.text_problem(value) if isinstance(value, str) else None
        if problem is not None:
            refused[name] = [problem]
    for name, value in request.args.items(multi=True):
        problem = strict_json.text_problem(name) or strict_json.text_problem(value)
        if problem is not None:
            refused[strict_json.shown(name)] = [problem]
    for name, value in request.headers.items():
        if "\x00" in name or "\x00" in value:
            refused[strict_json.shown(name)] = ["contains a NUL character (\\u0000)"]
    if refused:
        refuse(400, "the request has invalid fields: " + ", ".join(refused), errors=refused)


def _refuse_oversized_stream() -> None:
    """A body without Content-Length (Transfer-Encoding: chunked) over MAX_BODY_BYTES
    is a 413, as one with a Content-Length is.

    Werkzeug reads such a body only up to MAX_CONTENT_LENGTH and hands over those
    bytes as if they were all of it: a truncated body, answered as invalid JSON.
    One byte more from the server's stream tells whether there was more.
    """
    if request.content_length is not None or "wsgi.input_terminated" not in request.environ:
        return
    received = request.get_data(cache=True)
    if len(received) >= MAX_BODY_BYTES and request.environ["wsgi.input"].read(1):
        refuse(413, f"the body is larger than {MAX_BODY_BYTES} bytes")


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
    db.install(app, pool)
    RelayWakeup(pool).install(app)
    app.extensions["mailroom.key_cache"] = KeyCache(KEY_CACHE_SECONDS)
    app.before_request(_begin_request)
    app.after_request(_end_request)
    app.teardown_request(_reset_request_context)
    metrics.init_app(app)  # first, so the latency includes authentication
    app.before_request(_refuse_unstorable_text)  # before authentication reads any of it
    auth.init_app(app, settings)  # every /v1 request: API key, then rate limit
    app.before_request(_refuse_oversized_stream)  # after auth: no /v1 body read without a key

    api = openapi.create_api(app)
    for resource in API_RESOURCES:
        api.register_blueprint(resource.blp)
    for plain in PLAIN_RESOURCES:
        app.register_blueprint(plain.blp)  # not in the OpenAPI document
    register_error_handlers(app)
    return app
