"""/v1/workflows: rules that make a CDP track event trigger a campaign."""

from __future__ import annotations

import uuid
from typing import Any

from flask.views import MethodView
from flask_smorest import Blueprint

from ingest_api import db
from ingest_api.auth import require_scope
from ingest_api.errors import refuse
from ingest_api.schemas.workflow import NewWorkflowSchema, WorkflowListSchema, WorkflowSchema
from shared.store import NotFound
from shared.store import campaigns as store
from shared.store.campaigns import NoSuchCampaign, Workflow

blp = Blueprint("workflows", __name__, url_prefix="/v1", description="CDP workflows")


@blp.route("/workflows")
class Workflows(MethodView):
    @blp.arguments(NewWorkflowSchema())
    @blp.response(201, WorkflowSchema)
    def post(self, data: dict[str, Any]) -> Workflow:
        """Trigger ``campaign`` for every track event named ``event`` whose top-level
        ``properties`` equal all ``property_filters``; the campaign must exist (else 422)."""
        tenant = require_scope("send")
        with db.connection() as conn:
            try:
                return store.create_workflow(
                    conn,
                    tenant.id,
                    event=data["event"],
                    property_filters=data["property_filters"],
                    campaign=data["campaign"],
                )
            except NoSuchCampaign:
                refuse(
                    422,
                    "the campaign does not exist",
                    errors={"campaign": [f"no campaign with key {data['campaign']!r}"]},
                )

    @blp.response(200, WorkflowListSchema)
    def get(self) -> dict[str, Any]:
        """All workflows of this tenant, oldest first."""
        tenant = require_scope("read")
        with db.connection() as conn:
            return {"workflows": store.list_workflows(conn, tenant.id)}


@blp.route("/workflows/<workflow_id>")
class WorkflowById(MethodView):
    @blp.response(204)
    def delete(self, workflow_id: str) -> None:
        """Delete a workflow of this tenant; any other id is a 404."""
        tenant = require_scope("send")
        try:
            wanted = uuid.UUID(workflow_id)
        except ValueError:
            refuse(404, "no such workflow")
        with db.connection() as conn:
            try:
                store.delete_workflow(conn, tenant.id, wanted)
            except NotFound:
                refuse(404, "no such workflow")
