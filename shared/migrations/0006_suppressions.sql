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
