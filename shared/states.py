"""The mail state machine: every status a mail can be in and how it may move.

Each transition is written as a compare-and-set in SQL (``WHERE status = …``);
this module is the one list a reader checks those guards against.
"""

from __future__ import annotations

from enum import StrEnum


class MailStatus(StrEnum):
    SCHEDULED = "scheduled"  # accepted, held until send_at
    ACCEPTED = "accepted"  # committed with its outbox row; waiting for the relay
    QUEUED = "queued"  # published to the broker at least once
    SENDING = "sending"  # a worker picked it up (the relay's end-to-end acknowledgement)
    SENT = "sent"  # the SMTP server accepted it
    RETRYING = "retrying"  # a transient failure; back in the outbox for later
    FAILED = "failed"  # a permanent failure
    DEAD = "dead"  # gave up after too many attempts; replayable by an operator
    EXPIRED = "expired"  # not sent before expires_at; never sent late
    CANCELLED = "cancelled"  # cancelled by the client before sending began
    SUPPRESSED = "suppressed"  # every recipient is on the suppression list
    DISCARDED = "discarded"  # a dead mail an operator chose not to send, with the reason


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


def can_move(current: MailStatus, target: MailStatus) -> bool:
    return target in TRANSITIONS[current]


def statuses_that_may_become(target: MailStatus) -> list[str]:
    """The ``from`` side of a compare-and-set into *target*."""
    return sorted(status.value for status, targets in TRANSITIONS.items() if target in targets)
