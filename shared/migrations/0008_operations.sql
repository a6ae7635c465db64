-- The relay admin CLI: an operator's 'discarded' status for dead letters, pauses
-- every relay honours, an audit trail of admin actions, and retention (purge).

-- A dead mail an operator decided not to send: final, kept, and out of the dead-letter queue.
ALTER TABLE mails DROP CONSTRAINT mails_status_check;
ALTER TABLE mails ADD CONSTRAINT mails_status_check CHECK (status IN (
    'scheduled', 'accepted', 'queued', 'sending', 'sent', 'retrying',
    'failed', 'dead', 'expired', 'cancelled', 'suppressed', 'discarded'));

-- Admin queries select across tenants by status and age (list, replay, dlq, purge, report);
-- replay and discard walk a window in (created_at, id) order, batch after batch.
CREATE INDEX mails_status_created_idx ON mails (status, created_at);
CREATE INDEX mails_created_id_idx ON mails (created_at, id);
-- "Already replayed by this replay key": a rerun of a replay looks each candidate up here.
CREATE INDEX mail_events_replay_idx ON mail_events ((detail->>'replay'), mail_id)
    WHERE kind = 'replayed';

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

-- mail_events stays append-only, except for retention: a transaction that sets
-- mailroom.purge = 'on' (SET LOCAL, only 'outbox-relay purge' does) may delete.
CREATE OR REPLACE FUNCTION mail_events_refuse_change() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' AND current_setting('mailroom.purge', true) = 'on' THEN
        RETURN OLD;
    END IF;
    RAISE EXCEPTION 'mail_events is append-only';
END;
$$;
