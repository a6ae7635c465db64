"""The Idempotency-Key header and how an endpoint answers with an ``Answer``."""

from __future__ import annotations

from flask import Response, jsonify, request

from ingest_api.accept import Answer, request_fingerprint
from ingest_api.errors import refuse

HEADER = "Idempotency-Key"
MAX_KEY_LENGTH = 255


def idempotency_key() -> tuple[str | None, bytes]:
    """The request's key (if any) and the fingerprint a retry must match."""
    key = request.headers.get(HEADER)
    if key is None:
        return None, b""
    if not 1 <= len(key) <= MAX_KEY_LENGTH or not key.isprintable():
        refuse(
            400,
            f"{HEADER} must be 1 to {MAX_KEY_LENGTH} printable characters",
            errors={HEADER: ["invalid"]},
        )
    return key, request_fingerprint(request.method, request.path, request.get_data())


def answer_response(answer: Answer, *, replayed: bool) -> Response:
    response = jsonify(answer.body)
    response.status_code = answer.status_code
    if replayed:
        response.headers["Idempotent-Replayed"] = "true"
    return response
