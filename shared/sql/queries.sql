-- Every query the services run, as named blocks. A block starts with a line
-- "-- name: <name>" followed by one line describing it; shared.queries loads them.

-- name: accept_mail
-- The ingest transaction: the mail, its outbox row and its first event, in one statement.
WITH mail AS (
    INSERT INTO mails (id, tenant_id, stream, request, status)
    VALUES (%(mail_id)s, %(tenant_id)s, %(stream)s, %(request)s, 'accepted')
    RETURNING id
), outbox_row AS (
    INSERT INTO outbox (mail_id, queue)
    SELECT id, %(queue)s FROM mail
)
INSERT INTO mail_events (mail_id, kind, detail)
SELECT id, 'accepted', %(event_detail)s FROM mail;

-- name: find_tenant_by_key_hash
-- The tenant an unrevoked API key belongs to.
SELECT t.id, t.name, t.sender_domains
FROM api_keys k JOIN tenants t ON t.id = k.tenant_id
WHERE k.key_hash = %(key_hash)s AND k.revoked_at IS NULL;

-- name: insert_tenant
-- A new tenant with the domains it may send from.
INSERT INTO tenants (id, name, sender_domains)
VALUES (%(id)s, %(name)s, %(sender_domains)s)
RETURNING id;

-- name: find_tenant_by_name
-- A tenant by its unique name.
SELECT id, name, sender_domains FROM tenants WHERE name = %(name)s;

-- name: insert_api_key
-- A new key, stored as its digest.
INSERT INTO api_keys (id, tenant_id, key_prefix, key_hash)
VALUES (%(id)s, %(tenant_id)s, %(key_prefix)s, %(key_hash)s);

-- name: get_mail_for_tenant
-- A mail as its tenant sees it.
SELECT id, status, stream, created_at, updated_at
FROM mails WHERE id = %(mail_id)s AND tenant_id = %(tenant_id)s;

-- name: list_mail_events
-- A mail's history, oldest first.
SELECT kind, detail, created_at FROM mail_events
WHERE mail_id = %(mail_id)s ORDER BY id;

-- name: claim_due_outbox
-- The claim query: due rows, oldest first, skipping rows another relay holds.
SELECT id, mail_id, queue, dispatch_count
FROM outbox
WHERE available_at <= now()
ORDER BY available_at
LIMIT %(batch_size)s
FOR UPDATE SKIP LOCKED;

-- name: record_published
-- After publishing: lease the rows (due again only if no worker picks them up in
-- time), move fresh mails to 'queued' and record a 'queued' event per publish.
WITH leased AS (
    UPDATE outbox
    SET available_at = now() + make_interval(secs => %(visibility_timeout)s),
        dispatch_count = dispatch_count + 1
    WHERE id = ANY(%(outbox_ids)s)
    RETURNING mail_id, dispatch_count
), queued AS (
    UPDATE mails SET status = 'queued', updated_at = now()
    FROM leased
    WHERE mails.id = leased.mail_id AND mails.status = 'accepted'
)
INSERT INTO mail_events (mail_id, kind, detail)
SELECT mail_id, 'queued', jsonb_build_object('dispatch', dispatch_count) FROM leased;

-- name: begin_sending
-- The compare-and-set that makes a duplicate delivery a no-op. When it wins it
-- also deletes the outbox row (the relay's end-to-end acknowledgement) and
-- records the 'sending' event; when it loses it changes nothing.
WITH picked AS (
    UPDATE mails
    SET status = 'sending', attempts = attempts + 1, updated_at = now()
    WHERE id = %(mail_id)s AND status = ANY(%(from_statuses)s)
    RETURNING id, tenant_id, stream, request, attempts
), acknowledged AS (
    DELETE FROM outbox WHERE mail_id IN (SELECT id FROM picked)
), event AS (
    INSERT INTO mail_events (mail_id, kind, detail)
    SELECT id, 'sending', jsonb_build_object('attempt', attempts, 'worker', %(worker)s::text)
    FROM picked
)
SELECT id, tenant_id, stream, request, attempts FROM picked;

-- name: finish_sending
-- The outcome of a send attempt, with its event.
WITH finished AS (
    UPDATE mails
    SET status = %(status)s, last_error = %(last_error)s, updated_at = now()
    WHERE id = %(mail_id)s AND status = 'sending'
    RETURNING id
)
INSERT INTO mail_events (mail_id, kind, detail)
SELECT id, %(status)s, %(detail)s FROM finished;

-- name: applied_migrations
-- Versions already applied.
SELECT version FROM schema_migrations ORDER BY version;

-- name: record_migration
-- Remember that a migration ran.
INSERT INTO schema_migrations (version) VALUES (%(version)s);

-- name: lock_outbox_row
-- Wait for a relay that is still committing this mail's publish (lock order: outbox, then mails).
SELECT id FROM outbox WHERE mail_id = %(mail_id)s FOR UPDATE;
