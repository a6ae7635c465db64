"""What every admin command shares: argument types and options (times, durations,
statuses, filters, actor), the database connection and the tenant it names, and how
results print (aligned text tables by default, one JSON document with --json)."""

from __future__ import annotations

import getpass
import json
import re
import sys
import uuid
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, TypeVar

import click
import psycopg

from shared.cli_support import error_line, settings_or_exit
from shared.config import Settings
from shared.db import connect
from shared.states import MailStatus
from shared.store import NotFound
from shared.store.outbox import TenantRef, find_tenant
from shared.streams import Stream

# ----- argument types and options -----

F = TypeVar("F", bound=Callable[..., Any])

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)([wdhms])")
_UNIT_SECONDS = {"w": 604800.0, "d": 86400.0, "h": 3600.0, "m": 60.0, "s": 1.0}
# Longer than anything mailroom keeps, and short enough that "now minus it" stays a
# date Python and PostgreSQL can hold (a huge one would overflow: a traceback).
MAX_DURATION = timedelta(days=36525)  # a century


class DurationTooLong(ValueError):
    """A well-formed duration beyond MAX_DURATION."""


def parse_duration(text: str) -> timedelta:
    """``30d``, ``12h``, ``90m``, ``45s``, ``1h30m``, ``2w``; a bare number is seconds."""
    value = text.strip().lower()
    if re.fullmatch(r"\d+(?:\.\d+)?", value):
        seconds = float(value)
    elif value and re.fullmatch(rf"(?:{_DURATION_PART.pattern})+", value):
        parts = _DURATION_PART.findall(value)
        seconds = sum(float(n) * _UNIT_SECONDS[unit] for n, unit in parts)
    else:
        raise ValueError(f"{text!r} is not a duration like 30d, 12h, 90m or 1h30m")
    # float() of a long digit string is inf, not an error: compare before timedelta().
    if not seconds <= MAX_DURATION.total_seconds():
        raise DurationTooLong(f"{text!r} is longer than {MAX_DURATION.days}d (a century)")
    return timedelta(seconds=seconds)


def parse_timestamp(text: str, now: datetime | None = None) -> datetime:
    """An ISO 8601 time (UTC when it names no zone), ``now``, or a duration ago (``2h``)."""
    value = text.strip()
    current = now or datetime.now(UTC)
    if value.lower() == "now":
        return current
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        try:
            return current - parse_duration(value)  # at most a century: no overflow
        except DurationTooLong:
            raise
        except ValueError:
            raise ValueError(
                f"{text!r} is neither an ISO 8601 time (2026-11-28T18:40) nor a duration ago (2h)"
            ) from None
    try:
        # In UTC from here on: a zoned time at the edge of year 1 or 9999 would
        # otherwise overflow later, when it is compared or shown.
        return parsed.astimezone(UTC) if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    except OverflowError:
        raise ValueError(f"{text!r} is out of range (years 1 to 9999 in UTC)") from None


class Duration(click.ParamType[timedelta]):
    name = "duration"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, timedelta):
            return value
        try:
            duration = parse_duration(str(value))
        except ValueError as exc:
            self.fail(str(exc), param, ctx)
        if duration <= timedelta(0):
            self.fail(f"{value!r} must be longer than zero", param, ctx)
        return duration


class Timestamp(click.ParamType[datetime]):
    name = "time"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, datetime):
            return value
        try:
            return parse_timestamp(str(value))
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


class StatusList(click.ParamType[tuple[MailStatus, ...]]):
    """A comma-separated list of mail statuses, checked against the state machine."""

    name = "statuses"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, tuple):
            return value
        names = [part.strip() for part in str(value).split(",") if part.strip()]
        known = {status.value for status in MailStatus}
        unknown = [name for name in names if name not in known]
        if unknown or not names:
            named = ", ".join(unknown) or "(none)"
            self.fail(
                f"unknown status {named}; one of {', '.join(sorted(known))}",
                param,
                ctx,
            )
        return tuple(MailStatus(name) for name in dict.fromkeys(names))


class MailId(click.ParamType[uuid.UUID]):
    name = "mail_id"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, uuid.UUID):
            return value
        try:
            return uuid.UUID(str(value))
        except ValueError:
            self.fail(f"{value!r} is not a mail id (a UUID)", param, ctx)


DURATION = Duration()
TIMESTAMP = Timestamp()
STATUS_LIST = StatusList()
MAIL_ID = MailId()
STREAM = click.Choice(sorted(stream.value for stream in Stream))


def json_option(function: F) -> F:
    return click.option("--json", "as_json", is_flag=True, help="print JSON instead of a table")(
        function
    )


def actor_option(function: F) -> F:
    return click.option(
        "--actor",
        default=_os_user,
        show_default="the OS user",
        help="who is acting, recorded on every mail this changes",
    )(function)


def window_options(*, required: bool = False) -> Callable[[F], F]:
    """--since/--until on the time a mail was accepted: ISO 8601 or a duration ago."""

    def decorate(function: F) -> F:
        function = click.option(
            "--until",
            type=TIMESTAMP,
            required=required,
            help="accepted before this time",
        )(function)
        return click.option(
            "--since",
            type=TIMESTAMP,
            required=required,
            help="accepted at or after this time: ISO 8601 (UTC unless zoned) or a duration"
            " ago like 2h",
        )(function)

    return decorate


def batch_size_option(default: int, what: str = "mails") -> Callable[[F], F]:
    """--batch-size: how much one transaction of a batched command changes."""
    return click.option(
        "--batch-size",
        type=click.IntRange(1, 100_000),
        default=default,
        show_default=True,
        help=f"{what} per transaction",
    )


def check_window(since: datetime | None, until: datetime | None) -> None:
    """An empty or inverted window is a usage error (exit 2), not an empty result."""
    if since is not None and until is not None and since >= until:
        raise click.UsageError(
            f"--since must be before --until (got {since.isoformat()} and {until.isoformat()})"
        )


def scope_options(function: F) -> F:
    """--tenant (name or id) and --stream."""
    function = click.option("--stream", type=STREAM, help="only this stream")(function)
    return click.option("--tenant", help="only this tenant (name or id)")(function)


def _os_user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


# ----- the database -----


@contextmanager
def admin_connection(
    unreachable_exit: int = 1,
) -> Iterator[tuple[Settings, psycopg.Connection]]:
    """An autocommit connection; a database that cannot be reached is one line and an exit
    (1 by default; status says 2, broken, since the API cannot accept mail either)."""
    settings = settings_or_exit("outbox-relay", ["database_url"])
    try:
        conn = connect(settings.database_url, timeout=settings.db_connect_timeout)
    except psycopg.OperationalError as exc:
        click.echo(f"outbox-relay: cannot reach the database: {error_line(exc)}", err=True)
        sys.exit(unreachable_exit)
    with conn:
        yield settings, conn


def tenant_or_fail(conn: psycopg.Connection, tenant: str | None) -> TenantRef | None:
    """The --tenant option resolved; an unknown tenant is a usage error (exit 2)."""
    if tenant is None:
        return None
    try:
        return find_tenant(conn, tenant)
    except NotFound as exc:
        raise click.BadParameter(str(exc), param_hint="'--tenant'") from None


def tenant_id_or_fail(conn: psycopg.Connection, tenant: str | None) -> uuid.UUID | None:
    found = tenant_or_fail(conn, tenant)
    return found.id if found else None


# ----- output -----


def to_jsonable(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, timedelta | Decimal):
        return value.total_seconds() if isinstance(value, timedelta) else float(value)
    if isinstance(value, Mapping):
        return {str(key): to_jsonable(item) for key, item in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [to_jsonable(item) for item in value]
    return value


def echo_json(document: Mapping[str, Any]) -> None:
    click.echo(json.dumps(to_jsonable(document), sort_keys=False))


def cell(value: Any, limit: int | None = 60) -> str:
    if value is None:
        return "-"
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S")
    if isinstance(value, list | tuple):
        return ",".join(cell(item) for item in value) or "-"
    text = str(value)
    return text if limit is None or len(text) <= limit else text[: limit - 3] + "..."


def echo_table(
    rows: Sequence[Mapping[str, Any]], columns: Sequence[str], *, wide: Collection[str] = ()
) -> None:
    """Rows as aligned columns, headed by the column names; *wide* columns are never cut."""
    cells = [
        [cell(row.get(column), None if column in wide else 60) for column in columns]
        for row in rows
    ]
    widths = [
        max([len(column)] + [len(line[index]) for line in cells])
        for index, column in enumerate(columns)
    ]
    click.echo(_line([column.upper() for column in columns], widths))
    for line in cells:
        click.echo(_line(line, widths))


def _line(texts: Sequence[str], widths: Sequence[int]) -> str:
    return "  ".join(text.ljust(width) for text, width in zip(texts, widths, strict=True)).rstrip()
