-- Scheduling, expiry, tags and metadata on mails; idempotency keys; campaigns,
-- CDP workflows and the raw CDP events.

ALTER TABLE tenants ADD COLUMN webhook_secret text;

ALTER TABLE mails
    ADD COLUMN source        text NOT NULL DEFAULT 'api'
                             CHECK (source IN ('api', 'campaign', 'cdp')),
    ADD COLUMN send_at       timestamptz,
    ADD COLUMN expires_at    timestamptz,
    ADD COLUMN tags          text[] NOT NULL DEFAULT '{}',
    ADD COLUMN metadata      jsonb NOT NULL DEFAULT '{}'::jsonb,
    ADD COLUMN campaign_key  text;
CREATE INDEX mails_tenant_status_created_idx ON mails (tenant_id, status, created_at);
CREATE INDEX mails_tags_idx ON mails USING gin (tags);

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
