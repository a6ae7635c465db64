-- What each API key may do: 'send' (POST /v1/mails) and 'read' (GET /v1/mails/<id>).
-- Existing keys keep doing both.

ALTER TABLE api_keys ADD COLUMN scopes text[] NOT NULL DEFAULT '{send,read}';
