"""The mail resource: what ``POST /v1/mails`` (and each batch item) accepts, and
what the API returns about mails."""

from __future__ import annotations

import base64
import binascii
import mimetypes
import re
import unicodedata
from datetime import UTC, datetime, timedelta
from typing import Any

from marshmallow import (
    RAISE,
    Schema,
    ValidationError,
    fields,
    post_load,
    pre_load,
    validate,
    validates_schema,
)

from ingest_api.schemas.fields import (
    Mailbox,
    UtcDateTime,
    header_text_problem,
    reject_header_unsafe,
    unstorable,
)
from shared.queues import STREAM_QUEUES
from shared.states import MailStatus

MAX_RECIPIENTS = 50
MAX_SUBJECT_LENGTH = 998  # RFC 5322's hard line limit
MAX_SCHEDULE_AHEAD = timedelta(days=30)
# send_at may be 30 days ahead and a TTL 30 days long: nothing needs to live longer.
MAX_EXPIRY_AHEAD = timedelta(days=60)
MAX_TAGS = 10
MAX_METADATA_KEYS = 20
MAX_ATTACHMENTS = 20
MAX_ATTACHMENT_BYTES = 7 * 1024 * 1024  # decoded, all attachments of a mail together
MAX_FILENAME_LENGTH = 255
# Custom headers: small enough that composing (folding, encoding) a mail stays cheap.
MAX_CUSTOM_HEADERS = 20
MAX_HEADER_NAME_LENGTH = 76  # fits on a line with ": " and a short value
MAX_HEADER_VALUE_LENGTH = 998  # one RFC 5322 line
MAX_CUSTOM_HEADER_BYTES = 16 * 1024  # UTF-8, all custom header values of a mail together
# An RFC 5322 field name: printable ASCII (33-126) except ':'.
HEADER_NAME = re.compile(r"^[!-9;-~]+$")
# Headers a client may set besides X-*; everything else is ours to write.
ALLOWED_HEADERS = frozenset(
    {"list-unsubscribe", "list-unsubscribe-post", "references", "in-reply-to"}
)
# Executables and scripts that mail clients and gateways block anyway.
BLOCKED_EXTENSIONS = frozenset(
    {
        "ade",
        "adp",
        "app",
        "appx",
        "appxbundle",
        "bat",
        "cab",
        "chm",
        "cmd",
        "com",
        "cpl",
        "dll",
        "docm",
        "dotm",
        "exe",
        "hta",
        "htm",
        "html",
        "img",
        "inf",
        "ins",
        "iso",
        "isp",
        "jar",
        "js",
        "jse",
        "lib",
        "lnk",
        "mde",
        "msc",
        "msi",
        "msix",
        "msixbundle",
        "msp",
        "mst",
        "one",
        "pif",
        "pptm",
        "ps1",
        "reg",
        "scr",
        "sct",
        "shb",
        "svg",
        "sys",
        "vb",
        "vbe",
        "vbs",
        "vhd",
        "vhdx",
        "vxd",
        "wsc",
        "wsf",
        "wsh",
        "xlsm",
    }
)
# Types that mean "runs when opened": whatever the file name, these are refused too.
_EXECUTABLE_TYPES = frozenset(
    {
        "application/ecmascript",
        "application/hta",
        "application/javascript",
        "application/vnd.microsoft.portable-executable",
        "application/x-bat",
        "application/x-csh",
        "application/x-dosexec",
        "application/x-javascript",
        "application/x-ms-installer",
        "application/x-ms-shortcut",
        "application/x-msdos-program",
        "application/x-msdownload",
        "application/x-msi",
        "application/x-sh",
        "application/xhtml+xml",
        "image/svg+xml",
        "text/ecmascript",
        "text/html",
        "text/javascript",
        "text/x-sh",
    }
)
# Some tables map executables to these; they are every harmless file's types too.
_GENERIC_TYPES = frozenset({"application/octet-stream", "text/plain"})
BLOCKED_CONTENT_TYPES = _EXECUTABLE_TYPES | {
    guessed.lower()  # as content_type must be given (some tables say macroEnabled)
    for extension in BLOCKED_EXTENSIONS
    if (guessed := mimetypes.guess_type(f"file.{extension}")[0]) is not None
    and guessed not in _GENERIC_TYPES
}
_CONTENT_TYPE = re.compile(r"^[a-z0-9!#$&^_.+-]+/[a-z0-9!#$&^_.+-]+$")
_CONTENT_ID = re.compile(r"^[A-Za-z0-9!#$%&'*+/=?^_`{|}~.@-]{1,200}$")


_MESSAGE_ID = r"<[!-;=?-~]+>"  # printable ASCII without space, '<' or '>' inside
_MESSAGE_IDS = re.compile(rf"^ *{_MESSAGE_ID}(?: +{_MESSAGE_ID})* *$")
_UNSUBSCRIBE_URL = r"<(?:mailto:|https://)[!-;=?-~]+>"
_UNSUBSCRIBE_URLS = re.compile(
    rf"^ *{_UNSUBSCRIBE_URL}(?: *, *{_UNSUBSCRIBE_URL})* *$", re.IGNORECASE
)
ONE_CLICK = "List-Unsubscribe=One-Click"  # RFC 8058: the only value List-Unsubscribe-Post has


def _structured_value_problem(lowered_name: str, value: str) -> str | None:
    """Why the value of a header with a defined syntax does not follow it, or None."""
    if lowered_name in ("references", "in-reply-to") and not _MESSAGE_IDS.match(value):
        return "one or more message ids like <id@example.com>, separated by spaces"
    if lowered_name == "list-unsubscribe" and not _UNSUBSCRIBE_URLS.match(value):
        return "one or more <mailto:...> or <https://...> URLs, separated by commas"
    if lowered_name == "list-unsubscribe-post" and value != ONE_CLICK:
        return f"must be exactly {ONE_CLICK}"
    return None


def check_header_names(names: list[str]) -> None:
    """Header names a client may set: RFC 5322 field names, X-* or the few allowed,
    each once (names are case-insensitive). Shared with the campaign templates."""
    if len(names) > MAX_CUSTOM_HEADERS:
        raise ValidationError(f"at most {MAX_CUSTOM_HEADERS} headers")
    seen: set[str] = set()
    for name in names:
        lowered = name.lower()
        if not HEADER_NAME.match(name) or len(name) > MAX_HEADER_NAME_LENGTH:
            raise ValidationError(
                {
                    name: [
                        f"not a valid header name: 1 to {MAX_HEADER_NAME_LENGTH} printable"
                        " ASCII characters without ':' or spaces"
                    ]
                }
            )
        if not (lowered.startswith("x-") or lowered in ALLOWED_HEADERS):
            raise ValidationError({name: ["only X-* and a few list/thread headers may be set"]})
        if lowered in seen:
            raise ValidationError(
                {name: ["given twice: header names do not depend on letter case"]}
            )
        seen.add(lowered)


def _validate_headers(headers: dict[str, str]) -> None:
    check_header_names(list(headers))
    for name, value in headers.items():
        problem = header_text_problem(value)
        if problem is None and len(value) > MAX_HEADER_VALUE_LENGTH:
            problem = f"at most {MAX_HEADER_VALUE_LENGTH} characters"
        if problem is None:
            problem = _structured_value_problem(name.lower(), value)
        if problem is not None:
            raise ValidationError({name: [problem]})
    total = sum(len(value.encode("utf-8")) for value in headers.values())
    if total > MAX_CUSTOM_HEADER_BYTES:
        raise ValidationError(
            f"the header values may total at most {MAX_CUSTOM_HEADER_BYTES} bytes (UTF-8)"
        )


def _validate_metadata(metadata: dict[str, Any]) -> None:
    if len(metadata) > MAX_METADATA_KEYS:
        raise ValidationError(f"at most {MAX_METADATA_KEYS} keys")
    for key, value in metadata.items():
        if not isinstance(value, str | int | float | bool) or len(str(value)) > 500:
            raise ValidationError({key: ["a string, number or boolean of at most 500 characters"]})


def normalized_filename(filename: str) -> str:
    """The name a mail client or file system ends up using: compatibility forms folded
    (fullwidth letters), invisible format characters (U+200B, U+FEFF, ...) dropped,
    and trailing dots and spaces, which Windows ignores, stripped."""
    folded = unicodedata.normalize("NFKC", filename)
    visible = "".join(c for c in folded if unicodedata.category(c) != "Cf")
    return visible.rstrip(". \t")


def _check_filename(filename: str) -> None:
    name = normalized_filename(filename)
    if not name:
        raise ValidationError("must be a file name", field_name="filename")
    if "/" in name or "\\" in name:
        raise ValidationError("must be a file name, not a path", field_name="filename")
    if ":" in name:  # a drive, or an NTFS stream such as a.exe::$DATA
        raise ValidationError("must not contain ':'", field_name="filename")
    extension = name.rsplit(".", 1)[-1].lower() if "." in name else ""
    if extension in BLOCKED_EXTENSIONS:
        raise ValidationError(f".{extension} files are not accepted", field_name="filename")


def guessed_type(filename: str) -> str:
    guessed, _encoding = mimetypes.guess_type(normalized_filename(filename))
    return guessed or "application/octet-stream"


def decoded_size(content: str) -> int:
    """The exact size of valid base64 *content* once decoded (padding is not data)."""
    return len(content) // 4 * 3 - (len(content) - len(content.rstrip("=")))


class AttachmentSchema(Schema):
    class Meta:
        unknown = RAISE

    filename = fields.String(
        required=True,
        validate=[validate.Length(min=1, max=MAX_FILENAME_LENGTH), reject_header_unsafe],
        metadata={
            "description": "no path, no ':'; executables, scripts, disk images, macro"
            " documents, HTML and SVG are refused"
        },
    )
    content = fields.String(required=True, metadata={"description": "base64"})
    content_type = fields.String(
        load_default=None,
        validate=validate.Regexp(_CONTENT_TYPE),
        metadata={"description": "guessed from the file name if not given; executable,"
                  " HTML and SVG types are refused"},
    )  # fmt: skip
    content_id = fields.String(
        load_default=None,
        validate=[validate.Regexp(_CONTENT_ID), reject_header_unsafe],
        metadata={"description": "set to reference the attachment as cid:<content_id> in html"},
    )

    @validates_schema
    def _safe_file(self, data: dict[str, Any], **_: Any) -> None:
        if "filename" in data:
            _check_filename(data["filename"])
            content_type = data.get("content_type") or guessed_type(data["filename"])
            if content_type in BLOCKED_CONTENT_TYPES:
                raise ValidationError(
                    f"{content_type} files are not accepted",
                    field_name="content_type" if data.get("content_type") else "filename",
                )
        try:
            base64.b64decode(data.get("content", ""), validate=True)
        except (binascii.Error, ValueError):
            raise ValidationError("not valid base64", field_name="content") from None

    @post_load
    def _with_type(self, data: dict[str, Any], **_: Any) -> dict[str, Any]:
        if data["content_type"] is None:
            data["content_type"] = guessed_type(data["filename"])
        return data


class SendMailSchema(Schema):
    class Meta:
        unknown = RAISE  # a misspelt field is an error, not a silently dropped one

    sender = Mailbox(data_key="from", required=True)
    to = fields.List(Mailbox(), required=True, validate=validate.Length(min=1))
    cc = fields.List(Mailbox(), load_default=list)
    bcc = fields.List(Mailbox(), load_default=list)
    reply_to = Mailbox(load_default=None)
    subject = fields.String(
        required=True,
        validate=[validate.Length(min=1, max=MAX_SUBJECT_LENGTH), reject_header_unsafe],
        metadata={"description": "no control characters or line separators"},
    )
    text = fields.String(load_default=None)
    html = fields.String(load_default=None)
    headers = fields.Dict(
        keys=fields.String(),
        values=fields.String(),
        load_default=dict,
        validate=_validate_headers,
        metadata={
            "description": f"at most {MAX_CUSTOM_HEADERS}: X-* and List-Unsubscribe (<mailto:>"
            " or <https:> URLs), List-Unsubscribe-Post (List-Unsubscribe=One-Click),"
            " References and In-Reply-To (<message ids>); each value at most"
            f" {MAX_HEADER_VALUE_LENGTH} characters without control characters,"
            f" {MAX_CUSTOM_HEADER_BYTES} bytes together"
        },
    )
    attachments = fields.List(
        fields.Nested(AttachmentSchema),
        load_default=list,
        validate=validate.Length(max=MAX_ATTACHMENTS),
    )
    stream = fields.String(
        load_default="transactional", validate=validate.OneOf(sorted(STREAM_QUEUES))
    )
    send_at = UtcDateTime(
        load_default=None,
        metadata={"description": "ISO 8601; at most 30 days ahead; no timezone means UTC"},
    )
    expires_at = UtcDateTime(
        load_default=None,
        metadata={"description": "ISO 8601; after now and send_at, at most 60 days ahead"},
    )
    ttl_seconds = fields.Integer(
        load_default=None,
        validate=validate.Range(min=1, max=int(MAX_SCHEDULE_AHEAD.total_seconds())),
    )
    tags = fields.List(
        fields.String(validate=[validate.Length(min=1, max=64), reject_header_unsafe]),
        load_default=list,
        validate=validate.Length(max=MAX_TAGS),
    )
    metadata = fields.Dict(keys=fields.String(validate=validate.Length(min=1, max=64)),
                           load_default=dict, validate=_validate_metadata)  # fmt: skip
    bypass_unsubscribes = fields.Boolean(
        load_default=False,
        metadata={
            "description": "send to addresses that unsubscribed (stream transactional only;"
            " hard bounces are never bypassed)"
        },
    )

    @pre_load
    def _storable(self, data: Any, **_: Any) -> Any:
        """NUL characters and lone surrogates cannot be stored: a 422, not a failed COMMIT."""
        if isinstance(data, dict):
            errors = {
                key: [problem] for key, value in data.items() if (problem := unstorable(value))
            }
            if errors:
                raise ValidationError(errors)
        return data

    @validates_schema
    def _body_and_recipients(self, data: dict[str, Any], **_: Any) -> None:
        if not data.get("text") and not data.get("html"):
            raise ValidationError("give text, html or both", field_name="text")
        count = len(data.get("to", [])) + len(data.get("cc", [])) + len(data.get("bcc", []))
        if count > MAX_RECIPIENTS:
            raise ValidationError(
                f"at most {MAX_RECIPIENTS} recipients (to, cc and bcc together)", field_name="to"
            )
        total = sum(decoded_size(a["content"]) for a in data.get("attachments", []))
        if total > MAX_ATTACHMENT_BYTES:
            raise ValidationError(
                f"attachments may total at most {MAX_ATTACHMENT_BYTES} bytes",
                field_name="attachments",
            )

    @validates_schema
    def _timing(self, data: dict[str, Any], **_: Any) -> None:
        now = datetime.now(UTC)
        send_at, expires_at = data.get("send_at"), data.get("expires_at")
        if send_at is not None and send_at > now + MAX_SCHEDULE_AHEAD:
            raise ValidationError("at most 30 days ahead", field_name="send_at")
        if expires_at is not None and data.get("ttl_seconds") is not None:
            raise ValidationError(
                "give expires_at or ttl_seconds, not both", field_name="ttl_seconds"
            )
        if expires_at is not None and expires_at <= max(now, send_at or now):
            raise ValidationError("must be after now and after send_at", field_name="expires_at")
        if expires_at is not None and expires_at > now + MAX_EXPIRY_AHEAD:
            raise ValidationError("at most 60 days ahead", field_name="expires_at")

    @post_load
    def _resolve_timing(self, data: dict[str, Any], **_: Any) -> dict[str, Any]:
        now = datetime.now(UTC)
        if data["send_at"] is not None and data["send_at"] <= now:
            data["send_at"] = None  # a time in the past means "now"
        ttl = data.pop("ttl_seconds")
        if ttl is not None:
            data["expires_at"] = (data["send_at"] or now) + timedelta(seconds=ttl)
        return data


class BatchSchema(Schema):
    class Meta:
        unknown = RAISE

    mails = fields.List(
        fields.Dict(),
        required=True,
        validate=validate.Length(min=1, max=500),
        metadata={"description": "up to 500 mails, each shaped like POST /v1/mails"},
    )


class AcceptedSchema(Schema):
    id = fields.UUID(required=True)
    status = fields.String(required=True)


class BatchItemSchema(Schema):
    index = fields.Integer(required=True)
    id = fields.UUID()
    status = fields.String()
    errors = fields.Dict()


class BatchResultSchema(Schema):
    results = fields.List(fields.Nested(BatchItemSchema), required=True)
    accepted = fields.Integer(required=True)
    rejected = fields.Integer(required=True)


class EventSchema(Schema):
    kind = fields.String(required=True)
    detail = fields.Dict(required=True)
    created_at = fields.DateTime(required=True)


class MailSummarySchema(Schema):
    id = fields.UUID(required=True)
    status = fields.String(required=True)
    stream = fields.String(required=True)
    source = fields.String(required=True)
    tags = fields.List(fields.String(), required=True)
    metadata = fields.Dict(required=True)
    send_at = fields.DateTime(allow_none=True)
    expires_at = fields.DateTime(allow_none=True)
    campaign_key = fields.String(allow_none=True)
    attempts = fields.Integer(required=True)
    last_error = fields.String(allow_none=True)
    created_at = fields.DateTime(required=True)
    updated_at = fields.DateTime(required=True)


class MailStatusSchema(MailSummarySchema):
    events = fields.List(fields.Nested(EventSchema), required=True)


class MailListArgsSchema(Schema):
    class Meta:
        unknown = RAISE

    status = fields.String(validate=validate.OneOf([s.value for s in MailStatus]))
    since = UtcDateTime()
    until = UtcDateTime()
    tag = fields.String(validate=validate.Length(min=1, max=64))
    limit = fields.Integer(load_default=50, validate=validate.Range(min=1, max=100))
    # next_cursor as returned (base64url); anything else is a 400 naming `cursor`.
    cursor = fields.String(
        validate=validate.Length(max=200), metadata={"pattern": "^[A-Za-z0-9_-]*$"}
    )


class MailPageSchema(Schema):
    mails = fields.List(fields.Nested(MailSummarySchema), required=True)
    next_cursor = fields.String(allow_none=True, required=True)


class CancelledSchema(Schema):
    id = fields.UUID(required=True)
    status = fields.String(required=True)
