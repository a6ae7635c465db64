-- Retention ('outbox-relay purge') and reconciliation ('outbox-relay report').
-- "-- name: <name>" followed by one line describing it; shared.queries loads them.
--
-- A mail is purgeable when it is final (%(final_statuses)s, from shared.states), became
-- final before the cutoff, has no outbox row and no webhook delivery still pending.
-- The redundant "created_at < cutoff" (a mail is created before it becomes final) lets
-- the planner use mails_status_created_idx instead of scanning every mail.

-- name: retention_cutoff
-- The cutoff by the database's clock, the one updated_at and created_at were written with.
SELECT now() - %(older_than)s::interval AS cutoff;

-- name: enable_purge_in_transaction
-- Lets this transaction (only) delete from the append-only mail_events.
SET LOCAL mailroom.purge = 'on';

-- name: count_purgeable_mails_by_status
-- What a purge would delete, by status: the dry run and the confirmation prompt.
SELECT m.status, count(*) AS mails
FROM mails m
WHERE m.status = ANY(%(final_statuses)s::text[])
  AND m.created_at < %(cutoff)s AND m.updated_at < %(cutoff)s
  AND NOT EXISTS (SELECT 1 FROM outbox o WHERE o.mail_id = m.id)
  AND NOT EXISTS (SELECT 1 FROM webhook_deliveries w
                  WHERE w.mail_id = m.id AND w.status = 'pending')
GROUP BY m.status;

-- name: count_purgeable_rows
-- The rest a purge would delete: events, webhook deliveries, idempotency keys, CDP events.
WITH doomed AS (
    SELECT m.id
    FROM mails m
    WHERE m.status = ANY(%(final_statuses)s::text[])
      AND m.created_at < %(cutoff)s AND m.updated_at < %(cutoff)s
      AND NOT EXISTS (SELECT 1 FROM outbox o WHERE o.mail_id = m.id)
      AND NOT EXISTS (SELECT 1 FROM webhook_deliveries w
                      WHERE w.mail_id = m.id AND w.status = 'pending')
)
SELECT (SELECT count(*) FROM mail_events e JOIN doomed d ON d.id = e.mail_id) AS events,
       (SELECT count(*) FROM webhook_deliveries w JOIN doomed d ON d.id = w.mail_id)
           AS webhook_deliveries,
       (SELECT count(*) FROM idempotency_keys WHERE created_at < %(cutoff)s) AS idempotency_keys,
       (SELECT count(*) FROM cdp_events WHERE received_at < %(cutoff)s) AS cdp_events;

-- name: lock_purgeable_mails
-- A batch of purgeable mails, locked; rows the pipeline holds are skipped, never waited for.
SELECT m.id
FROM mails m
WHERE m.status = ANY(%(final_statuses)s::text[])
  AND m.created_at < %(cutoff)s AND m.updated_at < %(cutoff)s
  AND NOT EXISTS (SELECT 1 FROM outbox o WHERE o.mail_id = m.id)
  AND NOT EXISTS (SELECT 1 FROM webhook_deliveries w
                  WHERE w.mail_id = m.id AND w.status = 'pending')
LIMIT %(batch_size)s
FOR UPDATE OF m SKIP LOCKED;

-- name: confirm_purgeable_mails
-- The locked batch re-checked in a fresh snapshot, now that nothing can reference it anew.
SELECT m.id
FROM mails m
WHERE m.id = ANY(%(ids)s::uuid[])
  AND NOT EXISTS (SELECT 1 FROM outbox o WHERE o.mail_id = m.id)
  AND NOT EXISTS (SELECT 1 FROM webhook_deliveries w
                  WHERE w.mail_id = m.id AND w.status = 'pending');

-- name: purge_webhook_deliveries
-- The webhook deliveries of a purged batch (they reference the mails).
DELETE FROM webhook_deliveries WHERE mail_id = ANY(%(ids)s::uuid[]);

-- name: purge_mail_events
-- The history of a purged batch; the trigger allows it only under enable_purge_in_transaction.
DELETE FROM mail_events WHERE mail_id = ANY(%(ids)s::uuid[]);

-- name: purge_mails
-- The mails of a purged batch, counted by status.
WITH gone AS (
    DELETE FROM mails WHERE id = ANY(%(ids)s::uuid[]) RETURNING status
)
SELECT status, count(*) AS mails FROM gone GROUP BY status;

-- name: purge_idempotency_keys
-- A batch of idempotency keys older than the cutoff; a key an ingest transaction holds is skipped.
DELETE FROM idempotency_keys k
USING (SELECT tenant_id, key FROM idempotency_keys
       WHERE created_at < %(cutoff)s
       LIMIT %(batch_size)s
       FOR UPDATE SKIP LOCKED) doomed
WHERE k.tenant_id = doomed.tenant_id AND k.key = doomed.key;

-- name: purge_cdp_events
-- A batch of CDP events received before the cutoff (they name their mails by value only).
DELETE FROM cdp_events
WHERE id IN (SELECT id FROM cdp_events
             WHERE received_at < %(cutoff)s
             LIMIT %(batch_size)s
             FOR UPDATE SKIP LOCKED);

-- name: report_counts_by_tenant_and_status
-- Mails accepted in a window, by tenant and current status.
SELECT t.name AS tenant, m.status, count(*) AS mails
FROM mails m JOIN tenants t ON t.id = m.tenant_id
WHERE m.created_at >= %(since)s AND m.created_at < %(until)s
  AND (%(tenant_id)s::uuid IS NULL OR m.tenant_id = %(tenant_id)s::uuid)
  AND (%(stream)s::text IS NULL OR m.stream = %(stream)s::text)
GROUP BY t.name, m.status;

-- name: report_not_final_mails
-- Mails accepted in a window that are not final yet, oldest first.
SELECT m.id, t.name AS tenant, m.stream, m.status, m.created_at, m.updated_at, m.last_error
FROM mails m JOIN tenants t ON t.id = m.tenant_id
WHERE m.created_at >= %(since)s AND m.created_at < %(until)s
  AND NOT (m.status = ANY(%(final_statuses)s::text[]))
  AND (%(tenant_id)s::uuid IS NULL OR m.tenant_id = %(tenant_id)s::uuid)
  AND (%(stream)s::text IS NULL OR m.stream = %(stream)s::text)
ORDER BY m.created_at, m.id;

-- name: report_purges_after
-- The latest cutoff of the purges that removed mails finished after a time, and how many did.
SELECT max((arguments->>'cutoff')::timestamptz) AS latest_cutoff, count(*) AS purges
FROM admin_actions
WHERE action = 'purge'
  AND (arguments->>'cutoff')::timestamptz > %(since)s
  AND COALESCE((result->>'mails_total')::bigint, 0) > 0;
