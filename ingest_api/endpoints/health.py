"""GET /healthz (the process answers) and GET /readyz (the database answers)."""

from __future__ import annotations

from flask import Blueprint, Response, current_app, jsonify

from ingest_api.errors import handle_database_unavailable

blp = Blueprint("health", __name__)


@blp.get("/healthz")
def healthz() -> Response:
    return jsonify(status="ok")


@blp.get("/readyz")
def readyz() -> Response:
    try:
        with current_app.extensions["mailroom.pool"].connection() as conn:
            conn.execute("SELECT 1")
    except Exception as exc:  # any failure here means "not ready", never a 500
        return handle_database_unavailable(exc)
    return jsonify(status="ready", database="ok")
