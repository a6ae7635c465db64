"""The webhook resource (``/v1/webhooks``): where a tenant hears about its mails' outcomes."""

from __future__ import annotations

from typing import Any

from marshmallow import RAISE, Schema, ValidationError, fields, validate

from shared.webhook_urls import normalise

# The mail events a webhook may subscribe to (the trigger in migration 0007 fires on these).
WEBHOOK_EVENTS = ("sent", "failed", "dead", "expired", "suppressed", "unsubscribed")
MAX_URL_LENGTH = 2000


class WebhookUrl(fields.String):
    """An http(s) URL in the one form the worker calls (``shared.webhook_urls.normalise``):
    what cannot be normalised is refused here rather than retried for a day there."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> str:
        text = super()._deserialize(value, attr, data, **kwargs)
        try:
            return normalise(text)
        except ValueError as exc:
            raise ValidationError(str(exc)) from None


class NewWebhookSchema(Schema):
    """The body of ``POST /v1/webhooks``."""

    class Meta:
        unknown = RAISE

    url = WebhookUrl(
        required=True,
        validate=validate.Length(max=MAX_URL_LENGTH),  # of the normalised form, as stored
        metadata={
            "description": "where events are POSTed: http:// or https://, no user:password@;"
            " stored normalised; its host must not be or resolve to a loopback, private,"
            " link-local or otherwise non-public address"
        },
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
