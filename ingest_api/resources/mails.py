"""/v1/mails: send one mail or a batch, read one, list them, cancel one.

A mail is answered 202 only after the transaction that stores it (with its outbox
row and first event) has committed: :func:`ingest_api.ingest.ingest_transaction`.
"""

from __future__ import annotations

import base64
import binascii
import uuid
from dataclasses import asdict
from datetime import datetime
from typing import Any

from flask import Response
from flask.views import MethodView
from flask_smorest import Blueprint
from marshmallow import ValidationError

from ingest_api import db
from ingest_api.auth import require_scope
from ingest_api.errors import refuse
from ingest_api.ingest import answer_after_commit, ingest_transaction
from ingest_api.new_mails import field_errors, new_mail
from ingest_api.openapi import PROBLEM
from ingest_api.schemas.mail import (
    AcceptedSchema,
    BatchResultSchema,
    BatchSchema,
    CancelledSchema,
    MailListArgsSchema,
    MailPageSchema,
    MailStatusSchema,
    SendMailSchema,
)
from shared.jsonlog import request_id_var
from shared.states import MailStatus
from shared.store import NotFound
from shared.store import mails as store
from shared.store.mails import NewMail, SendingBegun
from shared.store.tenants import Tenant

blp = Blueprint("mails", __name__, url_prefix="/v1", description="Send and read mails")

_item_schema = SendMailSchema()


def _mail_id(value: str) -> uuid.UUID:
    try:
        return uuid.UUID(value)
    except ValueError:
        refuse(404, "no such mail")


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
class Mails(MethodView):
    @blp.arguments(SendMailSchema())
    @blp.response(202, AcceptedSchema)
    def post(self, data: dict[str, Any]) -> Response:
        """Accept a mail: answered 202 only once it is committed to the database.

        With ``send_at`` the mail is ``scheduled``; with ``expires_at`` or
        ``ttl_seconds`` it becomes ``expired`` instead of being sent late.
        """
        tenant = require_scope("send")
        try:
            mail = new_mail(data, tenant)
        except ValidationError as exc:
            refuse(422, "the sender is not allowed", errors=field_errors(exc))
        with ingest_transaction(tenant) as tx:  # BEGIN; COMMIT when the block ends
            if tx.replay is None:  # else this Idempotency-Key was answered: write nothing
                tx.add_mails([mail])
                tx.respond(202, {"id": str(mail.id), "status": mail.status.value})
        return answer_after_commit(tx)  # only now, after the COMMIT

    @blp.arguments(MailListArgsSchema(), location="query")
    @blp.response(200, MailPageSchema)
    def get(self, args: dict[str, Any]) -> dict[str, Any]:
        """Mails of this tenant by status, creation time and tag; follow ``next_cursor``."""
        tenant = require_scope("read")
        after = decode_cursor(args["cursor"]) if args.get("cursor") else None
        limit = args["limit"]
        with db.connection() as conn:
            rows = store.list_mails(
                conn,
                tenant.id,
                status=args.get("status"),
                since=args.get("since"),
                until=args.get("until"),
                tag=args.get("tag"),
                after=after,
                limit=limit + 1,
            )
        page, more = rows[:limit], len(rows) > limit
        next_cursor = encode_cursor(page[-1].created_at, page[-1].id) if more else None
        return {"mails": page, "next_cursor": next_cursor}


def validate_batch_items(
    items: list[Any], tenant: Tenant
) -> tuple[list[tuple[int, NewMail]], list[dict[str, Any]]]:
    """The valid items as mails (with their index) and the invalid ones' errors by index.

    A batch whose every item loads goes through marshmallow in one ``many=True`` call,
    a third cheaper per item than 500 calls (bench/ingest.py); if any item fails,
    marshmallow skips the post-load step of them all, so the batch is loaded again item
    by item: an invalid batch gets exactly the answers of the one-by-one path.
    """
    try:
        loaded: list[dict[str, Any]] | None = _item_schema.load(items, many=True)
    except ValidationError:
        loaded = None
    valid: list[tuple[int, NewMail]] = []
    invalid: list[dict[str, Any]] = []
    for index, item in enumerate(items):
        try:
            data = loaded[index] if loaded is not None else _item_schema.load(item)
            valid.append((index, new_mail(data, tenant)))
        except ValidationError as exc:
            invalid.append({"index": index, "errors": field_errors(exc)})
    return valid, invalid


@blp.route("/mails/batch")
class Batch(MethodView):
    @blp.arguments(BatchSchema())
    @blp.response(202, BatchResultSchema)
    def post(self, data: dict[str, Any]) -> Response:
        """Accept the valid mails of a batch; report the invalid ones by index."""
        # Up to 500 mails in one request and one transaction. Each item is validated
        # on its own: valid items are accepted, invalid ones are reported by index with
        # their errors and not stored. A batch in which no item is valid is a 422.
        tenant = require_scope("send")
        valid, invalid = validate_batch_items(data["mails"], tenant)
        if not valid:
            refuse(
                422,
                "no mail in the batch is valid",
                errors={f"mails.{item['index']}": item["errors"] for item in invalid},
            )
        with ingest_transaction(tenant) as tx:
            if tx.replay is None:
                tx.add_mails([mail for _, mail in valid])
                accepted = [
                    {"index": index, "id": str(mail.id), "status": mail.status.value}
                    for index, mail in valid
                ]
                results = sorted(accepted + invalid, key=lambda item: int(item["index"]))
                tx.respond(
                    202, {"results": results, "accepted": len(valid), "rejected": len(invalid)}
                )
        return answer_after_commit(tx)


@blp.route("/mails/<mail_id>")
class Mail(MethodView):
    @blp.response(200, MailStatusSchema)
    def get(self, mail_id: str) -> dict[str, Any]:
        """A mail of this tenant, with its events; any other id is a 404."""
        tenant = require_scope("read")
        wanted = _mail_id(mail_id)
        with db.connection() as conn:
            try:
                mail = store.get_mail(conn, tenant.id, wanted)
            except NotFound:
                refuse(404, "no such mail")
            events = store.mail_events(conn, wanted)
        return {**asdict(mail), "events": events}


@blp.route("/mails/<mail_id>/cancel")
class CancelMail(MethodView):
    @blp.response(200, CancelledSchema)
    @blp.alt_response(409, description="the mail is being sent or was sent", **PROBLEM)
    def post(self, mail_id: str) -> dict[str, Any]:
        """Cancel while ``scheduled``, ``accepted``, ``queued`` or ``retrying``; 409 after."""
        tenant = require_scope("send")
        wanted = _mail_id(mail_id)
        try:
            with db.transaction() as conn:
                store.cancel_mail(conn, tenant.id, wanted, request_id=request_id_var.get())
        except NotFound:
            refuse(404, "no such mail")
        except SendingBegun as exc:
            refuse(
                409,
                f"the mail is {exc.status}; only a mail whose sending has not begun can be"
                " cancelled",
            )
        return {"id": wanted, "status": MailStatus.CANCELLED.value}
