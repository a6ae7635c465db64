"""The child processes of ``mailroom up``: the three apps and their one-shot commands.

Each child runs in its own process group, so a Ctrl-C in the terminal reaches
only ``mailroom up``, which then stops the children in order, and so that a
child's own children (gunicorn and Celery workers) can be killed with it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import click


class ScriptNotFoundError(RuntimeError):
    """A console script is missing from this environment."""


def console_script(name: str) -> Path:
    """The console script installed next to this interpreter (works without activating a venv)."""
    path = Path(sys.executable).parent / name
    if not path.exists():
        raise ScriptNotFoundError(
            f"{name} is not installed next to {sys.executable};"
            " install mailroom in this environment"
        )
    return path


@dataclass
class Child:
    name: str
    process: subprocess.Popen[bytes]
    log_path: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def running(self) -> bool:
        return self.process.poll() is None

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


def _kill_group(pgid: int, signum: int) -> None:
    # ProcessLookupError: the group is empty, everyone in it has exited
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signum)


class Supervisor:
    """Starts children with one environment, logs each to ``<log_dir>/<name>.log``."""

    def __init__(self, env: Mapping[str, str], log_dir: Path) -> None:
        self.env = dict(env)
        self.log_dir = log_dir
        self.children: list[Child] = []
        log_dir.mkdir(parents=True, exist_ok=True)

    def _open_log(self, name: str) -> tuple[Path, int]:
        path = self.log_dir / f"{name}.log"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        os.write(
            fd, f"--- {time.strftime('%Y-%m-%dT%H:%M:%S%z')} started by mailroom up\n".encode()
        )
        return path, fd

    def start(self, name: str, argv: Sequence[str | Path]) -> Child:
        """Start a long-running child; its output goes to its log file."""
        path, fd = self._open_log(name)
        try:
            process = subprocess.Popen(
                [str(arg) for arg in argv],
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=fd,
                stderr=subprocess.STDOUT,
                process_group=0,
            )
        finally:
            os.close(fd)  # the child has its own copy
        child = Child(name, process, path)
        self.children.append(child)
        return child

    def run_once(
        self, name: str, argv: Sequence[str | Path], timeout: float = 120.0
    ) -> subprocess.CompletedProcess[str]:
        """Run a one-shot command to the end; stdout is returned, stderr goes to its log."""
        _, fd = self._open_log(name)
        try:
            return subprocess.run(
                [str(arg) for arg in argv],
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=fd,
                text=True,
                timeout=timeout,
                check=False,
                process_group=0,
            )
        finally:
            os.close(fd)

    def first_exited(self) -> Child | None:
        """A child that is no longer running, if any."""
        return next((child for child in self.children if not child.running()), None)

    def stop_all(self, timeout: float = 10.0) -> None:
        """SIGTERM every child, wait up to *timeout* seconds, then SIGKILL what is left.

        A child's process group is killed after it, so that no gunicorn or
        Celery worker it started outlives it.
        """
        for child in reversed(self.children):
            if child.running():
                child.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for child in self.children:
            try:
                child.process.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                click.echo(
                    f"mailroom: {child.name} (pid {child.pid}) did not stop in {timeout:.0f} s;"
                    " killing it",
                    err=True,
                )
                _kill_group(child.pid, signal.SIGKILL)
                child.process.wait()
            _kill_group(child.pid, signal.SIGKILL)  # stragglers of a child that has exited
        self.children.clear()
