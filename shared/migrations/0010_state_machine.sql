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

-- Why the mail is in its status: the detail of the event its last change recorded.
ALTER TABLE mails ADD COLUMN status_detail jsonb NOT NULL DEFAULT '{}'::jsonb;

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
