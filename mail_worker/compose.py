"""Build the bytes of a mail: the headers written here, the MIME body by the standard library.

Why we write the headers ourselves: when the standard library refolds a header it
decodes RFC 2047 encoded words and can write the line breaks they hide
(CVE-2024-6923; the Python on our machines predates the fix). So no text a tenant
or an end user gave ever passes through the library's header folding. Each header
is written here so that a reader decodes exactly the accepted text:

- plain printable ASCII words separated by single spaces are written as they are,
  folded between words;
- anything else (non-ASCII, ``=?`` that a reader would take for an encoded word,
  double or edge spaces, words too long for a line) becomes RFC 2047 encoded
  words that we produce (UTF-8, Q or B, whichever is shorter), so
  ``=?utf-8?q?hello=0D=0ABcc...?=`` in a subject reaches the reader as those very
  characters, never as a line break;
- file names of attachments use RFC 2231 parameters, also produced here.

Text with a control character or a line separator is refused (:class:`ComposeError`);
the API refuses it first, this guards mail accepted before it did. The worker then
checks the bytes before SMTP (:mod:`mail_worker.wire_check`).
"""

from __future__ import annotations

import base64
import binascii
import re
import secrets
import string
import unicodedata
import uuid
from collections.abc import Iterable, Mapping
from email import policy
from email.message import EmailMessage
from email.utils import formatdate
from typing import Any

import idna

# The MIME body is built by the standard library with these policies; the headers
# it writes there (Content-Type and the like) hold no text of the request.
_POLICY = policy.SMTP.clone(refold_source="none", cte_type="7bit")
# For a mail that needs SMTPUTF8: 8-bit bodies and UTF-8 addresses (RFC 6532).
_UTF8_POLICY = policy.SMTPUTF8.clone(refold_source="none")

LINE = 78  # RFC 5322's recommended line length; words are folded to keep within it
MAX_PLAIN_WORD = 60  # a longer word is written as encoded words, which can be split
ENCODED_WORD = 75  # RFC 2047's limit for one encoded word
# Header text longer than this is refused before any work: the API allows 998.
MAX_HEADER_TEXT = 4000
# An encoded display name stays on one line (see _display_name_tokens): 998 less room
# for the header name. The API's limit of 150 characters always fits.
MAX_ENCODED_NAME = 980
# Characters Q encoding may leave as they are in any header (RFC 2047 section 5 (3)).
_Q_SAFE = frozenset((string.ascii_letters + string.digits + "!*+-/").encode())
_WORD_OVERHEAD = len("=?utf-8?q??=")
_PLAIN_TEXT = re.compile(r"[!-~]+(?: [!-~]+)*")  # printable ASCII words, single spaces
_ATOMS = re.compile(r"[A-Za-z0-9!#$%&'*+\-/=?^_`{|}~]+(?: [A-Za-z0-9!#$%&'*+\-/=?^_`{|}~]+)*")
# With SMTPUTF8 (RFC 6532) non-ASCII characters may stand as they are in words.
_UTF8_WORD = r"[^\s\x00-\x7f]"
_UTF8_PLAIN_TEXT = re.compile(rf"(?:[!-~]|{_UTF8_WORD})+(?: (?:[!-~]|{_UTF8_WORD})+)*")
_UTF8_ATOMS = re.compile(
    rf"(?:[A-Za-z0-9!#$%&'*+\-/=?^_`{{|}}~]|{_UTF8_WORD})+"
    rf"(?: (?:[A-Za-z0-9!#$%&'*+\-/=?^_`{{|}}~]|{_UTF8_WORD})+)*"
)
_MESSAGE_IDS = re.compile(r"<[!-;=?-~]+>(?:\s+<[!-;=?-~]+>)*")  # printable, no '<', '>', space
_FILENAME_WORD = r"[A-Za-z0-9!#$%&'()*+,\-.;=@\[\]^_`{|}~]+"
_QUOTABLE_FILENAME = re.compile(rf"{_FILENAME_WORD}(?: {_FILENAME_WORD})*")
_CONTENT_ID = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~.@-]{1,200}")
_ATTR_CHARS = frozenset((string.ascii_letters + string.digits + "!#$&+-.^_`|~").encode())
# Headers whose value is a list of angle-bracketed items rather than text.
STRUCTURED_CLIENT_HEADERS = frozenset(
    {"references", "in-reply-to", "list-unsubscribe", "list-unsubscribe-post"}
)


class ComposeError(ValueError):
    """The request cannot be written as a safe mail; sending it again would fail again."""


def message_id(mail_id: uuid.UUID | str, domain: str) -> str:
    """Deterministic, so a second send of one mail can be recognised downstream."""
    return f"<{mail_id}@{domain}>"


def smtp_address(email: str) -> str:
    """The address as sent, in the envelope and the headers.

    With an ASCII local part, a Unicode domain is written in IDNA form (xn--…), so
    the mail needs no SMTPUTF8; a non-ASCII local part is kept as it is (SMTPUTF8).
    """
    local, _, domain = email.rpartition("@")
    if domain.isascii() or not local.isascii():
        return email
    return f"{local}@{idna.encode(domain, uts46=True).decode('ascii')}"


def envelope_recipients(request: Mapping[str, Any]) -> list[str]:
    """Everyone the SMTP server must deliver to; bcc appears here and in no header."""
    return [m["email"] for key in ("to", "cc", "bcc") for m in request.get(key) or []]


def needs_smtputf8(request: Mapping[str, Any]) -> bool:
    """A non-ASCII local part (not a display name, not a domain) needs SMTPUTF8."""
    reply_to = [request["reply_to"]["email"]] if request.get("reply_to") else []
    addresses = [request["from"]["email"], *envelope_recipients(request), *reply_to]
    return not all(smtp_address(address).isascii() for address in addresses)


# ----- header text -----


def unsafe_character(text: str) -> str | None:
    """The first character that no header may carry, as ``U+000B``, or None.

    Controls (category Cc, tab included) and the line and paragraph separators:
    Python's own ``str.splitlines`` breaks lines at several of them.
    """
    for char in text:
        if unicodedata.category(char) in ("Cc", "Zl", "Zp"):
            return f"U+{ord(char):04X}"
    return None


def _checked(field: str, text: str) -> str:
    if len(text) > MAX_HEADER_TEXT:
        raise ComposeError(f"{field} is longer than {MAX_HEADER_TEXT} characters")
    bad = unsafe_character(text)
    if bad is not None:
        raise ComposeError(f"{field} contains the control character {bad}")
    return text


def _q_length(data: bytes) -> int:
    return sum(1 if byte in _Q_SAFE or byte == 0x20 else 3 for byte in data)


def _encoded_word(text: str) -> str:
    data = text.encode("utf-8")
    q = "".join(
        chr(byte) if byte in _Q_SAFE else "_" if byte == 0x20 else f"={byte:02X}" for byte in data
    )
    b = base64.b64encode(data).decode("ascii")
    return f"=?utf-8?q?{q}?=" if len(q) <= len(b) else f"=?utf-8?b?{b}?="


def encoded_words(text: str, first: int = ENCODED_WORD) -> list[str]:
    """*text* as RFC 2047 encoded words of at most 75 characters (the first at most
    *first*, to fit after the header name), never splitting a character; a reader
    joins adjacent words without the space between them."""
    budget = max(first, 20) - _WORD_OVERHEAD
    words: list[str] = []
    chunk: list[str] = []
    q_length = size = 0
    for char in text:
        data = char.encode("utf-8")
        next_q, next_size = q_length + _q_length(data), size + len(data)
        if chunk and min(next_q, 4 * -(-next_size // 3)) > budget:
            words.append(_encoded_word("".join(chunk)))
            chunk, next_q, next_size = [], _q_length(data), len(data)
            budget = ENCODED_WORD - _WORD_OVERHEAD
        chunk.append(char)
        q_length, size = next_q, next_size
    if chunk:
        words.append(_encoded_word("".join(chunk)))
    return words


def _is_plain(text: str, pattern: re.Pattern[str]) -> bool:
    return (
        pattern.fullmatch(text) is not None
        and "=?" not in text
        and all(len(word) <= MAX_PLAIN_WORD for word in text.split(" "))
    )


def text_tokens(name: str, text: str, *, utf8: bool = False) -> list[str]:
    """Unstructured text (a subject, an X- header) as the words to fold after *name*."""
    if not text:
        return []
    if _is_plain(text, _UTF8_PLAIN_TEXT if utf8 else _PLAIN_TEXT):
        return text.split(" ")
    return encoded_words(text, first=LINE - len(name) - 2)


def _display_name_tokens(name: str, *, utf8: bool) -> list[str]:
    """Plain atoms, or ONE token of adjacent encoded words.

    Between two encoded words of a display name, RFC 2047 readers drop the white
    space (compat32 does) but Python's modern parser keeps it, so the two would
    read a folded name differently; adjacent words with no space between them read
    the same in both. The price: such a name is not folded (the API keeps names short).
    """
    if _is_plain(name, _UTF8_ATOMS if utf8 else _ATOMS):
        return name.split(" ")
    token = "".join(encoded_words(name))
    if len(token) > MAX_ENCODED_NAME:
        raise ComposeError(f"a display name of {len(name)} characters is too long to write")
    return [token]


def fold(name: str, tokens: Iterable[str]) -> str:
    """``Name: token token`` with CRLF SP between tokens where a line would pass 78.

    The first token always stays on the first line: a value that began on a
    continuation line would be read with a leading space.
    """
    lines: list[str] = []
    line = f"{name}:"
    first = True
    for token in tokens:
        if not first and len(line) + 1 + len(token) > LINE:
            lines.append(line)
            line = ""
        line = f"{line} {token}"
        first = False
    lines.append(line)
    return "\r\n".join(lines) + "\r\n"


def mailbox_tokens(mailbox: Mapping[str, Any], field: str, *, utf8: bool) -> list[str]:
    """``display name <address>`` (or the bare address) as tokens."""
    address = smtp_address(str(mailbox["email"]))
    if any(char.isspace() or char in '<>(),;:"\\' for char in address) or unsafe_character(address):
        raise ComposeError(f"{field} holds an address that cannot be written: {address!r}")
    name = mailbox.get("name") or ""
    if not name:
        return [address]
    display_name = _checked(f"{field} display name", name)
    return [*_display_name_tokens(display_name, utf8=utf8), f"<{address}>"]


def address_header(name: str, mailboxes: Iterable[Mapping[str, Any]], *, utf8: bool) -> str:
    tokens: list[str] = []
    for mailbox in mailboxes:
        if tokens:
            tokens[-1] += ","
        tokens.extend(mailbox_tokens(mailbox, name, utf8=utf8))
    return fold(name, tokens)


def client_header(name: str, value: str, *, utf8: bool) -> str:
    """A header the request set: text for X-*, item lists for the list/thread headers."""
    if not name or len(name) > 76 or re.fullmatch(r"[!-9;-~]+", name) is None:
        raise ComposeError(f"{name!r} is not a header name")
    value = _checked(name, value)
    if name.lower() not in STRUCTURED_CLIENT_HEADERS:
        return fold(name, text_tokens(name, value, utf8=utf8))
    if not value.isascii() or "=?" in value:
        raise ComposeError(f"{name} must be ASCII without encoded words")
    if name.lower() in ("references", "in-reply-to") and not _MESSAGE_IDS.fullmatch(value):
        raise ComposeError(f"{name} must be a list of <message ids>")
    return fold(name, value.split())


# ----- the mail -----


def compose(
    mail_id: uuid.UUID | str,
    request: Mapping[str, Any],
    domain: str,
    *,
    list_unsubscribe: str | None = None,
) -> bytes:
    """The mail as it goes on the wire (CRLF line ends); raises ComposeError.

    *list_unsubscribe* (campaign mail) replaces any List-Unsubscribe the request set
    with ours and RFC 8058's one-click List-Unsubscribe-Post.
    """
    utf8 = needs_smtputf8(request)
    headers = [address_header("From", [request["from"]], utf8=utf8)]
    headers.append(address_header("To", request["to"], utf8=utf8))
    if request.get("cc"):
        headers.append(address_header("Cc", request["cc"], utf8=utf8))
    if request.get("reply_to"):
        headers.append(address_header("Reply-To", [request["reply_to"]], utf8=utf8))
    subject = _checked("Subject", request["subject"])
    headers.append(fold("Subject", text_tokens("Subject", subject, utf8=utf8)))
    headers.append(f"Date: {formatdate(usegmt=True)}\r\n")
    headers.append(f"Message-ID: {message_id(mail_id, domain)}\r\n")
    for name, value in client_headers(request, list_unsubscribe).items():
        headers.append(client_header(name, value, utf8=utf8))
    head = "".join(headers).encode("utf-8")
    if not request.get("attachments"):
        return head + _text_body(request)
    return head + _body(request, utf8=utf8).as_bytes()


# ----- the body of a mail without attachments, written here -----
# The standard library's MIME code costs about 0.6 ms for a 5 KB text+html mail, two
# thirds of composing it (bench/worker.py's profile); the common shape (text, html or
# both, no attachments) is written here in a few microseconds of C (binascii), and
# wire_check parses it back like any other mail. Attachments still go through _body.


def _text_body(request: Mapping[str, Any]) -> bytes:
    """MIME-Version, Content-Type and the body: one text part, or multipart/alternative."""
    text, html = request.get("text"), request.get("html")
    leaves = [_leaf("plain", text)] if text else []
    if html or not text:
        leaves.append(_leaf("html", html or ""))
    if len(leaves) == 1:
        return b"MIME-Version: 1.0\r\n" + leaves[0]
    boundary = _boundary(leaves)
    delimiter = b"--" + boundary
    return (
        b"MIME-Version: 1.0\r\n"
        b'Content-Type: multipart/alternative;\r\n boundary="' + boundary + b'"\r\n\r\n'
        + b"".join(delimiter + b"\r\n" + leaf + b"\r\n" for leaf in leaves)
        + delimiter + b"--\r\n"
    )  # fmt: skip


def _leaf(subtype: str, content: str) -> bytes:
    """A text part in UTF-8: as it is (7bit) when it is short-lined ASCII, else quoted-
    printable or base64, whichever is shorter (as the standard library chooses)."""
    text = content.replace("\r\n", "\n").replace("\r", "\n")
    if not text.endswith("\n"):
        text += "\n"
    data = text.encode("utf-8")
    if data.isascii() and max(map(len, data.split(b"\n"))) <= LINE:
        encoding, body = "7bit", data
    else:
        qp = binascii.b2a_qp(data, istext=True)
        b64 = b"".join(
            binascii.b2a_base64(data[i : i + 57]) for i in range(0, len(data), 57)
        )  # 76-character lines
        encoding, body = ("quoted-printable", qp) if len(qp) <= len(b64) else ("base64", b64)
    return (
        f'Content-Type: text/{subtype}; charset="utf-8"\r\n'
        f"Content-Transfer-Encoding: {encoding}\r\n\r\n".encode("ascii")
        + body.replace(b"\n", b"\r\n")
    )


# One boundary for every mail, so each parser that reads it back (ours in wire_check, the
# receiving servers') compiles its boundary pattern once: a new random boundary per mail
# cost the wire check a regular expression compile per mail (~0.2 ms). A quoted-printable
# or base64 part cannot contain it ('=_' is not an escape, '-' is not base64); a 7bit part
# holds the tenant's text as it is, so a part that contains it gets a random one.
BOUNDARY = b"=_mailroom_alternative"


def _boundary(leaves: list[bytes]) -> bytes:
    boundary = BOUNDARY
    while any(boundary in leaf for leaf in leaves):
        boundary = f"=_mailroom_{secrets.token_hex(12)}".encode("ascii")
    return boundary


def client_headers(request: Mapping[str, Any], list_unsubscribe: str | None) -> dict[str, str]:
    """The request's own headers, and our one-click unsubscribe pair for campaign mail."""
    headers = dict(request.get("headers") or {})
    if list_unsubscribe is not None:
        headers = {
            k: v
            for k, v in headers.items()
            if k.lower() not in ("list-unsubscribe", "list-unsubscribe-post")
        }
        headers["List-Unsubscribe"] = f"<{list_unsubscribe}>"
        headers["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"
    return headers


def _body(request: Mapping[str, Any], *, utf8: bool) -> EmailMessage:
    """The MIME entity: text and/or html, attachments and inline images."""
    body = EmailMessage(policy=_UTF8_POLICY if utf8 else _POLICY)
    text, html = request.get("text"), request.get("html")
    if text:
        body.set_content(text)
        if html:
            body.add_alternative(html, subtype="html")
    else:
        body.set_content(html or "", subtype="html")
    _attach(body, request.get("attachments") or [], has_html=bool(html))
    return body


def _attach(body: EmailMessage, attachments: list[dict[str, Any]], *, has_html: bool) -> None:
    """Inline images (by Content-ID) join the html part; the rest are attachments."""
    related: EmailMessage | None = None
    for attachment in attachments:
        data = base64.b64decode(attachment["content"])
        maintype, _, subtype = attachment["content_type"].partition("/")
        filename = attachment["filename"]
        content_id = attachment.get("content_id")
        if content_id and has_html:
            if related is None:
                html_part = body.get_body(("html",))
                assert isinstance(html_part, EmailMessage)
                related = html_part
            related.add_related(data, maintype, subtype)
            _file_headers(_last_part(related), "inline", filename, content_id)
        else:
            body.add_attachment(data, maintype, subtype)
            _file_headers(_last_part(body), "attachment", filename, None)


def _last_part(multipart: EmailMessage) -> EmailMessage:
    parts = multipart.get_payload()
    assert isinstance(parts, list) and isinstance(parts[-1], EmailMessage)
    return parts[-1]


def _file_headers(
    part: EmailMessage, disposition: str, filename: str, content_id: str | None
) -> None:
    del part["Content-Disposition"], part["Content-ID"]
    tokens = [f"{disposition};", *filename_parameters(_checked("attachment filename", filename))]
    value = fold("Content-Disposition", tokens).partition(": ")[2].rstrip("\r\n")
    part.set_raw("Content-Disposition", value)  # written as it is (refold_source="none")
    if content_id is not None:
        if _CONTENT_ID.fullmatch(content_id) is None:
            raise ComposeError(f"content_id {content_id!r} cannot be written")
        part.set_raw("Content-ID", f"<{content_id}>")


def filename_parameters(filename: str) -> list[str]:
    """``filename="a.pdf"`` when that reads back exactly, else RFC 2231 sections."""
    if _is_plain(filename, _QUOTABLE_FILENAME) and len(filename) <= MAX_PLAIN_WORD:
        return [f'filename="{filename}"']
    pieces = [
        "".join(chr(b) if b in _ATTR_CHARS else f"%{b:02X}" for b in char.encode("utf-8"))
        for char in filename
    ]
    sections: list[str] = []
    current = "utf-8''"
    for piece in pieces:
        if len(current) + len(piece) > 50:
            sections.append(current)
            current = ""
        current += piece
    sections.append(current)
    if len(sections) == 1:
        return [f"filename*={sections[0]}"]
    last = len(sections) - 1
    return [
        f"filename*{index}*={section}{'' if index == last else ';'}"
        for index, section in enumerate(sections)
    ]
