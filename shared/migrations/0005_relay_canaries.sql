-- Canaries: synthetic messages a relay sends through the broker to a worker
-- every few seconds, per queue, so a broken link shows within a minute.
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
