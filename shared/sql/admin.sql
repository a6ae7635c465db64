-- Queries of the relay admin CLI (outbox-relay status, list, show, pause, resume, ...).
-- "-- name: <name>" followed by one line describing it; shared.queries loads them.

-- name: find_tenant_by_name_or_id
-- A tenant as an operator names it on the command line.
SELECT id, name FROM tenants WHERE name = %(tenant)s OR id::text = %(tenant)s;

-- name: record_admin_action
-- The audit trail of admin commands: who, what, with which arguments, and the result.
INSERT INTO admin_actions (action, actor, arguments, result)
VALUES (%(action)s, %(actor)s, %(arguments)s, %(result)s);

-- name: admin_list_mails
-- Mails of every tenant matching an operator's filter, newest first.
SELECT m.id, t.name AS tenant, m.stream, m.status, m.attempts,
       m.request->>'subject' AS subject, m.created_at, m.updated_at, m.expires_at,
       m.tags, m.last_error
FROM mails m JOIN tenants t ON t.id = m.tenant_id
WHERE (%(statuses)s::text[] IS NULL OR m.status = ANY(%(statuses)s::text[]))
  AND (%(tenant_id)s::uuid IS NULL OR m.tenant_id = %(tenant_id)s::uuid)
  AND (%(stream)s::text IS NULL OR m.stream = %(stream)s::text)
  AND (%(since)s::timestamptz IS NULL OR m.created_at >= %(since)s::timestamptz)
  AND (%(until)s::timestamptz IS NULL OR m.created_at < %(until)s::timestamptz)
  AND (%(tag)s::text IS NULL OR m.tags @> ARRAY[%(tag)s::text])
ORDER BY m.created_at DESC, m.id DESC
LIMIT %(limit)s;

-- name: admin_get_mail
-- One mail with its tenant and outbox row (if it still has one), for 'outbox-relay show'.
SELECT m.id, t.name AS tenant, m.tenant_id, m.stream, m.source, m.status, m.attempts,
       m.last_error, m.send_at, m.expires_at, m.tags, m.metadata, m.campaign_key,
       m.created_at, m.updated_at,
       m.request->>'subject' AS subject,
       m.request->'from' AS sender,
       m.request->'to' AS recipients,
       o.queue AS outbox_queue, o.available_at AS outbox_available_at,
       o.dispatch_count AS outbox_dispatch_count
FROM mails m JOIN tenants t ON t.id = m.tenant_id
LEFT JOIN outbox o ON o.mail_id = m.id
WHERE m.id = %(mail_id)s;

-- ===== pause and resume =====

-- name: insert_relay_pause
-- Hold a stream, a tenant or both in the outbox; nothing when that scope is already paused.
INSERT INTO relay_pauses (stream, tenant_id, actor, reason)
VALUES (%(stream)s, %(tenant_id)s, %(actor)s, %(reason)s)
ON CONFLICT DO NOTHING
RETURNING id;

-- name: delete_relay_pause
-- Lift the pause of exactly this scope (NULL = any), returning what it was.
DELETE FROM relay_pauses
WHERE stream IS NOT DISTINCT FROM %(stream)s::text
  AND tenant_id IS NOT DISTINCT FROM %(tenant_id)s::uuid
RETURNING actor, reason, created_at;

-- name: list_relay_pauses
-- Every pause with the outbox rows it is holding back.
SELECT p.stream, t.name AS tenant, p.actor, p.reason, p.created_at,
       (SELECT count(*) FROM outbox o JOIN mails m ON m.id = o.mail_id
        WHERE (p.stream IS NULL OR m.stream = p.stream)
          AND (p.tenant_id IS NULL OR m.tenant_id = p.tenant_id)) AS held
FROM relay_pauses p LEFT JOIN tenants t ON t.id = p.tenant_id
ORDER BY p.created_at, p.id;

-- ===== status =====

-- name: status_by_tenant_and_stream
-- Per tenant and stream: mails by status, the outbox backlog and its ages, whether paused,
-- and how many mails the pipeline still owns after a failed attempt (they keep failing).
WITH counts AS (
    SELECT tenant_id, stream, jsonb_object_agg(status, mails) AS by_status,
           sum(failing)::bigint AS failing
    FROM (SELECT tenant_id, stream, status, count(*) AS mails,
                 count(*) FILTER (WHERE attempts >= 2 AND status IN
                                  ('accepted', 'queued', 'sending', 'retrying')) AS failing
          FROM mails GROUP BY tenant_id, stream, status) AS c
    GROUP BY tenant_id, stream
), backlog AS (
    SELECT m.tenant_id, m.stream,
           count(*) AS outbox_rows,
           count(*) FILTER (WHERE o.available_at <= now()) AS due,
           count(*) FILTER (WHERE o.dispatch_count > 0) AS in_flight,
           EXTRACT(EPOCH FROM now() - min(o.available_at)
                   FILTER (WHERE o.dispatch_count = 0 AND o.available_at <= now()))
               AS oldest_undispatched,
           EXTRACT(EPOCH FROM now() - min(o.created_at) FILTER (WHERE o.dispatch_count > 0))
               AS oldest_in_flight
    FROM outbox o JOIN mails m ON m.id = o.mail_id
    GROUP BY m.tenant_id, m.stream
)
SELECT t.name AS tenant, c.stream, c.by_status, c.failing,
       COALESCE(b.outbox_rows, 0) AS outbox_rows, COALESCE(b.due, 0) AS due,
       COALESCE(b.in_flight, 0) AS in_flight,
       COALESCE(b.oldest_undispatched, 0)::float8 AS oldest_undispatched,
       COALESCE(b.oldest_in_flight, 0)::float8 AS oldest_in_flight,
       EXISTS (SELECT 1 FROM relay_pauses p
               WHERE (p.stream IS NULL OR p.stream = c.stream)
                 AND (p.tenant_id IS NULL OR p.tenant_id = c.tenant_id)) AS paused
FROM counts c JOIN tenants t ON t.id = c.tenant_id
LEFT JOIN backlog b ON b.tenant_id = c.tenant_id AND b.stream = c.stream
ORDER BY t.name, c.stream;

-- name: count_relay_pauses
-- For the relay's metrics and logs: how many pauses are in place.
SELECT count(*) FROM relay_pauses;
