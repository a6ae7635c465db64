-- Status webhooks: URLs a tenant registers for mail events, and one delivery row
-- per (event, webhook). A trigger on mail_events enqueues the deliveries in the
-- transaction that records the event, so no code path can record an outcome and
-- forget its webhooks. The pending deliveries are their own outbox: the relay
-- claims due rows, publishes them and leases them, like the mail outbox.
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
