"""Real API, relay and worker processes for end-to-end tests.

Each process is started by the test, stopped by its own pid, and logs to a
file that is printed when a test fails.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BIN = Path(sys.executable).parent
ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Child:
    name: str
    process: subprocess.Popen[bytes]
    log: Path

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        return int(self.process.returncode)

    def kill(self) -> None:
        """SIGKILL, to this process only, by its pid."""
        os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait(10)

    def kill_group(self) -> None:
        """SIGKILL to this process and its children (a Celery worker's pool), by its
        process group, which the test created for it (start_new_session)."""
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(10)


@dataclass
class Processes:
    env: dict[str, str]
    folder: Path
    children: list[Child] = field(default_factory=list)

    def start(self, name: str, *argv: str, extra_env: dict[str, str] | None = None) -> Child:
        log = self.folder / f"{name}-{len(self.children)}.log"
        env = {**os.environ, **self.env, **(extra_env or {}), "PYTHONUNBUFFERED": "1"}
        handle = log.open("wb")
        process = subprocess.Popen(
            list(argv), env=env, stdout=handle, stderr=subprocess.STDOUT, cwd=ROOT,
            start_new_session=True,
        )  # fmt: skip
        child = Child(name, process, log)
        self.children.append(child)
        return child

    def cli(self, command: str, *args: str) -> str:
        result = subprocess.run(
            [str(BIN / command), *args], env={**os.environ, **self.env},
            capture_output=True, text=True, timeout=60, check=True,
        )  # fmt: skip
        return result.stdout

    def api(self, port: int, workers: int = 1) -> Child:
        child = self.start(
            "api", str(BIN / "ingest-api"), "serve", "--bind", f"127.0.0.1:{port}",
            "--workers", str(workers),
        )  # fmt: skip
        wait_until(lambda: http("GET", f"http://127.0.0.1:{port}/healthz")[0] == 200, 30, child)
        return child

    def relay(self, extra_env: dict[str, str] | None = None) -> Child:
        return self.start("relay", str(BIN / "outbox-relay"), "run", extra_env=extra_env)

    def worker(self, concurrency: int = 1) -> Child:
        return self.start("worker", str(BIN / "mail-worker"), "run", f"--concurrency={concurrency}")

    def environment(self) -> dict[str, str]:
        return {**os.environ, **self.env}

    def stop_all(self) -> None:
        for child in reversed(self.children):
            child.stop()

    def logs(self) -> str:
        return "\n".join(
            f"--- {c.name} (pid {c.process.pid}) ---\n{c.log.read_text(errors='replace')[-4000:]}"
            for c in self.children
        )


def http(
    method: str, url: str, body: Any = None, headers: dict[str, str] | None = None
) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    if data is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=15) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"null")
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return 0, None


def wait_until(condition: Any, timeout: float, child: Child | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        if child is not None and child.process.poll() is not None:
            raise AssertionError(f"{child.name} exited with {child.process.returncode}")
        time.sleep(0.1)
    raise AssertionError(f"condition not met within {timeout} s")
