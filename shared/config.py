"""The one configuration loader: environment variables prefixed ``MAILROOM_``.

:class:`Settings` is the list of variables: each field is read from ``MAILROOM_``
+ its name in capitals (except the few in ``_VARIABLES_NAMED_OTHERWISE``), and its
type and validators say what a value must look like. Building a Settings directly
(tests, benchmarks) reads no environment but checks the values all the same.

Every process calls :func:`load_settings` at start with the names it needs;
pydantic-settings reads the variables, a missing or malformed value raises
:class:`ConfigError`, whose message names the variable, and the entry points turn
it into one line on stderr and exit 2.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
from collections.abc import Callable, Iterable, Mapping
from typing import Annotated, Any
from urllib.parse import parse_qs, unquote, urlsplit

from pydantic import (
    AfterValidator,
    BeforeValidator,
    Field,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    ValidationError,
    create_model,
)
from pydantic.dataclasses import dataclass
from pydantic_core import ErrorDetails
from pydantic_settings import BaseSettings, EnvSettingsSource, SettingsConfigDict

PREFIX = "MAILROOM_"

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class ConfigError(ValueError):
    """A configuration value is missing or malformed; the message names it."""


@dataclasses.dataclass(frozen=True)
class SmtpTarget:
    host: str
    port: int
    security: str  # "plain", "starttls" or "tls" (implicit TLS, smtps://)
    username: str | None = None
    password: str | None = dataclasses.field(default=None, repr=False)


# ----- the checks pydantic does not know; each raises ValueError with what it expected -----


def _database_url(value: str) -> str:
    if urlsplit(value).scheme not in ("postgresql", "postgres"):
        raise ValueError("expected postgresql://user@host:port/dbname")
    return value


def _broker_url(value: str) -> str:
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


def _domain(value: str) -> str:
    domain = value.strip().lower()
    if not domain or any(c in domain for c in "<>@ \t\r\n") or "." not in domain:
        raise ValueError("expected a domain name such as mail.example.com")
    return domain


def _queue_prefix(value: str) -> str:
    if not all(c.isalnum() or c in "-_." for c in value):
        raise ValueError("letters, digits, '-', '_' and '.' only")
    return value


def _ca_file(value: str) -> str:
    if not os.path.isfile(value):
        raise ValueError("expected the path of a PEM CA bundle (no such file)")
    return value


def _log_level(value: str) -> str:
    level = value.upper()
    if level not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
        raise ValueError("expected DEBUG, INFO, WARNING, ERROR or CRITICAL")
    return level


def _rate_limit_url(value: str) -> str:
    if urlsplit(value).scheme not in ("redis", "rediss", "unix"):
        raise ValueError("expected redis://host:port/db, rediss://… or unix:///path")
    return value


MIN_UNSUBSCRIBE_SECRET_LENGTH = 16


def _public_url(value: str) -> str:
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


def _unsubscribe_secret(value: str) -> str:
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


def _unset_or(check: Callable[[str], str]) -> AfterValidator:
    """*check* a text, but let "" through: it is the default of these fields and means unset
    (``dataclasses.replace`` passes every field again, defaults included)."""
    return AfterValidator(lambda value: check(value) if value else value)


def _parsed_from_text(parse: Callable[[str], Any]) -> BeforeValidator:
    """A field whose variable is text and whose value is not (an SMTP URL, a list of CIDRs):
    *parse* the text, take an already parsed value as it is."""
    return BeforeValidator(lambda value: parse(value) if isinstance(value, str) else value)


@dataclass(frozen=True)
class Settings:
    database_url: Annotated[str, _unset_or(_database_url)] = ""
    broker_url: Annotated[str, _unset_or(_broker_url)] = ""
    smtp: Annotated[SmtpTarget | None, _parsed_from_text(parse_smtp_url)] = None
    message_id_domain: Annotated[str, _unset_or(_domain)] = ""
    broker_key_prefix: str = ""
    db_pool_size: PositiveInt = 8
    db_connect_timeout: PositiveFloat = 3.0
    relay_batch_size: PositiveInt = 200
    # Mails per send_mails message: a worker picks a message's mails up in one statement.
    send_batch_size: Annotated[PositiveInt, Field(le=500)] = 10
    relay_poll_interval: PositiveFloat = 1.0
    # Under load, a round woken by NOTIFY waits this long to claim several mails at once.
    relay_linger: Annotated[NonNegativeFloat, Field(le=1.0)] = 0.01
    relay_visibility_timeout: PositiveFloat = 60.0
    relay_publish_timeout: PositiveFloat = 5.0
    relay_max_dispatches: PositiveInt = 8
    relay_max_age: PositiveFloat = 86400.0
    relay_metrics_port: Annotated[NonNegativeInt, Field(le=65535)] = 9108  # 0: off
    canary_interval: PositiveFloat = 15.0
    canary_threshold: PositiveFloat = 60.0
    sending_timeout: PositiveFloat = 300.0
    send_max_attempts: PositiveInt = 6
    send_retry_base: PositiveFloat = 30.0
    # How long the worker retries a pickup or an outcome's record through a database blip.
    worker_database_retry_seconds: PositiveFloat = 30.0
    # Each worker process renews a lease in PostgreSQL every quarter of this; the relay
    # puts back the mails in 'sending' of a worker whose lease lapsed (mail_worker/lease.py).
    worker_lease_seconds: PositiveFloat = 10.0
    queue_prefix: Annotated[str, AfterValidator(_queue_prefix)] = ""
    smtp_timeout: PositiveFloat = 30.0
    # A PEM CA bundle that verifies the SMTP server's certificate instead of the system's.
    smtp_ca_file: Annotated[str, _unset_or(_ca_file)] = ""
    log_level: Annotated[str, AfterValidator(_log_level)] = "INFO"
    # gunicorn threads per API worker process (ingest_api/gunicorn_conf.py).
    api_threads: PositiveInt = 8
    # prometheus_client's own variable (its multiprocess mode); ``ingest-api serve``
    # sets it for gunicorn when unset, and gunicorn's hooks clean up after it.
    prometheus_multiproc_dir: str = ""
    # Per-API-key rate limit (token bucket in Redis); no URL means no rate limiting.
    rate_limit_url: Annotated[str, _unset_or(_rate_limit_url)] = ""
    rate_limit_rate: PositiveFloat = 50.0
    rate_limit_burst: PositiveInt = 100
    rate_limit_prefix: str = "mailroom:ratelimit:"
    # ----- suppressions and unsubscribes -----
    # The API's public base URL (one-click unsubscribe links in campaign mails) and
    # the key that signs those links; the API and the worker must share both.
    public_url: Annotated[str, AfterValidator(_public_url)] = "http://127.0.0.1:8000"
    unsubscribe_secret: Annotated[str, _unset_or(_unsubscribe_secret)] = Field(
        default="", repr=False
    )
    # ----- status webhooks -----
    # Failed deliveries are retried with backoff (base seconds, doubling, at most an
    # hour) until this many hours after the event; each POST times out after webhook_timeout.
    webhook_retry_hours: PositiveFloat = 24.0
    webhook_retry_base: PositiveFloat = 30.0
    webhook_timeout: PositiveFloat = 10.0
    # Networks webhook URLs may reach although they are private, loopback, link-local...
    # (see shared/webhook_urls.py); empty: only public addresses are called.
    webhook_allow_networks: Annotated[tuple[IPNetwork, ...], _parsed_from_text(parse_networks)] = ()


# ----- the variables -----

_VARIABLES_NAMED_OTHERWISE = {
    "smtp": PREFIX + "SMTP_URL",  # configured as a URL
    "prometheus_multiproc_dir": "PROMETHEUS_MULTIPROC_DIR",  # prometheus_client's name
}
_VARIABLES = {
    field.name: _VARIABLES_NAMED_OTHERWISE.get(field.name, PREFIX + field.name.upper())
    for field in dataclasses.fields(Settings)
}


def variable_name(setting: str) -> str:
    return _VARIABLES[setting]


class _VariablesBase(BaseSettings):
    # Exact names (an environment is case-sensitive); an empty variable is an unset one.
    model_config = SettingsConfigDict(case_sensitive=True, env_ignore_empty=True, extra="ignore")


# pydantic-settings' view of the environment: the raw text of each Settings field,
# read from its variable. Generated from Settings so that the two cannot drift apart.
_RAW_TEXT_FIELDS: dict[str, Any] = {
    setting: (str | None, Field(default=None, validation_alias=variable))
    for setting, variable in _VARIABLES.items()
}
_Variables = create_model("_Variables", __base__=_VariablesBase, **_RAW_TEXT_FIELDS)


class _EnvironmentSource(EnvSettingsSource):
    """pydantic-settings' environment source over a given mapping rather than
    ``os.environ`` (``mailroom up`` checks the environment it is about to give its
    children); values are stripped and blank ones count as unset, as they always did."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        self._environ = environ
        super().__init__(_Variables)

    def _load_env_vars(self) -> Mapping[str, str | None]:
        return {name: value.strip() for name, value in self._environ.items() if value.strip()}


def _reason(error: ErrorDetails) -> str:
    """pydantic's message, or ours as we wrote it ("Value error, " left off)."""
    if error["type"] == "value_error" and "error" in error.get("ctx", {}):
        return str(error["ctx"]["error"])
    return error["msg"]


def load_settings(
    require: Iterable[str] = (), environ: Mapping[str, str] | None = None
) -> Settings:
    """Read every setting from *environ* (default: the process environment); those
    named in *require* must be set. The first problem, in field order, is raised."""
    found = _EnvironmentSource(os.environ if environ is None else environ)()
    texts = {
        setting: found[variable] for setting, variable in _VARIABLES.items() if variable in found
    }
    problems = {
        setting: "is not set"
        for setting in _VARIABLES
        if setting in require and setting not in texts
    }
    settings: Settings | None = None
    try:
        settings = Settings(**texts)
    except ValidationError as exc:
        for error in exc.errors(include_url=False):
            problems.setdefault(str(error["loc"][0]), f"is malformed: {_reason(error)}")
    if settings is None or problems:
        first = next(setting for setting in _VARIABLES if setting in problems)
        raise ConfigError(f"{_VARIABLES[first]} {problems[first]}")
    return settings
