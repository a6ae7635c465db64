"""GET /v1/workflows: the tenant's workflows, oldest first."""

from __future__ import annotations

from typing import Any

from flask import current_app
from flask.views import MethodView
from flask_smorest import Blueprint

from ingest_api.auth import require_scope
from ingest_api.schemas.workflow import WorkflowListSchema
from shared.queries import QUERIES

blp = Blueprint("list_workflows", __name__, url_prefix="/v1", description="List workflows")


@blp.route("/workflows")
class ListWorkflows(MethodView):
    @blp.response(200, WorkflowListSchema)
    def get(self) -> dict[str, Any]:
        """All workflows of this tenant, oldest first."""
        tenant = require_scope("read")
        with current_app.extensions["mailroom.pool"].connection() as conn:
            rows = conn.execute(
                QUERIES["list_workflows_for_tenant"], {"tenant_id": tenant.id}
            ).fetchall()
        return {"workflows": rows}
