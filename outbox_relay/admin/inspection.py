"""What an operator looks at and holds: the pipeline's status, and pauses.

Pauses: an operator holds a stream, a tenant, or both in the outbox. They live in the
database (relay_pauses) and the claim query skips matching rows, so every relay honours
a pause on its next poll and a restarted relay cannot forget one. Paused mails keep
their outbox rows; nothing is dropped. (Listing and showing mails are single store
reads: ``shared.store.outbox.list_mails`` and ``mail_detail``.)
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from shared.pipeline_health import pipeline_health
from shared.store import Conn
from shared.store import outbox as outbox_store

# ----- pauses -----


@dataclass(frozen=True)
class PauseScope:
    """A stream, a tenant or both; None means any."""

    stream: str | None
    tenant_id: uuid.UUID | None
    tenant_name: str | None = None

    def describe(self) -> str:
        stream = f"stream {self.stream}" if self.stream else "every stream"
        tenant = f"tenant {self.tenant_name}" if self.tenant_name else "every tenant"
        return f"{stream}, {tenant}"

    def audit_arguments(self) -> dict[str, Any]:
        return {"stream": self.stream, "tenant": self.tenant_name}


def pause(conn: Conn, scope: PauseScope, actor: str, reason: str | None) -> bool:
    """True when this call paused the scope, False when it was paused already."""
    with conn.transaction():
        paused = outbox_store.insert_relay_pause(conn, scope.stream, scope.tenant_id, actor, reason)
        if paused:
            arguments = {**scope.audit_arguments(), "reason": reason}
            outbox_store.record_admin_action(conn, "pause", actor, arguments, {"paused": True})
    return paused


def resume(conn: Conn, scope: PauseScope, actor: str) -> dict[str, Any] | None:
    """The lifted pause (who paused, why, since when), or None when the scope was not paused."""
    with conn.transaction():
        lifted = outbox_store.delete_relay_pause(conn, scope.stream, scope.tenant_id)
        if lifted is not None:
            arguments = scope.audit_arguments()
            outbox_store.record_admin_action(conn, "resume", actor, arguments, lifted)
    return lifted


# ----- status -----

HEALTHY, DEGRADED, BROKEN = 0, 1, 2
VERDICTS = ("healthy", "degraded", "broken")


def _scope_rows(conn: Conn) -> list[dict[str, Any]]:
    rows = outbox_store.status_by_tenant_and_stream(conn)
    return [
        {
            "tenant": row["tenant"],
            "stream": row["stream"],
            "mails": row["by_status"],
            "retrying": row["by_status"].get("retrying", 0),
            "failing": row["failing"],
            "dead": row["by_status"].get("dead", 0),
            "paused": row["paused"],
            "outbox": {
                "rows": row["outbox_rows"],
                "due": row["due"],
                "in_flight": row["in_flight"],
                "oldest_undispatched_seconds": round(row["oldest_undispatched"], 1),
                "oldest_in_flight_seconds": round(row["oldest_in_flight"], 1),
            },
        }
        for row in rows
    ]


def _outbox_totals(conn: Conn) -> dict[str, Any]:
    stats = outbox_store.outbox_stats(conn)
    return {
        "rows": stats.total,
        "due": stats.due,
        "in_flight": stats.in_flight,
        "oldest_undispatched_seconds": round(stats.oldest_undispatched, 1),
        "oldest_in_flight_seconds": round(stats.oldest_in_flight, 1),
    }


def _mails_by_stream(scopes: list[dict[str, Any]]) -> dict[str, dict[str, int]]:
    totals: dict[str, dict[str, int]] = {}
    for scope in scopes:
        stream = totals.setdefault(scope["stream"], {})
        for status, count in scope["mails"].items():
            stream[status] = stream.get(status, 0) + count
    return totals


def gather(conn: Conn, threshold: float) -> dict[str, Any]:
    scopes = _scope_rows(conn)
    return {
        "mails": _mails_by_stream(scopes),
        "outbox": _outbox_totals(conn),
        "by_tenant": scopes,
        "pauses": outbox_store.list_relay_pauses(conn),
        "canary": {
            item.queue: {
                "state": item.state,
                "age_seconds": item.age_seconds,
                "detail": item.reason,
            }
            for item in pipeline_health(conn, threshold)
        },
    }


def verdict(report: dict[str, Any], threshold: float) -> tuple[int, list[str]]:
    """Broken when a canary is; degraded by anything an operator should look at."""
    states = {queue["state"] for queue in report["canary"].values()}
    if "broken" in states:
        broken = [
            queue for queue, canary in report["canary"].items() if canary["state"] == "broken"
        ]
        return BROKEN, [f"canary broken on {', '.join(broken)}"]
    reasons = []
    if "unknown" in states:
        reasons.append("no canary result yet")
    if report["outbox"]["oldest_undispatched_seconds"] > threshold:
        reasons.append(
            f"outbox rows undispatched for {report['outbox']['oldest_undispatched_seconds']} s"
        )
    failing = sum(scope["failing"] for scope in report["by_tenant"])
    if failing:
        reasons.append(
            f"{failing} mail(s) still unsent after 2 or more attempts:"
            " outbox-relay list --status retrying"
        )
    dead = sum(stream.get("dead", 0) for stream in report["mails"].values())
    if dead:
        reasons.append(f"{dead} dead mail(s): outbox-relay dlq list")
    if report["pauses"]:
        reasons.append(f"{len(report['pauses'])} pause(s) in place: outbox-relay resume")
    return (DEGRADED if reasons else HEALTHY), reasons
