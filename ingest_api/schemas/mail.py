"""The mail resource: what ``POST /v1/mails`` accepts and what the API returns."""

from __future__ import annotations

from typing import Any

from marshmallow import RAISE, Schema, ValidationError, fields, validate, validates_schema

from ingest_api.schemas.fields import Mailbox, reject_line_breaks

MAX_RECIPIENTS = 50
MAX_SUBJECT_LENGTH = 998  # RFC 5322's hard line limit
# Headers a client may set besides X-*; everything else is ours to write.
ALLOWED_HEADERS = frozenset(
    {"list-unsubscribe", "list-unsubscribe-post", "references", "in-reply-to"}
)


def _validate_headers(headers: dict[str, str]) -> None:
    for name, value in headers.items():
        lowered = name.lower()
        if not name or any(c in name for c in ":\r\n \t") or not name.isascii():
            raise ValidationError({name: ["not a valid header name"]})
        if not (lowered.startswith("x-") or lowered in ALLOWED_HEADERS):
            raise ValidationError({name: ["only X-* and a few list/thread headers may be set"]})
        if "\r" in value or "\n" in value:
            raise ValidationError({name: ["must not contain CR or LF"]})


class SendMailSchema(Schema):
    class Meta:
        unknown = RAISE  # a misspelt field is an error, not a silently dropped one

    sender = Mailbox(data_key="from", required=True)
    to = fields.List(Mailbox(), required=True, validate=validate.Length(min=1))
    cc = fields.List(Mailbox(), load_default=list)
    bcc = fields.List(Mailbox(), load_default=list)
    reply_to = Mailbox(load_default=None)
    subject = fields.String(
        required=True,
        validate=[validate.Length(min=1, max=MAX_SUBJECT_LENGTH), reject_line_breaks],
    )
    text = fields.String(load_default=None)
    html = fields.String(load_default=None)
    headers = fields.Dict(
        keys=fields.String(), values=fields.String(), load_default=dict, validate=_validate_headers
    )

    @validates_schema
    def _body_and_recipients(self, data: dict[str, Any], **_: Any) -> None:
        if not data.get("text") and not data.get("html"):
            raise ValidationError("give text, html or both", field_name="text")
        count = len(data.get("to", [])) + len(data.get("cc", [])) + len(data.get("bcc", []))
        if count > MAX_RECIPIENTS:
            raise ValidationError(
                f"at most {MAX_RECIPIENTS} recipients (to, cc and bcc together)", field_name="to"
            )


class AcceptedSchema(Schema):
    id = fields.UUID(required=True)
    status = fields.String(required=True)


class EventSchema(Schema):
    kind = fields.String(required=True)
    detail = fields.Dict(required=True)
    created_at = fields.DateTime(required=True)


class MailStatusSchema(Schema):
    id = fields.UUID(required=True)
    status = fields.String(required=True)
    stream = fields.String(required=True)
    created_at = fields.DateTime(required=True)
    updated_at = fields.DateTime(required=True)
    events = fields.List(fields.Nested(EventSchema), required=True)
