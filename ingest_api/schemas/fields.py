"""Fields shared by the request schemas: mailboxes and header-safe strings."""

from __future__ import annotations

from email.utils import getaddresses
from typing import Any

from email_validator import EmailNotValidError, validate_email
from marshmallow import ValidationError, fields


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


def reject_line_breaks(value: str) -> None:
    """A CR or LF in a header value would let a client inject headers."""
    if "\r" in value or "\n" in value:
        raise ValidationError("must not contain CR or LF")


class Mailbox(fields.String):
    """``"a@example.com"`` or ``"Alice <a@example.com>"``, loaded as ``{"name", "email"}``.

    The display name is split off with the standard library (it may hold any
    Unicode), and the address itself is checked for syntax by email-validator,
    without DNS look-ups.
    """

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> Any:
        text = super()._deserialize(value, attr, data, **kwargs)
        reject_line_breaks(text)
        mailboxes = getaddresses([text])
        if len(mailboxes) != 1:
            raise ValidationError("give exactly one address")
        name, address = mailboxes[0]
        if not address or "@" not in address:
            raise ValidationError("not a valid email address")
        try:
            checked = validate_email(address, check_deliverability=False, allow_smtputf8=True)
        except EmailNotValidError as exc:
            raise ValidationError(str(exc)) from None
        return {"name": name or None, "email": checked.normalized, "domain": checked.ascii_domain}
