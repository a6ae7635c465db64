-- Queries of the relay admin CLI (outbox-relay status, list, show, pause, resume, ...).
-- "-- name: <name>" followed by one line describing it; shared.queries loads them.

-- name: find_tenant_by_name_or_id
-- A tenant as an operator names it on the command line.
SELECT id, name FROM tenants WHERE name = %(tenant)s OR id::text = %(tenant)s;

-- name: record_admin_action
-- The audit trail of admin commands: who, what, with which arguments, and the result.
INSERT INTO admin_actions (action, actor, arguments, result)
VALUES (%(action)s, %(actor)s, %(arguments)s, %(result)s);
