"""Signed one-click unsubscribe tokens: the worker signs, the API verifies.

A token names a tenant, a mail and a recipient, and is
``<payload>.<signature>``, both base64url without padding: the payload is a
version byte, the tenant id and mail id (16 bytes each) and the recipient's
address in UTF-8; the signature is HMAC-SHA256 over a fixed context string and
the payload with ``MAILROOM_UNSUBSCRIBE_SECRET``, truncated to 128 bits. The
token is URL-safe, so it is used as a path segment as it is.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import uuid
from dataclasses import dataclass

VERSION = 1
_CONTEXT = b"mailroom-unsubscribe-v1\x00"
_SIGNATURE_BYTES = 16
MAX_TOKEN_LENGTH = 1024


class UnsubscribeSecretMissing(RuntimeError):
    """Unsubscribe links are needed but MAILROOM_UNSUBSCRIBE_SECRET is not set."""

    def __init__(self) -> None:
        super().__init__(
            "MAILROOM_UNSUBSCRIBE_SECRET is not set: campaign mails need it for their"
            " one-click List-Unsubscribe link (set the same value for the API and the worker)"
        )


@dataclass(frozen=True)
class UnsubscribeToken:
    tenant_id: uuid.UUID
    mail_id: uuid.UUID
    email: str


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode("ascii").rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _signature(secret: str, payload: bytes) -> bytes:
    if not secret:
        raise UnsubscribeSecretMissing()
    digest = hmac.new(secret.encode("utf-8"), _CONTEXT + payload, hashlib.sha256).digest()
    return digest[:_SIGNATURE_BYTES]


def sign(secret: str, tenant_id: uuid.UUID, mail_id: uuid.UUID, email: str) -> str:
    """The token for *email* of *mail_id* (raises UnsubscribeSecretMissing without a secret)."""
    payload = bytes([VERSION]) + tenant_id.bytes + mail_id.bytes + email.encode("utf-8")
    return f"{_b64(payload)}.{_b64(_signature(secret, payload))}"


def verify(secret: str, token: str) -> UnsubscribeToken | None:
    """What a genuine token names; None for anything else (malformed, forged, altered)."""
    if len(token) > MAX_TOKEN_LENGTH or token.count(".") != 1 or not token.isascii():
        return None
    encoded_payload, encoded_signature = token.split(".")
    try:
        payload, signature = _unb64(encoded_payload), _unb64(encoded_signature)
        genuine = hmac.compare_digest(signature, _signature(secret, payload))
        if not genuine or len(payload) <= 33 or payload[0] != VERSION:
            return None
        email = payload[33:].decode("utf-8")
    except (binascii.Error, ValueError):  # UnicodeDecodeError is a ValueError
        return None
    return UnsubscribeToken(uuid.UUID(bytes=payload[1:17]), uuid.UUID(bytes=payload[17:33]), email)
