"""The SMTP connection: opened once per worker process and reused across mails.

A reused connection is not probed with RSET before each mail (a round trip per mail):
after a completed DATA the server is ready for the next MAIL (RFC 5321, 4.1.4). If
the server closed it while it was idle, MAIL fails before anything of the mail was
sent, so the mail goes out on a new connection at once. RSET follows a refusal.

The server's final reply to DATA is what we record as proof of delivery, so the
transaction is driven step by step (MAIL, RCPT…, DATA) instead of sendmail(),
which discards that reply.
"""

from __future__ import annotations

import logging
import smtplib
import ssl
from dataclasses import dataclass, field

from mail_worker.compose import smtp_address
from shared.config import SmtpTarget

log = logging.getLogger(__name__)


class SmtpFailure(Exception):
    """The SMTP server did not accept the mail; the message says why.

    Transient: a 4xx reply, a timeout or a broken connection (worth retrying).
    Permanent: a 5xx reply (the same mail would be refused again).
    ``refused``: when every recipient was refused, each one's reply.
    """

    def __init__(
        self, message: str, *, transient: bool, refused: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.transient = transient
        self.refused = refused or {}


class _StaleConnection(Exception):
    """The server would not even take MAIL: the connection was closed while we held it."""


class _EveryRecipientRefused(smtplib.SMTPResponseException):
    def __init__(self, code: int, refused: dict[str, str]) -> None:
        super().__init__(code, f"every recipient refused: {refused}".encode())
        self.refused = refused


@dataclass(frozen=True)
class SmtpReply:
    code: int
    text: str
    refused: dict[str, str] = field(default_factory=dict)


class SmtpClient:
    """*ca_file*: a PEM CA bundle to verify the server's certificate with (a private
    CA) instead of the system's; verification itself is never turned off."""

    def __init__(
        self,
        target: SmtpTarget,
        *,
        timeout: float = 30.0,
        local_hostname: str | None = None,
        ca_file: str | None = None,
    ) -> None:
        self.target = target
        self.timeout = timeout
        self.local_hostname = local_hostname
        self._tls_context = ssl.create_default_context(cafile=ca_file)
        self._smtp: smtplib.SMTP | None = None

    def _open(self) -> smtplib.SMTP:
        target = self.target
        smtp: smtplib.SMTP
        if target.security == "tls":
            smtp = smtplib.SMTP_SSL(
                target.host, target.port, local_hostname=self.local_hostname,
                timeout=self.timeout, context=self._tls_context,
            )  # fmt: skip
        else:
            smtp = smtplib.SMTP(
                target.host, target.port, local_hostname=self.local_hostname, timeout=self.timeout
            )
        try:
            smtp.ehlo()
            if target.security == "starttls":
                smtp.starttls(context=self._tls_context)
                smtp.ehlo()
            if target.username:
                smtp.login(target.username, target.password or "")
        except BaseException:
            smtp.close()  # e.g. a refused login: do not leak the socket
            raise
        return smtp

    def send(
        self, sender: str, recipients: list[str], data: bytes, *, smtputf8: bool = False
    ) -> SmtpReply:
        try:
            if self._smtp is not None:
                try:
                    return self._transaction(self._smtp, sender, recipients, data, smtputf8)
                except _StaleConnection:
                    self.close()  # closed while idle: nothing of this mail reached it
            self._smtp = self._open()
            return self._transaction(self._smtp, sender, recipients, data, smtputf8)
        except _StaleConnection as exc:  # a brand-new connection that will not take MAIL
            self.close()
            raise SmtpFailure(str(exc), transient=True) from exc
        except smtplib.SMTPResponseException as exc:
            self._reset_after_refusal()
            transient = 400 <= exc.smtp_code < 500
            raise SmtpFailure(
                f"{exc.smtp_code} {_text(exc.smtp_error)}",
                transient=transient,
                refused=getattr(exc, "refused", None),
            ) from exc
        except (smtplib.SMTPException, OSError) as exc:
            self.close()  # the connection state is unknown: never reuse it
            raise SmtpFailure(f"{type(exc).__name__}: {exc}", transient=True) from exc

    @staticmethod
    def _transaction(
        smtp: smtplib.SMTP, sender: str, recipients: list[str], data: bytes, smtputf8: bool
    ) -> SmtpReply:
        if smtputf8 and not smtp.has_extn("smtputf8"):
            raise SmtpFailure(
                "the SMTP server does not support SMTPUTF8, which a non-ASCII address needs",
                transient=False,  # the same server would refuse it again
            )
        options = ["SMTPUTF8", "BODY=8BITMIME"] if smtputf8 else []
        try:
            code, reply = smtp.mail(smtp_address(sender), options)
        except (smtplib.SMTPServerDisconnected, OSError) as exc:
            raise _StaleConnection(f"{type(exc).__name__}: {exc}") from exc
        if code == 421:  # "closing the channel": an idle connection timed out on its side
            raise _StaleConnection(f"{code} {_text(reply)}")
        if code != 250:
            raise smtplib.SMTPSenderRefused(code, reply, sender)
        refused: dict[str, str] = {}
        for recipient in recipients:
            code, reply = smtp.rcpt(smtp_address(recipient))
            if code not in (250, 251):
                refused[recipient] = f"{code} {_text(reply)}"
        if len(refused) == len(recipients):
            # Worth retrying if any recipient was refused only for now (4xx).
            code = 450 if any(reply.startswith("4") for reply in refused.values()) else 550
            raise _EveryRecipientRefused(code, refused)
        code, reply = smtp.data(data)
        if code != 250:
            raise smtplib.SMTPDataError(code, reply)
        return SmtpReply(code, _text(reply), refused)

    def _reset_after_refusal(self) -> None:
        if self._smtp is None:
            return
        try:
            self._smtp.rset()
        except (smtplib.SMTPException, OSError):
            self.close()

    def close(self) -> None:
        if self._smtp is not None:
            try:
                self._smtp.quit()
            except (smtplib.SMTPException, OSError):
                self._smtp.close()
        self._smtp = None


def _text(reply: bytes | str) -> str:
    return reply.decode("utf-8", "replace") if isinstance(reply, bytes) else reply
