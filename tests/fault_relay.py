"""A relay that stops between publish and COMMIT, so a test can SIGKILL it there.

Run as a script with the usual MAILROOM_* variables and FAULT_MARKER=<path>:
after the first successful publish it writes the marker and sleeps inside the
open claim transaction until it is killed.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from outbox_relay.publish import Publisher, SendMailMessage
from outbox_relay.relay import Relay
from shared.cli_support import settings_or_exit

_real_publish = Publisher.publish


def publish_then_hang(self: Publisher, message: SendMailMessage) -> str:
    _real_publish(self, message)
    Path(os.environ["FAULT_MARKER"]).write_text(str(message.mail_id))
    while True:  # inside the open claim transaction, until SIGKILL
        time.sleep(1)


if __name__ == "__main__":
    Publisher.publish = publish_then_hang  # type: ignore[method-assign]
    Relay(settings_or_exit("fault-relay", ["database_url", "broker_url"])).run()
