"""Fields shared by the request schemas: mailboxes, header-safe text and bounded dates."""

from __future__ import annotations

import functools
import re
from datetime import UTC, datetime
from email.utils import getaddresses
from typing import Any

from email_validator import EmailNotValidError, validate_email
from marshmallow import ValidationError, fields

# The worker writes a non-ASCII display name as adjacent encoded words on one line
# (mail_worker/compose.py says why): 128 characters of 4-byte UTF-8 still fit in 998.
MAX_DISPLAY_NAME_LENGTH = 128
_SPACES = re.compile(" {2,}")
MAX_MAILBOX_LENGTH = 998  # a whole "Name <address>" must fit on one RFC 5322 line
# Dates a client may give (send_at, expires_at, list filters): far from datetime's
# limits, so converting any offset to UTC (and adding a TTL) can never overflow.
MIN_YEAR = 2000
MAX_YEAR = 9000

# Unicode category Cc (C0 controls including TAB, CR and LF; DEL; C1 controls
# including U+0085 NEL) plus Zl (U+2028) and Zp (U+2029): Python's email package
# splits header lines at several of these, and the rest break or confuse folding.
_HEADER_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def unstorable(value: Any) -> str | None:
    """Why *value* (parsed JSON) cannot be stored in a jsonb column, or None.

    PostgreSQL refuses NUL characters and unpaired surrogates in jsonb text;
    finding them here makes them a 422 instead of a failed COMMIT (503).
    """
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, str):
            if "\x00" in item:
                return "contains a NUL character (\\u0000)"
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                return "contains an unpaired surrogate (\\ud800-\\udfff)"
    return None


def header_text_problem(value: str) -> str | None:
    """Why *value* cannot go into a mail header, or None.

    The one rule for every header-bound text (subject, display names, header
    values, attachment file names, content ids): no control character (Unicode
    category Cc, TAB included) and no line or paragraph separator. Anything else,
    RFC 2047 encoded-word syntax included, is ordinary text the worker encodes.
    """
    found = _HEADER_UNSAFE.search(value)
    if found is None:
        return None
    return (
        "must not contain control characters or line separators"
        f" (U+{ord(found.group()):04X} at index {found.start()})"
    )


def reject_header_unsafe(value: str) -> None:
    """A marshmallow validator for :func:`header_text_problem`."""
    problem = header_text_problem(value)
    if problem is not None:
        raise ValidationError(problem)


def _checked_name(name: Any) -> str | None:
    if name is None or name == "":
        return None
    if not isinstance(name, str):
        raise ValidationError({"name": ["not a string"]})
    problem = header_text_problem(name)
    if problem is not None:
        raise ValidationError({"name": [problem]})
    if len(name) > MAX_DISPLAY_NAME_LENGTH:
        raise ValidationError({"name": [f"at most {MAX_DISPLAY_NAME_LENGTH} characters"]})
    # Stored as a reader sees it: runs of spaces are one space to Python's own parser
    # (and to most mail clients), so the worker could not check them on the wire.
    return _SPACES.sub(" ", name)


# Parsed mailboxes per process: senders repeat on nearly every request, and parsing
# one (email-validator's syntax check, the display-name split) was a tenth of the
# API's CPU per mail. Both functions are pure (no DNS); a refusal is not cached.
MAILBOX_CACHE_SIZE = 4096


@functools.lru_cache(maxsize=MAILBOX_CACHE_SIZE)
def _checked_address(address: str) -> tuple[str, str]:
    """The normalized address and its ASCII domain, or a ValidationError."""
    if not address or "@" not in address:
        raise ValidationError("not a valid email address")
    try:
        checked = validate_email(address, check_deliverability=False, allow_smtputf8=True)
    except EmailNotValidError as exc:
        raise ValidationError(str(exc)) from None
    return checked.normalized, checked.ascii_domain


class Mailbox(fields.Field[dict[str, Any]]):
    """A mailbox, loaded as ``{"name", "email", "domain"}``.

    Given as a string, ``"a@example.com"`` or ``"Alice <a@example.com>"``, the
    display name is split off with the standard library; given as an object,
    ``{"email": "a@example.com", "name": "Alice"}`` (the shape SendGrid's API
    uses), the name is taken exactly as given, whatever it holds (quotes,
    commas, ``<``, ``@``, non-ASCII), and the address may be any valid one,
    a non-ASCII local part included. Either way the address is checked for
    syntax by email-validator (no DNS look-ups), the display name is at most
    128 characters without control characters or line separators (runs of
    spaces become one), and the string form is at most 998 characters.
    """

    def __init__(self, **kwargs: Any) -> None:
        metadata = {
            "description": '`"a@example.com"`, `"Alice <a@example.com>"` or'
            ' `{"email": "a@example.com", "name": "Alice"}` (the name taken exactly as given);'
            f" display name at most {MAX_DISPLAY_NAME_LENGTH} characters, no control characters",
            "oneOf": [
                {"type": "string", "minLength": 3, "maxLength": MAX_MAILBOX_LENGTH},
                {
                    "type": "object",
                    "properties": {
                        "email": {"type": "string"},
                        "name": {
                            "type": "string",
                            "nullable": True,
                            "maxLength": MAX_DISPLAY_NAME_LENGTH,
                        },
                    },
                    "required": ["email"],
                    "additionalProperties": False,
                },
            ],
            **kwargs.pop("metadata", {}),
        }
        super().__init__(metadata=metadata, **kwargs)

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> Any:
        if isinstance(value, dict):
            return self._from_object(value)
        if not isinstance(value, str):
            raise ValidationError("a string or an object with email and name")
        return self._from_string(value)

    @staticmethod
    def _from_string(text: str) -> dict[str, Any]:
        name, email, domain = _parsed_mailbox(text)
        return {"name": name, "email": email, "domain": domain}

    @staticmethod
    def _from_object(value: dict[str, Any]) -> dict[str, Any]:
        unknown = sorted(set(value) - {"email", "name"})
        if unknown:
            raise ValidationError({key: ["unknown field"] for key in unknown})
        address = value.get("email")
        if not isinstance(address, str):
            raise ValidationError({"email": ["a string is required"]})
        problem = header_text_problem(address)
        if problem is not None:
            raise ValidationError({"email": [problem]})
        try:
            email, domain = _checked_address(address)
        except ValidationError as exc:
            raise ValidationError({"email": exc.messages}) from None
        return {"name": _checked_name(value.get("name")), "email": email, "domain": domain}


@functools.lru_cache(maxsize=MAILBOX_CACHE_SIZE)
def _parsed_mailbox(text: str) -> tuple[str | None, str, str]:
    """``"Name <address>"`` as (display name, normalized address, ASCII domain)."""
    reject_header_unsafe(text)
    if len(text) > MAX_MAILBOX_LENGTH:
        raise ValidationError(f"at most {MAX_MAILBOX_LENGTH} characters")
    mailboxes = getaddresses([text])
    if len(mailboxes) != 1:
        raise ValidationError("give exactly one address")
    name, address = mailboxes[0]
    email, domain = _checked_address(address)
    return _checked_name(name), email, domain


class UtcDateTime(fields.AwareDateTime):
    """An ISO 8601 date-time (no offset means UTC), loaded in UTC, in years
    2000 to 9000: an offset can never push it past what datetime (or the
    worker's timestamps) can hold, which would answer 503 when read back."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(default_timezone=UTC, **kwargs)

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> datetime:
        moment = super()._deserialize(value, attr, data, **kwargs)
        try:
            in_utc = moment.astimezone(UTC)
        except OverflowError:
            raise ValidationError(f"must be in the years {MIN_YEAR} to {MAX_YEAR}") from None
        if not MIN_YEAR <= in_utc.year <= MAX_YEAR:
            raise ValidationError(f"must be in the years {MIN_YEAR} to {MAX_YEAR}")
        return in_utc
