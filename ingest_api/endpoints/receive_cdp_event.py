"""POST /v1/cdp/events: a CDP's signed track event, stored with the mails it triggers.

No API key here: the CDP names the tenant (``X-Mailroom-Tenant: <tenant id>``)
and signs the raw body with the tenant's webhook secret
(``X-Mailroom-Signature``, see :mod:`shared.signatures`); anything else is
a 401 and nothing is stored. The event, whether or not a workflow matches, and
the mails its workflows create are written in one transaction; its
``messageId`` makes a redelivery return the first answer and create nothing.
"""

from __future__ import annotations

import logging
import time
import uuid
from typing import Any

from flask import Response, current_app, request
from flask.views import MethodView
from flask_smorest import Blueprint
from marshmallow import ValidationError
from psycopg.types.json import Jsonb

from ingest_api import strict_json
from ingest_api.accept import IngestTransaction
from ingest_api.auth import Tenant, authenticated_otherwise
from ingest_api.cdp import run_workflows
from ingest_api.errors import refuse
from ingest_api.ingest import handle_ingest
from ingest_api.new_mail import field_errors
from ingest_api.schemas.cdp_event import CdpEventSchema, CdpResultSchema
from ingest_api.schemas.fields import unstorable
from shared import signatures
from shared.queries import QUERIES

log = logging.getLogger(__name__)

blp = Blueprint("receive_cdp_event", __name__, url_prefix="/v1", description="Receive CDP events")
authenticated_otherwise(blp)  # by the signature, not by an API key

TENANT_HEADER = "X-Mailroom-Tenant"
# Compared against when the tenant is unknown or has no secret, so that the
# answer takes as long and says the same as for a wrong signature.
_NO_SECRET = "no secret: " + uuid.uuid4().hex

_event_schema = CdpEventSchema()


def _signed_tenant(body: bytes) -> Tenant:
    """The tenant the request names, if the body is signed with its webhook secret."""
    header = request.headers.get(signatures.HEADER)
    if header is None:
        refuse(401, f"send {TENANT_HEADER} and {signatures.HEADER}")
    try:
        tenant_id = uuid.UUID(request.headers.get(TENANT_HEADER, ""))
    except ValueError:
        refuse(401, f"{TENANT_HEADER} must be your tenant id")
    with current_app.extensions["mailroom.pool"].connection() as conn:
        row = conn.execute(
            QUERIES["find_tenant_webhook_secret"], {"tenant_id": tenant_id}
        ).fetchone()
    secret = row["webhook_secret"] if row is not None else None
    try:
        signatures.verify(secret or _NO_SECRET, header, body, time.time())
    except signatures.SignatureError as exc:
        refuse(401, str(exc))
    if row is None or secret is None:  # the digest matched a random secret: not in practice
        refuse(401, "the signature does not match the body")
    return Tenant(row["id"], row["name"], tuple(row["sender_domains"]))


def _event(body: bytes) -> tuple[dict[str, Any], dict[str, Any]]:
    """The raw event (to store) and its validated fields."""
    payload = strict_json.loads(body)  # a StrictJsonError names the refused field
    if not isinstance(payload, dict):
        refuse(422, "the body must be a JSON object (one event)")
    problem = unstorable(payload)
    if problem is not None:
        refuse(422, f"the event {problem}", errors={"_schema": [problem]})
    try:
        return payload, _event_schema.load(payload)
    except ValidationError as exc:
        refuse(422, "the event is not valid", errors=field_errors(exc))


@blp.route("/cdp/events")
class ReceiveCdpEvent(MethodView):
    @blp.doc(
        security=[],
        parameters=[
            {"in": "header", "name": TENANT_HEADER, "required": True, "schema": {"type": "string"}},
            {
                "in": "header",
                "name": signatures.HEADER,
                "required": True,
                "schema": {"type": "string"},
                "description": "t=<unix seconds>,v1=<hex HMAC-SHA256 of '<t>.<raw body>'>",
            },
        ],
        requestBody={
            "required": True,
            "content": {"application/json": {"schema": CdpEventSchema}},
        },
    )
    @blp.response(202, CdpResultSchema)
    def post(self) -> Response:
        """Receive a signed Segment-style event; answer which mails it created.

        Stored whether or not a workflow matches. A workflow whose campaign
        cannot be rendered for this event is reported under ``failed`` (and
        stored with the event) without failing the event or the other
        workflows. A second delivery with the same ``messageId`` gets the
        first answer and creates nothing.
        """
        body = request.get_data(cache=True)
        tenant = _signed_tenant(body)
        payload, event = _event(body)

        def create(tx: IngestTransaction) -> None:
            event_id = uuid.uuid4()
            ids = {"tenant_id": tenant.id, "message_id": event["message_id"]}
            claimed = tx.conn.execute(
                QUERIES["claim_cdp_event"],
                {**ids, "id": event_id, "event_name": event["event"], "payload": Jsonb(payload)},
            ).fetchone()
            if claimed is None:  # a redelivery: the first answer, nothing new
                stored = tx.conn.execute(QUERIES["find_cdp_event_response"], ids).fetchone()
                assert stored is not None  # the claim failed on this very row
                log.info("CDP event redelivered", extra={"message_id": event["message_id"]})
                tx.respond(202, stored["response"])
                return
            outcome = run_workflows(tx.conn, tenant, event)
            tx.add_mails(outcome.mails)
            answer = outcome.body(event_id, event["message_id"])
            tx.conn.execute(
                QUERIES["record_cdp_event_result"],
                {
                    "id": event_id,
                    "mail_ids": [mail.id for mail in outcome.mails],
                    "response": Jsonb(answer),
                },
            )
            tx.respond(202, answer)

        return handle_ingest(tenant, create)
