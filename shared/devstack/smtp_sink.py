"""A real SMTP server (aiosmtpd) that keeps what it receives: in memory and, if
given a folder, as one ``.eml`` file per message.

Used by ``mailroom up`` as the local mail sink and by the tests as the SMTP
server the worker delivers to.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from dataclasses import dataclass
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller

# aiosmtpd logs every connection at INFO on "mail.log"; in a process that also runs a
# command whose stderr is its answer (the tests run CLIs in-process), that chatter would
# interleave with it. Warnings and errors still show.
logging.getLogger("mail.log").setLevel(logging.WARNING)


@dataclass(frozen=True)
class ReceivedMail:
    envelope_from: str
    envelope_to: list[str]
    data: bytes

    def parsed(self) -> EmailMessage:
        return message_from_bytes(self.data, policy=policy.default)


class _Handler:
    def __init__(self, folder: Path | None) -> None:
        self.folder = folder
        self.received: list[ReceivedMail] = []
        self.lock = threading.Condition()

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        mail = ReceivedMail(envelope.mail_from, list(envelope.rcpt_tos), bytes(envelope.content))
        if self.folder is not None:
            name = f"{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:8]}.eml"
            (self.folder / name).write_bytes(mail.data)
        with self.lock:
            self.received.append(mail)
            self.lock.notify_all()
        return f"250 OK queued as {uuid.uuid4().hex[:12]}"


class SmtpSink:
    """Start with ``start()``; ``url`` is what MAILROOM_SMTP_URL should say."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, folder: Path | None = None) -> None:
        if folder is not None:
            folder.mkdir(parents=True, exist_ok=True)
        self._handler = _Handler(folder)
        self._controller = Controller(
            self._handler, hostname=host, port=port or _free_port(host),
            enable_SMTPUTF8=True, data_size_limit=50 * 1024 * 1024,
        )  # fmt: skip

    @property
    def url(self) -> str:
        return f"smtp://{self._controller.hostname}:{self._controller.port}"

    @property
    def received(self) -> list[ReceivedMail]:
        with self._handler.lock:
            return list(self._handler.received)

    def wait_for(self, count: int, timeout: float) -> list[ReceivedMail]:
        """Block until at least *count* mails arrived or *timeout* passed."""
        deadline = time.monotonic() + timeout
        with self._handler.lock:
            while len(self._handler.received) < count:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._handler.lock.wait(remaining)
            return list(self._handler.received)

    def start(self) -> SmtpSink:
        self._controller.start()
        return self

    def stop(self) -> None:
        self._controller.stop()


def _free_port(host: str) -> int:
    import socket  # noqa: PLC0415

    with socket.socket() as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])
