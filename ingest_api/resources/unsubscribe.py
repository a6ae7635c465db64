"""GET and POST /v1/unsubscribe/<token>: the one-click unsubscribe link of campaign mails.

No API key: the signed token (:mod:`shared.unsubscribe_tokens`) is the proof.
POST is RFC 8058's one-click request (body ``List-Unsubscribe=One-Click``, but
any body is accepted): the address joins the tenant's suppression list and the
mail gets an ``unsubscribed`` event, once; a second POST is a 200 as well. GET
only shows a page with a button that POSTs, so a link scanner following the URL
unsubscribes nobody. A token that does not verify is a 404, nothing more.

A plain Flask blueprint, outside the OpenAPI document: mail clients and people
call it, not API clients.
"""

from __future__ import annotations

import logging

from flask import Blueprint, Response, current_app, g

from ingest_api import db
from ingest_api.auth import authenticated_otherwise
from ingest_api.errors import refuse
from shared.config import Settings
from shared.store.suppressions import record_unsubscribe
from shared.unsubscribe_tokens import UnsubscribeToken, verify

log = logging.getLogger(__name__)

blp = authenticated_otherwise(Blueprint("unsubscribe", __name__, url_prefix="/v1"))

_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="robots" content="noindex"><title>{title}</title></head>
<body><h1>{title}</h1>{body}</body></html>
"""
_CONFIRM = (
    '<p>Stop receiving these mails?</p><form method="post">'
    '<input type="hidden" name="List-Unsubscribe" value="One-Click">'
    '<button type="submit">Unsubscribe</button></form>'
)
_DONE = "<p>You will not receive these mails any more.</p>"


def _html(title: str, body: str) -> Response:
    response = Response(_PAGE.format(title=title, body=body), mimetype="text/html")
    response.headers["Cache-Control"] = "no-store"
    response.headers["Referrer-Policy"] = "no-referrer"
    return response


def _verified(token: str) -> UnsubscribeToken:
    settings: Settings = current_app.config["MAILROOM_SETTINGS"]
    if not settings.unsubscribe_secret:
        log.error("unsubscribe link used but MAILROOM_UNSUBSCRIBE_SECRET is not set")
        refuse(503, "unsubscribe links are not configured on this server")
    found = verify(settings.unsubscribe_secret, token)
    if found is None:
        refuse(404, "no such unsubscribe link")
    return found


@blp.get("/unsubscribe/<token>")
def confirm_page(token: str) -> Response:
    """A page whose button POSTs: never unsubscribes on GET."""
    _verified(token)
    return _html("Unsubscribe", _CONFIRM)


@blp.post("/unsubscribe/<token>")
def unsubscribe(token: str) -> Response:
    """Suppress the address for the tenant and record the event on the mail; idempotent."""
    found = _verified(token)
    with db.transaction() as conn:
        record_unsubscribe(
            conn, found.tenant_id, found.mail_id, found.email, request_id=g.request_id
        )
    return _html("Unsubscribed", _DONE)
