"""The mail state machine: every status a mail can be in and how it may move.

:data:`TRANSITIONS` is the one list of moves. Migration 0010 copies it into the table
``mail_transitions`` (``tests/test_state_machine.py`` holds the two equal); every
statement that changes a mail's status guards itself with
``mailroom_may_become(target)``, and a trigger refuses any other move and writes the
``mail_events`` row of each one. Each status below says which process moves a mail
out of it, and how.
"""

from __future__ import annotations

from enum import StrEnum


class MailStatus(StrEnum):
    SCHEDULED = "scheduled"
    """Accepted with a future ``send_at``; its outbox row is due then. The relay
    publishes it when it is due (→ queued), expires it past ``expires_at``
    (→ expired) or buries it when no publish got it picked up within the maximum
    age or dispatches (→ dead); the client may cancel it (→ cancelled)."""

    ACCEPTED = "accepted"
    """Committed with its outbox row (or replayed by an operator); waiting for the
    relay. The relay publishes it (→ queued) or buries it (→ dead, e.g. a broker
    down for a day); a worker may pick it up before the relay's 'queued' commit
    lands (→ sending); past ``expires_at`` the relay, or a worker at pickup,
    expires it (→ expired); the client may cancel it (→ cancelled)."""

    QUEUED = "queued"
    """Published to the broker at least once. A worker picks it up with the
    compare-and-set that deletes its outbox row (→ sending). Until then the relay
    republishes it after each lease and buries it at the dispatch limit or the
    maximum age (→ dead); past ``expires_at`` the relay, or a worker at pickup,
    expires it (→ expired); the client may still cancel it (→ cancelled)."""

    SENDING = "sending"
    """A worker picked it up (the relay's end-to-end acknowledgement); only that
    worker's send step moves it on: SMTP accepted it (→ sent), a permanent refusal
    or a mail that cannot be built safely (→ failed), every recipient suppressed
    (→ suppressed), a transient failure (→ retrying, or → dead at the attempt
    limit, or → expired if the next attempt would come too late). If that worker
    is lost, the relay does it: within seconds once the worker's lease has lapsed,
    else after the sending timeout (→ retrying, or → dead at the attempt limit).
    The client can no longer cancel it."""

    SENT = "sent"
    """The SMTP server accepted it. Final for the pipeline; only an operator's
    ``outbox-relay replay --include-sent`` sends it again (→ accepted)."""

    RETRYING = "retrying"
    """A transient failure: back in the outbox, due after the backoff (the broker
    holds nothing). The relay publishes it again and a worker picks it up
    (→ sending); the relay expires it (→ expired) or buries it (→ dead) like a
    queued mail; the client may cancel it (→ cancelled)."""

    FAILED = "failed"
    """A permanent failure (a 5xx for every recipient, or a mail that cannot be
    built safely). Final for the pipeline; an operator's ``outbox-relay replay``
    sends it again (→ accepted)."""

    DEAD = "dead"
    """Given up: too many attempts, or never picked up within the maximum age or
    dispatches. Final for the pipeline; an operator's ``outbox-relay replay`` or
    ``dlq retry`` sends it again (→ accepted), ``dlq discard`` gives it up for
    good with a reason (→ discarded)."""

    EXPIRED = "expired"
    """Not sent before ``expires_at``: never sent late. Nothing moves it on (an
    operator's replay names it only to report it skipped)."""

    CANCELLED = "cancelled"
    """Cancelled by the client before sending began. Nothing moves it on: the
    client's choice stands."""

    SUPPRESSED = "suppressed"
    """Every recipient is on the tenant's suppression list. Final for the pipeline;
    an operator's ``outbox-relay replay --status suppressed`` sends it again
    (→ accepted), e.g. after the entries were removed."""

    DISCARDED = "discarded"
    """A dead mail an operator chose not to send, with the reason. An operator's
    ``outbox-relay replay --status discarded`` can still send it (→ accepted)."""


FINAL_STATUSES = frozenset(
    {
        MailStatus.SENT,
        MailStatus.FAILED,
        MailStatus.DEAD,
        MailStatus.EXPIRED,
        MailStatus.CANCELLED,
        MailStatus.SUPPRESSED,
        MailStatus.DISCARDED,
    }
)

TRANSITIONS: dict[MailStatus, frozenset[MailStatus]] = {
    MailStatus.SCHEDULED: frozenset(
        {MailStatus.QUEUED, MailStatus.CANCELLED, MailStatus.EXPIRED, MailStatus.DEAD}
    ),
    # A worker may pick a mail up while the relay's 'queued' commit is still in
    # flight, so SENDING is reachable from ACCEPTED as well as from QUEUED.
    # DEAD from ACCEPTED: never published within the maximum age (a broker down for a day).
    MailStatus.ACCEPTED: frozenset(
        {
            MailStatus.QUEUED,
            MailStatus.SENDING,
            MailStatus.CANCELLED,
            MailStatus.EXPIRED,
            MailStatus.DEAD,
        }
    ),
    # Published but not picked up: sending has not begun, so a client may still cancel.
    MailStatus.QUEUED: frozenset(
        {MailStatus.SENDING, MailStatus.CANCELLED, MailStatus.DEAD, MailStatus.EXPIRED}
    ),
    # DEAD and EXPIRED from SENDING: a transient failure at the attempt limit or past
    # expires_at, or a worker lost while sending at the attempt limit.
    MailStatus.SENDING: frozenset(
        {
            MailStatus.SENT,
            MailStatus.FAILED,
            MailStatus.RETRYING,
            MailStatus.SUPPRESSED,
            MailStatus.DEAD,
            MailStatus.EXPIRED,
        }
    ),
    MailStatus.RETRYING: frozenset(
        {MailStatus.SENDING, MailStatus.DEAD, MailStatus.EXPIRED, MailStatus.CANCELLED}
    ),
    # Final for the pipeline. Only an operator moves a mail on from here:
    # 'outbox-relay replay' back to ACCEPTED (SENT only with --include-sent), and
    # 'outbox-relay dlq discard' from DEAD to DISCARDED. Expired and cancelled
    # mails are never sent: the first was time-sensitive, the second the client's choice.
    MailStatus.SENT: frozenset({MailStatus.ACCEPTED}),
    MailStatus.FAILED: frozenset({MailStatus.ACCEPTED}),
    MailStatus.DEAD: frozenset({MailStatus.ACCEPTED, MailStatus.DISCARDED}),
    MailStatus.EXPIRED: frozenset(),
    MailStatus.CANCELLED: frozenset(),
    MailStatus.SUPPRESSED: frozenset({MailStatus.ACCEPTED}),
    MailStatus.DISCARDED: frozenset({MailStatus.ACCEPTED}),
}

# What 'outbox-relay replay' takes when --status is not given.
REPLAY_BY_DEFAULT = (MailStatus.DEAD, MailStatus.FAILED)


def statuses_that_may_become(target: MailStatus) -> list[str]:
    """The ``from`` side of a compare-and-set into *target*."""
    return sorted(status.value for status, targets in TRANSITIONS.items() if target in targets)
