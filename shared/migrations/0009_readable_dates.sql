-- Before the API bounded dates to the years 2000..9000, "expires_at":
-- "9999-12-31T23:59:59-14:00" was stored as a time in the year 10000, which Python
-- cannot read: every read of that mail failed (the API answered 503, the admin
-- commands printed tracebacks). Such a mail was never meant to expire: no expiry.
UPDATE mails SET expires_at = NULL WHERE expires_at >= '9000-01-01T00:00:00Z';
