"""API keys: generated once, shown once, stored as a SHA-256 digest.

A key is 32 random bytes, so a fast digest is as safe as a slow password hash
here and keeps authentication to one indexed look-up.
"""

from __future__ import annotations

import hashlib
import secrets

KEY_PREFIX = "mr_"
DISPLAY_PREFIX_LENGTH = len(KEY_PREFIX) + 6


def new_api_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def key_digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


def display_prefix(key: str) -> str:
    """The part of a key safe to show in listings and logs."""
    return key[:DISPLAY_PREFIX_LENGTH]


# What a key may do: "send" creates mail, "read" reads it. New keys get both
# unless ``create-key --scope`` narrows them.
SCOPES = ("send", "read")
