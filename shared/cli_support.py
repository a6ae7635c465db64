"""What every console script does at start: load settings or stop with one line."""

from __future__ import annotations

import sys
from collections.abc import Iterable

import click

from shared.config import ConfigError, Settings, load_settings
from shared.jsonlog import configure_logging


def error_line(exc: BaseException) -> str:
    """The first line of an error (psycopg's carry DETAIL/HINT lines), for one-line output."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def settings_or_exit(service: str, require: Iterable[str]) -> Settings:
    try:
        settings = load_settings(require=tuple(require))
    except ConfigError as exc:
        click.echo(f"{service}: configuration error: {exc}", err=True)
        sys.exit(2)
    configure_logging(service, settings.log_level)
    return settings
