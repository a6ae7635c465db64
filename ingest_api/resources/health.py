"""GET /healthz (the process answers), GET /readyz (the API can accept mail) and
GET /readyz/pipeline (mail is getting from the outbox to a worker).

/readyz answers 200 while the database answers, whatever the broker does: an
API whose database works accepts mail safely into the outbox, so a broken queue
must not take it out of a load balancer. It reports the pipeline's health in its
body; /readyz/pipeline turns that into a 503 for monitors and deploy gates.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, current_app, jsonify

from ingest_api import db
from ingest_api.errors import handle_database_unavailable
from shared.config import Settings
from shared.pipeline_health import pipeline_health

blp = Blueprint("health", __name__)


@blp.get("/healthz")
def healthz() -> Response:
    return jsonify(status="ok")


def _pipeline() -> dict[str, Any]:
    settings: Settings = current_app.config["MAILROOM_SETTINGS"]
    with db.connection() as conn:
        health = pipeline_health(conn, settings.canary_threshold)
    states = {item.state for item in health}
    overall = "broken" if "broken" in states else "unknown" if "unknown" in states else "healthy"
    return {
        "pipeline": overall,
        "queues": {
            item.queue: {
                "state": item.state,
                "canary_age_seconds": None
                if item.age_seconds is None
                else round(item.age_seconds, 1),
                "detail": item.reason,
            }
            for item in health
        },
    }


@blp.get("/readyz")
def readyz() -> Response:
    try:
        pipeline = _pipeline()
    except Exception as exc:  # any failure here means "not ready", never a 500
        return handle_database_unavailable(exc)
    return jsonify(status="ready", database="ok", **pipeline)


@blp.get("/readyz/pipeline")
def readyz_pipeline() -> Response:
    try:
        pipeline = _pipeline()
    except Exception as exc:
        return handle_database_unavailable(exc)
    response = jsonify(pipeline)
    # "unknown" (no relay has sent a canary yet) is not an incident: 200, with the detail.
    response.status_code = 503 if pipeline["pipeline"] == "broken" else 200
    return response
