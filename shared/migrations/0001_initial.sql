-- The first schema: tenants, API keys, mails, the outbox and the event log.

CREATE TABLE tenants (
    id              uuid PRIMARY KEY,
    name            text NOT NULL UNIQUE,
    sender_domains  text[] NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now()
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
                    'failed', 'dead', 'expired', 'cancelled', 'suppressed')),
    attempts    integer NOT NULL DEFAULT 0,
    last_error  text,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX mails_tenant_created_idx ON mails (tenant_id, created_at);

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

CREATE FUNCTION mail_events_refuse_change() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'mail_events is append-only';
END;
$$;

CREATE TRIGGER mail_events_append_only
    BEFORE UPDATE OR DELETE ON mail_events
    FOR EACH ROW EXECUTE FUNCTION mail_events_refuse_change();
