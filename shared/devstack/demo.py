"""The demo tenant of ``mailroom up`` and its API key.

The clear key is printed once by ``ingest-api create-key``; ``mailroom up``
keeps it in the data folder (mode 0600) so that a restart shows the same key.
The apps are run as commands, never imported: ``shared`` must not depend on them.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from shared.db import connect
from shared.devstack.processes import Supervisor, console_script
from shared.store import NotFound
from shared.store.outbox import find_tenant

TENANT = "demo"
SENDER_DOMAIN = "example.com"
SENDER = f"demo@{SENDER_DOMAIN}"
KEY_FILE_NAME = "demo-api-key"


class BootstrapError(RuntimeError):
    """A setup command failed; the message names it and where its log is."""


def _check(name: str, result: subprocess.CompletedProcess[str], supervisor: Supervisor) -> str:
    if result.returncode != 0:
        raise BootstrapError(
            f"{name} failed with exit code {result.returncode};"
            f" see {supervisor.log_dir / (name.replace(' ', '-') + '.log')}"
        )
    return result.stdout


def migrate(supervisor: Supervisor) -> str:
    """Apply pending migrations; return what ``outbox-relay migrate`` said."""
    result = supervisor.run_once("migrate", [console_script("outbox-relay"), "migrate"])
    lines = _check("migrate", result, supervisor).strip().splitlines()
    return lines[-1] if lines else ""


def ensure_tenant(supervisor: Supervisor, database_url: str) -> bool:
    """Create the demo tenant unless it exists; True when it was created now."""
    with connect(database_url) as conn:
        try:
            find_tenant(conn, TENANT)
        except NotFound:
            pass
        else:
            return False
    result = supervisor.run_once(
        "create-tenant",
        [console_script("ingest-api"), "create-tenant", TENANT, "--sender-domain", SENDER_DOMAIN],
    )
    _check("create-tenant", result, supervisor)
    return True


def create_key(supervisor: Supervisor, key_file: Path) -> str:
    """A new key for the demo tenant, written to *key_file* (mode 0600) before it is returned."""
    result = supervisor.run_once("create-key", [console_script("ingest-api"), "create-key", TENANT])
    lines = _check("create-key", result, supervisor).strip().splitlines()
    if not lines or not lines[-1].strip():
        raise BootstrapError("ingest-api create-key printed no key")
    key = lines[-1].strip()
    _write_private(key_file, key + "\n")
    return key


def read_key(key_file: Path) -> str | None:
    try:
        key = key_file.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return None
    return key or None


def _write_private(path: Path, text: str) -> None:
    """Write *text* to *path*, readable by its owner only, replacing it atomically."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, text.encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(temporary, path)
