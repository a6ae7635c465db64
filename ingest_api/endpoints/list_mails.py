"""GET /v1/mails: a tenant's mails, newest first, filtered, with cursor pagination."""

from __future__ import annotations

import base64
import binascii
import uuid
from datetime import datetime
from typing import Any

from flask import current_app
from flask.views import MethodView
from flask_smorest import Blueprint

from ingest_api.auth import require_scope
from ingest_api.errors import refuse
from ingest_api.schemas.mail import MailListArgsSchema, MailPageSchema
from shared.queries import QUERIES

blp = Blueprint("list_mails", __name__, url_prefix="/v1", description="List mails")


def encode_cursor(created_at: datetime, mail_id: uuid.UUID) -> str:
    raw = f"{created_at.isoformat()}|{mail_id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        created_at, mail_id = raw.split("|")
        return datetime.fromisoformat(created_at), uuid.UUID(mail_id)
    except (ValueError, binascii.Error, UnicodeDecodeError):
        refuse(400, "the cursor is not one this API returned", errors={"cursor": ["invalid"]})


@blp.route("/mails")
class ListMails(MethodView):
    @blp.arguments(MailListArgsSchema(), location="query")
    @blp.response(200, MailPageSchema)
    def get(self, args: dict[str, Any]) -> dict[str, Any]:
        """Mails of this tenant by status, creation time and tag; follow ``next_cursor``."""
        tenant = require_scope("read")
        cursor_created_at, cursor_id = (
            decode_cursor(args["cursor"]) if args.get("cursor") else (None, None)
        )
        limit = args["limit"]
        with current_app.extensions["mailroom.pool"].connection() as conn:
            rows = conn.execute(
                QUERIES["list_mails_for_tenant"],
                {
                    "tenant_id": tenant.id,
                    "status": args.get("status"),
                    "since": args.get("since"),
                    "until": args.get("until"),
                    "tag": args.get("tag"),
                    "cursor_created_at": cursor_created_at,
                    "cursor_id": cursor_id,
                    "limit": limit + 1,
                },
            ).fetchall()
        page, more = rows[:limit], len(rows) > limit
        next_cursor = encode_cursor(page[-1]["created_at"], page[-1]["id"]) if more else None
        return {"mails": page, "next_cursor": next_cursor}
