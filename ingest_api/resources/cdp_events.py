"""/v1/cdp/events: a CDP's signed track events, stored with the mails they trigger,
and the tenant's list of them.

No API key for POST: the CDP names the tenant (``X-Mailroom-Tenant: <tenant id>``)
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

from flask import Response, request
from flask.views import MethodView
from flask_smorest import Blueprint
from marshmallow import ValidationError

from ingest_api import db, strict_json
from ingest_api.auth import authenticated_otherwise, require_scope
from ingest_api.errors import refuse
from ingest_api.ingest import IngestTransaction, answer_after_commit, ingest_transaction
from ingest_api.new_mails import event_object, field_errors, triggers_workflows, workflow_mails
from ingest_api.schemas.cdp_event import (
    CdpEventListArgsSchema,
    CdpEventListSchema,
    CdpEventSchema,
    CdpResultSchema,
)
from ingest_api.schemas.fields import unstorable
from shared import signatures
from shared.store import campaigns as store
from shared.store.tenants import Tenant, find_signing_tenant

log = logging.getLogger(__name__)

blp = Blueprint("cdp_events", __name__, url_prefix="/v1", description="CDP events")

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
    with db.connection() as conn:
        found = find_signing_tenant(conn, tenant_id)
    tenant, secret = found if found is not None else (None, None)
    try:
        signatures.verify(secret or _NO_SECRET, header, body, time.time())
    except signatures.SignatureError as exc:
        refuse(401, str(exc))
    if tenant is None or secret is None:  # the digest matched a random secret: not in practice
        refuse(401, "the signature does not match the body")
    return tenant


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


def _store_event(tx: IngestTransaction, payload: dict[str, Any], event: dict[str, Any]) -> None:
    """The event, the mails its workflows create and the answer, in the transaction;
    a redelivered ``messageId`` gets its first answer and creates nothing."""
    event_id = uuid.uuid4()
    first_answer = store.claim_cdp_event(
        tx.conn, tx.tenant.id, event_id=event_id, message_id=event["message_id"],
        event_name=event["event"], payload=payload,
    )  # fmt: skip
    if first_answer is not None:
        log.info("CDP event redelivered", extra={"message_id": event["message_id"]})
        tx.respond(202, first_answer)
        return
    matches = []
    if triggers_workflows(event):
        properties = event_object(event.get("properties"))
        matches = store.match_workflows(tx.conn, tx.tenant.id, event["event"], properties)
    outcome = workflow_mails(event, matches, tx.tenant)
    tx.add_mails(outcome.mails)
    answer = outcome.body(event_id, event["message_id"])
    store.record_cdp_event_result(tx.conn, event_id, [mail.id for mail in outcome.mails], answer)
    tx.respond(202, answer)


@authenticated_otherwise  # by the signature, not by an API key
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
        with ingest_transaction(tenant) as tx:  # BEGIN; COMMIT when the block ends
            if tx.replay is None:  # else this Idempotency-Key was answered: write nothing
                _store_event(tx, payload, event)
        return answer_after_commit(tx)


@blp.route("/cdp/events")
class ListCdpEvents(MethodView):
    @blp.arguments(CdpEventListArgsSchema(), location="query")
    @blp.response(200, CdpEventListSchema)
    def get(self, args: dict[str, Any]) -> dict[str, Any]:
        """The latest events of this tenant, newest first, each with the answer it got
        (mails created, workflows that failed and why); ``message_id`` finds one."""
        tenant = require_scope("read")
        with db.connection() as conn:
            events = store.list_cdp_events(
                conn, tenant.id, message_id=args.get("message_id"), limit=args["limit"]
            )
        return {"events": events}
