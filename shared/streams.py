"""Streams: the two kinds of mail, kept apart from ingest to SMTP.

A mail's stream is chosen at ingest (``stream`` in the request; campaign and CDP
mail is always ``campaign``) and never changes. It decides:

- its broker queue, named after the stream (:attr:`Stream.queue`). The SQL that puts
  a mail back into the outbox (retry, lost-worker recovery, replay) writes
  ``queue = stream`` and relies on this; ``tests/test_state_machine.py`` holds it;
- the order in which a relay fills a batch (:data:`PUBLISH_ORDER`): a campaign burst
  never delays a password reset;
- the suppression rules at send time: a ``transactional`` mail may bypass
  unsubscribes (``bypass_unsubscribes``), a ``campaign`` mail never may, and only
  campaign mail carries the one-click ``List-Unsubscribe`` link;
- the scope of an operator's pause (``outbox-relay pause --stream``).
"""

from __future__ import annotations

from enum import StrEnum


class Stream(StrEnum):
    TRANSACTIONAL = "transactional"  # one mail to one person, triggered by what they did
    CAMPAIGN = "campaign"  # the same mail to many people: campaigns and CDP workflows

    @property
    def queue(self) -> str:
        """The broker queue (before ``MAILROOM_QUEUE_PREFIX``) and outbox ``queue`` value."""
        return self.value


# The order in which a relay fills a batch: transactional first.
PUBLISH_ORDER: tuple[Stream, ...] = (Stream.TRANSACTIONAL, Stream.CAMPAIGN)
