"""The last check before SMTP: the bytes say exactly what was accepted, and nothing else.

The serialized mail is parsed back twice, with the modern policy and with compat32
(two different parsers, as receiving systems differ), and must give:

- exactly the header fields the mail defines, once each (From, To, Cc, Reply-To,
  Subject, Date, Message-ID, the request's own headers, our List-Unsubscribe pair,
  and the MIME headers of the body);
- the accepted values, decoded: the same display names and addresses, the same
  subject and header text to the character;
- exactly the accepted body parts: the text, the html, and each attachment's file
  name, type, Content-ID and bytes.

A mail that fails is not sent: :func:`check_wire` raises :class:`WireCheckFailed`
naming the first difference, and the send step records the mail as ``failed``.
"""

from __future__ import annotations

import base64
from collections import Counter
from collections.abc import Callable, Mapping
from email import message_from_bytes, policy
from email.header import decode_header, make_header
from email.headerregistry import BaseHeader, HeaderRegistry
from email.message import EmailMessage, Message
from email.utils import getaddresses, parsedate_to_datetime
from functools import lru_cache
from typing import Any

from mail_worker.compose import STRUCTURED_CLIENT_HEADERS, client_headers, smtp_address

MIME_HEADERS = ("mime-version", "content-type")
OPTIONAL_MIME_HEADERS = ("content-transfer-encoding",)


_REGISTRY = HeaderRegistry()


@lru_cache(maxsize=4096)
def _parsed_header(name: str, value: str) -> BaseHeader:
    return _REGISTRY(name, value)


class _ParsedOnce(HeaderRegistry):
    """The modern policy parses a header anew each time it is read, and its parser reads
    Content-Type a dozen times per part: six times the cost of the compat32 parse.
    Header objects are immutable, so each (name, value) is parsed once."""

    def __call__(self, name: str, value: str) -> BaseHeader:
        return _parsed_header(name, value)


MODERN = policy.default.clone(header_factory=_ParsedOnce())


class WireCheckFailed(Exception):
    """The serialized mail does not say what was accepted; the message says where."""


Mailboxes = list[tuple[str, str]]
Leaf = tuple[str, str, str | None, bytes | str, str | None]  # kind, type, filename, content, cid


def _addresses(request: Mapping[str, Any], key: str) -> Mailboxes:
    value = request.get(key)
    mailboxes = value if isinstance(value, list) else [value] if value else []
    return [(m.get("name") or "", smtp_address(m["email"]).lower()) for m in mailboxes]


def _text(value: str) -> str:
    """Body text as a reader gets it: line ends normalised, one final newline."""
    text = value.replace("\r\n", "\n").replace("\r", "\n")
    return text if text.endswith("\n") else text + "\n"


def _items(value: str) -> str:
    return " ".join(value.split())


def expected_leaves(request: Mapping[str, Any]) -> list[Leaf]:
    leaves: list[Leaf] = []
    if request.get("text"):
        leaves.append(("body", "text/plain", None, _text(request["text"]), None))
    if request.get("html") or not request.get("text"):
        leaves.append(("body", "text/html", None, _text(request.get("html") or ""), None))
    for attachment in request.get("attachments") or []:
        content_id = attachment.get("content_id") if request.get("html") else None
        leaves.append(
            (
                "file",
                attachment["content_type"].lower(),
                attachment["filename"].strip(),
                base64.b64decode(attachment["content"]),
                f"<{content_id}>" if content_id else None,
            )
        )
    return sorted(leaves, key=repr)


def check_wire(
    raw: bytes,
    request: Mapping[str, Any],
    *,
    message_id: str,
    list_unsubscribe: str | None = None,
) -> None:
    """Raise WireCheckFailed unless *raw* parses back to exactly *request* (both parsers)."""
    if b"\r\n\r\n" not in raw:
        raise WireCheckFailed("the mail has no header/body separator")
    header_block = raw.split(b"\r\n\r\n", 1)[0]
    if any(len(line) > 998 for line in header_block.split(b"\r\n")):
        raise WireCheckFailed("a header line is longer than 998 octets")
    if b"\r" in header_block.replace(b"\r\n", b"") or b"\n" in header_block.replace(b"\r\n", b""):
        raise WireCheckFailed("a bare CR or LF in the headers")
    own = client_headers(request, list_unsubscribe)
    expected_text = {"subject": request["subject"]}
    expected_items = {"message-id": message_id}
    for name, value in own.items():
        target = expected_items if name.lower() in STRUCTURED_CLIENT_HEADERS else expected_text
        target[name.lower()] = value
    expected = _Expected(
        names=Counter(
            ["from", "to", "date", *expected_text, *expected_items, *MIME_HEADERS]
            + (["cc"] if request.get("cc") else [])
            + (["reply-to"] if request.get("reply_to") else [])
        ),
        addresses={
            "from": _addresses(request, "from"),
            "to": _addresses(request, "to"),
            "cc": _addresses(request, "cc"),
            "reply-to": _addresses(request, "reply_to"),
        },
        text=expected_text,
        items={name: _items(value) for name, value in expected_items.items()},
        leaves=expected_leaves(request),
    )
    modern = message_from_bytes(raw, policy=MODERN)
    _compare("modern policy", modern, expected, _modern_view)
    legacy = message_from_bytes(raw, policy=policy.compat32)
    _compare("compat32", legacy, expected, _compat32_view)


class _Expected:
    def __init__(
        self,
        *,
        names: Counter[str],
        addresses: dict[str, Mailboxes],
        text: dict[str, str],
        items: dict[str, str],
        leaves: list[Leaf],
    ) -> None:
        self.names, self.addresses, self.text, self.items = names, addresses, text, items
        self.leaves = leaves


class _View:
    """What one parser reads back: header text, mailboxes and leaf parts."""

    def __init__(
        self,
        text: Callable[[str], str],
        addresses: Callable[[str], Mailboxes],
        leaves: list[Leaf],
    ) -> None:
        self.text, self.addresses, self.leaves = text, addresses, leaves


def _compare(
    parser: str, message: Message, expected: _Expected, view_of: Callable[[Message], _View]
) -> None:
    names = Counter(name.lower() for name in message)
    for optional in OPTIONAL_MIME_HEADERS:
        if names[optional] == 1:
            del names[optional]
    if names != expected.names:
        extra = sorted((names - expected.names).elements())
        missing = sorted((expected.names - names).elements())
        raise WireCheckFailed(f"{parser}: header fields differ (extra {extra}, missing {missing})")
    try:
        parsedate_to_datetime(str(message["Date"]))
    except (TypeError, ValueError):
        raise WireCheckFailed(f"{parser}: the Date header does not parse") from None
    view = view_of(message)
    for name, mailboxes in expected.addresses.items():
        if mailboxes and view.addresses(name) != mailboxes:
            raise WireCheckFailed(f"{parser}: {name} reads back as {view.addresses(name)!r}")
    for name, value in expected.text.items():
        if view.text(name) != value:
            raise WireCheckFailed(f"{parser}: {name} reads back as {view.text(name)[:200]!r}")
    for name, value in expected.items.items():
        if _items(view.text(name)) != value:
            raise WireCheckFailed(f"{parser}: {name} reads back as {view.text(name)[:200]!r}")
    if sorted(view.leaves, key=repr) != expected.leaves:
        found = [(kind, kind_type, name) for kind, kind_type, name, _, _ in view.leaves]
        raise WireCheckFailed(f"{parser}: the body parts differ from the accepted ones: {found}")


def _modern_view(message: Message) -> _View:
    assert isinstance(message, EmailMessage)

    def text(name: str) -> str:
        return _unescaped(str(message[name]))

    def addresses(name: str) -> Mailboxes:
        header: Any = message[name]
        return [
            (
                _unescaped(address.display_name),
                _unescaped(f"{address.username}@{address.domain}").lower(),
            )
            for address in header.addresses
        ]

    leaves: list[Leaf] = []
    for part in message.walk():
        if part.is_multipart():
            continue
        assert isinstance(part, EmailMessage)
        filename = part.get_filename()
        content_type = part.get_content_type()  # parsed anew on every call: once here
        if filename is None and content_type.startswith("text/"):
            content: bytes | str = _text(part.get_content())
            leaves.append(("body", content_type, None, content, None))
        else:
            payload = part.get_payload(decode=True)
            assert isinstance(payload, bytes)
            leaves.append(
                (
                    "file",
                    content_type,
                    (filename or "").strip(),
                    payload,
                    part["Content-ID"] and str(part["Content-ID"]),
                )
            )
    return _View(text, addresses, leaves)


def _unescaped(value: str) -> str:
    """UTF-8 header bytes (SMTPUTF8) come back from the parsers as surrogate escapes."""
    return value.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def _unfold(value: str) -> str:
    return value.replace("\r\n", "").replace("\n", "")


def _decoded(value: str) -> str:
    return str(make_header(decode_header(_unfold(value))))


def _compat32_view(message: Message) -> _View:
    # The raw values: compat32 replaces the UTF-8 of an SMTPUTF8 header when fetched.
    raw = {name.lower(): _unescaped(value) for name, value in message.raw_items()}

    def text(name: str) -> str:
        return _decoded(raw[name])

    def addresses(name: str) -> Mailboxes:
        found = getaddresses([_unfold(raw[name])])
        return [(_decoded(display) if display else "", email.lower()) for display, email in found]

    leaves: list[Leaf] = []
    for part in message.walk():
        if part.is_multipart():
            continue
        filename = part.get_filename()
        payload = part.get_payload(decode=True)
        assert isinstance(payload, bytes)
        if filename is None and part.get_content_maintype() == "text":
            charset = part.get_content_charset() or "us-ascii"
            content = _text(payload.decode(charset))
            leaves.append(("body", part.get_content_type(), None, content, None))
        else:
            content_id = part["Content-ID"]
            leaves.append(
                (
                    "file",
                    part.get_content_type(),
                    (filename or "").strip(),
                    payload,
                    _unfold(str(content_id)) if content_id is not None else None,
                )
            )
    return _View(text, addresses, leaves)
