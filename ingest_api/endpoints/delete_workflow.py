"""DELETE /v1/workflows/<id>: stop a rule; events already received are kept."""

from __future__ import annotations

import uuid

from flask import current_app
from flask.views import MethodView
from flask_smorest import Blueprint

from ingest_api.auth import require_scope
from ingest_api.errors import refuse
from shared.queries import QUERIES

blp = Blueprint("delete_workflow", __name__, url_prefix="/v1", description="Delete a workflow")


@blp.route("/workflows/<workflow_id>")
class DeleteWorkflow(MethodView):
    @blp.response(204)
    def delete(self, workflow_id: str) -> None:
        """Delete a workflow of this tenant; any other id is a 404."""
        tenant = require_scope("send")
        try:
            wanted = uuid.UUID(workflow_id)
        except ValueError:
            refuse(404, "no such workflow")
        with current_app.extensions["mailroom.pool"].connection() as conn:
            deleted = conn.execute(
                QUERIES["delete_workflow"], {"id": wanted, "tenant_id": tenant.id}
            ).fetchone()
        if deleted is None:
            refuse(404, "no such workflow")
