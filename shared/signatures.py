"""Signed webhooks: ``X-Mailroom-Signature: t=<unix seconds>,v1=<hex>``.

``v1`` is the hex HMAC-SHA256, keyed with the shared secret, of
``"<t>." + raw body``. Signing the timestamp with the body lets the receiver
refuse old requests (replay protection) without keeping state. The header may
carry several ``v1`` values (one per secret while a secret is being rotated);
one matching value is enough. Used for incoming CDP events (the API verifies)
and for outgoing status webhooks (the worker signs): this module depends on
nothing but the standard library.
"""

from __future__ import annotations

import hashlib
import hmac

HEADER = "X-Mailroom-Signature"
SCHEME = "v1"
DEFAULT_TOLERANCE = 300  # seconds between the signature's timestamp and now, either way


class SignatureError(ValueError):
    """The signature is missing, malformed, wrong or too old; the message says which."""


def _digest(secret: str, timestamp: int, body: bytes) -> str:
    message = str(timestamp).encode() + b"." + body
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """The header value for *body* sent at *timestamp* (unix seconds)."""
    return f"t={timestamp},{SCHEME}={_digest(secret, timestamp, body)}"


def _parse(header: str) -> tuple[int, list[str]]:
    timestamp: int | None = None
    signatures: list[str] = []
    for item in header.split(","):
        name, _, value = item.strip().partition("=")
        if name == "t":
            if not value.isascii() or not value.isdigit() or len(value) > 12:
                raise SignatureError("the signature's timestamp is not unix seconds")
            timestamp = int(value)
        elif name == SCHEME:
            signatures.append(value)
    if timestamp is None or not signatures:
        raise SignatureError(f"the signature header must be 't=<unix seconds>,{SCHEME}=<hex>'")
    return timestamp, signatures


def verify(
    secret: str, header: str, body: bytes, now: float, tolerance: int = DEFAULT_TOLERANCE
) -> int:
    """Check *header* against *body*; return its timestamp, or raise SignatureError.

    The timestamp must be within *tolerance* seconds of *now*; every candidate
    signature is compared in constant time.
    """
    timestamp, signatures = _parse(header)
    if abs(now - timestamp) > tolerance:
        raise SignatureError(
            f"the signature's timestamp is more than {tolerance} s away from now;"
            " sign each delivery when it is sent"
        )
    expected = _digest(secret, timestamp, body).encode()
    matched = False
    for candidate in signatures:  # no early exit: the time does not tell which one matched
        matched |= hmac.compare_digest(expected, candidate.encode("utf-8", "replace"))
    if not matched:
        raise SignatureError("the signature does not match the body")
    return timestamp
