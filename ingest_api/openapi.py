"""The OpenAPI document, generated from the marshmallow schemas by flask-smorest,
with our error format, bearer authentication and a docs page."""

from __future__ import annotations

from http import HTTPStatus
from typing import Any

from apispec import BasePlugin
from flask import Flask, Response, send_from_directory
from flask_smorest import Api, Blueprint
from marshmallow import Schema, fields
from swagger_ui_bundle import swagger_ui_path  # type: ignore[import-untyped]

from ingest_api import strict_json

PROBLEM_JSON = "application/problem+json"

SETTINGS: dict[str, Any] = {
    "API_TITLE": "mailroom",
    "API_VERSION": "v1",
    "OPENAPI_VERSION": "3.0.3",
    "OPENAPI_URL_PREFIX": "/",
    "OPENAPI_JSON_PATH": "openapi.json",
    "OPENAPI_SWAGGER_UI_PATH": "docs",
    # Swagger UI's scripts and styles are served from the installed swagger-ui-bundle
    # package (the files of the version installed with us), not an unpinned CDN
    # URL without integrity hash: /docs works offline and cannot change under us.
    "OPENAPI_SWAGGER_UI_URL": "/docs/assets/",
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


# For an endpoint's own error statuses: ``@blp.alt_response(409, description=..., **PROBLEM)``.
PROBLEM: dict[str, Any] = {"schema": ProblemSchema, "content_type": PROBLEM_JSON}


class ErrorResponsesPlugin(BasePlugin):
    """Documents the errors every /v1 operation can answer, from what it declares,
    instead of one ``alt_response`` per status in each endpoint module.

    Responses are named by flask-smorest's per-status components (``NOT_FOUND``, ...),
    all application/problem+json; apispec turns the names into references. An
    endpoint adds what only it answers (a 409) with ``@blp.alt_response``.
    """

    # Any /v1 request: NUL in the path, query or headers, a body that is not JSON
    # or an invalid cursor (400); gunicorn refuses a request line over 4094 bytes
    # (414) or too many or too large headers (431), as problem+json too
    # (gunicorn_conf.py); the database cannot be reached (503).
    EVERY_OPERATION = (400, 414, 431, 503)
    # An API key: missing or unknown (401), without the scope (403), over its rate (429).
    API_KEY = (401, 403, 429)
    # Signed instead of an API key (security: []): a missing or wrong signature.
    SIGNED = (401,)
    # A JSON body: over the size limit (413), fields refused (422).
    BODY = (413, 422)
    # Query parameters refused, by name.
    QUERY = (422,)
    # A path naming a resource the tenant does not have.
    PATH_RESOURCE = (404,)

    def __init__(self) -> None:
        self._global_security: list[dict[str, Any]] = []

    def init_spec(self, spec: Any) -> None:
        super().init_spec(spec)
        self._global_security = spec.options.get("security", [])

    def operation_helper(
        self, path: str | None = None, operations: dict[str, Any] | None = None, **_: Any
    ) -> None:
        if path is None or not path.startswith("/v1/") or not operations:
            return
        for operation in operations.values():
            statuses = set(self.EVERY_OPERATION)
            security = operation.get("security", self._global_security)
            statuses.update(self.API_KEY if security else self.SIGNED)
            if "requestBody" in operation:
                statuses.update(self.BODY)
            if any(parameter.get("in") == "query" for parameter in operation.get("parameters", [])):
                statuses.update(self.QUERY)
            if "{" in path:
                statuses.update(self.PATH_RESOURCE)
            responses = operation.setdefault("responses", {})
            for status in sorted(statuses):
                if str(status) not in responses and status not in responses:
                    responses[str(status)] = HTTPStatus(status).name


class MailroomApi(Api):  # type: ignore[misc]  # flask-smorest is untyped
    ERROR_SCHEMA = ProblemSchema
    DEFAULT_RESPONSE_CONTENT_TYPE = "application/json"
    # No catch-all "default" response: every status an operation answers is
    # listed (ErrorResponsesPlugin, alt_response), so an undocumented one is a bug.
    DEFAULT_ERROR_RESPONSE_NAME = None

    def _register_responses(self) -> None:
        """flask-smorest's error responses, documented as application/problem+json."""
        default_content_type: str = self.DEFAULT_RESPONSE_CONTENT_TYPE
        self.DEFAULT_RESPONSE_CONTENT_TYPE = PROBLEM_JSON
        try:
            super()._register_responses()
        finally:
            self.DEFAULT_RESPONSE_CONTENT_TYPE = default_content_type


def swagger_ui_asset(filename: str) -> Response:
    """A file of the swagger-ui-dist copy that swagger-ui-bundle installs."""
    return send_from_directory(swagger_ui_path, filename)


def create_api(app: Flask) -> MailroomApi:
    api = MailroomApi(app, spec_kwargs={"extra_plugins": [ErrorResponsesPlugin()]})
    # webargs loads query strings with unknown=EXCLUDE whatever the schema says, so
    # a misspelt parameter (?statuss=sent) was silently ignored although the schemas
    # say RAISE: let each schema's Meta.unknown decide (422 naming the parameter).
    Blueprint.ARGUMENTS_PARSER.unknown = None
    # The same shared parser loads every JSON body through strict_json.
    strict_json.install(Blueprint.ARGUMENTS_PARSER)
    api.spec.components.security_scheme("bearerAuth", {"type": "http", "scheme": "bearer"})
    app.add_url_rule(
        SETTINGS["OPENAPI_SWAGGER_UI_URL"] + "<path:filename>",
        "swagger_ui_asset",
        swagger_ui_asset,
        methods=["GET"],
    )
    return api
