"""Build the MIME message for a mail with the standard library."""

from __future__ import annotations

import base64
import uuid
from email import policy
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import formatdate
from typing import Any

import idna

# Headers set as raw strings (only List-Unsubscribe) are written as they are.
_POLICY = policy.SMTP.clone(refold_source="none", cte_type="7bit")
# For a mail that needs SMTPUTF8: headers in UTF-8 (RFC 6532), not RFC 2047 words.
_UTF8_POLICY = policy.SMTPUTF8.clone(refold_source="none")


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


def _address(mailbox: dict[str, Any]) -> Address:
    # username/domain, not addr_spec: the parser refuses a non-ASCII local part.
    local, _, domain = smtp_address(mailbox["email"]).rpartition("@")
    return Address(display_name=mailbox.get("name") or "", username=local, domain=domain)


def envelope_recipients(request: dict[str, Any]) -> list[str]:
    """Everyone the SMTP server must deliver to; bcc appears here and in no header."""
    return [m["email"] for key in ("to", "cc", "bcc") for m in request.get(key) or []]


def compose(
    mail_id: uuid.UUID | str,
    request: dict[str, Any],
    domain: str,
    *,
    list_unsubscribe: str | None = None,
) -> EmailMessage:
    message = EmailMessage(policy=_UTF8_POLICY if needs_smtputf8(request) else _POLICY)
    message["From"] = _address(request["from"])
    message["To"] = [_address(m) for m in request["to"]]
    if request.get("cc"):
        message["Cc"] = [_address(m) for m in request["cc"]]
    if request.get("reply_to"):
        message["Reply-To"] = _address(request["reply_to"])
    message["Subject"] = request["subject"]
    message["Date"] = formatdate(usegmt=True)
    message["Message-ID"] = message_id(mail_id, domain)
    for name, value in (request.get("headers") or {}).items():
        message[name] = value
    # ----- suppressions and unsubscribes: RFC 8058 one-click (campaign mails) -----
    if list_unsubscribe is not None:  # ours replaces any the request set
        del message["List-Unsubscribe"], message["List-Unsubscribe-Post"]
        # Raw and never refolded: folding would RFC 2047-encode the long URL.
        message.set_raw("List-Unsubscribe", f"<{list_unsubscribe}>")
        message["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"
    # ----- end suppressions and unsubscribes -----
    text, html = request.get("text"), request.get("html")
    if text:
        message.set_content(text)
        if html:
            message.add_alternative(html, subtype="html")
    else:
        message.set_content(html or "", subtype="html")
    _attach(message, request.get("attachments") or [], has_html=bool(html))
    return message


def _attach(message: EmailMessage, attachments: list[dict[str, Any]], *, has_html: bool) -> None:
    """Inline images (by Content-ID) join the html part; the rest are attachments."""
    for attachment in attachments:
        data = base64.b64decode(attachment["content"])
        maintype, _, subtype = attachment["content_type"].partition("/")
        content_id = attachment.get("content_id")
        if content_id and has_html:
            html_part = message.get_body(("html",))
            assert isinstance(html_part, EmailMessage)
            html_part.add_related(
                data, maintype, subtype, cid=f"<{content_id}>", filename=attachment["filename"]
            )
        else:
            message.add_attachment(data, maintype, subtype, filename=attachment["filename"])


def needs_smtputf8(request: dict[str, Any]) -> bool:
    """A non-ASCII local part (not a display name, not a domain) needs SMTPUTF8."""
    reply_to = [request["reply_to"]["email"]] if request.get("reply_to") else []
    addresses = [request["from"]["email"], *envelope_recipients(request), *reply_to]
    return not all(smtp_address(address).isascii() for address in addresses)
