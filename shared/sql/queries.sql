-- Every query the services run, as named blocks. A block starts with a line
-- "-- name: <name>" followed by one line describing it; shared.queries loads them.

-- name: accept_mails
-- The ingest statement: N mails, their outbox rows and first events, in one statement.
-- The mails come as one jsonb array (one parameter: PostgreSQL parses it in C, where
-- adapting eleven arrays cost the API more CPU than the database spent on the insert),
-- their ids as a uuid array in the same order.
WITH input AS (
    SELECT i.id, t.*
    FROM unnest(%(ids)s::uuid[]) WITH ORDINALITY AS i(id, n)
    JOIN ROWS FROM (jsonb_to_recordset(%(mails)s::jsonb) AS (
        stream text, queue text, source text, status text, request jsonb,
        send_at timestamptz, expires_at timestamptz, tags text[], metadata jsonb,
        campaign_key text
    )) WITH ORDINALITY AS t(stream, queue, source, status, request, send_at, expires_at,
                             tags, metadata, campaign_key, n) USING (n)
), mail AS (
    INSERT INTO mails (id, tenant_id, stream, source, status, request, send_at, expires_at,
                       tags, metadata, campaign_key)
    SELECT id, %(tenant_id)s, stream, source, status, request, send_at, expires_at,
           tags, metadata, campaign_key
    FROM input
    RETURNING id
), outbox_rows AS (
    INSERT INTO outbox (mail_id, queue, available_at)
    SELECT id, queue, COALESCE(send_at, now()) FROM input
)
INSERT INTO mail_events (mail_id, kind, detail)
SELECT id, status, %(event_detail)s::jsonb FROM input;

-- name: claim_idempotency_key
-- First statement of an ingest transaction that carries an Idempotency-Key; waits for a concurrent holder.
INSERT INTO idempotency_keys (tenant_id, key, request_hash, status_code, response)
VALUES (%(tenant_id)s, %(key)s, %(request_hash)s, 0, 'null'::jsonb)
ON CONFLICT (tenant_id, key) DO NOTHING
RETURNING key;

-- name: find_idempotency_key
-- The stored answer for a key already used.
SELECT request_hash, status_code, response
FROM idempotency_keys WHERE tenant_id = %(tenant_id)s AND key = %(key)s;

-- name: store_idempotent_response
-- The answer a retry with the same key will get.
UPDATE idempotency_keys SET status_code = %(status_code)s, response = %(response)s
WHERE tenant_id = %(tenant_id)s AND key = %(key)s;

-- name: insert_tenant
-- A new tenant with the domains it may send from.
INSERT INTO tenants (id, name, sender_domains)
VALUES (%(id)s, %(name)s, %(sender_domains)s)
RETURNING id;

-- name: find_tenant_by_name
-- A tenant by its unique name.
SELECT id, name, sender_domains FROM tenants WHERE name = %(name)s;

-- name: lock_tenant_sender_domains
-- A tenant as an operator names it (name or id) with its sender domains, locked until
-- COMMIT so that two commands changing its domains apply one after the other.
SELECT id, name, sender_domains FROM tenants
WHERE name = %(tenant)s OR id::text = %(tenant)s
FOR UPDATE;

-- name: set_tenant_sender_domains
-- Replace a tenant's sender domains (the caller computed them under the lock above).
UPDATE tenants SET sender_domains = %(sender_domains)s WHERE id = %(id)s;

-- name: get_mail_for_tenant
-- A mail as its tenant sees it.
SELECT id, status, stream, source, tags, metadata, send_at, expires_at, campaign_key,
       attempts, last_error, created_at, updated_at
FROM mails WHERE id = %(mail_id)s AND tenant_id = %(tenant_id)s;

-- name: list_mails_for_tenant
-- A page of a tenant's mails, newest first, after a (created_at, id) cursor.
SELECT id, status, stream, source, tags, metadata, send_at, expires_at, campaign_key,
       attempts, last_error, created_at, updated_at
FROM mails
WHERE tenant_id = %(tenant_id)s
  AND (%(status)s::text IS NULL OR status = %(status)s)
  AND (%(since)s::timestamptz IS NULL OR created_at >= %(since)s)
  AND (%(until)s::timestamptz IS NULL OR created_at < %(until)s)
  AND (%(tag)s::text IS NULL OR tags @> ARRAY[%(tag)s::text])
  AND (%(cursor_created_at)s::timestamptz IS NULL
       OR (created_at, id) < (%(cursor_created_at)s, %(cursor_id)s::uuid))
ORDER BY created_at DESC, id DESC
LIMIT %(limit)s;

-- name: lock_mail_outbox_row
-- Before changing a mail that may still be in the outbox, take the outbox row first (lock order).
SELECT o.id FROM outbox o JOIN mails m ON m.id = o.mail_id
WHERE o.mail_id = %(mail_id)s AND m.tenant_id = %(tenant_id)s
FOR UPDATE OF o;

-- name: cancel_mail
-- Cancel a mail whose sending has not begun; its outbox row goes with it.
WITH cancelled AS (
    UPDATE mails SET status = 'cancelled', status_detail = %(detail)s, updated_at = now()
    WHERE id = %(mail_id)s AND tenant_id = %(tenant_id)s
      AND status = ANY(mailroom_may_become('cancelled'))
    RETURNING id
), removed AS (
    DELETE FROM outbox WHERE mail_id IN (SELECT id FROM cancelled)
)
SELECT id FROM cancelled;

-- name: list_mail_events
-- A mail's history, oldest first.
SELECT kind, detail, created_at FROM mail_events
WHERE mail_id = %(mail_id)s ORDER BY id;

-- name: claim_due_outbox
-- The claim query: due rows of one queue, oldest first, skipping rows other relays hold
-- and rows an operator paused; flags mails past expires_at and rows out of dispatch
-- attempts or age (counted from the row's creation, or send_at if later, so a retried
-- or replayed mail gets a fresh age). Pauses come from paused_scopes as values, not a
-- join: the planner then knows them, and a rarely analyzed relay_pauses table cannot
-- turn this index scan into a scan of every mail.
SELECT o.id, o.mail_id, o.queue, o.dispatch_count,
       (m.expires_at IS NOT NULL AND m.expires_at <= now()) AS expired,
       CASE
           WHEN o.dispatch_count >= %(max_dispatches)s
               THEN 'no worker picked it up after ' || o.dispatch_count || ' dispatches'
           WHEN GREATEST(o.created_at, m.send_at) < now() - make_interval(secs => %(max_age)s)
               THEN 'not picked up within ' || %(max_age)s || ' seconds'
       END AS dead_reason
FROM outbox o JOIN mails m ON m.id = o.mail_id
WHERE o.queue = %(queue)s AND o.available_at <= now()
  AND NOT %(pause_all)s::boolean
  AND NOT m.stream = ANY(%(paused_streams)s::text[])
  AND NOT m.tenant_id = ANY(%(paused_tenants)s::uuid[])
  AND NOT (m.stream || '/' || m.tenant_id::text) = ANY(%(paused_pairs)s::text[])
ORDER BY o.available_at
LIMIT %(batch_size)s
FOR UPDATE OF o SKIP LOCKED;

-- name: paused_scopes
-- Operator pauses (outbox-relay pause), read by the relay at the start of every round.
SELECT stream, tenant_id FROM relay_pauses;

-- name: bury_mails
-- Mails the relay gives up on become 'dead' with the reason; replayable, never dropped.
WITH input AS (
    SELECT * FROM unnest(%(mail_ids)s::uuid[], %(reasons)s::text[]) AS t(id, reason)
), dead AS (
    UPDATE mails SET status = 'dead', last_error = input.reason,
                     status_detail = jsonb_build_object('reason', input.reason), updated_at = now()
    FROM input
    WHERE mails.id = input.id AND mails.status = ANY(mailroom_may_become('dead'))
      AND mails.status <> 'sending'  -- a mail being sent is its worker's to finish
    RETURNING mails.id
)
DELETE FROM outbox WHERE mail_id IN (SELECT id FROM dead);

-- name: expire_mails
-- Mails past expires_at leave the outbox as 'expired' instead of being sent late.
WITH expired AS (
    UPDATE mails SET status = 'expired', updated_at = now(),
                     status_detail = jsonb_build_object('expires_at', expires_at, 'by', %(by)s::text)
    WHERE id = ANY(%(mail_ids)s) AND status = ANY(mailroom_may_become('expired'))
      AND status <> 'sending'  -- a mail being sent is its worker's to finish
      AND expires_at <= now()
    RETURNING id
)
DELETE FROM outbox WHERE mail_id IN (SELECT id FROM expired);

-- name: record_published
-- After publishing: lease the rows with exponential backoff (due again only if no
-- worker picks them up in time), move fresh mails to 'queued', and record each
-- publish as 'queued' (the first) or 'redispatched'. The status change writes its own
-- 'queued' event (the mails_transitions trigger); this statement writes the events of
-- publishes that change no status (a retrying mail's first publish, every redispatch).
WITH leased AS (
    UPDATE outbox
    SET available_at = now() + mailroom_backoff(%(visibility_timeout)s, dispatch_count, %(max_lease)s),
        dispatch_count = dispatch_count + 1
    WHERE id = ANY(%(outbox_ids)s)
    RETURNING mail_id, dispatch_count, available_at
), queued AS (
    UPDATE mails SET status = 'queued', updated_at = now(),
                     status_detail = jsonb_build_object('dispatch', leased.dispatch_count,
                                                        'next_check', leased.available_at)
    FROM leased
    WHERE mails.id = leased.mail_id AND mails.status = ANY(mailroom_may_become('queued'))
    RETURNING mails.id
)
INSERT INTO mail_events (mail_id, kind, detail)
SELECT mail_id,
       CASE WHEN dispatch_count = 1 THEN 'queued' ELSE 'redispatched' END,
       jsonb_build_object('dispatch', dispatch_count, 'next_check', available_at)
FROM leased WHERE mail_id NOT IN (SELECT id FROM queued);

-- name: lock_outbox_rows
-- Wait for a relay still committing these mails' publish (lock order: outbox, then mails;
-- rows in id order, so two workers given overlapping batches cannot deadlock).
SELECT id FROM outbox WHERE mail_id = ANY(%(mail_ids)s::uuid[]) ORDER BY id FOR UPDATE;

-- name: begin_sending
-- The pickup: the compare-and-set that makes a duplicate delivery a no-op, for a batch
-- of mails in one statement. For each mail it wins it also deletes the outbox row (the
-- relay's end-to-end acknowledgement); the mails_transitions trigger records each
-- 'sending' event. A mail it loses (already picked up, finished, or past expires_at)
-- is left as it was.
WITH picked AS (
    UPDATE mails
    SET status = 'sending', attempts = attempts + 1, updated_at = now(),
        status_detail = jsonb_build_object('attempt', attempts + 1, 'worker', %(worker)s::text)
    WHERE id = ANY(%(mail_ids)s::uuid[]) AND status = ANY(mailroom_may_become('sending'))
      AND (expires_at IS NULL OR expires_at > now())
    RETURNING id, tenant_id, stream, request, attempts, expires_at
), acknowledged AS (
    -- The array lets the planner use the mail_id index (a CTE's row count is a guess:
    -- without it, every pickup scanned the whole outbox).
    DELETE FROM outbox
    WHERE mail_id = ANY(%(mail_ids)s::uuid[]) AND mail_id IN (SELECT id FROM picked)
)
SELECT id, tenant_id, stream, request, attempts, expires_at FROM picked;

-- name: finish_sending
-- The outcome of a send attempt (its event comes from the mails_transitions trigger).
-- Only the pickup that made this attempt may record it: if the mail was taken back from
-- a worker presumed lost and picked up again, the late outcome changes nothing.
UPDATE mails
SET status = %(status)s, last_error = %(last_error)s, status_detail = %(detail)s, updated_at = now()
WHERE id = %(mail_id)s AND status = 'sending' AND attempts = %(attempt)s
  AND status = ANY(mailroom_may_become(%(status)s));

-- name: schedule_retry
-- A transient failure: back into the outbox, due after the backoff; the broker holds nothing.
WITH retrying AS (
    UPDATE mails SET status = 'retrying', last_error = %(last_error)s,
                     status_detail = %(detail)s, updated_at = now()
    WHERE id = %(mail_id)s AND status = 'sending' AND attempts = %(attempt)s
      AND status = ANY(mailroom_may_become('retrying'))
    RETURNING id, stream
)
-- A stream's queue has the stream's name (shared.streams: Stream.queue).
INSERT INTO outbox (mail_id, queue, available_at)
SELECT id, stream, now() + make_interval(secs => %(delay)s) FROM retrying;

-- name: applied_migrations
-- Versions already applied.
SELECT version FROM schema_migrations ORDER BY version;

-- name: record_migration
-- Remember that a migration ran.
INSERT INTO schema_migrations (version) VALUES (%(version)s);

-- ===== auth and rate limits =====

-- name: find_api_key_by_hash
-- An unrevoked API key with its scopes and its tenant.
SELECT k.id AS key_id, k.scopes, t.id, t.name, t.sender_domains
FROM api_keys k JOIN tenants t ON t.id = k.tenant_id
WHERE k.key_hash = %(key_hash)s AND k.revoked_at IS NULL;

-- name: insert_api_key_with_scopes
-- A new key, stored as its digest, with what it may do.
INSERT INTO api_keys (id, tenant_id, key_prefix, key_hash, scopes)
VALUES (%(id)s, %(tenant_id)s, %(key_prefix)s, %(key_hash)s, %(scopes)s);

-- name: find_api_keys_to_revoke
-- The keys a revoke-key argument names: the one with this digest, or all with this display prefix.
SELECT k.id, k.key_prefix, k.created_at, k.revoked_at, t.name AS tenant
FROM api_keys k JOIN tenants t ON t.id = k.tenant_id
WHERE k.key_hash = %(key_hash)s OR k.key_prefix = %(key_prefix)s
ORDER BY k.created_at;

-- name: revoke_api_key
-- Revoke one key; a key already revoked keeps its first revoked_at.
UPDATE api_keys SET revoked_at = now()
WHERE id = %(id)s AND revoked_at IS NULL
RETURNING revoked_at;

-- name: list_api_keys_of_tenant
-- A tenant's keys, oldest first, as listings may show them (never the digest).
SELECT k.key_prefix, k.scopes, k.created_at, k.revoked_at
FROM api_keys k JOIN tenants t ON t.id = k.tenant_id
WHERE t.name = %(tenant)s
ORDER BY k.created_at, k.id;

-- ===== relay: canaries, health and recovery =====

-- name: insert_canary
-- A canary about to be published to one queue.
INSERT INTO canaries (id, queue, relay) VALUES (%(id)s, %(queue)s, %(relay)s);

-- name: mark_canaries_published
-- The broker took these canaries.
UPDATE canaries SET published_at = now() WHERE id = ANY(%(ids)s);

-- name: record_canary_received
-- A worker received a canary: the round trip through the broker is complete.
UPDATE canaries SET received_at = now(), worker = %(worker)s
WHERE id = %(id)s AND received_at IS NULL;

-- name: canary_health
-- Per queue: the last completed round trip, and the oldest canary still travelling.
SELECT q.queue,
       (SELECT max(received_at) FROM canaries c WHERE c.queue = q.queue) AS last_received,
       (SELECT min(published_at) FROM canaries c
        WHERE c.queue = q.queue AND c.received_at IS NULL AND c.published_at IS NOT NULL)
           AS oldest_pending,
       now() AS now
FROM unnest(%(queues)s::text[]) AS q(queue);

-- name: canary_received
-- Whether one canary has completed its round trip.
SELECT received_at, worker FROM canaries WHERE id = %(id)s;

-- name: prune_canaries
-- Canaries older than an hour, except each queue's last completed one.
DELETE FROM canaries c
WHERE c.created_at < now() - interval '1 hour'
  AND EXISTS (SELECT 1 FROM canaries n
              WHERE n.queue = c.queue AND n.received_at > COALESCE(c.received_at, '-infinity'));

-- name: outbox_stats
-- For metrics and status: backlog, oldest undispatched and oldest in-flight row ages (seconds).
SELECT count(*) FILTER (WHERE available_at <= now()) AS due,
       count(*) AS total,
       count(*) FILTER (WHERE dispatch_count > 0) AS in_flight,
       COALESCE(EXTRACT(EPOCH FROM now() - min(available_at)
                FILTER (WHERE dispatch_count = 0 AND available_at <= now())), 0) AS oldest_undispatched,
       COALESCE(EXTRACT(EPOCH FROM now() - min(created_at)
                FILTER (WHERE dispatch_count > 0)), 0) AS oldest_in_flight
FROM outbox;

-- name: record_unroutable
-- RabbitMQ returned a mail's message through the alternate exchange: keep it visible.
INSERT INTO mail_events (mail_id, kind, detail)
SELECT id, 'unroutable', jsonb_build_object('routing_key', %(routing_key)s::text)
FROM mails WHERE id = %(mail_id)s;

-- name: recover_abandoned_sends
-- Mails a worker picked up but recorded no outcome for within the sending timeout
-- (longer than the task's hard time limit, so that worker is gone). Each pickup
-- counted an attempt: under the limit the mail goes back to the outbox, due after a
-- backoff (so a mail that kills its worker cannot monopolise the workers), and at the
-- limit it is 'dead' with the reason (replayable), like any mail that keeps failing.
WITH abandoned AS (
    UPDATE mails
    SET status = CASE WHEN attempts >= %(max_attempts)s THEN 'dead' ELSE 'retrying' END,
        updated_at = now(),
        last_error = CASE WHEN attempts >= %(max_attempts)s
            THEN 'gave up after ' || attempts || ' attempts: the worker was lost while sending'
            ELSE 'no outcome recorded within the sending timeout: the worker was lost'
        END,
        status_detail = jsonb_build_object('reason', 'worker lost while sending',
                                           'attempt', attempts)
    WHERE status = 'sending'
      AND status = ANY(mailroom_may_become(
          CASE WHEN attempts >= %(max_attempts)s THEN 'dead' ELSE 'retrying' END))
      AND updated_at < now() - make_interval(secs => %(sending_timeout)s)
    RETURNING id, stream, status, attempts
)
-- A stream's queue has the stream's name (shared.streams.Stream.queue).
INSERT INTO outbox (mail_id, queue, available_at)
SELECT id, stream,
       now() + mailroom_backoff(%(retry_base)s, attempts - 1, 3600)
FROM abandoned WHERE status = 'retrying'
ON CONFLICT (mail_id) DO NOTHING;

-- name: release_leases
-- After a broken link is repaired: publish every in-flight row now, not after its backoff.
UPDATE outbox SET available_at = now()
WHERE dispatch_count > 0 AND available_at > now();

-- ===== campaigns, workflows and CDP events =====

-- name: insert_campaign
-- A new campaign; nothing (no row) when the tenant already has one with this key.
INSERT INTO campaigns (tenant_id, key, from_template, subject_template, text_template,
                       html_template, reply_to, headers, tags)
VALUES (%(tenant_id)s, %(key)s, %(sender)s, %(subject)s, %(text)s, %(html)s, %(reply_to)s,
        %(headers)s, %(tags)s)
ON CONFLICT (tenant_id, key) DO NOTHING
RETURNING key, from_template AS sender, subject_template AS subject, text_template AS text,
          html_template AS html, reply_to, headers, tags, created_at, updated_at;

-- name: list_campaigns_for_tenant
-- A tenant's campaigns, by key.
SELECT key, from_template AS sender, subject_template AS subject, text_template AS text,
       html_template AS html, reply_to, headers, tags, created_at, updated_at
FROM campaigns WHERE tenant_id = %(tenant_id)s ORDER BY key;

-- name: get_campaign_for_tenant
-- One campaign of a tenant, by key, with its templates (from_template as sender).
SELECT key, from_template AS sender, subject_template AS subject, text_template AS text,
       html_template AS html, reply_to, headers, tags, created_at, updated_at
FROM campaigns WHERE tenant_id = %(tenant_id)s AND key = %(key)s;

-- name: update_campaign
-- Replace a campaign's templates; mails already accepted keep their rendered content.
UPDATE campaigns
SET from_template = %(sender)s, subject_template = %(subject)s, text_template = %(text)s,
    html_template = %(html)s, reply_to = %(reply_to)s, headers = %(headers)s,
    tags = %(tags)s, updated_at = now()
WHERE tenant_id = %(tenant_id)s AND key = %(key)s
RETURNING key, from_template AS sender, subject_template AS subject, text_template AS text,
          html_template AS html, reply_to, headers, tags, created_at, updated_at;

-- name: delete_campaign
-- Delete a campaign; the workflows' foreign key refuses it while a workflow uses it.
DELETE FROM campaigns WHERE tenant_id = %(tenant_id)s AND key = %(key)s RETURNING key;

-- name: find_campaign_workflows
-- The workflows that use a campaign (why it cannot be deleted).
SELECT id, event_name AS event FROM workflows
WHERE tenant_id = %(tenant_id)s AND campaign_key = %(key)s
ORDER BY created_at, id;

-- name: insert_workflow
-- A new workflow, only if the tenant has the campaign it names (no row otherwise).
INSERT INTO workflows (id, tenant_id, event_name, property_filters, campaign_key)
SELECT %(id)s, tenant_id, %(event)s, %(property_filters)s, key
FROM campaigns WHERE tenant_id = %(tenant_id)s AND key = %(campaign)s
RETURNING id, event_name AS event, property_filters, campaign_key AS campaign, created_at;

-- name: list_workflows_for_tenant
-- A tenant's workflows, oldest first.
SELECT id, event_name AS event, property_filters, campaign_key AS campaign, created_at
FROM workflows WHERE tenant_id = %(tenant_id)s ORDER BY created_at, id;

-- name: delete_workflow
-- Delete one workflow of a tenant.
DELETE FROM workflows WHERE id = %(id)s AND tenant_id = %(tenant_id)s RETURNING id;

-- name: find_tenant_webhook_secret
-- The tenant a signed request names, with the secret its signature must be made with.
SELECT id, name, sender_domains, webhook_secret FROM tenants WHERE id = %(tenant_id)s;

-- name: set_webhook_secret
-- A new webhook secret for a tenant, by name; the previous one stops working at once.
UPDATE tenants SET webhook_secret = %(secret)s WHERE name = %(name)s RETURNING id;

-- name: claim_cdp_event
-- First statement of a CDP event's transaction: no row when this messageId was received before
-- (waits for a concurrent delivery of the same messageId to commit or roll back).
INSERT INTO cdp_events (id, tenant_id, message_id, event_name, payload, response)
VALUES (%(id)s, %(tenant_id)s, %(message_id)s, %(event_name)s, %(payload)s, 'null'::jsonb)
ON CONFLICT (tenant_id, message_id) DO NOTHING
RETURNING id;

-- name: find_cdp_event_response
-- What a messageId received before was answered.
SELECT response FROM cdp_events
WHERE tenant_id = %(tenant_id)s AND message_id = %(message_id)s;

-- name: match_workflows
-- The workflows an event triggers (name, and property filters contained in its properties),
-- with their campaigns' templates.
SELECT w.id AS workflow_id, c.key, c.from_template AS sender, c.subject_template AS subject,
       c.text_template AS text, c.html_template AS html, c.reply_to, c.headers, c.tags
FROM workflows w JOIN campaigns c ON c.tenant_id = w.tenant_id AND c.key = w.campaign_key
WHERE w.tenant_id = %(tenant_id)s AND w.event_name = %(event_name)s
  AND w.property_filters <@ %(properties)s
ORDER BY w.created_at, w.id;

-- name: record_cdp_event_result
-- The mails an event created and the answer, in the transaction that created them.
UPDATE cdp_events SET mail_ids = %(mail_ids)s, response = %(response)s WHERE id = %(id)s;

-- name: list_cdp_events_for_tenant
-- A tenant's received CDP events, newest first.
SELECT id, message_id, event_name AS event, payload, mail_ids, response, received_at
FROM cdp_events
WHERE tenant_id = %(tenant_id)s
  AND (%(message_id)s::text IS NULL OR message_id = %(message_id)s)
ORDER BY received_at DESC, id DESC
LIMIT %(limit)s;

-- ===== suppressions and unsubscribes =====

-- name: find_suppressions
-- The worker's one look-up: which of a mail's (lower-cased) recipients the tenant suppresses.
SELECT email, reason FROM suppressions
WHERE tenant_id = %(tenant_id)s AND email = ANY(%(emails)s::text[]);

-- name: add_hard_bounces
-- Recipients refused permanently (5xx): suppressed for good; a hard bounce overrides any other reason.
INSERT INTO suppressions (tenant_id, email, reason, detail, mail_id)
SELECT %(tenant_id)s, t.email, 'hard_bounce', jsonb_build_object('smtp_reply', t.reply), %(mail_id)s
FROM unnest(%(emails)s::text[], %(replies)s::text[]) AS t(email, reply)
ON CONFLICT (tenant_id, email) DO UPDATE
SET reason = 'hard_bounce', detail = EXCLUDED.detail, mail_id = EXCLUDED.mail_id,
    created_at = now();

-- name: add_unsubscribe
-- A one-click unsubscribe; an existing entry (any reason) stays as it is.
INSERT INTO suppressions (tenant_id, email, reason, detail, mail_id)
SELECT %(tenant_id)s, %(email)s, 'unsubscribe', %(detail)s, %(mail_id)s
FROM tenants WHERE id = %(tenant_id)s
ON CONFLICT (tenant_id, email) DO NOTHING;

-- name: record_unsubscribed_event
-- The 'unsubscribed' event on the mail whose link was used, once per mail.
INSERT INTO mail_events (mail_id, kind, detail)
SELECT id, 'unsubscribed', %(detail)s FROM mails
WHERE id = %(mail_id)s AND tenant_id = %(tenant_id)s
  AND NOT EXISTS (
      SELECT 1 FROM mail_events WHERE mail_id = %(mail_id)s AND kind = 'unsubscribed'
  );

-- name: add_manual_suppression
-- An entry made through the API; an existing entry (any reason) stays as it is.
INSERT INTO suppressions (tenant_id, email, reason, detail)
VALUES (%(tenant_id)s, %(email)s, 'manual', %(detail)s)
ON CONFLICT (tenant_id, email) DO NOTHING
RETURNING email, reason, detail, mail_id, created_at;

-- name: get_suppression
-- One entry of a tenant's list.
SELECT email, reason, detail, mail_id, created_at FROM suppressions
WHERE tenant_id = %(tenant_id)s AND email = %(email)s;

-- name: list_suppressions
-- A page of a tenant's list by email, after an email cursor, optionally by reason.
SELECT email, reason, detail, mail_id, created_at FROM suppressions
WHERE tenant_id = %(tenant_id)s
  AND (%(reason)s::text IS NULL OR reason = %(reason)s)
  AND (%(after)s::text IS NULL OR email > %(after)s)
ORDER BY email
LIMIT %(limit)s;

-- name: delete_suppression
-- Remove an entry: mail to the address is sent again.
DELETE FROM suppressions WHERE tenant_id = %(tenant_id)s AND email = %(email)s
RETURNING email;

-- ===== status webhooks =====

-- name: insert_webhook
-- A tenant's new webhook, unless it already has the maximum number (no row then).
INSERT INTO webhooks (id, tenant_id, url, events, secret)
SELECT %(id)s, %(tenant_id)s, %(url)s, %(events)s, %(secret)s
WHERE (SELECT count(*) FROM webhooks
       WHERE tenant_id = %(tenant_id)s AND deleted_at IS NULL) < %(max_webhooks)s
RETURNING id, url, events, secret, created_at;

-- name: list_webhooks_for_tenant
-- A tenant's webhooks, oldest first, without their secrets.
SELECT id, url, events, created_at FROM webhooks
WHERE tenant_id = %(tenant_id)s AND deleted_at IS NULL
ORDER BY created_at, id;

-- name: delete_webhook
-- Soft-delete a tenant's webhook; its pending deliveries fail instead of being sent.
WITH deleted AS (
    UPDATE webhooks SET deleted_at = now()
    WHERE id = %(id)s AND tenant_id = %(tenant_id)s AND deleted_at IS NULL
    RETURNING id
), abandoned AS (
    UPDATE webhook_deliveries SET status = 'failed', last_error = 'the webhook was deleted'
    WHERE webhook_id IN (SELECT id FROM deleted) AND status = 'pending'
)
SELECT id FROM deleted;

-- name: claim_due_webhook_deliveries
-- The relay's claim: due pending deliveries, oldest first, skipping rows other relays hold;
-- names why one is given up instead: its webhook was deleted (after the event's transaction
-- began), or it is past the retry window and no worker attempted its last publish.
SELECT d.id,
       CASE
           WHEN w.deleted_at IS NOT NULL THEN 'the webhook was deleted'
           WHEN d.created_at < now() - make_interval(secs => %(retry_seconds)s)
                AND d.attempts < d.dispatch_count
               THEN 'no worker attempted it within ' || %(window)s::text
       END AS abandon_reason
FROM webhook_deliveries d JOIN webhooks w ON w.id = d.webhook_id
WHERE d.status = 'pending' AND d.available_at <= now()
ORDER BY d.available_at
LIMIT %(batch_size)s
FOR UPDATE OF d SKIP LOCKED;

-- name: lease_webhook_deliveries
-- After publishing: due again only if no worker attempts them in time (doubling per
-- publish no worker answered, at most max_lease).
UPDATE webhook_deliveries
SET available_at = now() + mailroom_backoff(
        %(visibility_timeout)s, dispatch_count - attempts, %(max_lease)s),
    dispatch_count = dispatch_count + 1
WHERE id = ANY(%(ids)s);

-- name: abandon_webhook_deliveries
-- Deliveries the relay gives up on become 'failed', each with its reason.
UPDATE webhook_deliveries d SET status = 'failed', last_error = t.reason
FROM unnest(%(ids)s::uuid[], %(reasons)s::text[]) AS t(id, reason)
WHERE d.id = t.id AND d.status = 'pending';

-- name: lock_webhook_delivery
-- Wait for a relay still committing this delivery's publish: without the lock, the
-- compare-and-set below would read the row before that commit and skip it.
SELECT id FROM webhook_deliveries WHERE id = %(id)s FOR UPDATE;

-- name: begin_webhook_attempt
-- The worker's compare-and-set: at most one attempt per publish (a duplicate message
-- is a no-op), only while pending and the webhook exists; leased for the attempt.
UPDATE webhook_deliveries d
SET attempts = d.attempts + 1, available_at = now() + make_interval(secs => %(lease)s)
FROM webhooks w
WHERE d.id = %(id)s AND d.status = 'pending' AND d.attempts < d.dispatch_count
  AND w.id = d.webhook_id AND w.deleted_at IS NULL
RETURNING d.id, d.attempts, d.payload, w.url, w.secret;

-- name: record_webhook_delivered
-- A 2xx answer to this attempt.
UPDATE webhook_deliveries
SET status = 'delivered', delivered_at = now(), last_status_code = %(status_code)s,
    last_error = NULL
WHERE id = %(id)s AND status = 'pending' AND attempts = %(attempt)s;

-- name: record_webhook_failure
-- A non-2xx answer, a timeout or a connection error: due again after the backoff, or
-- 'failed' when the attempt came after the retry window since the event.
UPDATE webhook_deliveries
SET status = CASE WHEN created_at <= now() - make_interval(secs => %(retry_seconds)s)
                  THEN 'failed' ELSE 'pending' END,
    available_at = now() + make_interval(secs => %(delay)s),
    last_status_code = %(status_code)s, last_error = %(error)s
WHERE id = %(id)s AND status = 'pending' AND attempts = %(attempt)s
RETURNING status, available_at;

-- ===== worker leases =====

-- name: renew_worker_lease
-- A worker process's heartbeat: its lease holds until now + ttl (taken on the first call).
INSERT INTO worker_leases (worker, renewed_at, expires_at)
VALUES (%(worker)s, now(), now() + make_interval(secs => %(ttl)s))
ON CONFLICT (worker) DO UPDATE
SET renewed_at = EXCLUDED.renewed_at, expires_at = EXCLUDED.expires_at;

-- name: release_worker_lease
-- A worker process that stops cleanly gives its lease up.
DELETE FROM worker_leases WHERE worker = %(worker)s;

-- name: rescue_mails_of_lapsed_workers
-- Mails in 'sending' whose worker's lease has lapsed: that worker is gone, so each goes
-- back to the outbox due now (not after a backoff: a lost worker is not the mail's
-- fault, and the point is to send it within seconds), or becomes 'dead' at the attempt
-- limit (the pickup counted the attempt), like recover_abandoned_sends. A mail whose
-- worker holds no lease row at all is not touched: it is the sending timeout's.
WITH lapsed AS (
    SELECT worker FROM worker_leases WHERE expires_at < now()
), rescued AS (
    UPDATE mails
    SET status = CASE WHEN attempts >= %(max_attempts)s THEN 'dead' ELSE 'retrying' END,
        updated_at = now(),
        last_error = CASE WHEN attempts >= %(max_attempts)s
            THEN 'gave up after ' || attempts || ' attempts: worker lease lapsed ('
                 || lapsed.worker || ' was lost while sending)'
            ELSE 'worker lease lapsed: ' || lapsed.worker || ' was lost while sending'
        END,
        status_detail = jsonb_build_object('reason', 'worker lease lapsed',
                                           'worker', lapsed.worker, 'attempt', attempts)
    FROM lapsed
    WHERE mails.status = 'sending'
      AND mails.status_detail->>'worker' = lapsed.worker
      AND mails.status = ANY(mailroom_may_become(
          CASE WHEN attempts >= %(max_attempts)s THEN 'dead' ELSE 'retrying' END))
    RETURNING mails.id, mails.stream, mails.status, lapsed.worker
), requeued AS (
    -- A stream's queue has the stream's name (shared.streams.Stream.queue).
    INSERT INTO outbox (mail_id, queue, available_at)
    SELECT id, stream, now() FROM rescued WHERE status = 'retrying'
    ON CONFLICT (mail_id) DO NOTHING
)
SELECT id AS mail_id, status, worker FROM rescued ORDER BY worker, id;

-- name: forget_lapsed_worker_leases
-- Lapsed leases whose worker holds no mail in 'sending' any more (run after the rescue,
-- as its own statement, so that it sees the rescue's changes): workers gone while idle.
DELETE FROM worker_leases l
WHERE l.expires_at < now()
  AND NOT EXISTS (SELECT 1 FROM mails m
                  WHERE m.status = 'sending' AND m.status_detail->>'worker' = l.worker)
RETURNING l.worker;
