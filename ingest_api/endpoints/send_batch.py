"""POST /v1/mails/batch: up to 500 mails in one request and one transaction.

Each item is validated on its own: valid items are accepted, invalid ones are
reported by index with their errors and not stored. A batch in which no item
is valid is a 422.
"""

from __future__ import annotations

from typing import Any

from flask import Response
from flask.views import MethodView
from flask_smorest import Blueprint
from marshmallow import ValidationError

from ingest_api.accept import IngestTransaction, NewMail
from ingest_api.auth import Tenant, require_scope
from ingest_api.errors import refuse
from ingest_api.ingest import handle_ingest
from ingest_api.new_mail import field_errors, new_mail
from ingest_api.schemas.mail import BatchResultSchema, BatchSchema, SendMailSchema

blp = Blueprint("send_batch", __name__, url_prefix="/v1", description="Send mails in a batch")

_item_schema = SendMailSchema()


def _validate_items(
    items: list[dict[str, Any]], tenant: Tenant
) -> tuple[list[tuple[int, NewMail]], list[dict[str, Any]]]:
    valid: list[tuple[int, NewMail]] = []
    invalid: list[dict[str, Any]] = []
    for index, item in enumerate(items):
        try:
            valid.append((index, new_mail(_item_schema.load(item), tenant)))
        except ValidationError as exc:
            invalid.append({"index": index, "errors": field_errors(exc)})
    return valid, invalid


@blp.route("/mails/batch")
class SendBatch(MethodView):
    @blp.arguments(BatchSchema())
    @blp.response(202, BatchResultSchema)
    def post(self, data: dict[str, Any]) -> Response:
        """Accept the valid mails of a batch; report the invalid ones by index."""
        tenant = require_scope("send")
        valid, invalid = _validate_items(data["mails"], tenant)
        if not valid:
            refuse(
                422,
                "no mail in the batch is valid",
                errors={f"mails.{item['index']}": item["errors"] for item in invalid},
            )

        def create(tx: IngestTransaction) -> None:
            tx.add_mails([mail for _, mail in valid])
            accepted = [
                {"index": index, "id": str(mail.id), "status": mail.status.value}
                for index, mail in valid
            ]
            results = sorted(accepted + invalid, key=lambda item: int(item["index"]))
            tx.respond(202, {"results": results, "accepted": len(valid), "rejected": len(invalid)})

        return handle_ingest(tenant, create)
