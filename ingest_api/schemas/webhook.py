"""The webhook resource (``/v1/webhooks``): where a tenant hears about its mails' outcomes."""

from __future__ import annotations

from urllib.parse import urlsplit

from marshmallow import RAISE, Schema, ValidationError, fields, validate

# The mail events a webhook may subscribe to (the trigger in migration 0007 fires on these).
WEBHOOK_EVENTS = ("sent", "failed", "dead", "expired", "suppressed", "unsubscribed")
MAX_URL_LENGTH = 2000


def _validate_url(value: str) -> None:
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError:
        raise ValidationError("not a valid URL") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValidationError("an http:// or https:// URL with a host")
    if parts.fragment or any(c.isspace() or ord(c) < 0x20 for c in value):
        raise ValidationError("no fragment, spaces or control characters")


class NewWebhookSchema(Schema):
    """The body of ``POST /v1/webhooks``."""

    class Meta:
        unknown = RAISE

    url = fields.String(
        required=True,
        validate=[validate.Length(max=MAX_URL_LENGTH), _validate_url],
        metadata={"description": "where events are POSTed: http:// or https://"},
    )
    events = fields.List(
        fields.String(validate=validate.OneOf(WEBHOOK_EVENTS)),
        required=True,
        validate=validate.Length(min=1, max=len(WEBHOOK_EVENTS)),
        metadata={"description": f"one or more of {', '.join(WEBHOOK_EVENTS)}"},
    )


class WebhookSchema(Schema):
    id = fields.UUID(required=True)
    url = fields.String(required=True)
    events = fields.List(fields.String(), required=True)
    created_at = fields.DateTime(required=True)


class CreatedWebhookSchema(WebhookSchema):
    secret = fields.String(
        required=True,
        metadata={
            "description": "the key that signs every delivery (X-Mailroom-Signature);"
            " shown only in this answer"
        },
    )


class WebhookListSchema(Schema):
    webhooks = fields.List(fields.Nested(WebhookSchema), required=True)
