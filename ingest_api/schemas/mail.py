"""The mail resource: what ``POST /v1/mails`` (and each batch item) accepts, and
what the API returns about mails."""

from __future__ import annotations

import base64
import binascii
import mimetypes
import re
from datetime import UTC, datetime, timedelta
from typing import Any

from marshmallow import (
    RAISE,
    Schema,
    ValidationError,
    fields,
    post_load,
    pre_load,
    validate,
    validates_schema,
)

from ingest_api.schemas.fields import Mailbox, reject_line_breaks, unstorable
from shared.queues import STREAM_QUEUES
from shared.states import MailStatus

MAX_RECIPIENTS = 50
MAX_SUBJECT_LENGTH = 998  # RFC 5322's hard line limit
MAX_SCHEDULE_AHEAD = timedelta(days=30)
MAX_TAGS = 10
MAX_METADATA_KEYS = 20
MAX_ATTACHMENTS = 20
MAX_ATTACHMENT_BYTES = 7 * 1024 * 1024  # decoded, all attachments of a mail together
# Headers a client may set besides X-*; everything else is ours to write.
ALLOWED_HEADERS = frozenset(
    {"list-unsubscribe", "list-unsubscribe-post", "references", "in-reply-to"}
)
# Executables and scripts that mail clients and gateways block anyway.
BLOCKED_EXTENSIONS = frozenset(
    {
        "ade",
        "adp",
        "app",
        "bat",
        "chm",
        "cmd",
        "com",
        "cpl",
        "dll",
        "exe",
        "hta",
        "inf",
        "ins",
        "isp",
        "jar",
        "js",
        "jse",
        "lib",
        "lnk",
        "mde",
        "msc",
        "msi",
        "msp",
        "mst",
        "pif",
        "ps1",
        "reg",
        "scr",
        "sct",
        "shb",
        "sys",
        "vb",
        "vbe",
        "vbs",
        "vxd",
        "wsc",
        "wsf",
        "wsh",
    }
)
_CONTENT_TYPE = re.compile(r"^[a-z0-9!#$&^_.+-]+/[a-z0-9!#$&^_.+-]+$")
_CONTENT_ID = re.compile(r"^[A-Za-z0-9!#$%&'*+/=?^_`{|}~.@-]{1,200}$")


def _validate_headers(headers: dict[str, str]) -> None:
    for name, value in headers.items():
        lowered = name.lower()
        if not name or any(c in name for c in ":\r\n \t") or not name.isascii():
            raise ValidationError({name: ["not a valid header name"]})
        if not (lowered.startswith("x-") or lowered in ALLOWED_HEADERS):
            raise ValidationError({name: ["only X-* and a few list/thread headers may be set"]})
        if "\r" in value or "\n" in value:
            raise ValidationError({name: ["must not contain CR or LF"]})


def _validate_metadata(metadata: dict[str, Any]) -> None:
    if len(metadata) > MAX_METADATA_KEYS:
        raise ValidationError(f"at most {MAX_METADATA_KEYS} keys")
    for key, value in metadata.items():
        if not isinstance(value, str | int | float | bool) or len(str(value)) > 500:
            raise ValidationError({key: ["a string, number or boolean of at most 500 characters"]})


class AttachmentSchema(Schema):
    class Meta:
        unknown = RAISE

    filename = fields.String(
        required=True, validate=[validate.Length(min=1, max=255), reject_line_breaks]
    )
    content = fields.String(required=True, metadata={"description": "base64"})
    content_type = fields.String(load_default=None, validate=validate.Regexp(_CONTENT_TYPE))
    content_id = fields.String(
        load_default=None,
        validate=validate.Regexp(_CONTENT_ID),
        metadata={"description": "set to reference the attachment as cid:<content_id> in html"},
    )

    @validates_schema
    def _safe_file(self, data: dict[str, Any], **_: Any) -> None:
        filename = data.get("filename", "")
        if "/" in filename or "\\" in filename:
            raise ValidationError("must be a file name, not a path", field_name="filename")
        extension = filename.rsplit(".", 1)[-1].lower() if "." in filename else ""
        if extension in BLOCKED_EXTENSIONS:
            raise ValidationError(f".{extension} files are not accepted", field_name="filename")
        try:
            base64.b64decode(data.get("content", ""), validate=True)
        except (binascii.Error, ValueError):
            raise ValidationError("not valid base64", field_name="content") from None

    @post_load
    def _with_type(self, data: dict[str, Any], **_: Any) -> dict[str, Any]:
        if data["content_type"] is None:
            guessed, _encoding = mimetypes.guess_type(data["filename"])
            data["content_type"] = guessed or "application/octet-stream"
        return data


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
    attachments = fields.List(
        fields.Nested(AttachmentSchema),
        load_default=list,
        validate=validate.Length(max=MAX_ATTACHMENTS),
    )
    stream = fields.String(
        load_default="transactional", validate=validate.OneOf(sorted(STREAM_QUEUES))
    )
    send_at = fields.AwareDateTime(
        load_default=None,
        default_timezone=UTC,
        metadata={"description": "ISO 8601; at most 30 days ahead; no timezone means UTC"},
    )
    expires_at = fields.AwareDateTime(load_default=None, default_timezone=UTC)
    ttl_seconds = fields.Integer(
        load_default=None,
        validate=validate.Range(min=1, max=int(MAX_SCHEDULE_AHEAD.total_seconds())),
    )
    tags = fields.List(
        fields.String(validate=[validate.Length(min=1, max=64), reject_line_breaks]),
        load_default=list,
        validate=validate.Length(max=MAX_TAGS),
    )
    metadata = fields.Dict(keys=fields.String(validate=validate.Length(min=1, max=64)),
                           load_default=dict, validate=_validate_metadata)  # fmt: skip
    bypass_unsubscribes = fields.Boolean(
        load_default=False,
        metadata={
            "description": "send to addresses that unsubscribed (stream transactional only;"
            " hard bounces are never bypassed)"
        },
    )

    @pre_load
    def _storable(self, data: Any, **_: Any) -> Any:
        """NUL characters and lone surrogates cannot be stored: a 422, not a failed COMMIT."""
        if isinstance(data, dict):
            errors = {
                key: [problem] for key, value in data.items() if (problem := unstorable(value))
            }
            if errors:
                raise ValidationError(errors)
        return data

    @validates_schema
    def _body_and_recipients(self, data: dict[str, Any], **_: Any) -> None:
        if not data.get("text") and not data.get("html"):
            raise ValidationError("give text, html or both", field_name="text")
        count = len(data.get("to", [])) + len(data.get("cc", [])) + len(data.get("bcc", []))
        if count > MAX_RECIPIENTS:
            raise ValidationError(
                f"at most {MAX_RECIPIENTS} recipients (to, cc and bcc together)", field_name="to"
            )
        total = sum(len(a["content"]) * 3 // 4 for a in data.get("attachments", []))
        if total > MAX_ATTACHMENT_BYTES:
            raise ValidationError(
                f"attachments may total at most {MAX_ATTACHMENT_BYTES} bytes",
                field_name="attachments",
            )

    @validates_schema
    def _timing(self, data: dict[str, Any], **_: Any) -> None:
        now = datetime.now(UTC)
        send_at, expires_at = data.get("send_at"), data.get("expires_at")
        if send_at is not None and send_at > now + MAX_SCHEDULE_AHEAD:
            raise ValidationError("at most 30 days ahead", field_name="send_at")
        if expires_at is not None and data.get("ttl_seconds") is not None:
            raise ValidationError(
                "give expires_at or ttl_seconds, not both", field_name="ttl_seconds"
            )
        if expires_at is not None and expires_at <= max(now, send_at or now):
            raise ValidationError("must be after now and after send_at", field_name="expires_at")

    @post_load
    def _resolve_timing(self, data: dict[str, Any], **_: Any) -> dict[str, Any]:
        now = datetime.now(UTC)
        if data["send_at"] is not None and data["send_at"] <= now:
            data["send_at"] = None  # a time in the past means "now"
        ttl = data.pop("ttl_seconds")
        if ttl is not None:
            data["expires_at"] = (data["send_at"] or now) + timedelta(seconds=ttl)
        return data


class BatchSchema(Schema):
    class Meta:
        unknown = RAISE

    mails = fields.List(
        fields.Dict(),
        required=True,
        validate=validate.Length(min=1, max=500),
        metadata={"description": "up to 500 mails, each shaped like POST /v1/mails"},
    )


class AcceptedSchema(Schema):
    id = fields.UUID(required=True)
    status = fields.String(required=True)


class BatchItemSchema(Schema):
    index = fields.Integer(required=True)
    id = fields.UUID()
    status = fields.String()
    errors = fields.Dict()


class BatchResultSchema(Schema):
    results = fields.List(fields.Nested(BatchItemSchema), required=True)
    accepted = fields.Integer(required=True)
    rejected = fields.Integer(required=True)


class EventSchema(Schema):
    kind = fields.String(required=True)
    detail = fields.Dict(required=True)
    created_at = fields.DateTime(required=True)


class MailSummarySchema(Schema):
    id = fields.UUID(required=True)
    status = fields.String(required=True)
    stream = fields.String(required=True)
    source = fields.String(required=True)
    tags = fields.List(fields.String(), required=True)
    metadata = fields.Dict(required=True)
    send_at = fields.DateTime(allow_none=True)
    expires_at = fields.DateTime(allow_none=True)
    campaign_key = fields.String(allow_none=True)
    attempts = fields.Integer(required=True)
    last_error = fields.String(allow_none=True)
    created_at = fields.DateTime(required=True)
    updated_at = fields.DateTime(required=True)


class MailStatusSchema(MailSummarySchema):
    events = fields.List(fields.Nested(EventSchema), required=True)


class MailListArgsSchema(Schema):
    class Meta:
        unknown = RAISE

    status = fields.String(validate=validate.OneOf([s.value for s in MailStatus]))
    since = fields.AwareDateTime(default_timezone=UTC)
    until = fields.AwareDateTime(default_timezone=UTC)
    tag = fields.String(validate=validate.Length(min=1, max=64))
    limit = fields.Integer(load_default=50, validate=validate.Range(min=1, max=100))
    cursor = fields.String(validate=validate.Length(max=200))


class MailPageSchema(Schema):
    mails = fields.List(fields.Nested(MailSummarySchema), required=True)
    next_cursor = fields.String(allow_none=True, required=True)


class CancelledSchema(Schema):
    id = fields.UUID(required=True)
    status = fields.String(required=True)
