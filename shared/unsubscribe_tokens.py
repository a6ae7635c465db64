"""Signed one-click unsubscribe tokens: the worker signs, the API verifies.

A token names a tenant, a mail and a recipient, and is ``<payload>.<signature>``,
both base64url without padding, so it is used as a URL path segment as it is.
The payload is the tenant id and mail id (16 bytes each) and the recipient's
address in UTF-8. The signature is itsdangerous's :class:`~itsdangerous.Signer`
(HMAC-SHA256 over the encoded payload, key derived from
``MAILROOM_UNSUBSCRIBE_SECRET`` and the salt ``mailroom.unsubscribe``).

Tokens do not expire: a link in a mail sent years ago still unsubscribes.

Rotating the secret: :func:`verify_with_secrets` takes the current secret first
and the previous ones after it, and accepts a token signed with any of them;
:func:`sign` always signs with the one secret it is given (the current one).

Tokens of the first format (a version byte in the payload and a truncated
HMAC-SHA256 over a context string, written by hand before itsdangerous) are in
mails already sent, so they still verify; new tokens are never issued in it.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

from itsdangerous import Signer

SALT = "mailroom.unsubscribe"
MAX_TOKEN_LENGTH = 1024
_UUID_BYTES = 16
_IDS_BYTES = 2 * _UUID_BYTES

_LEGACY_VERSION = 1
_LEGACY_CONTEXT = b"mailroom-unsubscribe-v1\x00"
_LEGACY_SIGNATURE_BYTES = 16


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
    """The bytes *text* encodes; ValueError unless it is their one canonical encoding.

    base64 ignores the unused low bits of the last character, so without the
    re-encoding check several spellings of one signature would all verify.
    """
    data = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    if _b64(data) != text:
        raise ValueError("not canonical base64url")
    return data


def _signer(secrets: Sequence[str]) -> Signer:
    # itsdangerous signs with the last key and tries the last one first: the current secret.
    return Signer(list(reversed(secrets)), salt=SALT, digest_method=hashlib.sha256)


def _checked_secrets(secrets: Sequence[str]) -> Sequence[str]:
    if isinstance(secrets, str):
        raise TypeError("secrets must be a sequence of secrets, not one string")
    # An empty secret would make the HMAC key public: anyone could forge tokens.
    if not secrets or not all(secrets):
        raise UnsubscribeSecretMissing()
    return secrets


def _decode_payload(payload: bytes) -> UnsubscribeToken | None:
    if len(payload) <= _IDS_BYTES:
        return None
    try:
        email = payload[_IDS_BYTES:].decode("utf-8")
    except UnicodeDecodeError:
        return None
    return UnsubscribeToken(
        uuid.UUID(bytes=payload[:_UUID_BYTES]),
        uuid.UUID(bytes=payload[_UUID_BYTES:_IDS_BYTES]),
        email,
    )


def sign(secret: str, tenant_id: uuid.UUID, mail_id: uuid.UUID, email: str) -> str:
    """The token for *email* of *mail_id* (raises UnsubscribeSecretMissing without a secret)."""
    signer = _signer(_checked_secrets((secret,)))
    payload = _b64(tenant_id.bytes + mail_id.bytes + email.encode("utf-8"))
    return signer.sign(payload).decode("ascii")


def verify(secret: str, token: str) -> UnsubscribeToken | None:
    """What a genuine token names; None for anything else (malformed, forged, altered)."""
    return verify_with_secrets((secret,), token)


def verify_with_secrets(secrets: Sequence[str], token: str) -> UnsubscribeToken | None:
    """Like :func:`verify`, accepting a token signed with any of *secrets* (current first)."""
    checked = _checked_secrets(secrets)
    if len(token) > MAX_TOKEN_LENGTH or token.count(".") != 1:
        return None
    encoded_payload, encoded_signature = token.split(".")
    try:  # only the canonical base64url spelling: no other characters, no unused bits set
        payload, signature = _unb64(encoded_payload), _unb64(encoded_signature)
    except (binascii.Error, ValueError):
        return None
    # itsdangerous signs the encoded payload, the text before the dot.
    if _signer(checked).verify_signature(encoded_payload, encoded_signature):
        return _decode_payload(payload)
    return _verify_legacy_token(checked, payload, signature)


def _legacy_signature(secret: str, payload: bytes) -> bytes:
    digest = hmac.new(secret.encode("utf-8"), _LEGACY_CONTEXT + payload, hashlib.sha256)
    return digest.digest()[:_LEGACY_SIGNATURE_BYTES]


# Kept only so that links in mails sent before the itsdangerous format still unsubscribe.
def _verify_legacy_token(
    secrets: Sequence[str], payload: bytes, signature: bytes
) -> UnsubscribeToken | None:
    genuine = any(
        hmac.compare_digest(signature, _legacy_signature(secret, payload)) for secret in secrets
    )
    if not genuine or not payload or payload[0] != _LEGACY_VERSION:
        return None
    return _decode_payload(payload[1:])
