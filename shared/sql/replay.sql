-- Queries of 'outbox-relay replay' and 'outbox-relay dlq retry|discard': mails selected by
-- status, window, tenant, stream, tag or id, worked through in batches after a (created_at, id)
-- cursor. Each batch is one statement: lock the candidates, compare-and-set, record events.
-- "-- name: <name>" followed by one line describing it; shared.queries loads them.

-- name: count_selected_mails
-- How many mails a replay, retry or discard selects (progress bar length, --include-sent prompt).
SELECT count(*) FROM mails m
WHERE m.status = ANY(%(statuses)s::text[])
  AND (%(since)s::timestamptz IS NULL OR m.created_at >= %(since)s::timestamptz)
  AND (%(until)s::timestamptz IS NULL OR m.created_at < %(until)s::timestamptz)
  AND (%(tenant_id)s::uuid IS NULL OR m.tenant_id = %(tenant_id)s::uuid)
  AND (%(stream)s::text IS NULL OR m.stream = %(stream)s::text)
  AND (%(mail_ids)s::uuid[] IS NULL OR m.id = ANY(%(mail_ids)s::uuid[]))
  AND (%(tag)s::text IS NULL OR m.tags @> ARRAY[%(tag)s::text]);

-- name: replay_batch
-- One replay batch: lock the next candidates; unskipped ones go back to 'accepted' and the outbox.
-- FOR UPDATE waits for a concurrent change and re-checks the WHERE clause against it, so a
-- mail another replay took meanwhile drops out; the UPDATE's status guard is the
-- compare-and-set. The skip reason of each candidate: past expires_at (never sent late),
-- older than --max-age, or already replayed by a run with this replay key (even if it
-- failed again since), which makes rerunning the same command a no-op for it.
WITH candidate AS (
    SELECT m.id, m.tenant_id, m.stream, m.status, m.attempts, m.last_error, m.created_at,
           CASE
               WHEN m.status = 'expired' OR m.expires_at <= now() THEN 'expired'
               WHEN %(max_age)s::float8 IS NOT NULL
                    AND m.created_at < now() - make_interval(secs => %(max_age)s::float8)
                   THEN 'older_than_max_age'
               WHEN EXISTS (SELECT 1 FROM mail_events e
                            WHERE e.mail_id = m.id AND e.kind = 'replayed'
                              AND e.detail->>'replay' = %(replay_key)s::text)
                   THEN 'already_replayed'
           END AS skip_reason
    FROM mails m
    WHERE m.status = ANY(%(statuses)s::text[])
      AND (%(since)s::timestamptz IS NULL OR m.created_at >= %(since)s::timestamptz)
      AND (%(until)s::timestamptz IS NULL OR m.created_at < %(until)s::timestamptz)
      AND (%(tenant_id)s::uuid IS NULL OR m.tenant_id = %(tenant_id)s::uuid)
      AND (%(stream)s::text IS NULL OR m.stream = %(stream)s::text)
      AND (%(mail_ids)s::uuid[] IS NULL OR m.id = ANY(%(mail_ids)s::uuid[]))
      AND (%(tag)s::text IS NULL OR m.tags @> ARRAY[%(tag)s::text])
      AND (%(cursor_created_at)s::timestamptz IS NULL
           OR (m.created_at, m.id) > (%(cursor_created_at)s::timestamptz, %(cursor_id)s::uuid))
    ORDER BY m.created_at, m.id
    LIMIT %(batch_size)s
    FOR UPDATE OF m
), replayed AS (
    -- The 'replayed' event comes from the mails_transitions trigger, with status_detail.
    UPDATE mails m
    SET status = 'accepted', attempts = 0, last_error = NULL, updated_at = now(),
        status_detail = %(detail)s::jsonb || jsonb_build_object(
            'previous_status', c.status, 'previous_attempts', c.attempts,
            'previous_error', c.last_error)
    FROM candidate c
    WHERE m.id = c.id AND c.skip_reason IS NULL AND m.status = ANY(%(statuses)s::text[])
      AND m.status = ANY(mailroom_may_become('accepted'))
    RETURNING m.id
), queued AS (
    -- The queue is named after the stream; a new row's age (created_at) starts now, so the
    -- relay does not bury an old mail as "not picked up within the maximum age".
    INSERT INTO outbox (mail_id, queue)
    SELECT c.id, c.stream FROM candidate c JOIN replayed r USING (id)
    ON CONFLICT (mail_id) DO NOTHING
)
SELECT c.id, t.name AS tenant, c.stream, c.status AS previous_status, c.created_at,
       c.skip_reason, r.id IS NOT NULL AS changed
FROM candidate c JOIN tenants t ON t.id = c.tenant_id LEFT JOIN replayed r ON r.id = c.id
ORDER BY c.created_at, c.id;

-- name: discard_batch
-- One discard batch: lock the next dead mails; they become 'discarded' (last_error stays).
WITH candidate AS (
    SELECT m.id, m.tenant_id, m.stream, m.status, m.created_at
    FROM mails m
    WHERE m.status = ANY(%(statuses)s::text[])
      AND (%(since)s::timestamptz IS NULL OR m.created_at >= %(since)s::timestamptz)
      AND (%(until)s::timestamptz IS NULL OR m.created_at < %(until)s::timestamptz)
      AND (%(tenant_id)s::uuid IS NULL OR m.tenant_id = %(tenant_id)s::uuid)
      AND (%(stream)s::text IS NULL OR m.stream = %(stream)s::text)
      AND (%(mail_ids)s::uuid[] IS NULL OR m.id = ANY(%(mail_ids)s::uuid[]))
      AND (%(tag)s::text IS NULL OR m.tags @> ARRAY[%(tag)s::text])
      AND (%(cursor_created_at)s::timestamptz IS NULL
           OR (m.created_at, m.id) > (%(cursor_created_at)s::timestamptz, %(cursor_id)s::uuid))
    ORDER BY m.created_at, m.id
    LIMIT %(batch_size)s
    FOR UPDATE OF m
), discarded AS (
    UPDATE mails m SET status = 'discarded', status_detail = %(detail)s::jsonb, updated_at = now()
    FROM candidate c
    WHERE m.id = c.id AND m.status = ANY(%(statuses)s::text[])
      AND m.status = ANY(mailroom_may_become('discarded'))
    RETURNING m.id
)
SELECT c.id, t.name AS tenant, c.stream, c.status AS previous_status, c.created_at,
       NULL::text AS skip_reason, d.id IS NOT NULL AS changed
FROM candidate c JOIN tenants t ON t.id = c.tenant_id LEFT JOIN discarded d ON d.id = c.id
ORDER BY c.created_at, c.id;
