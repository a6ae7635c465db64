"""What the admin commands do to the database, apart from how they print it.

``filters`` selects mails the way an operator names them; ``pauses`` holds
streams and tenants in the outbox; ``replay`` puts finished mails back through
the outbox; ``dead_letters`` discards dead mails; ``retention`` purges finished
mails; ``reconciliation`` reports a window; ``audit`` records who did what.
"""
