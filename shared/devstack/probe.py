"""Talking to the ingest API over HTTP, as a client would: readiness and key checks."""

from __future__ import annotations

import http.client
import time
from collections.abc import Callable

# A well-formed id no mail has: a valid key gets 404 for it, an unknown key 401.
_NO_SUCH_MAIL = "00000000-0000-0000-0000-000000000000"


class ProbeError(RuntimeError):
    """The API did not answer as expected."""


def _get(host: str, port: int, path: str, headers: dict[str, str], timeout: float) -> int:
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("GET", path, headers=headers)
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        conn.close()


def wait_until_ready(
    host: str, port: int, timeout: float, still_starting: Callable[[], None]
) -> None:
    """Poll ``GET /readyz`` until it answers 200.

    *still_starting* is called between attempts; it raises to give up early
    (when the API process has died, say).
    """
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        still_starting()
        try:
            status = _get(host, port, "/readyz", {}, timeout=2.0)
        except OSError as exc:
            last = f"{type(exc).__name__}: {exc}"
        else:
            if status == 200:
                return
            last = f"HTTP {status}"
        time.sleep(0.25)
    raise ProbeError(
        f"the API at http://{host}:{port} was not ready after {timeout:.0f} s ({last})"
    )


def key_is_accepted(host: str, port: int, key: str) -> bool:
    """Whether the API knows *key* (answers 404 for a mail that does not exist, not 401)."""
    status = _get(
        host, port, f"/v1/mails/{_NO_SUCH_MAIL}", {"Authorization": f"Bearer {key}"}, timeout=10.0
    )
    if status == 401:
        return False
    if status == 404:
        return True
    raise ProbeError(f"GET /v1/mails/<id> answered HTTP {status} while checking the API key")
