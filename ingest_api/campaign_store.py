"""Reading and writing a tenant's campaigns (rows use the API's field names)."""

from __future__ import annotations

import uuid
from typing import Any

from flask import current_app
from psycopg.types.json import Jsonb

from ingest_api.errors import refuse
from shared.queries import QUERIES


def campaign_params(tenant_id: uuid.UUID, key: str, data: dict[str, Any]) -> dict[str, Any]:
    """Parameters of insert_campaign / update_campaign from a loaded campaign body."""
    return {
        "tenant_id": tenant_id,
        "key": key,
        "from": data["from"],
        "subject": data["subject"],
        "text": data["text"],
        "html": data["html"],
        "reply_to": data["reply_to"],
        "headers": Jsonb(data["headers"]),
        "tags": list(data["tags"]),
    }


def campaign_or_404(tenant_id: uuid.UUID, key: str) -> dict[str, Any]:
    """The tenant's campaign *key*; any other tenant's campaign is a 404 too."""
    with current_app.extensions["mailroom.pool"].connection() as conn:
        row = conn.execute(
            QUERIES["get_campaign_for_tenant"], {"tenant_id": tenant_id, "key": key}
        ).fetchone()
    if row is None:
        refuse(404, f"no campaign with key {key!r}")
    found: dict[str, Any] = row
    return found
