"""What the admin commands do to the database, apart from how they print it.

``inspection`` holds streams and tenants in the outbox (pause, resume) and gathers
the pipeline's status; ``replay`` puts finished mails back through the outbox (replay,
dlq retry) and discards dead ones, in batches; ``retention`` purges finished mails and
reports what became of a window's mails. Mails are selected with
``shared.store.outbox.MailSelection``; who did what is recorded with
``shared.store.outbox.record_admin_action``.
"""
