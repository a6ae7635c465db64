"""The OpenAPI document, generated from the marshmallow schemas by flask-smorest,
with our error format, bearer authentication and a docs page."""

from __future__ import annotations

from typing import Any

from flask_smorest import Api
from marshmallow import Schema, fields

PROBLEM_JSON = "application/problem+json"

SETTINGS: dict[str, Any] = {
    "API_TITLE": "mailroom",
    "API_VERSION": "v1",
    "OPENAPI_VERSION": "3.0.3",
    "OPENAPI_URL_PREFIX": "/",
    "OPENAPI_JSON_PATH": "openapi.json",
    "OPENAPI_SWAGGER_UI_PATH": "docs",
    "OPENAPI_SWAGGER_UI_URL": "https://cdn.jsdelivr.net/npm/swagger-ui-dist/",
    "API_SPEC_OPTIONS": {
        "security": [{"bearerAuth": []}],
        "info": {
            "description": (
                "A 202 means the request is committed to the database with everything "
                "needed to send it. Errors are application/problem+json."
            )
        },
    },
}


class ProblemSchema(Schema):
    """Every error: client errors name the field in ``errors``."""

    type = fields.String(required=True)
    title = fields.String(required=True)
    status = fields.Integer(required=True)
    detail = fields.String(required=True)
    errors = fields.Dict(metadata={"description": "messages by field"})
    request_id = fields.String()


class MailroomApi(Api):  # type: ignore[misc]  # flask-smorest is untyped
    ERROR_SCHEMA = ProblemSchema
    DEFAULT_RESPONSE_CONTENT_TYPE = "application/json"

    def _register_responses(self) -> None:
        """flask-smorest's error responses, documented as application/problem+json."""
        default_content_type: str = self.DEFAULT_RESPONSE_CONTENT_TYPE
        self.DEFAULT_RESPONSE_CONTENT_TYPE = PROBLEM_JSON
        try:
            super()._register_responses()
        finally:
            self.DEFAULT_RESPONSE_CONTENT_TYPE = default_content_type


def create_api(app: Any) -> MailroomApi:
    api = MailroomApi(app)
    api.spec.components.security_scheme("bearerAuth", {"type": "http", "scheme": "bearer"})
    return api
