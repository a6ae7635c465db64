"""One JSON error format (problem+json) for every error the API returns.

Client errors name the field; server errors are logged with the request id and
return only that id, never a stack trace.
"""

from __future__ import annotations

import logging
from typing import Any, NoReturn

import psycopg
from flask import Flask, Response, jsonify
from flask_smorest import abort
from psycopg import errors as sqlstate
from psycopg_pool import PoolTimeout
from werkzeug.exceptions import HTTPException

from ingest_api.strict_json import StrictJsonError
from shared.jsonlog import request_id_var
from shared.store.mails import IdempotencyConflict

log = logging.getLogger(__name__)


def refuse(
    status: int,
    message: str,
    *,
    errors: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
) -> NoReturn:
    """Stop the request with a client error; *errors* maps field names to messages."""
    abort(status, message=message, errors={"json": errors} if errors else None, headers=headers)
    raise AssertionError("abort() returned")  # for type checkers: abort always raises


def problem(status: int, title: str, detail: str, errors: dict[str, Any] | None = None) -> Response:
    body: dict[str, Any] = {
        "type": "about:blank",
        "title": title,
        "status": status,
        "detail": detail,
    }
    if errors:
        body["errors"] = errors
    request_id = request_id_var.get()
    if request_id:
        body["request_id"] = request_id
    response = jsonify(body)
    response.status_code = status
    response.mimetype = "application/problem+json"
    return response


def _field_errors(error: HTTPException) -> dict[str, Any] | None:
    """webargs puts marshmallow's messages under the request location ("json")."""
    data = getattr(error, "data", None) or {}
    messages = data.get("messages") or data.get("errors")
    if not isinstance(messages, dict):
        return None
    merged: dict[str, Any] = {}
    for location_errors in messages.values():
        if isinstance(location_errors, dict):
            merged.update(location_errors)
    return merged or None


def handle_http_exception(error: HTTPException) -> Response:
    status = error.code or 500
    errors = _field_errors(error)
    detail = (getattr(error, "data", None) or {}).get("message") or error.description or ""
    if errors:
        detail = "the request has invalid fields: " + ", ".join(sorted(map(str, errors)))
    response = problem(status, error.name, detail, errors)
    # The exception's own headers (Allow on a 405, WWW-Authenticate, ...), then ours.
    for name, value in error.get_headers():
        if name.lower() != "content-type":
            response.headers[name] = value
    for name, value in ((getattr(error, "data", None) or {}).get("headers") or {}).items():
        response.headers[name] = value
    return response


def handle_strict_json(error: StrictJsonError) -> Response:
    """A body strict_json refused: the fields by dotted path."""
    title = "Bad Request" if error.status == 400 else "Unprocessable Entity"
    return problem(error.status, title, error.message, error.errors)


# The database cannot be reached or cannot take writes now: an outage, worth a retry.
# OperationalError covers lost connections, refused logins, shutdowns, a server
# in recovery (CannotConnectNow), timeouts and PoolTimeout; a read-only server (a
# standby after a failover) refuses writes with ReadOnlySqlTransaction, an InternalError.
_UNAVAILABLE = (psycopg.OperationalError, psycopg.InterfaceError, sqlstate.ReadOnlySqlTransaction)


def handle_database_error(error: psycopg.Error) -> Response:
    """503 for an unreachable database; any other database error is our bug: 500."""
    if isinstance(error, _UNAVAILABLE):
        return handle_database_unavailable(error)
    log.exception("database error", extra={"sqlstate": error.sqlstate})  # with the request id
    return problem(500, "Internal Server Error", "an internal error occurred; quote the request id")


def handle_database_unavailable(error: Exception) -> Response:
    log.error("database unavailable", extra={"error": f"{type(error).__name__}: {error}"})
    response = problem(
        503,
        "Service Unavailable",
        "the database is unavailable; nothing was accepted, retry later",
    )
    response.headers["Retry-After"] = "5"
    return response


def handle_idempotency_conflict(error: IdempotencyConflict) -> Response:
    return problem(
        422,
        "Unprocessable Entity",
        "this Idempotency-Key was used before with a different request",
        {"Idempotency-Key": ["reused with a different request body"]},
    )


def handle_unexpected(error: Exception) -> Response:
    log.exception("unhandled error")
    return problem(500, "Internal Server Error", "an internal error occurred; quote the request id")


def register_error_handlers(app: Flask) -> None:
    app.register_error_handler(HTTPException, handle_http_exception)
    app.register_error_handler(StrictJsonError, handle_strict_json)
    app.register_error_handler(PoolTimeout, handle_database_unavailable)
    # Any database error, a failed COMMIT included, means nothing was accepted;
    # only an unreachable database is a 503 worth retrying (handle_database_error).
    app.register_error_handler(psycopg.Error, handle_database_error)
    app.register_error_handler(IdempotencyConflict, handle_idempotency_conflict)
    app.register_error_handler(Exception, handle_unexpected)
