"""POST /v1/workflows: a rule that makes a CDP track event trigger a campaign."""

from __future__ import annotations

import uuid
from typing import Any

from flask import current_app
from flask.views import MethodView
from flask_smorest import Blueprint
from psycopg.types.json import Jsonb

from ingest_api.auth import require_scope
from ingest_api.errors import refuse
from ingest_api.schemas.workflow import NewWorkflowSchema, WorkflowSchema
from shared.queries import QUERIES

blp = Blueprint("create_workflow", __name__, url_prefix="/v1", description="Create a workflow")


@blp.route("/workflows")
class CreateWorkflow(MethodView):
    @blp.arguments(NewWorkflowSchema())
    @blp.response(201, WorkflowSchema)
    def post(self, data: dict[str, Any]) -> dict[str, Any]:
        """Trigger ``campaign`` for every track event named ``event`` whose top-level
        ``properties`` equal all ``property_filters``; the campaign must exist (else 422)."""
        tenant = require_scope("send")
        with current_app.extensions["mailroom.pool"].connection() as conn:
            row = conn.execute(
                QUERIES["insert_workflow"],
                {
                    "id": uuid.uuid4(),
                    "tenant_id": tenant.id,
                    "event": data["event"],
                    "property_filters": Jsonb(data["property_filters"]),
                    "campaign": data["campaign"],
                },
            ).fetchone()
        if row is None:
            refuse(
                422,
                "the campaign does not exist",
                errors={"campaign": [f"no campaign with key {data['campaign']!r}"]},
            )
        created: dict[str, Any] = row
        return created
