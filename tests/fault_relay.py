"""A relay that stops between publish and COMMIT, so a test can SIGKILL it there.

Run as a script with the usual MAILROOM_* variables and FAULT_MARKER=<path>:
after the first successful publish it writes the marker and sleeps inside the
open claim transaction until it is killed.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path

from outbox_relay.publish import Publisher, TaskMessage
from outbox_relay.relay import Relay
from shared.cli_support import settings_or_exit
from shared.queues import SEND_MAILS_TASK

_real_publish = Publisher.publish


def publish_then_hang(self: Publisher, messages: Sequence[TaskMessage]) -> None:
    _real_publish(self, messages)
    if not any(m.task == SEND_MAILS_TASK for m in messages):
        return
    Path(os.environ["FAULT_MARKER"]).write_text(str(messages[0].object_ids[0]))
    while True:  # inside the open claim transaction, until SIGKILL
        time.sleep(1)


if __name__ == "__main__":
    Publisher.publish = publish_then_hang  # type: ignore[method-assign]
    Relay(settings_or_exit("fault-relay", ["database_url", "broker_url"])).run()
