"""The CDP event resource: Segment-style events (``POST /v1/cdp/events``) and their record."""

from __future__ import annotations

from typing import Any

from marshmallow import INCLUDE, RAISE, Schema, ValidationError, fields, validate, validates_schema

TRACK = "track"


class CdpEventSchema(Schema):
    """A Segment-style event. Unknown fields are allowed (and stored): CDPs send many."""

    class Meta:
        unknown = INCLUDE

    type = fields.String(
        required=True,
        validate=validate.Length(min=1, max=50),
        metadata={"description": "only 'track' events trigger workflows; others are stored"},
    )
    event = fields.String(load_default=None, validate=validate.Length(min=1, max=200))
    message_id = fields.String(
        data_key="messageId",
        required=True,
        validate=validate.Length(min=1, max=200),
        metadata={"description": "deduplicates the CDP's retries"},
    )
    user_id = fields.Raw(data_key="userId", load_default=None)
    properties = fields.Dict(keys=fields.String(), load_default=dict, allow_none=True)
    context = fields.Dict(
        keys=fields.String(),
        load_default=dict,
        allow_none=True,
        metadata={"description": "`context.traits.email` is the recipient"},
    )
    timestamp = fields.String(load_default=None)

    @validates_schema
    def _track_has_a_name(self, data: dict[str, Any], **_: Any) -> None:
        if data.get("type") == TRACK and not data.get("event"):
            raise ValidationError("a track event needs its name", field_name="event")


class CdpMailSchema(Schema):
    id = fields.UUID(required=True)
    email = fields.String(required=True)
    status = fields.String(required=True)
    campaign = fields.String(required=True)
    workflow_id = fields.UUID(required=True)


class CdpFailureSchema(Schema):
    workflow_id = fields.UUID(required=True)
    campaign = fields.String(required=True)
    errors = fields.Dict(required=True, metadata={"description": "why no mail was created"})


class CdpResultSchema(Schema):
    event_id = fields.UUID(required=True)
    message_id = fields.String(required=True)
    mails = fields.List(fields.Nested(CdpMailSchema), required=True)
    failed = fields.List(fields.Nested(CdpFailureSchema), required=True)
    accepted = fields.Integer(required=True)
    ignored = fields.String(metadata={"description": "why the event triggered nothing, if so"})


class CdpEventListArgsSchema(Schema):
    class Meta:
        unknown = RAISE

    message_id = fields.String(validate=validate.Length(min=1, max=200))
    limit = fields.Integer(load_default=50, validate=validate.Range(min=1, max=100))


class CdpEventRecordSchema(Schema):
    id = fields.UUID(required=True)
    message_id = fields.String(required=True)
    event = fields.String(allow_none=True)
    payload = fields.Dict(required=True, metadata={"description": "the event as received"})
    mail_ids = fields.List(fields.UUID(), required=True)
    response = fields.Dict(required=True, metadata={"description": "what the CDP was answered"})
    received_at = fields.DateTime(required=True)


class CdpEventListSchema(Schema):
    events = fields.List(fields.Nested(CdpEventRecordSchema), required=True)
