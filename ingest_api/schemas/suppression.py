"""The suppression resource: addresses of a tenant that no mail is sent to."""

from __future__ import annotations

from typing import Any

from marshmallow import RAISE, Schema, ValidationError, fields, pre_load, validate

from ingest_api.schemas.fields import Mailbox, unstorable

REASONS = ("hard_bounce", "unsubscribe", "manual")
MAX_EMAIL_LENGTH = 254


class SuppressionSchema(Schema):
    email = fields.String(required=True, metadata={"description": "lower-cased"})
    reason = fields.String(required=True, metadata={"enum": list(REASONS)})
    detail = fields.Dict(
        required=True,
        metadata={"description": "the SMTP reply of a hard bounce, the note of a manual entry"},
    )
    mail_id = fields.UUID(
        allow_none=True,
        required=True,
        metadata={"description": "the mail that bounced or whose link was used"},
    )
    created_at = fields.DateTime(required=True)


class SuppressionListArgsSchema(Schema):
    class Meta:
        unknown = RAISE

    reason = fields.String(validate=validate.OneOf(REASONS))
    limit = fields.Integer(load_default=50, validate=validate.Range(min=1, max=500))
    # next_cursor as returned (base64url); anything else is a 400 naming `cursor`.
    cursor = fields.String(
        validate=validate.Length(max=400), metadata={"pattern": "^[A-Za-z0-9_-]*$"}
    )


class SuppressionPageSchema(Schema):
    suppressions = fields.List(fields.Nested(SuppressionSchema), required=True)
    next_cursor = fields.String(allow_none=True, required=True)


class NewSuppressionSchema(Schema):
    class Meta:
        unknown = RAISE

    email = Mailbox(required=True, metadata={"description": "the address to suppress"})
    note = fields.String(load_default=None, validate=validate.Length(max=500))

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
