"""The campaign resource: stored templates (``/v1/campaigns``), their trigger and preview."""

from __future__ import annotations

import re
from typing import Any

from marshmallow import RAISE, Schema, ValidationError, fields, validate, validates_schema

from ingest_api.render import syntax_errors
from ingest_api.schemas.fields import header_text_problem, reject_header_unsafe
from ingest_api.schemas.mail import MAX_SCHEDULE_AHEAD, MAX_TAGS, check_header_names

KEY_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")
MAX_TEMPLATE_CHARS = 256 * 1024  # text and html templates
MAX_LINE_TEMPLATE_CHARS = 2000  # from, subject, reply_to and header templates
MAX_HEADERS = 20
MAX_TRIGGER_RECIPIENTS = 500


def campaign_key(**kwargs: Any) -> fields.String:
    return fields.String(
        validate=validate.Regexp(
            KEY_PATTERN, error="1 to 100 letters, digits, '_', '.' or '-', starting alphanumeric"
        ),
        **kwargs,
    )


def _line_template(**kwargs: Any) -> fields.String:
    return fields.String(
        validate=[validate.Length(min=1, max=MAX_LINE_TEMPLATE_CHARS), reject_header_unsafe],
        metadata={"description": "a Liquid template"},
        **kwargs,
    )


def _body_template(description: str = "a Liquid template", **kwargs: Any) -> fields.String:
    return fields.String(
        validate=validate.Length(min=1, max=MAX_TEMPLATE_CHARS),
        metadata={"description": description},
        **kwargs,
    )


def _validate_header_names(headers: dict[str, str]) -> None:
    """The names are fixed (only values are templates): the rules of ``POST /v1/mails``
    (RFC 5322 names, X-* and a few list/thread headers, each once whatever its case)."""
    if len(headers) > MAX_HEADERS:
        raise ValidationError(f"at most {MAX_HEADERS} headers")
    check_header_names(list(headers))
    for name, value in headers.items():
        problem = header_text_problem(value)
        if problem is not None:
            raise ValidationError({name: [problem]})


class CampaignFieldsSchema(Schema):
    """A campaign's templates and defaults: the body of ``PUT /v1/campaigns/<key>``."""

    class Meta:
        unknown = RAISE

    sender = _line_template(data_key="from", attribute="from", required=True)
    subject = _line_template(required=True)
    text = _body_template(load_default=None)
    html = _body_template("a Liquid template, autoescaped", load_default=None)
    reply_to = _line_template(load_default=None)
    headers = fields.Dict(
        keys=fields.String(),
        values=fields.String(validate=validate.Length(max=MAX_LINE_TEMPLATE_CHARS)),
        load_default=dict,
        validate=_validate_header_names,
        metadata={"description": "header name to a Liquid template of its value"},
    )
    tags = fields.List(
        fields.String(validate=[validate.Length(min=1, max=64), reject_header_unsafe]),
        load_default=list,
        validate=validate.Length(max=MAX_TAGS),
        metadata={"description": "given to every mail of this campaign"},
    )

    @validates_schema
    def _templates(self, data: dict[str, Any], **_: Any) -> None:
        if not data.get("text") and not data.get("html"):
            raise ValidationError("give text, html or both", field_name="text")
        errors = syntax_errors(data)
        if errors:
            raise ValidationError(errors)


class NewCampaignSchema(CampaignFieldsSchema):
    """The body of ``POST /v1/campaigns``."""

    key = campaign_key(required=True)


class CampaignSchema(Schema):
    key = fields.String(required=True)
    sender = fields.String(data_key="from", required=True)  # shared.store.campaigns.Campaign
    subject = fields.String(required=True)
    text = fields.String(allow_none=True)
    html = fields.String(allow_none=True)
    reply_to = fields.String(allow_none=True)
    headers = fields.Dict(required=True)
    tags = fields.List(fields.String(), required=True)
    created_at = fields.DateTime(required=True)
    updated_at = fields.DateTime(required=True)


class CampaignListSchema(Schema):
    campaigns = fields.List(fields.Nested(CampaignSchema), required=True)


class RecipientSchema(Schema):
    class Meta:
        unknown = RAISE

    email = fields.String(required=True, validate=validate.Length(min=1, max=320))
    name = fields.String(load_default=None, validate=validate.Length(max=200))
    data = fields.Dict(
        keys=fields.String(),
        load_default=dict,
        metadata={"description": "template variables for this recipient; override `data`"},
    )


class TriggerSchema(Schema):
    """The body of ``POST /v1/campaigns/<key>/trigger``.

    ``send_at``, ``expires_at``, ``ttl_seconds``, ``tags`` and ``metadata``
    apply to every mail and follow the rules of ``POST /v1/mails``.
    """

    class Meta:
        unknown = RAISE

    recipients = fields.List(
        fields.Nested(RecipientSchema),
        required=True,
        validate=validate.Length(min=1, max=MAX_TRIGGER_RECIPIENTS),
        metadata={"description": f"1 to {MAX_TRIGGER_RECIPIENTS}; one mail each"},
    )
    data = fields.Dict(
        keys=fields.String(),
        load_default=dict,
        metadata={"description": "template variables for every recipient"},
    )
    send_at = fields.String(load_default=None, metadata={"description": "as in /v1/mails"})
    expires_at = fields.String(load_default=None, metadata={"description": "as in /v1/mails"})
    ttl_seconds = fields.Integer(
        load_default=None,
        validate=validate.Range(min=1, max=int(MAX_SCHEDULE_AHEAD.total_seconds())),
    )
    tags = fields.List(fields.String(), load_default=list)
    metadata = fields.Dict(keys=fields.String(), load_default=dict)


class TriggeredMailSchema(Schema):
    id = fields.UUID(required=True)
    email = fields.String(required=True)
    status = fields.String(required=True)


class TriggerResultSchema(Schema):
    campaign = fields.String(required=True)
    mails = fields.List(fields.Nested(TriggeredMailSchema), required=True)
    accepted = fields.Integer(required=True)


class PreviewSchema(Schema):
    """The body of ``POST /v1/campaigns/<key>/preview``: one recipient, nothing stored."""

    class Meta:
        unknown = RAISE

    recipient = fields.Nested(RecipientSchema, required=True)
    data = fields.Dict(keys=fields.String(), load_default=dict)


class PreviewResultSchema(Schema):
    sender = fields.String(data_key="from", attribute="from", required=True)
    to = fields.String(required=True)
    subject = fields.String(required=True)
    text = fields.String(allow_none=True)
    html = fields.String(allow_none=True)
    reply_to = fields.String(allow_none=True)
    headers = fields.Dict(required=True)
