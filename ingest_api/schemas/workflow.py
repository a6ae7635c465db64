"""The workflow resource (``/v1/workflows``): which CDP events trigger which campaign."""

from __future__ import annotations

from typing import Any

from marshmallow import RAISE, Schema, ValidationError, fields, validate

from ingest_api.schemas.campaign import campaign_key

MAX_PROPERTY_FILTERS = 20


def _validate_filters(filters: dict[str, Any]) -> None:
    if len(filters) > MAX_PROPERTY_FILTERS:
        raise ValidationError(f"at most {MAX_PROPERTY_FILTERS} filters")
    for name, value in filters.items():
        if not (value is None or isinstance(value, str | int | float | bool)):
            raise ValidationError({name: ["a string, number, boolean or null to compare with"]})


class NewWorkflowSchema(Schema):
    """The body of ``POST /v1/workflows``."""

    class Meta:
        unknown = RAISE

    event = fields.String(
        required=True,
        validate=validate.Length(min=1, max=200),
        metadata={"description": "the track event's name (`event`), exactly"},
    )
    property_filters = fields.Dict(
        keys=fields.String(validate=validate.Length(min=1, max=200)),
        values=fields.Raw(allow_none=True),
        load_default=dict,
        validate=_validate_filters,
        metadata={"description": "top-level `properties` keys that must equal these values"},
    )
    campaign = campaign_key(required=True, metadata={"description": "an existing campaign's key"})


class WorkflowSchema(Schema):
    id = fields.UUID(required=True)
    event = fields.String(required=True)
    property_filters = fields.Dict(required=True)
    campaign = fields.String(required=True)
    created_at = fields.DateTime(required=True)


class WorkflowListSchema(Schema):
    workflows = fields.List(fields.Nested(WorkflowSchema), required=True)
