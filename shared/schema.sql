-- The declared schema: what the database must look like after every migration
-- in shared/migrations has run. tests/test_migrations.py compares the two, so a
-- migration that drifts from this file (or this file from the migrations) fails.

CREATE TABLE tenants (
    id              uuid PRIMARY KEY,
    name            text NOT NULL UNIQUE,
    sender_domains  text[] NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    webhook_secret  text
);

-- Keys are random and long, so a SHA-256 digest is enough to store them safely;
-- the clear key is shown once, at creation, and never stored.
CREATE TABLE api_keys (
    id          uuid PRIMARY KEY,
    tenant_id   uuid NOT NULL REFERENCES tenants (id),
    key_prefix  text NOT NULL,
    key_hash    bytea NOT NULL UNIQUE,
    created_at  timestamptz NOT NULL DEFAULT now(),
    revoked_at  timestamptz
);

CREATE TABLE mails (
    id          uuid PRIMARY KEY,
    tenant_id   uuid NOT NULL REFERENCES tenants (id),
    stream      text NOT NULL DEFAULT 'transactional'
                CHECK (stream IN ('transactional', 'campaign')),
    request     jsonb NOT NULL,
    status      text NOT NULL CHECK (status IN (
                    'scheduled', 'accepted', 'queued', 'sending', 'sent', 'retrying',
                    'failed', 'dead', 'expired', 'cancelled', 'suppressed', 'discarded')),
    attempts    integer NOT NULL DEFAULT 0,
    last_error  text,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    source        text NOT NULL DEFAULT 'api'
                  CHECK (source IN ('api', 'campaign', 'cdp')),
    send_at       timestamptz,
    expires_at    timestamptz,
    tags          text[] NOT NULL DEFAULT '{}',
    metadata      jsonb NOT NULL DEFAULT '{}'::jsonb,
    campaign_key  text,
    -- Why the mail is in its status: the detail of the event its last change recorded.
    status_detail jsonb NOT NULL DEFAULT '{}'::jsonb
);
CREATE INDEX mails_tenant_created_idx ON mails (tenant_id, created_at);
CREATE INDEX mails_tenant_status_created_idx ON mails (tenant_id, status, created_at);
CREATE INDEX mails_tags_idx ON mails USING gin (tags);
-- Admin queries select across tenants by status and age (list, replay, dlq, purge, report);
-- replay and discard walk a window in (created_at, id) order, batch after batch.
CREATE INDEX mails_status_created_idx ON mails (status, created_at);
CREATE INDEX mails_created_id_idx ON mails (created_at, id);

-- A row here means "this mail still has to reach a worker". The relay publishes
-- due rows and pushes available_at forward by the visibility timeout (a lease
-- that expires by itself); the worker deletes the row when it picks the mail up.
CREATE TABLE outbox (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    mail_id         uuid NOT NULL UNIQUE REFERENCES mails (id),
    queue           text NOT NULL,
    available_at    timestamptz NOT NULL DEFAULT now(),
    dispatch_count  integer NOT NULL DEFAULT 0,
    created_at      timestamptz NOT NULL DEFAULT now()
);
-- The relay claims per queue, so a burst on one stream never delays another.
CREATE INDEX outbox_queue_available_at_idx ON outbox (queue, available_at);

-- Append-only history of each mail.
CREATE TABLE mail_events (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    mail_id     uuid NOT NULL REFERENCES mails (id),
    kind        text NOT NULL,
    detail      jsonb NOT NULL DEFAULT '{}'::jsonb,
    created_at  timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX mail_events_mail_idx ON mail_events (mail_id, id);
-- "Already replayed by this replay key": a rerun of a replay looks each candidate up here.
CREATE INDEX mail_events_replay_idx ON mail_events ((detail->>'replay'), mail_id)
    WHERE kind = 'replayed';

-- Except for retention: a transaction that sets mailroom.purge = 'on' (SET LOCAL,
-- only 'outbox-relay purge' does) may delete.
CREATE FUNCTION mail_events_refuse_change() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' AND current_setting('mailroom.purge', true) = 'on' THEN
        RETURN OLD;
    END IF;
    RAISE EXCEPTION 'mail_events is append-only';
END;
$$;

CREATE TRIGGER mail_events_append_only
    BEFORE UPDATE OR DELETE ON mail_events
    FOR EACH ROW EXECUTE FUNCTION mail_events_refuse_change();

-- A retried request with the same key gets the first answer back. The row is
-- inserted first in the ingest transaction, so a concurrent request with the
-- same key waits on the primary key until the first one commits or rolls back.
CREATE TABLE idempotency_keys (
    tenant_id     uuid NOT NULL REFERENCES tenants (id),
    key           text NOT NULL,
    request_hash  bytea NOT NULL,
    status_code   integer NOT NULL,
    response      jsonb NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, key)
);
CREATE INDEX idempotency_keys_created_idx ON idempotency_keys (created_at);

CREATE TABLE campaigns (
    tenant_id         uuid NOT NULL REFERENCES tenants (id),
    key               text NOT NULL,
    from_template     text NOT NULL,
    subject_template  text NOT NULL,
    text_template     text,
    html_template     text,
    reply_to          text,
    headers           jsonb NOT NULL DEFAULT '{}'::jsonb,
    tags              text[] NOT NULL DEFAULT '{}',
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, key),
    CHECK (text_template IS NOT NULL OR html_template IS NOT NULL)
);

CREATE TABLE workflows (
    id                uuid PRIMARY KEY,
    tenant_id         uuid NOT NULL,
    event_name        text NOT NULL,
    property_filters  jsonb NOT NULL DEFAULT '{}'::jsonb,
    campaign_key      text NOT NULL,
    created_at        timestamptz NOT NULL DEFAULT now(),
    FOREIGN KEY (tenant_id, campaign_key) REFERENCES campaigns (tenant_id, key)
);
CREATE INDEX workflows_tenant_event_idx ON workflows (tenant_id, event_name);

-- Every CDP event received, stored in the transaction that creates its mails,
-- also when no rule matched; message_id deduplicates the CDP's retries.
CREATE TABLE cdp_events (
    id           uuid PRIMARY KEY,
    tenant_id    uuid NOT NULL REFERENCES tenants (id),
    message_id   text NOT NULL,
    event_name   text,
    payload      jsonb NOT NULL,
    mail_ids     uuid[] NOT NULL DEFAULT '{}',
    response     jsonb NOT NULL,
    received_at  timestamptz NOT NULL DEFAULT now(),
    UNIQUE (tenant_id, message_id)
);

-- What each API key may do (migration 0003): 'send' and 'read'.
ALTER TABLE api_keys ADD COLUMN scopes text[] NOT NULL DEFAULT '{send,read}';
CREATE TABLE canaries (
    id            uuid PRIMARY KEY,
    queue         text NOT NULL,
    relay         text NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    published_at  timestamptz,
    received_at   timestamptz,
    worker        text
);
CREATE INDEX canaries_queue_received_idx ON canaries (queue, received_at);
CREATE INDEX canaries_created_idx ON canaries (created_at);

-- Per-tenant suppression list: addresses no mail is sent to. A permanent SMTP
-- refusal of a recipient ('hard_bounce'), a one-click unsubscribe ('unsubscribe')
-- or an API call ('manual') adds one; emails are stored lower-cased.
CREATE TABLE suppressions (
    tenant_id   uuid NOT NULL REFERENCES tenants (id),
    email       text NOT NULL CHECK (email = lower(email)),
    reason      text NOT NULL CHECK (reason IN ('hard_bounce', 'unsubscribe', 'manual')),
    detail      jsonb NOT NULL DEFAULT '{}'::jsonb,
    mail_id     uuid,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, email)
);

-- Status webhooks (migration 0007): registrations, and their deliveries enqueued
-- by a trigger on mail_events in the transaction that records the event.
CREATE TABLE webhooks (
    id          uuid PRIMARY KEY,
    tenant_id   uuid NOT NULL REFERENCES tenants (id),
    url         text NOT NULL,
    events      text[] NOT NULL,
    secret      text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    deleted_at  timestamptz
);
CREATE INDEX webhooks_tenant_idx ON webhooks (tenant_id) WHERE deleted_at IS NULL;

CREATE TABLE webhook_deliveries (
    id                uuid PRIMARY KEY,
    webhook_id        uuid NOT NULL REFERENCES webhooks (id),
    tenant_id         uuid NOT NULL REFERENCES tenants (id),
    mail_id           uuid NOT NULL REFERENCES mails (id),
    event             text NOT NULL,
    payload           jsonb NOT NULL,
    status            text NOT NULL DEFAULT 'pending'
                      CHECK (status IN ('pending', 'delivered', 'failed')),
    attempts          integer NOT NULL DEFAULT 0,
    available_at      timestamptz NOT NULL DEFAULT now(),
    dispatch_count    integer NOT NULL DEFAULT 0,
    last_status_code  integer,
    last_error        text,
    created_at        timestamptz NOT NULL DEFAULT now(),
    delivered_at      timestamptz
);
-- The relay's claim: due pending deliveries, oldest first.
CREATE INDEX webhook_deliveries_due_idx ON webhook_deliveries (available_at)
    WHERE status = 'pending';
CREATE INDEX webhook_deliveries_webhook_idx ON webhook_deliveries (webhook_id, created_at);

CREATE FUNCTION mail_events_enqueue_webhooks() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO webhook_deliveries (id, webhook_id, tenant_id, mail_id, event, payload)
    SELECT gen_random_uuid(), w.id, w.tenant_id, m.id, NEW.kind,
           jsonb_build_object(
               'type', NEW.kind,
               'mail_id', m.id,
               'created_at',
               to_char(NEW.created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'),
               'detail', NEW.detail,
               'tags', to_jsonb(m.tags),
               'metadata', m.metadata)
    FROM mails m JOIN webhooks w ON w.tenant_id = m.tenant_id
    WHERE m.id = NEW.mail_id AND w.deleted_at IS NULL AND NEW.kind = ANY (w.events);
    RETURN NULL;
END;
$$;

CREATE TRIGGER mail_events_webhooks
    AFTER INSERT ON mail_events
    FOR EACH ROW
    WHEN (NEW.kind IN ('sent', 'failed', 'dead', 'expired', 'suppressed', 'unsubscribed'))
    EXECUTE FUNCTION mail_events_enqueue_webhooks();

-- A pause holds a stream, a tenant, or both (NULL = any) in the outbox: the relay's
-- claim skips matching rows, so every relay honours a pause on its next poll.
CREATE TABLE relay_pauses (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    stream     text,
    tenant_id  uuid REFERENCES tenants (id),
    actor      text NOT NULL,
    reason     text,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX relay_pauses_scope_idx ON relay_pauses (
    COALESCE(stream, ''), COALESCE(tenant_id, '00000000-0000-0000-0000-000000000000'));

-- Who did what, when, with which arguments and result. Mail-level effects are also
-- recorded as mail_events; this log holds actions that touch no mail (pause) or
-- remove mails (purge).
CREATE TABLE admin_actions (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    action     text NOT NULL,
    actor      text NOT NULL,
    arguments  jsonb NOT NULL DEFAULT '{}'::jsonb,
    result     jsonb NOT NULL DEFAULT '{}'::jsonb,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX admin_actions_created_idx ON admin_actions (created_at);

-- The mail state machine, enforced by the database (issue 11).
--
-- mail_transitions holds shared/states.py's TRANSITIONS (a test keeps them equal). Every
-- statement that changes mails.status guards itself with mailroom_may_become(target), and
-- the statement trigger below refuses any change that is not a row of the table and
-- writes the mail_events row of every change, with mails.status_detail as its detail, in
-- the statement that made it. Creating a mail (INSERT) is not a change: its first event
-- is written by the ingest statement.

CREATE TABLE mail_transitions (
    from_status  text NOT NULL,
    to_status    text NOT NULL,
    PRIMARY KEY (from_status, to_status)
);

INSERT INTO mail_transitions (from_status, to_status) VALUES
    ('accepted', 'cancelled'),
    ('accepted', 'dead'),
    ('accepted', 'expired'),
    ('accepted', 'queued'),
    ('accepted', 'sending'),
    ('dead', 'accepted'),
    ('dead', 'discarded'),
    ('discarded', 'accepted'),
    ('failed', 'accepted'),
    ('queued', 'cancelled'),
    ('queued', 'dead'),
    ('queued', 'expired'),
    ('queued', 'sending'),
    ('retrying', 'cancelled'),
    ('retrying', 'dead'),
    ('retrying', 'expired'),
    ('retrying', 'sending'),
    ('scheduled', 'cancelled'),
    ('scheduled', 'dead'),
    ('scheduled', 'expired'),
    ('scheduled', 'queued'),
    ('sending', 'dead'),
    ('sending', 'expired'),
    ('sending', 'failed'),
    ('sending', 'retrying'),
    ('sending', 'sent'),
    ('sending', 'suppressed'),
    ('sent', 'accepted'),
    ('suppressed', 'accepted');

-- The "from" side of a compare-and-set into target.
CREATE FUNCTION mailroom_may_become(target text) RETURNS text[]
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT COALESCE(array_agg(from_status), '{}') FROM mail_transitions WHERE to_status = target
$$;

-- The one backoff (shared/backoff.py's backoff_ceiling): base * 2^step seconds, at most cap.
CREATE FUNCTION mailroom_backoff(base float8, step integer, cap float8) RETURNS interval
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT make_interval(secs => LEAST(base * power(2, GREATEST(step, 0)), cap))
$$;

-- One statement trigger for every UPDATE of mails: a status change that is not in
-- mail_transitions aborts the statement; each allowed change gets its event. A move
-- back to 'accepted' is only ever an operator's replay, recorded as 'replayed'.
CREATE FUNCTION mails_record_transitions() RETURNS trigger
LANGUAGE plpgsql
-- Transition tables have no statistics: left to itself the planner joins old and new
-- rows with a nested loop, quadratic in the rows one statement changes (40 s for
-- 20,000). Without nested loops it hashes them: linear.
SET enable_nestloop = off
AS $$
DECLARE
    illegal record;
BEGIN
    SELECT o.id, o.status AS from_status, n.status AS to_status INTO illegal
    FROM new_rows n JOIN old_rows o ON o.id = n.id
    WHERE n.status <> o.status
      AND NOT EXISTS (SELECT 1 FROM mail_transitions t
                      WHERE t.from_status = o.status AND t.to_status = n.status)
    LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'mail % may not move from % to %',
            illegal.id, illegal.from_status, illegal.to_status
            USING ERRCODE = 'check_violation';
    END IF;
    INSERT INTO mail_events (mail_id, kind, detail)
    SELECT n.id, CASE WHEN n.status = 'accepted' THEN 'replayed' ELSE n.status END,
           n.status_detail
    FROM new_rows n JOIN old_rows o ON o.id = n.id
    WHERE n.status <> o.status
    ORDER BY n.id;
    RETURN NULL;
END;
$$;

CREATE TRIGGER mails_transitions
    AFTER UPDATE ON mails
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION mails_record_transitions();

-- Worker leases (migration 0011): each worker process holds a row here and renews it
-- every few seconds. A mail in 'sending' whose worker's lease has lapsed was left by a
-- dead worker: the relay puts it back into the outbox within seconds instead of after
-- MAILROOM_SENDING_TIMEOUT. A mail whose worker has no row at all (a worker of an
-- older version) is left to the sending timeout.
CREATE TABLE worker_leases (
    worker      text PRIMARY KEY,  -- "<hostname>:<pid>", as in mails.status_detail->>'worker'
    renewed_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz NOT NULL
);

-- The rescue finds the mails in hand of a lapsed worker; only the few mails in
-- 'sending' are indexed, so the index stays small however many mails are stored.
CREATE INDEX mails_sending_worker_idx ON mails ((status_detail->>'worker'))
    WHERE status = 'sending';
