"""/v1/suppressions: the tenant's suppression list (hard bounces, unsubscribes, manual
entries), by address, with a cursor; an address in a path is matched in any case."""

from __future__ import annotations

import base64
import binascii
from typing import Any

from flask.views import MethodView
from flask_smorest import Blueprint

from ingest_api import db
from ingest_api.auth import require_scope
from ingest_api.errors import refuse
from ingest_api.openapi import PROBLEM
from ingest_api.schemas.fields import unstorable
from ingest_api.schemas.suppression import (
    MAX_EMAIL_LENGTH,
    NewSuppressionSchema,
    SuppressionListArgsSchema,
    SuppressionPageSchema,
    SuppressionSchema,
)
from shared.store import Conflict, NotFound
from shared.store import suppressions as store
from shared.store.suppressions import Suppression

blp = Blueprint("suppressions", __name__, url_prefix="/v1", description="Suppressed addresses")


def _email_from_path(value: str) -> str:
    """The address as stored (lower-cased); one that cannot be on the list is a 404."""
    email = value.strip().lower()
    if not email or len(email) > MAX_EMAIL_LENGTH or unstorable(email):
        refuse(404, "this address is not suppressed")
    return email


def encode_cursor(email: str) -> str:
    return base64.urlsafe_b64encode(email.encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> str:
    try:
        email = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    except (ValueError, binascii.Error, UnicodeDecodeError):
        email = ""
    if not email or unstorable(email):
        refuse(400, "the cursor is not one this API returned", errors={"cursor": ["invalid"]})
    return email


@blp.route("/suppressions")
class Suppressions(MethodView):
    @blp.arguments(SuppressionListArgsSchema(), location="query")
    @blp.response(200, SuppressionPageSchema)
    def get(self, args: dict[str, Any]) -> dict[str, Any]:
        """Suppressed addresses in order, optionally by ``reason``; follow ``next_cursor``."""
        tenant = require_scope("read")
        limit = args["limit"]
        after = decode_cursor(args["cursor"]) if args.get("cursor") else None
        with db.connection() as conn:
            rows = store.list_suppressions(
                conn, tenant.id, reason=args.get("reason"), after=after, limit=limit + 1
            )
        page, more = rows[:limit], len(rows) > limit
        return {
            "suppressions": page,
            "next_cursor": encode_cursor(page[-1].email) if more else None,
        }

    @blp.arguments(NewSuppressionSchema())
    @blp.response(201, SuppressionSchema)
    @blp.alt_response(
        200, schema=SuppressionSchema, description="the address was already suppressed"
    )
    @blp.alt_response(
        409, description="the entry changed while it was being added; retry", **PROBLEM
    )
    def post(self, data: dict[str, Any]) -> tuple[Suppression, int]:
        """Add a ``manual`` entry (201); an address already suppressed keeps its entry (200)."""
        tenant = require_scope("send")
        with db.connection() as conn:
            try:
                entry, created = store.add_manual_suppression(
                    conn, tenant.id, data["email"]["email"].lower(), data["note"]
                )
            except Conflict:
                refuse(409, "the entry changed while it was being added; retry")
        return entry, 201 if created else 200


@blp.route("/suppressions/<email>")
class SuppressionByEmail(MethodView):
    @blp.response(200, SuppressionSchema)
    def get(self, email: str) -> Suppression:
        """The entry for an address (any case); 404 if it is not suppressed."""
        tenant = require_scope("read")
        wanted = _email_from_path(email)
        with db.connection() as conn:
            try:
                return store.get_suppression(conn, tenant.id, wanted)
            except NotFound:
                refuse(404, "this address is not suppressed")

    @blp.response(204)
    def delete(self, email: str) -> None:
        """Remove the entry, whatever its reason; 404 if the address is not suppressed."""
        tenant = require_scope("send")
        wanted = _email_from_path(email)
        with db.connection() as conn:
            try:
                store.delete_suppression(conn, tenant.id, wanted)
            except NotFound:
                refuse(404, "this address is not suppressed")
