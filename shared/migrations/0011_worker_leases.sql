-- Worker leases (issue 12): each worker process holds a row here and renews it every
-- few seconds. A mail in 'sending' whose worker's lease has lapsed was left by a dead
-- worker: the relay puts it back into the outbox within seconds instead of after
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
