"""Signed one-click unsubscribe tokens (shared.unsubscribe_tokens), without any server."""

from __future__ import annotations

import hashlib
import string
import uuid
from urllib.parse import quote

import pytest
from hypothesis import given
from hypothesis import strategies as st
from itsdangerous import Signer

from shared import unsubscribe_tokens
from shared.unsubscribe_tokens import UnsubscribeToken, sign, verify, verify_with_secrets

SECRET = "test-unsubscribe-secret-0123456789"
OTHER_SECRET = "another-secret-0123456789"
URL_SAFE_CHARACTERS = frozenset(string.ascii_letters + string.digits + "-_.")

# Made by the hand-written HMAC implementation this module had before itsdangerous:
# such links are in mails already sent and must keep working.
LEGACY_SECRET = "legacy-unsubscribe-secret-0123456789"
LEGACY_TOKEN = (
    "AQ-MfS47Gkxdnm96i5wNHi9qGyw9Tl9Ke4ydDh8qO0xdWm_Dq0BleGFtcGxlLm9yZw.xA4KloMCxauE886MbjRGPQ"
)
LEGACY_NAMES = UnsubscribeToken(
    uuid.UUID("0f8c7d2e-3b1a-4c5d-9e6f-7a8b9c0d1e2f"),
    uuid.UUID("6a1b2c3d-4e5f-4a7b-8c9d-0e1f2a3b4c5d"),
    "Zoë@example.org",
)

addresses = st.one_of(st.emails(), st.text(min_size=1, max_size=80))
secrets = st.text(min_size=1, max_size=64)


def single_character_tampers(token: str) -> st.SearchStrategy[str]:
    """*token* with one character replaced by any other (URL-safe or not)."""
    replacements = st.one_of(st.sampled_from(sorted(URL_SAFE_CHARACTERS)), st.characters())
    return (
        st.tuples(st.integers(0, len(token) - 1), replacements)
        .filter(lambda change: token[change[0]] != change[1])
        .map(lambda change: token[: change[0]] + change[1] + token[change[0] + 1 :])
    )


@given(st.uuids(), st.uuids(), addresses)
def test_any_token_round_trips_and_is_url_safe(
    tenant_id: uuid.UUID, mail_id: uuid.UUID, email: str
) -> None:
    token = sign(SECRET, tenant_id, mail_id, email)
    assert verify(SECRET, token) == UnsubscribeToken(tenant_id, mail_id, email)
    assert set(token) <= URL_SAFE_CHARACTERS and quote(token, safe="") == token
    assert not token.startswith("."), "a leading dot is refused by many web servers' rules"


@given(st.uuids(), st.uuids(), addresses, st.data())
def test_any_single_character_tamper_is_rejected(
    tenant_id: uuid.UUID, mail_id: uuid.UUID, email: str, data: st.DataObject
) -> None:
    token = sign(SECRET, tenant_id, mail_id, email)
    assert verify(SECRET, data.draw(single_character_tampers(token))) is None


@given(st.uuids(), st.uuids(), addresses, secrets.filter(lambda s: s != SECRET))
def test_a_token_signed_with_another_secret_is_rejected(
    tenant_id: uuid.UUID, mail_id: uuid.UUID, email: str, other_secret: str
) -> None:
    assert verify(SECRET, sign(other_secret, tenant_id, mail_id, email)) is None


@given(st.text(max_size=200))
def test_arbitrary_text_is_not_a_token(text: str) -> None:
    assert verify(SECRET, text) is None


def test_malformed_and_truncated_tokens_are_rejected() -> None:
    token = sign(SECRET, uuid.uuid4(), uuid.uuid4(), "x@example.org")
    payload, signature = token.split(".")
    for malformed in (
        "", ".", "a.b", "a.b.c", "%%%.%%%", f"{payload}.{signature[:-1]}", f"{payload}.",
        token + "A", f"{payload}.{signature}.{signature}", f"{payload}=.{signature}",
    ):  # fmt: skip
        assert verify(SECRET, malformed) is None, malformed
    long_address = "a" * unsubscribe_tokens.MAX_TOKEN_LENGTH + "@example.org"
    assert verify(SECRET, sign(SECRET, uuid.uuid4(), uuid.uuid4(), long_address)) is None


def test_another_spelling_of_the_same_signature_bytes_is_rejected() -> None:
    """base64 ignores the last character's unused bits: only the canonical spelling counts."""
    token = sign(SECRET, uuid.uuid4(), uuid.uuid4(), "x@example.org")
    alphabet = string.ascii_uppercase + string.ascii_lowercase + string.digits + "-_"
    last = alphabet.index(token[-1])
    # 32 signature bytes in 43 characters leave the last character's 2 low bits unused.
    same_bytes = alphabet[last ^ 1]
    assert verify(SECRET, token[:-1] + same_bytes) is None


def test_new_tokens_are_itsdangerous_signatures_of_reasonable_length() -> None:
    tenant_id, mail_id = uuid.uuid4(), uuid.uuid4()
    token = sign(SECRET, tenant_id, mail_id, "bob@example.org")
    signer = Signer(SECRET, salt=unsubscribe_tokens.SALT, digest_method=hashlib.sha256)
    assert signer.unsign(token) == token.split(".")[0].encode()
    # 16 + 16 + 15 payload bytes in 63 characters, a dot, 32 signature bytes in 43.
    assert len(token) == 107
    # The longest address a campaign recipient may have (320 characters) still fits.
    longest = "a" * 308 + "@example.org"
    assert verify(SECRET, sign(SECRET, tenant_id, mail_id, longest)) is not None


def test_a_token_from_before_itsdangerous_still_verifies() -> None:
    assert verify(LEGACY_SECRET, LEGACY_TOKEN) == LEGACY_NAMES
    assert verify_with_secrets((SECRET, LEGACY_SECRET), LEGACY_TOKEN) == LEGACY_NAMES
    assert verify(SECRET, LEGACY_TOKEN) is None


@given(st.data())
def test_any_single_character_tamper_of_a_legacy_token_is_rejected(data: st.DataObject) -> None:
    assert verify(LEGACY_SECRET, data.draw(single_character_tampers(LEGACY_TOKEN))) is None


def test_rotation_accepts_tokens_of_every_listed_secret_and_signs_with_the_current() -> None:
    tenant_id, mail_id = uuid.uuid4(), uuid.uuid4()
    names = UnsubscribeToken(tenant_id, mail_id, "bob@example.org")
    old_token = sign(OTHER_SECRET, tenant_id, mail_id, "bob@example.org")
    new_token = sign(SECRET, tenant_id, mail_id, "bob@example.org")
    assert verify_with_secrets((SECRET, OTHER_SECRET), old_token) == names
    assert verify_with_secrets((SECRET, OTHER_SECRET), new_token) == names
    assert verify_with_secrets((SECRET,), old_token) is None
    assert verify_with_secrets(("third-secret-0123456789",), new_token) is None


def test_a_missing_secret_is_an_error_not_a_forgeable_key() -> None:
    token = sign(SECRET, uuid.uuid4(), uuid.uuid4(), "x@example.org")
    with pytest.raises(unsubscribe_tokens.UnsubscribeSecretMissing):
        sign("", uuid.uuid4(), uuid.uuid4(), "x@example.org")
    with pytest.raises(unsubscribe_tokens.UnsubscribeSecretMissing):
        verify("", token)
    with pytest.raises(unsubscribe_tokens.UnsubscribeSecretMissing):
        verify_with_secrets((SECRET, ""), token)
    with pytest.raises(unsubscribe_tokens.UnsubscribeSecretMissing):
        verify_with_secrets((), token)
    with pytest.raises(TypeError):
        verify_with_secrets(SECRET, token)
