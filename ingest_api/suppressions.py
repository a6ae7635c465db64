"""What the suppression endpoints share: the address in a path and the list cursor."""

from __future__ import annotations

import base64
import binascii

from ingest_api.errors import refuse
from ingest_api.schemas.fields import unstorable
from ingest_api.schemas.suppression import MAX_EMAIL_LENGTH


def email_from_path(value: str) -> str:
    """The address as stored (lower-cased); one that cannot be on the list is a 404."""
    email = value.strip().lower()
    if not email or len(email) > MAX_EMAIL_LENGTH or unstorable(email):
        refuse(404, "this address is not suppressed")
    return email


def encode_cursor(email: str) -> str:
    return base64.urlsafe_b64encode(email.encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> str:
    try:
        email = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    except (ValueError, binascii.Error, UnicodeDecodeError):
        email = ""
    if not email or unstorable(email):
        refuse(400, "the cursor is not one this API returned", errors={"cursor": ["invalid"]})
    return email
