"""The one configuration loader: environment variables prefixed ``MAILROOM_``.

Every process calls :func:`load_settings` at start with the names it needs; a
missing or malformed value raises :class:`ConfigError`, whose message names the
variable, and the entry points turn it into one line on stderr and exit 2.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

PREFIX = "MAILROOM_"

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class ConfigError(ValueError):
    """A configuration value is missing or malformed; the message names it."""


@dataclass(frozen=True)
class SmtpTarget:
    host: str
    port: int
    security: str  # "plain", "starttls" or "tls" (implicit TLS, smtps://)
    username: str | None = None
    password: str | None = field(default=None, repr=False)


@dataclass(frozen=True)
class Settings:
    database_url: str = ""
    broker_url: str = ""
    smtp: SmtpTarget | None = None
    message_id_domain: str = ""
    broker_key_prefix: str = ""
    db_pool_size: int = 8
    db_connect_timeout: float = 3.0
    relay_batch_size: int = 200
    relay_poll_interval: float = 1.0
    relay_visibility_timeout: float = 60.0
    relay_publish_timeout: float = 5.0
    relay_max_dispatches: int = 8
    relay_max_age: float = 86400.0
    relay_metrics_port: int = 9108
    canary_interval: float = 15.0
    canary_threshold: float = 60.0
    sending_timeout: float = 300.0
    send_max_attempts: int = 6
    send_retry_base: float = 30.0
    queue_prefix: str = ""
    smtp_timeout: float = 30.0
    # A PEM CA bundle that verifies the SMTP server's certificate instead of the system's.
    smtp_ca_file: str = ""
    log_level: str = "INFO"
    # Per-API-key rate limit (token bucket in Redis); no URL means no rate limiting.
    rate_limit_url: str = ""
    rate_limit_rate: float = 50.0
    rate_limit_burst: int = 100
    rate_limit_prefix: str = "mailroom:ratelimit:"
    # ----- suppressions and unsubscribes -----
    # The API's public base URL (one-click unsubscribe links in campaign mails) and
    # the key that signs those links; the API and the worker must share both.
    public_url: str = "http://127.0.0.1:8000"
    unsubscribe_secret: str = field(default="", repr=False)
    # ----- status webhooks -----
    # Failed deliveries are retried with backoff (base seconds, doubling, at most an
    # hour) until this many hours after the event; each POST times out after webhook_timeout.
    webhook_retry_hours: float = 24.0
    webhook_retry_base: float = 30.0
    webhook_timeout: float = 10.0
    # Networks webhook URLs may reach although they are private, loopback, link-local...
    # (see shared/webhook_urls.py); empty: only public addresses are called.
    webhook_allow_networks: tuple[IPNetwork, ...] = ()


def _parse_database_url(value: str) -> str:
    scheme = urlsplit(value).scheme
    if scheme not in ("postgresql", "postgres"):
        raise ValueError("expected postgresql://user@host:port/dbname")
    return value


def _parse_broker_url(value: str) -> str:
    scheme = urlsplit(value).scheme
    if scheme not in ("redis", "rediss", "redis+socket", "amqp", "amqps", "pyamqp", "memory"):
        raise ValueError("expected redis://host:port/db or amqp://user:pass@host:port/vhost")
    return value


def parse_smtp_url(value: str) -> SmtpTarget:
    """``smtp://[user:pass@]host:port[?starttls=1]`` or ``smtps://…`` (implicit TLS)."""
    parts = urlsplit(value)
    if parts.scheme not in ("smtp", "smtps") or not parts.hostname:
        raise ValueError("expected smtp://[user:pass@]host:port, smtps://… or ?starttls=1")
    query = parse_qs(parts.query)
    starttls = query.get("starttls", ["0"])[-1].lower() in ("1", "true", "yes")
    if parts.scheme == "smtps":
        security, default_port = "tls", 465
    else:
        security, default_port = ("starttls" if starttls else "plain"), 25
    try:
        port = parts.port or default_port
    except ValueError as exc:
        raise ValueError("the port is not a number") from exc
    return SmtpTarget(
        host=parts.hostname,
        port=port,
        security=security,
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password else None,
    )


def _parse_domain(value: str) -> str:
    domain = value.strip().lower()
    if not domain or any(c in domain for c in "<>@ \t\r\n") or "." not in domain:
        raise ValueError("expected a domain name such as mail.example.com")
    return domain


def _positive(kind: Callable[[str], Any]) -> Callable[[str], Any]:
    def parse(value: str) -> Any:
        number = kind(value)
        if number <= 0:
            raise ValueError("must be greater than zero")
        return number

    return parse


def _port(value: str) -> int:
    port = int(value)
    if not 0 <= port <= 65535:
        raise ValueError("expected a port number (0 turns it off)")
    return port


def _parse_queue_prefix(value: str) -> str:
    if not all(c.isalnum() or c in "-_." for c in value):
        raise ValueError("letters, digits, '-', '_' and '.' only")
    return value


def _parse_ca_file(value: str) -> str:
    if not os.path.isfile(value):
        raise ValueError("expected the path of a PEM CA bundle (no such file)")
    return value


def _parse_log_level(value: str) -> str:
    level = value.upper()
    if level not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
        raise ValueError("expected DEBUG, INFO, WARNING, ERROR or CRITICAL")
    return level


# ----- suppressions and unsubscribes -----
MIN_UNSUBSCRIBE_SECRET_LENGTH = 16


def _parse_public_url(value: str) -> str:
    parts = urlsplit(value)
    if (
        parts.scheme not in ("http", "https")
        or not parts.hostname
        or parts.query
        or parts.fragment
        or not value.isascii()
        or any(c.isspace() for c in value)
    ):
        raise ValueError("expected http(s)://host[:port][/path], the API's public base URL")
    return value.rstrip("/")


def _parse_unsubscribe_secret(value: str) -> str:
    if len(value) < MIN_UNSUBSCRIBE_SECRET_LENGTH:
        raise ValueError(f"at least {MIN_UNSUBSCRIBE_SECRET_LENGTH} characters")
    return value


def parse_networks(value: str) -> tuple[IPNetwork, ...]:
    """Comma-separated CIDRs (``10.0.0.0/8,::1/128``); a bare address is a one-address network."""
    networks = []
    for item in value.split(","):
        if item.strip():
            try:
                networks.append(ipaddress.ip_network(item.strip(), strict=False))
            except ValueError:
                raise ValueError(
                    f"{item.strip()!r} is not a network; expected CIDRs such as 10.0.0.0/8,::1/128"
                ) from None
    return tuple(networks)


def _parse_rate_limit_url(value: str) -> str:
    if urlsplit(value).scheme not in ("redis", "rediss", "unix"):
        raise ValueError("expected redis://host:port/db, rediss://… or unix:///path")
    return value


_PARSERS: dict[str, Callable[[str], Any]] = {
    "database_url": _parse_database_url,
    "broker_url": _parse_broker_url,
    "smtp": parse_smtp_url,
    "message_id_domain": _parse_domain,
    "broker_key_prefix": str,
    "db_pool_size": _positive(int),
    "db_connect_timeout": _positive(float),
    "relay_batch_size": _positive(int),
    "relay_poll_interval": _positive(float),
    "relay_visibility_timeout": _positive(float),
    "relay_publish_timeout": _positive(float),
    "relay_max_dispatches": _positive(int),
    "relay_max_age": _positive(float),
    "relay_metrics_port": _port,
    "canary_interval": _positive(float),
    "canary_threshold": _positive(float),
    "sending_timeout": _positive(float),
    "send_max_attempts": _positive(int),
    "send_retry_base": _positive(float),
    "queue_prefix": _parse_queue_prefix,
    "smtp_timeout": _positive(float),
    "smtp_ca_file": _parse_ca_file,
    "log_level": _parse_log_level,
    "rate_limit_url": _parse_rate_limit_url,
    "rate_limit_rate": _positive(float),
    "rate_limit_burst": _positive(int),
    "rate_limit_prefix": str,
    # ----- suppressions and unsubscribes -----
    "public_url": _parse_public_url,
    "unsubscribe_secret": _parse_unsubscribe_secret,
    # ----- status webhooks -----
    "webhook_retry_hours": _positive(float),
    "webhook_retry_base": _positive(float),
    "webhook_timeout": _positive(float),
    "webhook_allow_networks": parse_networks,
}

# The variable for each setting; ``smtp`` is configured as a URL.
_VARIABLES = {name: PREFIX + name.upper() for name in _PARSERS} | {"smtp": PREFIX + "SMTP_URL"}


def variable_name(setting: str) -> str:
    return _VARIABLES[setting]


def load_settings(
    require: Iterable[str] = (), environ: Mapping[str, str] | None = None
) -> Settings:
    """Read every ``MAILROOM_*`` setting; those named in *require* must be set."""
    env = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    for setting in (f.name for f in fields(Settings)):
        variable = _VARIABLES[setting]
        raw = env.get(variable, "").strip()
        if not raw:
            if setting in require:
                raise ConfigError(f"{variable} is not set")
            continue
        try:
            values[setting] = _PARSERS[setting](raw)
        except ValueError as exc:
            raise ConfigError(f"{variable} is malformed: {exc}") from None
    return Settings(**values)
