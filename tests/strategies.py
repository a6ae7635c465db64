"""Hypothesis strategies for adversarial mail requests, shared by the API's field-rule
property test and the composer's wire check.

:func:`adversarial_mail_requests` draws a ``POST /v1/mails`` body whose header-bound
texts (subject, display names, a header value, an attachment's file name) come from
:func:`adversarial_text`: encoded words (q and b), CR, LF, U+2028/2029, U+0085,
``\\x0b``, ``\\x0c``, ``\\x1c``-``\\x1e``, NUL, long words without spaces, non-ASCII,
and IDN domains in the addresses. :data:`HEADER_BOUND_FIELDS` names the fields it
varies, so a test can check that a refusal names one of them.
"""

from __future__ import annotations

import base64
from typing import Any

from hypothesis import strategies as st

# Characters that end or break a header line somewhere (Python's email package,
# str.splitlines, SMTP) or that PostgreSQL cannot store.
HOSTILE_CHARACTERS = "\r\n\u2028\u2029\u0085\x0b\x0c\x1c\x1d\x1e\x00\t\x7f\x9f"
HEADER_BOUND_FIELDS = frozenset({"subject", "from", "to", "headers", "attachments"})

_ordinary = st.characters(codec="utf-8", exclude_categories=["Cs"])
_hostile = st.sampled_from(HOSTILE_CHARACTERS)
_mixed = st.text(st.one_of(_ordinary, _hostile, st.sampled_from(' <>"\\,@:;=?')), max_size=60)


@st.composite
def _encoded_word(draw: st.DrawFn) -> str:
    """RFC 2047 syntax, sometimes hiding a CR LF and a header: ordinary text to the API."""
    payload = draw(st.one_of(_mixed, st.just("hello\r\nBcc: victim@example.net")))
    raw = payload.encode("utf-8", "surrogatepass")
    if draw(st.booleans()):
        return f"=?utf-8?b?{base64.b64encode(raw).decode()}?="
    quoted = "".join(
        chr(byte) if 0x21 <= byte <= 0x7E and chr(byte) not in "=?_" else f"={byte:02X}"
        for byte in raw
    )
    return f"=?utf-8?q?{quoted}?="


_long_word = st.builds(
    lambda char, count: char * count,
    st.sampled_from("aé漢"),
    st.integers(min_value=70, max_value=1100),
)


def adversarial_text() -> st.SearchStrategy[str]:
    """Text a hostile client would put in a header-bound field."""
    return st.one_of(
        _mixed,
        _encoded_word(),
        _long_word,
        st.builds(lambda a, b: f"{a} {b}", _encoded_word(), _mixed),
        st.sampled_from(["Ann Lee", "Zoë Ämter", "漢字 太郎", '"quoted" \\ name, <x@y>']),
    )


_domains = st.sampled_from(["example.com", "bücher.example.org", "例え.example.org"])
_local_parts = st.sampled_from(["bob", "üser", "a.b+tag"])


@st.composite
def _mailbox(draw: st.DrawFn, domain: st.SearchStrategy[str]) -> Any:
    address = f"{draw(_local_parts)}@{draw(domain)}"
    name = draw(st.one_of(st.none(), adversarial_text()))
    if draw(st.booleans()):
        return {"email": address, "name": name}
    return address if name is None else f"{name} <{address}>"


@st.composite
def adversarial_mail_requests(draw: st.DrawFn) -> dict[str, Any]:
    """A ``POST /v1/mails`` body from tenant domain example.com with adversarial text in
    every header-bound field (and only there: the rest is valid)."""
    mail: dict[str, Any] = {
        "from": draw(_mailbox(st.just("example.com"))),
        "to": [draw(_mailbox(_domains))],
        "subject": draw(adversarial_text()),
        "text": "body",
    }
    if draw(st.booleans()):
        mail["headers"] = {"X-Note": draw(adversarial_text())}
    if draw(st.booleans()):
        mail["attachments"] = [
            {
                "filename": draw(adversarial_text()),
                "content": base64.b64encode(b"data").decode(),
                "content_type": "application/octet-stream",
            }
        ]
    return mail
